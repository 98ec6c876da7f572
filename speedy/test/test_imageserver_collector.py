"""
Tests for L{speedy.imageserver.collector}: garbage chunks are deleted from
every member of their group after the grace period, and not before; a
chunk a member did not delete stays recorded and is retried; a deleted
blob stays readable until then.
"""

from twisted.internet.defer import Deferred
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from speedy.imageserver.collector import ChunkCollector, CollectionRun
from speedy.registry.blobs import Blobs
from speedy.testing import DOWN, FakeCluster

G1 = ["10.0.0.1:8001", "10.0.0.2:8001", "10.0.0.3:8001"]
GRACE = 3600.0


class ChunkCollectorTests(SynchronousTestCase):

    def setUp(self):
        self.cluster = FakeCluster({1: G1}, chunk_size=8)
        self.clock = self.cluster.clock
        self.storage = self.cluster.storage
        self.metadata = self.cluster.metadata
        self.collector = ChunkCollector(self.storage, self.metadata, self.clock, grace=GRACE,
                                        period=60.0, parallelism=2, page=2)

    def store(self, data):
        writer = self.storage.writer()
        self.successResultOf(writer.write(data))
        return self.successResultOf(writer.finish())

    def garbage(self):
        return [g.chunk for g in self.successResultOf(self.metadata.list_garbage())]

    def on_members(self, chunk):
        return [a for a, data in self.cluster.copies(chunk).items() if data is not None]

    def test_kept_during_the_grace_period(self):
        """A chunk recorded as garbage is not deleted before the grace
        period has passed."""
        chunks = self.store(b"0123456789abcdef")
        self.successResultOf(self.metadata.record_garbage(chunks, "test"))
        self.clock.advance(GRACE - 1)
        run = self.successResultOf(self.collector.collect())
        self.assertEqual((run.chunks_deleted, run.chunks_waiting), (0, 2))
        self.assertEqual(self.garbage(), list(chunks))
        for chunk in chunks:
            self.assertEqual(self.on_members(chunk), G1)

    def test_deleted_everywhere_after_it(self):
        """Past the grace period every garbage chunk is deleted from every
        member and forgotten, across several pages of records."""
        chunks = self.store(b"x" * 40)  # 5 chunks, pages of 2
        self.successResultOf(self.metadata.record_garbage(chunks, "test"))
        self.clock.advance(GRACE)
        run = self.successResultOf(self.collector.collect())
        self.assertEqual(run, CollectionRun(self.clock.seconds(), 0.0, 5, 40, 0, 0))
        self.assertEqual(self.garbage(), [])
        for chunk in chunks:
            self.assertEqual(self.on_members(chunk), [])
        self.assertEqual(self.collector.totals,
                         {"runs": 1, "chunks_deleted": 5, "bytes_deleted": 40})

    def test_member_down_keeps_the_record(self):
        """A chunk one member could not delete stays recorded, and is
        deleted from that member on a later round, once it is back."""
        [chunk] = self.store(b"abcdefgh")
        self.successResultOf(self.metadata.record_garbage([chunk], "test"))
        self.clock.advance(GRACE)
        self.cluster.client.server(G1[2]).mode = DOWN
        run = self.successResultOf(self.collector.collect())
        self.assertEqual((run.chunks_deleted, run.chunks_kept), (0, 1))
        self.assertEqual(self.garbage(), [chunk])
        self.assertEqual(self.on_members(chunk), [G1[2]])
        self.cluster.client.server(G1[2]).mode = None
        run = self.successResultOf(self.collector.collect())
        self.assertEqual((run.chunks_deleted, run.chunks_kept), (1, 0))
        self.assertEqual(self.on_members(chunk), [])
        self.assertEqual(self.garbage(), [])

    def test_rounds_on_a_timer(self):
        """Started, the collector runs a round every period, and no more
        once stopped."""
        [chunk] = self.store(b"abcdefgh")
        self.successResultOf(self.metadata.record_garbage([chunk], "test"))
        self.collector.start()
        self.clock.advance(GRACE - 30)
        self.assertEqual(self.collector.last.chunks_waiting, 1)  # a round inside the grace
        self.clock.advance(60)
        self.assertEqual(self.collector.last.chunks_deleted, 1)
        self.collector.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_one_round_at_a_time(self):
        """A round asked for while one runs joins it."""
        [chunk] = self.store(b"abcdefgh")
        self.successResultOf(self.metadata.record_garbage([chunk], "test"))
        self.clock.advance(GRACE)
        self.cluster.client.hold.add("delete")
        first, second = self.collector.collect(), self.collector.collect()
        self.assertNoResult(first)
        self.cluster.client.release()
        self.assertEqual(self.successResultOf(first), self.successResultOf(second))
        self.assertEqual(self.collector.totals["runs"], 1)


class DeletedBlobTests(SynchronousTestCase):
    """A blob deleted through the registry gives its chunks to the
    collector: readable until the grace period ends, deleted after."""

    def setUp(self):
        self.cluster = FakeCluster({1: G1}, chunk_size=8)
        self.blobs = Blobs(self.cluster.metadata, self.cluster.storage, self.cluster.clock)
        self.collector = ChunkCollector(self.cluster.storage, self.cluster.metadata,
                                        self.cluster.clock, grace=GRACE)

    def test_pull_in_progress_survives_the_delete(self):
        data = b"layer bytes, three chunks"
        writer = self.cluster.storage.writer()
        self.successResultOf(writer.write(data))
        chunks = self.successResultOf(writer.finish())
        blob = self.successResultOf(Deferred.fromCoroutine(
            self.blobs.commit("repo", "sha256:d", len(data), chunks)))
        self.successResultOf(Deferred.fromCoroutine(self.blobs.remove("repo", "sha256:d")))
        self.assertIsNone(self.successResultOf(self.cluster.metadata.get_blob("sha256:d")))
        # a pull that looked the blob up before the delete still reads it all
        consumer = StringTransport()
        self.successResultOf(self.cluster.storage.read(blob.chunks, 0, len(data), consumer))
        self.assertEqual(consumer.value(), data)
        self.cluster.clock.advance(GRACE)
        self.assertEqual(self.successResultOf(self.collector.collect()).chunks_deleted,
                         len(chunks))
        for chunk in chunks:
            self.assertEqual(set(self.cluster.copies(chunk).values()), {None})
