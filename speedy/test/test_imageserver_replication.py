"""
Tests for the imageserver's write path: group choice
(L{speedy.imageserver.placement}), prefetched file ids
(L{speedy.imageserver.fileids}) and the all-or-nothing replicated writer
(L{speedy.imageserver.replication}).
"""

import random
from collections import Counter

import google_crc32c
from attrs import evolve
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from speedy import errors
from speedy.imageserver.clusterview import ClusterView, GroupView, ServerView
from speedy.imageserver.fileids import FileIdRange
from speedy.imageserver.replication import AVOID_FOR
from speedy.imageserver.master import FailoverMasterClient
from speedy.imageserver.placement import choose_group, preferred_replica
from speedy.interfaces import IChunkedStorage, IChunkedWriter
from speedy.records import DOWN as STATE_DOWN, RW
from speedy.testing import DOWN, PARTIAL, SLOW, FakeCluster, FakeMaster

G1 = ["10.0.0.1:8001", "10.0.0.2:8001", "10.0.0.3:8001"]
G2 = ["10.0.0.4:8001", "10.0.0.5:8001", "10.0.0.6:8001"]


def group(group_id, free, state=RW, writable=True, n=3):
    return GroupView(group_id, writable, tuple(
        ServerView(f"s{group_id}-{i}", f"h{group_id}:{i}", state, free=free) for i in range(n)))


class PlacementTests(SynchronousTestCase):
    def view(self, *groups):
        return ClusterView(1, {g.group_id: g for g in groups})

    def test_only_groups_that_can_take_the_chunk(self):
        """Groups with a member not RW, too little room, or not writable are
        never chosen."""
        view = self.view(group(1, 100), group(2, 10**9, state=STATE_DOWN),
                         group(3, 10**9, writable=False), group(4, 1000))
        for seed in range(20):
            self.assertEqual(choose_group(view, 500, {}, random.Random(seed)).group_id, 4)

    def test_one_member_short_of_room_disqualifies(self):
        g = GroupView(1, True, (ServerView("a", "a:1", RW, free=10**9),
                                ServerView("b", "b:1", RW, free=10)))
        with self.assertRaises(errors.NoWritableGroup):
            choose_group(self.view(g), 100, {}, random.Random(0))

    def test_most_free_then_least_pending(self):
        """Of 4 groups the 3 with most room qualify (4 // 10 + 3); among
        them the least busy wins."""
        view = self.view(group(1, 400), group(2, 300), group(3, 200), group(4, 100))
        pending = {1: 2, 2: 0, 3: 0, 4: 0}
        chosen = {choose_group(view, 1, pending, random.Random(s)).group_id for s in range(50)}
        self.assertEqual(chosen, {2, 3})

    def test_random_among_the_best(self):
        view = self.view(*(group(i, 1000) for i in range(1, 6)))
        chosen = {choose_group(view, 1, {}, random.Random(s)).group_id for s in range(100)}
        self.assertEqual(len(chosen), 3)

    def test_exclude(self):
        view = self.view(group(1, 1000), group(2, 1000))
        self.assertEqual(choose_group(view, 1, {}, random.Random(0), exclude=[1]).group_id, 2)
        with self.assertRaises(errors.NoWritableGroup):
            choose_group(view, 1, {}, random.Random(0), exclude=[1, 2])

    def test_no_view(self):
        with self.assertRaises(errors.NoWritableGroup):
            choose_group(None, 1, {}, random.Random(0))

    def test_preferred_replica_is_agreed_and_spread(self):
        """Every imageserver (whatever order its view lists a group in)
        names the same preferred replica for a chunk, and the chunks of a
        group spread evenly over its members."""
        servers = group(1, 1000).servers
        counts = Counter()
        for file_id in range(3000):
            keeper = preferred_replica(servers, file_id)
            self.assertIs(preferred_replica(servers[::-1], file_id), keeper)
            counts[keeper.server_id] += 1
        self.assertEqual(len(counts), 3)
        for n in counts.values():
            self.assertTrue(850 <= n <= 1150, counts)

    def test_preferred_replica_moves_only_from_a_member_gone(self):
        """When a member leaves, the chunks it was preferred for move to the
        others; no other chunk changes its preferred replica."""
        servers = group(1, 1000, n=4).servers
        gone = servers[1]
        for file_id in range(1000):
            before = preferred_replica(servers, file_id)
            after = preferred_replica([s for s in servers if s is not gone], file_id)
            if before is not gone:
                self.assertIs(after, before)
        self.assertIsNone(preferred_replica((), 1))


