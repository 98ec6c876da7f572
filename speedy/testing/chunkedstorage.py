# -*- test-case-name: speedy.test.test_testing -*-
"""
An in-memory L{IChunkedStorage} for tests of everything that sits on the
imageserver's storage path.  Chunks live in a dict; reads honour the
consumer's back-pressure; writes and reads can be made to fail or to wait,
so tests can drive the unhappy paths.

L{ChunkedStorageTestsMixin} is the contract: it runs against
L{MemoryChunkedStorage}, and against the real
L{speedy.imageserver.replication.ReplicatedStorage} over fake chunkservers
(L{speedy.testing.cluster.FakeCluster}), in L{speedy.test.test_testing}.
"""

from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import IPushProducer
from twisted.internet.testing import StringTransport
from zope.interface import implementer
from zope.interface.verify import verifyObject

from speedy.crc import crc32c
from speedy.errors import BadRequest, RangeNotSatisfiable, Unavailable
from speedy.interfaces import IChunkedStorage, IChunkedWriter
from speedy.records import ChunkRef


@implementer(IChunkedStorage)
class MemoryChunkedStorage:
    """
    @ivar chunks: file id -> bytes of every chunk stored and not deleted.
    @ivar write_failure: when set, an exception every L{IChunkedWriter.write}
        fails with (as when no group can take the chunk).
    @ivar write_gate: when set, an unfired Deferred that every write waits
        on before it reports the writer ready (back-pressure).
    @ivar read_failure: when set, an exception every read fails with after
        C{read_failure_after} bytes were written to the consumer.
    """

    def __init__(self, chunk_size=16 << 20, group_id=1, piece_size=64 << 10):
        self.chunk_size = chunk_size
        self.group_id = group_id
        self.piece_size = piece_size
        self.chunks = {}
        self.write_failure = None
        self.write_gate = None
        self.read_failure = None
        self.read_failure_after = 0
        self.writer_lengths = []  # the length each writer() was given
        #: reads started and not yet over (done, failed or cancelled)
        self.reads_in_progress = 0
        self._next_file_id = 1

    def writer(self, length=None, record_intent=None):
        """@return: a new L{MemoryChunkedWriter}; C{length} is recorded in
        C{writer_lengths}."""
        self.writer_lengths.append(length)
        return MemoryChunkedWriter(self, length, record_intent)

    def store(self, data):
        """@return: the L{ChunkRef} of C{data} stored as one new chunk."""
        ref = self.new_ref(data)
        self.chunks[ref.file_id] = bytes(data)
        return ref

    def new_ref(self, data):
        """@return: the L{ChunkRef} C{data} gets as a new chunk (a new file id)."""
        file_id = self._next_file_id
        self._next_file_id += 1
        return ChunkRef(self.group_id, file_id, len(data), crc32c(data))

    def contents(self, chunks):
        """@return: the bytes of the file made of C{chunks} (a test helper)."""
        return b"".join(self.chunks[c.file_id] for c in chunks)

    def read(self, chunks, offset, length, consumer):
        """See L{IChunkedStorage.read}."""
        total = sum(c.size for c in chunks)
        if offset < 0 or length < 0 or offset + length > total:
            return fail(RangeNotSatisfiable(f"bytes {offset}-{offset + length} of a {total}-byte file"))
        missing = [c.file_id for c in chunks if c.file_id not in self.chunks]
        if missing:
            return fail(Unavailable(f"no replica holds chunks {missing}"))
        data = self.contents(chunks)[offset:offset + length]
        return _MemoryRead(self, data, consumer).start()

    def delete(self, chunks):
        """See L{IChunkedStorage.delete}; deleting a missing chunk is a no-op."""
        for c in chunks:
            self.chunks.pop(c.file_id, None)
        return succeed(None)


