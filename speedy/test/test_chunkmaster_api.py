"""
Tests for L{speedy.chunkmaster.api}: every endpoint of the chunkmaster's
REST API through L{treq.testing.StubTreq}, with every kind of bad input.
"""

import json

from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from speedy.chunkmaster.api import build_api
from speedy.chunkmaster.cluster import Cluster
from speedy.metadata.memory import MemoryMetadataStore
from speedy.records import DRAINING, RO, RW
from speedy.testing import OutageStore

SECRET = "cluster-sekrit"
ADMIN = "admin-sekrit"
GiB = 1 << 30
TIMEOUT = 60
URL = "http://master"


def heartbeat(server_id="s1", group_id=1, **changes):
    """@return: the JSON body of a healthy server's heartbeat, with changes."""
    body = {
        "server_id": server_id, "group_id": group_id,
        "address": f"10.0.0.{str(server_id).lstrip('s')}:8000",
        "capacity": 100 * GiB, "used": GiB, "free": 99 * GiB, "read_only": False,
        "load": {"reads": 1, "writes": 2.5},
    }
    body.update(changes)
    return body


class APITestCase(SynchronousTestCase):
    admin_token = ADMIN

    def setUp(self):
        self.clock = Clock()
        self.store = OutageStore(self.clock)
        self.cluster = Cluster(self.store, self.clock, heartbeat_timeout=TIMEOUT, group_size=3,
                               reserve=GiB, publish_interval=5)
        self.addCleanup(self.cluster.stop)
        self.http = StubTreq(build_api(
            self.cluster, self.store, cluster_secret=SECRET, admin_token=self.admin_token,
            max_file_ids=1000))

    def call(self, method, path, body=None, token=SECRET, headers=None, data=None):
        """
        @return: C{(status, headers, decoded JSON or None)} of a request
            that completes at once.
        """
        headers = dict(headers or {})
        if token is not None:
            headers["Authorization"] = "Bearer " + token
        if body is not None:
            data = json.dumps(body).encode("utf-8")
        response = self.successResultOf(
            self.http.request(method, URL + path, headers=headers, data=data))
        return self.answer(response)

    def answer(self, response):
        raw = self.successResultOf(response.content())
        if raw:
            self.assertEqual(response.headers.getRawHeaders("content-type"), ["application/json"])
        return response.code, response.headers, json.loads(raw) if raw else None

    def admin(self, method, path, body=None, token=ADMIN):
        return self.call(method, path, body, token=token)

    def beat(self, **changes):
        return self.call("POST", "/v1/heartbeat", heartbeat(**changes))

    def assertError(self, result, status, code):
        self.assertEqual((result[0], result[2]["error"]["code"]), (status, code))
        self.assertIsInstance(result[2]["error"]["message"], str)

    def snapshot(self):
        """@return: the view and the store's cluster tables (read even while
        the store is down)."""
        return (self.cluster.version, self.cluster.view(),
                self.successResultOf(MemoryMetadataStore.list_servers(self.store)),
                self.successResultOf(MemoryMetadataStore.list_groups(self.store)))

    def assertNothingChanged(self, action):
        """Run C{action}: it must leave the view and the store as they were."""
        before = self.snapshot()
        action()
        self.assertEqual(self.snapshot(), before)


class HealthTests(APITestCase):
    def test_health(self):
        """Anyone may ask whether the chunkmaster is up."""
        self.assertEqual(self.call("GET", "/v1/health", token=None)[::2], (200, {"ok": True}))

    def test_unknown_path(self):
        """Unknown paths answer a JSON 404."""
        for path in ("/", "/v1", "/v2/cluster", "/v1/health/more", "/v1/admin"):
            self.assertError(self.call("GET", path), 404, "NOT_FOUND")

    def test_wrong_method(self):
        """A method an endpoint lacks answers a JSON 405 that says what it has."""
        status, headers, body = self.call("DELETE", "/v1/cluster")
        self.assertError((status, headers, body), 405, "METHOD_NOT_ALLOWED")
        self.assertEqual(headers.getRawHeaders("allow"), ["GET"])


