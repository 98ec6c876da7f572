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

import os

from twisted.trial.unittest import SynchronousTestCase

from speedy.test.realcluster import MiB, RealCluster


class SelfHealingEndToEndTests(RealCluster, SynchronousTestCase):

    master_args = ("--repair-interval", "0.5", "--repair-rate", "0")
    chunkserver_args = ("--volume-size", "16MiB", "--scrub-rate", "64MiB",
                        "--scrub-period", "2s")

    def setUp(self):
        self.start_cluster()

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
        repairs = self.admin_json("repair")
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
        newcomer = self.start(self.chunkserver(4, 1, "--scrub-period", "7d"))
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
