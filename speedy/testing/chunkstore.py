# -*- test-case-name: speedy.test.test_testing,speedy.test.test_store -*-
"""
L{MemoryChunkStore}: an L{IChunkStore} held in a dict, for tests of
everything that drives a chunk store (the wire protocol, the daemon, the
imageserver's storage path).  It keeps the contract, not the disk format.

L{ChunkStoreTestsMixin} is that contract: it runs against
L{MemoryChunkStore} in L{speedy.test.test_testing} and against the real
L{speedy.chunkserver.store.ChunkStore} in L{speedy.test.test_store}.
"""

import errno

from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from zope.interface import implementer
from zope.interface.verify import verifyObject

from speedy.crc import crc32c
from speedy.errors import (
    BadRequest, Busy, ChecksumMismatch, ChunkExists, ChunkNotFound, NoSpace,
    RangeNotSatisfiable, ReadOnly, TooLarge)
from speedy.interfaces import IChunkRead, IChunkStore, IChunkWrite
from speedy.records import ChunkInfo


@implementer(IChunkStore)
class MemoryChunkStore:
    """
    Chunks in memory.

    @ivar capacity: bytes it may hold; a write past it raises L{NoSpace}.
    @ivar max_chunk: the largest chunk C{put} accepts (L{TooLarge} beyond).
    @ivar open_writes: writes begun and neither finished nor aborted.
    @ivar pinned: reads handed out and not yet released.
    @ivar used: bytes of the stored chunks.
    @ivar lagging: while True, written bytes stay C{buffered} (a slow disk)
        until L{catch_up}.
    @ivar in_place: the most bytes a write offers to be read into at once
        (C{write_space}); 0, the default, offers none.
    """

    def __init__(self, capacity=1 << 40, max_chunk=64 << 20):
        self.capacity = capacity
        self.max_chunk = max_chunk
        self.read_only = False
        self.lagging = False
        self.in_place = 0
        self._writes = set()
        self.open_writes = 0
        self.pinned = 0
        self.used = 0
        self._chunks = {}
        self._damaged = set()
        self._garbage = 0
        self._closed = False
        self.counters = dict(checksum_errors=0, damaged_records=0, reads=0, writes=0,
                             deletes=0, aborts=0, verified=0)
        self.damaged = {}

    def add(self, file_id, data):
        """
        Store C{data} under C{file_id} at once, as a finished PUT does (also
        for setting up tests).  Storing the same bytes again is an
        idempotent retry: it changes nothing.

        @return: its L{ChunkInfo}.
        @raise ChunkExists: other bytes are stored under that id.
        """
        data = bytes(data)
        existing = self._chunks.get(file_id)
        if existing is not None and existing != data:
            raise ChunkExists(f"chunk {file_id} exists with other bytes")
        if existing is None:
            self._chunks[file_id] = data
            self.used += len(data)
            self.counters["writes"] += 1
        return ChunkInfo(file_id, len(data), crc32c(data))

    def contents(self, file_id):
        """@return: the bytes stored under C{file_id}, or None."""
        return self._chunks.get(file_id)

    def catch_up(self):
        """The slow disk caught up: nothing is buffered any more."""
        for write in list(self._writes):
            write.catch_up()

    def damage(self, file_id):
        """Make the stored bytes of C{file_id} fail their checksum on read."""
        self._damaged.add(file_id)

    def put(self, file_id, size, keep=False):
        """See L{IChunkStore.put}; C{keep} is ignored (every chunk is in
        memory already)."""
        if self._closed:
            raise Busy("the store is closed")
        if self.read_only:
            raise ReadOnly("the store is read-only")
        if not 0 <= file_id < 2**64 or size < 0:
            raise BadRequest(f"bad file id {file_id} or size {size}")
        if size > self.max_chunk:
            raise TooLarge(f"a chunk holds at most {self.max_chunk} bytes, not {size}")
        if self.used + size > self.capacity:
            raise NoSpace(f"no room for {size} bytes")
        self.open_writes += 1
        write = _MemoryChunkWrite(self, file_id, size)
        self._writes.add(write)
        return write

    def get(self, file_id, offset=0, length=None):
        if self._closed:
            return fail(Busy("the store is closed"))
        data = self._chunks.get(file_id)
        if data is None:
            return fail(ChunkNotFound(f"no chunk {file_id}"))
        if length is None:
            length = len(data) - offset
        if offset < 0 or length < 0 or offset + length > len(data):
            return fail(RangeNotSatisfiable(
                f"bytes {offset}+{length} lie outside chunk {file_id} of {len(data)}"))
        if file_id in self._damaged:
            return fail(self._drop_damaged(file_id))
        self.counters["reads"] += 1
        self.pinned += 1
        return succeed(_MemoryChunkRead(self, self.stat(file_id), data, offset, length))

    def verify(self, file_id):
        if self._closed:
            return fail(Busy("the store is closed"))
        if file_id not in self._chunks:
            return fail(ChunkNotFound(f"no chunk {file_id}"))
        self.counters["verified"] += 1
        if file_id in self._damaged:
            return fail(self._drop_damaged(file_id))
        return succeed(self.stat(file_id))

    def _drop_damaged(self, file_id):
        """Forget a damaged chunk, as the real store does.  @return: the
        L{ChecksumMismatch} to fail with."""
        data = self._chunks.pop(file_id)
        self._damaged.discard(file_id)
        self.used -= len(data)
        self._garbage += len(data)
        self.counters["checksum_errors"] += 1
        self.counters["damaged_records"] += 1
        self.damaged[file_id] = None
        return ChecksumMismatch(f"chunk {file_id} is damaged")

    def acknowledge_damaged(self, file_ids):
        for file_id in file_ids:
            self.damaged.pop(file_id, None)

    def stat(self, file_id):
        data = self._chunks.get(file_id)
        if data is None:
            return None
        return ChunkInfo(file_id, len(data), crc32c(data))

    def delete(self, file_id):
        if self._closed:
            return fail(Busy("the store is closed"))
        data = self._chunks.pop(file_id, None)
        if data is None:
            return fail(ChunkNotFound(f"no chunk {file_id}"))
        self._damaged.discard(file_id)
        self.used -= len(data)
        self._garbage += len(data)
        self.counters["deletes"] += 1
        return succeed(None)

    def file_ids(self):
        return iter(sorted(self._chunks))

    def compact(self, volume_id=None):
        freed, self._garbage = self._garbage, 0
        return succeed(freed)

    def status(self):
        used = self.used
        return {
            "capacity": self.capacity,
            "used": used,
            "free": 0 if self.read_only else self.capacity - used,
            "read_only": self.read_only,
            "chunks": len(self._chunks),
            "volumes": [{"volume_id": 0, "size": used + self._garbage,
                         "used": used, "garbage": self._garbage}],
            "counters": dict(self.counters),
        }

    def close(self):
        self._closed = True
        return succeed(None)


