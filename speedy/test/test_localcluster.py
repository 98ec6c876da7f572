"""
Tests for L{speedy.localcluster.cli}: the C{speedy-cluster} command line,
and one real C{up}/C{status}/C{down} run of C{tools/speedy-cluster} with
the real daemons.  The parts have their own tests: C{test_localcluster_plan},
C{_health}, C{_supervisor} and C{_recorded}.
"""

import hashlib
import http.client
import io
import os
import signal
import subprocess
import sys
import time

from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from speedy import localcluster
from speedy.config import version
from speedy.localcluster import Options
from speedy.test.processes import free_port
from speedy.test.test_localcluster_supervisor import ROLES

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir, os.pardir))
TOOL = os.path.join(ROOT, "tools", "speedy-cluster")
ETC = os.path.join(ROOT, "etc")


class CommandLineTests(SynchronousTestCase):
    """What C{speedy-cluster} accepts."""

    def test_command_line_options(self):
        options = Options()
        options.parseOptions(["up", "--var", "x", "--chunk-size", "4MiB", "--imageservers", "2"])
        self.assertEqual((options.subCommand, options.subOptions["var"]), ("up", "x"))
        self.assertEqual(options.subOptions["chunk-size"], 4 << 20)
        self.assertEqual(options.subOptions["registry"], "127.0.0.1:5000")
        self.assertEqual(options.subOptions["imageserver-workers"], localcluster.DEFAULT_IMAGESERVER_WORKERS)
        options = Options()
        options.parseOptions(["up", "--imageserver-workers", "3"])
        self.assertEqual(options.subOptions["imageserver-workers"], 3)
        options = Options()
        options.parseOptions(["status"])
        self.assertEqual(options.subOptions["var"], "var")

    def test_database(self):
        """C{--db} takes a MySQL/MariaDB or SQLite URL (default: none, so
        SQLite under the var directory), and refuses anything else."""
        options = Options()
        options.parseOptions(["up"])
        self.assertIsNone(options.subOptions["db"])
        for url in ("mysql://root@127.0.0.1:3306/speedy", "sqlite:/tmp/m.sqlite"):
            options = Options()
            options.parseOptions(["up", "--db", url])
            self.assertEqual(options.subOptions["db"], url)
        e = self.assertRaises(usage.UsageError, Options().parseOptions,
                              ["up", "--db", "postgres://db/speedy"])
        self.assertIn("--db must be sqlite:PATH or mysql://", str(e))

    def test_a_command_is_needed(self):
        e = self.assertRaises(usage.UsageError, Options().parseOptions, [])
        self.assertEqual(str(e), "say up, down, status or etc")

    def test_version(self):
        """C{--version} prints Speedy's version, as the daemons do."""
        out = io.StringIO()
        self.patch(sys, "stdout", out)
        e = self.assertRaises(SystemExit, Options().parseOptions, ["--version"])
        self.assertEqual((e.code, out.getvalue()), (0, f"speedy {version()}\n"))

    def test_etc_in_a_checkout(self):
        """
        Run from a source tree, C{speedy-cluster etc} prints its C{etc/},
        where the sample configuration files and systemd units are
        (C{test_install} checks an installed Speedy).
        """
        out = io.StringIO()
        self.patch(sys, "stdout", out)
        e = self.assertRaises(SystemExit, localcluster.main, ["etc"])
        self.assertEqual((e.code, out.getvalue()), (0, ETC + "\n"))
        self.assertTrue(os.path.isfile(os.path.join(ETC, "chunkserver.ini")))
        self.assertTrue(os.path.isfile(os.path.join(ETC, "systemd", "speedy-chunkmaster.service")))


# --- one real run --------------------------------------------------------------------


WORKER_ROLES = ROLES[:-1] + ["imageserver-1.1", "imageserver-1.2"]


def registry_request(address, method, path, body=b"", headers=()):
    """@return: (status, headers, body) of one request on a connection of
    its own (so the kernel picks a worker for each)."""
    host, port = address.rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        connection.request(method, path, body, dict(headers))
        response = connection.getresponse()
        return response.status, response.headers, response.read()
    finally:
        connection.close()


