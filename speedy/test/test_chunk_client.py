"""
Tests for L{speedy.wire.client.ChunkClient} and its connections: every
request against the real server protocol through L{iosim}, and timeouts,
reconnect backoff and dead peers on a L{MemoryReactorClock}.
"""

import os

import google_crc32c
from twisted.internet.defer import CancelledError
from twisted.internet.error import ConnectionLost
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.test.iosim import ConnectionCompleter
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from speedy.chunkserver.protocol import ChunkServerFactory
from speedy.errors import (
    BadRequest, ChecksumMismatch, ChunkNotFound, ConnectionFailed,
    RangeNotSatisfiable, ReadOnly, Timeout)
from speedy.interfaces import IChunkClient
from speedy.logs import request_id as current_request_id, run_as
from speedy.records import ChunkInfo
from speedy.test.test_chunkserver_protocol import GatedStore
from speedy.testing import MemoryChunkStore
from speedy.wire.client import ChunkClient, parse_address
from speedy.wire.connection import ChunkClientProtocol, ProtocolViolation
from speedy.wire.growing import GrowingChunk
from speedy.wire.producers import PIECE
from speedy.wire.frames import (
    CHUNK_INFO, FILE_ID, FLAG_KEEP, FLAG_RESPONSE, GET_RESPONSE, HEADER_SIZE, OP_GET, OP_PING, OP_PUT, OP_STAT,
    Header, frame)

ADDRESS = "127.0.0.1:8000"


class ClientTestsMixin:

    def setUp(self):
        self.reactor = MemoryReactorClock()
        self.completer = ConnectionCompleter(self.reactor)
        self.pumps = []
        self.client = ChunkClient(self.reactor, connect_timeout=5.0, request_timeout=30.0,
                                  max_connections_per_server=4)
        self.addCleanup(self.close_client)

    def serve(self, store=None):
        self.store = MemoryChunkStore() if store is None else store
        self.factory = ChunkServerFactory(self.reactor, self.store)
        self.reactor.listenTCP(8000, self.factory)

    def close_client(self):
        d = self.client.close()
        self.flush()
        self.successResultOf(d)

    def flush(self):
        """Complete pending connects and move every byte both ways."""
        while self.reactor.tcpClients and self.reactor.tcpServers:
            self.pumps.append(self.completer.succeedOnce())
        for pump in self.pumps:
            pump.flush()

    def answer(self, d):
        self.flush()
        return self.successResultOf(d)

    def fails(self, d, *errors):
        self.flush()
        return self.failureResultOf(d, *errors).value


