"""
Tests for L{speedy.chunkserver.protocol}: the chunkserver's side of the
wire, fed byte by byte through a L{StringTransport}, against
L{MemoryChunkStore}.
"""

import json
import os

import google_crc32c
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel, capturedLogs
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from speedy.chunkserver.protocol import (
    WRITE_BUFFER_LIMIT, ChunkServerFactory)
from speedy.errors import (
    BadRequest, ChecksumMismatch, ChunkExists, ChunkNotFound, Internal, NoSpace,
    RangeNotSatisfiable, ReadOnly, TooLarge, Unavailable)
from speedy.interfaces import IChunkRead, IChunkStore, IChunkWrite
from speedy.testing import MemoryChunkStore
from speedy.wire.frames import (
    ALL_BYTES, ALL_VOLUMES, CHUNK_INFO, COMPACT_REQUEST, COMPACT_RESPONSE,
    ERROR_BODY, FILE_ID, FLAG_ERROR, FLAG_KEEP, FLAG_MORE, FLAG_RESPONSE, GET_REQUEST,
    GET_RESPONSE, HEADER_SIZE, LIST_BATCH, OP_COMPACT, OP_DELETE, OP_GET,
    OP_LIST, OP_PING, OP_PUT, OP_STAT, OP_STATUS, RECEIVE_SIZE, Header, frame)
from speedy.logs import request_id as current_request_id


def put_request(request_id, file_id, data):
    return frame(OP_PUT, request_id, FILE_ID.pack(file_id) + data)


def get_request(request_id, file_id, offset=0, length=ALL_BYTES):
    return frame(OP_GET, request_id, GET_REQUEST.pack(file_id, offset, length))


def parse_frames(data):
    """@return: the (Header, body) of every whole frame in C{data}, and the rest."""
    frames = []
    while len(data) >= HEADER_SIZE:
        header = Header.unpack(data[:HEADER_SIZE])
        end = HEADER_SIZE + header.body_length
        if len(data) < end:
            break
        frames.append((header, data[HEADER_SIZE:end]))
        data = data[end:]
    return frames, data


def error_code(body):
    return ERROR_BODY.unpack_from(body)[0]


class GatedStore(MemoryChunkStore):
    """A memory store whose get(), delete() and finish() wait for the test
    to open their gate: the store lagging."""

    def __init__(self):
        super().__init__()
        self.gates = []

    def _gated(self, result):
        gate = Deferred()
        self.gates.append(gate)
        return gate.addCallback(lambda _: result)

    def get(self, file_id, offset=0, length=None):
        return self._gated(super().get(file_id, offset, length))

    def delete(self, file_id):
        return self._gated(super().delete(file_id))


@implementer(ISSLTransport)
class TLSStringTransport(StringTransport):
    """A StringTransport that says it is TLS."""

    def getPeerCertificate(self):
        return None


class ServerTestsMixin:
    transport_type = StringTransport

    def connect(self, store=None, **options):
        """Connect a server protocol to a fresh transport; remember both."""
        self.clock = Clock()
        self.store = MemoryChunkStore() if store is None else store
        self.factory = ChunkServerFactory(self.clock, self.store, **options)
        self.server = self.factory.buildProtocol(None)
        self.transport = self.transport_type()
        self.server.makeConnection(self.transport)
        self.addCleanup(self.disconnect)

    def disconnect(self):
        if self.server.transport is not None and self.factory.counters["open_connections"]:
            self.server.connectionLost(Failure(ConnectionError("test over")))

    def send(self, data, piece=1):
        """Deliver C{data} to the server C{piece} bytes at a time."""
        for i in range(0, len(data), piece):
            self.server.dataReceived(data[i:i + piece])

    def responses(self):
        """Let streamed bodies finish; @return: the frames written so far."""
        while self.transport.producer is not None:
            self.transport.producer.resumeProducing()
        frames, rest = parse_frames(self.transport.value())
        self.assertEqual(rest, b"", "a partial frame was written")
        self.transport.clear()
        return frames

    def only_response(self):
        frames = self.responses()
        self.assertEqual(len(frames), 1, frames)
        return frames[0]

    def assertError(self, response, error, request_id):
        header, body = response
        self.assertEqual((header.flags, header.request_id), (FLAG_RESPONSE | FLAG_ERROR, request_id))
        self.assertEqual(error_code(body), error.code, body)


class _TCPLikeTransport(StringTransport):
    """A StringTransport with a TCP transport's read size."""
    bufferSize = 64 * 1024


