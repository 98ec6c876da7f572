"""
Tests for L{speedy.chunkserver.heartbeat}: a chunkserver's heartbeats reach
the chunkmaster on schedule, and a master that is down, slow, refusing or
talking garbage is logged and outlived.
"""

from treq.testing import RequestTraversalAgent
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from speedy.chunkmaster.api import build_api
from speedy.chunkmaster.cluster import Cluster
from speedy.chunkserver.heartbeat import LOG_EVERY, HeartbeatService
from speedy.errors import Unavailable
from speedy.metadata.memory import MemoryMetadataStore
from speedy.records import RO, RW

SECRET = "sekrit"
INTERVAL = 5.0
TIMEOUT = 3.0
GiB = 1 << 30


class FakeChunkStore:
    """What the heartbeat reads of a chunk store: C{status()}."""

    def __init__(self):
        self.read_only = False
        self.open = True
        self.damaged = {}

    def acknowledge_damaged(self, file_ids):
        for file_id in file_ids:
            self.damaged.pop(file_id, None)

    def status(self):
        if not self.open:
            raise Unavailable("the chunk store is not open")
        return {
            "capacity": 100 * GiB, "used": 10 * GiB, "free": 90 * GiB,
            "read_only": self.read_only, "chunks": 42, "volumes": [{"garbage": 5 << 20}, {"garbage": 7}],
            "counters": {"reads": 7, "writes": 3, "label": "not a number"},
        }


class ScriptedMaster(Resource):
    """
    A chunkmaster that answers each heartbeat with the next of C{answers}:
    C{(status, body)}, or None to never answer.
    """

    isLeaf = True

    def __init__(self, answers):
        super().__init__()
        self.answers = list(answers)
        self.requests = []

    def render_POST(self, request):
        self.requests.append(request.content.read())
        answer = self.answers.pop(0)
        if answer is None:
            return NOT_DONE_YET
        status, body = answer
        request.setResponseCode(status)
        return body


def warnings(events):
    return [e for e in events if e["log_level"].name == "warn"]


class HeartbeatTestCase(SynchronousTestCase):
    def setUp(self):
        self.reactor = MemoryReactorClock()
        self.chunks = FakeChunkStore()
        self.addCleanup(self.assertClean)

    def assertClean(self):
        """Nothing is left scheduled once everything stopped."""
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def start(self, resource, secret=SECRET, health=None):
        self.agent = RequestTraversalAgent(resource)
        self.service = HeartbeatService(
            self.reactor, "http://master:8099/", secret, "cs1", 1, "10.0.0.1:8001",
            self.chunks, INTERVAL, timeout=TIMEOUT, agent=self.agent, health=health)
        self.service.startService()
        self.agent.flush()
        self.addCleanup(self.stop)

    def stop(self):
        if self.service.running:
            self.successResultOf(self.service.stopService())
        self.agent.flush()

    def advance(self, seconds):
        self.reactor.advance(seconds)
        self.agent.flush()


class RealMasterTests(HeartbeatTestCase):
    """Heartbeats against the chunkmaster's real API."""

    def setUp(self):
        super().setUp()
        self.cluster = Cluster(MemoryMetadataStore(self.reactor), self.reactor, heartbeat_timeout=15)
        self.metadata = MemoryMetadataStore(self.reactor)
        self.start(build_api(self.cluster, self.metadata, cluster_secret=SECRET))
        self.addCleanup(self.cluster.stop)

    def test_damaged_chunks_reported_once_recorded(self):
        """Damaged chunk ids go with the next beat; the chunkmaster records
        them for repair before it answers, and only then does the
        chunkserver forget them."""
        self.chunks.damaged = {5: None, 9: None}
        self.advance(INTERVAL)
        bad = self.successResultOf(self.metadata.list_bad_replicas())
        self.assertEqual(sorted((b.server_id, b.group_id, b.file_id) for b in bad),
                         [("cs1", 1, 5), ("cs1", 1, 9)])
        self.assertEqual(self.chunks.damaged, {})

    def test_registers(self):
        """
        The first heartbeat goes out at once and registers the server with
        the store's numbers and counters; the master's answer is kept.
        """
        server = self.cluster.server("cs1")
        self.assertEqual((server.group_id, server.address, server.state), (1, "10.0.0.1:8001", RW))
        self.assertEqual((server.capacity, server.used, server.free), (100 * GiB, 10 * GiB, 90 * GiB))
        self.assertEqual(server.load, {"reads": 7, "writes": 3, "chunks": 42, "garbage": (5 << 20) + 7})
        self.assertEqual(self.service.state, RW)
        self.assertEqual(self.service.cluster_version, self.cluster.version)

    def test_health_url(self):
        """A chunkserver with a --metrics listener says where with every
        beat; the chunkmaster lists it among its members."""
        from speedy.monitoring.members import Members
        self.stop()
        members = Members(self.reactor, self.cluster)
        self.start(build_api(self.cluster, self.metadata, cluster_secret=SECRET,
                             members=members), health="http://10.0.0.1:9100")
        [server] = members.listing()["chunkservers"]
        self.assertEqual((server["server_id"], server["health"]), ("cs1", "http://10.0.0.1:9100"))

    def test_keeps_alive(self):
        """Beats every interval keep the server RW past the master's timeout."""
        for _ in range(10):
            self.advance(INTERVAL)
        self.assertEqual(self.cluster.server("cs1").state, RW)
        self.assertEqual(self.cluster.server("cs1").last_heartbeat, 50.0)

    def test_read_only(self):
        """A read-only store is reported, and the master's verdict kept."""
        self.chunks.read_only = True
        self.advance(INTERVAL)
        self.assertEqual((self.cluster.server("cs1").state, self.service.state), (RO, RO))

    def test_stopped(self):
        """After stopping, no more heartbeats: the master marks the server DOWN."""
        self.stop()
        self.reactor.advance(15)
        self.assertEqual(self.cluster.server("cs1").state, "DOWN")


