"""
Tests for L{speedy.monitoring.progress}: the garbage collector's and the
transfers' progress as Prometheus families (read back with the library's
parser) and as the dashboard's figures.
"""

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from speedy.monitoring.endpoints import daemon_registry
from speedy.monitoring.progress import WorkProgress


class Collector:
    """A stand-in with L{ChunkCollector.status}'s shape."""

    def __init__(self):
        self.totals = {"runs": 0, "chunks_deleted": 0, "bytes_deleted": 0, "blobs_deleted": 0,
                       "manifests_deleted": 0}
        self.current = self.last = None

    def status(self):
        return {"grace": 3600, "period": 60, "sweep": None, "running": self.current is not None,
                "current": self.current, "last": self.last, "totals": dict(self.totals)}


class Transfers:
    """A stand-in with L{TransferService}'s counters and status."""

    def __init__(self):
        self.counters = dict(moved=0, bytes=0, deleted=0, failed=0)
        self.transfers = []
        self.reads = 0

    async def status(self):
        self.reads += 1
        return {"transfers": list(self.transfers), "counters": dict(self.counters),
                "delete_delay": 600}


def run(key, chunks_deleted=0, bytes_deleted=0, chunks_waiting=0, bytes_waiting=0,
        chunks_kept=0, chunks_due=0, duration=None):
    return {"started": 0, "dry_run": False, "finished": duration, "chunks_deleted": chunks_deleted,
            "bytes_deleted": bytes_deleted, "chunks_kept": chunks_kept,
            "chunks_waiting": chunks_waiting, "bytes_waiting": bytes_waiting,
            "chunks_due": chunks_due, "sweep": None, "duration": duration}


def transfer(state, rate, chunks_left):
    return {"transfer_id": 1, "kind": "drain", "state": state, "rate": rate,
            "chunks_left": chunks_left, "chunks_done": 3, "bytes_done": 30}


class WorkProgressTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.collector, self.transfers = Collector(), Transfers()
        self.progress = WorkProgress(self.clock, self.collector, self.transfers, max_age=2)
        self.registry = daemon_registry(self.progress)

    def scrape(self):
        self.successResultOf(Deferred.fromCoroutine(self.progress.refresh()))
        samples = {}
        for family in text_string_to_metric_families(generate_latest(self.registry).decode()):
            for sample in family.samples:
                samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        return samples

    def test_idle(self):
        """Before any round or transfer every figure is there, at 0."""
        samples = self.scrape()
        for name in ("gc_waiting_bytes", "transfer_rate_bytes_per_second",
                     "transfer_left_chunks"):
            self.assertEqual(samples[("speedy_chunkmaster_" + name, ())], 0, name)
        self.assertEqual(samples[("speedy_chunkmaster_transfers", (("state", "running"),))], 0)
        self.assertEqual(self.progress.gc()["current"], None)

    def test_gc_rounds(self):
        """The dashboard's figures: finished rounds with what they freed,
        the last one's duration and what it left pending, a round in
        progress with how far it got; the bytes left waiting are a metric."""
        self.collector.totals.update(runs=2, chunks_deleted=7, bytes_deleted=7000)
        self.collector.last = run(2, chunks_waiting=3, bytes_waiting=300, chunks_kept=1,
                                  duration=1.5)
        self.collector.current = run(3, chunks_due=10, chunks_deleted=4)
        gc = self.progress.gc()
        self.assertEqual((gc["runs"], gc["chunks_freed"], gc["bytes_freed"]), (2, 7, 7000))
        self.assertEqual((gc["pending_chunks"], gc["pending_bytes"]), (4, 300))
        self.assertEqual((gc["running"], gc["last_duration"]), (True, 1.5))
        self.assertEqual(gc["current"], {"chunks_due": 10, "chunks_deleted": 4})
        self.assertEqual(self.scrape()[("speedy_chunkmaster_gc_waiting_bytes", ())], 300)

    def test_transfers(self):
        """Running transfers, their summed rate and chunks left are gauges;
        the dashboard also gets the service's counters."""
        self.transfers.counters.update(moved=5, bytes=5 << 20, failed=1)
        self.transfers.transfers = [transfer("running", 1000.0, 10),
                                    transfer("running", 500.0, 2), transfer("done", 0, 0)]
        samples = self.scrape()
        m = lambda name, *labels: samples[("speedy_chunkmaster_" + name, labels)]
        self.assertEqual(m("transfers", ("state", "running")), 2)
        self.assertEqual(m("transfers", ("state", "done")), 1)
        self.assertEqual(m("transfer_rate_bytes_per_second"), 1500.0)
        self.assertEqual(m("transfer_left_chunks"), 12)
        transfers = self.progress.transfers()
        self.assertEqual((transfers["active"], transfers["chunks_moved"], transfers["bytes_moved"],
                          transfers["failures"]), (2, 5, 5 << 20, 1))

    def test_transfer_status_read_at_most_every_max_age(self):
        """Scrapes closer together than C{max_age} read the store once."""
        self.scrape()
        self.scrape()
        self.assertEqual(self.transfers.reads, 1)
        self.clock.advance(2)
        self.scrape()
        self.assertEqual(self.transfers.reads, 2)

    def test_without_services(self):
        """A chunkmaster without a collector or transfers shows neither."""
        progress = WorkProgress(self.clock)
        self.successResultOf(Deferred.fromCoroutine(progress.refresh()))
        self.assertEqual((progress.gc(), progress.transfers(), list(progress.collect())),
                         (None, None, []))
