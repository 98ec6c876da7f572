"""
Tests for L{speedy.chunkserver.scrubber}: a pass checks every chunk at the
rate asked, finds and reports damage (also under the chunk cache), yields
to clients, and passes repeat once a period.
"""

import os

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from speedy.chunkserver.scrubber import MAX_YIELD, Scrubber
from speedy.errors import ChunkNotFound
from speedy.test.test_chunk_cache import CacheStoreMixin
from speedy.test.test_store import corrupt
from speedy.testing import MemoryChunkStore

KiB = 1024
MiB = 1024 * KiB


class ScrubberTests(SynchronousTestCase):

    def setUp(self):
        self.clock = Clock()
        self.store = MemoryChunkStore()
        for file_id in range(1, 5):
            self.store.add(file_id, bytes([file_id]) * (10 * KiB))
        self.busy = False

    def scrubber(self, rate=10 * KiB, period=3600.0, store="store"):
        scrubber = Scrubber(self.clock, lambda: getattr(self, store, None), rate, period,
                            busy=lambda: self.busy)
        scrubber.startService()
        self.addCleanup(scrubber.stopService)
        return scrubber

    def test_pass_at_the_rate(self):
        """A pass reads every chunk back, at most C{rate} bytes a second:
        four chunks of 10 KiB at 10 KiB/s take four seconds."""
        scrubber = self.scrubber()
        self.assertEqual(self.store.counters["verified"], 1)
        for second in range(1, 4):
            self.clock.advance(1)
            self.assertEqual(self.store.counters["verified"], second + 1)
        self.clock.advance(1)
        self.assertEqual(scrubber.last_pass["chunks"], 4)
        self.assertEqual(self.store.counters["scrub_passes"], 1)
        self.assertEqual(self.store.counters["scrub_bytes"], 40 * KiB)

    def test_damage_is_dropped_and_reported(self):
        """A damaged chunk found by a pass is dropped and listed for the
        chunkmaster; the others are left alone."""
        self.store.damage(3)
        scrubber = self.scrubber(rate=1 << 30)
        self.assertEqual(scrubber.last_pass["damaged"], 1)
        self.assertEqual(list(self.store.damaged), [3])
        self.assertEqual(self.store.counters["scrub_damaged"], 1)
        self.assertIsNone(self.store.stat(3))
        self.assertEqual(self.store.contents(4), bytes([4]) * (10 * KiB))

    def test_period(self):
        """The next pass starts a period after the last one started."""
        scrubber = self.scrubber(rate=1 << 30, period=600)
        self.assertEqual(self.store.counters["scrub_passes"], 1)
        self.store.add(9, b"new")
        self.clock.advance(599)
        self.assertEqual(self.store.counters["scrub_passes"], 1)
        self.clock.advance(1)
        self.assertEqual(self.store.counters["scrub_passes"], 2)
        self.assertEqual(scrubber.last_pass["chunks"], 5)

    def test_yields_to_clients(self):
        """While clients have requests in flight the scrubber waits, but at
        most a second a chunk, so a busy server is still scrubbed."""
        self.busy = True
        self.scrubber(rate=1 << 30)
        self.assertEqual(self.store.counters["verified"], 0)
        self.clock.advance(MAX_YIELD / 2)
        self.assertEqual(self.store.counters["verified"], 0)
        self.busy = False
        self.clock.advance(0.05)
        self.assertEqual(self.store.counters["verified"], 4)

    def test_busy_all_the_time(self):
        self.busy = True
        self.scrubber(rate=1 << 30)
        for _ in range(4):
            self.clock.advance(MAX_YIELD)
        self.assertEqual(self.store.counters["verified"], 4)

    def test_chunk_deleted_during_a_pass(self):
        """Chunks deleted after the pass began are skipped."""
        self.scrubber()
        self.successResultOf(self.store.delete(2))
        for _ in range(10):
            self.clock.advance(1)
        self.assertEqual(self.store.counters["scrub_chunks"], 3)

    def test_off(self):
        """A rate of 0 turns it off."""
        self.scrubber(rate=0)
        self.clock.advance(3600)
        self.assertEqual(self.store.counters["verified"], 0)

    def test_store_not_open_yet(self):
        """Until the store is open it waits."""
        store, self.store = self.store, None
        self.scrubber(store="pending")
        self.clock.advance(5)
        self.pending = store
        self.clock.advance(1)
        self.assertEqual(store.counters["verified"], 1)

    def test_stop(self):
        """Stopping it mid-pass leaves no timer behind."""
        scrubber = self.scrubber()
        scrubber.stopService()
        self.assertEqual(self.clock.getDelayedCalls(), [])


class ScrubberUnderTheCacheTests(CacheStoreMixin, SynchronousTestCase):
    """On the real store, a chunk held in the chunk cache, damaged on disk:
    reads keep being answered from the cache, but the scrubber reads the
    disk and finds it."""

    def test_damage_under_the_cache(self):
        store = self.open_store()
        data = os.urandom(3 * MiB)
        self.put_kept(store, 1, data)
        self.put_pieces(store, 2, os.urandom(3 * MiB))
        path, offset = self.chunk_position(store, 1)
        corrupt(path, offset + MiB, b"rot")
        self.assertEqual(self.read(store, 1), data)  # from the cache
        scrubber = Scrubber(self.clock, lambda: store, 1 << 30, 3600.0)
        scrubber.startService()
        self.addCleanup(scrubber.stopService)
        self.assertEqual(scrubber.last_pass, {"started": 0, "ended": 0, "chunks": 2,
                                              "damaged": 1})
        self.assertEqual(list(store.damaged), [1])
        self.failureResultOf(store.get(1), ChunkNotFound)