class RequestTests(ClientTestsMixin, SynchronousTestCase):

    def setUp(self):
        super().setUp()
        self.serve()

    def test_interface(self):
        verifyObject(IChunkClient, self.client)

    def test_put_get_stat_delete(self):
        data = os.urandom(100_000)
        info = self.answer(self.client.put(ADDRESS, 42, data))
        self.assertEqual(info, ChunkInfo(42, len(data), google_crc32c.value(data)))
        self.assertEqual(self.answer(self.client.get(ADDRESS, 42)), data)
        self.assertEqual(self.answer(self.client.get(ADDRESS, 42, 10, 20)), data[10:30])
        self.assertEqual(self.answer(self.client.get(ADDRESS, 42, 99_990)), data[99_990:])
        self.assertEqual(self.answer(self.client.stat(ADDRESS, 42)), info)
        self.assertIsNone(self.answer(self.client.delete(ADDRESS, 42)))
        self.fails(self.client.stat(ADDRESS, 42), ChunkNotFound)

    def test_put_pieces(self):
        """A chunk given as a list of bytes-like pieces is stored as the
        pieces joined, with that CRC32C."""
        pieces = [os.urandom(300_000), bytearray(os.urandom(5)), memoryview(os.urandom(70_000))]
        chunk = b"".join(pieces)
        info = self.answer(self.client.put(ADDRESS, 9, pieces))
        self.assertEqual(info, ChunkInfo(9, len(chunk), google_crc32c.value(chunk)))
        self.assertEqual(self.answer(self.client.get(ADDRESS, 9)), chunk)

    def test_big_chunk(self):
        """A 16 MiB chunk goes out and comes back whole."""
        data = os.urandom(1 << 20) * 16
        self.answer(self.client.put(ADDRESS, 1, data))
        self.assertTrue(self.answer(self.client.get(ADDRESS, 1)) == data)

    def test_get_pieces(self):
        """get_pieces answers a whole chunk or a range as bytes pieces that
        join up to exactly its bytes."""
        data = os.urandom(3 << 20)
        self.answer(self.client.put(ADDRESS, 1, data))
        pieces = self.answer(self.client.get_pieces(ADDRESS, 1))
        self.assertTrue(all(isinstance(piece, bytes) for piece in pieces))
        self.assertTrue(b"".join(pieces) == data)
        pieces = self.answer(self.client.get_pieces(ADDRESS, 1, 1000, 2 << 20))
        self.assertTrue(b"".join(pieces) == data[1000:1000 + (2 << 20)])

    def test_errors_map_to_classes(self):
        self.fails(self.client.get(ADDRESS, 5), ChunkNotFound)
        self.answer(self.client.put(ADDRESS, 5, b"abc"))
        self.fails(self.client.get(ADDRESS, 5, 2, 5), RangeNotSatisfiable)
        self.store.damage(5)
        self.fails(self.client.get(ADDRESS, 5), ChecksumMismatch)
        self.store.read_only = True
        self.fails(self.client.put(ADDRESS, 6, b"abc"), ReadOnly)

    def test_list_status_ping_compact(self):
        for file_id in (3, 1, 2):
            self.answer(self.client.put(ADDRESS, file_id, b"x" * file_id))
        self.assertEqual(self.answer(self.client.list(ADDRESS)), [1, 2, 3])
        status = self.answer(self.client.status(ADDRESS))
        self.assertEqual((status["chunks"], status["used"]), (3, 6))
        self.assertIsInstance(self.answer(self.client.ping(ADDRESS)), float)
        self.answer(self.client.delete(ADDRESS, 3))
        self.assertEqual(self.answer(self.client.compact(ADDRESS)), 3)
        self.assertEqual(self.answer(self.client.compact(ADDRESS, 0)), 0)

    def test_many_in_flight(self):
        """Concurrent requests share up to max_connections_per_server
        connections, and all get their own answers."""
        datas = {i: os.urandom(1000 + i) for i in range(1, 21)}
        puts = [self.client.put(ADDRESS, i, d) for i, d in datas.items()]
        self.flush()
        for d in puts:
            self.successResultOf(d)
        self.assertEqual(len(self.pumps), 4)
        gets = {i: self.client.get(ADDRESS, i) for i in datas}
        self.flush()
        for i, d in gets.items():
            self.assertEqual(self.successResultOf(d), datas[i])
        self.assertEqual(len(self.pumps), 4)

    def test_corrupted_in_transit(self):
        """A whole chunk whose bytes differ from the CRC32C the server sent
        fails with ChecksumMismatch; a range is not checked."""
        self.store.add(7, b"evil bytes")
        self.store.stat = lambda file_id: ChunkInfo(7, 10, google_crc32c.value(b"good bytes"))
        self.fails(self.client.get(ADDRESS, 7), ChecksumMismatch)
        self.assertEqual(self.answer(self.client.get(ADDRESS, 7, 0, 4)), b"evil")

    def test_get_stream(self):
        """get_stream hands a whole chunk or a range to its sink, in order,
        and fires with None; a range of a missing chunk fails as get does."""
        data = os.urandom(3 << 20)
        self.answer(self.client.put(ADDRESS, 1, data))
        for offset, length in [(0, len(data)), (1000, 2 << 20)]:
            pieces = []
            self.assertIsNone(self.answer(
                self.client.get_stream(ADDRESS, 1, offset, length, pieces.append)))
            self.assertTrue(b"".join(pieces) == data[offset:offset + length])
        self.fails(self.client.get_stream(ADDRESS, 2, 0, 10, pieces.append), ChunkNotFound)

    def test_get_stream_corrupted_in_transit(self):
        """A whole chunk streamed with other bytes than its CRC32C fails
        with ChecksumMismatch once its end arrived, after its bytes went to
        the sink (they cannot be held back while streaming)."""
        self.store.add(7, b"evil bytes")
        self.store.stat = lambda file_id: ChunkInfo(7, 10, google_crc32c.value(b"good bytes"))
        pieces = []
        self.fails(self.client.get_stream(ADDRESS, 7, 0, 10, pieces.append), ChecksumMismatch)
        self.assertEqual(b"".join(pieces), b"evil bytes")

    def test_close_fails_pending(self):
        """close() fails what is pending and closes every connection."""
        self.answer(self.client.ping(ADDRESS))
        self.store.__class__ = GatedStore
        self.store.gates = []
        self.answer(self.client.put(ADDRESS, 1, b"x"))
        pending = self.client.get(ADDRESS, 1)
        self.flush()
        closed = self.client.close()
        self.flush()
        self.successResultOf(closed)
        self.failureResultOf(pending, ConnectionFailed)
        self.assertEqual(self.factory.counters["open_connections"], 0)
        self.fails(self.client.ping(ADDRESS), ConnectionFailed)


class _TraceRecordingStore(MemoryChunkStore):
    """A memory store noting, per file id, the request id a PUT or GET of it
    ran under on the server (the trace its request carried)."""

    def __init__(self):
        super().__init__()
        self.traces = {}

    def put(self, file_id, size, keep=False):
        self.traces[file_id] = current_request_id.get()
        return super().put(file_id, size, keep)

    def get(self, file_id, offset=0, length=None):
        self.traces[file_id] = current_request_id.get()
        return super().get(file_id, offset, length)


