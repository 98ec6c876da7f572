"""
Tests for L{speedy.chunkserver.store.ChunkStore}: the IChunkStore contract
(L{speedy.testing.ChunkStoreTestsMixin}, shared with the memory store, and
what only a store on disk promises), durability policies and group commit,
full disks and failing system calls.

The helpers at the top (L{inline}, L{ManualThreads}, L{FaultyDisk},
L{StoreTestMixin}) are shared by the other C{test_store_*} modules.
"""

import errno
import os

from twisted.internet.defer import CancelledError, Deferred, maybeDeferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from speedy.chunkserver.disk import Disk
from speedy.chunkserver.store import INLINE_VERIFY_LIMIT, ChunkStore
from speedy.chunkserver.volume import DATA_START, HEADER_SIZE, volume_file_name
from speedy.errors import ChecksumMismatch, NoSpace, ReadOnly
from speedy.records import ChunkInfo
from speedy.testing import ChunkStoreTestsMixin

MiB = 1 << 20


def inline(f, *args):
    """A C{run_in_thread} that runs C{f} at once, on the calling thread."""
    return maybeDeferred(f, *args)


class ManualThreads:
    """A C{run_in_thread} that holds every call until the test runs it."""

    def __init__(self):
        self.calls = []

    def __call__(self, f, *args):
        d = Deferred()
        self.calls.append((f, args, d))
        return d

    def run_next(self):
        f, args, d = self.calls.pop(0)
        maybeDeferred(f, *args).chainDeferred(d)

    def run_all(self):
        while self.calls:
            self.run_next()


class FaultyDisk(Disk):
    """
    A L{Disk} whose calls can be made to fail, whose free space can be set,
    whose page cache can be made to miss (C{cached}), and that can "crash":
    close every descriptor the way a killed process does.  A killed process's writes survive in the page cache, so syncs
    are counted and not performed (which keeps the tests fast).

    Direct (C{O_DIRECT}) descriptors are real too; C{"open_direct"},
    C{"pwrite_direct"} and C{"pread_direct"} fail only direct I/O, and
    C{writes} logs C{(direct, offset, length)} of every C{pwrite}.
    """

    def __init__(self):
        self.failing = {}
        self.available = None
        self.cached = True
        self.fdatasyncs = 0
        self.open_fds = set()
        self.direct_fds = set()
        self.direct_opens = 0
        self.writes = []

    def fail(self, name, code=errno.ENOSPC):
        self.failing[name] = code

    def heal(self, name):
        self.failing.pop(name, None)

    def _check(self, name):
        if name in self.failing:
            code = self.failing[name]
            raise OSError(code, os.strerror(code))

    def open(self, path, create=False):
        fd = super().open(path, create)
        self.open_fds.add(fd)
        return fd

    def open_direct(self, path):
        self.direct_opens += 1
        self._check("open_direct")
        fd = super().open_direct(path)
        self.open_fds.add(fd)
        self.direct_fds.add(fd)
        return fd

    def close(self, fd):
        self.open_fds.discard(fd)
        self.direct_fds.discard(fd)
        super().close(fd)

    def pwrite(self, fd, data, offset):
        self._check("pwrite")
        direct = fd in self.direct_fds
        if direct:
            self._check("pwrite_direct")
        self.writes.append((direct, offset, len(data)))
        super().pwrite(fd, data, offset)

    def pread_into(self, fd, buffer, offset):
        self._check("pread")
        if fd in self.direct_fds:
            self._check("pread_direct")
        return super().pread_into(fd, buffer, offset)

    def pread(self, fd, size, offset):
        self._check("pread")
        return super().pread(fd, size, offset)

    def pread_cached(self, fd, size, offset):
        self._check("pread")
        if not self.cached:
            return None
        return super().pread_cached(fd, size, offset)

    def fdatasync(self, fd):
        self._check("fdatasync")
        self.fdatasyncs += 1

    def fsync(self, fd):
        self._check("fsync")

    def fsync_directory(self, path):
        self._check("fsync")

    def allocate(self, fd, end, start=0):
        self._check("allocate")
        super().allocate(fd, end, start)

    def space(self, path):
        total, available = super().space(path)
        if self.available is not None:
            available = self.available
        return total, available

    def crash(self):
        for fd in list(self.open_fds):
            self.close(fd)