@implementer(IPushProducer)
class _MemoryRead:
    """Writes one byte string into a consumer, piece by piece, while it is
    not paused."""

    def __init__(self, storage, data, consumer):
        self._storage = storage
        self._data = memoryview(data)
        self._consumer = consumer
        self._position = 0
        self._paused = False
        self._looping = False
        self._done = Deferred(lambda d: self._stop())

    def start(self):
        self._storage.reads_in_progress += 1
        self._consumer.registerProducer(self, True)
        self.resumeProducing()
        return self._done

    def pauseProducing(self):
        self._paused = True

    def resumeProducing(self):
        self._paused = False
        if self._looping:
            return
        self._looping = True
        try:
            self._pump()
        finally:
            self._looping = False

    def stopProducing(self):
        self._end(ConnectionLost("the consumer went away"))

    def _pump(self):
        storage = self._storage
        while not self._paused and self._consumer is not None:
            if self._position >= len(self._data):
                self._end(None)
            elif storage.read_failure is not None and self._position >= storage.read_failure_after:
                self._end(storage.read_failure)
            else:
                end = self._position + storage.piece_size
                if storage.read_failure is not None:
                    end = min(end, max(storage.read_failure_after, self._position + 1))
                piece = bytes(self._data[self._position:end])
                self._position += len(piece)
                self._consumer.write(piece)
                if self._position >= len(self._data) and self._consumer is not None:
                    self._end(None)

    def _end(self, failure):
        """Unregister, then fire the read's Deferred with None or C{failure}."""
        if self._stop():
            if failure is None:
                self._done.callback(None)
            else:
                self._done.errback(failure)

    def _stop(self):
        """Unregister from the consumer; @return: True the first time."""
        if self._consumer is None:
            return False
        consumer, self._consumer = self._consumer, None
        self._paused = True
        self._storage.reads_in_progress -= 1
        consumer.unregisterProducer()
        return True


@implementer(IChunkedWriter)
class MemoryChunkedWriter:
    """Cuts the stream into C{chunk_size} chunks as they fill; a stream
    that carries more than its declared C{length}, or ends short of it,
    fails."""

    def __init__(self, storage, length=None, record_intent=None):
        self._storage = storage
        self._length = length
        self._record_intent = record_intent
        self._intents = succeed(None)  # chunks wait for their intents, in order
        self._failure = None
        self._buffer = bytearray()
        self._written = []
        self._closed = False
        self.bytes_written = 0
        self.aborted = False

    def write(self, data):
        """See L{IChunkedWriter.write}."""
        storage = self._storage
        if self._closed:
            return fail(BadRequest("write after finish or abort"))
        if storage.write_failure is not None:
            return fail(storage.write_failure)
        if self._length is not None and self.bytes_written + len(data) > self._length:
            return fail(BadRequest(f"the stream carries more than the {self._length} bytes "
                                   f"it declared"))
        if self._failure is not None:
            return fail(self._failure)
        self.bytes_written += len(data)
        self._buffer += data
        while len(self._buffer) >= storage.chunk_size:
            self._store(bytes(self._buffer[:storage.chunk_size]))
            del self._buffer[:storage.chunk_size]
        ready = self._stored() if self._record_intent is not None else succeed(None)
        if storage.write_gate is not None:
            gate = Deferred()
            storage.write_gate.addBoth(lambda result: gate.callback(None) or result)
            ready.addCallback(lambda _: gate)
        return ready

    def _store(self, data):
        """Store a chunk, after its intent was recorded if there is a
        C{record_intent}."""
        if self._record_intent is None:
            self._written.append(self._storage.store(data))
            return
        ref = self._storage.new_ref(data)

        def record(_):
            if self._failure is None:
                return self._record_intent(ref).addCallback(stored)

        def stored(_):
            self._storage.chunks[ref.file_id] = data
            self._written.append(ref)

        def failed(failure):
            if self._failure is None:
                self._failure = failure
        self._intents.addCallback(record).addErrback(failed)

    def _stored(self):
        """@return: a Deferred firing once every chunk so far is stored, or
        failing if one's intent could not be recorded."""
        done = Deferred()

        def report(_):
            if self._failure is not None:
                done.errback(self._failure)
            else:
                done.callback(None)
        self._intents.addCallback(report)
        return done

    def finish(self):
        """See L{IChunkedWriter.finish}."""
        if self._closed:
            return fail(BadRequest("finish after finish or abort"))
        self._closed = True
        if self._length is not None and self.bytes_written != self._length:
            return fail(BadRequest(f"the stream ended after {self.bytes_written} of the "
                                   f"{self._length} bytes it declared"))
        if self._buffer:
            self._store(bytes(self._buffer))
            self._buffer = bytearray()
        if self._record_intent is not None:
            return self._stored().addCallback(lambda _: tuple(self._written))
        return succeed(tuple(self._written))

    def abort(self):
        """See L{IChunkedWriter.abort}."""
        self.aborted = self._closed = True
        self._buffer = bytearray()
        written, self._written = self._written, []
        return self._storage.delete(written)