class TraceTests(ClientTestsMixin, SynchronousTestCase):
    """A request made while a request id is current carries it as its
    trace, read when the request is made, however late it goes out."""

    def setUp(self):
        super().setUp()
        self.serve(_TraceRecordingStore())

    def test_request_carries_current_id(self):
        """PUT and GET made under a request id reach the server's store under
        it; one made under none carries none."""
        self.answer(run_as("req-1", self.client.put, ADDRESS, 1, b"one"))
        self.answer(self.client.put(ADDRESS, 2, b"two"))
        self.assertEqual(self.store.traces, {1: "req-1", 2: None})
        self.answer(run_as("req-3", self.client.get, ADDRESS, 2))
        self.assertEqual(self.store.traces[2], "req-3")

    def test_queued_put_keeps_its_trace(self):
        """PUTs queued behind busy connections go out later, from another
        request's callbacks, each with its own trace."""
        data = os.urandom(300_000)
        puts = [run_as(f"req-{i}", self.client.put, ADDRESS, i, data) for i in range(1, 7)]
        self.flush()
        for d in puts:
            self.successResultOf(d)
        self.assertEqual(self.store.traces, {i: f"req-{i}" for i in range(1, 7)})

    def test_insane_id_not_sent(self):
        """A current id that is not a sane one goes out as no trace, never as
        a request the server refuses."""
        self.answer(run_as("not sane\n", self.client.put, ADDRESS, 4, b"four"))
        self.assertEqual(self.store.traces, {4: None})


class QueuedPutTests(ClientTestsMixin, SynchronousTestCase):
    """Whole PUTs wait in one queue per chunkserver and go out, oldest
    first, on the first connection with no body going out."""

    SIZE = 300_000

    def setUp(self):
        super().setUp()
        self.serve()
        self.datas = {i: os.urandom(self.SIZE) for i in range(1, 7)}

    def put_all(self):
        puts = {i: self.client.put(ADDRESS, i, data) for i, data in self.datas.items()}
        for _ in range(4):  # the pool's size: the last two PUTs wait
            self.pumps.append(self.completer.succeedOnce(greet=False))
        return puts

    def stored(self):
        return {i for i in self.datas if self.store.contents(i) == self.datas[i]}

    def drop(self, pump):
        """The connection of C{pump} dies now, mid-body."""
        for io in (pump.clientIO, pump.serverIO):
            io.disconnecting = io.disconnected = True
            io.protocol.connectionLost(Failure(ConnectionLost("dropped")))

    def test_next_put_takes_the_first_connection_free(self):
        """With four connections each sending a body, the waiting PUTs go
        out, in order, on the one whose body finishes first, not on a busy
        one."""
        puts = self.put_all()
        self.pumps[2].flush()  # only the third connection moves
        self.assertEqual(self.stored(), {3, 5, 6})
        for i in (3, 5, 6):
            self.assertEqual(self.successResultOf(puts[i]).size, self.SIZE)
        for i in (1, 2, 4):
            self.assertNoResult(puts[i])
        self.flush()
        self.assertEqual(self.stored(), set(self.datas))
        self.assertEqual(len(self.pumps), 4)

    def test_one_body_per_connection(self):
        """No connection has a second body queued behind the one it sends."""
        self.put_all()
        pool = self.client._pools[ADDRESS]
        self.assertEqual([c.bodies_out for c in pool._connections], [1, 1, 1, 1])
        self.assertEqual(self.store.contents(5), None)
        self.flush()
        self.assertEqual(self.stored(), set(self.datas))

    def test_cancel_while_queued(self):
        """A PUT cancelled while it waits never reaches the server."""
        puts = self.put_all()
        puts[5].cancel()
        self.failureResultOf(puts[5], CancelledError)
        self.flush()
        self.assertEqual(self.stored(), set(self.datas) - {5})
        self.fails(self.client.stat(ADDRESS, 5), ChunkNotFound)

    def test_queued_puts_outlive_a_dropped_connection(self):
        """The PUT on a connection that dies fails; the queued ones go out
        on the others."""
        puts = self.put_all()
        self.drop(self.pumps[0])
        self.failureResultOf(puts[1], ConnectionFailed)
        self.flush()
        for i in range(2, 7):
            self.assertEqual(self.successResultOf(puts[i]).size, self.SIZE)
        self.assertLessEqual(set(range(2, 7)), self.stored())

    def test_last_connection_dropped_reconnects_for_the_queue(self):
        """When the only connection dies, a new one is opened for the
        PUTs still waiting."""
        self.client = ChunkClient(self.reactor, max_connections_per_server=1)
        puts = {i: self.client.put(ADDRESS, i, self.datas[i]) for i in (1, 2)}
        self.pumps.append(self.completer.succeedOnce(greet=False))
        self.drop(self.pumps[0])
        self.failureResultOf(puts[1], ConnectionFailed)
        self.assertEqual(self.answer(puts[2]).size, self.SIZE)
        self.assertEqual(len(self.pumps), 2)

    def test_queue_standing_still_times_out(self):
        """PUTs waiting behind a body that stopped going out fail with
        Timeout once nothing left the queue for request_timeout; while it
        moves, they wait."""
        self.client = ChunkClient(self.reactor, request_timeout=30.0,
                                  max_connections_per_server=1)
        puts = {i: self.client.put(ADDRESS, i, self.datas[i]) for i in (1, 2, 3)}
        self.pumps.append(self.completer.succeedOnce(greet=False))
        self.reactor.advance(20)
        self.pumps[0].flush()  # PUT 1 done at 20s; PUT 2 and 3 go out on the same connection
        self.assertEqual(self.stored(), {1, 2, 3})
        puts.update({i: self.client.put(ADDRESS, i, self.datas[i]) for i in (4, 5)})
        self.reactor.advance(29.9)  # PUT 4's body is stuck: nothing pumps it
        self.assertNoResult(puts[5])
        self.reactor.advance(0.1)
        self.assertIn("no connection was free", str(self.failureResultOf(puts[5], Timeout).value))
        self.failureResultOf(puts[4], Timeout)  # its connection's own stall check

    def test_queue_behind_moving_bodies_waits(self):
        """PUTs waiting behind bodies that go out slowly but keep moving
        do not time out; they do once the bytes stop too."""
        self.client = ChunkClient(self.reactor, request_timeout=30.0,
                                  max_connections_per_server=1)
        self.datas[1] = os.urandom(10 * PIECE)
        puts = {i: self.client.put(ADDRESS, i, self.datas[i]) for i in (1, 2)}
        self.pumps.append(self.completer.succeedOnce(greet=False))
        for _ in range(3):
            self.reactor.advance(20)
            self.pumps[0].pump()  # a piece of PUT 1's body moves
        self.assertNoResult(puts[2])
        self.reactor.advance(30)
        self.failureResultOf(puts[2], Timeout)
        self.failureResultOf(puts[1], Timeout)

    def test_unreachable_fails_the_queue(self):
        """A server that refuses connections fails every waiting PUT at
        once, with ConnectionFailed."""
        puts = [self.client.put(ADDRESS, i, data) for i, data in self.datas.items()]
        while self.reactor.tcpClients:
            self.completer.failOnce()
        for d in puts:
            self.failureResultOf(d, ConnectionFailed)
        self.failureResultOf(self.client.put(ADDRESS, 9, b"x"), ConnectionFailed)

    def test_close_fails_the_queue(self):
        puts = self.put_all()
        closed = self.client.close()
        for i in (5, 6):
            self.failureResultOf(puts[i], ConnectionFailed)
        self.flush()
        self.successResultOf(closed)
        for i in range(1, 5):  # those going out fail with their connections
            self.failureResultOf(puts[i], ConnectionFailed)
        self.assertEqual(self.store.contents(5), None)