@implementer(IChunkWrite)
class _MemoryChunkWrite:
    """A put gathered in memory; with the store C{lagging}, what is written
    stays C{buffered} until the store catches up."""

    def __init__(self, store, file_id, size):
        self._store = store
        self._file_id = file_id
        self._size = size
        self._data = bytearray()
        self._open = True
        self._drain_waiters = []
        self._space = None  # the last write_space()
        self.buffered = 0

    def write(self, data):
        if not self._open:
            raise BadRequest("write after finish or abort")
        if self._store._closed:
            self.abort()
            raise Busy("the store is closed")
        data = bytes(data)
        if len(self._data) + len(data) > self._size:
            self.abort()
            raise TooLarge(f"more than the announced {self._size} bytes")
        self._data += data
        if self._store.lagging:
            self.buffered += len(data)

    def write_space(self):
        """With the store's C{in_place} set, a scratch buffer of up to that
        many bytes (what the real store's staging buffer is to it)."""
        room = min(self._store.in_place, self._size - len(self._data))
        if not self._open or room <= 0:
            return None
        self._space = memoryview(bytearray(room))
        return self._space

    def wrote(self, count):
        self.write(self._space[:count])

    def drained(self, limit):
        if self.buffered <= limit:
            return succeed(None)
        d = Deferred(lambda d: self._drain_waiters.remove((limit, d)))
        self._drain_waiters.append((limit, d))
        return d

    def catch_up(self):
        """Nothing is buffered any more: wake every L{drained} waiter."""
        self.buffered = 0
        waiters, self._drain_waiters = self._drain_waiters, []
        for _, d in waiters:
            d.callback(None)

    def finish(self):
        if not self._open:
            return fail(BadRequest("finish after finish or abort"))
        if self._store._closed:
            self.abort()
            return fail(Busy("the store is closed"))
        self._close()
        if len(self._data) != self._size:
            self._store.counters["aborts"] += 1
            return fail(BadRequest(f"{len(self._data)} of {self._size} bytes written"))
        return maybeDeferred(self._store.add, self._file_id, self._data)

    def abort(self):
        if self._open:
            self._store.counters["aborts"] += 1
        self._close()
        self._data = bytearray()

    def _close(self):
        if self._open:
            self._open = False
            self._store.open_writes -= 1
            self._store._writes.discard(self)
            self.catch_up()


