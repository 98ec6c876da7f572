"""
Monitoring end to end, with real daemons on loopback: a chunkmaster, three
chunkservers (each with a C{--metrics} side listener) and an imageserver.
Every daemon answers C{/healthz}, C{/readyz} and C{/metrics}; the metrics
are read with the Prometheus library's own parser, and they move as a user
stores and reads a file and as a replica dies; C{speedy-admin health}
finds every member ready, then names the dead one.
"""

import json
import os
import subprocess
import sys
import time
from urllib.error import HTTPError
from urllib.request import Request, urlopen

from prometheus_client.parser import text_string_to_metric_families
from twisted.trial.unittest import SynchronousTestCase

from speedy.test.processes import Daemon, free_port

PATIENCE = 60.0
KiB = 1 << 10
ADMIN_TOKEN = "e2e-admin-token-of-the-monitoring-test"


def http(method, url, body=None, timeout=30):
    """@return: (status, body bytes)."""
    request = Request(url, method=method, data=body)
    try:
        with urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except HTTPError as e:
        return e.code, e.read()


def scrape(url):
    """
    @return: C{{(sample name, ((label, value), ...)): value}} of the
        Prometheus exposition at C{url}, as the library's parser reads it.
    """
    status, body = http("GET", url)
    assert status == 200, (status, body[:300])
    samples = {}
    for family in text_string_to_metric_families(body.decode("utf-8")):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def total(samples, name, **labels):
    """@return: the sum of the samples named C{name} whose labels include C{labels}."""
    wanted = set(labels.items())
    return sum(value for (sample, have), value in samples.items()
               if sample == name and wanted <= set(have))