class ReadSizeTests(ServerTestsMixin, SynchronousTestCase):
    transport_type = _TCPLikeTransport

    def test_reads_a_mebibyte_at_a_time(self):
        """
        The server reads its socket L{RECEIVE_SIZE} bytes at a time, not
        Twisted's 64 KiB, and requests arriving in such reads, several to a
        read or split across them, are all served.
        """
        self.connect()
        self.assertEqual(self.transport.bufferSize, RECEIVE_SIZE)
        data = bytes(range(256)) * (3 * RECEIVE_SIZE // 512)
        stream = put_request(1, 42, data) + get_request(2, 42) + put_request(3, 43, b"tail")
        self.send(stream, piece=RECEIVE_SIZE)
        (put, put_info), (get, got), (tail, _) = self.responses()
        self.assertEqual([(f.opcode, f.request_id) for f in (put, get, tail)],
                         [(OP_PUT, 1), (OP_GET, 2), (OP_PUT, 3)])
        self.assertEqual(CHUNK_INFO.unpack(put_info), (len(data), google_crc32c.value(data)))
        self.assertEqual(got[GET_RESPONSE.size:], data)


class RequestTests(ServerTestsMixin, SynchronousTestCase):

    def test_memory_store_provides_interfaces(self):
        store = MemoryChunkStore()
        verifyObject(IChunkStore, store)
        verifyObject(IChunkWrite, store.put(1, 0))
        store.put(2, 3).write(b"abc")
        w = store.put(2, 3)
        w.write(b"abc")
        w.finish()
        verifyObject(IChunkRead, self.successResultOf(store.get(2)))

    def test_put_then_get_byte_at_a_time(self):
        """A chunk fed one byte per dataReceived is stored and read back whole."""
        self.connect()
        data = bytes(range(256)) * 40
        self.send(put_request(1, 42, data))
        header, body = self.only_response()
        self.assertEqual((header.opcode, header.request_id, header.flags), (OP_PUT, 1, FLAG_RESPONSE))
        self.assertEqual(CHUNK_INFO.unpack(body), (len(data), google_crc32c.value(data)))
        self.send(get_request(2, 42))
        header, body = self.only_response()
        self.assertEqual((header.opcode, header.request_id), (OP_GET, 2))
        size, crc, offset = GET_RESPONSE.unpack_from(body)
        self.assertEqual((size, crc, offset), (len(data), google_crc32c.value(data), 0))
        self.assertEqual(body[GET_RESPONSE.size:], data)
        self.assertEqual(self.store.pinned, 0)

    def test_get_range(self):
        self.connect()
        self.send(put_request(1, 7, b"0123456789"), piece=1000)
        self.responses()
        self.send(get_request(2, 7, 3, 4), piece=1000)
        header, body = self.only_response()
        self.assertEqual(GET_RESPONSE.unpack_from(body)[2], 3)
        self.assertEqual(body[GET_RESPONSE.size:], b"3456")

    def test_get_outside_chunk(self):
        self.connect()
        self.send(put_request(1, 7, b"0123456789"))
        self.responses()
        self.send(get_request(2, 7, 8, 4))
        self.assertError(self.only_response(), RangeNotSatisfiable, 2)

    def test_get_missing(self):
        self.connect()
        self.send(get_request(5, 99))
        self.assertError(self.only_response(), ChunkNotFound, 5)

    def test_damaged_chunk(self):
        """A damaged record answers CHECKSUM_MISMATCH before any body byte."""
        self.connect()
        self.send(put_request(1, 7, b"data"))
        self.responses()
        self.store.damage(7)
        self.send(get_request(2, 7))
        header, body = self.only_response()
        self.assertError((header, body), ChecksumMismatch, 2)
        self.assertEqual(self.store.counters["checksum_errors"], 1)

    def test_stat(self):
        self.connect()
        self.send(put_request(1, 7, b"data") + frame(OP_STAT, 2, FILE_ID.pack(7))
                  + frame(OP_STAT, 3, FILE_ID.pack(8)))
        put, stat, missing = self.responses()
        self.assertEqual(CHUNK_INFO.unpack(stat[1]), (4, google_crc32c.value(b"data")))
        self.assertError(missing, ChunkNotFound, 3)

    def test_delete(self):
        self.connect()
        self.send(put_request(1, 7, b"data") + frame(OP_DELETE, 2, FILE_ID.pack(7))
                  + frame(OP_DELETE, 3, FILE_ID.pack(7)))
        put, deleted, again = self.responses()
        self.assertEqual((deleted[0].flags, deleted[1]), (FLAG_RESPONSE, b""))
        self.assertError(again, ChunkNotFound, 3)
        self.assertIsNone(self.store.stat(7))

    def test_ping(self):
        self.connect()
        self.send(frame(OP_PING, 77))
        header, body = self.only_response()
        self.assertEqual((header.opcode, header.request_id, header.flags, body),
                         (OP_PING, 77, FLAG_RESPONSE, b""))

    def test_status(self):
        """STATUS answers the store's status and the server's counters."""
        self.connect()
        self.send(put_request(1, 7, b"data"))
        self.send(frame(OP_STATUS, 2))
        header, body = self.responses()[-1]
        status = json.loads(body)
        self.assertEqual((status["used"], status["chunks"], status["read_only"]), (4, 1, False))
        self.assertEqual(status["wire"]["requests"], 2)

    def test_list(self):
        """LIST streams every id, ascending, in frames flagged MORE but the last."""
        self.connect()
        ids = list(range(1, LIST_BATCH + 11))
        for file_id in reversed(ids):
            self.store.add(file_id, b"x")
        self.send(frame(OP_LIST, 4))
        frames = self.responses()
        self.assertEqual([h.flags for h, _ in frames], [FLAG_RESPONSE | FLAG_MORE, FLAG_RESPONSE])
        listed = [FILE_ID.unpack_from(b, i)[0] for _, b in frames for i in range(0, len(b), 8)]
        self.assertEqual(listed, ids)

    def test_list_empty(self):
        self.connect()
        self.send(frame(OP_LIST, 4))
        header, body = self.only_response()
        self.assertEqual((header.flags, body), (FLAG_RESPONSE, b""))

    def test_compact(self):
        self.connect()
        self.send(put_request(1, 7, b"data") + frame(OP_DELETE, 2, FILE_ID.pack(7))
                  + frame(OP_COMPACT, 3, COMPACT_REQUEST.pack(ALL_VOLUMES)))
        header, body = self.responses()[-1]
        self.assertEqual(COMPACT_RESPONSE.unpack(body), (4,))

    def test_put_idempotent_and_conflict(self):
        self.connect()
        self.send(put_request(1, 7, b"data") + put_request(2, 7, b"data") + put_request(3, 7, b"DATA"))
        first, again, other = self.responses()
        self.assertEqual(first[1], again[1])
        self.assertError(other, ChunkExists, 3)

    def test_empty_chunk(self):
        self.connect()
        self.send(put_request(1, 7, b"") + get_request(2, 7))
        put, get = self.responses()
        self.assertEqual(CHUNK_INFO.unpack(put[1]), (0, 0))
        self.assertEqual(get[1], GET_RESPONSE.pack(0, 0, 0))

    def test_answers_out_of_order(self):
        """A request the store is slow on does not hold up later ones."""
        self.connect(GatedStore())
        self.send(put_request(1, 7, b"data"))
        self.responses()
        self.send(get_request(2, 7) + frame(OP_PING, 3))
        self.assertEqual([h.request_id for h, _ in self.responses()], [3])
        self.store.gates[0].callback(None)
        header, body = self.only_response()
        self.assertEqual((header.request_id, body[GET_RESPONSE.size:]), (2, b"data"))

    def test_unavailable_while_opening(self):
        """Until the store is open every store request answers UNAVAILABLE."""
        self.connect()
        self.factory.store = None
        self.send(put_request(1, 7, b"data") + get_request(2, 7) + frame(OP_PING, 3))
        put, get, ping = self.responses()
        self.assertError(put, Unavailable, 1)
        self.assertError(get, Unavailable, 2)
        self.assertEqual(ping[0].flags, FLAG_RESPONSE)


class BadInputTests(ServerTestsMixin, SynchronousTestCase):

    def test_unknown_opcode(self):
        """An unknown opcode answers BAD_REQUEST, skips its body, and the
        connection goes on."""
        self.connect()
        self.send(frame(99, 1, b"whatever body") + frame(OP_PING, 2))
        bad, ping = self.responses()
        self.assertError(bad, BadRequest, 1)
        self.assertEqual(ping[0].request_id, 2)
        self.assertFalse(self.transport.disconnecting)

    def test_wrong_body_length(self):
        self.connect()
        self.send(frame(OP_STAT, 1, b"short") + frame(OP_PING, 2, b"x") + frame(OP_PING, 3))
        stat, ping, ok = self.responses()
        self.assertError(stat, BadRequest, 1)
        self.assertError(ping, BadRequest, 2)
        self.assertEqual(ok[0].flags, FLAG_RESPONSE)

    def test_put_without_file_id(self):
        self.connect()
        self.send(frame(OP_PUT, 1, b"abc") + frame(OP_PING, 2))
        bad, ping = self.responses()
        self.assertError(bad, BadRequest, 1)
        self.assertEqual(self.store.open_writes, 0)

    def test_flags_in_request(self):
        self.connect()
        self.send(frame(OP_PING, 1, flags=FLAG_RESPONSE) + frame(OP_PING, 2))
        bad, ping = self.responses()
        self.assertError(bad, BadRequest, 1)

    def test_bad_magic(self):
        """Garbage where a header should be: an error frame, then close."""
        self.connect()
        self.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        header, body = self.only_response()
        self.assertEqual(header.request_id, 0)
        self.assertEqual(error_code(body), BadRequest.code)
        self.assertTrue(self.transport.disconnecting)
        self.assertEqual(self.factory.counters["bad_frames"], 1)

    def test_bad_version(self):
        self.connect()
        raw = bytearray(frame(OP_PING, 1))
        raw[4] = 2
        self.send(bytes(raw))
        self.assertError(self.only_response(), BadRequest, 0)
        self.assertTrue(self.transport.disconnecting)

    def test_oversized_body(self):
        """A body longer than the server takes: TOO_LARGE, then close, and
        nothing is stored."""
        self.connect(max_chunk=1000)
        self.send(put_request(3, 7, b"x" * 1001))
        self.assertError(self.only_response(), TooLarge, 3)
        self.assertTrue(self.transport.disconnecting)
        self.assertEqual((self.store.open_writes, list(self.store.file_ids())), (0, []))

    def test_half_sent_put_is_aborted(self):
        """The connection dies mid-body: the write is aborted, nothing stored."""
        self.connect()
        self.send(put_request(1, 7, b"x" * 1000)[:500])
        self.assertEqual(self.store.open_writes, 1)
        self.disconnect()
        self.assertEqual(self.store.open_writes, 0)
        self.assertEqual(self.store.counters["aborts"], 1)
        self.assertEqual(list(self.store.file_ids()), [])

    def test_put_refused(self):
        """A store that refuses a PUT: the error is answered at once, the
        rest of the body skipped, and the connection goes on."""
        self.connect()
        self.store.read_only = True
        self.send(put_request(1, 7, b"x" * 100)[:HEADER_SIZE + 20])
        self.assertError(self.only_response(), ReadOnly, 1)
        self.send(put_request(1, 7, b"x" * 100)[HEADER_SIZE + 20:] + frame(OP_PING, 2))
        self.assertEqual([h.request_id for h, _ in self.responses()], [2])
        self.assertEqual(self.store.open_writes, 0)

    def test_store_write_fails_midway(self):
        """The store fails during the body (disk full): aborted, answered,
        and the next request works."""
        self.connect()
        real_put = self.store.put

        def put(file_id, size, keep=False):
            write = real_put(file_id, size, keep)
            real_write = write.write

            def failing_write(data):
                if len(write._data) + len(data) > 50:
                    raise NoSpace("disk full")
                real_write(data)
            write.write = failing_write
            return write
        self.store.put = put
        self.send(put_request(1, 7, b"x" * 100) + frame(OP_PING, 2), piece=10)
        nospace, ping = self.responses()
        self.assertError(nospace, NoSpace, 1)
        self.assertEqual((self.store.open_writes, self.store.counters["aborts"]), (0, 1))
        self.assertEqual(list(self.store.file_ids()), [])

    def test_store_bug(self):
        """An unexpected exception in the store is answered INTERNAL and
        logged; the server goes on."""
        self.connect()
        self.store.delete = lambda file_id: fail(ZeroDivisionError("bug"))
        self.send(frame(OP_DELETE, 1, FILE_ID.pack(1)) + frame(OP_PING, 2))
        bug, ping = self.responses()
        self.assertError(bug, Internal, 1)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_connection_lost_mid_get_releases(self):
        """A GET whose connection dies before its body went out releases its read."""
        self.connect()
        self.send(put_request(1, 7, b"x" * 1_000_000))
        self.responses()
        self.send(get_request(2, 7))
        self.assertEqual(self.store.pinned, 1)
        self.disconnect()
        self.assertEqual(self.store.pinned, 0)

    def test_client_gone_mid_body_is_not_an_error(self):
        """A client that hangs up while a GET's body streams (the transport
        stops the body's producer before the protocol hears of the loss, as
        Twisted does) is counted, not logged as a failed request."""
        self.connect()
        self.send(put_request(1, 7, b"x" * 1_000_000))
        self.responses()
        self.send(get_request(2, 7))
        self.transport.producer.stopProducing()
        self.disconnect()
        self.assertEqual(self.flushLoggedErrors(), [])
        self.assertEqual(self.factory.counters["answers_abandoned"], 1)
        self.assertEqual(self.store.pinned, 0)

    def test_unanswerable_read_is_released(self):
        """A read the server cannot frame (longer than a frame can say) is
        answered INTERNAL and released, not left pinning its volume."""
        self.connect()
        self.store.add(7, b"data")
        get = self.store.get

        def huge(file_id, offset=0, length=None):
            read = self.successResultOf(get(file_id, offset, length))
            read.length = 2**32
            return succeed(read)

        self.store.get = huge
        self.send(get_request(1, 7))
        self.assertError(self.only_response(), Internal, 1)
        self.assertEqual(self.store.pinned, 0)
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)

    def test_connection_lost_while_store_works(self):
        """A read the store hands over after the connection died is released."""
        self.connect(GatedStore())
        self.send(put_request(1, 7, b"data"))
        self.responses()
        self.send(get_request(2, 7) + get_request(3, 7))
        self.disconnect()
        for gate in self.store.gates:
            gate.callback(None)
        self.assertEqual(self.store.pinned, 0)
        self.assertEqual(self.transport.value(), b"")

    def test_idle_timeout(self):
        self.connect(idle_timeout=60)
        self.clock.advance(59)
        self.send(frame(OP_PING, 1))
        self.clock.advance(59)
        self.assertFalse(self.transport.disconnecting)
        self.clock.advance(1)
        self.assertTrue(self.transport.disconnected)
        self.assertEqual(self.factory.counters["idle_timeouts"], 1)

    def test_slow_body_times_out(self):
        """A peer that stops sending mid-body is cut off, and its write aborted."""
        self.connect(idle_timeout=60)
        self.send(put_request(1, 7, b"x" * 100)[:30])
        self.clock.advance(60)
        self.assertTrue(self.transport.disconnected)
        self.disconnect()
        self.assertEqual(self.store.open_writes, 0)

    def test_no_idle_timeout_while_store_works(self):
        """A slow store does not make the server drop its client."""
        self.connect(GatedStore(), idle_timeout=60)
        self.store.add(7, b"data")
        self.send(frame(OP_DELETE, 1, FILE_ID.pack(7)))
        self.clock.advance(600)
        self.assertFalse(self.transport.disconnecting)
        self.store.gates[0].callback(None)
        self.assertEqual(self.only_response()[0].request_id, 1)

    def test_max_in_flight(self):
        """At the in-flight limit the server stops reading, and reads on
        once an answer went out."""
        self.connect(GatedStore(), max_in_flight=2)
        self.store.add(7, b"data")
        self.send(get_request(1, 7) + get_request(2, 7) + frame(OP_PING, 3), piece=1000)
        self.assertEqual(self.transport.producerState, "paused")
        self.assertEqual(self.responses(), [])
        self.store.gates[0].callback(None)
        self.assertEqual([h.request_id for h, _ in self.responses()], [1, 3])
        self.assertEqual(self.transport.producerState, "producing")
        self.store.gates[1].callback(None)
        self.assertEqual([h.request_id for h, _ in self.responses()], [2])