@implementer(IChunkRead)
class _MemoryChunkRead:
    def __init__(self, store, info, data, offset, length):
        self._store = store
        self.info = info
        self._data = data
        self.offset = offset
        self.length = length
        self._pinned = True

    def fileno(self):
        raise OSError(errno.EOPNOTSUPP, "a memory store has no file to sendfile from")

    def file_offset(self):
        raise OSError(errno.EOPNOTSUPP, "a memory store has no file to sendfile from")

    def read(self, position, size):
        start = self.offset + position
        return self._data[start:start + min(size, self.length - position)]

    def release(self):
        if self._pinned:
            self._pinned = False
            self._store.pinned -= 1


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
        """Damaged bytes fail the get before anything is sent and harm no
        other chunk.  The damaged chunk is dropped, counted and listed in
        C{damaged} for the chunkmaster (until it acknowledges it), and can
        be written anew: a repair is a put of a missing chunk."""
        self.put_chunk(1, b"a" * 1000)
        self.put_chunk(2, b"b" * 1000)
        self.damage(self.store, 1)
        self.failureResultOf(self.store.get(1, 0, 10), ChecksumMismatch)
        self.failureResultOf(self.store.get(1), ChunkNotFound)
        self.assertIsNone(self.store.stat(1))
        self.assertEqual(list(self.store.damaged), [1])
        counters = self.store.status()["counters"]
        self.assertEqual((counters["checksum_errors"], counters["damaged_records"]), (1, 1))
        self.assertEqual(self.read_chunk(2), b"b" * 1000)
        self.put_chunk(1, b"a" * 1000)
        self.assertEqual(self.read_chunk(1), b"a" * 1000)
        self.store.acknowledge_damaged([1])
        self.assertEqual(list(self.store.damaged), [])

    def test_verify(self):
        """verify() checks a chunk's stored bytes: a good one answers its
        info, a damaged one is dropped as a get drops it, a missing one is
        not found."""
        self.put_chunk(1, b"a" * 1000)
        self.put_chunk(2, b"b" * 1000)
        self.assertEqual(self.successResultOf(self.store.verify(1)), self.store.stat(1))
        self.damage(self.store, 2)
        self.failureResultOf(self.store.verify(2), ChecksumMismatch)
        self.assertEqual(list(self.store.damaged), [2])
        self.failureResultOf(self.store.verify(2), ChunkNotFound)
        self.assertEqual(self.read_chunk(1), b"a" * 1000)

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
