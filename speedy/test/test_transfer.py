"""
Tests for L{speedy.chunkmaster.transfer}: a drain moves every chunk of a
group to the others under new file ids, switches every reference, keeps
the old copies for the delay, resumes after a crash, and can be cancelled;
a rebalance moves bytes from the fullest group to the emptiest.
"""

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from speedy.chunkmaster.cluster import Cluster
from speedy.chunkmaster.messages import Heartbeat
from speedy.chunkmaster.transfer import TransferService
from speedy.crc import crc32c
from speedy.imageserver.placement import preferred_replica
from speedy.logs import run_for
from speedy.metadata.memory import MemoryMetadataStore
from speedy.records import BlobRecord, ChunkMove, ChunkRef, FileRecord, UploadRecord
from speedy.testing import FakeChunkClient
from speedy.testing.chunkclient import DOWN

GiB = 1 << 30


def address(server_id):
    return f"10.0.0.{server_id[1:]}:8000"


class TransferTestCase(SynchronousTestCase):
    """Group 1 (s1-s3) holds a blob of three chunks and a file of one;
    group 2 (s4-s6) is empty."""

    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1000)
        self.store = MemoryMetadataStore(self.clock)
        self.successResultOf(self.store.start())
        self.cluster = Cluster(self.store, self.clock, heartbeat_timeout=3600, group_size=3,
                               reserve=0)
        self.addCleanup(self.cluster.stop)
        self.client = FakeChunkClient(self.clock)
        for n in range(1, 7):
            self.beat(f"s{n}", 1 if n <= 3 else 2)
        self.data = {}
        chunks = [self.put(1, file_id, bytes([file_id]) * (1000 + file_id))
                  for file_id in (11, 12, 13)]
        self.successResultOf(self.store.put_blob(BlobRecord("sha256:" + "a" * 64, 3036,
                                                            tuple(chunks))))
        upload_chunk = self.put(1, 14, b"upload" * 10)
        self.successResultOf(self.store.create_upload(UploadRecord(
            "u1", "library/x", upload_chunk.size, (upload_chunk,))))
        self.successResultOf(self.store.put_file(FileRecord("/f", 1012, (chunks[1],))))
        self.transfers = self.new_service()

    def new_service(self, **kwargs):
        kwargs.setdefault("rate", 0)
        kwargs.setdefault("delete_delay", 60.0)
        return TransferService(self.clock, self.cluster, self.store, self.client, **kwargs)

    def beat(self, server_id, group_id, used=0):
        self.successResultOf(Deferred.fromCoroutine(self.cluster.heartbeat(Heartbeat(
            server_id, group_id, address(server_id), 100 * GiB, used, 100 * GiB - used,
            False, {}))))

    def put(self, group_id, file_id, data):
        for server in self.cluster.members(group_id):
            self.successResultOf(self.client.put(server.address, file_id, data))
        chunk = ChunkRef(group_id, file_id, len(data), crc32c(data))
        self.data[chunk] = data
        return chunk

    def held(self, server_id):
        return set(self.client.server(address(server_id)).chunks)

    def references(self):
        return [chunk for _, chunk in self.successResultOf(self.store.referenced_chunks())]

    def read_all(self):
        """Every chunk list read back: the bytes each reference names,
        from every member of its group."""
        for chunk in self.references():
            for server in self.cluster.members(chunk.group_id):
                data = bytes(self.successResultOf(self.client.get(server.address,
                                                                  chunk.file_id)))
                self.assertEqual((len(data), crc32c(data)), (chunk.size, chunk.crc32c))

    def drain(self, group_id=1):
        return self.successResultOf(Deferred.fromCoroutine(self.transfers.drain(group_id)))

    def work(self, service=None):
        self.successResultOf((service or self.transfers).kick())

    def status(self):
        return self.successResultOf(Deferred.fromCoroutine(self.transfers.status()))