class GrowingPutTests(ClientTestsMixin, SynchronousTestCase):
    """A PUT of a L{GrowingChunk} (cut-through replication) over the real
    server protocol."""

    def setUp(self):
        super().setUp()
        self.serve()

    def received(self):
        """@return: the bytes the server's open writes hold."""
        return [bytes(write._data) for write in self.store._writes]

    def test_bytes_go_out_as_they_arrive(self):
        """The server gets each piece as it is added; the PUT is answered
        once the chunk is whole, and the chunk reads back intact."""
        data = os.urandom(300_000)
        chunk = GrowingChunk(len(data))
        chunk.add(data[:100_000])
        d = self.client.put(ADDRESS, 7, chunk)
        self.flush()
        self.assertNoResult(d)
        self.assertEqual(self.received(), [data[:100_000]])
        chunk.add(data[100_000:250_000])
        self.flush()
        self.assertEqual(self.received(), [data[:250_000]])
        chunk.add(data[250_000:])
        self.assertEqual(self.answer(d), ChunkInfo(7, len(data), google_crc32c.value(data)))
        self.assertEqual(self.answer(self.client.get(ADDRESS, 7)), data)

    def test_failed_chunk_stores_nothing(self):
        """A chunk failed halfway fails its PUT; the connection is aborted,
        the server keeps nothing of it, and the client goes on."""
        chunk = GrowingChunk(1000)
        chunk.add(b"x" * 400)
        d = self.client.put(ADDRESS, 7, chunk)
        self.flush()
        chunk.fail(ConnectionError("the client went away"))
        self.fails(d, ConnectionFailed)
        self.assertEqual((self.received(), self.store.contents(7)), ([], None))
        self.fails(self.client.stat(ADDRESS, 7), ChunkNotFound)

    def test_connection_to_itself(self):
        """While a growing PUT waits for bytes, other requests to the same
        server are answered on another connection, and a second growing
        PUT gets a connection of its own too, beyond the pool's size."""
        self.store.add(1, b"one")
        growing = [GrowingChunk(10) for _ in range(5)]
        puts = [self.client.put(ADDRESS, 10 + i, chunk) for i, chunk in enumerate(growing)]
        self.flush()
        self.assertEqual(self.answer(self.client.get(ADDRESS, 1)), b"one")
        for d in puts:
            self.assertNoResult(d)
        self.assertEqual(len(self.pumps), 6)  # 5 puts, 1 shared for the get
        for chunk in growing:
            chunk.add(b"0123456789")
        for i, d in enumerate(puts):
            self.assertEqual(self.answer(d).size, 10)
            self.assertEqual(self.store.contents(10 + i), b"0123456789")

    def test_connections_kept_apart(self):
        """A growing PUT's connection is kept for growing PUTs: the next
        one reuses it once idle, while other requests keep to the shared
        pool, which never grows past its size with them."""
        for file_id in (5, 6):
            chunk = GrowingChunk(3)
            chunk.add(b"abc")
            self.answer(self.client.put(ADDRESS, file_id, chunk))
        self.assertEqual(len(self.pumps), 1)
        self.answer(self.client.ping(ADDRESS))
        self.assertEqual(len(self.pumps), 2)
        self.store.add(1, b"x")
        self.assertEqual(self.answer(self.client.get(ADDRESS, 1)), b"x")
        self.assertEqual(len(self.pumps), 2)  # the idle shared one, not the growing PUTs'

    def test_error_answer_mid_body_aborts(self):
        """The server refusing the PUT before the body is whole fails it,
        and the connection is dropped rather than left waiting on a body
        nobody reads: the chunk's later bytes go nowhere."""
        self.store.read_only = True
        chunk = GrowingChunk(100)
        chunk.add(b"a" * 10)
        d = self.client.put(ADDRESS, 5, chunk)
        self.fails(d, ReadOnly)
        self.assertTrue(self.pumps[0].clientIO.disconnecting)
        chunk.add(b"b" * 90)
        self.store.read_only = False
        self.answer(self.client.ping(ADDRESS))
        self.assertEqual(len(self.pumps), 2)  # the ping needed a new connection
        self.assertIsNone(self.store.contents(5))


