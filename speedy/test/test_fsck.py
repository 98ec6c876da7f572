"""
Tests for L{speedy.chunkmaster.fsck}: the metadata's chunk lists against
what each member of each group holds.
"""

from speedy.chunkmaster.fsck import MAX_LISTED, FsckRunner
from speedy.logs import run_for
from speedy.crc import crc32c
from speedy.records import BlobRecord, ChunkRef, FileRecord
from speedy.test.test_repair import RepairTestCase, address
from speedy.testing import DOWN


class FsckTests(RepairTestCase):

    def setUp(self):
        super().setUp()
        self.runner = FsckRunner(self.clock, self.cluster, self.store, self.client)
        self.addCleanup(self.runner.stop)

    def own(self, file_id, data, kind="blob"):
        """Put C{data} on every member and record a blob or file owning it."""
        self.put(file_id, data)
        ref = ChunkRef(1, file_id, len(data), crc32c(data))
        if kind == "blob":
            record = BlobRecord(f"sha256:{file_id:064x}", len(data), (ref,))
            self.successResultOf(self.store.put_blob(record))
        else:
            self.successResultOf(self.store.put_file(FileRecord(f"f{file_id}", len(data), (ref,))))
        return ref

    def fsck(self, **kwargs):
        self.runner.start(**kwargs)
        state = self.runner.status()
        self.assertEqual(state["state"], "done", state)
        return state["report"]

    def counts(self, report):
        return {kind: value["count"] for kind, value in report.items()
                if isinstance(value, dict) and "count" in value}

    def test_no_trace(self):
        """An fsck runs for no request: its chunkserver requests carry no
        trace, though the admin's request that started it was current."""
        self.own(1, b"a" * 100)
        self.client.traces.clear()
        run_for("admin-post", self.fsck, verify=True)
        self.assertEqual({trace for _, _, _, trace in self.client.traces}, {None})
        self.assertNotEqual(self.client.traces, [])

    def test_clean(self):
        for file_id in range(1, 6):
            self.own(file_id, bytes([file_id]) * 100, kind="blob" if file_id % 2 else "file")
        report = self.fsck()
        self.assertTrue(report["clean"])
        self.assertEqual(report["progress"]["chunks_done"], 5)

    def test_findings(self):
        """A chunk missing on one member, one damaged (other bytes under its
        id) on another, one on no member, and one nothing owns."""
        self.own(1, b"a" * 100)
        self.own(2, b"b" * 100)
        self.own(3, b"c" * 100)
        self.own(4, b"d" * 100)
        del self.client.server(address("s2")).chunks[1]
        server = self.client.server(address("s3"))
        server.chunks[2] = b"B" * 100
        server.crcs[2] = crc32c(b"B" * 100)
        for server_id in ("s1", "s2", "s3"):
            del self.client.server(address(server_id)).chunks[3]
        self.put(9, b"orphan", servers=("s1",))
        report = self.fsck()
        self.assertFalse(report["clean"])
        self.assertEqual(self.counts(report), {
            "missing": 4, "damaged": 1, "under_replicated": 2, "lost": 1, "orphaned": 1,
            "unreachable": 0})
        self.assertIn({"group_id": 1, "file_id": 1, "server_id": "s2",
                       "owner": f"blob sha256:{1:064x}"}, report["missing"]["items"])
        self.assertEqual([(i["file_id"], i["server_id"]) for i in report["damaged"]["items"]],
                         [(2, "s3")])
        self.assertEqual([i["file_id"] for i in report["lost"]["items"]], [3])
        self.assertEqual(report["orphaned"]["items"],
                         [{"group_id": 1, "file_id": 9, "server_id": "s1"}])
        self.assertEqual(self.queue(), [])  # reported, not queued

    def test_repair_queues(self):
        """With repair, missing and damaged replicas go to the repair queue,
        which the repair service then works."""
        self.own(1, b"a" * 100)
        self.own(2, b"b" * 100)
        del self.client.server(address("s2")).chunks[1]
        server = self.client.server(address("s3"))
        server.chunks[2] = b"B" * 100
        server.crcs[2] = crc32c(b"B" * 100)
        report = self.fsck(repair=True)
        self.assertEqual(report["repairs_queued"], 2)
        self.assertEqual(sorted(self.queue()), [("s2", 1), ("s3", 2)])
        self.work()
        self.assertEqual(self.chunk("s2", 1), b"a" * 100)
        self.assertTrue(self.fsck()["clean"])

    def test_verify_reads_the_disks(self):
        """Bytes rotted behind an index that still has the right CRC are
        found only when fsck reads the copies back."""
        self.own(1, b"a" * 100)
        self.client.server(address("s1")).chunks[1] = b"A" * 100
        self.assertTrue(self.fsck()["clean"])
        report = self.fsck(verify=True)
        self.assertEqual(self.counts(report)["damaged"], 1)

    def test_member_down(self):
        """A member that does not answer is reported; its group's chunks
        are under-replicated, not lost."""
        self.own(1, b"a" * 100)
        self.client.server(address("s2")).mode = DOWN
        report = self.fsck()
        self.assertEqual(self.counts(report)["unreachable"], 1)
        self.assertEqual(self.counts(report)["under_replicated"], 1)
        self.assertEqual(self.counts(report)["lost"], 0)

    def test_garbage_is_not_orphaned(self):
        """Chunks waiting in the garbage table are not orphans."""
        self.put(9, b"old")
        self.successResultOf(self.store.record_garbage([ChunkRef(1, 9, 3, crc32c(b"old"))], "r"))
        self.assertTrue(self.fsck()["clean"])

    def test_lists_are_bounded(self):
        for file_id in range(1, MAX_LISTED + 11):
            self.put(file_id, b"x", servers=("s1",))
        report = self.fsck()
        self.assertEqual(report["orphaned"]["count"], MAX_LISTED + 10)
        self.assertEqual(len(report["orphaned"]["items"]), MAX_LISTED)

    def test_one_at_a_time(self):
        """A second run is refused while one runs; its progress shows."""
        self.own(1, b"a")
        self.client.hold = {"list"}
        self.runner.start()
        self.assertEqual(self.runner.status()["state"], "running")
        self.assertIn("progress", self.runner.status())
        self.assertRaises(Exception, self.runner.start)
        while self.client.held:
            self.client.release()
        self.assertEqual(self.runner.status()["state"], "done")

