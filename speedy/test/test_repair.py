"""
Tests for L{speedy.chunkmaster.repair}: bad replicas copied back from a
healthy member, verified end to end, at the rate and parallelism asked;
group rebuilds after a replacement, resumed after a restart.
"""

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from speedy.chunkmaster.cluster import Cluster
from speedy.chunkmaster.messages import Heartbeat
from speedy.chunkmaster.repair import RepairService
from speedy.crc import crc32c
from speedy.logs import run_for
from speedy.metadata.memory import MemoryMetadataStore
from speedy.records import RW, BadReplica
from speedy.testing import DOWN, FakeChunkClient

GiB = 1 << 30
MiB = 1 << 20


def address(server_id):
    return f"10.0.0.{server_id[1:]}:8000"


class RepairTestCase(SynchronousTestCase):
    """A group of three live servers, s1-s3, over fake chunkservers."""

    def setUp(self):
        self.clock = Clock()
        self.store = MemoryMetadataStore(self.clock)
        self.successResultOf(self.store.start())
        self.cluster = Cluster(self.store, self.clock, heartbeat_timeout=3600, group_size=3,
                               reserve=0)
        self.addCleanup(self.cluster.stop)
        self.client = FakeChunkClient(self.clock)
        for server_id in ("s1", "s2", "s3"):
            self.beat(server_id)
        self.repairs = self.new_service()

    def new_service(self, **kwargs):
        kwargs.setdefault("rate", 0)
        service = RepairService(self.clock, self.cluster, self.store, self.client, **kwargs)
        self.addCleanup(lambda: service.running and service.stopService())
        return service

    def beat(self, server_id, group_id=1):
        self.successResultOf(Deferred.fromCoroutine(self.cluster.heartbeat(Heartbeat(
            server_id, group_id, address(server_id), 100 * GiB, 0, 100 * GiB, False, {}))))

    def put(self, file_id, data, servers=("s1", "s2", "s3")):
        for server_id in servers:
            self.successResultOf(self.client.put(address(server_id), file_id, data))

    def chunk(self, server_id, file_id):
        return self.client.server(address(server_id)).chunks.get(file_id)

    def bad(self, server_id, file_id, reason="damaged on disk"):
        self.successResultOf(self.store.record_bad_replica(
            BadReplica(server_id, 1, file_id, reason)))

    def queue(self):
        return [(b.server_id, b.file_id) for b in self.successResultOf(
            self.store.list_bad_replicas())]

    def work(self, service=None):
        self.successResultOf((service or self.repairs).kick())


