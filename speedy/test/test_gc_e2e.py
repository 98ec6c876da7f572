"""
Garbage collection of chunks end to end, with real daemons on loopback: a
chunkmaster, three chunkservers and an imageserver as processes, and
C{speedy-admin gc} run as an operator runs it.

  - An imageserver killed (SIGKILL) in the middle of a chunked PATCH leaves
    the chunks it had stored recorded as intents: after the grace period
    the collector deletes them from every chunkserver, including one that
    was down at the first round (its delete is retried once it is back),
    and the chunkservers then compact their volumes: the volume files give
    their blocks back to the file system.
  - The same for a whole blob in one request (a monolithic POST) and for a
    file PUT of the REST file API: what the killed imageserver stored is
    recorded as intents (fsck counts it as waiting, not orphaned), and a
    round past the grace period deletes it from every chunkserver.
  - An imageserver (re)started on the same database serves on.
"""

import hashlib
import os
import socket
import sqlite3
import time

from twisted.trial.unittest import SynchronousTestCase

from speedy.test.realcluster import MiB, RealCluster, http

#: The shortest grace period the chunkmaster takes; the test ages the
#: intents' rows in the database past it rather than wait.
GRACE = 60.0


def disk_bytes(directory):
    """@return: the bytes of disk the volume files under C{directory} take."""
    return sum(os.stat(os.path.join(directory, name)).st_blocks * 512
               for name in os.listdir(directory) if name.endswith(".dat"))