class KeepingStore(MemoryChunkStore):
    """A memory store that records the C{keep} of every put."""

    def __init__(self):
        super().__init__()
        self.keeps = []

    def put(self, file_id, size, keep=False):
        self.keeps.append((file_id, keep))
        return super().put(file_id, size, keep)


class FlagTests(ServerTestsMixin, SynchronousTestCase):
    """Request flags: KEEP on a PUT reaches the store; any other flag, or
    KEEP on another request, is refused."""

    def test_keep_on_put(self):
        self.connect(KeepingStore())
        data = b"kept" * 100
        self.send(frame(OP_PUT, 1, FILE_ID.pack(9) + data, FLAG_KEEP), piece=7)
        header, body = self.only_response()
        self.assertEqual((header.request_id, header.flags), (1, FLAG_RESPONSE))
        self.assertEqual(CHUNK_INFO.unpack(body), (len(data), google_crc32c.value(data)))
        self.send(put_request(2, 10, data))
        self.only_response()
        self.assertEqual(self.store.keeps, [(9, True), (10, False)])
        self.assertEqual(self.store.contents(9), data)

    def test_keep_refused_on_other_requests(self):
        """KEEP on a GET, STAT, DELETE or PING: BAD_REQUEST, the body
        skipped, nothing done, and the connection goes on."""
        self.connect()
        self.send(put_request(1, 7, b"abc"))
        self.only_response()
        requests = [
            frame(OP_GET, 2, GET_REQUEST.pack(7, 0, ALL_BYTES), FLAG_KEEP),
            frame(OP_STAT, 3, FILE_ID.pack(7), FLAG_KEEP),
            frame(OP_DELETE, 4, FILE_ID.pack(7), FLAG_KEEP),
            frame(OP_PING, 5, flags=FLAG_KEEP),
        ]
        self.send(b"".join(requests) + frame(OP_PING, 6))
        responses = self.responses()
        for response, request_id in zip(responses, [2, 3, 4, 5]):
            self.assertError(response, BadRequest, request_id)
        self.assertEqual(responses[4][0].flags, FLAG_RESPONSE)
        self.assertEqual(self.store.contents(7), b"abc")
        self.assertFalse(self.transport.disconnecting)

    def test_other_known_flags_refused_on_put(self):
        """A PUT flagged RESPONSE (with or without KEEP): refused, its body
        skipped, nothing stored."""
        self.connect(KeepingStore())
        self.send(frame(OP_PUT, 1, FILE_ID.pack(7) + b"abc", FLAG_RESPONSE)
                  + frame(OP_PUT, 2, FILE_ID.pack(8) + b"abc", FLAG_RESPONSE | FLAG_KEEP)
                  + frame(OP_PING, 3))
        first, second, ping = self.responses()
        self.assertError(first, BadRequest, 1)
        self.assertError(second, BadRequest, 2)
        self.assertEqual(ping[0].flags, FLAG_RESPONSE)
        self.assertEqual((self.store.keeps, list(self.store.file_ids())), ([], []))

    def test_unknown_flag_bits(self):
        """Flag bits the protocol does not define: a bad frame, answered,
        then the connection closes."""
        self.connect()
        raw = bytearray(put_request(1, 7, b"abc"))
        raw[6] = FLAG_KEEP | 0x10
        self.send(bytes(raw))
        header, body = self.only_response()
        self.assertEqual(error_code(body), BadRequest.code)
        self.assertTrue(self.transport.disconnecting)
        self.assertEqual(self.factory.counters["bad_frames"], 1)
        self.assertEqual(list(self.store.file_ids()), [])