class HeartbeatTests(APITestCase):
    def test_first(self):
        """A heartbeat answers the server's state and the view version."""
        status, _, body = self.beat()
        self.assertEqual((status, body), (200, {"state": RW, "cluster_version": self.cluster.version}))
        self.assertEqual(self.cluster.server("s1").load, {"reads": 1, "writes": 2.5})

    def test_read_only(self):
        self.assertEqual(self.beat(read_only=True)[2]["state"], RO)

    def test_optional_load(self):
        """C{load} may be left out."""
        body = heartbeat()
        del body["load"]
        self.assertEqual(self.call("POST", "/v1/heartbeat", body)[0], 200)

    def test_credentials(self):
        """
        A heartbeat without the cluster secret, or with another, is refused
        with 401 and changes nothing.
        """
        for token in (None, "wrong", SECRET + "x", ""):
            self.assertNothingChanged(lambda: self.assertError(
                self.call("POST", "/v1/heartbeat", heartbeat(), token=token), 401, "UNAUTHORIZED"))
        status, headers, _ = self.call(
            "POST", "/v1/heartbeat", heartbeat(), token=None,
            headers={"Authorization": "Basic " + SECRET})
        self.assertEqual(status, 401)
        self.assertEqual(headers.getRawHeaders("www-authenticate"), ["Bearer"])

    def test_garbage(self):
        """Bytes that are not a JSON object answer 400 and change nothing."""
        for data in (b"", b"\xff\xfe\x00garbage", b"{\"server_id\": ", b"[1, 2]", b"null", b"NaN"):
            self.assertNothingChanged(lambda: self.assertError(
                self.call("POST", "/v1/heartbeat", data=data), 400, "BAD_REQUEST"))

    def test_wrong_fields(self):
        """Every missing or mistyped field answers 400, logged, and changes nothing."""
        wrong = [
            {"server_id": 7}, {"server_id": ""}, {"server_id": "../etc"}, {"server_id": "x" * 65},
            {"group_id": "1"}, {"group_id": -1}, {"group_id": True}, {"group_id": 1.5},
            {"address": "nohost"}, {"address": "host:0"}, {"address": "host:99999"},
            {"address": ":8000"}, {"address": ["10.0.0.1", 8000]},
            {"capacity": -1}, {"used": "1"}, {"free": 1.5}, {"free": None},
            {"read_only": "no"}, {"read_only": 0},
            {"load": [1]}, {"load": {"reads": "many"}}, {"load": {"reads": True}},
        ]
        for changes in wrong:
            with capturedLogs() as events:
                self.assertNothingChanged(lambda: self.assertError(
                    self.call("POST", "/v1/heartbeat", heartbeat(**changes)), 400, "BAD_REQUEST"))
            self.assertTrue(any(e.get("status") == 400 for e in events), changes)
        for field in ("server_id", "group_id", "address", "capacity", "used", "free", "read_only"):
            body = heartbeat()
            del body[field]
            status, _, answer = self.call("POST", "/v1/heartbeat", body)
            self.assertEqual(status, 400)
            self.assertIn(field, answer["error"]["message"])

    def test_non_finite_load(self):
        """A load of NaN or Infinity (which Python's json reads) is refused:
        the view must stay valid JSON."""
        data = json.dumps(heartbeat()).replace('"reads": 1', '"reads": Infinity').encode()
        self.assertError(self.call("POST", "/v1/heartbeat", data=data), 400, "BAD_REQUEST")

    def test_fourth_member(self):
        """A fourth member of a group is refused with 400."""
        for n in (1, 2, 3):
            self.beat(server_id=f"s{n}")
        self.assertNothingChanged(lambda: self.assertError(self.beat(server_id="s4"), 400, "BAD_REQUEST"))

    def test_address_of_another(self):
        """A server claiming another's address is refused with 400."""
        self.beat(server_id="s1")
        self.assertNothingChanged(lambda: self.assertError(
            self.beat(server_id="s2", address="10.0.0.1:8000"), 400, "BAD_REQUEST"))

    def test_database_down(self):
        """An unknown server cannot register while the database is down: 503."""
        self.store.down = True
        self.assertNothingChanged(lambda: self.assertError(self.beat(), 503, "UNAVAILABLE"))