class StoreTestMixin:
    """Opens stores on a temporary directory through a L{FaultyDisk}."""

    def setUp(self):
        self.clock = Clock()
        self.disk = FaultyDisk()
        self.path = os.path.abspath(self.mktemp())
        self.addCleanup(self.disk.crash)

    def open_store(self, **kwargs):
        """@return: a L{ChunkStore} on C{self.path}, 1 MiB volumes by default."""
        kwargs.setdefault("volume_size", MiB)
        kwargs.setdefault("reserve", 0)
        kwargs.setdefault("run_in_thread", inline)
        kwargs.setdefault("disk", self.disk)
        return ChunkStore.open(self.clock, self.path, **kwargs)

    def reopen(self, store, **kwargs):
        """Close C{store} cleanly.  @return: the store opened again."""
        self.successResultOf(store.close())
        return self.open_store(**kwargs)

    def crash(self, **kwargs):
        """Drop every open file like a killed process.  @return: a new store."""
        self.disk.crash()
        return self.open_store(**kwargs)

    def put(self, store, file_id, data, pieces=1):
        """Store C{data}.  @return: its L{ChunkInfo}."""
        write = store.put(file_id, len(data))
        step = max(1, len(data) // pieces)
        for start in range(0, len(data), step):
            write.write(data[start:start + step])
        return self.successResultOf(write.finish())

    def read(self, store, file_id, offset=0, length=None):
        """@return: the bytes of a chunk (range), read through IChunkRead."""
        chunk = self.successResultOf(store.get(file_id, offset, length))
        try:
            return chunk.read(0, chunk.length)
        finally:
            chunk.release()

    def volume_path(self, volume_id=1):
        return os.path.join(self.path, volume_file_name(volume_id))

    def chunk_position(self, store, file_id):
        """@return: (volume file path, file offset of the chunk's data)."""
        chunk = self.successResultOf(store.get(file_id))
        try:
            return self.volume_path(), chunk.file_offset()
        finally:
            chunk.release()


def corrupt(path, offset, data):
    """Overwrite bytes of a file behind the store's back."""
    fd = os.open(path, os.O_RDWR)
    try:
        os.pwrite(fd, data, offset)
    finally:
        os.close(fd)


class ContractTests(ChunkStoreTestsMixin, StoreTestMixin, SynchronousTestCase):
    """
    What the wire protocol relies on: the conformance tests shared with
    L{MemoryChunkStore}, and what only a store on disk promises.
    """

    def make_store(self):
        return self.open_store(max_chunk_size=self.max_chunk)

    def damage(self, store, file_id):
        path, offset = self.chunk_position(store, file_id)
        corrupt(path, offset + 1, b"X")

    def test_fileno_and_offset_for_sendfile(self):
        """fileno() and file_offset() locate the range's bytes in the volume file."""
        data = os.urandom(5000)
        self.put(self.store, 3, data)
        chunk = self.successResultOf(self.store.get(3, 100, 50))
        try:
            self.assertEqual(os.pread(chunk.fileno(), 50, chunk.file_offset()),
                             data[100:150])
            self.assertEqual((chunk.offset, chunk.length), (100, 50))
            self.assertEqual(chunk.info, ChunkInfo(3, 5000, self.store.stat(3).crc32c))
        finally:
            chunk.release()

    def test_stat_from_memory(self):
        """stat() answers without touching the disk."""
        info = self.put(self.store, 5, b"hello")
        self.disk.fail("pread", errno.EIO)
        self.assertEqual(self.store.stat(5), info)

    def test_read_error_is_a_bad_replica(self):
        """An I/O error reading a chunk answers ChecksumMismatch, so the
        imageserver reads another replica."""
        self.put(self.store, 1, b"data")
        self.disk.fail("pread", errno.EIO)
        self.failureResultOf(self.store.get(1), ChecksumMismatch)

    def test_failed_get_unpins(self):
        """A get that fails unexpectedly (a bug, not an I/O error), inline
        or in a thread, fails with that error and still unpins its volume,
        so a compaction closes the old file at once."""
        self.put(self.store, 1, b"a")
        self.put(self.store, 2, b"b")
        self.successResultOf(self.store.delete(2))

        def bug(fd, size, offset):
            raise ZeroDivisionError("bug")

        for cached in (True, False):
            self.disk.cached = cached
            self.disk.pread_cached = self.disk.pread = bug
            self.failureResultOf(self.store.get(1), ZeroDivisionError)
            del self.disk.pread_cached, self.disk.pread
        open_files = len(self.disk.open_fds)
        self.successResultOf(self.store.compact(1))
        self.assertEqual(len(self.disk.open_fds), open_files)
        self.assertEqual(self.read(self.store, 1), b"a")

    def test_new_volume_when_full(self):
        """A volume that cannot take a chunk leaves it to a new volume."""
        self.successResultOf(self.store.close())
        store = self.open_store()
        for n in range(5):
            self.put(store, n, bytes([n]) * 400_000)
        volumes = store.status()["volumes"]
        self.assertEqual([v["volume_id"] for v in volumes], [1, 2, 3])
        self.assertTrue(all(v["used"] <= v["size"] for v in volumes))
        for n in range(5):
            self.assertEqual(self.read(store, n), bytes([n]) * 400_000)

    def test_abort_leaves_garbage(self):
        """An aborted write's space is garbage, and its reservation is
        given back (a compaction does not wait for it)."""
        write = self.store.put(1, 10)
        write.write(b"12345")
        write.abort()
        [volume] = self.store.status()["volumes"]
        self.assertEqual((volume["live"], volume["garbage"]), (0, 56))
        self.assertEqual(self.successResultOf(self.store.compact(1)), 56)

    def test_status(self):
        self.put(self.store, 1, b"x" * 1000)
        self.put(self.store, 2, b"y" * 1000)
        self.successResultOf(self.store.delete(2))
        status = self.store.status()
        self.assertEqual(status["chunks"], 1)
        self.assertFalse(status["read_only"])
        self.assertGreater(status["capacity"], 0)
        self.assertGreater(status["free"], 0)
        [volume] = status["volumes"]
        self.assertEqual(volume["volume_id"], 1)
        self.assertEqual(volume["live"], 1040)
        self.assertEqual(volume["garbage"], 1040 + 40)
        self.assertEqual(status["used"], 2 * 1040 + 40)
        for name in ("checksum_errors", "damaged_records", "reads", "writes", "deletes"):
            self.assertIn(name, status["counters"])

    def test_timers_stop_on_close(self):
        """start() arms timers; close() leaves none behind."""
        self.store.start()
        self.assertTrue(self.clock.getDelayedCalls())
        self.successResultOf(self.store.close())
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_periodic_checkpoint(self):
        """Changes are checkpointed by the timer, so a crash replays little."""
        self.store.start()
        self.put(self.store, 1, b"x")
        checkpoint = os.path.join(self.path, "index.ckpt")
        self.assertFalse(os.path.exists(checkpoint))
        self.clock.advance(60)
        self.assertTrue(os.path.exists(checkpoint))
        self.successResultOf(self.store.close())


class DurabilityTests(StoreTestMixin, SynchronousTestCase):
    """Sync policies and group commit."""

    def test_always_acks_after_fdatasync(self):
        threads = ManualThreads()
        store = self.open_store(run_in_thread=threads)
        write = store.put(1, 3)
        write.write(b"abc")
        d = write.finish()
        self.assertNoResult(d)
        self.assertEqual(self.disk.fdatasyncs, 0)
        threads.run_all()
        self.assertEqual(self.successResultOf(d).size, 3)
        self.assertEqual(self.disk.fdatasyncs, 1)

    def test_pieces_are_written_in_a_thread(self):
        """Arriving pieces wait in memory while a thread writes the previous
        ones; finish() waits until all are in the file."""
        threads = ManualThreads()
        store = self.open_store(run_in_thread=threads)
        write = store.put(1, 6)
        write.write(b"ab")
        write.write(memoryview(b"cd"))
        self.assertEqual(write.buffered, 4)
        self.assertEqual([f.__name__ for f, _, _ in threads.calls], ["_write_pieces"])
        write.write(bytearray(b"ef"))
        finished = write.finish()
        threads.run_next()
        self.assertEqual(write.buffered, 4)
        self.assertNoResult(finished)
        threads.run_all()
        self.assertEqual(write.buffered, 0)
        self.assertEqual(self.successResultOf(finished).size, 6)
        reading = store.get(1)
        threads.run_all()
        chunk = self.successResultOf(reading)
        self.assertEqual(chunk.read(0, 6), b"abcdef")
        chunk.release()

    def test_drained(self):
        """drained(limit) fires once the writing thread brought buffered
        down to the limit; a cancelled wait is forgotten."""
        threads = ManualThreads()
        store = self.open_store(run_in_thread=threads)
        write = store.put(1, 6)
        write.write(b"ab")
        write.write(b"cd")
        write.write(b"ef")
        self.assertEqual(write.buffered, 6)
        two, none, cancelled = write.drained(4), write.drained(0), write.drained(0)
        self.assertIsNone(self.successResultOf(write.drained(6)))
        cancelled.cancel()
        self.failureResultOf(cancelled, CancelledError)
        threads.run_next()  # "ab"; "cd" and "ef" go in the next job
        self.assertEqual(write.buffered, 4)
        self.assertIsNone(self.successResultOf(two))
        self.assertNoResult(none)
        threads.run_next()
        self.assertIsNone(self.successResultOf(none))
        finished = write.finish()
        threads.run_all()
        self.successResultOf(finished)

    def test_drained_when_the_write_fails(self):
        """A piece failing in the thread wakes drained() waiters: nothing
        is buffered any more, and the next write says why."""
        threads = ManualThreads()
        store = self.open_store(run_in_thread=threads)
        write = store.put(1, 4)
        write.write(b"ab")
        waiting = write.drained(0)
        self.disk.fail("pwrite")
        threads.run_all()
        self.assertIsNone(self.successResultOf(waiting))
        self.assertEqual(write.buffered, 0)
        self.assertRaises(NoSpace, write.write, b"cd")

    def test_failed_last_piece_after_finish(self):
        """When the last piece fails after finish() was called, the put
        fails and its reservation is given back: a compaction of the
        volume does not wait for it forever, nor does close()."""
        threads = ManualThreads()
        store = self.open_store(run_in_thread=threads)
        write = store.put(1, 4)
        write.write(b"abcd")
        finished = write.finish()
        self.disk.fail("pwrite")
        threads.run_all()
        self.disk.heal("pwrite")
        self.failureResultOf(finished, NoSpace)
        compacted = store.compact(1)
        threads.run_all()
        self.assertEqual(self.successResultOf(compacted), 48)
        closed = store.close()
        threads.run_all()
        self.successResultOf(closed)

    def test_failed_piece_in_a_thread(self):
        """A piece that fails in the writing thread fails the chunk at the
        next write and at finish(); the space becomes garbage."""
        threads = ManualThreads()
        store = self.open_store(run_in_thread=threads)
        write = store.put(1, 4)
        write.write(b"ab")
        self.disk.fail("pwrite")
        threads.run_all()
        self.disk.heal("pwrite")
        self.assertRaises(NoSpace, write.write, b"cd")
        self.failureResultOf(write.finish(), NoSpace)
        self.assertIsNone(store.stat(1))
        self.assertEqual(store.status()["volumes"][0]["live"], 0)
        self.assertEqual(store.status()["counters"]["nospace_errors"], 1)

    def stored(self, store, threads, file_id, data):
        """Store a chunk through C{store}, whose thread jobs wait in C{threads}."""
        write = store.put(file_id, len(data))
        write.write(data)
        finished = write.finish()
        threads.run_all()
        self.successResultOf(finished)

    def test_small_get_verifies_inline(self):
        """A small record in the page cache is checked on the reactor
        thread (cheaper than a thread hop), and read() serves the bytes it
        was checked with."""
        threads = ManualThreads()
        store = self.open_store(run_in_thread=threads)
        data = os.urandom(INLINE_VERIFY_LIMIT - HEADER_SIZE)
        self.stored(store, threads, 1, data)
        chunk = self.successResultOf(store.get(1, 10, 100))
        self.assertEqual(threads.calls, [])
        self.disk.fail("pread")
        self.assertEqual(chunk.read(0, 100), data[10:110])
        chunk.release()

    def test_large_get_verifies_in_a_thread(self):
        """The CRC32C check of a larger record runs off the reactor thread,
        so a 16 MiB verify never stalls it."""
        threads = ManualThreads()
        store = self.open_store(run_in_thread=threads)
        data = os.urandom(INLINE_VERIFY_LIMIT - HEADER_SIZE + 1)
        self.stored(store, threads, 1, data)
        d = store.get(1)
        self.assertNoResult(d)
        self.assertEqual([f.__name__ for f, _, _ in threads.calls], ["read_record"])
        threads.run_all()
        chunk = self.successResultOf(d)
        self.assertEqual(chunk.read(0, chunk.length), data)
        chunk.release()

    def test_uncached_get_verifies_in_a_thread(self):
        """A small record that is not in the page cache is read in a
        thread: the reactor never waits for the disk."""
        threads = ManualThreads()
        store = self.open_store(run_in_thread=threads)
        self.stored(store, threads, 1, b"abc")
        self.disk.cached = False
        d = store.get(1)
        self.assertNoResult(d)
        self.assertEqual([f.__name__ for f, _, _ in threads.calls], ["read_record"])
        threads.run_all()
        chunk = self.successResultOf(d)
        self.assertEqual(chunk.read(0, 3), b"abc")
        chunk.release()

    def test_group_commit(self):
        """Finishes arriving while a sync runs share the next one."""
        threads = ManualThreads()
        store = self.open_store(run_in_thread=threads)
        writes = []
        for file_id in range(4):
            write = store.put(file_id, 1)
            write.write(b"x")
            writes.append(write)
        threads.run_all()
        finished = [write.finish() for write in writes]
        self.assertEqual(len(threads.calls), 1)
        threads.run_next()
        self.successResultOf(finished[0])
        for d in finished[1:]:
            self.assertNoResult(d)
        self.assertEqual(len(threads.calls), 1)
        threads.run_next()
        for d in finished[1:]:
            self.successResultOf(d)
        self.assertEqual(self.disk.fdatasyncs, 2)
        self.assertEqual(store.status()["counters"]["sync_rounds"], 2)

    def test_delete_acks_after_fdatasync(self):
        store = self.open_store()
        self.put(store, 1, b"x")
        before = self.disk.fdatasyncs
        self.successResultOf(store.delete(1))
        self.assertEqual(self.disk.fdatasyncs, before + 1)

    def test_batch_acks_at_once_and_syncs_every_second(self):
        store = self.open_store(sync="batch")
        store.start()
        self.put(store, 1, b"x")
        self.assertEqual(self.disk.fdatasyncs, 0)
        self.clock.advance(1)
        self.assertEqual(self.disk.fdatasyncs, 1)
        self.clock.advance(1)
        self.assertEqual(self.disk.fdatasyncs, 1)
        self.successResultOf(store.close())

    def test_none_leaves_it_to_the_os(self):
        store = self.open_store(sync="none")
        self.put(store, 1, b"x")
        self.successResultOf(store.delete(1))
        self.assertEqual(self.disk.fdatasyncs, 0)

    def test_sync_failure(self):
        """A failed fdatasync fails the write that waited for it, cleanly."""
        store = self.open_store()
        self.disk.fail("fdatasync", errno.EIO)
        write = store.put(1, 1)
        write.write(b"x")
        self.failureResultOf(write.finish(), NoSpace)
        self.assertEqual(store.status()["counters"]["sync_errors"], 1)
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)
        self.disk.heal("fdatasync")
        self.put(store, 2, b"y")
        self.assertEqual(self.read(store, 2), b"y")

    def test_bad_settings(self):
        self.assertRaises(ValueError, self.open_store, sync="sometimes")
        self.assertRaises(ValueError, self.open_store, volume_size=100)
        self.assertRaises(ValueError, self.open_store, compact_threshold=0)


