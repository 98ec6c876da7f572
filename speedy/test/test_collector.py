"""
Tests for L{speedy.chunkmaster.collector}: garbage chunks are deleted from
every member of their group after the grace period, and not before; a
chunk a member did not delete stays recorded and is retried; a deleted
blob stays readable until then.
"""

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from speedy.chunkmaster.cluster import Cluster
from speedy.chunkmaster.collector import ChunkCollector, CollectionRun, GroupDeleter
from speedy.chunkmaster.messages import Heartbeat
from speedy.crc import crc32c
from speedy.logs import run_for
from speedy.metadata.memory import MemoryMetadataStore
from speedy.records import ChunkRef
from speedy.registry.blobs import Blobs
from speedy.testing import DOWN, FakeChunkClient, FakeCluster

GiB = 1 << 30
GRACE = 3600.0
SERVERS = ("s1", "s2", "s3")


def address(server_id):
    return f"10.0.0.{server_id[1:]}:8000"


class ChunkCollectorTests(SynchronousTestCase):
    """The collector in the chunkmaster, over the cluster it keeps."""

    def setUp(self):
        self.clock = Clock()
        self.store = MemoryMetadataStore(self.clock)
        self.successResultOf(self.store.start())
        self.cluster = Cluster(self.store, self.clock, heartbeat_timeout=2 * GRACE, group_size=3,
                               reserve=0)
        self.addCleanup(self.cluster.stop)
        self.client = FakeChunkClient(self.clock)
        for server_id in SERVERS:
            self.beat(server_id)
        self.collector = ChunkCollector(GroupDeleter(self.cluster, self.client), self.store,
                                        self.clock, grace=GRACE, period=60.0, parallelism=2,
                                        page=2)
        self.file_ids = iter(range(100, 200))

    def beat(self, server_id, group_id=1):
        self.successResultOf(Deferred.fromCoroutine(self.cluster.heartbeat(Heartbeat(
            server_id, group_id, address(server_id), 100 * GiB, 0, 100 * GiB, False, {}))))

    def store_chunks(self, *pieces):
        """@return: L{ChunkRef}s of C{pieces}, each stored on every member."""
        refs = []
        for data in pieces:
            file_id = next(self.file_ids)
            for server_id in SERVERS:
                self.successResultOf(self.client.put(address(server_id), file_id, data))
            refs.append(ChunkRef(1, file_id, len(data), crc32c(data)))
        return refs

    def holders(self, chunk):
        return [s for s in SERVERS
                if chunk.file_id in self.client.server(address(s)).chunks]

    def garbage(self):
        return [g.chunk for g in self.successResultOf(self.store.list_garbage())]

    def test_no_trace(self):
        """A round runs for no request: its deletes carry no trace, though
        an admin's request asked for it."""
        chunks = self.store_chunks(b"01234567")
        self.successResultOf(self.store.record_garbage(chunks, "test"))
        self.clock.advance(GRACE)
        self.client.traces.clear()
        self.successResultOf(run_for("admin-gc", self.collector.collect))
        self.assertEqual({(operation, trace) for operation, _, _, trace in self.client.traces},
                         {("delete", None)})

    def test_kept_during_the_grace_period(self):
        """A chunk recorded as garbage is not deleted before the grace
        period has passed; a dry run counts it as waiting."""
        chunks = self.store_chunks(b"01234567", b"89abcdef")
        self.successResultOf(self.store.record_garbage(chunks, "test"))
        self.clock.advance(GRACE - 1)
        dry = self.successResultOf(self.collector.dry_run())
        self.assertEqual((dry.chunks_deleted, dry.chunks_waiting, dry.bytes_waiting), (0, 2, 16))
        run = self.successResultOf(self.collector.collect())
        self.assertEqual((run.chunks_deleted, run.chunks_waiting), (0, 2))
        self.assertEqual(self.garbage(), chunks)
        for chunk in chunks:
            self.assertEqual(self.holders(chunk), list(SERVERS))

    def test_deleted_everywhere_after_it(self):
        """Past the grace period every garbage chunk is deleted from every
        member and forgotten, across several pages of records; a dry run
        before counted them and deleted nothing."""
        chunks = self.store_chunks(*[b"x" * 8] * 5)
        self.successResultOf(self.store.record_garbage(chunks, "test"))
        self.clock.advance(GRACE)
        dry = self.successResultOf(self.collector.dry_run())
        self.assertEqual((dry.dry_run, dry.chunks_deleted, dry.bytes_deleted), (True, 5, 40))
        self.assertEqual(self.holders(chunks[0]), list(SERVERS))
        run = self.successResultOf(self.collector.collect())
        self.assertEqual(run, CollectionRun(self.clock.seconds(), False, self.clock.seconds(),
                                            5, 40, 0, 0, 0, 5))
        self.assertEqual(self.garbage(), [])
        for chunk in chunks:
            self.assertEqual(self.holders(chunk), [])
        self.assertEqual(self.collector.totals,
                         {"runs": 1, "chunks_deleted": 5, "bytes_deleted": 40,
                          "blobs_deleted": 0, "manifests_deleted": 0})
        self.assertEqual(self.collector.status()["last"]["chunks_deleted"], 5)

    def test_metrics(self):
        """The collector's totals and its last round show on /metrics: a
        round past the grace counts its deleted chunks and bytes and the
        ones still waiting; one member down shows as chunks kept."""
        from speedy.monitoring.collectors import CollectorMetrics
        from speedy.test.test_monitoring import exposition

        metrics = CollectorMetrics(self.collector)
        before = exposition(metrics)
        self.assertEqual(before[("speedy_chunkmaster_gc_runs_total", ())], 0)
        self.assertEqual(before[("speedy_chunkmaster_gc_running", ())], 0)
        self.assertNotIn(("speedy_chunkmaster_gc_last_duration_seconds", ()), before)
        old = self.store_chunks(b"x" * 8, b"y" * 8)
        self.successResultOf(self.store.record_garbage(old, "test"))
        self.clock.advance(GRACE)
        self.successResultOf(self.store.record_garbage(self.store_chunks(b"z" * 8), "test"))
        self.successResultOf(self.collector.collect())
        after = exposition(metrics)
        self.assertEqual(after[("speedy_chunkmaster_gc_runs_total", ())], 1)
        self.assertEqual(after[("speedy_chunkmaster_gc_deleted_chunks_total", ())], 2)
        self.assertEqual(after[("speedy_chunkmaster_gc_deleted_bytes_total", ())], 16)
        self.assertEqual(after[("speedy_chunkmaster_gc_waiting_chunks", ())], 1)
        self.assertEqual(after[("speedy_chunkmaster_gc_kept_chunks", ())], 0)
        self.assertEqual(after[("speedy_chunkmaster_gc_last_duration_seconds", ())], 0)
        self.client.server(address("s2")).mode = DOWN
        self.clock.advance(GRACE)
        self.successResultOf(self.collector.collect())
        down = exposition(metrics)
        self.assertEqual(down[("speedy_chunkmaster_gc_kept_chunks", ())], 1)
        self.assertEqual(down[("speedy_chunkmaster_gc_deleted_chunks_total", ())], 2)

    def test_a_chunk_already_gone_counts_as_deleted(self):
        """A member that does not hold the chunk (another collector
        deleted it, or its write never reached it) is no obstacle."""
        [chunk] = self.store_chunks(b"abcdefgh")
        self.successResultOf(self.client.delete(address("s1"), chunk.file_id))
        self.successResultOf(self.store.record_garbage([chunk], "test"))
        self.clock.advance(GRACE)
        self.assertEqual(self.successResultOf(self.collector.collect()).chunks_deleted, 1)
        self.assertEqual(self.holders(chunk), [])

    def test_member_down_keeps_the_record(self):
        """A chunk one member could not delete stays recorded, and is
        deleted from that member on a later round, once it is back."""
        [chunk] = self.store_chunks(b"abcdefgh")
        self.successResultOf(self.store.record_garbage([chunk], "test"))
        self.clock.advance(GRACE)
        self.client.server(address("s3")).mode = DOWN
        run = self.successResultOf(self.collector.collect())
        self.assertEqual((run.chunks_deleted, run.chunks_kept), (0, 1))
        self.assertEqual(self.garbage(), [chunk])
        self.assertEqual(self.holders(chunk), ["s3"])
        self.client.server(address("s3")).mode = None
        run = self.successResultOf(self.collector.collect())
        self.assertEqual((run.chunks_deleted, run.chunks_kept), (1, 0))
        self.assertEqual(self.holders(chunk), [])
        self.assertEqual(self.garbage(), [])

    def test_member_the_chunkmaster_knows_down_is_not_asked(self):
        """While the chunkmaster sees a member DOWN, the chunk waits and no
        member is asked (the delete would fail on it anyway)."""
        [chunk] = self.store_chunks(b"abcdefgh")
        self.successResultOf(self.store.record_garbage([chunk], "test"))
        self.clock.advance(GRACE)
        for _ in range(25):  # s1 and s2 keep beating; s3 fell silent
            self.beat("s1")
            self.beat("s2")
            self.clock.advance(GRACE / 10)
        self.assertNotIn(self.cluster.server("s3").state, ("RW", "RO"))
        run = self.successResultOf(self.collector.collect())
        self.assertEqual((run.chunks_deleted, run.chunks_kept), (0, 1))
        self.assertEqual(self.holders(chunk), list(SERVERS))
        self.beat("s3")
        self.assertEqual(self.successResultOf(self.collector.collect()).chunks_deleted, 1)
        self.assertEqual(self.holders(chunk), [])

    def test_draining_member_is_asked(self):
        """A DRAINING member (sticky, up or not) is asked: the chunk is
        deleted from it while it answers, and kept while it does not."""
        [chunk, other] = self.store_chunks(b"abcdefgh", b"ijklmnop")
        self.successResultOf(self.store.record_garbage([chunk], "test"))
        self.successResultOf(Deferred.fromCoroutine(self.cluster.drain_server("s3")))
        self.assertEqual(self.cluster.server("s3").state, "DRAINING")
        self.clock.advance(GRACE)
        self.assertEqual(self.successResultOf(self.collector.collect()).chunks_deleted, 1)
        self.assertEqual(self.holders(chunk), [])
        self.successResultOf(self.store.record_garbage([other], "test"))
        self.clock.advance(GRACE)
        self.beat("s1")
        self.beat("s2")
        self.client.server(address("s3")).mode = DOWN
        self.assertEqual(self.successResultOf(self.collector.collect()).chunks_kept, 1)
        self.assertEqual(self.holders(other), ["s3"])
        self.client.server(address("s3")).mode = None
        self.assertEqual(self.successResultOf(self.collector.collect()).chunks_deleted, 1)
        self.assertEqual(self.holders(other), [])

    def test_intents_never_handed_over_are_collected(self):
        """The chunks of an upload body whose writer died (recorded as
        intents, never adopted by the upload) wait for the grace period,
        then are deleted from every member like garbage."""
        chunks = self.store_chunks(b"01234567", b"89abcdef")
        self.successResultOf(self.store.record_intents(chunks, "upload u1"))
        self.clock.advance(GRACE - 1)
        dry = self.successResultOf(self.collector.dry_run())
        self.assertEqual((dry.chunks_deleted, dry.chunks_waiting), (0, 2))
        run = self.successResultOf(self.collector.collect())
        self.assertEqual((run.chunks_deleted, run.chunks_waiting), (0, 0))
        self.assertEqual(len(self.successResultOf(self.store.list_intents())), 2)
        self.assertEqual(self.holders(chunks[0]), list(SERVERS))
        self.clock.advance(2)
        self.assertEqual(self.successResultOf(self.collector.dry_run()).chunks_deleted, 2)
        run = self.successResultOf(self.collector.collect())
        self.assertEqual((run.chunks_deleted, run.bytes_deleted), (2, 16))
        for chunk in chunks:
            self.assertEqual(self.holders(chunk), [])
        self.assertEqual(self.successResultOf(self.store.list_intents()), [])
        self.assertEqual(self.garbage(), [])

    def test_rounds_on_a_timer(self):
        """Running as a service, the collector runs a round every period,
        and no more once stopped."""
        [chunk] = self.store_chunks(b"abcdefgh")
        self.successResultOf(self.store.record_garbage([chunk], "test"))
        self.collector.startService()
        self.clock.advance(GRACE - 30)
        self.assertEqual(self.collector.last.chunks_waiting, 1)  # a round inside the grace
        self.clock.advance(60)
        self.assertEqual(self.collector.last.chunks_deleted, 1)
        self.collector.stopService()
        runs = self.collector.totals["runs"]
        [later] = self.store_chunks(b"ijklmnop")
        self.successResultOf(self.store.record_garbage([later], "test"))
        self.clock.advance(GRACE + 120)
        self.assertEqual(self.collector.totals["runs"], runs)
        self.assertEqual(self.holders(later), list(SERVERS))

    def test_one_round_at_a_time(self):
        """A round asked for while one runs joins it; its progress shows
        in the status meanwhile."""
        [chunk] = self.store_chunks(b"abcdefgh")
        self.successResultOf(self.store.record_garbage([chunk], "test"))
        self.clock.advance(GRACE)
        self.client.hold.add("delete")
        first, second = self.collector.collect(), self.collector.collect()
        self.assertNoResult(first)
        status = self.collector.status()
        self.assertTrue(status["running"])
        self.assertEqual(status["current"]["chunks_due"], 1)
        self.client.release()
        self.assertEqual(self.successResultOf(first), self.successResultOf(second))
        self.assertEqual(self.collector.totals["runs"], 1)
        self.assertFalse(self.collector.status()["running"])


class DeletedBlobTests(SynchronousTestCase):
    """A blob deleted through the registry gives its chunks to the
    collector: readable until the grace period ends, deleted after."""

    def setUp(self):
        self.cluster = FakeCluster({1: ["10.0.0.1:8001", "10.0.0.2:8001", "10.0.0.3:8001"]},
                                   chunk_size=8)
        self.blobs = Blobs(self.cluster.metadata, self.cluster.storage, self.cluster.clock)
        self.collector = ChunkCollector(self.cluster.storage, self.cluster.metadata,
                                        self.cluster.clock, grace=GRACE)

    def test_pull_in_progress_survives_the_delete(self):
        data = b"layer bytes, four chunks"
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