class ChunkCollectionEndToEndTests(RealCluster, SynchronousTestCase):

    master_args = ("--gc-grace", f"{GRACE:g}s", "--gc-period", "0")
    chunkserver_args = ("--compact-delay", "0.5", "--volume-size", "64MiB")

    def setUp(self):
        self.start_cluster()

    def chunks_held(self):
        """@return: {server id: chunks it reports holding}, for servers up."""
        return {s["server_id"]: s["load"].get("chunks", 0) for s in self.status()["servers"]
                if s["state"] in ("RW", "RO")}

    def gc(self):
        return self.admin_json("gc")["last"]

    def intents(self):
        with sqlite3.connect(self.db, timeout=30) as db:
            return [row[0] for row in db.execute("SELECT file_id FROM chunk_intents")]

    def age_intents(self, seconds):
        """The grace period passes for the intents recorded so far (their
        rows are made older, in the database, instead of waiting)."""
        with sqlite3.connect(self.db, timeout=30) as db:
            db.execute("UPDATE chunk_intents SET recorded = recorded - ?", (seconds,))

    def kill_mid_body(self, head, size, sent, chunks):
        """
        Send a request's C{head} (its request line, without the headers
        every request gets) and C{sent} of its C{size} body bytes, wait
        until every chunkserver holds at least C{chunks} chunks, then
        SIGKILL the imageserver.
        """
        conn = socket.create_connection(("127.0.0.1", self.registry_port))
        self.addCleanup(conn.close)
        conn.sendall(f"{head}\r\nHost: 127.0.0.1\r\nContent-Type: application/octet-stream\r\n"
                     f"Content-Length: {size}\r\n\r\n".encode("ascii"))
        conn.sendall(os.urandom(sent))
        self.wait_for("the body's chunks on every chunkserver",
                      lambda: min(self.chunks_held().values(), default=0) >= chunks)
        self.imageserver.kill()
        conn.close()

    def assert_collected(self, at_least, reason):
        """
        The intents recorded for the killed request (at least C{at_least},
        each with C{reason}) keep their chunks, which fsck counts as
        waiting, through a round inside the grace period; the first round
        past it deletes them from every chunkserver.
        """
        with sqlite3.connect(self.db, timeout=30) as db:
            reasons = [row[0] for row in db.execute("SELECT reason FROM chunk_intents")]
        self.assertGreaterEqual(len(reasons), at_least)
        self.assertEqual(set(reasons), {reason})
        time.sleep(1.5)  # the chunkservers' reports settle (a put cut short is dropped)
        stored = self.chunks_held()["cs1"]
        self.assertGreaterEqual(stored, at_least)
        report = self.fsck()
        self.assertEqual(report["orphaned"]["count"], 0, report)
        self.assertEqual(self.gc()["chunks_deleted"], 0)
        self.age_intents(2 * GRACE)
        run = self.gc()
        self.assertGreaterEqual(run["chunks_deleted"], stored)
        self.assertEqual((run["chunks_kept"], self.intents()), (0, []))
        self.wait_for("every chunkserver to report no chunk",
                      lambda: set(self.chunks_held().values()) == {0})

    def restart_imageserver(self):
        """Start the killed imageserver again, on its port and database."""
        self.imageserver = self.start(self.imageserver)
        self.wait_for("the imageserver back",
                      lambda: http("GET", f"{self.registry}/readyz")[0] == 200)

    def test_killed_monolithic_post_chunks_are_collected(self):
        """SIGKILL to the imageserver while a whole blob of 8 MiB streams
        in as one POST: no blob is stored, the chunks already stored are
        recorded as intents and collected after the grace period; a
        restarted imageserver then takes the push again."""
        data = os.urandom(8 * MiB)
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        self.kill_mid_body(f"POST /v2/gc/whole/blobs/uploads/?digest={digest} HTTP/1.1",
                           len(data), 6 * MiB, 4)
        with sqlite3.connect(self.db, timeout=30) as db:
            self.assertEqual(db.execute("SELECT COUNT(*) FROM blobs").fetchone(), (0,))
        self.assert_collected(4, "monolithic upload to gc/whole")
        self.restart_imageserver()
        status, _, body = http(
            "POST", f"{self.registry}/v2/gc/whole/blobs/uploads/?digest={digest}", data,
            {"Content-Type": "application/octet-stream"})
        self.assertEqual(status, 201, body)
        self.assertEqual(http("GET", f"{self.registry}/v2/gc/whole/blobs/{digest}")[2], data)
        self.assertEqual(self.intents(), [])

    def test_killed_file_put_chunks_are_collected(self):
        """SIGKILL to the imageserver while a file PUT of 8 MiB streams in:
        no file is stored, its chunks already stored are recorded as
        intents and collected after the grace period."""
        self.kill_mid_body("PUT /v1/files/gc/killed.bin HTTP/1.1", 8 * MiB, 6 * MiB, 4)
        with sqlite3.connect(self.db, timeout=30) as db:
            self.assertEqual(db.execute("SELECT COUNT(*) FROM files").fetchone(), (0,))
        self.assert_collected(4, "file 'gc/killed.bin'")
        self.restart_imageserver()
        self.put_file("gc/killed.bin", b"stored after all")
        self.assertEqual(self.get_file("gc/killed.bin"), b"stored after all")
        self.assertEqual(self.intents(), [])

    def test_killed_patch_chunks_are_collected(self):
        """SIGKILL to the imageserver while a PATCH of 24 MiB streams in:
        the upload stays at offset 0, the chunks already stored are
        recorded as intents; a collection round after the grace period
        deletes them from the two chunkservers up, keeps them for the one
        down, and deletes them there too once it is back; compaction then
        gives the volumes' blocks back."""
        status, headers, body = http("POST", f"{self.registry}/v2/gc/killed/blobs/uploads/")
        self.assertEqual(status, 202, body)
        location = headers["Location"]
        size = 24 * MiB
        sent = 18 * MiB
        conn = socket.create_connection(("127.0.0.1", self.registry_port))
        self.addCleanup(conn.close)
        conn.sendall(
            f"PATCH {location} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Content-Type: application/octet-stream\r\nContent-Length: {size}\r\n"
            f"Content-Range: 0-{size - 1}\r\n\r\n".encode("ascii"))
        conn.sendall(os.urandom(sent))
        self.wait_for("the PATCH's chunks on every chunkserver",
                      lambda: min(self.chunks_held().values(), default=0) >= 12)
        self.imageserver.kill()
        conn.close()

        with sqlite3.connect(self.db, timeout=30) as db:
            [(offset,)] = db.execute("SELECT upload_offset FROM uploads").fetchall()
        self.assertEqual(offset, 0)
        intents = self.intents()
        self.assertGreaterEqual(len(intents), 12)
        # Let the chunkservers' reports settle (a put cut short is dropped).
        time.sleep(1.5)
        held = self.chunks_held()
        self.assertEqual(sorted(held), ["cs1", "cs2", "cs3"])
        stored = held["cs1"]
        self.assertGreaterEqual(stored, 12)
        filled = disk_bytes(self.chunkservers[1].data_dir)
        self.assertGreaterEqual(filled, 12 * MiB)

        # Inside the grace period nothing goes.
        self.assertEqual(self.gc()["chunks_deleted"], 0)
        self.assertEqual(len(self.intents()), len(intents))

        # One member down at the first round past it: kept for it.
        self.chunkservers[3].stop()
        self.age_intents(2 * GRACE)
        run = self.gc()
        self.assertEqual(run["chunks_deleted"], 0)
        self.assertGreaterEqual(run["chunks_kept"], stored)
        self.assertEqual(self.intents(), [])

        # Back: the next round deletes them everywhere.
        self.chunkservers[3] = self.start(self.chunkserver(3))
        self.wait_for("cs3 back", lambda: "cs3" in self.chunks_held())
        run = self.gc()
        self.assertGreaterEqual(run["chunks_deleted"], stored)
        self.assertEqual(run["chunks_kept"], 0)
        self.wait_for("every chunkserver to report no chunk",
                      lambda: set(self.chunks_held().values()) == {0})
        self.wait_for("the volumes to give their blocks back", lambda: all(
            disk_bytes(cs.data_dir) < MiB for cs in self.chunkservers.values()))
