"""
Tests for L{speedy.web.channel}: a listener's limits held byte by byte on a
L{StringTransport} with a L{MemoryReactorClock}.
"""

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource

from speedy.web.channel import GuardedSite, raw_answer
from speedy.web.limits import HTTPLimits
from speedy.web.rest import Discard
from speedy.web.streaming import StreamingSite


class Hello(Resource):
    isLeaf = True

    def __init__(self):
        Resource.__init__(self)
        self.rendered = []

    def render(self, request):
        self.rendered.append(request)
        if getattr(request, "body_sink", None) is not None and request.body_sink.refusal:
            request.setResponseCode(413)
            return b"refused"
        return b"hello"


class HalfClosingTransport(StringTransport):
    """A L{StringTransport} that can shut its write side, as TCP can."""

    write_closed = False
    aborted = False

    def loseWriteConnection(self):
        self.write_closed = True

    def abortConnection(self):
        self.aborted = True
        StringTransport.abortConnection(self)


def address(host):
    return IPv4Address("TCP", host, 40000)


class ChannelTestCase(SynchronousTestCase):

    def connect(self, limits=HTTPLimits(), client="10.0.0.1", site=None, transport=None):
        self.clock = MemoryReactorClock()
        if site is None:
            self.resource = Hello()
            site = GuardedSite(self.resource, limits=limits, reactor=self.clock)
        self.site = site
        channel = site.buildProtocol(address(client) if client else None)
        transport = transport or HalfClosingTransport()
        channel.makeConnection(transport)
        self.addCleanup(self.lose, channel)
        return channel, transport

    def lose(self, channel):
        if channel.transport is not None and not getattr(channel, "_lost", False):
            channel._lost = True
            channel.connectionLost(Failure(ConnectionDone()))

    def status(self, transport):
        return transport.value().split(b"\r\n", 1)[0]