class RealClusterTests(SynchronousTestCase):
    """C{tools/speedy-cluster up}, C{status} and C{down} with the real
    daemons, on free ports, two imageserver workers sharing the registry
    port."""

    def run_tool(self, *args):
        return subprocess.run([sys.executable, TOOL, *args], capture_output=True, timeout=120,
                              stdin=subprocess.DEVNULL)

    def stop_anyway(self, up, var):
        """After a failure: stop whatever the cluster left running."""
        if up.poll() is None:
            up.send_signal(signal.SIGTERM)
            up.wait(60)
        self.run_tool("down", "--var", var)
        up.stdout.close()

    def test_up_status_down(self):
        var = os.path.abspath(self.mktemp())
        registry = f"127.0.0.1:{free_port()}"
        up = subprocess.Popen(
            [sys.executable, TOOL, "up", "--var", var, "--registry", registry, "--master-port", "0",
             "--chunkserver-port", "0", "--volume-size", "64MiB", "--cache-size", "16MiB",
             "--heartbeat-interval", "0.5",
             "--imageserver-workers", "2"],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.addCleanup(self.stop_anyway, up, var)
        deadline = time.monotonic() + 90
        while True:
            state = localcluster.read_state(var)
            if state is not None and state["ready"]:
                break
            if up.poll() is not None or time.monotonic() > deadline:
                up.kill()
                self.fail("up did not get the cluster ready:\n" + up.communicate()[0].decode("utf-8", "replace"))
            time.sleep(0.1)
        self.assertEqual(state["registries"], [registry])

        status = self.run_tool("status", "--var", var)
        self.assertEqual(status.returncode, 0, status.stdout + status.stderr)
        report = status.stdout.decode()
        for name in WORKER_ROLES:
            self.assertRegex(report, f"{name} .* healthy")
        workers = state["roles"][-2:]
        self.assertEqual({w["address"] for w in workers}, {registry})
        for worker in workers:
            self.assertIn(int(registry.rsplit(":", 1)[1]), localcluster.listening_ports(worker["pid"]))

        self.upload_across_workers(registry, [w["log"] for w in workers])

        down = self.run_tool("down", "--var", var)
        self.assertEqual(down.returncode, 0, down.stdout + down.stderr)
        self.assertEqual(up.wait(30), 0)
        output = up.stdout.read().decode()
        self.assertIn(f"registry at http://{registry}/v2/", output)
        stopped = [line.split()[0] for line in output.splitlines() if line.endswith(" stopped (SIGTERM)")]
        self.assertEqual(stopped, list(reversed(WORKER_ROLES)))
        for role in state["roles"]:
            self.assertFalse(localcluster.process_matches(role["pid"], role["plugin"]), role["name"])
        self.assertIsNone(localcluster.read_state(var))

    def upload_across_workers(self, registry, logs):
        """
        A chunked upload whose requests each open a connection of their own
        lands on both workers (24 pieces all on one of two would happen once
        in 2**23 runs) and still comes back whole.
        """
        pieces = [os.urandom(10_000 + i) for i in range(24)]
        data = b"".join(pieces)
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        status, headers, body = registry_request(registry, "POST", "/v2/e2e/workers/blobs/uploads/")
        self.assertEqual(status, 202, body)
        location = headers["Location"]
        for piece in pieces:
            status, headers, body = registry_request(
                registry, "PATCH", location, piece, {"Content-Type": "application/octet-stream"})
            self.assertEqual(status, 202, body)
            location = headers["Location"]
        separator = "&" if "?" in location else "?"
        status, _, body = registry_request(registry, "PUT", f"{location}{separator}digest={digest}")
        self.assertEqual(status, 201, body)
        patches_seen = []
        for log in logs:
            with open(log, errors="replace") as f:
                patches_seen.append(f.read().count('"PATCH /v2/e2e/workers/blobs/uploads/'))
        self.assertEqual(sum(patches_seen), len(pieces))
        self.assertNotIn(0, patches_seen)
        status, _, body = registry_request(registry, "GET", f"/v2/e2e/workers/blobs/{digest}")
        self.assertEqual((status, body), (200, data))