class RepairTests(RepairTestCase):

    def test_damaged_copy_repaired(self):
        """A damaged copy is dropped by the check, copied back from another
        member, and the entry is gone."""
        self.put(7, b"x" * 1000)
        self.client.server(address("s2")).chunks[7] = b"y" * 1000  # rotted
        self.bad("s2", 7)
        self.work()
        self.assertEqual(self.chunk("s2", 7), b"x" * 1000)
        self.assertEqual(self.queue(), [])
        self.assertEqual(self.repairs.counters["repaired"], 1)
        self.assertEqual(self.repairs.counters["bytes"], 1000)

    def test_missing_copy_repaired(self):
        self.put(7, b"x" * 1000, servers=("s1", "s3"))
        self.bad("s2", 7, "missing")
        self.work()
        self.assertEqual(self.chunk("s2", 7), b"x" * 1000)

    def test_no_trace(self):
        """A repair runs for no request: its chunkserver requests carry no
        trace, though the look was kicked while handling one (a
        heartbeat's, which reported the damage)."""
        self.put(7, b"x" * 1000)
        self.client.server(address("s2")).chunks[7] = b"y" * 1000
        self.bad("s2", 7)
        self.client.traces.clear()
        run_for("heartbeat-1", self.work)
        self.assertEqual(self.chunk("s2", 7), b"x" * 1000)
        self.assertEqual({trace for _, _, _, trace in self.client.traces}, {None})

    def test_good_copy_left_alone(self):
        """A copy that checks out (a read failed for a passing reason) is
        not rewritten: the entry is simply forgotten."""
        self.put(7, b"x" * 1000)
        self.bad("s2", 7)
        self.work()
        self.assertEqual(self.repairs.counters["found_good"], 1)
        self.assertEqual(self.client.calls["put", address("s2")], 1)  # only the setUp's
        self.assertEqual(self.queue(), [])

    def test_damaged_source_skipped_and_recorded(self):
        """A source whose copy is damaged too is recorded bad and the next
        member gives the chunk."""
        self.put(7, b"x" * 1000, servers=("s1", "s3"))
        self.client.server(address("s1")).chunks[7] = b"z" * 1000
        self.bad("s2", 7, "missing")
        self.work()
        self.assertEqual(self.chunk("s2", 7), b"x" * 1000)
        self.assertEqual(self.queue(), [("s1", 7)])
        self.work()
        self.assertEqual(self.chunk("s1", 7), b"x" * 1000)
        self.assertEqual(self.queue(), [])

    def test_target_down_waits(self):
        """An entry whose target is not alive waits in the queue."""
        self.put(7, b"x" * 1000, servers=("s1", "s3"))
        self.bad("s2", 7, "missing")
        for _ in range(3601):
            self.clock.advance(1)
            if self.clock.seconds() % 60 == 0:
                self.beat("s1")
                self.beat("s3")
        self.assertNotEqual(self.cluster.server("s2").state, RW)
        self.work()
        self.assertEqual(self.queue(), [("s2", 7)])
        self.beat("s2")
        self.work()
        self.assertEqual(self.queue(), [])
        self.assertEqual(self.chunk("s2", 7), b"x" * 1000)

    def test_sources_unreachable_waits(self):
        """If no other member answers, the entry waits."""
        self.put(7, b"x" * 1000, servers=("s1", "s3"))
        for server_id in ("s1", "s3"):
            self.client.server(address(server_id)).mode = DOWN
        self.bad("s2", 7, "missing")
        self.work()
        self.assertEqual(self.queue(), [("s2", 7)])
        self.assertEqual(self.repairs.counters["failed"], 0)

    def test_chunk_gone_everywhere(self):
        """A chunk no member holds any more (deleted) is forgotten."""
        self.bad("s2", 7, "missing")
        self.work()
        self.assertEqual(self.queue(), [])
        self.assertEqual(self.repairs.counters["gone"], 1)

    def test_removed_target_forgotten(self):
        self.bad("s9", 7, "missing")
        self.work()
        self.assertEqual(self.queue(), [])

    def test_rate(self):
        """Copies keep to the byte rate: three 1 MiB chunks at 1 MiB/s take
        about two seconds after the first."""
        service = self.new_service(rate=MiB, parallelism=1)
        for file_id in (1, 2, 3):
            self.put(file_id, bytes([file_id]) * MiB, servers=("s1", "s3"))
            self.bad("s2", file_id, "missing")
        service.kick()
        self.assertEqual(sorted(self.client.server(address("s2")).chunks), [1])
        self.clock.advance(1)
        self.assertEqual(sorted(self.client.server(address("s2")).chunks), [1, 2])
        self.clock.advance(1)
        self.assertEqual(sorted(self.client.server(address("s2")).chunks), [1, 2, 3])

    def test_parallelism(self):
        """No more copies than C{parallelism} are under way at once."""
        service = self.new_service(parallelism=2)
        for file_id in range(1, 6):
            self.put(file_id, b"c" * 100, servers=("s1", "s3"))
            self.bad("s2", file_id, "missing")
        self.client.hold = {"put"}
        service.kick()
        self.assertEqual(len(self.client.held), 2)
        while self.client.held:
            self.client.release()
        self.assertEqual(sorted(self.client.server(address("s2")).chunks), [1, 2, 3, 4, 5])
        self.assertEqual(self.client.max_in_flight, 2)

    def test_wrong_bytes_arriving_fail(self):
        """A target that stores other bytes than were sent fails the repair
        (verified end to end); the entry stays for the next try."""
        self.put(7, b"x" * 1000, servers=("s1", "s3"))
        self.bad("s2", 7, "missing")
        original = self.client.put

        def corrupting_put(address, file_id, data, keep=False):
            return original(address, file_id, b"q" + bytes(data)[1:], keep)

        self.client.put = corrupting_put
        self.work()
        self.assertEqual(self.queue(), [("s2", 7)])
        self.assertEqual(self.repairs.counters["failed"], 1)

    def test_background(self):
        """Started, it works the queue every interval."""
        service = self.new_service(interval=5)
        service.startService()
        self.put(7, b"x" * 10, servers=("s1", "s3"))
        self.bad("s2", 7, "missing")
        self.clock.advance(5)
        self.assertEqual(self.chunk("s2", 7), b"x" * 10)
        service.stopService()

    def test_parallelism_zero_repairs_nothing(self):
        """With no parallelism (a second chunkmaster, leaving repairs to
        the first) neither a kick nor the loop copies anything, and the queue
        is left for the chunkmaster that does repair."""
        service = self.new_service(parallelism=0, interval=5)
        self.assertFalse(service.enabled)
        self.put(7, b"x" * 10, servers=("s1", "s3"))
        self.bad("s2", 7, "missing")
        self.work(service)
        self.clock.advance(60)
        self.assertIsNone(self.chunk("s2", 7))
        self.assertEqual(self.queue(), [("s2", 7)])


