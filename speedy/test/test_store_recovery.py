"""
Restart and crash recovery of L{speedy.chunkserver.store.ChunkStore}: the
checkpoint, the journal after it, and damaged files of every kind.  Each
test damages files behind the store's back, reopens, and checks that what
came before the damage is intact, that the damage is counted, and that the
store goes on working.
"""

import os

from twisted.trial.unittest import SynchronousTestCase

from speedy.chunkserver.checkpoint import FILE_NAME
from speedy.chunkserver.volume import DATA_START, HEADER_SIZE, SUPERBLOCK_SLOTS
from speedy.errors import ChunkNotFound
from speedy.test.test_store import MiB, StoreTestMixin, corrupt


class RecordingDisk:
    """Wraps a disk's pread to record which byte ranges were read."""

    def __init__(self, disk):
        self.reads = []
        self._pread = disk.pread
        disk.pread = self.pread

    def pread(self, fd, size, offset):
        data = self._pread(fd, size, offset)
        self.reads.append((offset, len(data)))
        return data


class RestartTests(StoreTestMixin, SynchronousTestCase):
    def counters(self, store):
        return store.status()["counters"]

    def record_offset(self, store, file_id):
        return self.chunk_position(store, file_id)[1] - HEADER_SIZE

    def test_clean_restart(self):
        store = self.open_store()
        for n in range(20):
            self.put(store, n, bytes([n]) * 1000)
        for n in range(0, 20, 3):
            self.successResultOf(store.delete(n))
        status = store.status()
        store = self.reopen(store)
        self.assertEqual(list(store.file_ids()), [n for n in range(20) if n % 3])
        self.assertEqual(store.status()["volumes"], status["volumes"])
        self.assertEqual(self.read(store, 5), bytes([5]) * 1000)
        self.failureResultOf(store.get(3), ChunkNotFound)

    def test_crash_replays_journal(self):
        """What was acknowledged after the last checkpoint survives a crash."""
        store = self.open_store()
        self.put(store, 1, b"checkpointed")
        self.put(store, 2, b"deleted later")
        self.successResultOf(store.checkpoint())
        self.put(store, 3, b"journal")
        self.successResultOf(store.delete(2))
        store = self.crash()
        self.assertEqual(list(store.file_ids()), [1, 3])
        self.assertEqual(self.read(store, 3), b"journal")
        self.assertEqual(self.counters(store)["damaged_records"], 0)

    def test_replay_reads_only_the_journal(self):
        """After a checkpoint, recovery reads nothing of the volume before it."""
        store = self.open_store()
        for n in range(20):
            self.put(store, n, os.urandom(20_000))
        self.successResultOf(store.checkpoint())
        journal_start = store.status()["volumes"][0]["used"] + DATA_START
        self.put(store, 100, b"after the checkpoint")
        self.disk.crash()
        recording = RecordingDisk(self.disk)
        store = self.open_store()
        volume_reads = [(offset, size) for offset, size in recording.reads
                        if offset >= DATA_START]
        self.assertTrue(volume_reads)
        self.assertTrue(all(offset >= journal_start for offset, _ in volume_reads))
        self.assertEqual(self.read(store, 100), b"after the checkpoint")

    def test_crash_mid_put(self):
        """A chunk still streaming at a crash is garbage; nothing else is lost."""
        store = self.open_store()
        self.put(store, 1, b"kept")
        write = store.put(2, 1000)
        write.write(b"x" * 500)
        store = self.crash()
        self.assertEqual(list(store.file_ids()), [1])
        self.put(store, 3, b"after")
        store = self.crash()
        self.assertEqual(list(store.file_ids()), [1, 3])
        self.assertEqual(self.read(store, 3), b"after")
        self.assertEqual(self.counters(store)["damaged_records"], 0)

    def test_crash_mid_put_across_checkpoint(self):
        """A put streaming while a checkpoint is taken is replayed once it
        finished, even though its bytes lie before the checkpoint's tail."""
        store = self.open_store()
        write = store.put(1, 10)
        self.put(store, 2, b"finished first")
        write.write(b"0123456789")
        self.successResultOf(store.checkpoint())
        self.successResultOf(write.finish())
        store = self.crash()
        self.assertEqual(self.read(store, 1), b"0123456789")
        self.assertEqual(self.read(store, 2), b"finished first")

    def test_torn_tail_record(self):
        store = self.open_store()
        self.put(store, 1, b"a" * 1000)
        self.put(store, 2, b"b" * 1000)
        torn = self.record_offset(store, 2)
        self.disk.crash()
        corrupt(self.volume_path(), torn + 4, os.urandom(20))
        store = self.open_store()
        self.assertEqual(list(store.file_ids()), [1])
        self.assertEqual(self.read(store, 1), b"a" * 1000)
        self.assertEqual(self.counters(store)["torn_records"], 1)
        self.put(store, 3, b"c" * 10)
        store = self.crash()
        self.assertEqual(list(store.file_ids()), [1, 3])
        self.assertEqual(self.read(store, 3), b"c" * 10)

    def test_header_written_data_lost(self):
        """A final header on disk without its data (lost page cache) fails
        its CRC on replay: counted, skipped."""
        store = self.open_store()
        self.put(store, 1, b"a" * 1000)
        self.put(store, 2, b"b" * 1000)
        path, data = self.chunk_position(store, 2)
        self.disk.crash()
        corrupt(path, data, bytes(1000))
        store = self.open_store()
        self.assertEqual(list(store.file_ids()), [1])
        self.assertEqual(self.counters(store)["damaged_records"], 1)

    def test_damaged_record_in_the_middle(self):
        """Damage in the journal is skipped; the records after it survive."""
        store = self.open_store()
        for n in range(1, 4):
            self.put(store, n, bytes([n]) * 2000)
        middle = self.record_offset(store, 2)
        self.disk.crash()
        corrupt(self.volume_path(), middle, os.urandom(HEADER_SIZE))
        store = self.open_store()
        self.assertEqual(list(store.file_ids()), [1, 3])
        self.assertEqual(self.read(store, 3), bytes([3]) * 2000)
        self.assertEqual(self.counters(store)["damaged_records"], 1)

    def test_corrupt_checkpoint_falls_back_to_full_scan(self):
        store = self.open_store()
        for n in range(10):
            self.put(store, n, bytes([n]) * 100)
        self.successResultOf(store.delete(4))
        self.successResultOf(store.close())
        checkpoint = os.path.join(self.path, FILE_NAME)
        size = os.path.getsize(checkpoint)
        for damage in (lambda: corrupt(checkpoint, size // 2, b"\xff\x00\xff"),
                       lambda: os.truncate(checkpoint, size - 7),
                       lambda: os.truncate(checkpoint, 3)):
            damage()
            store = self.open_store()
            self.assertEqual(list(store.file_ids()), [0, 1, 2, 3, 5, 6, 7, 8, 9])
            self.assertEqual(self.read(store, 9), bytes([9]) * 100)
            self.assertEqual(self.counters(store)["corrupt_checkpoints"], 1)
            self.successResultOf(store.close())

    def test_delete_and_reput_across_volumes(self):
        """Replay applies records in the order they happened, across volumes:
        a chunk deleted in one volume and stored again in another is the new one."""
        store = self.open_store()
        self.put(store, 1, b"old")
        self.put(store, 2, b"f" * 900_000)
        self.successResultOf(store.delete(1))
        self.put(store, 1, b"n" * 200_000)
        self.assertEqual(len(store.status()["volumes"]), 2)
        store = self.crash()
        self.assertEqual(self.read(store, 1), b"n" * 200_000)
        self.successResultOf(store.close())
        os.unlink(os.path.join(self.path, FILE_NAME))
        store = self.open_store()
        self.assertEqual(self.read(store, 1), b"n" * 200_000)
        self.assertEqual(list(store.file_ids()), [1, 2])

    def test_torn_superblock(self):
        store = self.open_store()
        self.put(store, 1, b"kept")
        store = self.crash()
        corrupt(self.volume_path(), SUPERBLOCK_SLOTS[0] + 8, os.urandom(30))
        store = self.crash()
        self.assertEqual(self.read(store, 1), b"kept")
        self.assertEqual(self.counters(store)["damaged_volumes"], 0)

    def test_unusable_volume(self):
        """A volume with no valid superblock is skipped (and left alone);
        the others serve, and new volumes never reuse its id."""
        store = self.open_store()
        self.put(store, 1, b"a" * 900_000)
        self.put(store, 2, b"b" * 900_000)
        store = self.reopen(store)
        for slot in SUPERBLOCK_SLOTS:
            corrupt(self.volume_path(1), slot, os.urandom(64))
        store = self.reopen(store)
        self.assertEqual(self.counters(store)["damaged_volumes"], 1)
        self.assertEqual(list(store.file_ids()), [2])
        self.put(store, 3, b"c" * 900_000)
        self.assertEqual([v["volume_id"] for v in store.status()["volumes"]], [2, 3])
        self.assertEqual(os.path.getsize(self.volume_path(1)), MiB)

    def test_garbage_volume_file(self):
        """A file of random bytes named like a volume crashes nothing."""
        store = self.open_store()
        self.put(store, 1, b"kept")
        self.successResultOf(store.close())
        with open(self.volume_path(5), "wb") as f:
            f.write(os.urandom(100_000))
        store = self.open_store()
        self.assertEqual(list(store.file_ids()), [1])
        self.assertEqual(self.counters(store)["damaged_volumes"], 1)

    def test_random_bytes_in_a_volume(self):
        """Random bytes over the journal: no exception, the rest intact."""
        store = self.open_store()
        for n in range(30):
            self.put(store, n, bytes([n]) * 3000)
        first_damaged = self.record_offset(store, 10)
        last_damaged = self.record_offset(store, 12)
        self.disk.crash()
        corrupt(self.volume_path(), first_damaged + 100,
                os.urandom(last_damaged - first_damaged))
        store = self.open_store()
        ids = list(store.file_ids())
        self.assertEqual(ids, list(range(10)) + list(range(13, 30)))
        self.assertEqual(self.read(store, 29), bytes([29]) * 3000)
        self.assertGreaterEqual(self.counters(store)["damaged_records"], 1)

    def test_truncated_volume(self):
        """A volume file cut short loses only the chunks past the cut."""
        store = self.open_store()
        self.put(store, 1, b"a" * 1000)
        self.put(store, 2, b"b" * 1000)
        store = self.reopen(store)
        self.put(store, 3, b"c" * 1000)
        cut = self.record_offset(store, 2) + 500
        self.disk.crash()
        os.truncate(self.volume_path(), cut)
        store = self.open_store()
        self.assertEqual(list(store.file_ids()), [1])
        self.assertEqual(self.read(store, 1), b"a" * 1000)
        self.assertEqual(self.counters(store)["damaged_records"], 1)
        self.assertEqual(os.path.getsize(self.volume_path()), MiB)
        self.put(store, 4, b"d")
        store = self.crash()
        self.assertEqual(list(store.file_ids()), [1, 4])

    def test_stale_checkpoint_after_compaction(self):
        """A crash between a compaction's rename and its checkpoint: the
        checkpoint's offsets are stale, so the volume is rescanned."""
        store = self.open_store(compact_threshold=0.3)
        for n in range(10):
            self.put(store, n, bytes([n]) * 5000)
        for n in range(0, 10, 2):
            self.successResultOf(store.delete(n))
        self.successResultOf(store.checkpoint())
        checkpoint = os.path.join(self.path, FILE_NAME)
        with open(checkpoint, "rb") as f:
            before = f.read()
        self.assertGreater(self.successResultOf(store.compact()), 0)
        self.successResultOf(store.delete(9))
        self.disk.crash()
        with open(checkpoint, "wb") as f:
            f.write(before)
        store = self.open_store()
        self.assertEqual(list(store.file_ids()), [1, 3, 5, 7])
        for n in (1, 3, 5, 7):
            self.assertEqual(self.read(store, n), bytes([n]) * 5000)

    def test_leftover_compaction_file_removed(self):
        store = self.open_store()
        self.put(store, 1, b"kept")
        self.successResultOf(store.close())
        leftover = self.volume_path() + ".cpd"
        with open(leftover, "wb") as f:
            f.write(b"half a compaction")
        store = self.open_store()
        self.assertFalse(os.path.exists(leftover))
        self.assertEqual(self.read(store, 1), b"kept")