class ClusterViewTests(APITestCase):
    def setUp(self):
        super().setUp()
        for n in (1, 2, 3):
            self.beat(server_id=f"s{n}")

    def etag(self):
        return '"%d"' % (self.cluster.version,)

    def test_view(self):
        """The view lists groups and servers, with the version as ETag."""
        status, headers, body = self.call("GET", "/v1/cluster")
        self.assertEqual(status, 200)
        self.assertEqual(headers.getRawHeaders("etag"), [self.etag()])
        self.assertEqual(body["version"], self.cluster.version)
        [group] = body["groups"]
        self.assertEqual((group["group_id"], group["writable"], group["read_only"]), (1, True, False))
        self.assertEqual(
            group["servers"][0],
            {"server_id": "s1", "address": "10.0.0.1:8000", "state": RW,
             "capacity": 100 * GiB, "used": GiB, "free": 99 * GiB, "read_only": False,
             "load": {"reads": 1, "writes": 2.5}, "last_heartbeat": 0.0,
             "rebuilding": False, "lost": False})

    def test_credentials(self):
        self.assertError(self.call("GET", "/v1/cluster", token="wrong"), 401, "UNAUTHORIZED")

    def test_not_modified(self):
        """If-None-Match with the current version answers 304 without a body."""
        for tag in (self.etag(), "W/" + self.etag(), self.etag() + ', "1"'):
            status, headers, body = self.call("GET", "/v1/cluster", headers={"If-None-Match": tag})
            self.assertEqual((status, body), (304, None))
            self.assertEqual(headers.getRawHeaders("etag"), [self.etag()])

    def test_stale_etag(self):
        """An older version, or garbage, in If-None-Match gets the full view."""
        for tag in ('"1"', "garbage", '"-3"'):
            status, _, body = self.call("GET", "/v1/cluster", headers={"If-None-Match": tag})
            self.assertEqual((status, body["version"]), (200, self.cluster.version))

    def long_poll(self, wait, tag=None):
        return self.http.request(
            "GET", URL + "/v1/cluster", params={"wait": wait},
            headers={"Authorization": "Bearer " + SECRET, "If-None-Match": tag or self.etag()})

    def test_long_poll_change(self):
        """A long-poll answers the new view as soon as the version changes."""
        old = self.cluster.version
        request = self.long_poll("20")
        self.assertNoResult(request)
        self.clock.advance(10)
        self.assertNoResult(request)
        self.beat(server_id="s2", read_only=True)
        self.http.flush()
        status, headers, body = self.answer(self.successResultOf(request))
        self.assertEqual(status, 200)
        self.assertGreater(body["version"], old)
        self.assertFalse(body["groups"][0]["writable"])
        self.assertEqual(headers.getRawHeaders("etag"), [self.etag()])

    def test_long_poll_timeout(self):
        """Without a change, a long-poll answers 304 after its wait."""
        request = self.long_poll("20")
        self.clock.advance(19.9)
        self.assertNoResult(request)
        self.clock.advance(0.1)
        self.http.flush()
        self.assertEqual(self.successResultOf(request).code, 304)

    def test_long_poll_capped(self):
        """A wait over 30 seconds waits 30 seconds."""
        request = self.long_poll("3600")
        self.clock.advance(30)
        self.http.flush()
        self.assertEqual(self.successResultOf(request).code, 304)

    def test_long_poll_old_version(self):
        """A long-poll holding an old version answers at once."""
        request = self.long_poll("20", tag='"1"')
        self.assertEqual(self.successResultOf(request).code, 200)

    def test_wait_without_etag(self):
        """A wait without If-None-Match has nothing to wait for: it answers at once."""
        status, _, _ = self.call("GET", "/v1/cluster?wait=20")
        self.assertEqual(status, 200)

    def test_client_goes_away(self):
        """
        A client that hangs up during a long-poll leaves no waiter or timer
        behind.
        """
        request = self.long_poll("20")
        timers = len(self.clock.getDelayedCalls())
        request.cancel()
        self.failureResultOf(request)
        self.http.flush()
        self.assertEqual(len(self.clock.getDelayedCalls()), timers - 1)
        self.beat(server_id="s2", read_only=True)  # nothing left to answer

    def test_bad_wait(self):
        for wait in ("abc", "-1", "nan", "inf", ""):
            self.assertError(self.call("GET", "/v1/cluster?wait=" + wait), 400, "BAD_REQUEST")

    def test_stop(self):
        """Stopping the cluster answers pending long-polls."""
        request = self.long_poll("20")
        self.cluster.stop()
        self.http.flush()
        self.assertEqual(self.successResultOf(request).code, 304)


