"""
Tests for L{speedy.admin}: the C{speedy-admin} command, its target and
token lookup, its output, and its subcommands against the real
chunkmaster API (through L{treq.testing.StubTreq}).
"""

import io
import json

from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from speedy.admin import cli
from speedy.chunkmaster.collector import ChunkCollector, GroupDeleter
from speedy.chunkmaster.sweep import MetadataSweep
from speedy.admin.output import ProgressBar, human_duration, human_size, table
from speedy.admin.target import Target, TargetError, find_target
from speedy.chunkmaster.api import build_api
from speedy.chunkmaster.cluster import Cluster
from speedy.chunkmaster.fsck import FsckRunner
from speedy.chunkmaster.messages import Heartbeat
from speedy.chunkmaster.repair import RepairService
from speedy.chunkmaster.transfer import TransferService
from speedy.crc import crc32c
from speedy.metadata.memory import MemoryMetadataStore
from speedy.records import BlobRecord, ChunkRef, V1ImageRecord, V1TagRecord
from speedy.testing import FakeChunkClient

ADMIN = "admin-sekrit"
SECRET = "cluster-sekrit"
GiB = 1 << 30
MASTER = "http://master:8099"


def state(master="127.0.0.1:8099", token="from-state"):
    """A local cluster's state file, as L{speedy.localcluster.read_state} returns it."""
    return {"supervisor_pid": 1, "admin_token": token, "roles": [
        {"name": "chunkmaster", "plugin": "speedy-chunkmaster", "address": master, "pid": 2,
         "health_url": f"http://{master}/v1/health"},
        {"name": "chunkserver-1", "plugin": "speedy-chunkserver", "address": "127.0.0.1:8001",
         "pid": 3}]}


class TargetTests(SynchronousTestCase):
    """Where the chunkmaster and the admin token come from."""

    def token_file(self, text):
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_master_and_token_file(self):
        """--master and --token-file name them; the file's whitespace is not
        part of the token."""
        self.assertEqual(find_target(MASTER, self.token_file("tok\n"), environ={}),
                         Target(MASTER, "tok"))

    def test_environment(self):
        """Without a token file, $SPEEDY_ADMIN_TOKEN is the token."""
        self.assertEqual(find_target(MASTER, environ={"SPEEDY_ADMIN_TOKEN": "env"}),
                         Target(MASTER, "env"))

    def test_local_cluster_state(self):
        """--var reads the local cluster's chunkmaster address and admin token."""
        seen = []

        def read_state(var):
            seen.append(var)
            return state()

        self.assertEqual(find_target(var="v", environ={}, read_state=read_state),
                         Target("http://127.0.0.1:8099", "from-state"))
        self.assertEqual(seen, ["v"])

    def test_explicit_options_win_over_state(self):
        """--master and the environment override what the state file says."""
        self.assertEqual(
            find_target(MASTER, var="v", environ={"SPEEDY_ADMIN_TOKEN": "env"},
                        read_state=lambda var: self.fail("state read needlessly")),
            Target(MASTER, "env"))

    def test_missing(self):
        """No master, no token, an unreadable token file, an empty token, or
        no cluster under --var: each says what to give."""
        cases = [
            dict(environ={}),
            dict(master=MASTER, environ={}),
            dict(master=MASTER, token_file=self.mktemp(), environ={}),
            dict(master=MASTER, token_file=self.token_file("\n"), environ={}),
            dict(var="v", environ={}, read_state=lambda var: None),
        ]
        messages = []
        for kwargs in cases:
            messages.append(str(self.assertRaises(TargetError, find_target, **kwargs)))
        self.assertIn("--master", messages[0])
        self.assertIn("--token-file", messages[1])
        self.assertIn("cannot read", messages[2])
        self.assertIn("empty", messages[3])
        self.assertIn("no local cluster", messages[4])


class OutputTests(SynchronousTestCase):
    """Tables, sizes and the progress bar."""

    def test_table_aligns_columns(self):
        """Columns are as wide as their widest cell; numbers align right."""
        self.assertEqual(table(["NAME", "SIZE"], [["a", 5], ["bbbbbb", 1234]]), [
            "NAME    SIZE",
            "a          5",
            "bbbbbb  1234",
        ])

    def test_human_figures(self):
        self.assertEqual([human_size(n) for n in (None, 0, 1023, 1536, 3 * GiB)],
                         ["-", "0 B", "1023 B", "1.5 KiB", "3.0 GiB"])
        self.assertEqual([human_duration(s) for s in (None, 5, 185, 3725)],
                         ["-", "5s", "3m05s", "1h02m"])

    def test_progress_bar_on_terminal(self):
        """On a terminal the bar redraws one line, with an estimate of the
        time left, and ends it."""
        stream = _Terminal()
        clock = Clock()
        bar = ProgressBar(stream, 10, width=10, clock=clock.seconds)
        clock.advance(10)
        bar.update(5, "2 MiB/s")
        bar.finish()
        self.assertEqual(stream.getvalue(),
                         "\r[#####.....]  50% 5/10 eta 10s 2 MiB/s\x1b[K\n")

    def test_progress_bar_elsewhere(self):
        """Into a file or a pipe it draws nothing."""
        stream = io.StringIO()
        bar = ProgressBar(stream, 10)
        bar.update(5)
        bar.finish()
        self.assertEqual(stream.getvalue(), "")


