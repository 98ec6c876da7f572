"""
L{speedy.wire.producers.BytesBody} on a real loopback TCP connection: each
C{bytes} piece of a body is handed to the transport whole, the very object
(no copy), alone in its buffer, and the frames around it arrive intact and
in order; a chunk PUT through L{ChunkClientProtocol} goes out that way too.
"""

import os

import google_crc32c
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from twisted.trial.unittest import TestCase

from speedy.chunkserver.protocol import ChunkServerFactory
from speedy.records import ChunkInfo
from speedy.testing import MemoryChunkStore
from speedy.wire.connection import ChunkClientProtocol
from speedy.wire.frames import CHUNK_INFO, FILE_ID, OP_PUT
from speedy.wire.outbox import Outbox
from speedy.wire.producers import BytesBody


class Collector(Protocol):
    """Gathers what arrives until C{expected} bytes did."""

    def __init__(self, expected, done):
        self.expected = expected
        self.done = done
        self.received = bytearray()

    def dataReceived(self, data):
        self.received += data
        if len(self.received) >= self.expected:
            self.transport.loseConnection()

    def connectionLost(self, reason):
        self.done.callback(bytes(self.received))


def record_writes(transport):
    """@return: the list each write to C{transport} is appended to, with
    how many bytes were in its buffer then."""
    writes = []
    write = transport.write

    def recording_write(data):
        buffered = transport._tempDataLen + len(transport.dataBuffer) - transport.offset
        writes.append((data, buffered))
        write(data)
    transport.write = recording_write
    return writes


class Sender(Protocol):
    """Records every write the transport is given, and whether anything
    else was in its buffer then."""

    def __init__(self, connected):
        self.connected_d = connected
        self.lost = Deferred()
        self.writes = []

    def connectionLost(self, reason):
        self.lost.callback(None)

    def connectionMade(self):
        self.writes = record_writes(self.transport)
        self.connected_d.callback(self)


class RecordingChunkClient(ChunkClientProtocol):
    """A chunk client connection that records its transport's writes."""

    def __init__(self, connected):
        super().__init__(reactor, 30.0)
        self.connected_d = connected

    def connectionMade(self):
        super().connectionMade()
        self.writes = record_writes(self.transport)
        self.connected_d.callback(self)


class LoopbackBytesBodyTests(TestCase):

    async def connect(self, server_factory, protocol):
        """@return: a connected client C{protocol(connected)} to a listening
        C{server_factory}."""
        port = reactor.listenTCP(0, server_factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        connected = Deferred()
        factory = ClientFactory.forProtocol(lambda: protocol(connected))
        reactor.connectTCP("127.0.0.1", port.getHost().port, factory)
        return await connected

    def assert_sent_whole(self, writes, pieces):
        """Each of C{pieces} was written once, the very object, into an
        empty buffer."""
        for piece in pieces:
            [(_, buffered)] = [(d, b) for d, b in writes if d is piece]
            self.assertEqual(buffered, 0)

    async def test_whole_body_not_copied(self):
        """
        The body is written once, as the very bytes object given, when the
        transport's buffer is empty (else Twisted would join the two into a
        copy); the frames before and after arrive intact and in order.
        """
        data = os.urandom(3 << 20)
        received = Deferred()
        sender = await self.connect(
            Factory.forProtocol(lambda: Collector(len(data) + 12, received)), Sender)
        outbox = Outbox(sender.transport)
        outbox.send(b"HEAD")
        sent = outbox.stream(b"hdr:", BytesBody(data))
        outbox.send(b"TAIL")
        await sent
        self.assertEqual(await received, b"HEAD" + b"hdr:" + data + b"TAIL")
        await sender.lost
        self.assertEqual(len([d for d, _ in sender.writes if len(d) == len(data)]), 1)
        self.assert_sent_whole(sender.writes, [data])

    async def test_pieces_not_copied(self):
        """
        A body given as pieces is written piece by piece, each C{bytes}
        piece as the very object into an empty buffer (never joined); a
        mutable piece goes as a copy taken when the body was made.  The
        frames around it arrive intact and in order.
        """
        pieces = [os.urandom(1 << 20), os.urandom(300_000), os.urandom(1 << 20)]
        mutable = bytearray(os.urandom(500_000))
        expected = b"".join(pieces[:2]) + mutable + pieces[2]
        received = Deferred()
        sender = await self.connect(
            Factory.forProtocol(lambda: Collector(len(expected) + 8, received)), Sender)
        outbox = Outbox(sender.transport)
        sent = outbox.stream(b"hdr:", BytesBody([pieces[0], pieces[1], mutable, pieces[2]]))
        mutable[:] = bytes(len(mutable))
        outbox.send(b"TAIL")
        await sent
        self.assertEqual(await received, b"hdr:" + expected + b"TAIL")
        await sender.lost
        self.assert_sent_whole(sender.writes, pieces)

    async def test_chunk_put_not_copied(self):
        """
        A PUT of a chunk in pieces through L{ChunkClientProtocol} to a real
        chunkserver sends each piece whole, uncopied, and is stored as the
        pieces joined.
        """
        pieces = [os.urandom(1 << 20) for _ in range(3)]
        store = MemoryChunkStore()
        server_factory = ChunkServerFactory(reactor, store)
        server_lost = Deferred()
        build = server_factory.buildProtocol

        def build_watched(addr):
            server = build(addr)
            connection_lost = server.connectionLost

            def lost(reason):
                connection_lost(reason)
                server_lost.callback(None)
            server.connectionLost = lost
            return server
        server_factory.buildProtocol = build_watched
        client = await self.connect(server_factory, RecordingChunkClient)
        answer = await client.request(OP_PUT, FILE_ID.pack(7), pieces)
        chunk = b"".join(pieces)
        self.assertEqual(ChunkInfo(7, *CHUNK_INFO.unpack(answer)),
                         ChunkInfo(7, len(chunk), google_crc32c.value(chunk)))
        client.close()
        await client.when_lost()
        await server_lost
        self.assert_sent_whole(client.writes, pieces)
