"""
Chain replication (CHAIN_PUT): a chunkserver stores a chunk and forwards
it as it arrives to the next member of its chain; the answer carries every
member's size and CRC-32C once all are durable, and anything failing
anywhere fails the whole chain.
"""

import os

from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import capturedLogs
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from speedy import errors
from speedy.chunkserver.protocol import FORWARD_BUFFER_LIMIT, ChunkServerFactory
from speedy.crc import crc32c
from speedy.imageserver.replication import chain_order
from speedy.logs import run_as
from speedy.records import ChunkInfo
from speedy.test.test_chunkserver_protocol import parse_frames
from speedy.test.test_testing import MemoryNetwork
from speedy.testing.chunkclient import DOWN, FakeChunkClient
from speedy.testing.chunkstore import MemoryChunkStore
from speedy.testing.cluster import FakeCluster
from speedy.wire.client import ChunkClient, chain_prefix
from speedy.wire.frames import (
    CHUNK_INFO, FLAG_ERROR, FLAG_RESPONSE, OP_CHAIN_PUT, Header, frame)
from speedy.wire.growing import GrowingChunk


A, B, C = "127.0.0.1:8001", "127.0.0.1:8002", "127.0.0.1:8003"


class ChainOnMemoryNetworkTests(SynchronousTestCase):
    """Three real chunkserver protocols over memory stores, each forwarding
    with its own L{ChunkClient}, on a L{MemoryNetwork}."""

    def setUp(self):
        self.clock = MemoryReactorClock()
        self.network = MemoryNetwork(self.clock)
        self.stores, self.forwarders = {}, []
        for address in (A, B, C):
            self.stores[address] = MemoryChunkStore()
            forwarders = [ChunkClient(self.clock, request_timeout=20.0 + 2 * after)
                          for after in range(2)]
            self.forwarders += forwarders
            self.network.listen(address, ChunkServerFactory(
                self.clock, self.stores[address], forwarder=forwarders.__getitem__))
        self.client = ChunkClient(self.clock, request_timeout=30.0)
        self.addCleanup(self.close)

    def close(self):
        self.network.stalled.clear()
        closing = [c.close() for c in [self.client] + self.forwarders]
        self.network.settle()
        for d in closing:
            self.successResultOf(d)

    def stored_on(self, file_id):
        return sorted(a for a, s in self.stores.items() if file_id in s._chunks)

    def test_three_durable_copies(self):
        """Every member holds the chunk, and the answer carries the size and
        CRC-32C of each, in chain order."""
        data = os.urandom(3 * 1024 * 1024 + 17)
        d = self.client.chain_put(A, 7, data, [B, C])
        self.network.settle()
        infos = self.successResultOf(d)
        self.assertEqual(infos, [ChunkInfo(7, len(data), crc32c(data))] * 3)
        for store in self.stores.values():
            self.assertEqual(bytes(store._chunks[7]), data)

    def test_growing_chunk_goes_through_as_it_arrives(self):
        """A chunk still arriving reaches the last member before it is
        whole: the bytes are forwarded, not staged."""
        chunk = GrowingChunk(200_000)
        d = self.client.chain_put(A, 8, chunk, [B, C])
        first = os.urandom(100_000)
        chunk.add(first)
        self.network.settle()
        self.assertNoResult(d)
        write = next(iter(self.stores[C]._writes))
        self.assertEqual(len(write._data), 100_000)
        rest = os.urandom(100_000)
        chunk.add(rest)
        self.network.settle()
        self.assertEqual([i.crc32c for i in self.successResultOf(d)],
                         [crc32c(first + rest)] * 3)

    def test_member_down_before(self):
        """A member unreachable before the chunk starts fails the chain,
        naming it; no member keeps the chunk."""
        self._down_before(B)

    def test_last_down_before(self):
        self._down_before(C)

    def _down_before(self, address):
        self.network.take_down(address)
        d = self.client.chain_put(A, 10, b"x" * 100_000, [B, C])
        self.network.settle()
        error = self.failureResultOf(d, errors.ConnectionFailed).value
        self.assertIn(address, str(error))

    def test_head_down_before(self):
        self.network.take_down(A)
        d = self.client.chain_put(A, 11, b"x" * 1000, [B, C])
        self.network.settle()
        self.failureResultOf(d, errors.ConnectionFailed)
        self.assertEqual(self.stored_on(11), [])

    def _killed_during(self, victim):
        chunk = GrowingChunk(200_000)
        d = self.client.chain_put(A, 12, chunk, [B, C])
        chunk.add(b"y" * 100_000)
        self.network.settle()
        self.network.take_down(victim)
        self.network.settle()
        self.failureResultOf(d, errors.ConnectionFailed)
        self.assertEqual(self.stored_on(12), [])
        for store in self.stores.values():
            self.assertEqual(store.open_writes, 0)

    def test_head_killed_during(self):
        self._killed_during(A)

    def test_middle_killed_during(self):
        self._killed_during(B)

    def test_last_killed_during(self):
        self._killed_during(C)

    def test_stalled_member(self):
        """A member that stops reading and answering fails the chain once
        the forwarder's timeout passed, naming it."""
        chunk = GrowingChunk(200_000)
        d = self.client.chain_put(A, 13, chunk, [B, C])
        chunk.add(b"z" * 100_000)
        self.network.settle()
        self.network.stall(C)
        chunk.add(b"z" * 100_000)
        self.network.settle()
        self.assertNoResult(d)
        for _ in range(25):
            self.clock.advance(1)
            self.network.settle()
        error = self.failureResultOf(d, errors.Timeout).value
        self.assertIn(C, str(error))

    def test_corrupted_hop(self):
        """A byte flipped on the wire between the second and the last member
        shows in the answer: the last member's CRC-32C is not the chunk's,
        the others' are, so the writer can tell the copy is bad (and
        L{ChainReplicationTests.test_corrupted_hop} retries it)."""
        data = os.urandom(200_000)
        total = len(frame(OP_CHAIN_PUT, 1, chain_prefix(15, [], 0) + data))
        [factory] = [server[1] for server in self.clock.tcpServers
                     if server[0] == self.network.port(C)]
        build = factory.buildProtocol

        def corrupting(addr):
            protocol = build(addr)
            received, deliver = [0], protocol.dataReceived

            def dataReceived(piece):
                start, received[0] = received[0], received[0] + len(piece)
                if start < total - 1 < received[0]:
                    at = total - 1 - start
                    piece = piece[:at] + bytes([piece[at] ^ 0xFF]) + piece[at + 1:]
                deliver(piece)
            protocol.dataReceived = dataReceived
            return protocol
        factory.buildProtocol = corrupting
        d = self.client.chain_put(A, 15, data, [B, C])
        self.network.settle()
        infos = self.successResultOf(d)
        self.assertEqual([i.size for i in infos], [len(data)] * 3)
        self.assertEqual([i.crc32c == crc32c(data) for i in infos], [True, True, False])

    def test_store_refuses_mid_chain(self):
        """A member whose store refuses fails the chain with its error."""
        self.stores[C].read_only = True
        d = self.client.chain_put(A, 14, b"q" * 50_000, [B, C])
        self.network.settle()
        error = self.failureResultOf(d, errors.ReadOnly).value
        self.assertIn(C, str(error))


    def test_trace_travels_the_chain(self):
        """
        A chain PUT made under a request id (an imageserver serving an HTTP
        request) carries it as its trace to the head, which passes it on to
        the next member, and so on: the last member's refusal and each
        member's failed forward are logged with that C{request_id}.
        """
        self.stores[C].read_only = True
        with capturedLogs() as events:
            d = run_as("push-5f0c", self.client.chain_put, A, 15, b"t" * 70_000, [B, C])
            self.network.settle()
        self.failureResultOf(d, errors.ReadOnly)
        failed = [e for e in events if "wire_id" in e]
        self.assertEqual({e["request_id"] for e in failed}, {"push-5f0c"})
        messages = sorted(str(e["error"]) for e in failed)
        self.assertEqual(len(messages), 3, messages)
        self.assertTrue(messages[0].startswith(B + ": " + C + ": "), messages)
        self.assertTrue(messages[1].startswith(C + ": "), messages)
        self.assertEqual({e["code"] for e in failed}, {"READ_ONLY"})
        self.assertEqual({e["file_id"] for e in failed}, {15})

    def test_untraced_chain(self):
        """Without a request id, no trace: the chain works as before."""
        d = self.client.chain_put(A, 16, b"u" * 1000, [B, C])
        self.network.settle()
        self.assertEqual(len(self.successResultOf(d)), 3)


