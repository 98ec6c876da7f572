"""
Tests for L{speedy.monitoring.dashboard}: the JSON the page draws, the
rates sampled from heartbeats, the imageservers seen, and the page and its
assets served by the chunkmaster's API.
"""

import json

from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from speedy.chunkmaster.api import build_api
from speedy.chunkmaster.cluster import Cluster
from speedy.monitoring.dashboard import ClusterHistory, Dashboard, Peers
from speedy.monitoring.progress import WorkProgress
from speedy.test.test_monitoring_progress import Collector, Transfers, transfer
from speedy.test.test_chunkmaster_api import GiB, SECRET, heartbeat
from speedy.testing import OutageStore


class DashboardTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1000)
        self.store = OutageStore(self.clock)
        self.cluster = Cluster(self.store, self.clock, heartbeat_timeout=10, group_size=3,
                               reserve=GiB)
        self.addCleanup(self.cluster.stop)
        self.history = ClusterHistory(self.clock, self.cluster, interval=5)
        self.peers = Peers(self.clock)
        self.dashboard = Dashboard(self.clock, self.cluster, self.history, self.peers)
        self.http = StubTreq(build_api(self.cluster, self.store, cluster_secret=SECRET,
                                       dashboard=self.dashboard, peers=self.peers))

    def beat(self, server_id, **load):
        body = heartbeat(server_id, load=dict({"chunks": 4, "garbage": GiB // 2}, **load))
        response = self.successResultOf(self.http.post(
            "http://master/v1/heartbeat", data=json.dumps(body).encode(),
            headers={"Authorization": "Bearer " + SECRET}))
        self.assertEqual(response.code, 200)
        self.successResultOf(response.content())

    def get(self, path, **headers):
        response = self.successResultOf(self.http.get("http://master" + path, headers=headers))
        return response, self.successResultOf(response.content())

    def data(self):
        response, body = self.get("/dashboard/data")
        self.assertEqual(response.code, 200)
        return json.loads(body)

    def test_groups_states_and_totals(self):
        """Every server is listed in its group with its state, fill and
        garbage; a group missing a member is degraded and not writable;
        one whose server stops heartbeating shows it DOWN."""
        for n in (1, 2, 3):
            self.beat(f"s{n}")
        data = self.data()
        [group] = [g for g in data["groups"] if g["group_id"] == 1]
        self.assertEqual([s["server_id"] for s in group["servers"]], ["s1", "s2", "s3"])
        self.assertEqual({s["state"] for s in group["servers"]}, {"RW"})
        self.assertFalse(group["degraded"])
        self.assertAlmostEqual(group["servers"][0]["fill"], 0.01)
        self.assertEqual(group["servers"][0]["garbage"], GiB // 2)
        self.assertEqual(data["totals"]["servers"]["RW"], 3)
        self.assertEqual(data["totals"]["garbage"], 3 * GiB // 2)
        self.assertEqual(data["totals"]["groups_writable"], 1)
        self.clock.advance(5)
        for n in (1, 2):
            self.beat(f"s{n}")
        self.clock.advance(6)
        data = self.data()
        states = {s["server_id"]: s["state"] for s in data["groups"][0]["servers"]}
        self.assertEqual(states, {"s1": "RW", "s2": "RW", "s3": "DOWN"})
        self.assertTrue(data["groups"][0]["degraded"])
        self.assertFalse(data["groups"][0]["writable"])
        self.assertEqual(data["totals"]["servers"]["DOWN"], 1)

    def test_rates_from_heartbeat_counters(self):
        """The history turns the servers' summed byte counters into rates."""
        self.beat("s1", bytes_written=0, writes=0)
        self.history.startService()
        self.addCleanup(self.history.stopService)
        self.beat("s1", bytes_written=50 << 20, writes=10)
        self.clock.advance(5)
        data = self.data()
        self.assertEqual(len(data["rates"]), 1)
        self.assertEqual(data["rates"][0]["written_bytes"], 10 << 20)
        self.assertEqual(data["rates"][0]["writes"], 2)
        self.beat("s1", bytes_written=0, writes=0)  # restarted: never a negative rate
        self.clock.advance(5)
        self.assertEqual(self.data()["rates"][1]["written_bytes"], 0)

    def test_imageservers_seen(self):
        """Callers of /v1/cluster are listed by the name they give, and
        forgotten after five minutes of silence."""
        response, _ = self.get("/v1/cluster", Authorization="Bearer " + SECRET,
                               **{"X-Speedy-Imageserver": "10.0.0.9:5000 pid 7"})
        self.assertEqual(response.code, 200)
        self.clock.advance(3)
        [seen] = self.data()["imageservers"]
        self.assertEqual((seen["name"], seen["seen_ago"]), ("10.0.0.9:5000 pid 7", 3))
        self.clock.advance(300)
        self.assertEqual(self.data()["imageservers"], [])

    def test_imageserver_counters(self):
        """The counters an imageserver sends with its poll are listed with
        it and summed into the dashboard's counters; unknown names and bad
        values are dropped, and a poll without them keeps the last ones."""
        for name, counters in [("a pid 1", "read_failovers=3,bad_replicas=1,digest=9"),
                               ("b pid 2", "read_failovers=2,chunk_write_retries=x")]:
            response, _ = self.get("/v1/cluster", Authorization="Bearer " + SECRET,
                                   **{"X-Speedy-Imageserver": name,
                                      "X-Speedy-Imageserver-Counters": counters})
            self.assertEqual(response.code, 200)
        self.get("/v1/cluster", Authorization="Bearer " + SECRET,
                 **{"X-Speedy-Imageserver": "a pid 1"})
        data = self.data()
        self.assertEqual([i["counters"] for i in data["imageservers"]],
                         [{"read_failovers": 3, "bad_replicas": 1}, {"read_failovers": 2}])
        self.assertEqual(data["counters"]["imageserver_read_failovers"], 5)
        self.assertEqual(data["counters"]["imageserver_bad_replicas"], 1)
        self.assertEqual(data["counters"]["imageserver_chunk_write_retries"], 0)

    def test_gc_and_transfers(self):
        """With a L{WorkProgress}, the data carries the collector's and the
        transfers' progress; without, null."""
        self.assertEqual((self.data()["gc"], self.data()["transfers"]), (None, None))
        collector, transfers = Collector(), Transfers()
        collector.totals.update(runs=4, chunks_deleted=9)
        transfers.counters.update(moved=6)
        transfers.transfers = [transfer("running", 100.0, 3)]
        self.dashboard._progress = WorkProgress(self.clock, collector, transfers)
        data = self.data()
        self.assertEqual((data["gc"]["runs"], data["gc"]["chunks_freed"]), (4, 9))
        self.assertEqual((data["transfers"]["chunks_moved"], data["transfers"]["active"],
                          data["transfers"]["rate"]), (6, 1, 100.0))

    def test_page_and_assets(self):
        """The page, its stylesheet and script are served without
        credentials; other names under /dashboard are 404."""
        response, body = self.get("/dashboard")
        self.assertEqual(response.code, 200)
        self.assertEqual(response.headers.getRawHeaders("content-type"),
                         ["text/html; charset=utf-8"])
        self.assertIn(b"/dashboard/dashboard.js", body)
        for name, kind in (("dashboard.js", "text/javascript"), ("dashboard.css", "text/css")):
            response, body = self.get("/dashboard/" + name)
            self.assertEqual(response.code, 200)
            self.assertTrue(response.headers.getRawHeaders("content-type")[0].startswith(kind))
            self.assertTrue(body)
        response, _ = self.get("/dashboard/..%2Fapi.py")
        self.assertEqual(response.code, 404)