class UploadBacklogTests(SynchronousTestCase):
    """Writers of a storage whose whole chunks waiting for their replicas
    may hold 8 bytes at most (chunks of 8 bytes, no fill slot limit)."""

    def setUp(self):
        self.cluster = FakeCluster({1: G1}, chunk_size=8, parallelism=2, upload_backlog=8)
        self.storage = self.cluster.storage
        self.gate = self.storage.fill_gate

    def test_whole_chunks_hold_back_new_ones(self):
        """While two whole chunks wait for their puts, no writer starts a
        new chunk; once they are stored the waiting write goes on, and
        every stream is stored whole with nothing left held."""
        self.cluster.client.hold = {"put"}
        first, second, third = (self.storage.writer() for _ in range(3))
        self.successResultOf(first.write(b"a" * 8))
        self.successResultOf(second.write(b"b" * 8))  # 8 bytes held: still open
        self.assertEqual(self.gate.held, 16)
        waiting = third.write(b"c")
        self.assertNoResult(waiting)
        self.cluster.client.hold = set()
        self.cluster.client.release()
        self.successResultOf(waiting)
        self.assertEqual(self.gate.held, 0)
        for writer, data in ((first, b"a" * 8), (second, b"b" * 8), (third, b"c")):
            refs = self.successResultOf(writer.finish())
            self.assertEqual(b"".join(self.cluster.copies(r)[G1[0]] for r in refs), data)
        self.assertEqual((self.gate.held, self.gate.holders, self.gate.waiting), (0, 0, 0))

    def test_failed_chunks_are_released(self):
        """Chunks that failed leave the backlog."""
        for address in G1:
            self.cluster.client.server(address).mode = DOWN
        failing = self.storage.writer()
        self.successResultOf(failing.write(b"a" * 8))
        self.failureResultOf(failing.finish(), errors.Unavailable)
        self.assertEqual(self.gate.held, 0)

    def test_aborted_chunks_are_released(self):
        """Queued chunks an abort dropped leave the backlog at once, those
        in flight when their puts end."""
        self.cluster.client.hold = {"put"}
        aborted = self.storage.writer()
        written = aborted.write(b"x" * 8 * 3)  # two chunks in flight, one queued
        self.assertEqual(self.gate.held, 24)
        done = aborted.abort()
        self.failureResultOf(written, errors.BadRequest)
        self.assertEqual(self.gate.held, 16)
        self.cluster.client.hold = set()
        self.cluster.client.release()
        self.successResultOf(done)
        self.assertEqual(self.gate.held, 0)

    def test_cut_through_chunks_are_held_until_stored(self):
        """A chunk cut through is held from its seal until its puts end."""
        self.storage.cut_through = 4
        self.cluster.client.hold = {"put"}
        writer = self.storage.writer(length=8)
        self.successResultOf(writer.write(b"z" * 8))
        self.assertEqual(self.gate.held, 8)
        finished = writer.finish()
        self.cluster.client.hold = set()
        self.cluster.client.release()
        self.successResultOf(finished)
        self.assertEqual(self.gate.held, 0)