class RebuildTests(RepairTestCase):

    def lose_s2_for_s9(self):
        for file_id in range(1, 21):
            self.put(file_id, bytes([file_id]) * (file_id * 100))
        self.successResultOf(Deferred.fromCoroutine(
            self.cluster.replace_server("s2", "s9", address("s9"))))

    def test_rebuild(self):
        """The newcomer gets every chunk the others hold, then the group is
        writable again, and the progress says so."""
        self.lose_s2_for_s9()
        self.assertFalse(self.cluster.writable(1))
        self.beat("s9")
        self.assertFalse(self.cluster.writable(1))
        self.work()
        server = self.client.server(address("s9"))
        self.assertEqual(sorted(server.chunks), list(range(1, 21)))
        for file_id, data in server.chunks.items():
            self.assertEqual(data, bytes([file_id]) * (file_id * 100))
            self.assertEqual(server.crcs[file_id], crc32c(data))
        self.assertFalse(self.cluster.server("s9").rebuilding)
        self.assertTrue(self.cluster.writable(1))
        [progress] = self.repairs.status()["rebuilds"]
        self.assertEqual((progress["state"], progress["chunks_done"], progress["chunks_total"],
                          progress["bytes_done"]), ("done", 20, 20, 21000))

    def test_newcomer_not_alive_yet(self):
        """Until the newcomer heartbeats, the rebuild waits."""
        self.lose_s2_for_s9()
        self.work()
        self.assertEqual(self.repairs.status()["rebuilds"][0]["state"], "waiting")
        self.assertEqual(self.client.server(address("s9")).chunks, {})
        self.beat("s9")
        self.work()
        self.assertFalse(self.cluster.server("s9").rebuilding)

    def test_resumed_after_restart(self):
        """A rebuild interrupted half-way resumes, in a new chunkmaster,
        from what the newcomer already holds: nothing is copied twice."""
        self.lose_s2_for_s9()
        self.beat("s9")
        self.client.hold = {"put"}
        self.repairs.kick()
        self.client.release()  # two copies land...
        self.repairs.stopService()  # ...and the chunkmaster goes away
        self.client.hold = set()
        self.client.held = []
        held = set(self.client.server(address("s9")).chunks)
        self.assertEqual(len(held), 2)
        restarted = self.new_service()
        self.work(restarted)
        self.assertEqual(sorted(self.client.server(address("s9")).chunks), list(range(1, 21)))
        self.assertEqual(restarted.status()["rebuilds"][0]["chunks_done"], 18)
        self.assertFalse(self.cluster.server("s9").rebuilding)
