"""
L{speedy.wire.producers.BytesBody} on a real loopback TCP connection: a
C{bytes} body is handed to the transport whole, the very object (no copy),
alone in its buffer, and the frames around it arrive intact and in order.
"""

import os

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from twisted.trial.unittest import TestCase

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
        transport = self.transport
        write = transport.write

        def recording_write(data):
            buffered = transport._tempDataLen + len(transport.dataBuffer) - transport.offset
            self.writes.append((data, buffered))
            write(data)
        transport.write = recording_write
        self.connected_d.callback(self)


class LoopbackBytesBodyTests(TestCase):

    async def test_whole_body_not_copied(self):
        """
        The body is written once, as the very bytes object given, when the
        transport's buffer is empty (else Twisted would join the two into a
        copy); the frames before and after arrive intact and in order.
        """
        data = os.urandom(3 << 20)
        received = Deferred()
        port = reactor.listenTCP(
            0, Factory.forProtocol(lambda: Collector(len(data) + 12, received)),
            interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        connected = Deferred()
        factory = ClientFactory.forProtocol(lambda: Sender(connected))
        reactor.connectTCP("127.0.0.1", port.getHost().port, factory)
        sender = await connected
        outbox = Outbox(sender.transport)
        outbox.send(b"HEAD")
        sent = outbox.stream(b"hdr:", BytesBody(data))
        outbox.send(b"TAIL")
        await sent
        self.assertEqual(await received, b"HEAD" + b"hdr:" + data + b"TAIL")
        await sender.lost
        bodies = [(d, buffered) for d, buffered in sender.writes if len(d) == len(data)]
        self.assertEqual(len(bodies), 1)
        body, buffered = bodies[0]
        self.assertIs(body, data)
        self.assertEqual(buffered, 0)
