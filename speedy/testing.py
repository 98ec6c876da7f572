# -*- test-case-name: speedy.test.test_testing -*-
"""
Verified fakes of Speedy's interfaces, for tests of whatever sits on top of
them, and the conformance tests that hold a fake and the real thing to one
contract.

fake                    stands for          real implementation
----------------------  ------------------  -----------------------------------------------
MemoryChunkStore        IChunkStore         speedy.chunkserver.store.ChunkStore
FakeChunkClient         IChunkClient        speedy.wire.client.ChunkClient
MemoryMetadataStore     IMetadataStore      speedy.metadata.sql.SQLMetadataStore
MemoryChunkedStorage    IChunkedStorage     speedy.imageserver.replication.ReplicatedStorage
FakeMaster              IMasterClient       speedy.imageserver.master.HTTPMasterClient
StaticClusterView       IClusterView        speedy.imageserver.clusterview.ClusterViewPoller
FakeCluster             (a ReplicatedStorage wired to FakeChunkClient, FakeMaster,
                        StaticClusterView and MemoryMetadataStore on one Clock)

Conformance: L{ChunkStoreTestsMixin} (here) runs against L{MemoryChunkStore}
in L{speedy.test.test_testing} and against L{ChunkStore} in
L{speedy.test.test_store}; the metadata store's suite is
L{speedy.test.test_metadata}.
"""

from zope.interface.verify import verifyObject

from speedy.chunkserver.memorystore import MemoryChunkStore
from speedy.errors import (
    BadRequest, Busy, ChecksumMismatch, ChunkExists, ChunkNotFound,
    RangeNotSatisfiable, ReadOnly, TooLarge)
from speedy.imageserver.fakes import (
    FakeChunkClient, FakeCluster, FakeMaster, StaticClusterView)
from speedy.interfaces import IChunkRead, IChunkStore, IChunkWrite
from speedy.metadata.memory import MemoryMetadataStore
from speedy.registry.fakes import MemoryChunkedStorage

__all__ = [
    "ChunkStoreTestsMixin", "FakeChunkClient", "FakeCluster", "FakeMaster",
    "MemoryChunkStore", "MemoryChunkedStorage", "MemoryMetadataStore",
    "StaticClusterView",
]