class FileIdTests(APITestCase):
    def allocate(self, count, token=SECRET):
        return self.call("POST", "/v1/file-ids", {"count": count}, token=token)

    def test_ranges(self):
        """Each call answers a new range of the size asked for, never overlapping."""
        status, _, first = self.allocate(10)
        self.assertEqual(status, 200)
        self.assertEqual(first["end"] - first["start"], 10)
        _, _, second = self.allocate(5)
        self.assertEqual(second, {"start": first["end"], "end": first["end"] + 5})

    def test_capped(self):
        """A count above the configured range is cut to it."""
        _, _, answer = self.allocate(10**9)
        self.assertEqual(answer["end"] - answer["start"], 1000)

    def test_bad_count(self):
        """A count that is not a positive integer is refused; nothing is allocated."""
        for count in (0, -5, "5", True, 2.0, None):
            self.assertError(self.allocate(count), 400, "BAD_REQUEST")
        self.assertError(self.call("POST", "/v1/file-ids", {}), 400, "BAD_REQUEST")
        self.assertNotIn("allocate_file_ids", self.store.calls)

    def test_credentials(self):
        self.assertError(self.allocate(5, token="wrong"), 401, "UNAUTHORIZED")
        self.assertNotIn("allocate_file_ids", self.store.calls)

    def test_database_down(self):
        """With the database down: 503, and the next range after it comes back
        is still new."""
        _, _, first = self.allocate(5)
        self.store.down = True
        self.assertError(self.allocate(5), 503, "UNAVAILABLE")
        self.store.down = False
        self.assertEqual(self.allocate(5)[2]["start"], first["end"])