class PausingConsumer(StringTransport):
    """A consumer that pauses its producer after every write, and fails a
    write that comes while it is paused."""

    def write(self, data):
        if self.producerState == "paused":
            raise AssertionError("written to while paused")
        super().write(data)
        self.producer.pauseProducing()


class ChunkedStorageTestsMixin:
    """
    The L{IChunkedStorage} contract the REST file API and the registry rely
    on, for a C{SynchronousTestCase} whose storage answers without a running
    reactor.

    Mix into a test case that provides:

      - C{make_storage()}: @return: a new, empty L{IChunkedStorage} that
        cuts streams into chunks of L{chunk_size} bytes;
      - C{stored()}: @return: the set of (group id, file id) of every chunk
        the storage holds.
    """

    chunk_size = 10

    def setUp(self):
        super().setUp()
        self.storage = self.make_storage()

    def store(self, *pieces, length=None):
        """@return: the ChunkRefs of C{pieces} written as one stream."""
        writer = self.storage.writer(length)
        for piece in pieces:
            self.successResultOf(writer.write(piece))
        return self.successResultOf(writer.finish())

    def read(self, chunks, offset, length, consumer=None):
        """@return: (the read's Deferred, its consumer)."""
        consumer = StringTransport() if consumer is None else consumer
        return self.storage.read(chunks, offset, length, consumer), consumer

    def test_interfaces(self):
        """The storage and its writers provide their interfaces."""
        verifyObject(IChunkedStorage, self.storage)
        verifyObject(IChunkedWriter, self.storage.writer())
        verifyObject(IChunkedWriter, self.storage.writer(5))

    def test_chunks(self):
        """A stream is cut into chunk_size chunks, the tail shorter, each
        described by its size and CRC32C; bytes_written counts what was
        fed, in bytes, bytearrays and memoryviews."""
        data = b"0123456789abcdefghijXYZ"
        writer = self.storage.writer()
        self.successResultOf(writer.write(data[:3]))
        self.successResultOf(writer.write(bytearray(data[3:18])))
        self.successResultOf(writer.write(memoryview(data)[18:]))
        self.assertEqual(writer.bytes_written, len(data))
        chunks = self.successResultOf(writer.finish())
        self.assertEqual([c.size for c in chunks], [10, 10, 3])
        self.assertEqual([c.crc32c for c in chunks],
                         [crc32c(data[:10]), crc32c(data[10:20]), crc32c(data[20:])])
        self.assertEqual(len({c.file_id for c in chunks}), 3)
        self.assertEqual(self.stored(), {(c.group_id, c.file_id) for c in chunks})

    def test_read_ranges(self):
        """Any range of the file reads back exactly, then the read fires
        with None and its producer is unregistered."""
        data = bytes(range(256))[:45]
        chunks = self.store(data[:7], data[7:])
        for offset, length in [(0, 45), (0, 1), (3, 4), (10, 10), (8, 25), (44, 1), (45, 0), (0, 0)]:
            d, consumer = self.read(chunks, offset, length)
            self.assertIsNone(self.successResultOf(d))
            self.assertEqual(consumer.value(), data[offset:offset + length])
            self.assertIsNone(consumer.producer)

    def test_range_outside(self):
        """A range outside the file fails with RangeNotSatisfiable, before
        any byte is written."""
        chunks = self.store(b"x" * 25)
        for offset, length in [(20, 6), (26, 0), (-1, 2), (0, -1)]:
            d, consumer = self.read(chunks, offset, length)
            self.failureResultOf(d, RangeNotSatisfiable)
            self.assertEqual(consumer.value(), b"")
            self.assertIsNone(consumer.producer)

    def test_empty(self):
        """An empty stream is no chunks, and reads as nothing."""
        chunks = self.store()
        self.assertEqual(chunks, ())
        d, consumer = self.read(chunks, 0, 0)
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(consumer.value(), b"")

    def test_read_honours_back_pressure(self):
        """A consumer paused after every write is written to again only
        once resumed, and gets every byte in order."""
        data = bytes(range(200))
        chunks = self.store(data)
        consumer = PausingConsumer()
        reading, _ = self.read(chunks, 5, 190, consumer)
        while consumer.producer is not None:
            self.assertNoResult(reading)
            consumer.producer.resumeProducing()
        self.assertIsNone(self.successResultOf(reading))
        self.assertEqual(consumer.value(), data[5:195])

    def test_cancel(self):
        """Cancelling a read ends it, and unregisters it."""
        chunks = self.store(bytes(100))
        reading, consumer = self.read(chunks, 0, 100, PausingConsumer())
        reading.cancel()
        self.failureResultOf(reading, CancelledError)
        self.assertIsNone(consumer.producer)

    def test_consumer_stops(self):
        """A consumer that stops its producer fails the read with
        ConnectionLost."""
        chunks = self.store(bytes(100))
        reading, consumer = self.read(chunks, 0, 100, PausingConsumer())
        consumer.producer.stopProducing()
        self.failureResultOf(reading, ConnectionLost)
        self.assertIsNone(consumer.producer)

    def test_delete(self):
        """Deleted chunks are gone: reading them fails with Unavailable, and
        deleting them again is harmless."""
        chunks = self.store(b"0123456789abc")
        kept = self.store(b"kept")
        self.assertIsNone(self.successResultOf(self.storage.delete(chunks)))
        self.assertEqual(self.stored(), {(c.group_id, c.file_id) for c in kept})
        d, consumer = self.read(chunks, 0, 13)
        self.failureResultOf(d, Unavailable)
        self.assertIsNone(consumer.producer)
        self.assertIsNone(self.successResultOf(self.storage.delete(chunks)))

    def test_abort(self):
        """An aborted writer leaves nothing stored and takes no more."""
        writer = self.storage.writer()
        self.successResultOf(writer.write(b"x" * 25))
        self.assertIsNone(self.successResultOf(writer.abort()))
        self.assertEqual(self.stored(), set())
        self.failureResultOf(writer.write(b"y"), BadRequest)
        self.failureResultOf(writer.finish(), BadRequest)

    def test_finished(self):
        """A finished writer takes no more writes, and finishes once."""
        writer = self.storage.writer()
        self.successResultOf(writer.write(b"abc"))
        self.successResultOf(writer.finish())
        self.failureResultOf(writer.write(b"d"), BadRequest)
        self.failureResultOf(writer.finish(), BadRequest)

    def test_declared_length(self):
        """A stream of a declared length must carry exactly that many
        bytes: more fails the write, fewer the finish."""
        chunks = self.store(b"0123456789", b"abcde", length=15)
        self.assertEqual(sum(c.size for c in chunks), 15)
        writer = self.storage.writer(15)
        self.successResultOf(writer.write(b"0123456789"))
        self.failureResultOf(writer.write(b"abcdef"), BadRequest)
        writer = self.storage.writer(15)
        self.successResultOf(writer.write(b"0123456789"))
        self.failureResultOf(writer.finish(), BadRequest)
