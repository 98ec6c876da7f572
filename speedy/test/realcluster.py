"""
A real cluster for end-to-end tests: a chunkmaster, chunkservers and an
imageserver, each its own process on loopback (L{Daemon}), sharing one
SQLite database, driven over HTTP and with C{speedy-admin}.
"""

import json
import os
import subprocess
import sys
import time
from urllib.error import HTTPError
from urllib.request import Request, urlopen

from speedy.test.processes import Daemon, free_port
from speedy.test.util import TEST_ADMIN_TOKEN

MiB = 1 << 20

#: How long a test waits for the cluster to reach a state it expects.
PATIENCE = 60.0


def http(method, url, body=None, headers=None, timeout=30):
    """@return: (status, headers, body bytes) of one request; an error
    status is an answer too."""
    request = Request(url, method=method, data=body, headers=headers or {})
    try:
        with urlopen(request, timeout=timeout) as response:
            return response.status, response.headers, response.read()
    except HTTPError as e:
        return e.code, e.headers, e.read()


class RealCluster:
    """
    Mixed in before a L{SynchronousTestCase}: L{start_cluster} starts the
    chunkmaster, chunkservers C{cs1}.. of group 1 and an imageserver, and
    every process stops when the test ends.  Subclasses add to each role's
    arguments with L{master_args}, L{chunkserver_args} and
    L{imageserver_args}.
    """

    master_args = ()
    chunkserver_args = ()
    imageserver_args = ()

    def start_cluster(self, chunkservers=3):
        self.workdir = os.path.abspath(self.mktemp())
        os.makedirs(self.workdir)
        self.db = os.path.join(self.workdir, "meta.db")
        self.master_port = free_port()
        self.master_url = f"http://127.0.0.1:{self.master_port}"
        self.master = self.start(Daemon(
            "speedy-chunkmaster",
            ["--listen", f"tcp:{self.master_port}:interface=127.0.0.1",
             "--db", "sqlite:" + self.db, "--heartbeat-timeout", "2", *self.master_args],
            port=self.master_port, workdir=self.workdir, name="chunkmaster",
            env={"SPEEDY_ADMIN_TOKEN": TEST_ADMIN_TOKEN}))
        self.chunkservers = {n: self.start(self.chunkserver(n))
                             for n in range(1, chunkservers + 1)}
        self.wait_for("a writable group", lambda: self.status()["writable_groups"] == 1)
        self.registry_port = free_port()
        self.registry = f"http://127.0.0.1:{self.registry_port}"
        self.imageserver = self.start(Daemon(
            "speedy-imageserver",
            ["--listen", f"tcp:{self.registry_port}:interface=127.0.0.1",
             "--master", self.master_url, "--db", "sqlite:" + self.db,
             "--chunk-size", "1MiB", *self.imageserver_args],
            port=self.registry_port, workdir=self.workdir, name="imageserver"))
        # Its first cluster view may come a moment after it listens.
        self.wait_for("the imageserver's cluster view",
                      lambda: http("GET", f"{self.registry}/readyz")[0] == 200)

    def start(self, daemon):
        """Start C{daemon}, to be stopped when the test ends; @return: it."""
        self.addCleanup(daemon.stop)
        return daemon.start()

    def chunkserver(self, n, group=1, *args):
        """
        @return: chunkserver C{csN} of C{group}, not yet started, with the
            class's L{chunkserver_args} and then C{args}; its C{address}
            and C{data_dir} are set.
        """
        port = free_port()
        data_dir = os.path.join(self.workdir, f"cs{n}")
        daemon = Daemon(
            "speedy-chunkserver",
            ["--data-dir", data_dir, "--listen", f"tcp:{port}:interface=127.0.0.1",
             "--group-id", str(group), "--server-id", f"cs{n}", "--master", self.master_url,
             "--heartbeat-interval", "0.5", "--cache-size", "4MiB", "--reserve", "0",
             *self.chunkserver_args, *args],
            port=port, workdir=self.workdir, name=f"cs{n}")
        daemon.address = f"127.0.0.1:{port}"
        daemon.data_dir = data_dir
        return daemon

    def admin(self, *argv):
        """@return: the finished C{speedy-admin} process."""
        return subprocess.run(
            [sys.executable, "-m", "speedy.admin", "--master", self.master_url, *argv],
            capture_output=True, text=True, timeout=120,
            env=dict(os.environ, SPEEDY_ADMIN_TOKEN=TEST_ADMIN_TOKEN))

    def admin_json(self, *argv, codes=(0,)):
        """@return: what C{speedy-admin --json ARGV} printed, once it exited
        with one of C{codes}."""
        done = self.admin("--json", *argv)
        self.assertIn(done.returncode, codes, done.stderr)
        return json.loads(done.stdout)

    def status(self):
        return self.admin_json("status")

    def put_file(self, name, data):
        """Store C{data} as file C{name} through the imageserver's file API."""
        status, _, body = http("PUT", f"{self.registry}/v1/files/{name}", data)
        self.assertIn(status, (200, 201), body)

    def get_file(self, name):
        """@return: file C{name}'s bytes, read through the file API."""
        status, _, body = http("GET", f"{self.registry}/v1/files/{name}")
        self.assertEqual(status, 200, body[:300])
        return body

    def fsck(self, *flags):
        """@return: the report of C{speedy-admin fsck FLAGS} (clean or not)."""
        return self.admin_json("fsck", *flags, codes=(0, 1))["report"]

    def wait_for(self, what, predicate, patience=PATIENCE):
        """Poll C{predicate} until it holds; fail, with the chunkmaster's log,
        after C{patience} seconds."""
        deadline = time.monotonic() + patience
        while not predicate():
            if time.monotonic() > deadline:
                self.fail(f"waited {patience:.0f}s in vain for {what}:\n"
                          + self.master.log()[-3000:])
            time.sleep(0.3)
