"""
End-to-end self-healing with real daemons on loopback: a chunkmaster,
chunkservers and an imageserver as processes, and C{speedy-admin} run as an
operator runs it.

  - Bytes flipped in one replica's volume file are found by that
    chunkserver's scrubber, the chunk is repaired from another replica, and
    its record on disk verifies again.
  - A chunkserver killed for good is replaced by a new one: the newcomer is
    filled with every chunk of its group, verified, and the group takes
    writes again.
"""

import json
import os
import subprocess
import sys
import time
from urllib.error import HTTPError
from urllib.request import Request, urlopen

from twisted.trial.unittest import SynchronousTestCase

from speedy.test.processes import Daemon, free_port
from speedy.test.util import TEST_ADMIN_TOKEN

ADMIN = TEST_ADMIN_TOKEN
PATIENCE = 60.0
MiB = 1 << 20


def http(method, url, body=None, timeout=30):
    """@return: (status, body bytes)."""
    request = Request(url, method=method, data=body)
    try:
        with urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except HTTPError as e:
        return e.code, e.read()


class SelfHealingEndToEndTests(SynchronousTestCase):

    def setUp(self):
        self.workdir = os.path.abspath(self.mktemp())
        os.makedirs(self.workdir)
        self.master_port = free_port()
        self.master_url = f"http://127.0.0.1:{self.master_port}"
        self.master = self.start(Daemon(
            "speedy-chunkmaster",
            ["--listen", f"tcp:{self.master_port}:interface=127.0.0.1",
             "--db", "sqlite:" + os.path.join(self.workdir, "meta.db"),
             "--heartbeat-timeout", "2", "--repair-interval", "0.5", "--repair-rate", "0"],
            port=self.master_port, workdir=self.workdir, name="chunkmaster",
            env={"SPEEDY_ADMIN_TOKEN": ADMIN}))
        self.chunkservers = {n: self.chunkserver(n) for n in (1, 2, 3)}
        self.wait_for("a writable group", lambda: self.status()["writable_groups"] == 1)
        port = free_port()
        self.registry = f"http://127.0.0.1:{port}"
        self.start(Daemon(
            "speedy-imageserver",
            ["--listen", f"tcp:{port}:interface=127.0.0.1", "--master", self.master_url,
             "--db", "sqlite:" + os.path.join(self.workdir, "meta.db"), "--chunk-size", "1MiB"],
            port=port, workdir=self.workdir, name="imageserver"))
        # Its first cluster view may come a moment after it listens.
        self.wait_for("the imageserver's cluster view",
                      lambda: http("GET", f"{self.registry}/readyz")[0] == 200)

    def start(self, daemon):
        self.addCleanup(daemon.stop)
        return daemon.start()

    def chunkserver(self, n, scrub_period="2s"):
        port = free_port()
        data_dir = os.path.join(self.workdir, f"cs{n}")
        daemon = Daemon(
            "speedy-chunkserver",
            ["--data-dir", data_dir, "--listen", f"tcp:{port}:interface=127.0.0.1",
             "--group-id", "1", "--server-id", f"cs{n}", "--master", self.master_url,
             "--heartbeat-interval", "0.5",
             "--volume-size", "16MiB", "--cache-size", "4MiB", "--reserve", "0",
             "--scrub-rate", "64MiB", "--scrub-period", scrub_period],
            port=port, workdir=self.workdir, name=f"cs{n}")
        daemon.address = f"127.0.0.1:{port}"
        daemon.data_dir = data_dir
        return self.start(daemon)

    def admin(self, *argv):
        """@return: the finished C{speedy-admin} process."""
        return subprocess.run(
            [sys.executable, "-m", "speedy.admin", "--master", self.master_url, *argv],
            capture_output=True, text=True, timeout=120,
            env=dict(os.environ, SPEEDY_ADMIN_TOKEN=ADMIN))

    def status(self):
        done = self.admin("--json", "status")
        self.assertEqual(done.returncode, 0, done.stderr)
        return json.loads(done.stdout)

    def wait_for(self, what, predicate, patience=PATIENCE):
        deadline = time.monotonic() + patience
        while not predicate():
            if time.monotonic() > deadline:
                self.fail(f"waited {patience:.0f}s in vain for {what}:\n"
                          + self.master.log()[-3000:])
            time.sleep(0.3)

    def put_file(self, name, data):
        status, body = http("PUT", f"{self.registry}/v1/files/{name}", data)
        self.assertIn(status, (200, 201), body)

    def get_file(self, name):
        status, body = http("GET", f"{self.registry}/v1/files/{name}")
        self.assertEqual(status, 200, body[:300])
        return body

    def fsck(self, *flags):
        done = self.admin("--json", "fsck", *flags)
        self.assertIn(done.returncode, (0, 1), done.stderr)
        return json.loads(done.stdout)["report"]

    def test_rot_is_scrubbed_and_repaired(self):
        """Three bytes flipped in a chunk on one replica's disk: its
        scrubber finds them, the chunkmaster has the chunk copied back from
        another replica, and a read-back of every copy (fsck --verify) is
        clean again."""
        data = os.urandom(3 * MiB + 12345)
        self.put_file("rotting", data)
        volume = os.path.join(self.chunkservers[1].data_dir, "volume-00000001.dat")
        with open(volume, "r+b") as f:
            content = f.read()
            at = content.find(data[MiB + 1000:MiB + 1064])
            self.assertGreater(at, 0, "the chunk's bytes are not in the volume file")
            f.seek(at)
            f.write(bytes(b ^ 0xFF for b in data[MiB + 1000:MiB + 1003]))
        self.wait_for("the scrubber to find the damage",
                      lambda: "dropping it for repair" in self.chunkservers[1].log())
        self.wait_for("the repair", lambda: "repaired chunk" in self.master.log())
        report = self.fsck("--verify")
        self.assertTrue(report["clean"], report)
        self.assertEqual(self.get_file("rotting"), data)
        repairs = json.loads(self.admin("--json", "repair").stdout)
        self.assertEqual(repairs["queued"], 0)
        self.assertGreaterEqual(repairs["counters"]["repaired"], 1)

    def test_lost_server_replaced_and_rebuilt(self):
        """A chunkserver killed for good: the group takes no writes; a new
        chunkserver replaces it, is filled with every chunk of the group,
        and the group is whole and writable again."""
        files = {f"f{n}": os.urandom(MiB // 2 + n * 300_000) for n in range(6)}
        for name, data in files.items():
            self.put_file(name, data)
        self.chunkservers[2].kill()
        self.wait_for("the group to stop taking writes",
                      lambda: self.status()["writable_groups"] == 0)
        newcomer = self.chunkserver(4, scrub_period="7d")
        done = self.admin("replace-server", "cs2", "cs4", newcomer.address, "--wait")
        self.assertEqual(done.returncode, 0, done.stderr + done.stdout)
        self.assertIn("cs4 replaces cs2 in group 1", done.stdout)
        self.wait_for("the group to be writable again",
                      lambda: self.status()["writable_groups"] == 1)
        status = self.status()
        self.assertEqual(sorted(s["server_id"] for s in status["servers"]), ["cs1", "cs3", "cs4"])
        report = self.fsck("--verify")
        self.assertTrue(report["clean"], report)
        for name, data in files.items():
            self.assertEqual(self.get_file(name), data)
        self.put_file("after", b"written to the whole group again")
        self.assertEqual(self.get_file("after"), b"written to the whole group again")
