"""
Tests for L{speedy.zerocopy.internals}: every Twisted attribute that is not
public API and that Speedy relies on is still there on the installed
Twisted, and does what the zero-copy tricks and the streaming request
bodies need of it.  The day a Twisted release drops or changes one, these
fail (and C{setup.cfg}'s Twisted pin should not be widened before they
pass).
"""

import socket

from twisted.internet import tcp
from twisted.internet.interfaces import IPullProducer, IPushProducer, ISSLTransport
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactor, StringTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.web import http, resource, server
from zope.interface import alsoProvides, implementer

from speedy.zerocopy import internals


def tcp_connection(case):
    """@return: a real L{tcp.Connection} over one end of a socket pair."""
    ours, theirs = socket.socketpair()
    case.addCleanup(ours.close)
    case.addCleanup(theirs.close)
    ours.setblocking(False)
    connection = tcp.Connection(ours, Protocol(), reactor=MemoryReactor())
    connection.connected = True  # as tcp.Server and tcp.Client set once connected
    return connection


def http_channel():
    """@return: an L{http.HTTPChannel} that read a request's headers, not
    yet its body."""
    channel = http.HTTPChannel()
    channel.site = server.Site(resource.Resource())
    channel.makeConnection(StringTransport())
    channel.dataReceived(b"PUT /v2/x/blobs/uploads/1?digest=d HTTP/1.1\r\nHost: h\r\n"
                         b"Content-Length: 5\r\n\r\n")
    return channel


@implementer(IPushProducer)
class Producer:
    paused = False

    def pauseProducing(self):
        self.paused = True

    def resumeProducing(self):
        self.paused = False

    def stopProducing(self):
        pass


class InternalsPresentTests(SynchronousTestCase):
    """Every attribute L{internals.INTERNALS} names is there."""

    def test_every_attribute(self):
        channel = http_channel()
        instances = {
            tcp.Connection: tcp_connection(self),
            http.HTTPChannel: channel,
            server.Request: server.Request(channel),
        }
        missing = [f"{cls.__module__}.{cls.__qualname__}.{name}"
                   for cls, name in internals.INTERNALS if not hasattr(instances[cls], name)]
        self.assertEqual(missing, [])


