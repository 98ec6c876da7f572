"""
Online compaction in L{speedy.chunkserver.store.ChunkStore}: space comes
back, and reads, writes and deletes carry on during the copy.
"""

import errno
import os

from twisted.trial.unittest import SynchronousTestCase

from speedy.chunkserver.checkpoint import FILE_NAME
from speedy.errors import BadRequest, ChunkNotFound, NoSpace
from speedy.test.test_store import ManualThreads, StoreTestMixin, corrupt


class CompactionTests(StoreTestMixin, SynchronousTestCase):
    def fill(self, store, count=10, size=5000):
        for n in range(count):
            self.put(store, n, bytes([n]) * size)

    def volume(self, store, volume_id=1):
        [volume] = [v for v in store.status()["volumes"] if v["volume_id"] == volume_id]
        return volume

    def test_frees_space(self):
        """Garbage is dropped, live chunks stay readable, and the room comes
        back for new chunks."""
        store = self.open_store()
        self.put(store, 1, b"a" * 450_000)
        self.put(store, 2, b"b" * 450_000)
        self.successResultOf(store.delete(1))
        before = self.volume(store)
        freed = self.successResultOf(store.compact(1))
        after = self.volume(store)
        self.assertEqual(freed, before["used"] - after["used"])
        self.assertGreater(freed, 450_000)
        self.assertEqual(after["garbage"], 0)
        self.assertEqual(self.read(store, 2), b"b" * 450_000)
        self.put(store, 3, b"c" * 450_000)
        self.assertEqual([v["volume_id"] for v in store.status()["volumes"]], [1])
        self.assertEqual(store.status()["counters"]["compactions"], 1)
        store = self.crash()
        self.assertEqual(list(store.file_ids()), [2, 3])
        self.assertEqual(self.read(store, 2), b"b" * 450_000)

    def test_only_volumes_past_the_threshold(self):
        store = self.open_store(compact_threshold=0.3)
        self.put(store, 1, b"x" * 400_000)
        self.put(store, 2, b"x" * 400_000)
        self.put(store, 3, b"y" * 400_000)
        self.put(store, 4, b"y" * 50_000)
        self.successResultOf(store.delete(1))
        self.successResultOf(store.delete(4))
        garbage = self.volume(store, 2)["garbage"]
        self.assertGreater(self.successResultOf(store.compact()), 0)
        self.assertEqual(self.volume(store, 1)["garbage"], 0)
        self.assertEqual(self.volume(store, 2)["garbage"], garbage)
        self.assertEqual(store.status()["counters"]["compactions"], 1)

    def test_nothing_to_compact(self):
        store = self.open_store()
        self.fill(store)
        self.assertEqual(self.successResultOf(store.compact()), 0)
        self.failureResultOf(store.compact(99), BadRequest)

    def test_periodic(self):
        store = self.open_store()
        store.start()
        self.fill(store)
        for n in range(5):
            self.successResultOf(store.delete(n))
        self.clock.advance(15 * 60)
        self.assertEqual(store.status()["counters"]["compactions"], 1)
        self.successResultOf(store.close())

    def test_reads_writes_and_deletes_during_the_copy(self):
        """While the live records are being copied, a delete and a put
        arrive and a read is pinned: the delete is not undone, the put is
        not lost, and the pinned read still reads the old file."""
        threads = ManualThreads()
        store = self.open_store(run_in_thread=threads)

        def now(d):
            threads.run_all()
            return self.successResultOf(d)

        for n in range(10):
            write = store.put(n, 5000)
            write.write(bytes([n]) * 5000)
            now(write.finish())
        for n in range(0, 10, 2):
            now(store.delete(n))
        compacted = store.compact(1)
        threads.run_next()  # list the records; the copy is now under way
        self.assertEqual(threads.calls[0][0].__name__, "_copy_records")
        self.assertNoResult(compacted)

        deleted = store.delete(1)
        write = store.put(100, 3)
        write.write(b"new")
        stored = write.finish()
        pinned = store.get(3)
        freed = now(compacted)
        self.assertGreater(freed, 0)
        self.successResultOf(deleted)
        self.successResultOf(stored)
        pinned = self.successResultOf(pinned)

        self.assertEqual(os.fstat(pinned.fileno()).st_nlink, 0)
        self.assertEqual(pinned.read(0, 5000), bytes([3]) * 5000)
        old_fd = pinned.fileno()
        pinned.release()
        self.assertRaises(OSError, os.fstat, old_fd)

        self.assertEqual(list(store.file_ids()), [3, 5, 7, 9, 100])
        reading = store.get(7)
        chunk = now(reading)
        self.assertEqual(chunk.read(0, 5000), bytes([7]) * 5000)
        chunk.release()
        self.failureResultOf(store.get(1), ChunkNotFound)

        store = self.crash()
        self.assertEqual(list(store.file_ids()), [3, 5, 7, 9, 100])
        self.assertEqual(self.read(store, 9), bytes([9]) * 5000)
        self.assertEqual(self.read(store, 100), b"new")
        # The tombstone written to the old file during the copy was carried
        # into the new one: even a full scan does not bring chunk 1 back.
        self.successResultOf(store.close())
        os.unlink(os.path.join(self.path, FILE_NAME))
        store = self.open_store()
        self.assertEqual(list(store.file_ids()), [3, 5, 7, 9, 100])

    def test_waits_for_streaming_puts(self):
        """A put streaming into the volume finishes before the copy starts."""
        store = self.open_store()
        self.fill(store)
        for n in range(5):
            self.successResultOf(store.delete(n))
        write = store.put(50, 4)
        write.write(b"ab")
        compacted = store.compact(1)
        self.assertNoResult(compacted)
        self.put(store, 51, b"elsewhere")
        write.write(b"cd")
        self.successResultOf(write.finish())
        self.assertGreater(self.successResultOf(compacted), 0)
        self.assertEqual(self.read(store, 50), b"abcd")
        self.assertEqual(self.read(store, 51), b"elsewhere")
        store = self.crash()
        self.assertEqual(list(store.file_ids()), [5, 6, 7, 8, 9, 50, 51])

    def test_failure_leaves_the_volume_usable(self):
        store = self.open_store()
        self.fill(store)
        for n in range(5):
            self.successResultOf(store.delete(n))
        self.disk.fail("allocate", errno.ENOSPC)
        self.failureResultOf(store.compact(1), NoSpace)
        self.assertEqual(os.listdir(self.path), ["volume-00000001.dat"])
        self.disk.heal("allocate")
        self.put(store, 20, b"still writable")
        self.assertEqual(self.read(store, 9), bytes([9]) * 5000)
        self.assertGreater(self.successResultOf(store.compact(1)), 0)

    def test_damaged_chunk_is_dropped(self):
        """A live chunk whose bytes fail their CRC is not carried over."""
        store = self.open_store()
        self.fill(store)
        for n in range(0, 10, 2):
            self.successResultOf(store.delete(n))
        path, offset = self.chunk_position(store, 5)
        corrupt(path, offset + 10, b"!")
        self.successResultOf(store.compact(1))
        self.assertEqual(list(store.file_ids()), [1, 3, 7, 9])
        self.assertEqual(store.status()["counters"]["damaged_records"], 1)
        store = self.crash()
        self.assertEqual(list(store.file_ids()), [1, 3, 7, 9])

    def test_damaged_chunk_is_reported(self):
        """A live chunk that compaction drops as damaged is reported to the
        chunkmaster for repair, as one a read or the scrubber finds is."""
        store = self.open_store()
        self.fill(store)
        path, offset = self.chunk_position(store, 5)
        corrupt(path, offset + 10, b"!")
        self.successResultOf(store.compact(1))
        self.assertEqual(list(store.damaged), [5])


