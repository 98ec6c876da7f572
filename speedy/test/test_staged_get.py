"""
Staged GETs of L{speedy.chunkserver.store}: a large record verified with
direct reads keeps the staging buffers it was read into and is sent from
them (L{speedy.zerocopy.sendfile.StagedBody} on plain TCP, L{ReadBody} copies
elsewhere), so it is read from the disk once per GET.  Bytes identical for
whole records and ranges at every boundary, the cap on staged bytes, every
buffer back in the pool exactly once however the GET ends, damage, and
direct I/O off.  Real files in trial's temporary directory; the loopback
tests use the global reactor as L{speedy.test.test_sendfile} does.
"""

import errno
import os

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.error import ConnectionLost
from twisted.internet.protocol import Factory
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase, TestCase

from speedy.chunkserver.protocol import ChunkServerFactory
from speedy.chunkserver.store import STAGED_READ_LIMIT, STAGING_SIZE
from speedy.chunkserver.volume import HEADER_SIZE
from speedy.errors import Busy, ChecksumMismatch
from speedy.test.test_chunkserver_protocol import (
    TLSStringTransport, error_code, get_request, parse_frames)
from speedy.wire.frames import ALL_BYTES
from speedy.test.test_direct_io import BLOCK, SIZES, T, DirectTestMixin
from speedy.test.test_sendfile import Receiver, stream_over_loopback
from speedy.test.test_store import ManualThreads, MiB, corrupt
from speedy.wire.frames import FLAG_ERROR, GET_RESPONSE
from speedy.wire.producers import PIECE, ReadBody
from speedy.zerocopy.sendfile import SendfileBody, StagedBody, range_body


def ranges(size, skip):
    """
    @param skip: where the chunk's first byte lies in its first staging
        buffer (the record's offset within its block, plus the header).
    @return: C{(offset, length)} ranges of a chunk of C{size} bytes that
        start and end on, just before and just after staging-buffer edges,
        plus the whole chunk, its first and last bytes and the empty range.
    """
    edges = [e - skip for e in range(STAGING_SIZE, skip + size, STAGING_SIZE)]
    found = {(0, size), (0, 0), (0, min(size, 1)), (max(0, size - 1), min(size, 1)),
             (size, 0)}
    for edge in edges[:3] + edges[-2:]:
        for start in (edge - 1, edge, edge + 1):
            for end in (edge + 1, edge + 2, edge + STAGING_SIZE - 1,
                        edge + STAGING_SIZE, edge + STAGING_SIZE + 1, size):
                if 0 <= start <= end <= size:
                    found.add((start, end - start))
    return sorted(found)


class StagedTestMixin(DirectTestMixin):
    """Stores with direct I/O on (skipped where O_DIRECT is refused)."""

    volume_size = 80 * MiB

    def put_data(self, store, file_id, size):
        data = os.urandom(size)
        self.put_pieces(store, file_id, data, (MiB + 1, 3))
        return data

    def skip_of(self, chunk):
        """@return: where the chunk's byte 0 lies in its first staging buffer."""
        record_offset = chunk.file_offset() - chunk.offset - HEADER_SIZE
        return record_offset % BLOCK + HEADER_SIZE

    def assert_all_back(self, store):
        """Every staging buffer is back in the pool; nothing counts against
        the cap."""
        self.assertEqual(store._staging.lent, 0)
        self.assertEqual(store._staged_bytes, 0)