class _RecordingStore(MemoryChunkStore):
    """A memory store that notes the request id current at each call."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def get(self, file_id, offset=0, length=None):
        self.seen.append(("get", current_request_id.get()))
        return super().get(file_id, offset, length)

    def put(self, file_id, size, keep=False):
        self.seen.append(("put", current_request_id.get()))
        return super().put(file_id, size, keep)


def failures(events):
    """@return: the chunkserver protocol's events about failed requests."""
    return [e for e in events if "wire_id" in e]


class TraceTests(ServerTestsMixin, SynchronousTestCase):
    """
    A request's trace (the request id of the operation it serves) is taken
    off its body; the log events about the request carry it as
    C{request_id}, and the store runs under it.
    """

    def test_get_missing_logged_with_trace(self):
        """A traced GET of a missing chunk: answered CHUNK_NOT_FOUND as
        without the trace, and logged (info) with the request id, file id,
        code and wire id."""
        self.connect()
        with capturedLogs() as events:
            self.send(frame(OP_GET, 5, GET_REQUEST.pack(99, 0, ALL_BYTES), trace=b"5f0c1d2e3a4b5c6d"),
                      piece=3)
        self.assertError(self.only_response(), ChunkNotFound, 5)
        [event] = failures(events)
        self.assertEqual(event["request_id"], "5f0c1d2e3a4b5c6d")
        self.assertEqual((event["file_id"], event["code"], event["wire_id"], event["log_level"]),
                         (99, "CHUNK_NOT_FOUND", 5, LogLevel.info))
        self.assertIn("5f0c1d2e3a4b5c6d", event["log_format"].format(**event))

    def test_damaged_chunk_logged_with_trace(self):
        """A traced GET of a damaged record: CHECKSUM_MISMATCH, logged as a
        warning with the request id; the store ran under it."""
        self.connect(_RecordingStore())
        self.send(put_request(1, 7, b"data"))
        self.responses()
        self.store.damage(7)
        with capturedLogs() as events:
            self.send(frame(OP_GET, 2, GET_REQUEST.pack(7, 0, ALL_BYTES), trace=b"pull-1"))
        self.assertError(self.only_response(), ChecksumMismatch, 2)
        [event] = failures(events)
        self.assertEqual((event["request_id"], event["code"], event["log_level"]),
                         ("pull-1", "CHECKSUM_MISMATCH", LogLevel.warn))
        self.assertEqual(self.store.seen[-1], ("get", "pull-1"))
        self.assertIsNone(current_request_id.get())

    def test_traced_requests_answered_as_untraced(self):
        """Traced PUT, GET, STAT and PING (a PUT byte by byte, KEEP kept)
        answer as they would without a trace."""
        self.connect(KeepingStore())
        data = b"traced" * 50
        self.send(frame(OP_PUT, 1, FILE_ID.pack(9) + data, FLAG_KEEP, trace=b"push-7"), piece=1)
        self.send(frame(OP_GET, 2, GET_REQUEST.pack(9, 1, 4), trace=b"pull-8")
                  + frame(OP_STAT, 3, FILE_ID.pack(9), trace=b"x")
                  + frame(OP_PING, 4, trace=b"y"))
        put, get, stat, ping = self.responses()
        self.assertEqual(CHUNK_INFO.unpack(put[1]), (len(data), google_crc32c.value(data)))
        self.assertEqual(bytes(get[1][GET_RESPONSE.size:]), data[1:5])
        self.assertEqual(CHUNK_INFO.unpack(stat[1]), (len(data), google_crc32c.value(data)))
        self.assertEqual((ping[0].flags, ping[1]), (FLAG_RESPONSE, b""))
        self.assertEqual(self.store.keeps, [(9, True)])
        self.assertEqual(self.store.contents(9), data)

    def test_put_refused_logged_with_trace(self):
        """A traced PUT the store refuses (read-only): its error, logged
        with the request id and file id; nothing stored."""
        store = MemoryChunkStore()
        store.read_only = True
        self.connect(store)
        with capturedLogs() as events:
            self.send(frame(OP_PUT, 4, FILE_ID.pack(3) + b"abc", trace=b"push-2"), piece=5)
        self.assertError(self.only_response(), ReadOnly, 4)
        [event] = failures(events)
        self.assertEqual((event["request_id"], event["file_id"], event["code"]),
                         ("push-2", 3, "READ_ONLY"))

    def test_untraced_error_logged_without_id(self):
        """An error answered to a request without a trace is logged too,
        its C{request_id} None."""
        self.connect()
        with capturedLogs() as events:
            self.send(frame(OP_DELETE, 8, FILE_ID.pack(4)))
        self.assertError(self.only_response(), ChunkNotFound, 8)
        [event] = failures(events)
        self.assertEqual((event["request_id"], event["file_id"], event["op"]), (None, 4, "DELETE"))

    def test_quiet_errors_limited(self):
        """Lines about missing chunks are info and limited per listener (a
        sweep deleting thousands twice); the next says how many were held
        back.  Warnings are not limited."""
        self.connect()
        budget = self.factory.quiet_errors
        with capturedLogs() as events:
            self.send(b"".join(frame(OP_STAT, i, FILE_ID.pack(i)) for i in range(1, budget.burst + 11)),
                      piece=4096)
        self.assertEqual(len(self.responses()), budget.burst + 10)
        self.assertEqual(len(failures(events)), budget.burst)
        self.clock.advance(budget.interval)
        with capturedLogs() as events:
            self.send(frame(OP_STAT, 1, FILE_ID.pack(1)))
        [event] = failures(events)
        self.assertEqual(event["held_back"], 10)

    def test_bad_trace_refused(self):
        """A trace of other bytes than an id's (a forged log line, say):
        BAD_REQUEST, nothing done, and the connection goes on."""
        self.connect()
        self.send(frame(OP_PUT, 1, FILE_ID.pack(7) + b"abc", trace=b"a\nb")
                  + frame(OP_GET, 2, GET_REQUEST.pack(7, 0, ALL_BYTES), trace=b"{x}")
                  + frame(OP_PING, 3))
        put, get, ping = self.responses()
        self.assertError(put, BadRequest, 1)
        self.assertError(get, BadRequest, 2)
        self.assertEqual(ping[0].flags, FLAG_RESPONSE)
        self.assertEqual(list(self.store.file_ids()), [])
        self.assertFalse(self.transport.disconnecting)

    def test_trace_counts_in_body_length(self):
        """A small request whose body is its opcode's length plus its trace
        is taken; one byte short is BAD_REQUEST, the connection kept."""
        self.connect()
        short = bytearray(frame(OP_STAT, 1, FILE_ID.pack(7)[:-1], trace=b"abc"))
        self.send(bytes(short) + frame(OP_PING, 2))
        stat, ping = self.responses()
        self.assertError(stat, BadRequest, 1)
        self.assertEqual(ping[0].flags, FLAG_RESPONSE)

    def test_trace_beyond_limit_closes(self):
        """Byte 7 above the longest trace: a bad frame, answered, closed."""
        self.connect()
        raw = bytearray(frame(OP_PING, 1, b"x" * 70))
        raw[7] = 70
        self.send(bytes(raw))
        header, body = self.only_response()
        self.assertEqual(error_code(body), BadRequest.code)
        self.assertTrue(self.transport.disconnecting)

    def test_unknown_flag_with_trace(self):
        """A traced request with a flag bit the protocol does not define is
        a bad frame all the same; a known flag it may not carry is
        BAD_REQUEST with the connection kept."""
        self.connect()
        self.send(frame(OP_GET, 1, GET_REQUEST.pack(7, 0, ALL_BYTES), FLAG_KEEP, trace=b"t")
                  + frame(OP_PING, 2))
        get, ping = self.responses()
        self.assertError(get, BadRequest, 1)
        self.assertEqual(ping[0].flags, FLAG_RESPONSE)
        raw = bytearray(frame(OP_PING, 3, trace=b"t"))
        raw[6] = 0x40
        self.send(bytes(raw))
        header, body = self.only_response()
        self.assertEqual(error_code(body), BadRequest.code)
        self.assertTrue(self.transport.disconnecting)


