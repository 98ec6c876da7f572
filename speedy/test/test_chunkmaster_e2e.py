"""
End-to-end: a real chunkmaster and three real chunkservers as processes on
loopback.  The group turns writable once all three heartbeat, unwritable
within the heartbeat timeout of one being killed; a chunkmaster killed and
restarted over the same database (SQLite, and MariaDB when there is one)
comes back with the same membership and keeps file-id ranges increasing.
"""

import json
import os
import socket
import time
import uuid
from urllib.error import HTTPError
from urllib.request import Request, urlopen

from twisted.trial.unittest import SynchronousTestCase

from speedy.records import DOWN, RW
from speedy.test.processes import Daemon, free_port
from speedy.test.util import TEST_ADMIN_TOKEN, TEST_SECRET
from speedy.test.util import MYSQL_URL, require_mysql

SECRET, ADMIN = TEST_SECRET, TEST_ADMIN_TOKEN
HEARTBEAT_TIMEOUT = 2
#: How long a test waits for the cluster to reach a state before failing.
PATIENCE = 30.0


class ChunkmasterEndToEnd:
    """The scenario, run against the database C{self.db_url()} names."""

    def setUp(self):
        self.workdir = os.path.abspath(self.mktemp())
        os.makedirs(self.workdir)
        self.master_port = free_port()
        self.master = self.chunkmaster()
        self.chunkservers = [self.chunkserver(n) for n in (1, 2, 3)]

    def chunkmaster(self):
        daemon = Daemon(
            "speedy-chunkmaster",
            ["--listen", f"tcp:{self.master_port}:interface=127.0.0.1", "--db", self.db_url(),
             "--heartbeat-timeout", str(HEARTBEAT_TIMEOUT)],
            port=self.master_port, workdir=self.workdir, name="chunkmaster",
            env={"SPEEDY_ADMIN_TOKEN": ADMIN})
        self.addCleanup(daemon.stop)
        return daemon

    def chunkserver(self, n):
        port = free_port()
        data_dir = os.path.join(self.workdir, f"cs{n}")
        os.makedirs(data_dir)
        daemon = Daemon(
            "speedy-chunkserver",
            ["--data-dir", data_dir, "--listen", f"tcp:{port}:interface=127.0.0.1",
             "--group-id", "1", "--master", f"http://127.0.0.1:{self.master_port}",
             "--heartbeat-interval", "0.5", "--volume-size", "16MiB",
             "--cache-size", "8MiB"],
            port=port, workdir=self.workdir, name=f"cs{n}")
        daemon.address = f"127.0.0.1:{port}"
        self.addCleanup(daemon.stop)
        return daemon

    # --- talking to the chunkmaster --------------------------------------------

    def call(self, method, path, body=None, token=SECRET, headers=(), timeout=10):
        """@return: (status, headers, decoded JSON or None)."""
        request = Request(
            f"http://127.0.0.1:{self.master_port}{path}", method=method,
            data=None if body is None else body if isinstance(body, bytes) else json.dumps(body).encode())
        request.add_header("Authorization", f"Bearer {token}")
        for name, value in headers:
            request.add_header(name, value)
        try:
            with urlopen(request, timeout=timeout) as response:
                status, answer_headers, raw = response.status, response.headers, response.read()
        except HTTPError as e:
            status, answer_headers, raw = e.code, e.headers, e.read()
        return status, answer_headers, json.loads(raw) if raw else None

    def wait_for(self, what, predicate):
        """
        Long-poll the cluster view until C{predicate(view)} holds.

        @return: that view.
        """
        deadline = time.monotonic() + PATIENCE
        status, headers, view = self.call("GET", "/v1/cluster")
        while not predicate(view):
            self.assertLess(time.monotonic(), deadline, f"waited in vain for {what}: {view}")
            status, headers, answer = self.call(
                "GET", "/v1/cluster?wait=5", headers=[("If-None-Match", headers["ETag"])])
            if status == 200:
                view = answer
        return view

    def states(self, view):
        """@return: {address: state} of group 1."""
        return {s["address"]: s["state"] for g in view["groups"] if g["group_id"] == 1
                for s in g["servers"]}

    def group_writable(self, view):
        return any(g["group_id"] == 1 and g["writable"] for g in view["groups"])

    def file_ids(self):
        status, _, answer = self.call("POST", "/v1/file-ids", {"count": 100})
        self.assertEqual(status, 200)
        self.assertEqual(answer["end"] - answer["start"], 100)
        return answer["start"], answer["end"]

    # --- the scenario -------------------------------------------------------

    def test_cluster_life(self):
        self.master.start()
        for daemon in self.chunkservers:
            daemon.start()
        addresses = {d.address for d in self.chunkservers}
        view = self.wait_for("three RW servers", lambda v: self.states(v) == dict.fromkeys(addresses, RW))
        self.assertTrue(self.group_writable(view))
        first = self.file_ids()

        # bad input on the live daemon: refused, and the daemon lives on
        status, _, answer = self.call("POST", "/v1/heartbeat", b"\x00\xffgarbage")
        self.assertEqual((status, answer["error"]["code"]), (400, "BAD_REQUEST"))
        status, _, _ = self.call("POST", "/v1/file-ids", {"count": 1}, token="wrong")
        self.assertEqual(status, 401)
        with socket.create_connection(("127.0.0.1", self.master_port), timeout=5) as s:
            s.sendall(b"\x16\x03\x01garbage that is no HTTP\r\n\r\n")
            s.recv(1024)
        self.assertEqual(self.call("GET", "/v1/health")[2], {"ok": True})

        # one chunkserver dies: DOWN, the group unwritable
        dead = self.chunkservers[2]
        dead.kill()
        view = self.wait_for("a DOWN server", lambda v: self.states(v)[dead.address] == DOWN)
        self.assertFalse(self.group_writable(view))

        # the chunkmaster crashes and comes back over the same database
        self.master.kill()
        self.master.start()
        view = self.wait_for(
            "the membership back, two RW and one DOWN",
            lambda v: sorted(self.states(v).values()) == [DOWN, RW, RW])
        self.assertFalse(self.group_writable(view))
        second = self.file_ids()
        self.assertGreaterEqual(second[0], first[1])

        # the dead chunkserver comes back: the group is writable again
        dead.start()
        self.wait_for("a writable group", self.group_writable)
        self.assertGreaterEqual(self.file_ids()[0], second[1])


class SQLiteTests(ChunkmasterEndToEnd, SynchronousTestCase):
    def db_url(self):
        return "sqlite:meta.db"


class MariaDBTests(ChunkmasterEndToEnd, SynchronousTestCase):
    """The same over MariaDB, in a database of its own, dropped afterwards."""

    def setUp(self):
        import pymysql

        from speedy.metadata.mysql import parse_url

        require_mysql()
        server = parse_url(MYSQL_URL)
        database = server.pop("database") + "_cm_" + uuid.uuid4().hex[:8]
        self.url = MYSQL_URL.rsplit("/", 1)[0] + "/" + database

        def execute(statement):
            connection = pymysql.connect(connect_timeout=5, **server)
            try:
                connection.cursor().execute(statement)
            finally:
                connection.close()

        execute(f"CREATE DATABASE `{database}`")
        self.addCleanup(execute, f"DROP DATABASE `{database}`")
        super().setUp()

    def db_url(self):
        return self.url
