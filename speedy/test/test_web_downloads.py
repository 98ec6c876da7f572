"""
Tests for L{speedy.web.downloads}.
"""

from twisted.internet import abstract
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyChannel, DummyRequest

from speedy.web.downloads import SEND_SIZE, send_in_large_pieces


class TCPLikeTransport(StringTransport):
    """A transport with a per-call send limit, like Twisted's TCP ones."""

    SEND_LIMIT = abstract.FileDescriptor.SEND_LIMIT


class SendInLargePiecesTests(SynchronousTestCase):

    def request_on(self, transport):
        request = DummyRequest([b"blob"])
        request.channel = DummyChannel()
        request.channel.transport = transport
        return request

    def test_raises_the_send_limit(self):
        """A TCP transport sends a download a megabyte per call; other
        transports of the class keep the default."""
        transport = TCPLikeTransport()
        send_in_large_pieces(self.request_on(transport))
        self.assertEqual(transport.SEND_LIMIT, SEND_SIZE)
        self.assertEqual(TCPLikeTransport().SEND_LIMIT, 128 * 1024)

    def test_other_transports_left_alone(self):
        """A transport without a send limit, or a request without a
        channel, is not touched."""
        transport = StringTransport()
        send_in_large_pieces(self.request_on(transport))
        self.assertFalse(hasattr(transport, "SEND_LIMIT"))
        send_in_large_pieces(object())
