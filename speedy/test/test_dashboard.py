"""
Tests for L{speedy.monitoring.dashboard}: the JSON the page draws, the
rates sampled from heartbeats, the imageservers seen, and the page and its
assets served by the chunkmaster's API.
"""

import gzip
import json

from treq.testing import RequestTraversalAgent, StubTreq
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import readBody
from twisted.web.http_headers import Headers

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
        self.serve(Dashboard(self.clock, self.cluster, self.history, self.peers))

    def serve(self, dashboard):
        """Serve the chunkmaster's API with C{dashboard}."""
        self.dashboard = dashboard
        self.http_resource = build_api(self.cluster, self.store, cluster_secret=SECRET,
                                       dashboard=dashboard, peers=self.peers)
        self.http = StubTreq(self.http_resource)

    def beat(self, server_id, group_id=1, **load):
        body = heartbeat(server_id, group_id,
                         load=dict({"chunks": 4, "garbage": GiB // 2}, **load))
        response = self.successResultOf(self.http.post(
            "http://master/v1/heartbeat", data=json.dumps(body).encode(),
            headers={"Authorization": "Bearer " + SECRET}))
        self.assertEqual(response.code, 200)
        self.successResultOf(response.content())

    def get(self, path, **headers):
        response = self.successResultOf(self.http.get("http://master" + path, headers=headers))
        return response, self.successResultOf(response.content())

    def wire(self, path, **headers):
        """@return: the answer to a GET of C{path} with C{headers} alone
        (treq's client asks for gzip and decodes it: not this one), and
        its body as sent."""
        agent = RequestTraversalAgent(self.http_resource)
        response = self.successResultOf(agent.request(
            b"GET", b"http://master" + path.encode(),
            Headers({name.replace("_", "-"): [value] for name, value in headers.items()})))
        return response, self.successResultOf(readBody(response))

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

    def test_readers_share_one_rendering(self):
        """Readers within the rendering's max age (1 s) get the same bytes
        without a new rendering, though heartbeats changed the numbers
        meanwhile; the first reader after it sees the new numbers."""
        for n in (1, 2, 3):
            self.beat(f"s{n}")
        _, first = self.get("/dashboard/data")
        self.beat("s1", chunks=40)
        self.clock.advance(0.5)
        _, second = self.get("/dashboard/data")
        self.assertEqual(second, first)
        self.assertEqual(self.dashboard.rendered.renderings, 1)
        self.clock.advance(0.5)
        self.assertEqual(self.data()["totals"]["chunks"], 40 + 4 + 4)
        self.assertEqual(self.dashboard.rendered.renderings, 2)

    def test_state_changes_show_at_once(self):
        """A server registered, a server DOWN and a group set read-only
        show in the very next answer, however long a rendering may be
        served otherwise."""
        self.serve(Dashboard(self.clock, self.cluster, self.history, self.peers,
                             max_age=3600))
        for n in (1, 2, 3):
            self.beat(f"s{n}")
        self.assertEqual(self.data()["totals"]["groups_writable"], 1)
        self.beat("s4", group_id=2)
        self.assertEqual([g["group_id"] for g in self.data()["groups"]], [1, 2])
        self.successResultOf(Deferred.fromCoroutine(self.cluster.set_group_read_only(1, True)))
        [group, _] = self.data()["groups"]
        self.assertEqual((group["read_only"], group["writable"]), (True, False))
        self.clock.advance(5)
        for n in (1, 2):
            self.beat(f"s{n}")
        self.beat("s4", group_id=2)
        self.data()
        self.clock.advance(6)
        states = {s["server_id"]: s["state"] for g in self.data()["groups"]
                  for s in g["servers"]}
        self.assertEqual(states, {"s1": "RW", "s2": "RW", "s3": "DOWN", "s4": "RW"})

    def test_etag_and_gzip(self):
        """The data carries an ETag: asked again with it in If-None-Match,
        the answer is a 304 without a body.  A client that accepts gzip
        gets the same JSON gzipped; one that does not gets it plain."""
        self.beat("s1")
        response, plain = self.wire("/dashboard/data")
        self.assertEqual(response.code, 200)
        self.assertIsNone(response.headers.getRawHeaders("content-encoding"))
        self.assertEqual(json.loads(plain)["groups"][0]["servers"][0]["server_id"], "s1")
        self.assertEqual(response.headers.getRawHeaders("cache-control"), ["no-cache"])
        [etag] = response.headers.getRawHeaders("etag")
        response, body = self.wire("/dashboard/data", if_none_match=etag)
        self.assertEqual((response.code, body), (304, b""))
        self.assertEqual(response.headers.getRawHeaders("etag"), [etag])
        response, zipped = self.wire("/dashboard/data", accept_encoding="gzip, deflate")
        self.assertEqual(response.code, 200)
        self.assertEqual(response.headers.getRawHeaders("content-encoding"), ["gzip"])
        self.assertEqual(response.headers.getRawHeaders("vary"), ["Accept-Encoding"])
        self.assertEqual(gzip.decompress(zipped), plain)
        self.assertLess(len(zipped), len(plain))
        # treq asks for gzip and decodes it, as a browser does.
        self.assertEqual(self.get("/dashboard/data")[1], plain)

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
        self.clock.advance(self.dashboard.rendered.max_age)  # the last rendering expires
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
