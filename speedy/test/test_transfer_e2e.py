"""
End-to-end online data transfer with real daemons on loopback: a
chunkmaster, six chunkservers in two groups and an imageserver as
processes, C{speedy-admin} run as an operator runs it, and a client pushing
and pulling through the registry and the file API all the while.

  - A second group joins the running cluster (no restart), group 1 is
    drained while the client works: every blob and file pulled during and
    after is byte-identical, no chunk list names group 1 any more, and its
    servers hold no chunk at all once the old copies' delay has passed.
  - The chunkmaster is killed half-way through a rate-limited drain and
    started again: the drain resumes and finishes, nothing lost, nothing
    left behind twice (fsck finds no orphan).
"""

import hashlib
import json
import os
import sqlite3
import threading

from twisted.trial.unittest import SynchronousTestCase

from speedy.test.realcluster import MiB, PATIENCE, RealCluster, http
from speedy.test.test_selfheal_e2e import SelfHealingEndToEndTests


class Client(threading.Thread):
    """Pushes blobs and files and pulls each back at once, until stopped;
    remembers every mismatch."""

    def __init__(self, registry):
        super().__init__(daemon=True)
        self.registry = registry
        self.stopping = threading.Event()
        self.pushed = {}  # name -> bytes
        self.errors = []
        self.rounds = 0

    def run(self):
        n = 0
        while not self.stopping.is_set():
            n += 1
            data = os.urandom(MiB + n * 77_777 % MiB)
            digest = "sha256:" + hashlib.sha256(data).hexdigest()
            try:
                status, _, body = http("POST", f"{self.registry}/v2/live/blobs/uploads/?digest="
                                    + digest, data)
                if status != 201:
                    self.errors.append(f"push {n}: {status} {body[:200]!r}")
                    continue
                self.pushed[digest] = data
                for name, expected in list(self.pushed.items())[-3:]:
                    status, _, body = http("GET", f"{self.registry}/v2/live/blobs/{name}")
                    if status != 200 or body != expected:
                        self.errors.append(f"pull {name} during the drain: {status}, "
                                           f"{len(body)} bytes")
            except Exception as e:  # a refused connection is an error too
                self.errors.append(f"round {n}: {e!r}")
            self.rounds += 1


class TransferEndToEndTests(RealCluster, SynchronousTestCase):
    """Group 1 (cs1-cs3) holds files; group 2 (cs4-cs6) joins later."""

    master_args = SelfHealingEndToEndTests.master_args + (
        "--transfer-interval", "0.5", "--transfer-delete-delay", "3")
    chunkserver_args = SelfHealingEndToEndTests.chunkserver_args

    def setUp(self):
        self.start_cluster()

    def add_group(self):
        """Start cs4-cs6 in group 2 against the running chunkmaster."""
        for n in (4, 5, 6):
            self.chunkservers[n] = self.start(self.chunkserver(n, 2, "--scrub-period", "7d"))
        self.wait_for("two writable groups", lambda: self.status()["writable_groups"] == 2)

    def group_references(self, group_id):
        """@return: how many chunk list entries name C{group_id}."""
        db = sqlite3.connect(os.path.join(self.workdir, "meta.db"))
        try:
            count = 0
            for table in ("files", "blobs", "uploads", "v1_images"):
                for (chunks,) in db.execute(f"SELECT chunks FROM {table}"):
                    count += sum(1 for c in json.loads(chunks) if c[0] == group_id)
            return count
        finally:
            db.close()

    def held(self, group_id):
        """@return: the live chunks each server of C{group_id} holds, as its
        last heartbeat said."""
        return [s["load"].get("chunks") for s in self.status()["servers"]
                if s["group_id"] == group_id]

    def transfers(self):
        return self.admin_json("transfers")["transfers"]

    def fill(self, count=8):
        files = {f"f{n}": os.urandom(MiB // 2 + n * 200_003) for n in range(count)}
        for name, data in files.items():
            self.put_file(name, data)
        return files

    def check_drained(self, files, client):
        for name, data in files.items():
            self.assertEqual(self.get_file(name), data, name)
        for digest, data in client.pushed.items():
            status, _, body = http("GET", f"{self.registry}/v2/live/blobs/{digest}")
            self.assertEqual((status, body == data), (200, True), digest)
        self.assertEqual(self.group_references(1), 0)
        self.wait_for("group 1's servers to report no chunk", lambda: self.held(1) == [0, 0, 0])
        report = self.fsck("--verify")
        self.assertTrue(report["clean"], report)
        self.assertEqual(report["orphaned"]["count"], 0, report["orphaned"])

    def test_drain_while_serving(self):
        files = self.fill()
        self.add_group()
        client = Client(self.registry)
        client.start()
        self.addCleanup(client.stopping.set)
        self.wait_for("the client to get going", lambda: client.rounds >= 2)
        done = self.admin("drain", "group", "1", "--wait")
        self.assertEqual(done.returncode, 0, done.stderr + done.stdout)
        self.assertIn("done", done.stdout)
        client.stopping.set()
        client.join(60)
        self.assertEqual(client.errors, [])
        self.assertGreater(len(client.pushed), 2)
        self.check_drained(files, client)
        transfer, = self.transfers()
        self.assertEqual((transfer["state"], transfer["old_copies_pending"]), ("done", 0))
        self.assertGreaterEqual(transfer["chunks_done"], len(files))
        # A drained group takes no writes; what is pushed now lands in group 2.
        self.put_file("after", b"after the drain")
        self.assertEqual(self.group_references(1), 0)

    def test_chunkmaster_crash_resumes(self):
        files = self.fill(10)
        self.add_group()
        # Slow enough to be killed half-way: about 14 MiB to write three
        # times, two chunks a batch.
        self.master.stop()
        self.master.args += ["--transfer-rate", "4MiB", "--transfer-parallelism", "1",
                             "--transfer-batch", "2"]
        self.master.start()
        self.wait_for("two writable groups", lambda: self.status()["writable_groups"] == 2)
        started = self.admin("drain", "group", "1")
        self.assertEqual(started.returncode, 0, started.stderr)
        self.wait_for("a few chunks moved",
                      lambda: self.transfers()[0]["chunks_done"] >= 3, PATIENCE)
        self.assertEqual(self.transfers()[0]["state"], "running")
        self.master.kill()
        self.master.start()
        done = self.admin("transfers", "--wait")
        self.assertEqual(done.returncode, 0, done.stderr)
        self.wait_for("the drain to finish", lambda: self.transfers()[0]["state"] == "done")
        client = Client(self.registry)  # nothing pushed: only the checks
        self.check_drained(files, client)