class TLSTests(ServerTestsMixin, SynchronousTestCase):
    """Under TLS the body goes out through read(), never sendfile."""

    transport_type = TLSStringTransport

    def test_get(self):
        self.connect()
        data = b"y" * 700_000
        self.send(put_request(1, 7, data), piece=65536)
        self.responses()
        self.send(get_request(2, 7))
        header, body = self.only_response()
        self.assertEqual(body[GET_RESPONSE.size:], data)
        self.assertEqual(self.store.pinned, 0)


class BackPressureTests(ServerTestsMixin, SynchronousTestCase):

    def test_lagging_store_pauses_reading(self):
        """While the store holds more than WRITE_BUFFER_LIMIT of a PUT body
        in memory the server stops reading; it reads on once the store
        caught up, and the chunk is stored whole."""
        self.connect()
        self.store.lagging = True
        data = os.urandom(WRITE_BUFFER_LIMIT + 300_000)
        request = put_request(1, 7, data)
        sent = WRITE_BUFFER_LIMIT + 100_000
        self.send(request[:sent], piece=65536)
        self.assertEqual(self.transport.producerState, "paused")
        self.clock.advance(1)
        self.assertEqual(self.transport.producerState, "paused")
        self.send(request[sent:], piece=65536)  # held, not handed to the store
        self.assertEqual(self.responses(), [])
        self.store.catch_up()
        self.assertEqual(self.transport.producerState, "producing")
        header, body = self.only_response()
        self.assertEqual(CHUNK_INFO.unpack(body), (len(data), google_crc32c.value(data)))
        self.assertEqual(self.store.contents(7), data)
        self.assertEqual([call.func.__name__ for call in self.clock.getDelayedCalls()],
                         ["_idle_expired"])

    def test_lagging_store_no_idle_timeout(self):
        """A client waiting on a lagging store is not cut off as idle, and a
        connection lost meanwhile leaves no timer behind."""
        self.connect(idle_timeout=60)
        self.store.lagging = True
        self.send(put_request(1, 7, b"x" * (WRITE_BUFFER_LIMIT + 10))[:WRITE_BUFFER_LIMIT + 30],
                  piece=1 << 20)
        self.clock.advance(120)
        self.assertFalse(self.transport.disconnecting)
        self.disconnect()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.store.open_writes, 0)
        self.store.catch_up()
        self.assertEqual(self.transport.producerState, "paused")
        self.assertEqual(self.store.contents(7), None)