class FillGateWriterTests(SynchronousTestCase):
    """Writers of a storage with one fill slot (chunks of 8 bytes)."""

    def setUp(self):
        self.cluster = FakeCluster({1: G1}, chunk_size=8, parallelism=2, fill_slots=1)
        self.storage = self.cluster.storage
        self.gate = self.storage.fill_gate

    def test_one_fills_at_a_time(self):
        """A second writer's write waits while the first fills a chunk, and
        goes on once that chunk is sealed; both streams are stored whole."""
        first, second = self.storage.writer(), self.storage.writer()
        self.successResultOf(first.write(b"aaaa"))
        waiting = second.write(b"bbbb")
        self.assertNoResult(waiting)
        self.successResultOf(first.write(b"aaaa"))  # the chunk is whole: sealed
        self.successResultOf(waiting)
        self.successResultOf(second.write(b"bbbb"))
        for writer, byte in ((first, b"a"), (second, b"b")):
            [ref] = self.successResultOf(writer.finish())
            self.assertEqual(list(self.cluster.copies(ref).values()), [byte * 8] * 3)
        self.assertEqual((self.gate.holders, self.gate.waiting), (0, 0))

    def test_finish_gives_the_pass_back(self):
        """The last, partial chunk of a stream gives its pass back at finish."""
        first, second = self.storage.writer(), self.storage.writer()
        self.successResultOf(first.write(b"abc"))
        waiting = second.write(b"x")
        first.finish()
        self.successResultOf(waiting)

    def test_slow_client_gives_its_slot_back(self):
        """A writer whose client sends less than the gate's minimum rate
        lets the next one in, and goes on writing its chunk outside the
        count; the chunk sealed, its next write queues again."""
        first, second, third = (self.storage.writer() for _ in range(3))
        self.successResultOf(first.write(b"abc"))
        waiting = second.write(b"x")
        self.cluster.clock.advance(self.gate.idle)
        self.successResultOf(waiting)
        self.successResultOf(first.write(b"def"))  # unmetered: not held up
        self.successResultOf(first.write(b"gh"))  # the chunk is sealed
        again = first.write(b"i")
        self.assertNoResult(again)
        self.assertNoResult(third.write(b"y"))
        self.successResultOf(second.finish())
        self.successResultOf(again)
        self.assertEqual([r.size for r in self.successResultOf(first.finish())], [8, 1])

    def test_abort_while_waiting(self):
        """A writer aborted while it waits (its client went away) leaves the
        queue, and its pending write fails."""
        first, second, third = (self.storage.writer() for _ in range(3))
        self.successResultOf(first.write(b"a"))
        waiting, after = second.write(b"b"), third.write(b"c")
        self.successResultOf(second.abort())
        self.failureResultOf(waiting)
        self.assertEqual(self.gate.waiting, 1)
        self.successResultOf(first.abort())
        self.successResultOf(after)
        self.assertEqual(self.gate.holders, 1)

    def test_failed_chunk_gives_the_pass_back(self):
        """A writer whose chunk could not be stored holds no pass."""
        for address in G1:
            self.cluster.client.server(address).mode = DOWN
        first, second = self.storage.writer(), self.storage.writer()
        self.successResultOf(first.write(b"a" * 8))  # sealed; its put fails
        self.failureResultOf(first.finish(), errors.Unavailable)
        self.successResultOf(second.write(b"b"))
        self.assertEqual(self.gate.holders, 1)