class StagedStoreTests(StagedTestMixin, SynchronousTestCase):

    def test_sizes_and_ranges(self):
        """Every size around the block and threshold boundaries, whole and
        in ranges at every staging-buffer edge: records of at least the
        threshold are staged, and the staged views and read() copies hold
        exactly the chunk's bytes."""
        store = self.open_store()
        for n, size in enumerate(SIZES):
            data = self.put_data(store, n, size)
            chunk = self.successResultOf(store.get(n))
            skip = self.skip_of(chunk)
            staged = chunk.staged()
            self.assertEqual(staged is not None, size >= T, size)
            if staged is not None:
                self.assertRaises(OSError, chunk.fileno)
            chunk.release()
            self.assert_all_back(store)
            for offset, length in ranges(size, skip):
                chunk = self.successResultOf(store.get(n, offset, length))
                want = data[offset:] if length == ALL_BYTES else data[offset:offset + length]
                views = chunk.staged()
                if size >= T and length:
                    self.assertTrue(b"".join(views) == want, (size, offset, length))
                    self.assertTrue(all(len(v) for v in views))
                    # Only the buffers holding the range are still held.
                    first = (skip + offset) // STAGING_SIZE
                    last = -(-(skip + offset + length) // STAGING_SIZE)
                    self.assertEqual(store._staging.lent, last - first)
                pieces = [chunk.read(p, PIECE) for p in range(0, length, PIECE)]
                self.assertTrue(b"".join(pieces) == want, (size, offset, length))
                self.assertEqual(chunk.read(length, 10), b"")
                chunk.release()
                chunk.release()
                self.assert_all_back(store)

    def test_one_disk_read(self):
        """A staged GET reads the record from the disk once: direct reads
        of its aligned span, nothing through the volume's page-cache
        descriptor afterwards."""
        store = self.open_store()
        data = self.put_data(store, 1, 16 * MiB + 3)
        reads = []
        pread, pread_into = self.disk.pread, self.disk.pread_into
        self.disk.pread = lambda fd, size, offset: reads.append(size) or pread(fd, size, offset)
        self.disk.pread_into = lambda fd, buffer, offset: (
            reads.append(len(buffer)) or pread_into(fd, buffer, offset))
        chunk = self.successResultOf(store.get(1))
        self.assertEqual(chunk.read(0, chunk.length), data)
        chunk.release()
        self.assertLessEqual(sum(reads), 16 * MiB + 3 + HEADER_SIZE + 2 * BLOCK)
        self.assertEqual(len(reads), 17)

    def test_cap(self):
        """GETs beyond the cap verify with one reused buffer and keep their
        sendfile path; the bytes are the same.  Released, the cap frees."""
        store = self.open_store(staged_read_limit=20 * MiB)
        data = self.put_data(store, 1, 16 * MiB + 3)
        first = self.successResultOf(store.get(1))
        self.assertIsNotNone(first.staged())
        self.assertEqual(store._staged_bytes, 17 * STAGING_SIZE)
        second = self.successResultOf(store.get(1))
        self.assertIsNone(second.staged())
        self.assertEqual(store._staging.lent, 17)
        self.assertIsInstance(range_body(second, StringTransport()), ReadBody)
        second.release()
        self.assertEqual(self.sendfile(store, 1), data)  # beyond the cap again
        first.release()
        self.assert_all_back(store)
        third = self.successResultOf(store.get(1))
        self.assertIsNotNone(third.staged())
        third.release()
        self.assert_all_back(store)

    def test_range_fits_under_the_cap(self):
        """A range keeps only its buffers, so the cap admits more GETs."""
        store = self.open_store(staged_read_limit=20 * MiB)
        data = self.put_data(store, 1, 16 * MiB + 3)
        small = [self.successResultOf(store.get(1, 5 * MiB, 64)) for _ in range(3)]
        for chunk in small:
            self.assertEqual(b"".join(chunk.staged()), data[5 * MiB:5 * MiB + 64])
        self.assertLessEqual(store._staged_bytes, 3 * 2 * STAGING_SIZE)
        for chunk in small:
            chunk.release()
        self.assert_all_back(store)

    def test_cap_zero_is_todays_path(self):
        store = self.open_store(staged_read_limit=0)
        data = self.put_data(store, 1, T + 1)
        chunk = self.successResultOf(store.get(1))
        self.assertIsNone(chunk.staged())
        chunk.release()
        self.assertEqual(self.sendfile(store, 1), data)
        self.assert_all_back(store)

    def test_bad_limit(self):
        self.assertRaises(ValueError, self.open_store, staged_read_limit=-1)

    def test_default_limit(self):
        store = self.open_store()
        self.assertEqual(store.staged_read_limit, STAGED_READ_LIMIT)

    def test_damage(self):
        """A damaged record (its data or its header) answers
        CHECKSUM_MISMATCH and keeps no buffer."""
        store = self.open_store()
        self.put_data(store, 1, 16 * MiB + 3)
        kept = self.put_data(store, 2, 3 * MiB)
        self.put_data(store, 3, 3 * MiB)
        path, offset = self.chunk_position(store, 1)
        corrupt(path, offset + 8 * MiB, b"X")
        self.failureResultOf(store.get(1, 0, 10), ChecksumMismatch)
        self.assert_all_back(store)
        path, offset = self.chunk_position(store, 3)
        corrupt(path, offset - HEADER_SIZE + 8, b"\x09")
        self.failureResultOf(store.get(3), ChecksumMismatch)
        self.assert_all_back(store)
        self.assertEqual(self.read(store, 2), kept)
        self.assertEqual(store.status()["counters"]["checksum_errors"], 2)

    def test_read_error(self):
        store = self.open_store()
        self.put_data(store, 1, 5 * MiB)
        self.disk.fail("pread_direct", errno.EIO)
        self.failureResultOf(store.get(1), ChecksumMismatch)
        self.assert_all_back(store)
        self.disk.heal("pread_direct")
        self.assertEqual(len(self.read(store, 1)), 5 * MiB)
        self.assert_all_back(store)

    def test_store_closing_mid_get(self):
        """The store closes while a staged verify runs: the GET fails Busy
        and every buffer is back; a staged read handed out before the close
        gives its buffers back when it is released."""
        threads = ManualThreads()
        store = self.open_store(run_in_thread=threads)
        write = store.put(1, 4 * MiB)
        data = os.urandom(4 * MiB)
        write.write(data)
        finished = write.finish()
        threads.run_all()
        self.successResultOf(finished)
        held = store.get(1)
        threads.run_all()
        held = self.successResultOf(held)
        self.assertEqual(store._staging.lent, 5)
        verifying = store.get(1, 10, 3 * MiB)
        self.assertEqual([f.__name__ for f, _, _ in threads.calls], ["read_record_direct"])
        self.assertEqual(store._staging.lent, 10)
        closed = store.close()
        threads.run_all()
        self.successResultOf(closed)
        self.failureResultOf(verifying, Busy)
        self.assertEqual(store._staging.lent, 5)
        self.assertEqual(held.read(0, held.length), data)
        held.release()
        self.assert_all_back(store)

    def test_direct_io_off(self):
        """With direct I/O off nothing is staged: C{read_record}, then
        sendfile from the volume file."""
        store = self.open_store(direct_io="off")
        data = self.put_data(store, 1, 2 * T)
        chunk = self.successResultOf(store.get(1))
        self.assertIsNone(chunk.staged())
        self.assertIsInstance(chunk.fileno(), int)
        chunk.release()
        self.assertEqual(self.sendfile(store, 1), data)
        self.assertIsNone(store._staging)


class StagedLoopbackTests(StagedTestMixin, TestCase):
    """Staged bodies over a real loopback TCP connection, and the copy
    fallback on transports without a visible socket."""

    @inlineCallbacks
    def stream(self, make_body, stop_after=None):
        _, data, sent = yield stream_over_loopback(self, make_body, b"h" * 1000, stop_after)
        return data[1000:], sent

    def sampled_ranges(self, store):
        """
        Store a record of each of L{SIZES}, one after the other.

        @return: an iterator of C{(n, size, data, offset, length)}: for
            each record C{n}, a dozen of its L{ranges} at buffer edges and
            the whole record.
        """
        for n, size in enumerate(SIZES):
            data = self.put_data(store, n, size)
            chunk = self.successResultOf(store.get(n))
            skip = self.skip_of(chunk)
            chunk.release()
            chosen = ranges(size, skip)
            for offset, length in chosen[::max(1, len(chosen) // 12)] + [(0, size)]:
                yield n, size, data, offset, length

    @inlineCallbacks
    def test_ranges_over_tcp(self):
        """Whole records and ranges at buffer edges go out with
        L{StagedBody}, byte for byte, every buffer back after each."""
        store = self.open_store()
        for n, size, data, offset, length in self.sampled_ranges(store):
            chunk = self.successResultOf(store.get(n, offset, length))
            bodies = []

            def make_body(transport):
                bodies.append(range_body(chunk, transport))
                return bodies[0]
            got, sent = yield self.stream(make_body)
            self.assertIsNone(sent)
            expected = SendfileBody if size < T else StagedBody
            self.assertIsInstance(bodies[0], expected)
            self.assertTrue(got == data[offset:offset + length], (size, offset, length))
            self.assert_all_back(store)

    @inlineCallbacks
    def test_beyond_the_cap_over_tcp(self):
        """While one staged GET holds the cap, the next takes the sendfile
        path; both send identical bytes."""
        store = self.open_store(staged_read_limit=20 * MiB)
        data = self.put_data(store, 1, 16 * MiB + 3)
        first = self.successResultOf(store.get(1))
        second = self.successResultOf(store.get(1, 3, 16 * MiB))
        bodies = []

        def make_body(chunk):
            def make(transport):
                bodies.append(range_body(chunk, transport))
                return bodies[-1]
            return make
        got, sent = yield self.stream(make_body(second))
        self.assertIsInstance(bodies[-1], SendfileBody)
        self.assertTrue(got == data[3:16 * MiB + 3])
        self.assertEqual(store._staging.lent, 17)
        got, sent = yield self.stream(make_body(first))
        self.assertIsInstance(bodies[-1], StagedBody)
        self.assertTrue(got == data)
        self.assert_all_back(store)

    @inlineCallbacks
    def test_peer_gone_mid_body(self):
        """The receiver hangs up after 1 MiB: the body fails with
        ConnectionLost and the buffers are back."""
        store = self.open_store()
        self.put_data(store, 1, 16 * MiB + 3)
        chunk = self.successResultOf(store.get(1))
        got, sent = yield self.stream(lambda t: range_body(chunk, t), stop_after=MiB)
        self.assertLess(len(got), 16 * MiB)
        sent.trap(ConnectionLost)
        self.assert_all_back(store)

    def test_copy_fallback(self):
        """Under TLS (and on any transport whose socket we cannot see) a
        staged read goes out in copies of at most PIECE bytes: every size,
        whole and in ranges at buffer edges."""
        store = self.open_store()
        transports = [TLSStringTransport, StringTransport]
        for n, size, data, offset, length in self.sampled_ranges(store):
            chunk = self.successResultOf(store.get(n, offset, length))
            self.assertEqual(chunk.staged() is not None, size >= T)
            transports.reverse()
            transport = transports[0]()
            body = range_body(chunk, transport)
            self.assertIsInstance(body, ReadBody)
            done = body.start(transport)
            while transport.producer is not None:
                transport.producer.resumeProducing()
            self.successResultOf(done)
            self.assertTrue(transport.value() == data[offset:offset + length],
                            (size, offset, length))
            self.assert_all_back(store)
        chunk = self.successResultOf(store.get(n))
        body = range_body(chunk, StringTransport(), zero_copy=False)
        self.assertIsInstance(body, ReadBody)
        body.stopProducing()
        self.assert_all_back(store)


class Client(Receiver):
    """Sends one request on connecting, then collects what comes back."""

    def __init__(self, request, stop_after=None):
        super().__init__(stop_after)
        self.request = request

    def connectionMade(self):
        super().connectionMade()
        self.transport.write(self.request)


class StagedProtocolTests(StagedTestMixin, TestCase):
    """The chunkserver protocol answers GETs from staged buffers."""

    @inlineCallbacks
    def get(self, store, request, stop_after=None):
        factory = ChunkServerFactory(reactor, store)
        port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
        self.addCleanup(port.stopListening)
        client = Client(request, stop_after)
        yield TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port).connect(
            Factory.forProtocol(lambda: client))
        if stop_after is None:
            while True:
                frames, _ = parse_frames(bytes(client.data))
                if frames:
                    break
                d = Deferred()
                reactor.callLater(0.01, d.callback, None)
                yield d
            client.transport.loseConnection()
        yield client.done
        # Let the server see the connection go.
        for _ in range(100):
            if not factory.counters["open_connections"]:
                break
            d = Deferred()
            reactor.callLater(0.01, d.callback, None)
            yield d
        return factory, parse_frames(bytes(client.data))[0]

    @inlineCallbacks
    def test_get_and_range(self):
        store = self.open_store()
        data = self.put_data(store, 1, 16 * MiB + 3)
        for offset, length in [(0, ALL_BYTES), (MiB - 77, 3 * MiB), (16 * MiB, 3), (7, 100)]:
            factory, [(header, body)] = yield self.get(store, get_request(1, 1, offset, length))
            want = data[offset:] if length == ALL_BYTES else data[offset:offset + length]
            self.assertFalse(header.flags & FLAG_ERROR)
            self.assertTrue(body[GET_RESPONSE.size:] == want, (offset, length))
            self.assert_all_back(store)
        self.successResultOf(store.close())

    @inlineCallbacks
    def test_damaged_answers_checksum_mismatch(self):
        store = self.open_store()
        self.put_data(store, 1, 16 * MiB + 3)
        path, offset = self.chunk_position(store, 1)
        corrupt(path, offset + 3 * MiB, b"X")
        factory, [(header, body)] = yield self.get(store, get_request(1, 1))
        self.assertTrue(header.flags & FLAG_ERROR)
        self.assertEqual(error_code(body), ChecksumMismatch.code)
        self.assert_all_back(store)
        self.flushLoggedErrors()
        self.successResultOf(store.close())

    @inlineCallbacks
    def test_client_gone_mid_body(self):
        """A client hanging up mid-body is counted as an abandoned answer;
        the buffers are back."""
        store = self.open_store()
        self.put_data(store, 1, 16 * MiB + 3)
        factory, _ = yield self.get(store, get_request(1, 1), stop_after=MiB)
        self.assertEqual(factory.counters["answers_abandoned"], 1)
        self.assert_all_back(store)
        self.assertEqual(self.flushLoggedErrors(), [])
        self.successResultOf(store.close())
