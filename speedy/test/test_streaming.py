"""
Tests for L{speedy.web.streaming}: request bodies reach an L{IBodySink} in
pieces with back-pressure, over a real loopback site and byte by byte on a
L{StringTransport}.
"""

from twisted.internet import reactor
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource
from zope.interface import implementer
from zope.interface.verify import verifyObject

from speedy.web import streaming
from speedy.web.streaming import BODY_READ_SIZE, IBodySink, StreamingSite


@implementer(IBodySink)
class RecordingSink:
    """A sink that records its calls; C{hold} makes each write pending until
    the test fires it, C{fail_after} makes the n-th write fail."""

    def __init__(self, hold=False, fail_after=None):
        self.hold = hold
        self.fail_after = fail_after
        self.pieces = []
        self.pending = []
        self.finished = False
        self.lost = Deferred()

    def write(self, data):
        self.pieces.append(data)
        if self.fail_after is not None and len(self.pieces) >= self.fail_after:
            raise ValueError("the sink is full")
        if self.hold:
            d = Deferred()
            self.pending.append(d)
            return d
        return None

    def finish(self):
        self.finished = True

    def connection_lost(self, reason):
        self.lost_reason = reason
        self.lost.callback(None)

    @property
    def body(self):
        return b"".join(self.pieces)


class EchoResource(Resource):
    """Answers what the request saw: the streamed or spooled body's size,
    whether the sink was finished, and the body failure."""

    isLeaf = True

    def __init__(self):
        super().__init__()
        self.rendered = []

    def render_PUT(self, request):
        self.rendered.append(request)
        if request.body_failure is not None:
            request.setResponseCode(400)
            return b"failed: " + str(request.body_failure.value).encode()
        sink = request.body_sink
        if sink is None:
            return b"spooled %d" % (len(request.content.read()),)
        return b"streamed %d finished=%d spooled=%d" % (
            len(sink.body), sink.finished, len(request.content.read()))


class SinkChooser:
    def __init__(self, sink):
        self.sink = sink
        self.seen = []

    def __call__(self, request):
        self.seen.append((request.method, request.uri, request.path, request.args,
                          request.requestHeaders.getRawHeaders(b"x-test")))
        if request.path.startswith(b"/stream"):
            return self.sink
        if request.path.startswith(b"/broken"):
            raise RuntimeError("no sink for you")
        return None


class RawClient(Protocol):
    """Sends raw request bytes; C{done} fires with everything received once
    the connection closes."""

    def __init__(self, payload, close_after_send=False):
        self.payload = payload
        self.close_after_send = close_after_send
        self.received = []
        self.done = Deferred()

    def connectionMade(self):
        for piece in self.payload:
            self.transport.write(piece)
        if self.close_after_send:
            self.transport.loseConnection()

    def dataReceived(self, data):
        self.received.append(data)

    def connectionLost(self, reason):
        self.done.callback(b"".join(self.received))