class CutThroughWriterTests(SynchronousTestCase):
    """Writers told their stream's length send each chunk on as it arrives
    (chunks of 8 bytes, two in flight per writer)."""

    def setUp(self):
        self.cluster = FakeCluster({1: G1, 2: G2}, chunk_size=8, parallelism=2, cut_through=4)
        self.storage = self.cluster.storage
        self.client = self.cluster.client

    def test_puts_start_with_the_first_byte(self):
        """A chunk's three puts are under way after its first bytes, and
        every chunk ends up whole on all members of its group."""
        data = bytes(range(20))
        writer = self.storage.writer(length=len(data))
        self.successResultOf(writer.write(data[:3]))
        self.assertEqual(len(self.client.growing_puts), 3)
        self.successResultOf(writer.write(data[3:]))
        refs = self.successResultOf(writer.finish())
        self.assertEqual([r.size for r in refs], [8, 8, 4])
        for ref, piece in zip(refs, (data[:8], data[8:16], data[16:])):
            self.assertEqual(ref.crc32c, google_crc32c.value(piece))
            self.assertEqual(list(self.cluster.copies(ref).values()), [piece] * 3)
        self.assertEqual(self.storage.counters["chunks_cut_through"], 3)
        self.assertEqual((self.client.growing_puts, self.storage.cutting), ([], 0))

    def test_unknown_length_waits_for_whole_chunks(self):
        writer = self.storage.writer()
        self.successResultOf(writer.write(b"abc"))
        self.assertEqual((self.client.growing_puts, self.client.calls["put", G1[0]]), ([], 0))
        [ref] = self.successResultOf(writer.finish())
        self.assertEqual(ref.size, 3)
        self.assertEqual(self.storage.counters["chunks_cut_through"], 0)

    def test_limit(self):
        """Past C{cut_through} chunks at once, chunks wait to be whole."""
        self.storage.cut_through = 1
        first, second = self.storage.writer(length=8), self.storage.writer(length=8)
        self.successResultOf(first.write(b"a"))
        self.successResultOf(second.write(b"b"))
        self.assertEqual(len(self.client.growing_puts), 3)  # the first's only
        self.successResultOf(second.write(b"b" * 7))
        self.successResultOf(first.write(b"a" * 7))
        for writer, byte in ((first, b"a"), (second, b"b")):
            [ref] = self.successResultOf(writer.finish())
            self.assertEqual(list(self.cluster.copies(ref).values()), [byte * 8] * 3)
        self.assertEqual(self.storage.counters["chunks_cut_through"], 1)

    def test_no_overtaking_whole_chunks(self):
        """While a whole chunk is being stored, a chunk that starts later
        waits to be whole too: it does not take the link ahead of it."""
        self.client.hold = {"put"}
        whole = self.storage.writer()
        self.successResultOf(whole.write(b"w" * 8))  # sealed, its puts held
        later = self.storage.writer(length=8)
        self.successResultOf(later.write(b"l"))
        self.assertEqual(self.client.growing_puts, [])
        self.client.hold = set()
        self.client.release()
        self.successResultOf(whole.finish())
        self.successResultOf(later.write(b"l" * 7))
        self.successResultOf(later.finish())
        self.assertEqual(self.storage.counters["chunks_cut_through"], 0)
        after = self.storage.writer(length=8)
        self.successResultOf(after.write(b"a"))
        self.assertEqual(len(self.client.growing_puts), 3)

    def test_cut_through_chunks_count_against_parallelism(self):
        """With puts held, a third chunk waits to be whole behind two cut
        through, and the write that fills it waits too."""
        self.client.hold = {"put"}
        writer = self.storage.writer(length=24)
        self.successResultOf(writer.write(b"a" * 16))
        self.assertEqual(len(self.client.growing_puts), 0)  # whole, puts held
        waiting = writer.write(b"b" * 8)
        self.assertNoResult(waiting)
        self.assertEqual(self.client.in_flight, 2 * 3)
        self.client.hold = set()
        self.client.release()
        self.successResultOf(waiting)
        self.assertEqual(len(self.successResultOf(writer.finish())), 3)
        self.assertEqual(self.storage.counters["chunks_cut_through"], 2)

    def test_member_down_sends_the_kept_bytes_elsewhere(self):
        """A member failing a cut-through put: once the chunk is whole it
        goes to another group; the partial copies are deleted and recorded
        as garbage."""
        self.client.server(G1[1]).mode = DOWN
        self.storage.pending[2] = 1  # group 1 looks less busy: chosen first
        writer = self.storage.writer(length=8)
        self.successResultOf(writer.write(b"abcd"))
        self.assertEqual(sorted(self.client.growing_puts), [G1[0], G1[2]])
        self.successResultOf(writer.write(b"efgh"))
        [ref] = self.successResultOf(writer.finish())
        self.assertEqual(ref.group_id, 2)
        self.assertEqual(list(self.cluster.copies(ref).values()), [b"abcdefgh"] * 3)
        for address in G1:
            self.assertEqual(self.client.server(address).chunks, {})
        [garbage] = self.successResultOf(self.cluster.metadata.list_garbage())
        self.assertEqual(garbage.chunk.group_id, 1)

    def test_intent_before_the_first_byte(self):
        """With C{record_intent}, each chunk's group and file id are
        recorded (and waited for) before its puts start: cut through or
        whole, and for a retry on another group too."""
        self.client.server(G1[1]).mode = DOWN
        self.storage.pending[2] = 1  # group 1 looks less busy: chosen first
        recorded = []
        held = Deferred()

        def record_intent(ref):
            recorded.append((ref, len(self.client.growing_puts), self.client.in_flight))
            return held if len(recorded) == 1 else self.cluster.metadata.record_intents([ref], "t")
        writer = self.storage.writer(length=12, record_intent=record_intent)
        self.successResultOf(writer.write(b"abcd"))
        self.assertEqual(recorded, [(recorded[0][0], 0, 0)])  # its puts wait for the intent
        self.assertEqual(recorded[0][0].group_id, 1)
        self.assertEqual(self.client.growing_puts, [])
        held.callback(None)
        self.assertEqual(sorted(self.client.growing_puts), [G1[0], G1[2]])
        self.successResultOf(writer.write(b"efghijkl"))
        refs = self.successResultOf(writer.finish())
        tried = [ref for ref, _, _ in recorded]
        # the first chunk tried on group 1 (a member down), then on group 2;
        # the second chunk on group 2, which group 1's failure left alone
        self.assertEqual(sorted((r.group_id, r.size) for r in tried), [(1, 8), (2, 4), (2, 8)])
        for ref in refs:
            self.assertIn((ref.group_id, ref.file_id), [(r.group_id, r.file_id) for r in tried])

    def test_abort_mid_chunk_stores_nothing(self):
        writer = self.storage.writer(length=16)
        self.successResultOf(writer.write(b"x" * 10))
        self.successResultOf(writer.abort())
        self.assertEqual(self.client.growing_puts, [])
        for server in self.client.servers.values():
            self.assertEqual(server.chunks, {})
        self.assertEqual(self.storage.cutting, 0)

    def test_stream_ends_short(self):
        """A stream that ends short of its length fails at finish, and
        nothing of it stays stored once aborted."""
        writer = self.storage.writer(length=12)
        self.successResultOf(writer.write(b"x" * 10))
        failure = self.failureResultOf(writer.finish(), errors.BadRequest)
        self.assertIn("10 of the 12 bytes", str(failure.value))
        self.successResultOf(writer.abort())
        for server in self.client.servers.values():
            self.assertEqual(server.chunks, {})

    def test_every_member_refuses_mid_write(self):
        """Every member of every group refuses a cut-through chunk (as
        chunkservers with another cluster secret refuse the handshake): the
        write that completes the chunk fails with Unavailable, as do later
        ones and finish, and nothing stays stored once aborted."""
        for address in G1 + G2:
            self.client.server(address).mode = DOWN
        writer = self.storage.writer(length=16)
        self.successResultOf(writer.write(b"abcd"))
        self.failureResultOf(writer.write(b"efghijkl"), errors.Unavailable)
        self.failureResultOf(writer.write(b"mnop"), errors.Unavailable)
        self.failureResultOf(writer.finish(), errors.Unavailable)
        self.successResultOf(writer.abort())
        for server in self.client.servers.values():
            self.assertEqual(server.chunks, {})

    def test_stream_longer_than_declared(self):
        writer = self.storage.writer(length=4)
        self.failureResultOf(writer.write(b"abcde"), errors.BadRequest)
        self.successResultOf(writer.write(b"abcd"))
        self.assertEqual([r.size for r in self.successResultOf(writer.finish())], [4])