class DrainTests(TransferTestCase):

    def test_drain_moves_every_reference(self):
        """A drain leaves no chunk list naming the group; each new chunk is
        on every member of group 2 with the same bytes; the group takes no
        more writes."""
        before = self.references()
        self.drain()
        self.assertFalse(self.cluster.writable(1))
        self.work()
        after = self.references()
        self.assertEqual(len(after), len(before))
        self.assertEqual({c.group_id for c in after}, {2})
        self.assertEqual([(c.size, c.crc32c) for c in after],
                         [(c.size, c.crc32c) for c in before])
        self.read_all()
        # The blob and the file share a chunk: one move, one new id.
        blob = self.successResultOf(self.store.get_blob("sha256:" + "a" * 64))
        record = self.successResultOf(self.store.get_file("/f"))
        self.assertEqual(record.chunks[0], blob.chunks[1])

    def test_old_copies_kept_for_the_delay(self):
        """Until the delay passes, the old copies stay (a read that looked
        up the old chunk list still gets its bytes); then they go."""
        self.drain()
        self.work()
        self.assertEqual(self.held("s1"), {11, 12, 13, 14})
        self.assertEqual(self.status()["transfers"][0]["state"], "deleting")
        self.clock.advance(59)
        self.work()
        self.assertEqual(self.held("s2"), {11, 12, 13, 14})
        self.clock.advance(2)
        self.work()
        for server_id in ("s1", "s2", "s3"):
            self.assertEqual(self.held(server_id), set())
        transfer = self.status()["transfers"][0]
        self.assertEqual((transfer["state"], transfer["chunks_done"], transfer["bytes_done"]),
                         ("done", 4, 1011 + 1012 + 1013 + 60))
        self.assertEqual(self.successResultOf(self.store.list_moves()), [])

    def test_metrics(self):
        """/metrics counts the chunks and bytes a drain moved and the old
        copies it deleted after the delay."""
        from speedy.monitoring.collectors import TransferMetrics
        from speedy.test.test_monitoring import exposition

        metrics = TransferMetrics(self.transfers)
        self.assertEqual(exposition(metrics)[
            ("speedy_chunkmaster_transfer_moved_chunks_total", ())], 0)
        self.drain()
        self.work()
        self.clock.advance(61)
        self.work()
        samples = exposition(metrics)
        self.assertEqual(samples[("speedy_chunkmaster_transfer_moved_chunks_total", ())], 4)
        self.assertEqual(samples[("speedy_chunkmaster_transfer_moved_bytes_total", ())],
                         1011 + 1012 + 1013 + 60)
        self.assertEqual(samples[("speedy_chunkmaster_transfer_deleted_chunks_total", ())], 4)
        self.assertEqual(samples[("speedy_chunkmaster_transfer_failed_moves_total", ())], 0)

    def test_late_writer_switched_before_delete(self):
        """A chunk list written back with an old chunk after the switch (a
        writer that read before it) is switched again before the delete."""
        self.drain()
        self.work()
        old = ChunkRef(1, 13, 1013, crc32c(bytes([13]) * 1013))
        self.successResultOf(self.store.put_file(FileRecord("/late", 1013, (old,))))
        self.clock.advance(61)
        self.work()
        late = self.successResultOf(self.store.get_file("/late"))
        self.assertEqual(late.chunks[0].group_id, 2)
        self.read_all()

    def test_resumes_after_a_crash(self):
        """A move recorded and copied but not switched (the chunkmaster died)
        is copied again and switched by the next chunkmaster, under the same
        new id: nothing lost, nothing copied twice."""
        self.transfers = self.new_service(parallelism=0)  # the one that dies
        self.drain()
        old = ChunkRef(1, 11, 1011, crc32c(bytes([11]) * 1011))
        new = ChunkRef(2, 500, old.size, old.crc32c)
        transfer = self.status()["transfers"][0]["transfer_id"]
        self.successResultOf(self.store.record_move(ChunkMove(old, new, transfer)))
        self.successResultOf(self.client.put(address("s4"), 500, bytes([11]) * 1011))
        restarted = self.new_service()
        self.work(restarted)
        after = self.references()
        self.assertIn(new, after)
        self.assertEqual({c.group_id for c in after}, {2})
        self.assertEqual(len({c.file_id for c in after}), 4)
        for server_id in ("s4", "s5", "s6"):
            self.assertEqual(len(self.held(server_id)), 4)
        self.read_all()

    def test_source_damaged_replica_skipped(self):
        """A source replica with other bytes than the metadata says is not
        copied: another member's is."""
        self.client.server(address("s1")).chunks[11] = b"x" * 1011
        self.drain()
        self.work()
        self.read_all()

    def reads(self):
        """@return: a list that gets C{(address, file_id)} of every GET."""
        reads, get = [], self.client.get

        def logged(address, file_id, *args, **kwargs):
            reads.append((address, file_id))
            return get(address, file_id, *args, **kwargs)

        self.patch(self.client, "get", logged)
        return reads

    def test_reads_from_a_replica_clients_do_not_read(self):
        """Each chunk is read once, from a member other than its preferred
        replica (the one imageservers read it from first)."""
        members = self.cluster.members(1)
        reads = self.reads()
        self.drain()
        self.work()
        self.assertEqual(sorted(f for _, f in reads), [11, 12, 13, 14])
        for source, file_id in reads:
            self.assertNotEqual(source, preferred_replica(members, file_id).address)

    def test_chain_copies(self):
        """By default each chunk goes to the target group in one chain
        through its three members (the chunkmaster sends it once)."""
        self.drain()
        self.work()
        self.assertEqual(len(self.client.chains), 4)
        for chain in self.client.chains:
            self.assertEqual(sorted(chain), sorted(address(s) for s in ("s4", "s5", "s6")))
        self.read_all()

    def test_fanout_copies(self):
        """With fan-out each member of the target group gets a PUT."""
        self.transfers = self.new_service(replication="fanout")
        self.drain()
        self.work()
        self.assertEqual(self.client.chains, [])
        for server_id in ("s4", "s5", "s6"):
            self.assertEqual(self.client.calls[("put", address(server_id))], 4)
        self.read_all()

    def test_read_only_member_read_first(self):
        """A member serving no writes (DRAINING) is read before the others."""
        self.successResultOf(Deferred.fromCoroutine(self.cluster.drain_server("s2")))
        reads = self.reads()
        self.drain()
        self.work()
        self.assertEqual(reads, [(address("s2"), f) for f in (11, 12, 13, 14)])

    def test_no_target_waits(self):
        """With no other writable group, a drain is refused."""
        self.beat("s4", 2, used=0)
        self.successResultOf(Deferred.fromCoroutine(self.cluster.set_group_read_only(2, True)))
        failure = self.failureResultOf(Deferred.fromCoroutine(self.transfers.drain(1)))
        self.assertIn("no writable group", failure.getErrorMessage())

    def cancel_with_a_copy_unswitched(self):
        """
        Start a drain, copy chunk 11 to s4 as file 500 without switching
        it, then cancel the drain.

        @return: the transfer's record and chunk 11's old reference.
        """
        self.transfers = self.new_service(parallelism=0)
        record = self.drain()
        old = ChunkRef(1, 11, 1011, crc32c(bytes([11]) * 1011))
        new = ChunkRef(2, 500, old.size, old.crc32c)
        self.successResultOf(self.store.record_move(ChunkMove(old, new, record.transfer_id)))
        self.successResultOf(self.client.put(address("s4"), 500, bytes([11]) * 1011))
        self.successResultOf(Deferred.fromCoroutine(self.transfers.cancel(record.transfer_id)))
        return record, old

    def test_cancel_abandons_unswitched(self):
        """Cancelling deletes the new copies of a move not switched yet and
        leaves the references where they were."""
        _, old = self.cancel_with_a_copy_unswitched()
        self.work(self.new_service())
        self.assertEqual(self.held("s4"), set())
        self.assertIn(old, self.references())
        self.assertEqual(self.status()["transfers"][0]["state"], "cancelled")

    def test_requests_carry_the_transfer_id(self):
        """A transfer's reads, copies and deletes carry its id as their
        trace, not the id of the admin's request that started it, and a
        cancelled transfer's deletes carry it too."""
        self.client.traces.clear()
        record = run_for("admin-post", self.drain)
        run_for("admin-post", self.work)
        self.clock.advance(61)
        run_for("another-request", self.work)
        traces = {(operation, trace) for operation, _, _, trace in self.client.traces}
        self.assertEqual(traces, {(operation, record.transfer_id)
                                  for operation in ("get", "put", "delete")})

    def test_cancelled_deletes_carry_the_transfer_id(self):
        """The deletes of a cancelled transfer's copies carry its id."""
        record, _ = self.cancel_with_a_copy_unswitched()
        self.client.traces.clear()
        run_for("admin-delete", self.work, self.new_service())
        self.assertEqual(self.held("s4"), set())
        self.assertEqual({(operation, trace) for operation, _, _, trace in self.client.traces},
                         {("delete", record.transfer_id)})

    def test_unreadable_chunk_holds_up_no_other(self):
        """A chunk no member of the source gives back right is tried again
        at every batch, beside the others: they all move, it stays, and
        the transfer runs on with one chunk left."""
        for n in (1, 2, 3):
            self.client.server(address(f"s{n}")).chunks[13] = b"x" * 1013
        self.transfers = self.new_service(batch=1)
        self.drain()
        for _ in range(6):
            self.work()
            self.clock.advance(5)
        self.assertEqual({c.file_id for c in self.references() if c.group_id == 1}, {13})
        transfer = self.status()["transfers"][0]
        self.assertEqual((transfer["state"], transfer["chunks_done"], transfer["chunks_left"]),
                         ("running", 3, 1))

    def test_cancel_during_a_batch(self):
        """A cancel that comes while a batch copies is not undone by the
        batch's save of its counters: the transfer stops, the chunks the
        batch switched stay moved, and nothing more moves."""
        service = self.new_service(rate=3000, parallelism=1)
        self.transfers = service
        record = self.drain()
        d = service.kick()
        self.clock.advance(0.5)  # the first of four chunks copied
        self.assertNoResult(d)
        self.successResultOf(Deferred.fromCoroutine(service.cancel(record.transfer_id)))
        self.clock.pump([0.5] * 20)
        self.successResultOf(d)
        self.work()
        transfer = self.status()["transfers"][0]
        self.assertEqual(transfer["state"], "cancelled")
        moved = transfer["chunks_done"]
        # The chunk copied before the cancel is switched, the rest are not.
        self.assertEqual(moved, 1)
        self.assertEqual({c.file_id for c in self.references() if c.group_id == 1},
                         {12, 13, 14})
        self.assertEqual(self.held("s4"), {c.file_id for c in self.references()
                                           if c.group_id == 2})
        self.clock.pump([1.0] * 100)
        self.work()
        self.assertEqual(self.status()["transfers"][0]["chunks_done"], moved)
        self.assertEqual(self.status()["transfers"][0]["state"], "cancelled")
        self.read_all()

    def release_all(self):
        while self.client.held:
            self.client.release()

    def garbage(self):
        return {g.chunk for g in self.successResultOf(self.store.list_garbage())}

    def test_owner_deleted_mid_move(self):
        """A chunk whose only owner is deleted while it is being copied
        leaves no orphan: after the delay its old copies are deleted and
        its new copy, named by nothing, is recorded as garbage."""
        self.client.hold = {"put"}
        self.drain()
        d = self.transfers.kick()
        moving = {m.old.file_id: m for m in self.successResultOf(self.store.list_moves())}
        self.assertEqual(sorted(moving), [11, 12, 13, 14])
        self.successResultOf(self.store.delete_upload("u1"))  # chunk 14's only owner
        self.client.hold = set()
        self.release_all()
        self.successResultOf(d)
        self.assertEqual(self.garbage(), set())
        self.clock.advance(61)
        self.work()
        self.assertEqual(self.garbage(), {moving[14].new})
        for server_id in ("s1", "s2", "s3"):
            self.assertEqual(self.held(server_id), set())
        self.assertEqual(self.status()["transfers"][0]["state"], "done")

    def test_target_member_down_mid_copy(self):
        """A target member dying mid-copy: the moves are given up, their
        copies deleted where they can be and recorded as garbage for the
        member that is down; nothing switched."""
        self.client.hold = {"put"}
        before = self.references()
        self.drain()
        d = self.transfers.kick()
        self.client.server(address("s5")).mode = DOWN
        self.clock.advance(3000)
        for n in (1, 2, 3, 4, 6):
            self.beat(f"s{n}", 1 if n <= 3 else 2)
        self.clock.advance(599)
        self.clock.pump([1] * 3)  # s5 unheard for its heartbeat timeout: DOWN
        self.assertFalse(self.cluster.writable(2))
        self.client.hold = set()
        self.release_all()
        self.successResultOf(d)
        self.assertEqual(self.references(), before)
        self.assertEqual(self.successResultOf(self.store.list_moves()), [])
        self.assertEqual({(c.group_id, c.size) for c in self.garbage()},
                         {(2, c.size) for c in before})
        for server_id in ("s4", "s6"):
            self.assertEqual(self.held(server_id), set())
        self.assertEqual(self.status()["transfers"][0]["state"], "running")

    def test_chunk_collected_before_its_copy(self):
        """A move recorded before a crash whose chunk was then deleted and
        collected (no copy left to read) is given up, not retried forever."""
        self.transfers = self.new_service(parallelism=0)
        record = self.drain()
        old = ChunkRef(1, 14, 60, crc32c(b"upload" * 10))
        new = ChunkRef(2, 500, old.size, old.crc32c)
        self.successResultOf(self.store.record_move(ChunkMove(old, new, record.transfer_id)))
        self.successResultOf(self.store.delete_upload("u1"))
        for server_id in ("s1", "s2", "s3"):
            del self.client.server(address(server_id)).chunks[14]
        self.work(self.new_service())
        self.assertEqual([m.old.file_id for m in self.successResultOf(self.store.list_moves())],
                         [11, 12, 13])
        self.assertEqual(self.status()["transfers"][0]["chunks_done"], 3)
        self.assertNotIn(new, self.references())

    def test_rate_limit(self):
        """At a rate limit, the copies take the time the bytes need."""
        service = self.new_service(rate=3000, parallelism=1)
        self.successResultOf(Deferred.fromCoroutine(service.drain(1)))
        d = service.kick()
        self.assertNoResult(d)
        self.clock.pump([0.5] * 20)
        self.successResultOf(d)
        # Four chunks, three replicas each: about 12.2 kB at 3 kB/s.
        self.assertGreaterEqual(self.clock.seconds(), 1000 + 3)

    def test_rate_limit_holds(self):
        """Two copies at once share the limit: the drain takes what its
        bytes need at that rate (the first chunk's go at once), no more."""
        service = self.new_service(rate=3000, parallelism=2)
        self.successResultOf(Deferred.fromCoroutine(service.drain(1)))
        d = service.kick()
        while not d.called:
            self.clock.advance(0.01)
        self.successResultOf(d)
        written = 3 * (1011 + 1012 + 1013 + 60)
        took = self.clock.seconds() - 1000
        self.assertGreaterEqual(took, (written - 3 * 60) / 3000)
        self.assertLessEqual(took, written / 3000 + 0.05)

    def test_progress(self):
        """Half-way, the status shows chunks and bytes done and left, the
        byte rate of the batches and the time left at that rate."""
        service = self.new_service(rate=3000, parallelism=1, batch=2)
        self.transfers = service
        self.drain()
        d = service.kick()
        seen = None
        while seen is None:
            self.clock.advance(0.01)
            transfer = self.status()["transfers"][0]
            if transfer["chunks_done"]:
                seen = transfer
        self.assertEqual((seen["chunks_done"], seen["chunks_left"], seen["bytes_done"]),
                         (2, 2, 1011 + 1012))
        # The pacer lets the first chunk go at once and holds the second
        # until the first's three copies are paid for: 3033 B at 3000 B/s.
        self.assertLess(abs(seen["rate"] - 2023 / (3033 / 3000)), 100, seen)
        # The two chunks left, at the average chunk size, at that rate.
        self.assertLess(abs(seen["eta"] - 2 * 1011.5 / seen["rate"]), 0.1, seen)
        self.clock.pump([0.5] * 20)
        self.successResultOf(d)
        done = self.status()["transfers"][0]
        self.assertEqual((done["state"], done["chunks_left"], done["eta"]), ("deleting", 0, None))


    def test_progress_before_the_first_switch(self):
        """With batches larger than the transfer, the status shows the chunks
        left, the rate and the time left from the first chunk copied on,
        not once the batch is switched."""
        service = self.new_service(rate=3000, parallelism=1)
        self.transfers = service
        self.drain()
        d = service.kick()
        self.clock.advance(0.5)  # the first chunk's copies went at once
        transfer = self.status()["transfers"][0]
        self.assertEqual((transfer["chunks_done"], transfer["chunks_left"]), (0, 4))
        self.assertLess(abs(transfer["rate"] - 1011 / 0.5), 1, transfer)
        self.assertLess(abs(transfer["eta"] - 4 * 1011 / transfer["rate"]), 0.1, transfer)
        self.clock.pump([0.5] * 20)
        self.successResultOf(d)

    def test_rate_is_of_the_last_window(self):
        """A transfer's rate is the bytes copied in the last window: it
        falls to 0 once copies stop."""
        service = self.new_service(rate=3000, parallelism=1)
        self.transfers = service
        self.drain()
        d = service.kick()
        self.clock.pump([0.5] * 20)
        self.successResultOf(d)
        self.assertGreater(self.status()["transfers"][0]["rate"], 0)
        self.clock.advance(31)
        self.assertEqual(self.status()["transfers"][0]["rate"], 0)