class ChainHeadOnStringTransportTests(SynchronousTestCase):
    """The head of a chain, fed byte by byte, forwarding to fakes."""

    def setUp(self):
        self.clock = MemoryReactorClock()
        self.forwarder = FakeChunkClient(self.clock)
        self.store = MemoryChunkStore()
        self.factory = ChunkServerFactory(self.clock, self.store, forwarder=self.forwarder)
        self.server = self.factory.buildProtocol(None)
        self.transport = StringTransport()
        self.server.makeConnection(self.transport)
        self.addCleanup(lambda: self.server.connectionLost(Failure(ConnectionError("over"))))

    def request(self, file_id, data, route, keep_mask=0, request_id=1):
        return frame(OP_CHAIN_PUT, request_id, chain_prefix(file_id, route, keep_mask) + data)

    def answers(self):
        frames, rest = parse_frames(self.transport.value())
        self.assertEqual(rest, b"")
        self.transport.clear()
        return frames

    def test_byte_at_a_time(self):
        """Fed one byte at a time, the head stores the chunk, the rest of
        the route gets it with the rest of the keep mask, and the answer
        lists every member."""
        data = b"hello chain"
        for byte in self.request(5, data, [B, C], keep_mask=0b100):
            self.server.dataReceived(bytes([byte]))
        [(header, body)] = self.answers()
        self.assertEqual((header.opcode, header.flags), (OP_CHAIN_PUT, FLAG_RESPONSE))
        self.assertEqual(len(body), 3 * CHUNK_INFO.size)
        self.assertEqual([CHUNK_INFO.unpack_from(body, i * 12) for i in range(3)],
                         [(len(data), crc32c(data))] * 3)
        self.assertEqual(self.forwarder.chains, [(B, C)])
        self.assertEqual(self.forwarder.server(C).kept, {5})
        self.assertEqual(self.forwarder.server(B).kept, set())
        self.assertEqual(bytes(self.store._chunks[5]), data)

    def test_last_member_answers_alone(self):
        data = b"end of the line"
        self.server.dataReceived(self.request(6, data, []))
        [(header, body)] = self.answers()
        self.assertEqual(CHUNK_INFO.unpack(body), (len(data), crc32c(data)))
        self.assertEqual(self.forwarder.chains, [])

    def test_back_pressure(self):
        """While the next member has not taken the bytes, the head stops
        reading once more than FORWARD_BUFFER_LIMIT wait for it."""
        size = FORWARD_BUFFER_LIMIT + 2 * 1024 * 1024
        head = Header(OP_CHAIN_PUT, 1, len(chain_prefix(9, [B], 0)) + size).pack()
        self.server.dataReceived(head + chain_prefix(9, [B], 0))
        piece = b"p" * (1024 * 1024)
        for _ in range(5):
            self.server.dataReceived(piece)
        self.assertEqual(self.transport.producerState, "paused")

    def test_next_member_down(self):
        """The next member unreachable: the head answers its error at once,
        naming it, and keeps nothing."""
        self.forwarder.server(B).mode = DOWN
        self.server.dataReceived(self.request(3, b"abc" * 1000, [B]))
        [(header, body)] = self.answers()
        self.assertEqual(header.flags, FLAG_RESPONSE | FLAG_ERROR)
        self.assertEqual(body[0], errors.ConnectionFailed.code)
        self.assertIn(B.encode(), body)
        self.assertNotIn(3, self.store._chunks)

    def test_no_forwarder(self):
        """A chunkserver that forwards to no one refuses a route."""
        self.factory.forwarder = None
        self.server.dataReceived(self.request(3, b"abc", [B]))
        [(header, body)] = self.answers()
        self.assertEqual(body[0], errors.BadRequest.code)

    def test_bad_route(self):
        bad = frame(OP_CHAIN_PUT, 1, chain_prefix(3, [], 0)[:-2] + b"\x00\x05" + b"nohost" + b"x")
        self.server.dataReceived(bad)
        [(header, body)] = self.answers()
        self.assertEqual(body[0], errors.BadRequest.code)