class FileIdRangeTests(SynchronousTestCase):
    def setUp(self):
        self.master = FakeMaster(Clock())
        self.ids = FileIdRange(self.master, batch=10, low_water=3)

    def take(self, n):
        return [self.successResultOf(self.ids.next()) for _ in range(n)]

    def test_unique_and_prefetched(self):
        """
        Ids are never repeated; the next range is fetched when fewer than
        the low watermark are left, not when they run out.
        """
        ids = self.take(25)
        self.assertEqual(len(set(ids)), 25)
        self.assertEqual(self.master.allocations, [(1, 11), (11, 21), (21, 31)])
        self.assertGreaterEqual(self.ids.available, 3)

    def test_master_outage(self):
        """
        While the master is down, ids keep coming from the range held; when
        it is used up callers get Unavailable; once the master is back, ids
        flow again.
        """
        self.take(1)
        self.master.down = True
        held = self.ids.available
        self.assertEqual(len(self.take(held)), held)
        self.assertIsInstance(self.failureResultOf(self.ids.next()).value, errors.Unavailable)
        self.master.down = False
        self.assertGreater(self.successResultOf(self.ids.next()), 0)

    def test_one_fetch_at_a_time(self):
        """Callers waiting on an empty range share one fetch."""
        calls = []
        pending = []

        def allocate(count):
            calls.append(count)
            d = Deferred()
            pending.append(d)
            return d

        self.master.allocate_file_ids = allocate
        waiting = [self.ids.next() for _ in range(3)]
        self.assertEqual(calls, [10])
        pending[0].callback((100, 110))
        self.assertEqual([self.successResultOf(d) for d in waiting], [100, 101, 102])


class FileIdHorizonTests(SynchronousTestCase):
    """Ids held ahead follow the rate of use, so that a chunkmaster outage
    of C{horizon} seconds at that rate stops no write."""

    def setUp(self):
        self.clock = Clock()
        self.master = FakeMaster(self.clock)
        self.ids = FileIdRange(self.master, batch=10, low_water=3, clock=self.clock,
                               horizon=600)

    def use(self, per_second, seconds):
        """Take C{per_second} ids a second for C{seconds}; @return: how many
        were refused."""
        refused = 0
        for _ in range(seconds):
            for _ in range(per_second):
                if self.ids.next().called is False:
                    refused += 1
            self.clock.advance(1)
        return refused

    def test_reserve_follows_the_rate(self):
        self.use(20, 60)
        self.assertLess(abs(self.ids.rate - 20), 1)
        self.assertGreaterEqual(self.ids.available, 20 * 600 - 20)
        self.assertLessEqual(max(end - start for start, end in self.master.allocations), 20 * 600)

    def test_ten_minute_outage(self):
        """At a steady 20 ids a second, ten minutes without the chunkmaster
        refuse nothing."""
        self.use(20, 60)
        self.master.down = True
        refused = 0
        for _ in range(600):
            for _ in range(20):
                d = self.ids.next()
                if d.called and isinstance(d.result, Failure):
                    refused += 1
                    d.addErrback(lambda _: None)
            self.clock.advance(1)
        self.assertEqual(refused, 0)

    def test_idle_then_low_water(self):
        """Without use, only the low watermark is held."""
        self.successResultOf(self.ids.next())
        self.clock.advance(120)
        self.assertEqual(self.ids.wanted, 3)