class InternalsBehaveTests(SynchronousTestCase):
    """What each function does with the attributes."""

    def test_write_buffer(self):
        """A fresh TCP connection's write buffer is visible and empty; a
        write Twisted has not sent yet makes it non-empty."""
        connection = tcp_connection(self)
        self.assertTrue(internals.plain_tcp(connection))
        self.assertTrue(internals.write_buffer_visible(connection))
        self.assertTrue(internals.write_buffer_empty(connection))
        connection.write(b"queued")
        self.assertFalse(internals.write_buffer_empty(connection))

    def test_piece_written_to_an_empty_buffer_is_not_copied(self):
        """A C{bytes} piece written while the buffer is empty becomes the
        buffer itself, sent from in slices: what lets a PUT body's pieces
        go out without a copy (L{speedy.wire.producers.BytesBody},
        L{speedy.wire.growing.GrowingBody})."""
        connection = tcp_connection(self)
        sent = []

        class Socket:
            def send(self, data):
                sent.append(bytes(data[:1000]))
                return 1000

        connection.socket = Socket()
        piece = bytes(range(256)) * 4096
        self.assertTrue(internals.write_buffer_empty(connection))
        connection.write(piece)
        connection.doWrite()
        self.assertTrue(connection.dataBuffer is piece, "the piece was copied")
        self.assertEqual(connection.offset, 1000)
        self.assertEqual(sent, [piece[:1000]])

    def test_not_plain_tcp(self):
        """Other transports get none of the tricks."""
        transport = StringTransport()
        self.assertFalse(internals.plain_tcp(transport))
        self.assertFalse(internals.write_buffer_visible(transport))
        self.assertFalse(internals.can_take_over_reads(transport))
        self.assertFalse(internals.can_pause_writes_like_a_full_buffer(transport))

    def test_not_under_tls(self):
        """A TCP connection that went TLS gets none of the tricks: its
        socket carries ciphertext."""
        connection = tcp_connection(self)
        connection.registerProducer(Producer(), True)
        alsoProvides(connection, ISSLTransport)
        self.assertFalse(internals.plain_tcp(connection))
        self.assertFalse(internals.write_buffer_visible(connection))
        self.assertFalse(internals.can_take_over_reads(connection))
        self.assertFalse(internals.can_pause_writes_like_a_full_buffer(connection))

    def test_take_over_reads(self):
        """The reactor calls C{doRead}: replacing it takes the connection's
        reads, and the connection's own stays callable."""
        connection = tcp_connection(self)
        self.assertTrue(internals.can_take_over_reads(connection))
        own = internals.own_reads(connection)
        calls = []
        internals.take_over_reads(connection, lambda: calls.append("ours"))
        connection.doRead()
        self.assertEqual(calls, ["ours"])
        self.assertEqual(own.__func__, tcp.Connection.doRead)
        self.assertIs(internals.raw_socket(connection), connection.socket)

    def test_read_size(self):
        """The read size is the transport's C{bufferSize}; where there is
        none nothing changes."""
        connection = tcp_connection(self)
        before = connection.bufferSize
        self.assertEqual(internals.set_read_size(connection, 1 << 20), before)
        self.assertEqual(connection.bufferSize, 1 << 20)
        self.assertIsNone(internals.set_read_size(StringTransport(), 1))

    def test_send_size(self):
        """The most a TCP transport hands to one C{send} is its
        C{SEND_LIMIT}: a larger write goes out in several sends of that
        size until it is raised; other transports are left alone."""
        connection = tcp_connection(self)
        sends = []

        class Socket:
            def send(self, data):
                sends.append(len(data))
                return len(data)

        connection.socket = Socket()
        connection.writeSomeData(b"x" * (512 * 1024))
        self.assertEqual(sends, [connection.SEND_LIMIT])
        internals.set_send_size(connection, 1 << 20)
        connection.writeSomeData(b"x" * (512 * 1024))
        self.assertEqual(sends[1:], [512 * 1024])
        transport = StringTransport()
        internals.set_send_size(transport, 1 << 20)
        self.assertFalse(hasattr(transport, "SEND_LIMIT"))

    def test_registered_producer(self):
        """The producer registered with a transport is the one found."""
        connection = tcp_connection(self)
        self.assertIsNone(internals.registered_producer(connection))
        producer = Producer()
        connection.registerProducer(producer, True)
        self.assertIs(internals.registered_producer(connection), producer)
        self.assertIsNone(internals.registered_producer(StringTransport()))

    def test_pause_like_a_full_buffer(self):
        """With a streaming producer registered, the transport can be made to
        pause it and wait for writability, as a full buffer does; once its
        socket is writable and its buffer empty, it resumes the producer
        (the splice relay waits for the client that way)."""
        connection = tcp_connection(self)
        producer = Producer()
        connection.registerProducer(producer, True)
        self.assertTrue(internals.can_pause_writes_like_a_full_buffer(connection))
        internals.pause_writes_like_a_full_buffer(connection)
        self.assertTrue(producer.paused)
        self.assertTrue(connection.producerPaused)
        self.assertIn(connection, connection.reactor.getWriters())
        connection.doWrite()
        self.assertFalse(producer.paused)
        self.assertFalse(connection.producerPaused)
        self.assertNotIn(connection, connection.reactor.getWriters())

    def test_wait_for_writable(self):
        """A pull producer whose transport waits for writability is asked
        for more once the socket is writable and the buffer empty (sendfile
        and C{sendmsg} bodies re-arm that way after a partial send)."""
        connection = tcp_connection(self)
        asked = []

        @implementer(IPullProducer)
        class Pull:
            def resumeProducing(self):
                asked.append(True)

            def stopProducing(self):
                pass

        connection.registerProducer(Pull(), False)
        del asked[:]  # registering asks once
        internals.wait_for_writable(connection)
        self.assertIn(connection, connection.reactor.getWriters())
        connection.doWrite()
        self.assertEqual(asked, [True])

    def test_request_line_before_the_body(self):
        """Once the headers are in, the channel holds the request line."""
        self.assertEqual(internals.request_line(http_channel()),
                         (b"PUT", b"/v2/x/blobs/uploads/1?digest=d"))

    def test_no_request_line(self):
        """A channel that holds no request line (none read yet, or a
        Twisted that keeps it elsewhere) gives None: the body is spooled."""
        channel = http.HTTPChannel()
        channel.makeConnection(StringTransport())
        self.assertIsNone(internals.request_line(channel))

    def test_idle_timeout_after_response(self):
        """The timeout saved for after the response is the one restored."""
        channel = http_channel()
        channel.setTimeout(None)
        internals.restore_idle_timeout_after_response(channel, 42)
        self.assertEqual(channel._savedTimeOut, 42)

    def test_plain_body_response(self):
        """A request of an HTTP/1.x channel, with no content encoding."""
        request = server.Request(http_channel())
        self.assertTrue(internals.plain_body_response(request))
        request._encoder = object()
        self.assertFalse(internals.plain_body_response(request))