class MonitoringEndToEndTests(SynchronousTestCase):

    def setUp(self):
        self.workdir = os.path.abspath(self.mktemp())
        os.makedirs(self.workdir)
        self.master_port = free_port()
        self.master_url = f"http://127.0.0.1:{self.master_port}"
        db = "sqlite:" + os.path.join(self.workdir, "meta.db")
        token_file = os.path.join(self.workdir, "admin-token")
        with open(os.open(token_file, os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
            f.write(ADMIN_TOKEN + "\n")
        self.master = self.start(Daemon(
            "speedy-chunkmaster",
            ["--listen", f"tcp:{self.master_port}:interface=127.0.0.1", "--db", db,
             "--admin-token-file", token_file],
            port=self.master_port, workdir=self.workdir, name="chunkmaster"))
        self.chunkservers = [self.chunkserver(n) for n in (1, 2, 3)]
        port, self.image_metrics_port = free_port(), free_port()
        self.registry = f"http://127.0.0.1:{port}"
        self.imageserver = self.start(Daemon(
            "speedy-imageserver",
            ["--listen", f"tcp:{port}:interface=127.0.0.1", "--master", self.master_url,
             "--db", db, "--chunk-size", "256KiB",
             "--metrics", f"tcp:{self.image_metrics_port}:interface=127.0.0.1"],
            port=port, workdir=self.workdir, name="imageserver"))
        self.wait_for("the imageserver ready", lambda: http(
            "GET", self.registry + "/readyz")[0] == 200)

    def start(self, daemon):
        self.addCleanup(daemon.stop)
        return daemon.start()

    def chunkserver(self, n):
        port, metrics = free_port(), free_port()
        daemon = Daemon(
            "speedy-chunkserver",
            ["--data-dir", os.path.join(self.workdir, f"cs{n}"),
             "--listen", f"tcp:{port}:interface=127.0.0.1", "--group-id", "1",
             "--server-id", f"cs{n}", "--master", self.master_url,
             "--heartbeat-interval", "0.5", "--volume-size", "16MiB", "--cache-size", "0",
             "--reserve", "0", "--metrics", f"tcp:{metrics}:interface=127.0.0.1"],
            port=port, workdir=self.workdir, name=f"cs{n}")
        daemon.metrics_url = f"http://127.0.0.1:{metrics}"
        daemon.address = f"127.0.0.1:{port}"
        self.start(daemon)
        self.wait_for(f"cs{n}'s metrics listener", lambda: _answers(daemon.metrics_url))
        return daemon

    def admin_health(self):
        """@return: C{(exit code, report)} of C{speedy-admin --json health}."""
        done = subprocess.run(
            [sys.executable, "-m", "speedy.admin", "--master", self.master_url, "--json",
             "health"], capture_output=True, text=True, timeout=60,
            env=dict(os.environ, SPEEDY_ADMIN_TOKEN=ADMIN_TOKEN))
        self.assertIn(done.returncode, (0, 1), done.stderr)
        return done.returncode, json.loads(done.stdout)

    def wait_for(self, what, predicate, patience=PATIENCE):
        deadline = time.monotonic() + patience
        while not predicate():
            if time.monotonic() > deadline:
                self.fail(f"waited {patience:.0f}s in vain for {what}")
            time.sleep(0.2)

    def test_health_endpoints_of_every_daemon(self):
        """/healthz and /readyz answer on every role: the registry's port and
        its --metrics listener, the chunkmaster's API, each chunkserver's
        side listener."""
        for base in [self.master_url, self.registry,
                     f"http://127.0.0.1:{self.image_metrics_port}"] + [
                         cs.metrics_url for cs in self.chunkservers]:
            status, body = http("GET", base + "/healthz")
            self.assertEqual((status, body), (200, b'{"alive":true}'), base)
            status, body = http("GET", base + "/readyz")
            self.assertEqual(status, 200, (base, body))
            self.assertIn(b'"ready":true', body, base)

    def test_metrics_move_with_a_push_and_a_read_failover(self):
        """
        Storing a file counts its request, its bytes and its chunks on the
        imageserver and the writes on each chunkserver; heartbeats count on
        the chunkmaster, which sees three RW servers.  Reading it back with
        one replica killed counts failovers.
        """
        image = f"http://127.0.0.1:{self.image_metrics_port}/metrics"
        data = os.urandom(16 * 256 * KiB)
        status, body = http("PUT", self.registry + "/v1/files/monitored", data)
        self.assertIn(status, (200, 201), body)

        after = scrape(image)
        self.assertEqual(total(after, "speedy_imageserver_http_requests_total",
                               route="v1_files", method="PUT", status=str(status)), 1)
        self.assertGreaterEqual(total(after, "speedy_imageserver_http_received_bytes_total",
                                      route="v1_files"), len(data))
        self.assertEqual(total(after, "speedy_imageserver_chunks_written_total"), 16)
        self.assertEqual(total(after, "speedy_imageserver_http_request_duration_seconds_count",
                               route="v1_files", method="PUT"), 1)
        for cs in self.chunkservers:
            samples = scrape(cs.metrics_url + "/metrics")
            self.assertEqual(total(samples, "speedy_chunkserver_chunk_writes_total"), 16)
            self.assertEqual(total(samples, "speedy_chunkserver_store_open"), 1)
            self.assertGreaterEqual(total(samples, "speedy_chunkserver_written_bytes_total"),
                                    len(data))
        status, _ = http("POST", self.registry + "/v2/monitored/app/blobs/uploads/", b"")
        self.assertEqual(status, 202)
        master = scrape(self.master_url + "/metrics")
        self.assertEqual(total(master, "speedy_chunkmaster_upload_sessions"), 1)
        self.assertEqual(total(master, "speedy_chunkmaster_servers", state="RW"), 3)
        self.assertEqual(total(master, "speedy_chunkmaster_groups_writable"), 1)
        self.assertGreater(total(master, "speedy_chunkmaster_heartbeats_total"), 0)
        # The collector's and the transfers' progress are there from the start.
        for name in ("speedy_chunkmaster_gc_runs_total", "speedy_chunkmaster_gc_running",
                     "speedy_chunkmaster_transfer_moved_bytes_total",
                     "speedy_chunkmaster_transfer_rate_bytes_per_second",
                     "speedy_chunkmaster_transfer_left_chunks"):
            self.assertIn((name, ()), master)
        self.assertEqual(total(master, "speedy_chunkmaster_transfers", state="running"), 0)

        code, report = self.admin_health()
        self.assertEqual((code, report["ready"]), (0, True), report)
        self.assertEqual(sorted(m["role"] for m in report["members"]),
                         ["chunkmaster"] + ["chunkserver"] * 3 + ["imageserver"])

        self.chunkservers[0].kill()
        code, report = self.admin_health()
        self.assertEqual(code, 1)
        self.assertEqual([(m["name"], m["alive"]) for m in report["members"] if not m["ready"]],
                         [("cs1", False)])
        status, body = http("GET", self.registry + "/v1/files/monitored")
        self.assertEqual((status, body == data), (200, True))
        later = scrape(image)
        self.assertGreater(total(later, "speedy_imageserver_read_failovers_total"), 0)
        # Per chunkserver: every chunk's write was timed on some member,
        # and the read errors are counted on the killed one alone.
        writes = sum(total(after, "speedy_imageserver_chunk_request_duration_seconds_count",
                           server=cs.address, operation=operation)
                     for cs in self.chunkservers for operation in ("put", "chain_put"))
        self.assertGreaterEqual(writes, 16)
        killed, alive = self.chunkservers[0].address, self.chunkservers[1].address
        self.assertGreater(total(later, "speedy_imageserver_chunk_request_errors_total",
                                 server=killed, operation="get"), 0)
        self.assertEqual(total(later, "speedy_imageserver_chunk_request_errors_total",
                               server=alive), 0)
        sent = total(later, "speedy_imageserver_http_sent_bytes_total", route="v1_files")
        self.assertGreaterEqual(sent, len(data))  # and the PUT's small answer
        self.assertLess(sent, len(data) + 4 * KiB)
        # The imageserver reports its failovers with its next poll of the
        # cluster view (the view changes as the killed server goes DOWN):
        # the dashboard shows them.
        self.wait_for("the failovers on the dashboard", lambda: json.loads(http(
            "GET", self.master_url + "/dashboard/data")[1])["counters"][
                "imageserver_read_failovers"] > 0)


def _answers(url):
    try:
        return http("GET", url + "/healthz", timeout=2)[0] == 200
    except OSError:
        return False
