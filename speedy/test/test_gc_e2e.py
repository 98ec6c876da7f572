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
"""

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