class _Terminal(io.StringIO):
    def isatty(self):
        return True


class CommandTestCase(SynchronousTestCase):
    """
    C{speedy-admin} run against the real chunkmaster API over a cluster of
    two groups, one of them with a server down.
    """

    def setUp(self):
        self.clock = Clock()
        self.store = MemoryMetadataStore(self.clock)
        self.successResultOf(self.store.start())
        self.cluster = Cluster(self.store, self.clock, heartbeat_timeout=15, group_size=3,
                               reserve=GiB, publish_interval=5)
        self.addCleanup(self.cluster.stop)
        self.chunks = FakeChunkClient(self.clock)
        self.repairs = RepairService(self.clock, self.cluster, self.store, self.chunks, rate=0)
        self.fsck = FsckRunner(self.clock, self.cluster, self.store, self.chunks)
        self.collector = ChunkCollector(
            GroupDeleter(self.cluster, self.chunks), self.store, self.clock, grace=60.0,
            period=0, sweep=MetadataSweep(self.store, self.clock, grace=60.0, rate=0))
        self.http = StubTreq(build_api(self.cluster, self.store, cluster_secret=SECRET,
                                       admin_token=ADMIN, repairs=self.repairs,
                                       fsck=self.fsck, collector=self.collector))
        for n, group in enumerate([1, 1, 1, 2, 2, 2], start=1):
            self.beat(f"s{n}", group, free=(100 - 10 * n) * GiB)
        for _ in range(10):
            self.clock.advance(1)
        for n in (1, 2, 3, 4, 5):
            self.beat(f"s{n}", 1 if n <= 3 else 2, free=(100 - 10 * n) * GiB)
        for _ in range(10):
            self.clock.advance(1)

    def beat(self, server_id, group_id, free):
        self.successResultOf(Deferred.fromCoroutine(self.cluster.heartbeat(Heartbeat(
            server_id, group_id, f"10.0.0.{server_id[1:]}:8000", 100 * GiB, 100 * GiB - free,
            free, False, {}))))

    def admin(self, *argv, token=ADMIN):
        """@return: C{(exit code, stdout lines, stderr text)} of one run."""
        lines, err = [], io.StringIO()
        code = self.successResultOf(Deferred.fromCoroutine(cli.run(
            self.clock, ["--master", MASTER] + list(argv), out=lines.append, err=err,
            environ={"SPEEDY_ADMIN_TOKEN": token}, http=self.http)))
        return code, lines, err.getvalue()


class StatusTests(CommandTestCase):
    """C{speedy-admin status}."""

    def test_table(self):
        """Every server with its group, state and fill; every group with how
        many members are up; a group with a server down is degraded and not
        writable."""
        code, lines, err = self.admin("status")
        self.assertEqual((code, err), (0, ""))
        rows = {line.split()[0]: line.split() for line in lines if line.startswith("s")}
        self.assertEqual(sorted(rows), ["s1", "s2", "s3", "s4", "s5", "s6"])
        self.assertEqual([rows["s1"][1], rows["s1"][3], rows["s1"][-1]], ["1", "RW", "10.0%"])
        self.assertEqual([rows["s6"][1], rows["s6"][3]], ["2", "DOWN"])
        groups = {line.split()[0]: line.split() for line in lines
                  if line.split() and line.split()[0] in ("1", "2")}
        self.assertEqual(groups["1"][1:3], ["writable", "3/3"])
        self.assertEqual(groups["2"][1:3], ["degraded", "2/3"])
        self.assertIn("6 servers, 2 groups, 1 writable", lines[-2])
        self.assertEqual(lines[-1], "repairs queued: 0")

    def test_json(self):
        """--json prints the same facts for scripts."""
        code, lines, err = self.admin("--json", "status")
        status = json.loads("\n".join(lines))
        self.assertEqual(code, 0)
        self.assertEqual(status["writable_groups"], 1)
        self.assertEqual([(g["group_id"], g["state"], g["servers_up"]) for g in status["groups"]],
                         [(1, "writable", 3), (2, "degraded", 2)])
        self.assertEqual({s["server_id"]: s["state"] for s in status["servers"]}["s6"], "DOWN")

    def test_wrong_token(self):
        """A wrong admin token: exit code 3 and the chunkmaster's reason."""
        code, lines, err = self.admin("status", token="wrong")
        self.assertEqual((code, lines), (cli.EXIT_UNREACHABLE, []))
        self.assertIn("401", err)
        self.assertIn("UNAUTHORIZED", err)

    def test_cluster_secret_is_not_admin(self):
        """The cluster secret, which every chunkserver holds, does not open
        the admin view."""
        code, lines, err = self.admin("status", token=SECRET)
        self.assertEqual(code, cli.EXIT_UNREACHABLE)

    def test_usage(self):
        """No command, or an unknown one: exit code 2 and the usage."""
        for argv in ([], ["frobnicate"]):
            code, lines, err = self.admin(*argv)
            self.assertEqual(code, cli.EXIT_USAGE)
            self.assertIn("speedy-admin:", err)