class ChainReplicationTests(SynchronousTestCase):
    """L{ReplicatedStorage} with C{replication="chain"} over fakes."""

    def cluster(self, **kw):
        return FakeCluster({1: ["a:1", "b:1", "c:1"], 2: ["d:1", "e:1", "f:1"]},
                           chunk_size=8, replication="chain", **kw)

    def test_order_rotates(self):
        """Each member heads, and ends, a third of the chains."""
        cluster = self.cluster()
        servers = cluster.view.current.groups[1].servers
        heads = {chain_order(servers, file_id)[0].address for file_id in range(3)}
        tails = {chain_order(servers, file_id)[-1].address for file_id in range(3)}
        self.assertEqual(heads, {"a:1", "b:1", "c:1"})
        self.assertEqual(tails, {"a:1", "b:1", "c:1"})

    def test_stored_along_a_chain(self):
        cluster = self.cluster()
        ref = self.successResultOf(cluster.storage.store_chunk(b"12345678"))
        self.assertEqual(set(cluster.copies(ref).values()), {b"12345678"})
        self.assertEqual(len(cluster.client.chains), 1)
        self.assertEqual(cluster.storage.counters["chain_puts"], 1)
        group = cluster.view.current.groups[ref.group_id]
        keeper = cluster.storage.preferred(group.servers, ref.file_id)
        self.assertEqual(
            {s.address for s in group.servers if ref.file_id in cluster.client.server(s.address).kept},
            {keeper.address})

    def test_member_down_retried_elsewhere(self):
        """A chain that fails is retried on the other group under a new
        file id, and the failed attempt is garbage."""
        cluster = self.cluster()
        cluster.client.server("b:1").mode = DOWN
        cluster.client.server("e:1").mode = DOWN
        cluster.client.server("e:1").mode = "ok"
        refs = [self.successResultOf(cluster.storage.store_chunk(b"%08d" % i)) for i in range(4)]
        self.assertEqual({r.group_id for r in refs}, {2})
        self.assertTrue(cluster.storage.counters["chunk_write_retries"] >= 1)

    def test_corrupted_hop(self):
        """A member acknowledging other bytes than were sent (a hop that
        corrupted them) fails the chunk: it is retried elsewhere."""
        cluster = self.cluster(tries=2)
        real = cluster.client.chain_put
        spoiled = []

        def corrupting(address, file_id, data, route=(), keep_mask=0):
            d = real(address, file_id, data, route, keep_mask)

            def spoil(infos):
                if not spoiled:
                    spoiled.append(address)
                    infos[-1] = ChunkInfo(file_id, infos[-1].size, infos[-1].crc32c ^ 1)
                return infos
            return d.addCallback(spoil)
        cluster.client.chain_put = corrupting
        ref = self.successResultOf(cluster.storage.store_chunk(b"abcdefgh"))
        self.assertEqual(len(cluster.client.chains), 2)
        self.assertEqual(len(cluster.metadata._garbage), 1)
        self.assertEqual(cluster.storage.counters["chunk_write_retries"], 1)

    def test_cut_through_chain(self):
        """An upload of known length goes out along chains as it arrives."""
        cluster = self.cluster(cut_through=4)
        writer = cluster.storage.writer(length=20)
        self.successResultOf(writer.write(b"a" * 10))
        self.successResultOf(writer.write(b"b" * 10))
        refs = self.successResultOf(writer.finish())
        self.assertEqual(len(refs), 3)
        self.assertEqual(cluster.storage.counters["chunks_cut_through"], 3)
        self.assertEqual(len(cluster.client.chains), 3)

    def test_unknown_mode(self):
        self.assertRaises(ValueError, FakeCluster, {1: ["a:1"]}, replication="star")
