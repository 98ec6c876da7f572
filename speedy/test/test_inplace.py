"""
Tests for L{speedy.zerocopy.inplace}: socket reads straight into the buffer the
bytes belong in, and the chunkserver's PUT bodies read that way.
"""

import os
import socket

from twisted.internet import main
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from speedy.chunkserver import protocol as chunkserver_protocol
from speedy.chunkserver.protocol import ChunkServerFactory
from speedy.crc import crc32c
from speedy.test.test_chunkserver_protocol import get_request, parse_frames, put_request
from speedy.testing import MemoryChunkStore
from speedy.wire.frames import CHUNK_INFO, FLAG_ERROR, GET_RESPONSE, OP_GET, OP_PUT
from speedy.zerocopy.inplace import InPlaceReader, can_read_in_place, read_in_place


class _SocketTransport(StringTransport):
    """
    A StringTransport reading from a real socket: C{doRead} as Twisted's TCP
    transport does it (C{recv}, then C{dataReceived}), so that
    L{read_in_place} can take it over.
    """

    bufferSize = 65536

    def __init__(self, sock):
        super().__init__()
        self.socket = sock
        self.plain_reads = 0

    def doRead(self):
        try:
            data = self.socket.recv(self.bufferSize)
        except BlockingIOError:
            return None
        if not data:
            return main.CONNECTION_DONE
        self.plain_reads += 1
        self.protocol.dataReceived(data)
        return None


def _socket_pair(test):
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    test.addCleanup(ours.close)
    test.addCleanup(theirs.close)
    return ours, theirs


class InPlaceReaderTests(SynchronousTestCase):

    def setUp(self):
        self.ours, self.theirs = _socket_pair(self)
        self.fallbacks = 0
        self.place = None
        self.counts = []

    def reader(self):
        transport = _SocketTransport(self.ours)
        transport.doRead = self.fallback
        return InPlaceReader(transport, lambda: self.place, self.counts.append)

    def fallback(self):
        self.fallbacks += 1
        return "fallback"

    def test_reads_into_the_place_given(self):
        """Bytes go into the place C{space()} gives, no more than fits, and
        C{received} is told how many."""
        reader = self.reader()
        buffer = bytearray(5)
        self.place = memoryview(buffer)[1:4]
        self.theirs.sendall(b"abcdef")
        self.assertIsNone(reader.doRead())
        self.assertEqual((bytes(buffer), self.counts, self.fallbacks), (b"\0abc\0", [3], 0))
        self.assertEqual(self.ours.recv(10), b"def")
        self.assertEqual(reader.reads_in_place, 1)

    def test_no_place_reads_as_twisted_does(self):
        reader = self.reader()
        self.assertEqual(reader.doRead(), "fallback")
        self.assertEqual((self.fallbacks, self.counts), (1, []))

    def test_nothing_to_read(self):
        """A spurious wakeup (EAGAIN) reads nothing and loses nothing."""
        reader = self.reader()
        self.place = memoryview(bytearray(4))
        self.assertIsNone(reader.doRead())
        self.assertEqual(self.counts, [])

    def test_end_of_stream(self):
        reader = self.reader()
        self.place = memoryview(bytearray(4))
        self.theirs.shutdown(socket.SHUT_WR)
        self.assertEqual(reader.doRead(), main.CONNECTION_DONE)

    def test_socket_error(self):
        reader = self.reader()
        self.place = memoryview(bytearray(4))
        self.ours.close()
        self.assertEqual(reader.doRead(), main.CONNECTION_LOST)

    def test_only_plain_tcp(self):
        """A transport that is not Twisted's plain TCP (a test transport, or
        TLS, which must decrypt first) keeps its own reads."""
        self.assertFalse(can_read_in_place(StringTransport()))


class ChunkServerInPlaceTests(SynchronousTestCase):
    """The chunkserver reads PUT bodies into the store's buffers."""

    def connect(self, in_place=4096):
        ours, self.peer = _socket_pair(self)
        self.store = MemoryChunkStore()
        self.store.in_place = in_place
        self.factory = ChunkServerFactory(Clock(), self.store)
        self.server = self.factory.buildProtocol(None)
        self.transport = _SocketTransport(ours)
        readers = []

        def take_over(transport, space, received):
            readers.append(read_in_place(transport, space, received))

        self.patch(chunkserver_protocol, "can_read_in_place", lambda t: t is self.transport)
        self.patch(chunkserver_protocol, "read_in_place", take_over)
        self.transport.protocol = self.server
        self.server.makeConnection(self.transport)
        self.addCleanup(self.server.connectionLost, None)
        [self.reader] = readers

    def exchange(self, data):
        """Send C{data} in 7000-byte writes, each read as the reactor would.
        @return: the frames answered."""
        for i in range(0, len(data), 7000):
            self.peer.sendall(data[i:i + 7000])
            while self._pending():
                self.assertIsNone(self.transport.doRead())
        frames, rest = parse_frames(self.transport.value())
        self.assertEqual(rest, b"")
        self.transport.clear()
        return frames

    def _pending(self):
        try:
            return bool(self.transport.socket.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
        except BlockingIOError:
            return False

    def test_put_body_read_in_place(self):
        """
        A PUT body's bytes are read into the store's place for them, the
        frames around it as before: the chunk is stored whole and right,
        and the next request is answered.
        """
        self.connect()
        data = os.urandom(50000)
        [(put, info)] = self.exchange(put_request(1, 42, data))
        self.assertEqual((put.opcode, put.flags & FLAG_ERROR), (OP_PUT, 0))
        self.assertEqual(CHUNK_INFO.unpack(info), (len(data), crc32c(data)))
        self.assertGreater(self.reader.reads_in_place, 5)
        [(get, body)] = self.exchange(get_request(2, 42))
        self.assertEqual((get.opcode, body[GET_RESPONSE.size:]), (OP_GET, data))

    def test_refused_mid_body(self):
        """A store failing a piece read in place refuses the PUT at once,
        and the rest of its body is skipped, not taken for frames."""
        self.connect()
        request = put_request(1, 42, os.urandom(50000))
        self.assertEqual(self.exchange(request[:21000]), [])
        self.assertGreater(self.reader.reads_in_place, 0)
        self.store.close()  # its writes now fail
        [(put, _)] = self.exchange(request[21000:])
        self.assertEqual((put.opcode, put.request_id, put.flags & FLAG_ERROR),
                         (OP_PUT, 1, FLAG_ERROR))
        [(get, _)] = self.exchange(get_request(2, 42))
        self.assertEqual((get.opcode, get.request_id), (OP_GET, 2))

    def test_peer_gone_mid_body(self):
        """A client that goes away in the middle of a body read in place
        ends the connection (as the reactor is told), and the half-read
        PUT is aborted: nothing of it is stored."""
        self.connect()
        request = put_request(1, 42, os.urandom(50000))
        self.assertEqual(self.exchange(request[:30000]), [])
        self.assertGreater(self.reader.reads_in_place, 0)
        self.assertEqual(self.store.open_writes, 1)
        self.peer.close()
        reason = self.transport.doRead()
        self.assertEqual(reason, main.CONNECTION_DONE)
        self.server.connectionLost(Failure(reason))
        self.assertEqual(self.store.open_writes, 0)
        self.assertIsNone(self.store.contents(42))
