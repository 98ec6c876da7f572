"""
Tests for L{speedy.monitoring}: routes as bounded labels, request counting,
the collectors read through the Prometheus library's own parser, and the
C{/metrics}, C{/healthz}, C{/readyz} routes and C{--metrics} listeners.
"""

import json
import os

from prometheus_client.parser import text_string_to_metric_families
from treq.testing import StubTreq
from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest

from speedy.chunkmaster.cluster import Cluster
from speedy.chunkmaster.api import build_api
from speedy.monitoring.buckets import Buckets
from speedy.monitoring.collectors import ChunkmasterCollector, ChunkserverCollector
from speedy.monitoring.database import DatabaseCheck
from speedy.monitoring.endpoints import Monitoring, daemon_registry
from speedy.monitoring.http import HTTPMetrics, chunkmaster_route, imageserver_route
from speedy.test.test_chunkmaster_api import GiB, SECRET, heartbeat
from speedy.errors import Unavailable
from speedy.testing import OutageStore

DIGEST = "sha256:" + "ab" * 32


def samples_of(text):
    """@return: C{{(name, ((label, value), ...)): value}} parsed by the library."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def exposition(*collectors):
    from prometheus_client import CollectorRegistry, generate_latest
    registry = CollectorRegistry()
    for collector in collectors:
        registry.register(collector)
    return samples_of(generate_latest(registry).decode("utf-8"))


class RouteTests(SynchronousTestCase):
    def test_registry_routes_never_carry_names_or_digests(self):
        """Every /v2 path maps to one of a few route names, whatever the
        repository and digest in it."""
        cases = {
            b"/v2/": "v2_base",
            b"/v2": "v2_base",
            b"/v2/_catalog?n=10": "v2_catalog",
            b"/v2/library/alpine/blobs/" + DIGEST.encode(): "v2_blobs",
            b"/v2/a/b/c/blobs/uploads/": "v2_uploads",
            b"/v2/a/blobs/uploads/1234-uuid": "v2_uploads",
            b"/v2/manifests/manifests/latest": "v2_manifests",
            b"/v2/blobs/manifests/" + DIGEST.encode(): "v2_manifests",
            b"/v2/x/tags/list": "v2_tags",
            b"/v2/x/referrers/" + DIGEST.encode(): "v2_referrers",
            b"/v2/x/unknown": "v2_other",
            b"/v1/files/some/file": "v1_files",
            b"/v1/chunks/1,2": "v1_chunks",
            b"/v1/whatever/else": "v1_other",
            b"/metrics": "metrics",
            b"/readyz": "readyz",
            b"/favicon.ico": "other",
        }
        self.assertEqual({path: imageserver_route(path) for path in cases}, cases)

    def test_chunkmaster_routes(self):
        self.assertEqual(
            [chunkmaster_route(p) for p in (b"/v1/heartbeat", b"/v1/admin/servers/s1/drain",
                                            b"/dashboard", b"/v1/cluster", b"/x")],
            ["v1_heartbeat", "v1_admin", "dashboard", "v1_cluster", "other"])


def finished(path, method=b"GET", code=200, took=0.003, metrics=None, sent=b"",
             length=None):
    request = DummyRequest([])
    request.path, request.method, request.code = path, method, code
    request.speedy_started = metrics.now() - took
    request.sentLength = len(sent)
    request.body_length = length
    return request


class HTTPMetricsTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.clock.advance(100)
        self.metrics = HTTPMetrics(imageserver_route, "speedy_test_http", now=self.clock.seconds)

    def test_counts_by_route_method_status(self):
        """Each finished request counts once under its route, method and
        status, with its latency in the histogram and its bytes."""
        m = self.metrics
        m.observe(finished(b"/v2/a/blobs/" + DIGEST.encode(), b"HEAD", took=0.003, metrics=m))
        m.observe(finished(b"/v2/b/blobs/" + DIGEST.encode(), b"HEAD", took=0.2, metrics=m))
        m.observe(finished(b"/v2/b/blobs/" + DIGEST.encode(), b"GET", code=404, metrics=m,
                           sent=b"x" * 50))
        m.observe(finished(b"/v2/b/blobs/uploads/u", b"PUT", code=201, metrics=m, length=1000))
        samples = exposition(m)
        key = (("method", "HEAD"), ("route", "v2_blobs"), ("status", "200"))
        self.assertEqual(samples[("speedy_test_http_requests_total", key)], 2)
        self.assertEqual(samples[("speedy_test_http_requests_total",
                                  (("method", "GET"), ("route", "v2_blobs"),
                                   ("status", "404")))], 1)
        head = (("method", "HEAD"), ("route", "v2_blobs"))
        self.assertEqual(samples[("speedy_test_http_request_duration_seconds_count", head)], 2)
        self.assertAlmostEqual(
            samples[("speedy_test_http_request_duration_seconds_sum", head)], 0.203)
        self.assertEqual(samples[("speedy_test_http_request_duration_seconds_bucket",
                                  tuple(sorted(head + (("le", "0.005"),))))], 1)
        self.assertEqual(samples[("speedy_test_http_request_duration_seconds_bucket",
                                  tuple(sorted(head + (("le", "+Inf"),))))], 2)
        self.assertEqual(samples[("speedy_test_http_sent_bytes_total",
                                  (("route", "v2_blobs"),))], 50)
        self.assertEqual(samples[("speedy_test_http_received_bytes_total",
                                  (("route", "v2_uploads"),))], 1000)
        labels = {value for (_, labels) in samples for _, value in labels}
        self.assertNotIn(DIGEST, labels)

    def test_odd_methods_share_one_label(self):
        m = self.metrics
        m.observe(finished(b"/v2/", b"BREW", metrics=m))
        self.assertEqual(exposition(m)[("speedy_test_http_requests_total", (
            ("method", "other"), ("route", "v2_base"), ("status", "200")))], 1)


class BucketsTests(SynchronousTestCase):
    def test_cumulative(self):
        buckets = Buckets([1, 2, 4])
        for value in (1, 1, 3, 9):
            buckets.observe(value)
        family = buckets.family("speedy_test_batch", "Test.")
        self.assertEqual([(s.labels["le"], s.value) for s in family.samples[:4]],
                         [("1.0", 2), ("2.0", 2), ("4.0", 3), ("+Inf", 4)])
        self.assertEqual(buckets.count, 4)
        self.assertEqual(buckets.sum, 14)


class ChunkRequestMetricsTests(SynchronousTestCase):
    def test_per_chunkserver_latency_and_errors(self):
        """The imageserver's chunk client timings come out as one histogram
        and one error counter labelled by chunkserver and operation: a slow
        member stands apart from a fast one."""
        from speedy.monitoring.collectors import _chunk_request_families
        from speedy.wire.timings import RequestTimings

        timings = RequestTimings()
        for seconds in (0.002, 0.003):
            timings.observe("10.0.0.1:8001", "put", seconds)
        timings.observe("10.0.0.2:8001", "put", 4.0)
        timings.failed("10.0.0.2:8001", "get", ConnectionRefusedError())

        class Families:
            def collect(self):
                return _chunk_request_families(timings)

        samples = exposition(Families())
        name = "speedy_imageserver_chunk_request_duration_seconds"
        fast = (("operation", "put"), ("server", "10.0.0.1:8001"))
        slow = (("operation", "put"), ("server", "10.0.0.2:8001"))
        self.assertEqual(samples[(name + "_count", fast)], 2)
        self.assertEqual(samples[(name + "_bucket", (("le", "0.005"),) + fast)], 2)
        self.assertEqual(samples[(name + "_bucket", (("le", "2.5"),) + slow)], 0)
        self.assertEqual(samples[(name + "_bucket", (("le", "5.0"),) + slow)], 1)
        self.assertEqual(samples[("speedy_imageserver_chunk_request_errors_total", (
            ("error", "ConnectionRefusedError"), ("operation", "get"),
            ("server", "10.0.0.2:8001")))], 1)


class UploadSessionsTests(SynchronousTestCase):
    def test_counted_from_the_store_at_most_every_max_age(self):
        """The chunkmaster counts the registry's open upload sessions from
        the metadata store before a scrape, at most every C{max_age}
        seconds; a store that fails leaves the last count."""
        from speedy.metadata.memory import MemoryMetadataStore
        from speedy.monitoring.uploads import UploadSessions
        from speedy.records import UploadRecord
        from twisted.internet.defer import Deferred

        clock = Clock()
        store = MemoryMetadataStore(clock)
        self.successResultOf(store.start())

        class Uploads:
            broken = False

            def count_uploads(self):
                return fail(RuntimeError("database gone")) if self.broken else \
                    store.count_uploads()

        uploads = Uploads()
        sessions = UploadSessions(clock, uploads, max_age=5.0)

        def scrape():
            self.successResultOf(Deferred.fromCoroutine(sessions.refresh()))
            return exposition(sessions)

        self.assertEqual(scrape()[("speedy_chunkmaster_upload_sessions", ())], 0)
        self.successResultOf(store.create_upload(UploadRecord("u1", "r", 7)))
        self.assertEqual(scrape()[("speedy_chunkmaster_upload_sessions", ())], 0)  # kept
        clock.advance(5)
        samples = scrape()
        self.assertEqual(samples[("speedy_chunkmaster_upload_sessions", ())], 1)
        self.assertEqual(samples[("speedy_chunkmaster_upload_session_bytes", ())], 7)
        uploads.broken = True
        clock.advance(5)
        self.assertEqual(scrape()[("speedy_chunkmaster_upload_sessions", ())], 1)
        self.flushLoggedErrors()


class FakeStore:
    """What the chunkserver collector reads of a chunk store."""

    def status(self):
        return {
            "capacity": 1000, "used": 300, "free": 600, "read_only": False, "chunks": 7,
            "index_bytes": 196,
            "volumes": [{"volume_id": 1, "size": 500, "used": 300, "live": 200,
                         "garbage": 100, "chunks": 7, "compacting": False}],
            "counters": {"writes": 7, "bytes_compacted_away": 42, "scrub_passes": 1,
                         "sync_rounds": 3},
            "cache": {"size": 64, "bytes": 10, "chunks": 1},
        }


class ChunkserverCollectorTests(SynchronousTestCase):
    def test_store_and_wire(self):
        store = None
        collector = ChunkserverCollector(lambda: store, {"requests": 5, "open_connections": 2})
        closed = exposition(collector)
        self.assertEqual(closed[("speedy_chunkserver_store_open", ())], 0)
        self.assertEqual(closed[("speedy_chunkserver_wire_requests_total", ())], 5)
        self.assertEqual(closed[("speedy_chunkserver_wire_open_connections", ())], 2)
        store = FakeStore()
        samples = exposition(collector)
        self.assertEqual(samples[("speedy_chunkserver_store_open", ())], 1)
        self.assertEqual(samples[("speedy_chunkserver_chunk_writes_total", ())], 7)
        self.assertEqual(samples[("speedy_chunkserver_compaction_reclaimed_bytes_total", ())], 42)
        self.assertEqual(samples[("speedy_chunkserver_scrub_passes_total", ())], 1)
        self.assertEqual(samples[("speedy_chunkserver_free_bytes", ())], 600)
        self.assertEqual(samples[("speedy_chunkserver_read_only", ())], 0)
        self.assertEqual(samples[("speedy_chunkserver_index_bytes", ())], 196)
        self.assertAlmostEqual(
            samples[("speedy_chunkserver_volume_garbage_ratio", (("volume", "1"),))], 1 / 3)
        self.assertAlmostEqual(
            samples[("speedy_chunkserver_volume_fill_ratio", (("volume", "1"),))], 0.6)


class ChunkmasterMetricsTests(SynchronousTestCase):
    """The chunkmaster's API serves /metrics, /healthz and /readyz."""

    def setUp(self):
        self.clock = Clock()
        self.store = OutageStore(self.clock)
        self.cluster = Cluster(self.store, self.clock, heartbeat_timeout=60, group_size=3,
                               reserve=GiB)
        self.addCleanup(self.cluster.stop)
        self.ready = True
        monitoring = Monitoring(
            daemon_registry(ChunkmasterCollector(self.cluster)),
            {"cluster": lambda: (self.ready, "a detail")})
        self.http = StubTreq(build_api(self.cluster, self.store, cluster_secret=SECRET,
                                       monitoring=monitoring))

    def get(self, path, headers=None):
        response = self.successResultOf(self.http.get("http://master" + path, headers=headers))
        return response, self.successResultOf(response.content())

    def test_metrics_follow_heartbeats(self):
        """Servers by state and heartbeats move as chunkservers report; no
        credentials are needed."""
        for n in (1, 2, 3):
            response = self.successResultOf(self.http.post(
                "http://master/v1/heartbeat", data=json.dumps(heartbeat(f"s{n}")).encode(),
                headers={"Authorization": "Bearer " + SECRET}))
            self.assertEqual(response.code, 200)
            self.successResultOf(response.content())
        response, body = self.get("/metrics")
        self.assertEqual(response.code, 200)
        self.assertTrue(response.headers.getRawHeaders("content-type")[0].startswith(
            "text/plain;"))
        samples = samples_of(body.decode())
        self.assertEqual(samples[("speedy_chunkmaster_servers", (("state", "RW"),))], 3)
        self.assertEqual(samples[("speedy_chunkmaster_servers", (("state", "DOWN"),))], 0)
        self.assertEqual(samples[("speedy_chunkmaster_heartbeats_total", ())], 3)
        self.assertEqual(samples[("speedy_chunkmaster_groups_writable", ())], 1)
        self.assertEqual(samples[("speedy_chunkmaster_free_bytes", ())], 3 * 99 * GiB)
        self.assertIn(("process_cpu_seconds_total", ()), samples)
        self.clock.advance(61)
        samples = samples_of(self.get("/metrics")[1].decode())
        self.assertEqual(samples[("speedy_chunkmaster_servers", (("state", "DOWN"),))], 3)
        self.assertEqual(samples[("speedy_chunkmaster_groups_writable", ())], 0)

    def test_health(self):
        """/healthz answers while the process lives; /readyz is 503 while a
        check fails, naming it."""
        response, body = self.get("/healthz")
        self.assertEqual((response.code, json.loads(body)), (200, {"alive": True}))
        response, body = self.get("/readyz")
        self.assertEqual((response.code, json.loads(body)), (200, {
            "ready": True, "checks": {"cluster": {"ok": True, "detail": "a detail"}}}))
        self.ready = False
        response, body = self.get("/readyz")
        self.assertEqual((response.code, json.loads(body)["ready"]), (503, False))

    def test_check_with_figures(self):
        """A check may answer a mapping: its figures are answered beside
        C{ok} and C{detail}, and its C{ok} decides readiness."""
        from speedy.web.json import answer_json_error
        from speedy.web.rest import Router
        answers = [{"ok": True, "detail": "view 7", "writable_groups": 2},
                   {"ok": False, "detail": "no view", "writable_groups": 0}]
        monitoring = Monitoring(daemon_registry(), {"view": lambda: answers.pop(0)})
        http = StubTreq(monitoring.add_routes(Router(answer_json_error)).resource)
        for code, ok, writable in [(200, True, 2), (503, False, 0)]:
            response = self.successResultOf(http.get("http://m/readyz"))
            body = json.loads(self.successResultOf(response.content()))
            self.assertEqual((response.code, body["ready"]), (code, ok))
            self.assertEqual(body["checks"]["view"]["writable_groups"], writable)


