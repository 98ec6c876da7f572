"""
Tests for L{speedy.imageserver.reader}: failover reads with bad-replica
reports, read-ahead in order, byte ranges, back-pressure and cancellation.
"""

from collections import Counter
from random import Random

from attrs import evolve
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectionLost
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from speedy import errors
from speedy.crc import crc32c
from speedy.imageserver.placement import preferred_replica
from speedy.imageserver.reader import (
    AFFINITY_SLACK, BAD_FOR, WRITE_PIECE, ReplicaReader, segments)
from speedy.records import DOWN as STATE_DOWN, ChunkRef
from speedy.testing import CORRUPT, DOWN, PARTIAL, SLOW, FakeCluster

G1 = ["10.0.0.1:8001", "10.0.0.2:8001", "10.0.0.3:8001"]
DATA = bytes(range(256)) * 4  # 1024 bytes: 8 chunks of 128


class Consumer(StringTransport):
    """A consumer that records whether its producer was unregistered."""

    unregistered = False

    def unregisterProducer(self):
        self.unregistered = True
        StringTransport.unregisterProducer(self)


class ReaderTests(SynchronousTestCase):
    def setUp(self):
        self.cluster = FakeCluster({1: G1}, chunk_size=128, parallelism=3)
        self.storage = self.cluster.storage
        writer = self.storage.writer()
        writer.write(DATA)
        self.refs = self.successResultOf(writer.finish())
        self.client = self.cluster.client

    def read(self, offset=0, length=len(DATA)):
        consumer = Consumer()
        d = self.storage.read(self.refs, offset, length, consumer)
        return d, consumer

    def bad_replicas(self):
        return self.successResultOf(self.cluster.metadata.list_bad_replicas())

    def test_whole_file(self):
        d, consumer = self.read()
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(consumer.value(), DATA)
        self.assertTrue(consumer.unregistered)

    def test_ranges(self):
        """A range that starts and ends inside chunks reads just those
        bytes, with range GETs for the partial chunks."""
        for offset, length in [(0, 1), (100, 200), (128, 128), (1000, 24), (5, 0)]:
            d, consumer = self.read(offset, length)
            self.successResultOf(d)
            self.assertEqual(consumer.value(), DATA[offset:offset + length])

    def test_segments(self):
        refs = [ChunkRef(1, i, 10, 0) for i in range(3)]
        self.assertEqual(segments(refs, 5, 10), [(refs[0], 5, 5), (refs[1], 0, 5)])
        self.assertEqual(segments(refs, 0, 30), [(r, 0, 10) for r in refs])
        self.assertEqual(segments(refs, 30, 0), [])
        with self.assertRaises(errors.RangeNotSatisfiable):
            segments(refs, 25, 6)

    def test_reads_go_to_the_preferred_replica(self):
        """Each chunk is read from its preferred replica (the one that kept
        it in memory), not spread over the group at random."""
        d, consumer = self.read()
        self.successResultOf(d)
        servers = self.cluster.view.current.groups[1].servers
        expected = Counter(preferred_replica(servers, r.file_id).address for r in self.refs)
        got = Counter({address: n for (op, address), n in self.client.calls.items()
                       if op.startswith("get")})
        self.assertEqual(got, expected)

    def test_standalone_replica_reader(self):
        """A ReplicaReader needs only what it is given: a client, a view, a
        metadata store, a clock and counters; a bad replica it meets is
        counted there and recorded in that store."""
        counters = Counter()
        reader = ReplicaReader(self.client, self.cluster.view, self.cluster.metadata,
                               self.cluster.clock, counters, rng=Random(1))
        ref = self.refs[0]
        self.assertEqual(self.successResultOf(reader.fetch(1, ref.file_id)), DATA[:128])
        self.client.server(preferred_replica(
            self.cluster.view.current.groups[1].servers, ref.file_id).address).mode = CORRUPT
        self.assertEqual(self.successResultOf(reader.fetch(1, ref.file_id)), DATA[:128])
        self.assertEqual(counters["bad_replicas"], 1)
        self.assertEqual(len(self.bad_replicas()), 1)

    def test_busy_or_down_preferred_replica_is_passed_over(self):
        """The preferred replica leads while it has at most
        C{AFFINITY_SLACK} more reads in flight than the least busy member;
        beyond that, or when it is down, the least busy goes first."""
        replicas = self.storage.replicas
        servers = self.cluster.view.current.groups[1].servers
        file_id = self.refs[0].file_id
        keeper = preferred_replica(servers, file_id)
        self.assertIs(replicas.by_load(1, file_id)[0], keeper)
        replicas.reading[keeper.address] = AFFINITY_SLACK
        self.assertIs(replicas.by_load(1, file_id)[0], keeper)
        replicas.reading[keeper.address] = AFFINITY_SLACK + 1
        self.assertIsNot(replicas.by_load(1, file_id)[0], keeper)
        replicas.reading[keeper.address] = 0
        view = self.cluster.view.current
        group = view.groups[1]
        servers = tuple(evolve(s, state=STATE_DOWN) if s is keeper else s for s in group.servers)
        self.cluster.view.current = evolve(
            view, groups={1: evolve(group, servers=servers)})
        self.assertEqual(replicas.by_load(1, file_id)[-1].server_id, keeper.server_id)

    def test_known_bad_replica_read_last(self):
        """A replica found bad for a chunk is read last for it from then
        on (until C{BAD_FOR} passes), even when it is the preferred one."""
        replicas = self.storage.replicas
        servers = self.cluster.view.current.groups[1].servers
        ref = self.refs[0]
        keeper = preferred_replica(servers, ref.file_id)
        self.client.server(keeper.address).mode = CORRUPT
        d, consumer = self.read(0, 128)
        self.successResultOf(d)
        self.client.server(keeper.address).mode = None
        self.assertEqual(replicas.by_load(1, ref.file_id)[-1], keeper)
        gets = self.client.calls["get", keeper.address]
        self.successResultOf(self.read(0, 128)[0])
        self.assertEqual(self.client.calls["get", keeper.address], gets)
        self.cluster.clock.advance(BAD_FOR + 1)
        self.assertIs(replicas.by_load(1, ref.file_id)[0], keeper)

    def test_rebuilding_replica_read_last(self):
        """A member being rebuilt lacks chunks: it is read last."""
        replicas = self.storage.replicas
        view = self.cluster.view.current
        group = view.groups[1]
        file_id = self.refs[0].file_id
        keeper = preferred_replica(group.servers, file_id)
        servers = tuple(evolve(s, rebuilding=True) if s is keeper else s for s in group.servers)
        self.cluster.view.current = evolve(view, groups={1: evolve(group, servers=servers)})
        self.assertEqual(replicas.by_load(1, file_id)[-1].server_id, keeper.server_id)

    def test_failover_on_down_and_slow(self):
        """A replica that is down or times out is skipped; it is not reported
        as bad (it is unreachable, not damaged)."""
        self.client.server(G1[0]).mode = DOWN
        self.client.server(G1[1]).mode = SLOW
        d, consumer = self.read()
        self.cluster.clock.pump([30] * 9)
        self.successResultOf(d)
        self.assertEqual(consumer.value(), DATA)
        self.assertEqual(self.bad_replicas(), [])

    def test_corrupt_replica_reported(self):
        """A replica answering CHECKSUM_MISMATCH: the read comes from another,
        and the bad replica is recorded for repair."""
        self.client.server(G1[0]).mode = CORRUPT
        self.client.server(G1[1]).mode = CORRUPT
        self.storage.replicas.reading[G1[2]] = 5  # the good one looks busiest: tried last
        d, consumer = self.read()
        self.successResultOf(d)
        self.assertEqual(consumer.value(), DATA)
        bad = self.bad_replicas()
        self.assertEqual({(b.server_id, b.file_id) for b in bad},
                         {(f"cs-{a}", r.file_id) for a in G1[:2] for r in self.refs})
        self.assertIn("ChecksumMismatch", bad[0].reason)

    def test_damaged_bytes_caught(self):
        """Stored bytes damaged after the write: the read comes from the
        intact replica, and both damaged ones are reported."""
        ref = self.refs[0]
        for address in G1[:2]:
            copy = bytearray(self.client.server(address).chunks[ref.file_id])
            copy[7] ^= 0xFF
            self.client.server(address).chunks[ref.file_id] = bytes(copy)
        self.storage.replicas.reading[G1[2]] = 5  # the good one looks busiest: tried last
        d, consumer = self.read(0, 128)
        self.successResultOf(d)
        self.assertEqual(consumer.value(), DATA[:128])
        self.assertEqual(len(self.bad_replicas()), 2)
        self.assertIn("ChecksumMismatch", self.bad_replicas()[0].reason)

    def test_replaced_chunk_caught(self):
        """Two replicas hold other bytes of the same length under the
        chunk's id, consistent with their own CRC32C (replaced over the
        wire, or lying): the read compares what they hold with what the
        metadata recorded at write time, takes the bytes from the third,
        and reports both."""
        ref = self.refs[0]
        other = bytes(b ^ 0x55 for b in DATA[:128])
        for address in G1[:2]:
            server = self.client.server(address)
            server.chunks[ref.file_id] = other
            server.crcs[ref.file_id] = crc32c(other)
        self.storage.replicas.reading[G1[2]] = 5  # the good one looks busiest: tried last
        d, consumer = self.read(0, 128)
        self.successResultOf(d)
        self.assertEqual(consumer.value(), DATA[:128])
        self.assertEqual({b.server_id for b in self.bad_replicas()},
                         {f"cs-{a}" for a in G1[:2]})

    def test_truncated_answer(self):
        self.client.server(G1[0]).mode = PARTIAL
        self.client.server(G1[1]).mode = PARTIAL
        d, consumer = self.read(3, 100)
        self.successResultOf(d)
        self.assertEqual(consumer.value(), DATA[3:103])

    def give_client_pieces(self):
        """
        Give the fake client a C{get_stream} that answers each range in two
        bytes pieces, as the real client does with what its socket reads
        return.  @return: the list every piece answered is appended to.
        """
        answered = []

        def get_stream(address, file_id, offset, length, sink, expect=None):
            def cut(data):
                pieces = [bytes(data[:50]), bytes(data[50:])]
                answered.extend(pieces)
                for piece in pieces:
                    sink(piece)
                if len(data) < length:
                    raise errors.ConnectionFailed(f"{address} went away mid-answer")
            return self.client.get(address, file_id, offset, length).addCallback(cut)

        self.client.get_stream = get_stream
        return answered

    def test_pieces_written_as_they_are(self):
        """With a client that answers pieces, the consumer is handed those
        very bytes objects, in order: no copy on the way."""
        answered = self.give_client_pieces()
        consumer = Consumer()
        written = []
        consumer.write = lambda piece: (
            written.append(piece), StringTransport.write(consumer, piece))
        self.successResultOf(self.storage.read(self.refs, 0, len(DATA), consumer))
        self.assertEqual(consumer.value(), DATA)
        self.assertEqual(len(written), 2 * len(self.refs))
        self.assertTrue(all(w is a for w, a in zip(written, answered)))

    def test_pieces_truncated_answer(self):
        """Pieces adding up to fewer bytes than asked for are refused and
        the next replica is tried."""
        self.give_client_pieces()
        self.client.server(G1[0]).mode = PARTIAL
        self.client.server(G1[1]).mode = PARTIAL
        d, consumer = self.read(3, 100)
        self.successResultOf(d)
        self.assertEqual(consumer.value(), DATA[3:103])

    def hold_streams(self):
        """
        Give the fake client a C{get_stream} that waits for the test to
        feed its sink and fire its Deferred.  @return: the list each
        request is appended to, as (address, offset, length, sink,
        Deferred).
        """
        streams = []

        def get_stream(address, file_id, offset, length, sink, expect=None):
            d = Deferred(lambda d: streams.remove(entry))
            entry = (address, offset, length, sink, d)
            streams.append(entry)
            return d

        self.client.get_stream = get_stream
        return streams

    def test_bytes_flow_as_they_arrive(self):
        """A chunk's bytes reach the consumer as they arrive from the
        replica, before the chunk's end; while the consumer is paused they
        are held, and follow on resume."""
        streams = self.hold_streams()
        d, consumer = self.read(0, 128)
        [(_, offset, length, sink, answer)] = streams
        self.assertEqual((offset, length), (0, 128))
        sink(DATA[:50])
        self.assertEqual(consumer.value(), DATA[:50])
        consumer.producer.pauseProducing()
        sink(DATA[50:128])
        answer.callback(None)
        self.assertEqual(consumer.value(), DATA[:50])
        consumer.producer.resumeProducing()
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(consumer.value(), DATA[:128])

    def test_resume_after_mid_stream_failure(self):
        """A replica that breaks off mid-chunk: the rest of the chunk, from
        the byte reached, is asked of another replica; the consumer gets
        every byte once, and the unreachable replica is not reported."""
        streams = self.hold_streams()
        d, consumer = self.read(3, 100)
        first, _, _, sink, answer = streams[0]
        sink(DATA[3:40])
        answer.errback(errors.ConnectionFailed("the chunkserver died"))
        [(second, offset, length, sink, answer)] = streams[1:]
        self.assertNotEqual(second, first)
        self.assertEqual((offset, length), (40, 63))
        sink(DATA[40:103])
        answer.callback(None)
        self.successResultOf(d)
        self.assertEqual(consumer.value(), DATA[3:103])
        self.assertEqual(self.bad_replicas(), [])

    def test_damage_found_after_bytes_went_out(self):
        """
        The whole-chunk CRC32C check fails at the chunk's end, after its
        bytes were written: they cannot be taken back, so the read fails
        with ChecksumMismatch (the HTTP layer then cuts the response short)
        instead of sending the chunk again, and the replica is reported.
        """
        streams = self.hold_streams()
        d, consumer = self.read(0, 128)
        address, _, _, sink, answer = streams[0]
        sink(b"x" * 128)
        answer.errback(errors.ChecksumMismatch("chunk arrived with another CRC32C"))
        self.failureResultOf(d, errors.ChecksumMismatch)
        self.assertEqual(len(streams), 1, "no other replica was asked")
        self.assertEqual(consumer.value(), b"x" * 128)
        self.assertTrue(consumer.unregistered)
        [bad] = self.bad_replicas()
        self.assertEqual(bad.server_id, f"cs-{address}")

    def test_missing_chunk_reported(self):
        ref = self.refs[2]
        del self.client.server(G1[2]).chunks[ref.file_id]
        self.client.server(G1[0]).mode = DOWN
        self.client.server(G1[1]).mode = DOWN
        d, consumer = self.read()
        self.assertIsInstance(self.failureResultOf(d).value, errors.Unavailable)
        [bad] = self.bad_replicas()
        self.assertEqual((bad.server_id, bad.file_id), (f"cs-{G1[2]}", ref.file_id))
        self.assertTrue(consumer.unregistered)
        self.assertEqual(consumer.value(), DATA[:256], "the chunks before it were sent")

    def test_read_ahead_in_order(self):
        """
        Up to `parallelism` chunks are fetched at once; they reach the
        consumer in file order whatever order they arrive in.
        """
        self.client.hold = {"get"}
        d, consumer = self.read()
        self.assertEqual(self.client.in_flight, 3)
        while self.client.held:
            self.client.release(reverse=True)
        self.successResultOf(d)
        self.assertEqual(consumer.value(), DATA)
        self.assertEqual(self.client.max_in_flight, 3)

    def test_back_pressure(self):
        """
        A paused consumer gets nothing more, and no fetch beyond the
        read-ahead window (the chunk being written and two ahead) starts;
        on resume the rest follows.
        """
        cluster = FakeCluster({1: G1}, chunk_size=WRITE_PIECE * 2, parallelism=2)
        writer = cluster.storage.writer()
        data = b"".join(bytes([i]) * WRITE_PIECE for i in range(10))
        writer.write(data)
        refs = self.successResultOf(writer.finish())
        consumer = Consumer()
        consumer.write = lambda piece: (
            StringTransport.write(consumer, piece), consumer.producer.pauseProducing())
        d = cluster.storage.read(refs, 0, len(data), consumer)
        self.assertEqual(len(consumer.value()), WRITE_PIECE)
        gets = sum(n for (op, _), n in cluster.client.calls.items() if op == "get")
        self.assertEqual(gets, 3)
        while not d.called:
            consumer.producer.resumeProducing()
        self.successResultOf(d)
        self.assertEqual(consumer.value(), data)

    def test_cancel_stops_upstream(self):
        self.client.hold = {"get"}
        d, consumer = self.read()
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(self.client.held, [])
        self.assertEqual(self.client.in_flight, 0)
        self.assertTrue(consumer.unregistered)

    def test_consumer_goes_away(self):
        self.client.hold = {"get"}
        d, consumer = self.read()
        consumer.producer.stopProducing()
        self.failureResultOf(d, ConnectionLost)
        self.assertEqual(self.client.held, [])

    def test_group_missing_from_view(self):
        consumer = Consumer()
        d = self.storage.read([ChunkRef(9, 1, 10, 0)], 0, 10, consumer)
        self.assertIsInstance(self.failureResultOf(d).value, errors.Unavailable)