class ChunkStoreTestsMixin:
    """
    The L{IChunkStore} contract the wire protocol relies on, for a
    C{SynchronousTestCase} whose store answers without a running reactor.

    Mix into a test case that provides:

      - C{make_store()}: @return: a new, empty L{IChunkStore} that accepts
        chunks of up to L{max_chunk} bytes and no more;
      - C{damage(store, file_id)}: spoil the stored bytes of a chunk behind
        the store's back, so that reading it fails its checksum.
    """

    #: The largest chunk the stores that C{make_store} builds accept.
    max_chunk = 64 * 1024

    def setUp(self):
        super().setUp()
        self.store = self.make_store()

    def put_chunk(self, file_id, data, pieces=1):
        """Store C{data} in C{pieces} writes.  @return: its L{ChunkInfo}."""
        write = self.store.put(file_id, len(data))
        step = max(1, len(data) // pieces)
        for start in range(0, len(data), step):
            write.write(data[start:start + step])
        return self.successResultOf(write.finish())

    def read_chunk(self, file_id, offset=0, length=None):
        """@return: the bytes of a chunk (or range), read through L{IChunkRead}."""
        chunk = self.successResultOf(self.store.get(file_id, offset, length))
        try:
            return chunk.read(0, chunk.length)
        finally:
            chunk.release()

    def test_interfaces(self):
        """The store, its writes and its reads provide their interfaces."""
        verifyObject(IChunkStore, self.store)
        write = self.store.put(1, 3)
        verifyObject(IChunkWrite, write)
        write.write(b"abc")
        self.successResultOf(write.finish())
        verifyObject(IChunkWrite, self.store.put(1, 3))
        chunk = self.successResultOf(self.store.get(1))
        verifyObject(IChunkRead, chunk)
        chunk.release()

    def test_round_trip(self):
        """Bytes written in pieces (bytes, bytearray, memoryview) read back
        whole, and the L{ChunkInfo} describes them."""
        data = bytes(range(256)) * 200
        write = self.store.put(7, len(data))
        write.write(data[:10])
        write.write(bytearray(data[10:5000]))
        write.write(memoryview(data)[5000:])
        info = self.successResultOf(write.finish())
        self.assertEqual((info.file_id, info.size), (7, len(data)))
        self.assertEqual(self.store.stat(7), info)
        self.assertEqual(self.read_chunk(7), data)
        chunk = self.successResultOf(self.store.get(7, 5, 10))
        self.assertEqual((chunk.info, chunk.offset, chunk.length), (info, 5, 10))
        chunk.release()

    def test_range(self):
        data = bytes(range(256)) * 10
        self.put_chunk(1, data)
        self.assertEqual(self.read_chunk(1, 250, 20), data[250:270])
        self.assertEqual(self.read_chunk(1, 2500), data[2500:])
        self.assertEqual(self.read_chunk(1, 2560, 0), b"")
        for offset, length in [(-1, 5), (2550, 11), (2561, None), (0, -1)]:
            self.failureResultOf(self.store.get(1, offset, length), RangeNotSatisfiable)

    def test_read_stays_inside_range(self):
        """IChunkRead.read never returns bytes past the range; release is
        idempotent."""
        self.put_chunk(1, b"0123456789")
        chunk = self.successResultOf(self.store.get(1, 2, 5))
        self.assertEqual(chunk.read(0, 2), b"23")
        self.assertEqual(chunk.read(3, 100), b"56")
        self.assertEqual(chunk.read(5, 100), b"")
        chunk.release()
        chunk.release()

    def test_missing(self):
        self.failureResultOf(self.store.get(99), ChunkNotFound)
        self.failureResultOf(self.store.delete(99), ChunkNotFound)
        self.assertIsNone(self.store.stat(99))

    def test_delete(self):
        self.put_chunk(1, b"one")
        self.put_chunk(2, b"two")
        self.assertIsNone(self.successResultOf(self.store.delete(1)))
        self.failureResultOf(self.store.get(1), ChunkNotFound)
        self.assertIsNone(self.store.stat(1))
        self.failureResultOf(self.store.delete(1), ChunkNotFound)
        self.assertEqual(list(self.store.file_ids()), [2])
        self.assertEqual(self.store.status()["counters"]["deletes"], 1)

    def test_put_after_delete(self):
        """A deleted id can be stored again, with other bytes."""
        self.put_chunk(1, b"old")
        self.successResultOf(self.store.delete(1))
        self.put_chunk(1, b"newer")
        self.assertEqual(self.read_chunk(1), b"newer")

    def test_file_ids_ascending(self):
        """Interleaved id ranges (several imageservers) list in order."""
        for n in range(5):
            self.put_chunk(2000 + n, b"b")
            self.put_chunk(1000 + n, b"a")
        self.assertEqual(list(self.store.file_ids()),
                         [1000, 1001, 1002, 1003, 1004, 2000, 2001, 2002, 2003, 2004])

    def test_empty_chunk(self):
        info = self.put_chunk(4, b"")
        self.assertEqual(info.size, 0)
        self.assertEqual(self.read_chunk(4), b"")

    def test_bad_put(self):
        """Impossible ids and sizes are refused before anything is stored."""
        for file_id, size in [(-1, 1), (2**64, 1), (1, -1)]:
            self.assertRaises(BadRequest, self.store.put, file_id, size)
        self.assertEqual(list(self.store.file_ids()), [])

    def test_too_large(self):
        """A chunk beyond the limit is refused up front; writing more than
        announced aborts the write."""
        self.assertRaises(TooLarge, self.store.put, 1, self.max_chunk + 1)
        write = self.store.put(1, self.max_chunk)
        write.write(b"x" * self.max_chunk)
        self.assertTrue(self.successResultOf(write.finish()))
        write = self.store.put(2, 10)
        self.assertRaises(TooLarge, write.write, b"x" * 11)
        self.failureResultOf(write.finish(), BadRequest)
        self.assertIsNone(self.store.stat(2))

    def test_short_write(self):
        """finish() before every announced byte arrived fails; nothing is stored."""
        write = self.store.put(1, 10)
        write.write(b"12345")
        self.failureResultOf(write.finish(), BadRequest)
        self.assertIsNone(self.store.stat(1))
        self.failureResultOf(self.store.get(1), ChunkNotFound)

    def test_abort(self):
        """An aborted write stores nothing and takes no more calls."""
        write = self.store.put(1, 10)
        write.write(b"12345")
        write.abort()
        write.abort()
        self.assertRaises(BadRequest, write.write, b"6")
        self.failureResultOf(write.finish(), BadRequest)
        self.assertIsNone(self.store.stat(1))
        self.assertEqual(self.store.status()["chunks"], 0)

    def test_finish_twice(self):
        write = self.store.put(1, 1)
        write.write(b"x")
        self.successResultOf(write.finish())
        self.assertRaises(BadRequest, write.write, b"")
        self.failureResultOf(write.finish(), BadRequest)

    def test_different_chunk_exists(self):
        self.put_chunk(1, b"first")
        write = self.store.put(1, 6)
        write.write(b"second")
        self.failureResultOf(write.finish(), ChunkExists)
        write = self.store.put(1, 5)
        write.write(b"FIRST")
        self.failureResultOf(write.finish(), ChunkExists)
        self.assertEqual(self.read_chunk(1), b"first")

    def test_idempotent_retry(self):
        """A retried put of identical bytes succeeds and stores nothing new."""
        info = self.put_chunk(1, b"same bytes")
        used = self.store.status()["used"]
        self.assertEqual(self.put_chunk(1, b"same bytes", pieces=3), info)
        self.assertEqual(self.store.status()["used"], used)
        self.assertEqual(self.store.status()["counters"]["writes"], 1)

    def test_concurrent_puts_of_one_id(self):
        """Two puts of one id streaming at once: the second to finish is
        a retry if identical, a conflict if not."""
        first, second, third = (self.store.put(9, 3) for _ in range(3))
        first.write(b"abc")
        second.write(b"abc")
        third.write(b"xyz")
        info = self.successResultOf(first.finish())
        self.assertEqual(self.successResultOf(second.finish()), info)
        self.failureResultOf(third.finish(), ChunkExists)
        self.assertEqual(self.read_chunk(9), b"abc")

    def test_drained_at_once(self):
        """drained() of a write that holds nothing back fires at once, for
        new chunks and retries alike."""
        write = self.store.put(1, 4)
        write.write(b"ab")
        self.assertIsNone(self.successResultOf(write.drained(write.buffered)))
        write.write(b"cd")
        self.successResultOf(write.finish())
        retry = self.store.put(1, 4)
        retry.write(b"abcd")
        self.assertEqual(retry.buffered, 0)
        self.assertIsNone(self.successResultOf(retry.drained(0)))
        self.successResultOf(retry.finish())

    def test_checksum_mismatch(self):
        """Damaged bytes fail the get (whole or range) before anything is
        sent, are counted, and harm no other chunk."""
        self.put_chunk(1, b"a" * 1000)
        self.put_chunk(2, b"b" * 1000)
        self.damage(self.store, 1)
        self.failureResultOf(self.store.get(1), ChecksumMismatch)
        self.failureResultOf(self.store.get(1, 0, 10), ChecksumMismatch)
        self.assertEqual(self.store.status()["counters"]["checksum_errors"], 2)
        self.assertEqual(self.read_chunk(2), b"b" * 1000)

    def test_read_only(self):
        """A read-only store refuses puts; reads and deletes still work."""
        self.put_chunk(1, b"kept")
        self.put_chunk(2, b"gone")
        self.store.read_only = True
        self.assertRaises(ReadOnly, self.store.put, 3, 1)
        self.assertEqual(self.read_chunk(1), b"kept")
        self.successResultOf(self.store.delete(2))
        self.assertTrue(self.store.status()["read_only"])

    def test_status(self):
        """status() is JSON-ready and has the fields the chunkmaster reads."""
        self.put_chunk(1, b"x" * 1000)
        self.put_chunk(2, b"y" * 1000)
        self.successResultOf(self.store.delete(2))
        status = self.store.status()
        self.assertEqual(status["chunks"], 1)
        self.assertFalse(status["read_only"])
        self.assertGreaterEqual(status["used"], 1000)
        for name in ("capacity", "free"):
            self.assertIsInstance(status[name], int)
        for volume in status["volumes"]:
            self.assertLessEqual({"volume_id", "size", "used", "garbage"}, set(volume))
        for name in ("checksum_errors", "reads", "writes", "deletes"):
            self.assertIn(name, status["counters"])
        self.assertEqual(status["counters"]["writes"], 2)

    def test_compact(self):
        """compact() frees the space of deleted chunks and keeps the rest."""
        self.put_chunk(1, b"x" * 1000)
        self.put_chunk(2, b"y" * 1000)
        self.successResultOf(self.store.delete(2))
        self.assertGreaterEqual(self.successResultOf(self.store.compact()), 1000)
        self.assertEqual(self.read_chunk(1), b"x" * 1000)

    def test_closed_store_refuses_work(self):
        """After close() every call fails cleanly, also on writes begun
        before; close() again is harmless."""
        self.put_chunk(1, b"x")
        streaming, complete = self.store.put(2, 2), self.store.put(3, 1)
        streaming.write(b"a")
        complete.write(b"b")
        self.successResultOf(self.store.close())
        self.assertRaises(Busy, streaming.write, b"b")
        self.failureResultOf(complete.finish(), Busy)
        self.assertRaises(Busy, self.store.put, 2, 1)
        self.failureResultOf(self.store.get(1), Busy)
        self.failureResultOf(self.store.delete(1), Busy)
        self.successResultOf(self.store.close())
