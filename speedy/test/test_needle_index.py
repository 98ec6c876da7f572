"""
Tests for L{speedy.chunkserver.needle_index}.
"""

import tracemalloc

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from speedy.chunkserver.needle_index import MAX_GAP, NeedleIndex


class NeedleIndexTests(SynchronousTestCase):
    def test_set_get(self):
        index = NeedleIndex()
        self.assertIsNone(index.set(10, 3, 4096, 100, 0xABCD))
        self.assertEqual(index.get(10), (3, 4096, 100, 0xABCD))
        self.assertIsNone(index.get(11))
        self.assertIsNone(index.get(9))
        self.assertEqual(len(index), 1)

    def test_replace_returns_previous(self):
        index = NeedleIndex()
        index.set(10, 1, 4096, 1, 1)
        self.assertEqual(index.set(10, 2, 8192, 2, 2), (1, 4096, 1, 1))
        self.assertEqual(index.get(10), (2, 8192, 2, 2))
        self.assertEqual(len(index), 1)

    def test_deleted_id_is_not_found(self):
        index = NeedleIndex()
        for file_id in range(100, 110):
            index.set(file_id, 1, 4096 + 8 * file_id, 1, 0)
        self.assertEqual(index.remove(105), (1, 4096 + 8 * 105, 1, 0))
        self.assertIsNone(index.get(105))
        self.assertIsNone(index.remove(105))
        self.assertEqual(len(index), 9)
        self.assertNotIn(105, list(index))

    def test_large_values(self):
        """Offsets up to 32 GiB, sizes and CRCs up to 2**32-1, ids up to 2**64-1."""
        index = NeedleIndex()
        index.set(2**64 - 1, 65535, 2**35 - 8, 2**32 - 1, 2**32 - 1)
        self.assertEqual(index.get(2**64 - 1), (65535, 2**35 - 8, 2**32 - 1, 2**32 - 1))

    def test_unaligned_offset_rejected(self):
        self.assertRaises(ValueError, NeedleIndex().set, 1, 1, 4097, 1, 1)
        self.assertRaises(ValueError, NeedleIndex().set, 1, 1, 0, 1, 1)

    def test_interleaved_ranges_ascending(self):
        """Two imageservers using their ranges in turn: ids come out sorted."""
        index = NeedleIndex()
        for n in range(50):
            index.set(5000 + n, 1, 4096, 1, 1)
            index.set(1000 + n, 1, 4096, 1, 1)
        self.assertEqual(list(index),
                         list(range(1000, 1050)) + list(range(5000, 5050)))
        self.assertEqual(len(index._runs), 2)

    def test_runs_merge(self):
        """A range that grows into the next one's start merges with it."""
        index = NeedleIndex()
        for n in range(10):
            index.set(20 + n, 1, 4096, 1, 1)
        for n in range(20):
            index.set(n, 1, 4096, 1, 1)
        self.assertEqual(len(index._runs), 1)
        self.assertEqual(list(index), list(range(30)))

    def test_small_gap_extends_run(self):
        index = NeedleIndex()
        index.set(0, 1, 4096, 1, 1)
        index.set(MAX_GAP + 1, 1, 4096, 1, 1)
        self.assertEqual(len(index._runs), 1)
        index.set(1000, 1, 4096, 1, 1)
        self.assertEqual(len(index._runs), 2)
        self.assertEqual(list(index), [0, MAX_GAP + 1, 1000])

    def test_checkpoint_round_trip(self):
        index = NeedleIndex()
        for n in range(0, 300, 3):
            index.set(n * 7, n % 5, 4096 + 8 * n, n, n * 11)
        index.remove(21)
        copy = NeedleIndex.from_runs(index.runs())
        self.assertEqual(list(copy.items()), list(index.items()))
        self.assertEqual(len(copy), len(index))

    def test_from_runs_rejects_overlap(self):
        index = NeedleIndex()
        for n in range(10):
            index.set(n, 1, 4096, 1, 1)
        runs = index.runs()
        self.assertRaises(ValueError, NeedleIndex.from_runs, runs + runs)
        self.assertRaises(ValueError, NeedleIndex.from_runs, [(0, b"x" * 15)])

    def test_drop_volume(self):
        index = NeedleIndex()
        for n in range(20):
            index.set(n, n % 2, 4096, 1, 1)
        self.assertEqual(index.drop_volume(1), 10)
        self.assertEqual(list(index), list(range(0, 20, 2)))

    @settings(max_examples=60, deadline=None)
    @given(st.lists(st.tuples(st.booleans(), st.integers(0, 3000)), max_size=200))
    def test_matches_dict(self, operations):
        """Any sequence of sets and removes leaves the index equal to a dict."""
        index, model = NeedleIndex(), {}
        for is_set, file_id in operations:
            if is_set:
                value = (file_id % 7, 8 * (file_id + 1), file_id, file_id ^ 0x5555)
                index.set(file_id, *value)
                model[file_id] = value
            else:
                index.remove(file_id)
                model.pop(file_id, None)
        self.assertEqual(list(index), sorted(model))
        self.assertEqual({f: index.get(f) for f in model}, model)
        self.assertEqual(len(index), len(model))

    def test_memory_per_chunk(self):
        """
        Ids used the way imageservers use them (ranges of 1,000, four
        imageservers interleaving) cost at most 16 bytes each.
        """
        count, width, writers = 40_000, 1000, 4
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            index = NeedleIndex()
            for block in range(0, count, width * writers):
                for n in range(width):
                    for w in range(writers):
                        index.set(block + w * width + n, 1, 4096 + 8 * n, 16 << 20, n)
            used = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        self.assertEqual(len(index), count)
        self.assertLessEqual(used / count, 16)