def disk_bytes(path):
    """@return: the bytes of disk the file at C{path} takes (C{du})."""
    return os.stat(path).st_blocks * 512


class SpaceTests(StoreTestMixin, SynchronousTestCase):
    """
    Volumes are sparse: their disk blocks are reserved as puts need them,
    and a compaction's copy is a hole past its records, so the space it
    frees goes back to the file system (C{du} drops), also across a crash.
    """

    CHUNK = 1000_000

    def open_store(self, **kwargs):
        kwargs.setdefault("volume_size", 16 * 2**20)
        kwargs.setdefault("max_chunk_size", 2**20)
        return super().open_store(**kwargs)

    def fill(self, store, count):
        for n in range(count):
            self.put(store, n, bytes([n]) * self.CHUNK)

    def test_compaction_returns_the_space(self):
        """Fill, delete, compact: the volume file's blocks drop to about
        its live data; the live chunk reads back, before and after a crash."""
        store = self.open_store()
        self.fill(store, 12)
        before = disk_bytes(self.volume_path())
        self.assertGreaterEqual(before, 12 * self.CHUNK)
        for n in range(11):
            self.successResultOf(store.delete(n))
        self.assertEqual(disk_bytes(self.volume_path()), before)  # deleting frees nothing yet
        freed = self.successResultOf(store.compact(1))
        self.assertGreater(freed, 11 * self.CHUNK)
        after = disk_bytes(self.volume_path())
        self.assertLess(after, self.CHUNK + 64 * 1024)
        self.assertEqual(os.path.getsize(self.volume_path()), 16 * 2**20)
        self.assertEqual(self.read(store, 11), bytes([11]) * self.CHUNK)
        store = self.crash()
        self.assertEqual(list(store.file_ids()), [11])
        self.assertEqual(self.read(store, 11), bytes([11]) * self.CHUNK)
        self.assertLess(disk_bytes(self.volume_path()), self.CHUNK + 64 * 1024)

    def test_puts_reserve_blocks_again(self):
        """After a compaction a volume takes puts again; they reserve their
        blocks as they come, and survive a crash."""
        store = self.open_store()
        self.fill(store, 4)
        for n in range(3):
            self.successResultOf(store.delete(n))
        self.successResultOf(store.compact(1))
        shrunk = disk_bytes(self.volume_path())
        for n in range(10, 14):
            self.put(store, n, bytes([n]) * self.CHUNK)
        self.assertGreaterEqual(disk_bytes(self.volume_path()), shrunk + 4 * self.CHUNK)
        self.assertEqual([v["volume_id"] for v in store.status()["volumes"]], [1])
        store = self.crash()
        self.assertEqual(list(store.file_ids()), [3, 10, 11, 12, 13])
        for n in (3, 10, 13):
            self.assertEqual(self.read(store, n), bytes([n]) * self.CHUNK)

    def test_full_disk_fails_the_put_before_its_bytes(self):
        """A put into a volume's hole that finds no room fails with
        L{NoSpace} before anything is written; the store carries on once
        there is room, and a crash then loses nothing."""
        store = self.open_store()
        self.fill(store, 4)
        for n in range(3):
            self.successResultOf(store.delete(n))
        self.successResultOf(store.compact(1))
        tail = store.status()["volumes"][0]["used"]
        self.disk.fail("allocate", errno.ENOSPC)
        self.assertRaises(NoSpace, store.put, 20, self.CHUNK)
        self.assertEqual(store.status()["volumes"][0]["used"], tail)
        self.successResultOf(store.delete(3))  # a delete still has its room
        self.disk.heal("allocate")
        self.put(store, 21, b"room again")
        store = self.crash()
        self.assertEqual(list(store.file_ids()), [21])
        self.assertEqual(self.read(store, 21), b"room again")

    def test_crash_during_the_copy(self):
        """A crash after the copy was written, before it was renamed in,
        leaves the old volume in charge (with a delete that came during the
        copy); its leftover copy is removed, and a later compaction frees
        the space."""
        threads = ManualThreads()
        store = self.open_store(run_in_thread=threads)
        for n in range(6):
            write = store.put(n, self.CHUNK)
            write.write(bytes([n]) * self.CHUNK)
            finished = write.finish()
            threads.run_all()
            self.successResultOf(finished)
        for n in range(4):
            deleted = store.delete(n)
            threads.run_all()
            self.successResultOf(deleted)
        store.compact(1)
        threads.run_next()  # list the records
        deleted = store.delete(4)  # its tombstone goes to the old file
        threads.run_next()  # write the copy, chunk 4 in it
        self.assertEqual([f.__name__ for f, _, _ in threads.calls][-1], "_copy_bytes")
        self.assertTrue(os.path.exists(self.volume_path() + ".cpd"))
        store = self.crash()
        self.assertFalse(os.path.exists(self.volume_path() + ".cpd"))
        self.assertEqual(list(store.file_ids()), [5])
        self.assertGreater(self.successResultOf(store.compact(1)), 5 * self.CHUNK)
        self.assertLess(disk_bytes(self.volume_path()), self.CHUNK + 64 * 1024)
        self.assertEqual(self.read(store, 5), bytes([5]) * self.CHUNK)

    def test_compacts_soon_after_deletes(self):
        """Once started, a store compacts a volume shortly after deletes take
        it past the threshold (one compaction for the burst), not only on
        the periodic round."""
        store = self.open_store(compact_delay=30.0)
        store.start()
        self.fill(store, 4)
        for n in range(3):
            self.successResultOf(store.delete(n))
        self.clock.advance(29)
        self.assertEqual(store.status()["counters"]["compactions"], 0)
        self.clock.advance(1)
        self.assertEqual(store.status()["counters"]["compactions"], 1)
        self.assertLess(disk_bytes(self.volume_path()), self.CHUNK + 64 * 1024)
        self.successResultOf(store.close())