class FullDiskTests(StoreTestMixin, SynchronousTestCase):
    """A full disk costs the write that hit it, and nothing else."""

    def test_read_only_below_reserve(self):
        store = self.open_store(reserve=10 * MiB)
        store.start()
        self.put(store, 1, b"kept")
        self.disk.available = 5 * MiB
        self.clock.advance(10)
        self.assertTrue(store.read_only)
        self.assertTrue(store.status()["read_only"])
        self.assertEqual(store.status()["free"], 0)
        self.assertRaises(ReadOnly, store.put, 2, 1)
        self.assertEqual(self.read(store, 1), b"kept")
        self.successResultOf(store.delete(1))
        self.disk.available = 100 * MiB
        self.clock.advance(10)
        self.assertFalse(store.read_only)
        self.put(store, 2, b"back")
        self.successResultOf(store.close())

    def test_reserve_fraction(self):
        """A reserve below 1 is a fraction of the file system."""
        self.disk.available = 0
        store = self.open_store(reserve=0.5)
        self.assertTrue(store.read_only)

    def test_read_only_at_open(self):
        self.disk.available = 0
        store = self.open_store(reserve=1)
        self.assertRaises(ReadOnly, store.put, 1, 1)

    def test_enospc_writing_header(self):
        store = self.open_store()
        self.put(store, 1, b"kept")
        self.disk.fail("pwrite")
        self.assertRaises(NoSpace, store.put, 2, 100)
        self.disk.heal("pwrite")
        self.put(store, 3, b"after")
        store = self.reopen(store)
        self.assertEqual(list(store.file_ids()), [1, 3])
        self.assertEqual(self.read(store, 3), b"after")

    def test_enospc_mid_stream(self):
        """ENOSPC in the middle of a chunk fails that chunk; the volume goes on."""
        store = self.open_store()
        self.put(store, 1, b"kept")
        write = store.put(2, 100)
        write.write(b"x" * 50)
        self.disk.fail("pwrite")
        self.assertRaises(NoSpace, write.write, b"y" * 50)
        self.failureResultOf(write.finish(), NoSpace)
        self.disk.heal("pwrite")
        self.put(store, 3, b"after")
        self.assertEqual(store.status()["counters"]["nospace_errors"], 1)
        store = self.crash()
        self.assertEqual(list(store.file_ids()), [1, 3])
        self.assertEqual(self.read(store, 1), b"kept")
        self.assertEqual(self.read(store, 3), b"after")
        self.assertEqual(store.status()["counters"]["damaged_records"], 0)

    def test_enospc_finishing(self):
        """ENOSPC writing the final header fails the put; nothing else is lost."""
        store = self.open_store()
        self.put(store, 1, b"kept")
        write = store.put(2, 4)
        write.write(b"lost")
        self.disk.fail("pwrite")
        self.failureResultOf(write.finish(), NoSpace)
        self.disk.heal("pwrite")
        self.assertIsNone(store.stat(2))
        self.put(store, 3, b"after")
        store = self.crash()
        self.assertEqual(list(store.file_ids()), [1, 3])

    def test_enospc_deleting(self):
        store = self.open_store()
        self.put(store, 1, b"kept")
        self.disk.fail("pwrite")
        self.failureResultOf(store.delete(1), NoSpace)
        self.disk.heal("pwrite")
        self.assertEqual(self.read(store, 1), b"kept")
        store = self.crash()
        self.assertEqual(self.read(store, 1), b"kept")

    def test_no_room_for_a_new_volume(self):
        """When the next volume cannot be allocated, the put fails with
        NoSpace and no half-made file is left."""
        store = self.open_store()
        self.put(store, 1, b"a" * 600_000)
        self.disk.fail("allocate")
        self.assertRaises(NoSpace, store.put, 2, 600_000)
        self.assertFalse(os.path.exists(self.volume_path(2)))
        self.disk.heal("allocate")
        self.put(store, 2, b"b" * 600_000)
        self.assertEqual(self.read(store, 1), b"a" * 600_000)

    def test_free_is_what_can_be_written(self):
        """Free space is what a chunk can still take: the roomiest volume's
        room and the volumes that can be made above the reserve, not the
        disk's free bytes above the reserve (which a volume may not fit
        in).  So a full server advertises no room, and its group is not
        chosen for chunks it would refuse."""
        store = self.open_store(reserve=10 * MiB)
        self.disk.available = 10 * MiB + MiB // 2  # half a volume above the reserve
        self.assertEqual(store.status()["free"], 0)  # no volume yet, and none can be made
        self.disk.available = 12 * MiB
        self.put(store, 1, b"a" * 600_000)
        self.disk.available = 10 * MiB + MiB // 2
        room = store.status()["free"]
        self.assertGreater(room, 0)
        self.assertLess(room, MiB - 600_000)
        self.assertRaises(NoSpace, store.put, 2, room + 1)
        self.disk.available = 12 * MiB + 1
        self.assertEqual(store.status()["free"], room + 2 * (MiB - DATA_START))

    def test_new_volume_keeps_the_reserve(self):
        """A new volume is not created if it would eat into the reserve."""
        store = self.open_store(reserve=10 * MiB)
        self.put(store, 1, b"a" * 600_000)
        self.disk.available = 10 * MiB + MiB // 2
        self.assertRaises(NoSpace, store.put, 2, 600_000)
        self.put(store, 3, b"fits in volume 1")