class AdminTests(APITestCase):
    def test_add_server(self):
        status, _, body = self.admin("POST", "/v1/admin/servers",
                                     {"server_id": "s1", "group_id": 2, "address": "h:1"})
        self.assertEqual((status, body["state"]), (201, "INIT"))
        self.assertEqual(self.successResultOf(self.store.get_server("s1")).group_id, 2)
        status, _, _ = self.admin("POST", "/v1/admin/servers",
                                  {"server_id": "s1", "group_id": 2, "address": "h:1"})
        self.assertEqual(status, 200)

    def test_add_server_refused(self):
        """Bad bodies, a taken address and a full group answer 400; nothing changes."""
        self.admin("POST", "/v1/admin/servers", {"server_id": "s1", "group_id": 2, "address": "h:1"})
        for body in ({"server_id": "s2", "group_id": 2},
                     {"server_id": "s2", "group_id": "2", "address": "h:2"},
                     {"server_id": "s2", "group_id": 2, "address": "h:1"},
                     {"server_id": "s1", "group_id": 3, "address": "h:1"}):
            self.assertNothingChanged(lambda: self.assertError(
                self.admin("POST", "/v1/admin/servers", body), 400, "BAD_REQUEST"))

    def test_remove_server(self):
        self.beat()
        status, _, body = self.admin("DELETE", "/v1/admin/servers/s1")
        self.assertEqual((status, body), (204, None))
        self.assertIsNone(self.cluster.server("s1"))
        self.assertError(self.admin("DELETE", "/v1/admin/servers/s1"), 404, "NOT_FOUND")

    def test_drain_server(self):
        self.beat()
        status, _, body = self.admin("POST", "/v1/admin/servers/s1/drain")
        self.assertEqual((status, body["state"]), (200, DRAINING))
        self.assertEqual(self.beat()[2]["state"], DRAINING)
        self.assertError(self.admin("POST", "/v1/admin/servers/nope/drain"), 404, "NOT_FOUND")

    def test_set_group(self):
        for n in (1, 2, 3):
            self.beat(server_id=f"s{n}")
        status, _, body = self.admin("PUT", "/v1/admin/groups/1", {"read_only": True})
        self.assertEqual((status, body), (200, {"group_id": 1, "read_only": True, "writable": False}))
        self.assertTrue(self.call("GET", "/v1/cluster")[2]["groups"][0]["read_only"])
        for bad in ({}, {"read_only": "yes"}):
            self.assertError(self.admin("PUT", "/v1/admin/groups/1", bad), 400, "BAD_REQUEST")
        for path in ("/v1/admin/groups/abc", "/v1/admin/groups/-1", "/v1/admin/groups/99999999999"):
            self.assertError(self.admin("PUT", path, {"read_only": True}), 404, "NOT_FOUND")

    def test_registry_v1(self):
        """The V1 registry's totals, with the admin token only."""
        status, _, body = self.admin("GET", "/v1/admin/registry-v1")
        self.assertEqual((status, body["repositories"], body["unfinished_layer_bytes"]), (200, 0, 0))
        self.assertError(self.admin("GET", "/v1/admin/registry-v1", token=SECRET), 401, "UNAUTHORIZED")
        self.store.down = True
        self.assertError(self.admin("GET", "/v1/admin/registry-v1"), 503, "UNAVAILABLE")

    def test_gc_without_a_collector(self):
        """A chunkmaster built without a collector answers 404 for it."""
        self.assertError(self.admin("GET", "/v1/admin/gc"), 404, "NOT_FOUND")
        self.assertError(self.admin("POST", "/v1/admin/gc", {}), 404, "NOT_FOUND")

    def test_credentials(self):
        """Admin calls need the admin token: not the cluster secret, not nothing."""
        self.beat()
        for token in (None, SECRET, "wrong"):
            self.assertNothingChanged(lambda: self.assertError(
                self.admin("DELETE", "/v1/admin/servers/s1", token=token), 401, "UNAUTHORIZED"))

    def test_database_down(self):
        """Admin calls answer 503 while the database is down; nothing changes."""
        self.beat()
        self.store.down = True
        for method, path, body in (
                ("POST", "/v1/admin/servers", {"server_id": "s2", "group_id": 1, "address": "h:2"}),
                ("DELETE", "/v1/admin/servers/s1", None),
                ("POST", "/v1/admin/servers/s1/drain", None),
                ("PUT", "/v1/admin/groups/1", {"read_only": True})):
            self.assertNothingChanged(lambda: self.assertError(
                self.admin(method, path, body), 503, "UNAVAILABLE"))


class NoAdminTokenTests(APITestCase):
    admin_token = None

    def test_refused(self):
        """Without a configured admin token, every admin call is refused with 403."""
        self.beat()
        for token in (None, "", "anything"):
            self.assertError(self.admin("DELETE", "/v1/admin/servers/s1", token=token), 403, "FORBIDDEN")
        self.assertEqual(self.cluster.server("s1").state, RW)


class NoClusterSecretTests(APITestCase):
    def setUp(self):
        super().setUp()
        self.http = StubTreq(build_api(self.cluster, self.store))

    def test_open(self):
        """Without a configured cluster secret, cluster calls need no credentials."""
        self.assertEqual(self.call("POST", "/v1/heartbeat", heartbeat(), token=None)[0], 200)
        self.assertEqual(self.call("GET", "/v1/cluster", token=None)[0], 200)
        self.assertEqual(self.call("POST", "/v1/file-ids", {"count": 1}, token=None)[0], 200)
