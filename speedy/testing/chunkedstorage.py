# -*- test-case-name: speedy.test.test_testing,speedy.test.test_registry_fakes -*-
"""
An in-memory L{IChunkedStorage} for tests of everything that sits on the
imageserver's storage path.  Chunks live in a dict; reads honour the
consumer's back-pressure; writes and reads can be made to fail or to wait,
so tests can drive the unhappy paths.
"""

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

from speedy.crc import crc32c
from speedy.errors import Unavailable
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

    def writer(self, length=None):
        """@return: a new L{MemoryChunkedWriter}; C{length} is recorded in
        C{writer_lengths}."""
        self.writer_lengths.append(length)
        return MemoryChunkedWriter(self)

    def store(self, data):
        """@return: the L{ChunkRef} of C{data} stored as one new chunk."""
        file_id = self._next_file_id
        self._next_file_id += 1
        self.chunks[file_id] = bytes(data)
        return ChunkRef(self.group_id, file_id, len(data), crc32c(data))

    def contents(self, chunks):
        """@return: the bytes of the file made of C{chunks} (a test helper)."""
        return b"".join(self.chunks[c.file_id] for c in chunks)

    def read(self, chunks, offset, length, consumer):
        """See L{IChunkedStorage.read}."""
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
    """Cuts the stream into C{chunk_size} chunks as they fill."""

    def __init__(self, storage):
        self._storage = storage
        self._buffer = bytearray()
        self._written = []
        self.bytes_written = 0
        self.aborted = False

    def write(self, data):
        """See L{IChunkedWriter.write}."""
        storage = self._storage
        if storage.write_failure is not None:
            return fail(storage.write_failure)
        self.bytes_written += len(data)
        self._buffer += data
        while len(self._buffer) >= storage.chunk_size:
            self._written.append(storage.store(self._buffer[:storage.chunk_size]))
            del self._buffer[:storage.chunk_size]
        if storage.write_gate is not None:
            ready = Deferred()
            storage.write_gate.addBoth(lambda result: ready.callback(None) or result)
            return ready
        return succeed(None)

    def finish(self):
        """See L{IChunkedWriter.finish}."""
        if self._buffer:
            self._written.append(self._storage.store(self._buffer))
            self._buffer = bytearray()
        return succeed(tuple(self._written))

    def abort(self):
        """See L{IChunkedWriter.abort}."""
        self.aborted = True
        self._buffer = bytearray()
        written, self._written = self._written, []
        return self._storage.delete(written)