class HealingCommandTests(CommandTestCase):
    """C{speedy-admin fsck}, C{repair} and C{replace-server} over the real
    admin API, the real repair service and fsck, on fake chunkservers."""

    def blob(self, file_id, data, servers):
        for server_id in servers:
            self.successResultOf(self.chunks.put(f"10.0.0.{server_id[1:]}:8000", file_id, data))
        ref = ChunkRef(int(servers[0][1:]) > 3 and 2 or 1, file_id, len(data), crc32c(data))
        self.successResultOf(self.store.put_blob(
            BlobRecord(f"sha256:{file_id:064x}", len(data), (ref,))))

    def test_fsck_finds_and_repairs(self):
        """fsck reports a missing replica and exits 1; with --repair it
        queues it, and repair --run --wait copies it back."""
        self.blob(1, b"a" * 50, ["s1", "s2", "s3"])
        self.blob(2, b"b" * 50, ["s1", "s3"])
        code, lines, err = self.admin("fsck")
        self.assertEqual(code, 1, err)
        text = "\n".join(lines)
        self.assertIn("problems found", text)
        self.assertIn("file_id=2", text)
        self.assertIn("server_id=s2", text)
        code, lines, err = self.admin("--json", "fsck", "--repair")
        report = json.loads("\n".join(lines))["report"]
        self.assertEqual((report["missing"]["count"], report["repairs_queued"]), (1, 1))
        code, lines, err = self.admin("repair")
        self.assertEqual(code, 1)
        self.assertIn("queued: 1", lines[0])
        code, lines, err = self.admin("repair", "--run", "--wait")
        self.assertEqual(code, 0, err)
        self.assertIn("queued: 0", lines[0])
        self.assertEqual(self.chunks.server("10.0.0.2:8000").chunks[2], b"b" * 50)
        code, lines, err = self.admin("fsck")
        self.assertEqual(code, 0, lines)

    def test_replace_server(self):
        """replace-server puts a new server in a member's place, and the
        status shows the group rebuilding until it is filled."""
        self.blob(1, b"a" * 50, ["s1", "s2", "s3"])
        code, lines, err = self.admin("replace-server", "s2", "s7", "10.0.0.7:8000")
        self.assertEqual((code, err), (0, ""))
        self.assertIn("s7 replaces s2 in group 1", lines[0])
        code, lines, err = self.admin("--json", "status")
        status = json.loads("\n".join(lines))
        self.assertEqual(status["groups"][0]["state"], "rebuilding")
        self.beat("s7", 1, free=50 * GiB)
        self.successResultOf(self.repairs.kick())
        self.assertEqual(self.chunks.server("10.0.0.7:8000").chunks, {1: b"a" * 50})
        code, lines, err = self.admin("--json", "status")
        self.assertEqual(json.loads("\n".join(lines))["groups"][0]["state"], "writable")

    def test_replace_server_refused(self):
        """An unknown old server: the chunkmaster's reason, exit code 3."""
        code, lines, err = self.admin("replace-server", "s9", "s7", "10.0.0.7:8000")
        self.assertEqual(code, cli.EXIT_UNREACHABLE)
        self.assertIn("404", err)
        code, lines, err = self.admin("replace-server", "s2", "s7")
        self.assertEqual(code, cli.EXIT_USAGE)


