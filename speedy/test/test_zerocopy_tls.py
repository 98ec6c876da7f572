"""
The chunkserver's zero-copy tricks stand aside under TLS: over a real TLS
connection on loopback, a PUT body (which on plain TCP would be read
straight into the store's direct-write buffers) and GET answers (sent from
staged buffers with C{sendmsg}, or with C{sendfile}, on plain TCP) carry
the right bytes, with zero copy on.  Either trick used on a TLS connection
would store ciphertext or put plaintext on the wire.  A real store with
direct I/O, as in L{speedy.test.test_staged_get} (skipped where the
temporary directory refuses C{O_DIRECT}); the global reactor, as the other
loopback tests.
"""

import os

from twisted.internet import reactor, ssl
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import SSL4ClientEndpoint, SSL4ServerEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.test import __file__ as twisted_test
from twisted.trial.unittest import TestCase

from speedy.chunkserver.protocol import ChunkServerFactory
from speedy.test.test_chunkserver_protocol import get_request, parse_frames, put_request
from speedy.test.test_staged_get import StagedTestMixin
from speedy.test.test_store import MiB
from speedy.wire.frames import CHUNK_INFO, FLAG_ERROR, GET_RESPONSE


class FrameClient(Protocol):
    """Sends what it is given and collects the answers' bytes."""

    def __init__(self):
        self.data = bytearray()
        self.ready = Deferred()
        self.done = Deferred()

    def connectionMade(self):
        self.ready.callback(self)

    def dataReceived(self, data):
        self.data += data

    def connectionLost(self, reason):
        self.done.callback(None)


def _certificate():
    with open(os.path.join(os.path.dirname(twisted_test), "server.pem"), "rb") as f:
        return ssl.PrivateCertificate.loadPEM(f.read())


class ChunkServerOverTLSTests(StagedTestMixin, TestCase):

    @inlineCallbacks
    def connect(self, store):
        """@return: a L{FrameClient} connected over TLS to a chunkserver,
        zero copy on, serving C{store}."""
        factory = ChunkServerFactory(reactor, store, zero_copy=True)
        port = yield SSL4ServerEndpoint(reactor, 0, _certificate().options(),
                                        interface="127.0.0.1").listen(factory)
        self.addCleanup(port.stopListening)
        client = FrameClient()
        yield SSL4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port,
                                 ssl.CertificateOptions()).connect(
            Factory.forProtocol(lambda: client))
        yield client.ready
        self.addCleanup(lambda: client.done)
        self.addCleanup(client.transport.loseConnection)
        return client

    @inlineCallbacks
    def exchange(self, client, request):
        """Send C{request}; @return: the one frame answering it."""
        del client.data[:]
        client.transport.write(request)
        while True:
            frames, _ = parse_frames(bytes(client.data))
            if frames:
                [answer] = frames
                return answer
            if client.done.called:
                self.fail("the connection was lost before the answer came")
            d = Deferred()
            reactor.callLater(0.01, d.callback, None)
            yield d

    @inlineCallbacks
    def test_put_and_get(self):
        """A chunk pushed and read back over TLS has its bytes, whichever
        way the store reads it (staged, or from the volume file)."""
        store = self.open_store()
        self.addCleanup(lambda: store.close())
        data = os.urandom(16 * MiB + 3)
        client = yield self.connect(store)

        header, body = yield self.exchange(client, put_request(1, 7, data))
        self.assertFalse(header.flags & FLAG_ERROR, body)
        self.assertEqual(CHUNK_INFO.unpack(body)[0], len(data))
        chunk = self.successResultOf(store.get(7))
        try:
            self.assertTrue(chunk.read(0, chunk.length) == data, "stored bytes differ")
        finally:
            chunk.release()

        header, body = yield self.exchange(client, get_request(2, 7))
        self.assertFalse(header.flags & FLAG_ERROR, body)
        self.assertTrue(body[GET_RESPONSE.size:] == data, "staged GET bytes differ")

        store.staged_read_limit = 0  # the volume file, where sendfile would go
        header, body = yield self.exchange(client, get_request(3, 7, MiB - 5, 3 * MiB))
        self.assertFalse(header.flags & FLAG_ERROR, body)
        self.assertTrue(body[GET_RESPONSE.size:] == data[MiB - 5:4 * MiB - 5],
                        "GET bytes from the file differ")
        self.assert_all_back(store)