class ListenerTests(SynchronousTestCase):
    """--metrics opens a side listener on each role."""

    def test_chunkserver(self):
        from speedy.chunkserver import tap
        from speedy.test.util import with_secrets
        with_secrets(self)
        options = tap.Options()
        options.parseOptions(["--data-dir", self.mktemp(), "--group-id", "1",
                              "--listen", "tcp:8000:interface=127.0.0.1",
                              "--metrics", "tcp:9100:interface=127.0.0.1"])
        reactor = MemoryReactorClock()
        service = tap.makeService(options, reactor=reactor)
        [metrics] = [s for s in service if getattr(s, "endpoint", None) is not None
                     and s.endpoint._port == 9100]
        metrics.startService()
        [(port, site, _, _)] = reactor.tcpServers
        self.assertEqual(port, 9100)
        response = self.successResultOf(StubTreq(site.resource).get("http://cs/readyz"))
        self.assertEqual(response.code, 503)
        self.assertIn(b"not open", self.successResultOf(response.content()))
        metrics.stopService()

    def test_imageserver(self):
        from speedy.imageserver import tap
        from speedy.test.util import with_secrets
        with_secrets(self)
        options = tap.Options()
        options.parseOptions(["--db", "memory:", "--listen", "tcp:5000:interface=127.0.0.1",
                              "--metrics", "tcp:9101:interface=127.0.0.1"])
        reactor = MemoryReactorClock()
        service = tap.makeService(options, reactor=reactor)
        listeners = [s for s in service if getattr(s, "endpoint", None) is not None]
        for listener in listeners:
            listener.startService()
        self.addCleanup(lambda: [listener.stopService() for listener in listeners])
        ports = {port: site for (port, site, _, _) in reactor.tcpServers}
        self.assertEqual(set(ports), {5000, 9101})
        for port in (5000, 9101):
            response = self.successResultOf(StubTreq(ports[port].resource).get(
                "http://image/readyz"))
            self.assertEqual(response.code, 503)  # no cluster view yet
            body = json.loads(self.successResultOf(response.content()))
            self.assertEqual(body["checks"]["cluster_view"]["ok"], False)
            self.assertEqual(body["checks"]["cluster_view"]["writable_groups"], 0)
        response = self.successResultOf(StubTreq(ports[9101].resource).get(
            "http://image/metrics"))
        samples = samples_of(self.successResultOf(response.content()).decode())
        self.assertEqual(samples[("speedy_imageserver_chunks_written_total", ())], 0)
        self.assertEqual(samples[("speedy_imageserver_view_version", ())], 0)
        # Which worker this is: its name at the chunkmaster, its health listener.
        self.assertEqual(samples[("speedy_imageserver_worker_info", (
            ("health", "http://127.0.0.1:9101"), ("name", f"127.0.0.1:5000 pid {os.getpid()}")))],
            1)