class GCCommandTests(CommandTestCase):
    """C{speedy-admin gc} over the real admin API and chunk collector, on
    fake chunkservers."""

    def setUp(self):
        super().setUp()
        self.old = self.garbage(1, b"o" * 3000)
        layer = ChunkRef(1, 3, 2048, 0)
        self.successResultOf(self.store.put_blob(BlobRecord("sha256:" + "3" * 64, 2048, (layer,))))
        self.successResultOf(self.store.link_blob("old/app", "sha256:" + "3" * 64))
        self.clock.advance(120)  # past the grace period
        self.new = self.garbage(2, b"n" * 1000)

    def garbage(self, file_id, data):
        for n in (1, 2, 3):
            self.successResultOf(self.chunks.put(f"10.0.0.{n}:8000", file_id, data))
        ref = ChunkRef(1, file_id, len(data), crc32c(data))
        self.successResultOf(self.store.record_garbage([ref], "blob deleted"))
        return ref

    def held(self, file_id):
        return [n for n in (1, 2, 3) if file_id in self.chunks.server(f"10.0.0.{n}:8000").chunks]

    def beat_all(self):
        for n in (1, 2, 3, 4, 5):
            self.beat(f"s{n}", 1 if n <= 3 else 2, free=(100 - 10 * n) * GiB)

    def test_dry_run(self):
        """--dry-run shows what is due and what waits, and deletes nothing."""
        self.beat_all()
        code, lines, err = self.admin("gc", "--dry-run")
        self.assertEqual((code, err), (0, ""))
        self.assertEqual([line.split() for line in lines], [
            ["WOULD", "BE", "FREED", "CHUNKS", "BYTES"],
            ["blobs", "no", "manifest", "references:", "1", "1", "2.0", "KiB"],
            ["garbage", "chunks", "due", "(would", "be", "deleted)", "1", "2.9", "KiB"],
            ["garbage", "chunks", "in", "the", "grace", "period", "1", "1000", "B"]])
        self.assertEqual(self.held(1), [1, 2, 3])
        self.assertIsNotNone(self.successResultOf(self.store.get_blob("sha256:" + "3" * 64)))

    def test_run_then_status(self):
        """gc runs a round and shows it; --status shows it again, --json
        too."""
        self.beat_all()
        code, lines, err = self.admin("gc")
        self.assertEqual(code, 0, err)
        text = "\n".join(lines)
        self.assertIn("grace 1m00s, a round every - (off)", text)
        self.assertIn("blobs no manifest references: collected 1m00s after their last push;"
                      " manifests: kept (no --gc-delete policy)", text)
        self.assertEqual(lines[4].split(), ["blobs", "collected:", "1", "(+", "0", "manifests)",
                                            "1", "2.0", "KiB"])
        self.assertEqual(lines[5].split(), ["deleted", "1", "2.9", "KiB"])
        self.assertIn("since start: 1 rounds, 1 blobs and 0 manifests collected, 1 chunks, "
                      "2.9 KiB deleted", text)
        self.assertEqual((self.held(1), self.held(2)), ([], [1, 2, 3]))
        code, lines, err = self.admin("--json", "gc", "--status")
        status = json.loads("\n".join(lines))
        self.assertEqual((status["running"], status["last"]["chunks_deleted"],
                          status["last"]["bytes_waiting"]), (False, 1, 3048))
        self.assertEqual(status["last"]["sweep"],
                         {"manifests": 0, "blobs": 1, "blob_chunks": 1, "blob_bytes": 2048})

    def test_waits_for_the_round(self):
        """While a member holds the deletes, gc polls until the round ends."""
        self.beat_all()
        self.chunks.hold.add("delete")
        d = Deferred.fromCoroutine(cli.run(
            self.clock, ["--master", MASTER, "gc"], out=[].append, err=_Terminal(),
            environ={"SPEEDY_ADMIN_TOKEN": ADMIN}, http=self.http))
        self.clock.advance(1)
        self.assertNoResult(d)
        self.chunks.release()
        self.clock.advance(1)
        self.assertEqual(self.successResultOf(d), 0)
        self.assertEqual(self.held(1), [])

    def test_usage(self):
        code, lines, err = self.admin("gc", "--dry-run", "--status")
        self.assertEqual(code, cli.EXIT_USAGE)