class RebalanceTests(TransferTestCase):

    def test_balanced(self):
        self.assertIsNone(self.successResultOf(Deferred.fromCoroutine(
            self.transfers.rebalance(0.1))))

    def test_fullest_to_emptiest(self):
        """Group 1 at 50%, group 2 at 0%: half the difference moves."""
        for n in (1, 2, 3):
            self.beat(f"s{n}", 1, used=50 * GiB)
        record = self.successResultOf(Deferred.fromCoroutine(self.transfers.rebalance(0.1)))
        self.assertEqual((record.source_group, record.target_groups, record.byte_budget),
                         (1, (2,), 25 * GiB))
        self.work()
        self.assertEqual({c.group_id for c in self.references()}, {2})
        self.assertTrue(self.cluster.writable(1))

    def test_budget_moves_no_chunk_past_the_balance(self):
        """A budget of 1500 B with chunks of about 1000 B moves one: a
        second would leave the groups further apart than they were."""
        for n in (1, 2, 3):
            self.beat(f"s{n}", 1, used=3000)
        record = self.successResultOf(Deferred.fromCoroutine(self.transfers.rebalance(0)))
        self.assertEqual(record.byte_budget, 1500)
        self.work()
        moved = [c for c in self.references() if c.group_id == 2]
        self.assertEqual([c.size for c in moved], [1011])
        self.assertEqual(self.status()["transfers"][0]["state"], "deleting")


class StoreTests(SynchronousTestCase):
    """switch_moves on the memory store; the SQL store is held to the same
    in speedy.test.test_metadata's conformance tests when they cover it."""

    def test_record_twice_refused(self):
        store = MemoryMetadataStore(Clock())
        move = ChunkMove(ChunkRef(1, 1, 5, 7), ChunkRef(2, 9, 5, 7), "t")
        self.successResultOf(store.record_move(move))
        self.failureResultOf(store.record_move(attrs.evolve(move, new=ChunkRef(2, 10, 5, 7))))