class SideListenerLimitsTests(SynchronousTestCase):
    """The --metrics listener of each role holds its clients to the same
    HTTP limits as the role's main listener: a connection that never
    finishes its headers is answered 408 at the header timeout, oversized
    headers 431, and one address cannot hold more connections than allowed."""

    def metrics_site(self, role, args):
        from importlib import import_module
        from speedy.test.util import with_secrets
        with_secrets(self, admin="an-admin-token-of-the-test")
        tap = import_module(f"speedy.{role}.tap")
        options = tap.Options()
        options.parseOptions(args + ["--metrics", "tcp:9109:interface=127.0.0.1"])
        self.reactor = MemoryReactorClock()
        service = tap.makeService(options, reactor=self.reactor)
        [metrics] = [s for s in _services(service) if getattr(s, "endpoint", None) is not None
                     and s.endpoint._port == 9109]
        metrics.startService()
        self.addCleanup(metrics.stopService)
        [site] = [site for (port, site, _, _) in self.reactor.tcpServers if port == 9109]
        return site

    def assert_guarded(self, site, header_timeout, per_client):
        from twisted.internet.address import IPv4Address
        from twisted.internet.testing import StringTransport
        channels = []

        def connect():
            channel = site.buildProtocol(IPv4Address("TCP", "10.0.0.9", 40000))
            transport = StringTransport()
            channel.makeConnection(transport)
            channels.append(channel)
            return transport

        self.addCleanup(lambda: [c.connectionLost(None) for c in channels
                                 if getattr(c, "transport", None) is not None])
        stalled = connect()
        stalled.protocol = channels[-1]
        channels[-1].dataReceived(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        self.reactor.advance(header_timeout - 0.5)
        self.assertEqual(stalled.value(), b"")
        self.reactor.advance(1)
        self.assertTrue(stalled.value().startswith(b"HTTP/1.1 408 "), stalled.value()[:40])
        huge = connect()
        channels[-1].dataReceived(b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-a: "
                                  + b"a" * (65 << 10) + b"\r\n\r\n")
        self.assertTrue(huge.value().startswith(b"HTTP/1.1 431 "), huge.value()[:40])
        if per_client:
            for c in list(channels):
                c.connectionLost(None)
            channels.clear()
            for _ in range(per_client):
                connect()
            refused = connect()
            self.assertIn(b" 429 ", refused.value())

    def test_imageserver(self):
        site = self.metrics_site("imageserver", [
            "--db", "memory:", "--listen", "tcp:5000:interface=127.0.0.1",
            "--header-timeout", "3", "--max-connections-per-client", "4"])
        self.assert_guarded(site, 3, 4)

    def test_chunkmaster(self):
        site = self.metrics_site("chunkmaster", [
            "--db", "memory:", "--listen", "tcp:8099:interface=127.0.0.1",
            "--header-timeout", "4"])
        self.assert_guarded(site, 4, 0)

    def test_chunkserver(self):
        """A chunkserver has no HTTP listener of its own: its metrics
        listener takes the defaults (10 s, 128 connections an address)."""
        site = self.metrics_site("chunkserver", [
            "--data-dir", self.mktemp(), "--group-id", "1",
            "--listen", "tcp:8000:interface=127.0.0.1"])
        self.assert_guarded(site, 10, 128)


def _services(service):
    """@return: C{service} and every service under it."""
    yield service
    for child in getattr(service, "services", ()):
        yield from _services(child)


class DatabaseCheckTests(SynchronousTestCase):
    """The database readiness check of the imageserver's and chunkmaster's
    /readyz."""

    def setUp(self):
        self.clock = Clock()
        self.asked = []
        self.check = DatabaseCheck(self.clock, self.read, max_age=2.0, timeout=5.0)

    def read(self):
        d = Deferred()
        self.asked.append(d)
        return d

    def test_answer_kept_and_shared(self):
        """Callers while a question is out share it; the answer is kept
        max_age seconds, then the store is asked again."""
        first, second = self.check(), self.check()
        self.assertEqual(len(self.asked), 1)
        self.assertNoResult(first)
        self.clock.advance(0.012)
        self.asked[0].callback(0)
        for d in (first, second):
            self.assertEqual(self.successResultOf(d),
                             (True, "the metadata store answered in 12 ms"))
        self.clock.advance(1)
        self.assertTrue(self.successResultOf(self.check())[0])
        self.assertEqual(len(self.asked), 1)
        self.clock.advance(1.5)
        self.check()
        self.assertEqual(len(self.asked), 2)

    def test_failure_and_timeout_are_not_ready(self):
        """A store that fails or does not answer in time: not ready, saying
        why; never an exception."""
        d = self.check()
        self.asked[0].errback(Unavailable("database is locked"))
        ok, detail = self.successResultOf(d)
        self.assertEqual((ok, detail), (False, "the metadata store did not answer: "
                                               "database is locked"))
        self.clock.advance(3)
        d = self.check()
        self.clock.advance(5)
        ok, detail = self.successResultOf(d)
        self.assertEqual((ok, detail), (False, "the metadata store did not answer in 5 s"))

    def test_readyz_awaits_it(self):
        """/readyz waits for an asynchronous check and answers 503 when the
        database does not answer."""
        from speedy.web.json import answer_json_error
        from speedy.web.rest import Router
        monitoring = Monitoring(daemon_registry(), {"database": self.check})
        http = StubTreq(monitoring.add_routes(Router(answer_json_error)).resource)
        pending = http.get("http://m/readyz")
        self.assertNoResult(pending)
        self.asked[0].errback(Unavailable("gone"))
        http.flush()
        response = self.successResultOf(pending)
        body = json.loads(self.successResultOf(response.content()))
        self.assertEqual((response.code, body["checks"]["database"]["ok"]), (503, False))
        self.clock.advance(3)
        pending = http.get("http://m/readyz")
        self.asked[1].callback(0)
        http.flush()
        self.assertEqual(self.successResultOf(pending).code, 200)