class RegistryV1CommandTests(CommandTestCase):
    """C{speedy-admin registry-v1}."""

    def setUp(self):
        super().setUp()
        for image_id, complete in (("a" * 64, True), ("b" * 64, False)):
            document = b'{"id": "%s"}' % image_id.encode()
            self.successResultOf(self.store.put_v1_image(
                V1ImageRecord(image_id, document, None, (image_id,))))
            self.successResultOf(self.store.set_v1_layer(
                image_id, document, 3 * 2**20, (), "sha256:x"))
            if complete:
                self.successResultOf(self.store.complete_v1_image(image_id, "sha256:x"))
        self.successResultOf(self.store.put_v1_tag(V1TagRecord("library/app", "latest", "a" * 64)))

    def test_table(self):
        code, lines, err = self.admin("registry-v1")
        self.assertEqual((code, err), (0, ""))
        self.assertEqual([line.split() for line in lines], [
            ["what", "count", "bytes"],
            ["repositories", "1", "-"],
            ["tags", "1", "-"],
            ["images", "1", "3.0", "MiB"],
            ["unfinished", "pushes", "1", "-"],
            ["with", "a", "layer", "1", "3.0", "MiB"]])

    def test_json(self):
        code, lines, err = self.admin("--json", "registry-v1")
        self.assertEqual(json.loads("\n".join(lines)), {
            "repositories": 1, "tags": 1, "images": 1, "unfinished": 1,
            "layer_bytes": 3 * 2**20, "unfinished_layers": 1,
            "unfinished_layer_bytes": 3 * 2**20})


class TransferCommandTests(CommandTestCase):
    """C{speedy-admin drain}, C{rebalance} and C{transfers} over the real
    admin API and transfer service, on fake chunkservers."""

    def setUp(self):
        super().setUp()
        self.beat("s6", 2, free=40 * GiB)
        self.transfers = TransferService(self.clock, self.cluster, self.store, self.chunks,
                                         rate=0, delete_delay=60)
        self.http = StubTreq(build_api(self.cluster, self.store, cluster_secret=SECRET,
                                       admin_token=ADMIN, transfers=self.transfers))
        data = b"layer" * 200
        for n in (1, 2, 3):
            self.successResultOf(self.chunks.put(f"10.0.0.{n}:8000", 7, data))
        self.chunk = ChunkRef(1, 7, len(data), crc32c(data))
        self.successResultOf(self.store.put_blob(BlobRecord("sha256:" + "b" * 64, len(data),
                                                            (self.chunk,))))

    def test_drain_group(self):
        """drain group 1 moves the blob's chunk to group 2; transfers shows
        it done but for the old copies, which go after the delay."""
        code, lines, err = self.admin("drain", "group", "1")
        self.assertEqual((code, err), (0, ""))
        self.assertIn("draining group 1", lines[0])
        row = lines[-1].split()
        self.assertEqual(row[1:6], ["drain", "1", "any", "deleting", "1/1"])
        blob = self.successResultOf(self.store.get_blob("sha256:" + "b" * 64))
        self.assertEqual(blob.chunks[0].group_id, 2)
        self.clock.advance(61)
        self.successResultOf(self.transfers.kick())
        code, lines, err = self.admin("--json", "transfers")
        transfer, = json.loads("\n".join(lines))["transfers"]
        self.assertEqual((transfer["state"], transfer["chunks_done"], transfer["bytes_done"],
                          transfer["old_copies_pending"]), ("done", 1, 1000, 0))

    def test_drain_server_drains_its_group(self):
        code, lines, err = self.admin("--json", "drain", "server", "s2")
        self.assertEqual(code, 0)
        self.assertEqual(json.loads("\n".join(lines))["transfers"][0]["source_group"], 1)

    def test_drain_refused(self):
        """An unknown server, a bad group id, or no group to move to: a
        clear error, nothing started."""
        self.assertEqual(self.admin("drain", "group", "x")[0], cli.EXIT_USAGE)
        code, lines, err = self.admin("drain", "server", "s99")
        self.assertEqual(code, cli.EXIT_UNREACHABLE)
        self.assertIn("s99", err)
        code, lines, err = self.admin("drain", "group", "2")
        self.assertEqual(code, 0)
        code, lines, err = self.admin("drain", "group", "1")
        self.assertIn("no writable group", err)

    def test_rebalance_balanced(self):
        code, lines, err = self.admin("rebalance", "--spread", "0.5")
        self.assertEqual((code, lines), (0, ["the groups are balanced: nothing to move"]))

    def test_cancel(self):
        self.transfers.enabled = False  # keep it running
        code, lines, err = self.admin("--json", "drain", "group", "1")
        transfer_id = json.loads("\n".join(lines))["transfers"][0]["transfer_id"]
        code, lines, err = self.admin("transfers", "--cancel", transfer_id)
        self.assertEqual(code, 0)
        self.assertIn("cancelled", lines[-1])
        code, lines, err = self.admin("transfers", "--cancel", "nope")
        self.assertEqual(code, cli.EXIT_UNREACHABLE)