class WrongSecretTests(HeartbeatTestCase):
    def test_refused(self):
        """
        A refused heartbeat is logged with the master's reason, once, and
        the beats go on.
        """
        cluster = Cluster(MemoryMetadataStore(self.reactor), self.reactor)
        with capturedLogs() as events:
            self.start(build_api(cluster, MemoryMetadataStore(self.reactor), cluster_secret="other"))
            self.advance(INTERVAL)
        self.addCleanup(cluster.stop)
        [warning] = warnings(events)
        self.assertIn("missing or wrong bearer token", str(warning["error"]))
        self.assertEqual(warning["count"], 1)
        self.assertIsNone(cluster.server("cs1"))

    def test_damaged_kept_when_refused(self):
        """Damaged chunk ids a refused beat carried are sent again."""
        self.chunks.damaged = {5: None}
        cluster = Cluster(MemoryMetadataStore(self.reactor), self.reactor)
        self.addCleanup(cluster.stop)
        self.start(build_api(cluster, MemoryMetadataStore(self.reactor), cluster_secret="other"))
        self.advance(INTERVAL)
        self.assertEqual(self.chunks.damaged, {5: None})


class FailingMasterTests(HeartbeatTestCase):
    def test_garbage_and_errors(self):
        """
        Error statuses, non-JSON and JSON without the expected keys are each
        a failed beat, and the next beat still goes out.
        """
        master = ScriptedMaster([
            (500, b"\x00\xffgarbage"), (200, b"not json"), (200, b'{"state": "RW"}'),
            (503, b'{"error": {"code": "UNAVAILABLE", "message": "db down"}}'),
            (200, b'{"state": "RW", "cluster_version": 9}'),
        ])
        with capturedLogs() as events:
            self.start(master)
            for _ in range(4):
                self.advance(INTERVAL)
        self.assertEqual(len(master.requests), 5)
        self.assertEqual((self.service.state, self.service.cluster_version), (RW, 9))
        self.assertEqual(len(warnings(events)), 1)
        self.assertIn("heartbeats go through again after 4", [
            e["log_format"].format(**e) for e in events if e["log_level"].name == "info"][0])

    def test_timeout(self):
        """A master that never answers is given up after the timeout, and
        the next beat goes out on schedule."""
        master = ScriptedMaster([None, (200, b'{"state": "RW", "cluster_version": 1}')])
        with capturedLogs() as events:
            self.start(master)
            self.advance(TIMEOUT)
        [warning] = warnings(events)
        self.assertEqual(str(warning["error"]), f"no answer within {TIMEOUT}s")
        self.advance(INTERVAL - TIMEOUT)
        self.assertEqual((len(master.requests), self.service.state), (2, RW))

    def test_log_once_a_minute(self):
        """A run of failures is logged at its start, then once a minute."""
        master = ScriptedMaster([(500, b"")] * 25)
        with capturedLogs() as events:
            self.start(master)
            for _ in range(24):
                self.advance(INTERVAL)
        self.assertEqual([w["count"] for w in warnings(events)], [1, 13, 25])
        self.assertEqual(LOG_EVERY, 60.0)

    def test_stop_in_flight(self):
        """Stopping gives up a heartbeat in flight, quietly and cleanly."""
        master = ScriptedMaster([None])
        with capturedLogs() as events:
            self.start(master)
            self.stop()
        self.assertEqual(warnings(events), [])


class UnopenedStoreTests(HeartbeatTestCase):
    def test_waits_for_store(self):
        """No heartbeat goes out before the store is open; then they do."""
        self.chunks.open = False
        master = ScriptedMaster([(200, b'{"state": "RW", "cluster_version": 1}')])
        with capturedLogs() as events:
            self.start(master)
            self.advance(INTERVAL)
        self.assertEqual(master.requests, [])
        self.assertIn("not open", str(warnings(events)[0]["error"]))
        self.chunks.open = True
        self.advance(INTERVAL)
        self.assertEqual(self.service.state, RW)


class OwnPoolTests(SynchronousTestCase):
    def test_connects_through_reactor(self):
        """
        Without an injected agent, the service connects to the master
        through the reactor it was given, and closes its pool on stop.
        """
        reactor = MemoryReactorClock()
        service = HeartbeatService(
            reactor, "http://master.example:8099", None, "cs1", 1, "10.0.0.1:8001",
            FakeChunkStore(), INTERVAL)
        service.startService()
        self.assertEqual([c[1] for c in reactor.tcpClients], [8099])
        self.successResultOf(service.stopService())
        self.assertEqual(reactor.getDelayedCalls(), [])