class LoopbackTests(TestCase):
    """A real L{StreamingSite} on 127.0.0.1."""

    def serve(self, sink):
        self.resource = EchoResource()
        self.chooser = SinkChooser(sink)
        site = StreamingSite(self.resource, self.chooser, reactor=reactor)
        port = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return port.getHost().port

    def send(self, port, *payload, close_after_send=False):
        client = RawClient(payload, close_after_send)
        factory = ClientFactory.forProtocol(lambda: client)
        reactor.connectTCP("127.0.0.1", port, factory)
        return client

    async def test_body_streams_to_sink(self):
        """
        A 3 MiB body arrives at the sink in several pieces, C{finish} is
        called before render, nothing is spooled, and the sink chooser saw the
        method, URI, path, query and headers.
        """
        sink = RecordingSink()
        port = self.serve(sink)
        body = bytes(range(256)) * (3 * 4096)
        head = (b"PUT /stream/a?x=1 HTTP/1.1\r\nHost: t\r\nX-Test: yes\r\n"
                b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(body))
        answer = await self.send(port, head, body).done
        self.assertIn(b"streamed %d finished=1 spooled=0" % len(body), answer)
        self.assertEqual(sink.body, body)
        self.assertGreater(len(sink.pieces), 1)
        self.assertEqual(self.chooser.seen, [
            (b"PUT", b"/stream/a?x=1", b"/stream/a", {b"x": [b"1"]}, [b"yes"])])

    async def test_chunked_transfer_encoding(self):
        """A chunked body is de-chunked on its way to the sink."""
        sink = RecordingSink()
        port = self.serve(sink)
        head = (b"PUT /stream/c HTTP/1.1\r\nHost: t\r\nConnection: close\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n")
        chunks = b"5\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\n\r\n"
        answer = await self.send(port, head, chunks).done
        self.assertIn(b"streamed 11 finished=1", answer)
        self.assertEqual(sink.body, b"hello world")

    async def test_tls_handshake_is_refused_at_once(self):
        """
        A client that opens with a TLS ClientHello (registry clients try
        HTTPS first) is disconnected at once, with no answer, rather than
        left waiting for an HTTP request line that never comes; the next
        plain HTTP request on the same site is served.
        """
        port = self.serve(RecordingSink())
        hello = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64
        self.assertEqual(await self.send(port, hello).done, b"")
        head = (b"PUT /stream/t HTTP/1.1\r\nHost: t\r\nConnection: close\r\n"
                b"Content-Length: 2\r\n\r\nok")
        self.assertIn(b"streamed 2 finished=1", await self.send(port, head).done)

    async def test_client_disconnects_mid_body(self):
        """
        A client that goes away before its body is complete: the sink hears
        C{connection_lost}, is never finished, and nothing renders.
        """
        sink = RecordingSink()
        port = self.serve(sink)
        head = (b"PUT /stream/d HTTP/1.1\r\nHost: t\r\n"
                b"Content-Length: 1000000\r\n\r\n")
        client = self.send(port, head, b"x" * 1000, close_after_send=True)
        await sink.lost
        await client.done
        self.assertFalse(sink.finished)
        self.assertEqual(self.resource.rendered, [])
        self.assertEqual(sink.body, b"x" * 1000)

    async def test_sink_failure_reaches_render(self):
        """
        A sink whose write raises: the rest of the body is discarded, the
        sink is not finished, the resource answers the failure, and the
        connection stays usable for the answer.
        """
        sink = RecordingSink(fail_after=1)
        port = self.serve(sink)
        body = b"y" * 500000
        head = (b"PUT /stream/e HTTP/1.1\r\nHost: t\r\nConnection: close\r\n"
                b"Content-Length: %d\r\n\r\n" % len(body))
        answer = await self.send(port, head, body).done
        self.assertTrue(answer.startswith(b"HTTP/1.1 400"), answer)
        self.assertIn(b"failed: the sink is full", answer)
        self.assertEqual(len(sink.pieces), 1)
        self.assertFalse(sink.finished)

    async def test_no_sink_spools(self):
        """A request for which the chooser returns None is spooled as usual."""
        port = self.serve(RecordingSink())
        head = (b"PUT /plain HTTP/1.1\r\nHost: t\r\nConnection: close\r\n"
                b"Content-Length: 7\r\n\r\n")
        answer = await self.send(port, head, b"abcdefg").done
        self.assertIn(b"spooled 7", answer)

    async def test_chooser_error_is_a_body_failure(self):
        """A chooser that raises is logged and answered, not a crash."""
        port = self.serve(RecordingSink())
        head = (b"PUT /broken HTTP/1.1\r\nHost: t\r\nConnection: close\r\n"
                b"Content-Length: 3\r\n\r\n")
        answer = await self.send(port, head, b"abc").done
        self.assertIn(b"failed: no sink for you", answer)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class BackPressureTests(SynchronousTestCase):
    """Byte-level behaviour on a L{StringTransport}."""

    def connect(self, sink):
        self.resource = EchoResource()
        self.clock = MemoryReactorClock()
        site = StreamingSite(self.resource, SinkChooser(sink), reactor=self.clock, timeout=60)
        channel = site.buildProtocol(None)
        transport = StringTransport()
        channel.makeConnection(transport)
        self.addCleanup(channel.connectionLost, None)
        return channel, transport

    def test_verify_sink(self):
        verifyObject(IBodySink, RecordingSink())

    def test_pending_write_pauses_the_socket(self):
        """
        While the sink's write is pending the transport is paused and
        further pieces wait, in order; when it fires the transport resumes,
        and render waits until the last write has fired.
        """
        sink = RecordingSink(hold=True)
        channel, transport = self.connect(sink)
        channel.dataReceived(b"PUT /stream/p HTTP/1.1\r\nHost: t\r\n"
                             b"Transfer-Encoding: chunked\r\n\r\n")
        self.assertEqual(transport.producerState, "producing")
        channel.dataReceived(b"3\r\nabc\r\n3\r\ndef\r\n")
        self.assertEqual(sink.pieces, [b"abc"])
        self.assertEqual(transport.producerState, "paused")
        sink.pending[0].callback(None)
        self.assertEqual(sink.pieces, [b"abc", b"def"])
        self.assertEqual(transport.producerState, "paused")
        channel.dataReceived(b"0\r\n\r\n")
        self.assertEqual(self.resource.rendered, [])
        self.assertFalse(sink.finished)
        sink.pending[1].callback(None)
        self.assertEqual(transport.producerState, "producing")
        self.assertTrue(sink.finished)
        self.assertEqual(len(self.resource.rendered), 1)
        self.assertIn(b"streamed 6 finished=1", transport.value())

    def test_large_reads_while_streaming(self):
        """
        While a body streams into a sink the client's socket is read
        L{BODY_READ_SIZE} bytes at a time; once the body is in, and for a
        spooled body, the transport's own size holds.
        """
        sink = RecordingSink(hold=True)
        channel, transport = self.connect(sink)
        transport.bufferSize = 65536
        channel.dataReceived(b"PUT /stream/r HTTP/1.1\r\nHost: t\r\n"
                             b"Content-Length: 6\r\n\r\nabc")
        self.assertEqual(transport.bufferSize, BODY_READ_SIZE)
        sink.pending[0].callback(None)
        channel.dataReceived(b"def")
        self.assertEqual(transport.bufferSize, BODY_READ_SIZE)
        sink.pending[1].callback(None)
        self.assertIn(b"streamed 6 finished=1", transport.value())
        self.assertEqual(transport.bufferSize, 65536)
        channel.dataReceived(b"PUT /spooled HTTP/1.1\r\nHost: t\r\n"
                             b"Content-Length: 3\r\n\r\nab")
        self.assertEqual(transport.bufferSize, 65536)

    def test_no_request_line_spools(self):
        """
        Where the channel's request line cannot be read before the body (a
        Twisted that keeps it elsewhere), no sink is chosen: the body is
        spooled and rendered as by a plain C{Site}, and the socket is read
        at the transport's own size.
        """
        self.patch(streaming, "request_line", lambda channel: None)
        sink = RecordingSink()
        channel, transport = self.connect(sink)
        transport.bufferSize = 65536
        channel.dataReceived(b"PUT /stream/n HTTP/1.1\r\nHost: t\r\n"
                             b"Content-Length: 6\r\n\r\nabc")
        self.assertEqual(transport.bufferSize, 65536)
        channel.dataReceived(b"def")
        self.assertEqual(sink.pieces, [])
        [request] = self.resource.rendered
        self.assertFalse(request.body_sink_chosen)
        self.assertIn(b"spooled 6", transport.value())

    def test_large_reads_end_with_the_connection(self):
        """A client gone mid-body leaves the transport its own read size."""
        sink = RecordingSink(hold=True)
        channel, transport = self.connect(sink)
        transport.bufferSize = 65536
        channel.dataReceived(b"PUT /stream/l HTTP/1.1\r\nHost: t\r\n"
                             b"Content-Length: 6\r\n\r\nabc")
        channel.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(transport.bufferSize, 65536)
        self.successResultOf(sink.lost)

    def test_idle_timeout_off_while_pending(self):
        """
        A write pending longer than the channel's idle timeout does not get
        the client disconnected; once reading resumes the timeout is back.
        """
        sink = RecordingSink(hold=True)
        channel, transport = self.connect(sink)
        channel.dataReceived(b"PUT /stream/t HTTP/1.1\r\nHost: t\r\n"
                             b"Content-Length: 6\r\n\r\nabc")
        self.clock.advance(300)
        self.assertFalse(transport.disconnecting)
        sink.pending[0].callback(None)
        self.clock.advance(61)
        self.assertTrue(transport.disconnecting)

    def test_idle_timeout_restored_after_answer(self):
        """The last write pending when the body ends: after the answer the
        connection has its idle timeout again."""
        sink = RecordingSink(hold=True)
        channel, transport = self.connect(sink)
        channel.dataReceived(b"PUT /stream/u HTTP/1.1\r\nHost: t\r\n"
                             b"Content-Length: 3\r\n\r\nabc")
        self.clock.advance(300)
        sink.pending[0].callback(None)
        self.assertIn(b"streamed 3 finished=1", transport.value())
        self.assertFalse(transport.disconnecting)
        self.clock.advance(61)
        self.assertTrue(transport.disconnecting)

    def test_pending_write_failure(self):
        """A pending write that fails: later pieces are dropped, reading
        resumes, and render sees the failure."""
        sink = RecordingSink(hold=True)
        channel, transport = self.connect(sink)
        channel.dataReceived(b"PUT /stream/q HTTP/1.1\r\nHost: t\r\n"
                             b"Content-Length: 6\r\n\r\nabc")
        self.assertEqual(transport.producerState, "paused")
        sink.pending[0].errback(ValueError("upstream died"))
        self.assertEqual(transport.producerState, "producing")
        channel.dataReceived(b"def")
        self.assertEqual(sink.pieces, [b"abc"])
        self.assertIn(b"failed: upstream died", transport.value())

    def test_fired_deferred_does_not_pause(self):
        """A write that answers an already-fired Deferred keeps reading."""
        sink = RecordingSink()
        sink.write = lambda data: (sink.pieces.append(data), succeed(None))[1]
        channel, transport = self.connect(sink)
        channel.dataReceived(b"PUT /stream/r HTTP/1.1\r\nHost: t\r\n"
                             b"Content-Length: 2\r\n\r\nab")
        self.assertEqual(transport.producerState, "producing")
        self.assertIn(b"streamed 2 finished=1", transport.value())

    def test_lost_while_pending(self):
        """The client leaves while a write is pending: connection_lost, no
        render, and the late write result is harmless."""
        sink = RecordingSink(hold=True)
        channel, transport = self.connect(sink)
        channel.dataReceived(b"PUT /stream/s HTTP/1.1\r\nHost: t\r\n"
                             b"Content-Length: 10\r\n\r\nabc")
        channel.connectionLost(None)
        self.assertTrue(sink.lost.called)
        sink.pending[0].callback(None)
        self.assertEqual(self.resource.rendered, [])