class FailoverMasterTests(SynchronousTestCase):
    """Several chunkmasters on one database: calls go to the one that
    answered last, and fail over on Unavailable."""

    def setUp(self):
        clock = Clock()
        self.first, self.second = FakeMaster(clock, first_id=1), FakeMaster(clock, first_id=1000)
        self.master = FailoverMasterClient([self.first, self.second])

    def test_failover_and_stay(self):
        self.assertEqual(self.successResultOf(self.master.allocate_file_ids(5)), (1, 6))
        self.first.down = True
        self.assertEqual(self.successResultOf(self.master.allocate_file_ids(5)), (1000, 1005))
        self.first.down = False
        self.assertEqual(self.successResultOf(self.master.allocate_file_ids(5)), (1005, 1010))
        self.assertEqual(self.master.current, 1)

    def test_all_down(self):
        self.first.down = self.second.down = True
        error = self.failureResultOf(self.master.allocate_file_ids(5), errors.Unavailable).value
        self.assertIn("no chunkmaster answered", str(error))


class WriterTests(SynchronousTestCase):
    def setUp(self):
        self.cluster = FakeCluster({1: G1, 2: G2}, chunk_size=8, parallelism=2)
        self.storage = self.cluster.storage

    def write(self, *pieces):
        writer = self.storage.writer()
        for piece in pieces:
            self.successResultOf(writer.write(piece))
        return writer, self.successResultOf(writer.finish())

    def test_interfaces(self):
        verifyObject(IChunkedStorage, self.storage)
        verifyObject(IChunkedWriter, self.storage.writer())

    def test_cut_into_chunks_on_every_member(self):
        """
        A stream is cut at the chunk size whatever the write sizes; each
        chunk is on all three members of its group, with its CRC32C.
        """
        data = bytes(range(30))
        writer, refs = self.write(data[:5], data[5:19], data[19:])
        self.assertEqual(writer.bytes_written, 30)
        self.assertEqual([r.size for r in refs], [8, 8, 8, 6])
        self.assertEqual(len({r.file_id for r in refs}), 4)
        pos = 0
        for ref in refs:
            piece = data[pos:pos + ref.size]
            pos += ref.size
            self.assertEqual(ref.crc32c, google_crc32c.value(piece))
            self.assertEqual(list(self.cluster.copies(ref).values()), [piece] * 3)

    def test_empty_stream(self):
        _, refs = self.write()
        self.assertEqual(refs, ())

    def test_preferred_replica_keeps_the_chunk(self):
        """Each chunk's put carries C{keep} to its preferred replica only:
        the one its reads go to first keeps it in memory."""
        _, refs = self.write(bytes(range(40)))
        for ref in refs:
            servers = self.cluster.view.current.groups[ref.group_id].servers
            keepers = [s for s in servers
                       if ref.file_id in self.cluster.client.server(s.address).kept]
            self.assertEqual(keepers, [preferred_replica(servers, ref.file_id)])

    def record_puts(self):
        """@return: the list the C{data} of each put is appended to."""
        received = []
        put = self.cluster.client.put

        def recording_put(address, file_id, data, keep=False):
            received.append(data)
            return put(address, file_id, data, keep)
        self.patch(self.cluster.client, "put", recording_put)
        return received

    def test_chunk_handed_on_as_the_pieces_written(self):
        """
        A chunk reaches every member as the pieces it was written in, never
        joined: a write that fits in the chunk is passed on as the very
        object, one straddling two chunks as its two parts; the CRC32C is
        that of the whole chunk.
        """
        received = self.record_puts()
        first, second, third = b"abc", b"defgh", b"ijklmnopq"
        _, refs = self.write(first, second, third)
        self.assertEqual(received, [(first, second)] * 3 + [(b"ijklmnop",)] * 3 + [(b"q",)] * 3)
        for pieces in received[:3]:
            self.assertIs(pieces[0], first)
            self.assertIs(pieces[1], second)
        self.assertEqual([r.crc32c for r in refs],
                         [google_crc32c.value(c) for c in (b"abcdefgh", b"ijklmnop", b"q")])
        self.assertEqual(list(self.cluster.copies(refs[0]).values()), [b"abcdefgh"] * 3)

    def test_mutable_write_changed_while_stored(self):
        """
        A bytearray written and changed by its owner while its chunk is
        still being stored (as a reused read buffer would be): what is
        stored, on every member, is what was written.
        """
        self.cluster.client.hold = {"put"}
        writer = self.storage.writer()
        data = bytearray(b"abcdefgh")
        self.successResultOf(writer.write(data))
        data[:] = b"XXXXXXXX"
        finished = writer.finish()
        self.cluster.client.release()
        [ref] = self.successResultOf(finished)
        self.assertEqual(ref.crc32c, google_crc32c.value(b"abcdefgh"))
        self.assertEqual(list(self.cluster.copies(ref).values()), [b"abcdefgh"] * 3)

    def test_store_chunk_of_pieces(self):
        """
        store_chunk takes a chunk as a list of bytes-like pieces: its size
        and CRC32C are those of the pieces joined, and a mutable piece is
        copied before it is handed on.
        """
        self.cluster.client.hold = {"put"}
        piece = bytearray(b"defgh")
        stored = self.storage.store_chunk([b"abc", piece, memoryview(b"ij")])
        piece[:] = b"XXXXX"
        self.cluster.client.release()
        ref = self.successResultOf(stored)
        self.assertEqual((ref.size, ref.crc32c), (10, google_crc32c.value(b"abcdefghij")))
        self.assertEqual(list(self.cluster.copies(ref).values()), [b"abcdefghij"] * 3)

    def assert_retried_elsewhere(self, broken_address):
        _, refs = self.write(b"abcdefgh")
        [ref] = refs
        self.assertEqual(ref.group_id, 2)
        self.assertEqual(list(self.cluster.copies(ref).values()), [b"abcdefgh"] * 3)
        garbage = self.successResultOf(self.cluster.metadata.list_garbage())
        self.assertEqual(len(garbage), 1)
        self.assertEqual(garbage[0].chunk.group_id, 1)
        self.assertNotEqual(garbage[0].chunk.file_id, ref.file_id)
        self.assertIn(broken_address, garbage[0].reason)
        for address in G1:
            if address != broken_address:
                self.assertEqual(self.cluster.client.server(address).chunks, {})
        return garbage[0].chunk

    def test_member_down_retries_on_another_group(self):
        """
        One member of the chosen group is down: the chunk is not counted as
        stored on the other two; it is written again to another group under
        a new file id, the two copies are deleted and recorded as garbage.
        """
        self.cluster.client.server(G1[1]).mode = DOWN
        self.storage.pending[2] = 1  # group 1 looks less busy: chosen first
        self.assert_retried_elsewhere(G1[1])

    def test_unreachable_group_avoided_until_the_view_changes(self):
        """
        A group with a member that cannot be reached takes no more chunks
        (no more copies written to its two live members and thrown away)
        until the cluster view changes.
        """
        self.cluster.client.server(G1[1]).mode = DOWN
        self.storage.pending[2] = 1  # group 1 looks less busy: chosen first
        self.assert_retried_elsewhere(G1[1])
        puts = self.cluster.client.calls["put", G1[0]]
        for _ in range(5):
            _, refs = self.write(b"12345678")
            self.assertEqual([r.group_id for r in refs], [2])
        self.assertEqual(self.cluster.client.calls["put", G1[0]], puts)
        self.cluster.client.server(G1[1]).mode = None
        view = self.cluster.view.current
        self.cluster.view.current = evolve(view, version=view.version + 1)
        self.storage.pending[2] = 1
        _, refs = self.write(b"abcdefgh")
        self.assertEqual([r.group_id for r in refs], [1])

    def test_unreachable_group_avoided_for_a_while_at_most(self):
        """Without a view change (the chunkmaster away), the group is tried
        again once AVOID_FOR has passed."""
        self.cluster.client.server(G1[1]).mode = DOWN
        self.storage.pending[2] = 1
        self.assert_retried_elsewhere(G1[1])
        self.cluster.client.server(G1[1]).mode = None
        self.cluster.clock.advance(AVOID_FOR - 1)
        self.assertEqual([r.group_id for r in self.write(b"12345678")[1]], [2])
        self.cluster.clock.advance(1)
        self.storage.pending[2] = 1
        self.assertEqual([r.group_id for r in self.write(b"abcdefgh")[1]], [1])

    def test_lost_acknowledgement_retries(self):
        """A member that stored the chunk but whose acknowledgement was lost
        counts as a failure too; its copy is deleted and recorded."""
        self.cluster.client.server(G1[2]).mode = PARTIAL
        self.storage.pending[2] = 1  # group 1 looks less busy: chosen first
        self.assert_retried_elsewhere(G1[2])
        self.assertEqual(self.cluster.client.server(G1[2]).chunks, {})

    def test_slow_member_times_out_and_retries(self):
        self.cluster.client.server(G1[0]).mode = SLOW
        self.storage.pending[2] = 1  # group 1 looks less busy: chosen first
        writer = self.storage.writer()
        writer.write(b"abcdefgh")
        finished = writer.finish()
        self.assertNoResult(finished)
        self.cluster.clock.advance(30)
        [ref] = self.successResultOf(finished)
        self.assertEqual(ref.group_id, 2)

    def test_every_group_fails(self):
        """
        When no group stores a chunk on all members, the writer fails with
        Unavailable; abort() deletes the chunks it did store.
        """
        writer = self.storage.writer()
        self.successResultOf(writer.write(b"12345678"))
        self.cluster.client.server(G1[0]).mode = DOWN
        self.cluster.client.server(G2[0]).mode = DOWN
        writer.write(b"abcdefgh")
        failure = self.failureResultOf(writer.finish())
        self.assertIsInstance(failure.value, errors.Unavailable)
        self.assertIsInstance(self.failureResultOf(writer.write(b"x")).value, errors.Unavailable)
        self.cluster.client.server(G1[0]).mode = None
        self.cluster.client.server(G2[0]).mode = None
        self.successResultOf(writer.abort())
        for address in G1 + G2:
            self.assertNotIn(b"12345678", self.cluster.client.server(address).chunks.values())

    def test_no_writable_group(self):
        self.storage.view.current = ClusterView(2, {})
        writer = self.storage.writer()
        writer.write(b"abcdefgh")
        self.assertIsInstance(self.failureResultOf(writer.finish()).value, errors.NoWritableGroup)

    def test_back_pressure(self):
        """
        With puts held, at most `parallelism` chunks are in flight; a write
        that leaves a full chunk queued behind them waits, and goes on when
        puts complete.
        """
        self.cluster.client.hold = {"put"}
        writer = self.storage.writer()
        self.successResultOf(writer.write(b"a" * 16))  # two chunks, both in flight
        waiting = writer.write(b"b" * 8)  # a third, queued
        self.assertNoResult(waiting)
        self.assertEqual(self.cluster.client.in_flight, 2 * 3)
        self.cluster.client.release()
        self.successResultOf(waiting)
        self.cluster.client.hold = set()
        self.cluster.client.release()
        self.assertEqual(len(self.successResultOf(writer.finish())), 3)
        self.assertEqual(self.cluster.client.max_in_flight, 2 * 3)

    def test_chunk_order_kept(self):
        """Chunks that complete out of order still come back in stream order."""
        self.cluster.client.hold = {"put"}
        writer = self.storage.writer()
        writer.write(b"11111111" + b"22222222")
        finished = writer.finish()
        self.cluster.client.release(reverse=True)
        refs = self.successResultOf(finished)
        self.assertEqual([self.cluster.copies(r)[self.group_members(r)[0]] for r in refs],
                         [b"11111111", b"22222222"])

    def group_members(self, ref):
        return [s.address for s in self.storage.view.current.groups[ref.group_id].servers]

    def test_abort_deletes(self):
        writer = self.storage.writer()
        writer.write(b"x" * 20)
        self.successResultOf(writer.abort())
        for server in self.cluster.client.servers.values():
            self.assertEqual(server.chunks, {})
        self.assertIsInstance(self.failureResultOf(writer.write(b"y")).value, errors.BadRequest)

    def test_delete_records_what_it_could_not_delete(self):
        _, refs = self.write(b"x" * 16)
        down = self.group_members(refs[0])[0]
        self.cluster.client.server(down).mode = DOWN
        self.successResultOf(self.storage.delete(refs))
        garbage = self.successResultOf(self.cluster.metadata.list_garbage())
        self.assertEqual([g.chunk for g in garbage],
                         [r for r in refs if down in self.group_members(r)])
        for ref in refs:
            for address, copy in self.cluster.copies(ref).items():
                self.assertEqual(copy is None, address != down)

    def test_master_outage_does_not_stop_writes(self):
        """While the prefetched range lasts, writes go on without the master."""
        self.write(b"x" * 8)
        self.cluster.master.down = True
        left = self.cluster.file_ids.available
        _, refs = self.write(b"y" * 8 * left)
        self.assertEqual(len(refs), left)
        writer = self.storage.writer()
        writer.write(b"z" * 8)
        self.assertIsInstance(self.failureResultOf(writer.finish()).value, errors.Unavailable)
