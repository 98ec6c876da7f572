"""
Tests for the benchmark harnesses: the figures they print are right, bad
answers are errors and never throughput, and the registry client speaks the
protocol a real registry accepts.

    .venv/bin/trial bench._test_loadgen
"""

import hashlib
import json
import http.server
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time

from twisted.trial.unittest import TestCase

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _dataset import Dataset, Item, sha256_digest  # noqa: E402
from _procstat import ProcessTree  # noqa: E402
import _sysctl  # noqa: E402
from _servers import distribution, free_port, http_healthy  # noqa: E402
from _stats import histogram_percentile, markdown_table, percentile, summarize  # noqa: E402
from _wrk import parse_latencies, wrk_phase  # noqa: E402
from loadgen import Connection, Operations, RequestFailed, registry_suite, run_phase  # noqa: E402
from race import compare  # noqa: E402
from testbed import original_row, use_loopback  # noqa: E402
import testbed  # noqa: E402
from _transferwatch import copied_between, read_samples, transfer_at  # noqa: E402

from speedy.test.util import require_tool  # noqa: E402


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True


def serve(test, handler):
    """Run C{handler} on a loopback port for the test's duration; @return: its base URL."""
    server = _Server(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()

    def stop():
        server.shutdown()
        server.server_close()
        thread.join()

    test.addCleanup(stop)
    return f"http://127.0.0.1:{server.server_address[1]}"


GOOD = b"x" * 100_000
GOOD_ITEM = Item(index=0, name="good", size=len(GOOD), digest=sha256_digest(GOOD))


class FileHandler(http.server.BaseHTTPRequestHandler):
    """
    /v1/files/good answers the right bytes; the other names misbehave the
    way broken servers do.
    """

    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        name = self.path.rsplit("/", 1)[-1]
        if name == "garbage":
            self.wfile.write(b"\x00\xffnot http at all\r\n\r\n")
            self.close_connection = True
            return
        if name == "error":
            self.send_response(500)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = {"good": GOOD, "wrong": b"y" * len(GOOD), "short": GOOD[:1000],
                "truncated": GOOD[:5000]}[name]
        self.send_response(200)
        self.send_header("Content-Length", str(len(GOOD) if name == "truncated" else len(body)))
        self.end_headers()
        self.wfile.write(body)
        if name == "truncated":
            self.close_connection = True  # promised more than it sent, and hangs up


class StatsTests(TestCase):
    def test_percentile_is_nearest_rank(self):
        values = list(range(1, 101))
        self.assertEqual(percentile(values, 0.99), 99)
        self.assertEqual(percentile(values, 0.50), 50)
        self.assertEqual(percentile([7], 0.99), 7)
        self.assertIsNone(percentile([], 0.5))

    def test_errors_are_not_throughput(self):
        samples = [(0.5, 1 << 20, None), (0.1, 0, "digest mismatch"), (0.1, 0, "digest mismatch")]
        summary = summarize(samples, wall=1.0, cpu_seconds=0.5)
        self.assertEqual((summary["ok"], summary["errors"]), (1, 2))
        self.assertEqual(summary["error_kinds"], {"digest mismatch": 2})
        self.assertEqual(summary["MiB_s"], 1.0)
        self.assertEqual(summary["p99_ms"], 500.0)
        self.assertEqual(summary["loadgen_cores"], 0.5)

    def test_histogram_percentile_is_nearest_rank_of_what_it_counts(self):
        histogram = {3: 50, 1: 40, 900: 1, 2: 9}
        values = [v for v, n in histogram.items() for _ in range(n)]
        for fraction in (0.01, 0.4, 0.5, 0.99, 1.0):
            self.assertEqual(histogram_percentile(histogram, fraction),
                             percentile(values, fraction))
        self.assertIsNone(histogram_percentile({}, 0.99))

    def test_markdown_table(self):
        table = markdown_table([{"a": 1.5, "b": None}], [("A", "a"), ("B", "b")])
        self.assertEqual(table.splitlines(), ["| A | B |", "|---|---|", "| 1.50 | - |"])


class DatasetTests(TestCase):
    def test_payloads_are_fresh_distinct_and_reproducible(self):
        one, two = Dataset(count=2, size=4096), Dataset(count=2, size=4096)
        self.assertEqual(len(one.payload(0)), 4096)
        self.assertNotEqual(one.payload(0), one.payload(1))
        self.assertNotEqual(one.payload(0), two.payload(0))
        self.assertEqual(one.payload(1), Dataset(count=2, size=4096, key=one.key).payload(1))
        self.assertRaises(IndexError, one.payload, 2)


class VerifiedPullTests(TestCase):
    """A pull counts only when every byte arrived and the digest matches."""

    def test_bad_answers_are_errors_and_the_lanes_go_on(self):
        url = serve(self, FileHandler)
        bad = [Item(index=i, name=name, size=len(GOOD), digest=GOOD_ITEM.digest)
               for i, name in enumerate(["wrong", "short", "truncated", "error", "garbage"], 1)]
        summary, _ = run_phase(url, "get", bad + [GOOD_ITEM] * 5, concurrency=2, processes=1)
        self.assertEqual((summary["ok"], summary["errors"]), (5, 5))
        self.assertEqual(summary["error_kinds"], {
            "digest mismatch": 1, "wrong length": 1, "truncated body": 1, "GET: HTTP 500": 1,
            "BadStatusLine": 1})
        moved = summary["MiB_s"] * summary["wall_s"]
        self.assertLess(abs(moved - 5 * len(GOOD) / (1 << 20)), 0.01)
        # When the phase ran, on the wall clock (to line it up with others' samples).
        self.assertLess(abs(summary["ended_at"] - summary["started_at"] - summary["wall_s"]),
                        0.01)
        self.assertLess(abs(summary["started_at"] - time.time()), 60)


class WrkTests(TestCase):
    """wrk's answers are checked too: a wrong body is an error, not a request served."""

    def test_wrong_bodies_are_errors(self):
        require_tool("wrk")
        url = serve(self, FileHandler)
        right = wrk_phase(url, ["/v1/files/good"], 2, expect_body=GOOD.decode(), seconds=1)
        wrong = wrk_phase(url, ["/v1/files/wrong"], 2, expect_body=GOOD.decode(), seconds=1)
        self.assertEqual((right["errors"], wrong["ok"]), (0, 0))
        self.assertGreater(right["ok"], 0)
        self.assertEqual(wrong["error_kinds"]["wrong answer"], wrong["errors"])


class OneSlowAnswer(http.server.BaseHTTPRequestHandler):
    """Answers C{ok} at once, except the tenth request: half a second late."""

    protocol_version = "HTTP/1.1"
    answered = 0
    lock = threading.Lock()

    def log_message(self, *args):
        pass

    def do_GET(self):
        with self.lock:
            type(self).answered += 1
            slow = self.answered == 10
        if slow:
            time.sleep(0.5)
        self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")


class WrkLatencyTests(TestCase):
    """
    The percentiles of a wrk phase are those of the answers it got: wrk's
    own histogram adds made-up answers behind every slow one (its
    correction for coordinated omission), which turned one stall into a
    p99 of half a second.
    """

    def test_one_latency_per_correct_answer(self):
        require_tool("wrk")
        OneSlowAnswer.answered = 0
        url = serve(self, OneSlowAnswer)
        summary = wrk_phase(url, ["/"], 2, expect_body="ok", seconds=1)
        self.assertGreater(summary["ok"], 10)
        self.assertEqual(summary["timed"], summary["ok"])
        self.assertGreaterEqual(summary["max_ms"], 500)  # the slow one is counted, once

    def test_latencies_line(self):
        self.assertEqual(parse_latencies("x\nSPEEDY-LATENCIES 120:3,7:1,120:2\n"),
                         {120: 5, 7: 1})
        self.assertEqual(parse_latencies("SPEEDY-LATENCIES \n"), {})
        self.assertEqual(parse_latencies("wrk printed nothing of ours"), {})


class RegistryHandler(http.server.BaseHTTPRequestHandler):
    """
    Just enough of a registry's upload protocol to check the client: POST
    opens an upload, PATCH must append at the current offset, PUT checks the
    digest of all the bytes.  C{lie} makes it report a different digest.
    """

    protocol_version = "HTTP/1.1"
    uploads = {}
    lie = False
    #: the credentials every request must carry, or None for any
    required = None

    def log_message(self, *args):
        pass

    def _answer(self, status, headers=()):
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _body(self):
        return self.rfile.read(int(self.headers.get("Content-Length", 0)))

    def do_POST(self):
        if self.required is not None and self.headers.get("Authorization") != self.required:
            return self._answer(401)
        upload = str(len(self.uploads))
        self.uploads[upload] = b""
        self._answer(202, [("Location", f"/v2/r/blobs/uploads/{upload}?state=s")])

    def do_PATCH(self):
        upload = self.path.split("/")[-1].split("?")[0]
        start, end = map(int, self.headers["Content-Range"].split("-"))
        body = self._body()
        if start != len(self.uploads[upload]) or end != start + len(body) - 1:
            return self._answer(416)
        self.uploads[upload] += body
        self._answer(202, [("Location", f"/v2/r/blobs/uploads/{upload}?state=t")])

    def do_PUT(self):
        path, _, query = self.path.partition("?")
        upload = path.split("/")[-1]
        data = self.uploads.pop(upload) + self._body()
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        if f"digest={digest}" not in query:
            return self._answer(400)
        self._answer(201, [("Docker-Content-Digest", "sha256:" + "0" * 64 if self.lie else digest)])


class PushTests(TestCase):
    def setUp(self):
        RegistryHandler.uploads = {}
        RegistryHandler.lie = False
        RegistryHandler.required = None
        port = self.port = int(serve(self, RegistryHandler).rsplit(":", 1)[1])
        self.conn = Connection("127.0.0.1", port, timeout=10)
        self.addCleanup(self.conn.close)
        self.payload = os.urandom(10_000)
        self.item = Item(index=0, name="", size=len(self.payload), digest=sha256_digest(self.payload))

    def test_monolithic(self):
        pushed = Operations("r").push(self.conn, self.item, self.payload)
        self.assertEqual(pushed, len(self.payload))

    def test_chunked_patches_are_contiguous(self):
        operations = Operations("r", upload="chunked", patch_size=3000)
        self.assertEqual(operations.push(self.conn, self.item, self.payload), len(self.payload))

    def test_headers_go_with_every_request(self):
        RegistryHandler.required = "Basic dTpw"
        refused = self.assertRaises(RequestFailed, Operations("r").push, self.conn, self.item,
                                    self.payload)
        self.assertIn("401", str(refused))
        conn = Connection("127.0.0.1", self.port, timeout=10, headers={"Authorization": "Basic dTpw"})
        self.addCleanup(conn.close)
        self.assertEqual(Operations("r").push(conn, self.item, self.payload), len(self.payload))

    def test_registry_storing_other_bytes_is_an_error(self):
        RegistryHandler.lie = True
        e = self.assertRaises(RequestFailed, Operations("r").push, self.conn, self.item, self.payload)
        self.assertEqual(str(e), "digest mismatch")


class ProcessTreeTests(TestCase):
    def test_counts_grandchildren_memory(self):
        """Peak RSS sums over the whole tree, children of children included."""
        child = subprocess.Popen(
            ["sh", "-c", f"{sys.executable} -c 'import sys, time; b = bytearray(64 << 20); "
                         "sys.stdout.write(\"ready\\n\"); sys.stdout.flush(); time.sleep(30)'; true"],
            stdout=subprocess.PIPE, start_new_session=True)
        self.addCleanup(child.stdout.close)
        self.addCleanup(child.wait)
        self.addCleanup(os.killpg, child.pid, signal.SIGKILL)
        self.assertEqual(child.stdout.readline(), b"ready\n")
        tree = ProcessTree(child.pid)
        stop = tree.sample_every(0.05)
        time.sleep(0.2)
        stop()
        self.assertEqual(tree.process_count(), 2)
        self.assertGreater(tree.peak_rss(), 64 << 20)
        self.assertGreater(tree.peak_rss_sampled(), 64 << 20)
        self.assertLessEqual(tree.peak_rss_sampled(), tree.peak_rss())
        by_name = tree.peak_rss_by_name()
        self.assertEqual(len(by_name), 2)
        self.assertIn("sh -c", by_name)
        self.assertGreater(max(by_name.values()), 64 << 20)


class CongestionControlTests(TestCase):
    """A race can run under another TCP congestion control and always puts the old one back."""

    def setUp(self):
        self.root = tempfile.mkdtemp()
        self.addCleanup(subprocess.run, ["rm", "-rf", self.root])
        os.makedirs(os.path.join(self.root, "net", "ipv4"))
        self.set(_sysctl.CONGESTION, "bbr\n")
        self.set(_sysctl.AVAILABLE, "reno bbr cubic\n")

    def set(self, name, value):
        with open(os.path.join(self.root, name), "w") as f:
            f.write(value)

    def current(self):
        return _sysctl.read(_sysctl.CONGESTION, self.root)

    def test_sets_for_the_block_and_restores(self):
        with _sysctl.congestion_control("cubic", self.root) as algorithm:
            self.assertEqual((algorithm, self.current()), ("cubic", "cubic"))
        self.assertEqual(self.current(), "bbr")

    def test_restores_when_the_block_fails(self):
        with self.assertRaises(KeyError):
            with _sysctl.congestion_control("cubic", self.root):
                raise KeyError("the race broke")
        self.assertEqual(self.current(), "bbr")

    def test_none_leaves_the_kernel_default(self):
        with _sysctl.congestion_control(None, self.root) as algorithm:
            self.assertEqual(algorithm, "bbr")
        self.assertEqual(self.current(), "bbr")

    def test_refuses_an_algorithm_the_kernel_lacks(self):
        with self.assertRaises(ValueError) as caught:
            with _sysctl.congestion_control("vegas", self.root):
                self.fail("ran under an algorithm the kernel does not offer")
        self.assertIn("reno bbr cubic", str(caught.exception))
        self.assertEqual(self.current(), "bbr")

    def test_missing_setting_reads_none(self):
        self.assertIsNone(_sysctl.read("net/ipv4/no_such_setting", self.root))


class ReportTests(TestCase):
    def test_ratio_is_speedy_over_distribution_of_medians(self):
        rows = [{"target": side, "op": "push", "concurrency": 10, "MiB_s": v}
                for side, v in [("distribution", 100), ("distribution", 300), ("distribution", 200),
                                ("speedy", 300), ("speedy", 500)]]
        push = compare(rows, ["distribution", "speedy"], [10])[0]
        self.assertEqual((push["figure"], push["distribution"], push["speedy"], push["ratio"]),
                         ("push MiB/s", 200, 400, 2.0))

    def test_original_table_row(self):
        put = {"concurrency": 10, "requests": 100, "wall_s": 42.851, "MiB_s": 37.34, "errors": 0,
               "error_kinds": {}}
        get = {"wall_s": 15.23, "MiB_s": 105.06, "errors": 1, "error_kinds": {"digest mismatch": 1}}
        self.assertEqual(original_row(put, get, 16 << 20), {
            "concurrent": 10, "fileSize(M)": 16, "file count": 100, "upload time(seconds)": 42.85,
            "download time(seconds)": 15.23, "upload speed(M/s)": 37.34,
            "download speed(M/s)": 105.06, "errors": 1, "error_kinds": {"digest mismatch": 1}})


class TransferWatchTests(TestCase):
    """What testbed.py reads from the transfer watcher's samples."""

    def samples(self):
        def sample(t, copied, state):
            return {"t": t, "counters": {"bytes": copied},
                    "transfers": [{"transfer_id": "drain-1-x", "state": state}]}

        path = self.mktemp()
        with open(path, "w") as out:
            for t, copied, state in ((10.0, 0, "running"), (11.0, 16, "running"),
                                     (12.0, 48, "running"), (13.0, 64, "deleting")):
                out.write(json.dumps(sample(t, copied, state)) + "\n")
            out.write('{"t": 14.0, "coun')  # cut short by the watcher's end
        return read_samples(path)

    def test_copied_between_counts_the_samples_at_each_end(self):
        samples = self.samples()
        self.assertEqual(len(samples), 4)
        self.assertEqual(copied_between(samples, 10.5, 12.5), 48)
        self.assertEqual(copied_between(samples, 5.0, 11.0), 16)
        self.assertEqual(copied_between(samples, 12.0, 99.0), 16)

    def test_transfer_at(self):
        samples = self.samples()
        self.assertEqual(transfer_at(samples, "drain-1-x", 12.9)["state"], "running")
        self.assertEqual(transfer_at(samples, "drain-1-x", 13.0)["state"], "deleting")
        self.assertIsNone(transfer_at(samples, "drain-1-x", 9.0))
        self.assertIsNone(transfer_at(samples, "other", 13.0))


class TestbedLoopbackTests(TestCase):
    def test_every_host_on_its_own_loopback_address(self):
        saved = (dict(testbed.HOSTS), dict(testbed.ALL_HOSTS), testbed._namespaces)
        self.addCleanup(self.restore, saved)
        use_loopback()
        self.assertEqual(testbed.HOSTS["node1"], "127.0.100.11")
        self.assertEqual(testbed.ALL_HOSTS["client2"], "127.0.100.20")
        self.assertEqual(len(set(testbed.ALL_HOSTS.values())), len(testbed.ALL_HOSTS))
        self.assertIsNone(testbed.netns("node1"))

    def restore(self, saved):
        hosts, all_hosts, testbed._namespaces = saved
        testbed.HOSTS.update(hosts)
        testbed.ALL_HOSTS.update(all_hosts)


class DistributionTests(TestCase):
    """The registry workload against a real registry: every phase clean, pulls verified."""

    def test_registry_suite_against_docker_registry(self):
        require_tool("docker-registry")
        workdir = tempfile.mkdtemp()
        self.addCleanup(subprocess.run, ["rm", "-rf", workdir])
        server = distribution(workdir, free_port()).start()
        self.addCleanup(server.stop)
        rows = registry_suite(server.url, label="distribution", count=4, size=100_000,
                              concurrency=2, ops=("pull", "head", "manifest"), requests=20,
                              upload="chunked", patch_size=30_000, processes=1, server=server.tree)
        self.assertEqual([(r["op"], r["ok"], r["errors"]) for r in rows],
                         [("push", 4, 0), ("pull", 4, 0), ("head", 20, 0), ("manifest", 20, 0)])
        self.assertGreater(rows[0]["server_cpu_s"], 0)


class HealthAnswers(http.server.BaseHTTPRequestHandler):
    """Answers GET with the JSON of C{answers[path]}."""

    answers = {}

    def log_message(self, *args):
        pass

    def do_GET(self):
        body = json.dumps(self.answers[self.path]).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class HttpHealthyTests(TestCase):
    def test_readyz_and_v1_health(self):
        """The harnesses' readiness probe reads a /readyz answer (ready, and
        the cluster view's writable groups) and a /v1/health answer (ok)."""
        view = {"ok": True, "detail": "", "writable_groups": 0}
        HealthAnswers.answers = {
            "/readyz": {"ready": True, "checks": {"cluster_view": view}},
            "/down": {"ready": False, "checks": {}},
            "/v1/health": {"ok": True, "writable_groups": 1},
        }
        url = serve(self, HealthAnswers)
        self.assertTrue(http_healthy(url + "/readyz"))
        self.assertFalse(http_healthy(url + "/readyz", writable_group=True))
        view["writable_groups"] = 1
        self.assertTrue(http_healthy(url + "/readyz", writable_group=True))
        self.assertFalse(http_healthy(url + "/down"))
        self.assertTrue(http_healthy(url + "/v1/health", writable_group=True))