class FailureTests(ClientTestsMixin, SynchronousTestCase):

    def test_request_timeout(self):
        """A server that does not answer: Timeout after request_timeout, and
        its late answer is dropped while the connection goes on."""
        self.serve(GatedStore())
        self.store.add(1, b"late")
        d = self.client.get(ADDRESS, 1)
        self.flush()
        self.reactor.advance(29)
        self.assertNoResult(d)
        self.reactor.advance(1)
        self.failureResultOf(d, Timeout)
        self.store.gates[0].callback(None)
        self.flush()
        self.answer(self.client.ping(ADDRESS))
        self.assertEqual(len(self.pumps), 1)
        self.assertEqual([c.func.__name__ for c in self.reactor.getDelayedCalls()], ["_idle_expired"])

    def test_cancel(self):
        """A cancelled request's timer is gone and its answer dropped."""
        self.serve(GatedStore())
        self.store.add(1, b"late")
        d = self.client.get(ADDRESS, 1)
        self.flush()
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.store.gates[0].callback(None)
        self.flush()
        self.assertEqual([c.func.__name__ for c in self.reactor.getDelayedCalls()], ["_idle_expired"])

    def test_refused_then_backoff(self):
        """A refused connection fails the request; further requests fail at
        once without connecting until the backoff has passed, and the
        backoff doubles."""
        d = self.client.ping(ADDRESS)
        self.completer.failOnce()
        self.assertIsInstance(self.failureResultOf(d, ConnectionFailed).value, ConnectionFailed)
        self.failureResultOf(self.client.ping(ADDRESS), ConnectionFailed)
        self.assertEqual(self.reactor.tcpClients, [])
        self.reactor.advance(self.client.backoff_initial)
        d = self.client.ping(ADDRESS)
        self.assertEqual(len(self.reactor.tcpClients), 1)
        self.completer.failOnce()
        self.failureResultOf(d, ConnectionFailed)
        self.reactor.advance(self.client.backoff_initial)
        self.failureResultOf(self.client.ping(ADDRESS), ConnectionFailed)
        self.reactor.advance(self.client.backoff_initial)
        self.serve()
        self.answer(self.client.ping(ADDRESS))

    def test_connect_timeout(self):
        """A peer that never completes the handshake: ConnectionFailed after
        connect_timeout."""
        d = self.client.ping(ADDRESS)
        self.reactor.advance(4.9)
        self.assertNoResult(d)
        self.reactor.advance(0.1)
        self.failureResultOf(d, ConnectionFailed)

    def test_connection_dropped(self):
        """Requests pending on a connection that dies fail with
        ConnectionFailed; the next request reconnects."""
        self.serve(GatedStore())
        self.store.add(1, b"x")
        pending = [self.client.get(ADDRESS, 1), self.client.delete(ADDRESS, 1)]
        self.flush()
        self.pumps[0].serverIO.abortConnection()
        self.flush()
        for d in pending:
            self.failureResultOf(d, ConnectionFailed)
        self.answer(self.client.ping(ADDRESS))
        self.assertEqual(len(self.pumps), 2)

    def test_bad_address(self):
        self.failureResultOf(self.client.ping("nonsense"), BadRequest)
        self.assertEqual(parse_address("[::1]:80"), ("::1", 80))
        self.assertRaises(BadRequest, parse_address, "host:99999")