class HeaderTimeoutTests(ChannelTestCase):

    def test_headers_never_finished(self):
        """A client that does not finish its headers within the header
        timeout is answered 408 and its connection closed, although it keeps
        sending (a slowloris)."""
        channel, transport = self.connect(HTTPLimits(header_timeout=10, idle_timeout=60))
        channel.dataReceived(b"GET / HTTP/1.1\r\n")
        for _ in range(9):
            self.clock.advance(1)
            channel.dataReceived(b"X-a: b\r\n")
        self.assertEqual(transport.value(), b"")
        self.clock.advance(1)
        self.assertEqual(self.status(transport), b"HTTP/1.1 408 Request Timeout")
        self.assertTrue(transport.write_closed)
        self.clock.advance(HTTPLimits().linger)
        self.assertTrue(transport.aborted)

    def test_silent_connection(self):
        """A connection that sends nothing at all is timed out alike."""
        channel, transport = self.connect(HTTPLimits(header_timeout=5))
        self.clock.advance(5)
        self.assertIn(b" 408 ", transport.value())

    def test_complete_headers_stop_the_timer(self):
        """Headers in time: the request is answered and no timer is left;
        the next request's timer starts with its first byte, and the idle
        timeout closes the connection between requests."""
        channel, transport = self.connect(HTTPLimits(header_timeout=5, idle_timeout=30))
        channel.dataReceived(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        self.assertIn(b"hello", transport.value())
        self.clock.advance(20)
        self.assertFalse(transport.disconnecting)
        transport.clear()
        channel.dataReceived(b"GET / HT")
        self.clock.advance(5)
        self.assertIn(b" 408 ", transport.value())

    def test_idle_between_requests(self):
        channel, transport = self.connect(HTTPLimits(header_timeout=5, idle_timeout=30))
        channel.dataReceived(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        self.clock.advance(30)
        self.assertTrue(transport.disconnecting)

    def test_no_timeout(self):
        channel, transport = self.connect(HTTPLimits(header_timeout=None, idle_timeout=None))
        channel.dataReceived(b"GET / HTTP/1.1\r\n")
        self.clock.advance(10 ** 6)
        self.assertEqual(transport.value(), b"")
        self.assertEqual(self.clock.getDelayedCalls(), [])


class SizeTests(ChannelTestCase):

    def test_long_uri_414(self):
        """A 100 KB URI is answered 414, not a closed connection."""
        channel, transport = self.connect()
        channel.dataReceived(b"GET /" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: h\r\n\r\n")
        self.assertEqual(self.status(transport), b"HTTP/1.1 414 URI Too Long")
        self.assertIn(b"Connection: close", transport.value())
        self.assertEqual(self.resource.rendered, [])

    def test_long_complete_request_line_414(self):
        """A request line over the limit that arrived whole is refused too."""
        channel, transport = self.connect(HTTPLimits(max_request_line=2048,
                                                     max_header_size=8192))
        channel.dataReceived(b"GET /" + b"a" * 4000 + b" HTTP/1.1\r\nHost: h\r\n\r\n")
        self.assertIn(b" 414 ", self.status(transport))

    def test_long_header_431(self):
        """A 100 KB header is answered 431."""
        channel, transport = self.connect()
        channel.dataReceived(b"GET / HTTP/1.1\r\nHost: h\r\nX-Big: " + b"b" * 100_000 + b"\r\n\r\n")
        self.assertEqual(self.status(transport),
                         b"HTTP/1.1 431 Request Header Fields Too Large")
        self.assertEqual(self.resource.rendered, [])

    def test_many_small_headers_431(self):
        channel, transport = self.connect(HTTPLimits(max_header_size=4096))
        channel.dataReceived(b"GET / HTTP/1.1\r\nHost: h\r\n" + b"X-A: 0123456789\r\n" * 300)
        self.assertIn(b" 431 ", self.status(transport))

    def test_too_many_headers_431(self):
        channel, transport = self.connect(HTTPLimits(max_headers=10))
        channel.dataReceived(b"GET / HTTP/1.1\r\nHost: h\r\n" + b"X: y\r\n" * 11 + b"\r\n")
        self.assertIn(b" 431 ", self.status(transport))

    def test_within_limits(self):
        """A request just under the limits is served, and the limits apply
        afresh to the next request on the connection."""
        limits = HTTPLimits(max_request_line=2048, max_header_size=2048)
        channel, transport = self.connect(limits)
        request = b"GET /" + b"a" * 2000 + b" HTTP/1.1\r\nHost: h\r\nX-A: " + b"b" * 1900 + b"\r\n\r\n"
        channel.dataReceived(request + request)
        self.assertEqual(transport.value().count(b"200 OK"), 2)
        self.assertEqual(len(self.resource.rendered), 2)


class HostTests(ChannelTestCase):

    def test_http11_without_host_400(self):
        channel, transport = self.connect()
        channel.dataReceived(b"GET / HTTP/1.1\r\n\r\n")
        self.assertEqual(self.status(transport), b"HTTP/1.1 400 Bad Request")
        self.assertIn(b"Host", transport.value())
        self.assertEqual(self.resource.rendered, [])

    def test_two_hosts_400(self):
        channel, transport = self.connect()
        channel.dataReceived(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
        self.assertIn(b" 400 ", self.status(transport))

    def test_http10_without_host(self):
        """HTTP/1.0 has no Host requirement."""
        channel, transport = self.connect()
        channel.dataReceived(b"GET / HTTP/1.0\r\n\r\n")
        self.assertIn(b"hello", transport.value())

    def test_body_after_refusal_is_dropped(self):
        """A refused request's body is read and dropped while lingering,
        up to the linger limit; then the connection is aborted."""
        channel, transport = self.connect(HTTPLimits(linger_bytes=1000))
        channel.dataReceived(b"PUT / HTTP/1.1\r\nContent-Length: 5000\r\n\r\n" + b"x" * 500)
        self.assertIn(b" 400 ", self.status(transport))
        self.assertFalse(transport.aborted)
        channel.dataReceived(b"x" * 600)
        self.assertFalse(transport.aborted)
        channel.dataReceived(b"x" * 600)
        self.assertTrue(transport.aborted)
        self.assertEqual(self.resource.rendered, [])


class EarlyAnswerTests(ChannelTestCase):
    """A request whose sink refuses it is answered before its body."""

    def connect_streaming(self, refusal):
        resource = Hello()
        self.resource = resource
        clock = MemoryReactorClock()
        site = StreamingSite(resource, lambda request: Discard(refusal), reactor=clock)
        channel, transport = self.connect(site=site)
        self.clock = clock
        return channel, transport

    def test_answered_before_the_body(self):
        channel, transport = self.connect_streaming(ValueError("too large"))
        channel.dataReceived(b"PUT /m HTTP/1.1\r\nHost: h\r\nContent-Length: 5000000\r\n"
                             b"Expect: 100-continue\r\n\r\n")
        value = transport.value()
        self.assertTrue(value.startswith(b"HTTP/1.1 413 "), value)
        self.assertNotIn(b"100 Continue", value)
        self.assertIn(b"connection: close", value.lower())
        self.assertTrue(transport.write_closed)
        channel.dataReceived(b"x" * 1000)  # dropped while lingering
        self.assertEqual(len(self.resource.rendered), 1)
        self.clock.advance(HTTPLimits().linger)
        self.assertTrue(transport.aborted)

    def test_body_in_the_same_packet(self):
        """The body, arriving with the headers, is dropped; the request is
        rendered once."""
        channel, transport = self.connect_streaming(ValueError("too large"))
        channel.dataReceived(b"PUT /m HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc"
                             b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        self.assertEqual(len(self.resource.rendered), 1)
        self.assertEqual(transport.value().count(b"HTTP/1.1 "), 1)

    def test_no_refusal_streams(self):
        channel, transport = self.connect_streaming(None)
        channel.dataReceived(b"PUT /m HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\n")
        self.assertEqual(transport.value(), b"")
        channel.dataReceived(b"abc")
        self.assertIn(b"hello", transport.value())


class ConnectionLimitTests(ChannelTestCase):

    def test_per_client(self):
        """One connection over the per-client limit is answered 429 and
        closed; another client is served; a closed connection frees its
        place."""
        limits = HTTPLimits(max_connections_per_client=2)
        first, _ = self.connect(limits)
        site = self.site
        second = site.buildProtocol(address("10.0.0.1"))
        second.makeConnection(StringTransport())
        third = site.buildProtocol(address("10.0.0.1"))
        transport = StringTransport()
        third.makeConnection(transport)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 429 "))
        self.assertIn(b"Retry-After: 1", transport.value())
        self.assertTrue(transport.disconnecting)
        other = site.buildProtocol(address("10.0.0.2"))
        other.makeConnection(StringTransport())
        self.assertEqual(site.connections.held_by("10.0.0.1"), 2)
        second.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(site.connections.held_by("10.0.0.1"), 1)
        fourth = site.buildProtocol(address("10.0.0.1"))
        fourth.makeConnection(StringTransport())
        self.assertEqual(site.connections.held_by("10.0.0.1"), 2)
        for channel in (other, fourth):
            channel.connectionLost(Failure(ConnectionDone()))

    def test_total(self):
        limits = HTTPLimits(max_connections=1, max_connections_per_client=0)
        self.connect(limits)
        transport = StringTransport()
        self.site.buildProtocol(address("10.0.0.9")).makeConnection(transport)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 503 "))

    def test_released_once(self):
        channel, _ = self.connect()
        self.assertEqual(self.site.connections.total, 1)
        self.lose(channel)
        channel.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.site.connections.total, 0)


class RawAnswerTests(SynchronousTestCase):

    def test_shape(self):
        answer = raw_answer(414, "too long")
        head, body = answer.split(b"\r\n\r\n")
        self.assertIn(b"Content-Length: %d" % len(body), head)
        self.assertEqual(body, b"414 URI Too Long: too long\n")