class ConnectionTests(SynchronousTestCase):
    """The client end of one connection, byte by byte."""

    def setUp(self):
        self.clock = MemoryReactorClock()
        self.connection = ChunkClientProtocol(self.clock, 30.0, "test:1")
        self.transport = StringTransport()
        self.connection.makeConnection(self.transport)

    def tearDown(self):
        if self.connection.connected:
            self.connection.connectionLost(Failure(ConnectionError("over")))

    def feed(self, data):
        for i in range(len(data)):
            self.connection.dataReceived(data[i:i + 1])

    def test_put_with_keep_carries_the_flag(self):
        """C{ChunkClient.put(keep=True)} asks the server to keep the chunk
        in memory: the PUT frame carries C{KEEP}, and only that flag."""
        d = self.connection.request(OP_PUT, FILE_ID.pack(7), b"data", flags=FLAG_KEEP)
        d.addErrback(lambda f: f.trap(ConnectionFailed))  # never answered
        header = Header.unpack(self.transport.value()[:HEADER_SIZE])
        self.assertEqual((header.opcode, header.flags, header.body_length),
                         (OP_PUT, FLAG_KEEP, FILE_ID.size + 4))

    def test_traced_request_frame(self):
        """A request with a trace: byte 7 its length, the trace first in the
        body, the body's length counting it."""
        d = self.connection.request(OP_PUT, FILE_ID.pack(7), b"data", trace=b"req-9")
        d.addErrback(lambda f: f.trap(ConnectionFailed))  # never answered
        raw = self.transport.value()
        header = Header.unpack(raw[:HEADER_SIZE])
        self.assertEqual((header.trace_length, header.body_length), (5, 5 + FILE_ID.size + 4))
        self.assertEqual(raw[HEADER_SIZE:HEADER_SIZE + 13], b"req-9" + FILE_ID.pack(7))

    def test_answer_with_trace_is_a_violation(self):
        """An answer carrying a trace breaks the protocol: the connection
        closes and the request fails."""
        d = self.connection.request(OP_PING)
        raw = bytearray(frame(OP_PING, 1, b"abc", FLAG_RESPONSE))
        raw[7] = 3
        self.feed(bytes(raw))
        self.failureResultOf(d, ProtocolViolation)
        self.assertTrue(self.transport.disconnecting)

    def test_get_byte_at_a_time(self):
        data = b"some chunk bytes"
        d = self.connection.request(OP_GET, b"\0" * 24)
        self.feed(frame(OP_GET, 1, GET_RESPONSE.pack(len(data), google_crc32c.value(data), 0)
                        + data, FLAG_RESPONSE))
        result = self.successResultOf(d)
        self.assertEqual((result.data, result.size), (bytearray(data), len(data)))

    def test_get_body_kept_as_received(self):
        """A GET answer's body reads are kept as the bytes objects they
        arrived as (no copy), and checked against the chunk's CRC32C."""
        body = [os.urandom(1000), os.urandom(2000)]
        d = self.connection.request(OP_GET, b"\0" * 24)
        data = b"".join(body)
        answer = frame(OP_GET, 1, GET_RESPONSE.pack(len(data), google_crc32c.value(data), 0)
                       + data, FLAG_RESPONSE)
        self.connection.dataReceived(answer[:HEADER_SIZE + GET_RESPONSE.size])
        for piece in body:
            self.connection.dataReceived(piece)
        result = self.successResultOf(d)
        self.assertEqual(len(result.pieces), 2)
        self.assertTrue(all(kept is sent for kept, sent in zip(result.pieces, body)))
        self.assertEqual(result.data, bytearray(data))

    def get_answer(self, data, request_id=1):
        """@return: the frame answering GET C{request_id} with the whole
        chunk C{data}."""
        return frame(OP_GET, request_id, GET_RESPONSE.pack(
            len(data), google_crc32c.value(data), 0) + data, FLAG_RESPONSE)

    def test_stream_as_it_arrives(self):
        """A streamed GET hands each read to the sink the moment it arrives,
        the very bytes objects read; the request fires with the GetResult,
        holding no pieces, once the last byte came."""
        body = [os.urandom(1000), os.urandom(2000)]
        pieces = []
        d = self.connection.request(OP_GET, b"\0" * 24, sink=pieces.append, length=3000)
        answer = self.get_answer(b"".join(body))
        self.connection.dataReceived(answer[:HEADER_SIZE + GET_RESPONSE.size])
        self.connection.dataReceived(body[0])
        self.assertEqual(pieces, [body[0]])
        self.assertIs(pieces[0], body[0])
        self.assertNoResult(d)
        self.connection.dataReceived(body[1])
        self.assertIs(pieces[1], body[1])
        self.assertEqual(self.successResultOf(d).pieces, [])

    def test_stream_byte_at_a_time(self):
        data = b"some chunk bytes"
        pieces = []
        d = self.connection.request(OP_GET, b"\0" * 24, sink=pieces.append, length=len(data))
        self.feed(self.get_answer(data))
        self.successResultOf(d)
        self.assertEqual(b"".join(pieces), data)

    def test_stream_wrong_length(self):
        """An answer of another length than the range asked for breaks the
        protocol before a byte reaches the sink."""
        pieces = []
        d = self.connection.request(OP_GET, b"\0" * 24, sink=pieces.append, length=10)
        self.feed(self.get_answer(b"x" * 20))
        self.failureResultOf(d, ProtocolViolation)
        self.assertEqual(pieces, [])
        self.assertTrue(self.transport.disconnected)

    def test_stream_corrupt(self):
        """A whole chunk that arrives with other bytes than its CRC32C: the
        bytes went to the sink, then the request fails ChecksumMismatch and
        the connection lives on."""
        data = b"good bytes"
        answer = frame(OP_GET, 1, GET_RESPONSE.pack(len(data), google_crc32c.value(data), 0)
                       + b"evil bytes", FLAG_RESPONSE)
        pieces = []
        d = self.connection.request(OP_GET, b"\0" * 24, sink=pieces.append, length=len(data))
        self.feed(answer)
        self.failureResultOf(d, ChecksumMismatch)
        self.assertEqual(b"".join(pieces), b"evil bytes")
        self.assertFalse(self.transport.disconnected)

    def test_stream_cancelled_midway(self):
        """A streamed GET cancelled mid-answer: its sink gets nothing more,
        the rest of the answer is skipped and the next one is read."""
        pieces = []
        d = self.connection.request(OP_GET, b"\0" * 24, sink=pieces.append, length=100)
        ping = self.connection.request(OP_PING)
        answer = self.get_answer(b"x" * 100)
        self.connection.dataReceived(answer[:HEADER_SIZE + GET_RESPONSE.size + 40])
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.connection.dataReceived(answer[HEADER_SIZE + GET_RESPONSE.size + 40:])
        self.feed(frame(OP_PING, 2, b"", FLAG_RESPONSE))
        self.assertEqual(b"".join(pieces), b"x" * 40)
        self.assertEqual(self.successResultOf(ping), b"")

    def test_stream_sink_fails(self):
        """A sink that raises fails its own request only: the answer's rest
        is skipped and the connection serves the next answer."""
        def sink(piece):
            raise ValueError("the consumer broke")
        d = self.connection.request(OP_GET, b"\0" * 24, sink=sink, length=5)
        ping = self.connection.request(OP_PING)
        self.feed(self.get_answer(b"bytes") + frame(OP_PING, 2, b"", FLAG_RESPONSE))
        self.failureResultOf(d, ValueError)
        self.assertEqual(self.successResultOf(ping), b"")
        self.assertFalse(self.transport.disconnected)

    def test_out_of_order(self):
        first = self.connection.request(OP_STAT, b"\0" * 8)
        second = self.connection.request(OP_PING)
        self.feed(frame(OP_PING, 2, b"", FLAG_RESPONSE))
        self.assertNoResult(first)
        self.assertEqual(self.successResultOf(second), b"")
        self.feed(frame(OP_STAT, 1, CHUNK_INFO.pack(1, 2), FLAG_RESPONSE))
        self.assertEqual(self.successResultOf(first), CHUNK_INFO.pack(1, 2))

    def test_garbage_from_server(self):
        """Garbage instead of an answer: every pending request fails and the
        connection is aborted."""
        d = self.connection.request(OP_PING)
        self.feed(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        self.failureResultOf(d, ProtocolViolation)
        self.assertTrue(self.transport.disconnected)

    def test_wrong_opcode(self):
        d = self.connection.request(OP_PING)
        self.feed(frame(OP_STAT, 1, CHUNK_INFO.pack(1, 2), FLAG_RESPONSE))
        self.failureResultOf(d, ProtocolViolation)

    def test_not_a_response(self):
        d = self.connection.request(OP_PING)
        self.feed(frame(OP_PING, 1))
        self.failureResultOf(d, ProtocolViolation)

    def test_oversized_answer(self):
        """An answer longer than its opcode allows is refused before its body."""
        d = self.connection.request(OP_STAT, b"\0" * 8)
        self.connection.dataReceived(frame(OP_STAT, 1, b"x" * 1000, FLAG_RESPONSE)[:16])
        self.failureResultOf(d, ProtocolViolation)

    def test_truncated_answer(self):
        """The connection dies mid-answer: ConnectionFailed, not a hang."""
        d = self.connection.request(OP_GET, b"\0" * 24)
        self.feed(frame(OP_GET, 1, GET_RESPONSE.pack(100, 0, 0) + b"x" * 100, FLAG_RESPONSE)[:60])
        self.assertNoResult(d)
        self.connection.connectionLost(Failure(ConnectionError("gone")))
        self.failureResultOf(d, ConnectionFailed)
        self.assertEqual(self.clock.getDelayedCalls(), [])


class StallTimeoutTests(SynchronousTestCase):
    """
    Timeouts count time without progress: a 16 MiB transfer that takes
    far longer than the timeout but keeps moving succeeds, one that stops
    moving fails the timeout after its last byte.
    """

    SIZE = 16 << 20
    PIECE = 256 << 10

    def setUp(self):
        self.clock = MemoryReactorClock()
        self.connection = ChunkClientProtocol(self.clock, 30.0, "test:1")
        self.transport = StringTransport()
        self.connection.makeConnection(self.transport)
        self.data = os.urandom(self.SIZE)

    def tearDown(self):
        if self.connection.connected:
            self.connection.connectionLost(Failure(ConnectionError("over")))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def get_answer(self):
        return frame(OP_GET, 1, GET_RESPONSE.pack(self.SIZE, google_crc32c.value(self.data), 0)
                     + self.data, FLAG_RESPONSE)

    def send_put_body(self, seconds_per_piece):
        """Let the transport take the PUT body piece by piece, one every
        C{seconds_per_piece}; @return: the bytes sent."""
        while self.transport.producer is not None:
            self.clock.advance(seconds_per_piece)
            self.transport.producer.resumeProducing()
        return self.transport.value()

    def test_slow_get_survives(self):
        """A GET answer arriving a piece every 20s is
        delivered whole (over 20 minutes in all)."""
        d = self.connection.request(OP_GET, b"\0" * 24)
        answer = self.get_answer()
        for start in range(0, len(answer), self.PIECE):
            self.clock.advance(20)
            self.assertNoResult(d)
            self.connection.dataReceived(answer[start:start + self.PIECE])
        self.assertGreater(self.clock.seconds(), 20 * 60)
        self.assertEqual(self.successResultOf(d).data, self.data)

    def test_stalled_get_fails(self):
        """A GET answer that stops halfway fails 30s after its last byte;
        the rest of it, should it come late, is dropped and the connection
        goes on."""
        d = self.connection.request(OP_GET, b"\0" * 24)
        answer = self.get_answer()
        half = len(answer) // 2
        self.clock.advance(25)
        self.connection.dataReceived(answer[:half])
        self.clock.advance(29.9)
        self.assertNoResult(d)
        self.clock.advance(0.1)
        self.assertIn("nothing moved for 30.0s", str(self.failureResultOf(d, Timeout).value))
        self.connection.dataReceived(answer[half:])
        ping = self.connection.request(OP_PING)
        self.connection.dataReceived(frame(OP_PING, 2, b"", FLAG_RESPONSE))
        self.assertEqual(self.successResultOf(ping), b"")

    def test_slow_put_survives(self):
        """A 16 MiB PUT whose body the transport takes a piece every 20s,
        then 25s of silence while the server stores it: it succeeds."""
        d = self.connection.request(OP_PUT, b"\0" * 8, self.data)
        sent = self.send_put_body(20)
        self.assertEqual(sent[HEADER_SIZE + 8:], self.data)
        self.assertEqual(Header.unpack(sent[:HEADER_SIZE]).body_length, 8 + self.SIZE)
        self.assertGreater(self.clock.seconds(), 20 * 60)
        self.clock.advance(25)
        self.assertNoResult(d)
        self.connection.dataReceived(frame(OP_PUT, 1, CHUNK_INFO.pack(self.SIZE, 7), FLAG_RESPONSE))
        self.assertEqual(self.successResultOf(d), CHUNK_INFO.pack(self.SIZE, 7))

    def test_bodies_out(self):
        """A PUT counts in bodies_out until its body went out whole; then
        body_sent is called."""
        told = []
        self.connection.body_sent = lambda: told.append(self.connection.bodies_out)
        for d in (self.connection.request(OP_PUT, b"\0" * 8, self.data),
                  self.connection.request(OP_PING)):
            d.addErrback(lambda _: None)  # never answered: fail at teardown
        self.assertEqual((self.connection.bodies_out, told), (1, []))
        while self.transport.producer is not None:
            self.transport.producer.resumeProducing()
        self.assertEqual((self.connection.bodies_out, told), (0, [0]))

    def test_stalled_put_fails(self):
        """A PUT whose body stops going out fails 30s after the last piece."""
        d = self.connection.request(OP_PUT, b"\0" * 8, self.data)
        for _ in range(3):
            self.clock.advance(20)
            self.transport.producer.resumeProducing()
        self.clock.advance(29.9)
        self.assertNoResult(d)
        self.clock.advance(0.1)
        self.failureResultOf(d, Timeout)

    def test_queued_behind_a_moving_transfer(self):
        """Requests waiting behind a slow PUT on the same connection live as
        long as its bytes move, then get their own 30s."""
        put = self.connection.request(OP_PUT, b"\0" * 8, self.data)
        self.clock.advance(10)
        ping = self.connection.request(OP_PING)
        self.send_put_body(15)
        self.assertGreater(self.clock.seconds(), 15 * 60)
        self.assertNoResult(ping)
        self.connection.dataReceived(frame(OP_PUT, 1, CHUNK_INFO.pack(self.SIZE, 7), FLAG_RESPONSE))
        self.successResultOf(put)
        self.clock.advance(29.9)
        self.assertNoResult(ping)
        self.clock.advance(0.1)
        self.failureResultOf(ping, Timeout)

    def test_new_request_gets_its_own_time(self):
        """A request sent on a connection that has been silent for 25s,
        with another still waiting, has the full 30s of its own."""
        first = self.connection.request(OP_PING)
        self.clock.advance(25)
        second = self.connection.request(OP_STAT, b"\0" * 8)
        self.clock.advance(5)
        self.failureResultOf(first, Timeout)
        self.clock.advance(24.9)
        self.assertNoResult(second)
        self.clock.advance(0.1)
        self.failureResultOf(second, Timeout)
