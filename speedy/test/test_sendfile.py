"""
Tests for L{speedy.zerocopy.sendfile} and L{speedy.wire.producers}: the bytes a
body sends over a real loopback TCP connection are exactly the file's, it
never overtakes bytes already buffered, and its read is always released.
"""

import os
import socket
import tempfile

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.error import ConnectionLost
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer

from speedy.interfaces import IChunkRead
from speedy.records import ChunkInfo
from speedy.test.test_chunkserver_protocol import TLSStringTransport
from speedy.wire.outbox import Outbox
from speedy.wire.producers import PIECE, BytesBody, ReadBody
from speedy.zerocopy.sendfile import (
    SendfileBody, StagedBody, can_send_staged, can_sendfile, range_body)


@implementer(IChunkRead)
class FileRead:
    """An IChunkRead of bytes C{offset}..C{offset+length} of an open file."""

    def __init__(self, f, offset, length):
        self._file = f
        self.info = ChunkInfo(1, length, 0)
        self.offset = 0
        self.length = length
        self._offset = offset
        self.released = 0

    def fileno(self):
        return self._file.fileno()

    def file_offset(self):
        return self._offset

    def read(self, position, size):
        return os.pread(self._file.fileno(), min(size, self.length - position), self._offset + position)

    def release(self):
        self.released += 1


class StagedRead(FileRead):
    """A FileRead whose bytes are also held in memory, in pieces of
    C{sizes} (cycling): a staged read, as the chunk store makes."""

    def __init__(self, f, offset, length, sizes):
        super().__init__(f, offset, length)
        self._memory = bytearray(os.pread(f.fileno(), length, offset))
        self._sizes = sizes

    def fileno(self):
        raise OSError("staged")

    def staged(self):
        if self.released:
            return None
        views, at, n = [], 0, 0
        view = memoryview(self._memory)
        while at < self.length:
            size = self._sizes[n % len(self._sizes)]
            views.append(view[at:at + size])
            at, n = at + size, n + 1
        return views


class Sender(Protocol):
    """Writes C{head} then streams C{make_body(transport)}, then closes."""

    stray = False

    def connectionMade(self):
        if self.factory.connected.called:
            # Not the test's receiver: another process on this machine
            # connected to this ephemeral port (one that a server of its
            # own had before).  Hang up on it; the test goes on.
            self.stray = True
            self.transport.abortConnection()
            return
        if self.factory.small_buffers:
            _shrink_buffer(self.transport, socket.SO_SNDBUF)
        self.factory.connected.callback(self)
        self.outbox = Outbox(self.transport)
        self.outbox.send(self.factory.head)
        self.body = self.factory.make_body(self.transport)
        self.outbox.stream(b"", self.body).addBoth(self._sent)

    def _sent(self, result):
        """Record how the body ended: None, or the Failure."""
        self.factory.sent.callback([result])
        self.transport.loseConnection()

    def connectionLost(self, reason):
        if self.stray:
            return
        self.outbox.close()
        self.factory.lost.callback(None)


def _shrink_buffer(transport, option):
    """Keep the kernel from buffering the whole body on loopback, so a peer
    that hangs up mid-body really finds the sender still sending."""
    transport.getHandle().setsockopt(socket.SOL_SOCKET, option, 64 * 1024)


class Receiver(Protocol):
    def __init__(self, stop_after=None):
        self.data = bytearray()
        self.stop_after = stop_after
        self.done = Deferred()

    def connectionMade(self):
        if self.stop_after is not None:
            _shrink_buffer(self.transport, socket.SO_RCVBUF)

    def dataReceived(self, data):
        self.data += data
        if self.stop_after is not None and len(self.data) >= self.stop_after:
            self.transport.abortConnection()

    def connectionLost(self, reason):
        self.done.callback(bytes(self.data))


@inlineCallbacks
def stream_over_loopback(case, make_body, head=b"", stop_after=None):
    """
    Send C{head}, then the body C{make_body(transport)} makes, from a server
    to a L{Receiver} over real loopback TCP; C{stop_after} bytes makes the
    receiver hang up after that many.

    @return: a Deferred firing with (the L{Sender}, the bytes received, the
        body's result).
    """
    factory = Factory.forProtocol(Sender)
    factory.head = head
    factory.make_body = make_body
    factory.small_buffers = stop_after is not None
    factory.connected, factory.sent, factory.lost = Deferred(), Deferred(), Deferred()
    port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
    case.addCleanup(port.stopListening)
    receiver = Receiver(stop_after)
    yield TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port).connect(
        Factory.forProtocol(lambda: receiver))
    sender = yield factory.connected
    data = yield receiver.done
    yield factory.lost
    [sent] = yield factory.sent
    return sender, data, sent


class LoopbackTests(TestCase):

    def setUp(self):
        self.file = tempfile.TemporaryFile()
        self.addCleanup(self.file.close)
        self.content = os.urandom(1 << 20) * 6 + os.urandom(12345)
        self.file.write(self.content)
        self.file.flush()

    def stream(self, make_body, head=b"", stop_after=None):
        return stream_over_loopback(self, make_body, head, stop_after)

    @inlineCallbacks
    def test_sendfile_bytes_match(self):
        """A range sent with sendfile arrives byte for byte, after 2 MiB
        that were already in the transport's buffer."""
        read = FileRead(self.file, 1000, len(self.content) - 2000)
        head = b"h" * (2 << 20)
        bodies = []

        def make_body(transport):
            self.assertTrue(can_sendfile(transport))
            bodies.append(range_body(read, transport))
            return bodies[0]
        sender, data, sent = yield self.stream(make_body, head)
        self.assertIsInstance(bodies[0], SendfileBody)
        self.assertEqual(len(data), len(head) + read.length)
        self.assertTrue(data == head + self.content[1000:-1000], "bytes differ")
        self.assertIsNone(sent)
        self.assertEqual(read.released, 1)

    @inlineCallbacks
    def test_staged_bytes_match(self):
        """A staged read goes out from its buffers (more of them than one
        sendmsg takes, of odd sizes) byte for byte, after 2 MiB that were
        already in the transport's buffer."""
        read = StagedRead(self.file, 1000, len(self.content) - 2000,
                          (1, 4095, 65_539, 3, 7_000))
        self.assertGreater(len(read.staged()), 64)
        head = b"h" * (2 << 20)
        bodies = []

        def make_body(transport):
            self.assertTrue(can_send_staged(transport))
            bodies.append(range_body(read, transport))
            return bodies[0]
        sender, data, sent = yield self.stream(make_body, head)
        self.assertIsInstance(bodies[0], StagedBody)
        self.assertTrue(data == head + self.content[1000:-1000], "bytes differ")
        self.assertIsNone(sent)
        self.assertEqual(read.released, 1)

    @inlineCallbacks
    def test_staged_peer_gone(self):
        """The receiver of a staged body vanishes after 1 MiB: the body
        fails with ConnectionLost and its read is released."""
        read = StagedRead(self.file, 0, len(self.content), (1 << 20,))
        sender, data, sent = yield self.stream(lambda t: range_body(read, t), stop_after=1 << 20)
        self.assertLess(len(data), len(self.content))
        self.assertEqual(read.released, 1)
        sent.trap(ConnectionLost)

    @inlineCallbacks
    def test_staged_shorter_than_promised(self):
        """Staged buffers holding less than the read's length fail the
        body instead of spinning; the read is released."""
        read = StagedRead(self.file, 0, 1000, (100,))
        read.length = 5000
        sender, data, sent = yield self.stream(lambda t: range_body(read, t))
        self.assertEqual(len(data), 1000)
        self.assertEqual(read.released, 1)
        sent.trap(OSError)
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)

    @inlineCallbacks
    def test_read_body_bytes_match(self):
        """The fallback (TLS) path sends the same bytes."""
        read = FileRead(self.file, 0, len(self.content))
        sender, data, sent = yield self.stream(lambda t: range_body(read, t, zero_copy=False))
        self.assertTrue(data == self.content, "bytes differ")
        self.assertIsNone(sent)
        self.assertEqual(read.released, 1)

    @inlineCallbacks
    def test_peer_gone_mid_send(self):
        """The receiver vanishes after 1 MiB: the read is released, and the
        body's Deferred fails."""
        read = FileRead(self.file, 0, len(self.content))
        sender, data, sent = yield self.stream(lambda t: range_body(read, t), stop_after=1 << 20)
        self.assertLess(len(data), len(self.content))
        self.assertEqual(read.released, 1)
        sent.trap(ConnectionLost)

    @inlineCallbacks
    def test_file_shorter_than_promised(self):
        """A file that ends early breaks the frame: the body fails, the
        connection is aborted, the read released."""
        read = FileRead(self.file, len(self.content) - 100, 1000)
        sender, data, sent = yield self.stream(lambda t: range_body(read, t))
        self.assertEqual(len(data), 100)
        self.assertEqual(read.released, 1)
        sent.trap(OSError)
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)


class ChoiceTests(SynchronousTestCase):
    """range_body picks sendfile only where it is safe."""

    def setUp(self):
        self.file = tempfile.TemporaryFile()
        self.addCleanup(self.file.close)
        self.read = FileRead(self.file, 0, 10)

    def test_not_over_tls(self):
        self.assertFalse(can_sendfile(TLSStringTransport()))
        self.assertIsInstance(range_body(self.read, TLSStringTransport()), ReadBody)

    def test_not_without_a_socket(self):
        self.assertIsInstance(range_body(self.read, StringTransport()), ReadBody)

    def test_staged_copies_where_unsafe(self):
        """A staged read is copied under TLS, without a visible socket and
        when sendfile is not allowed."""
        read = StagedRead(self.file, 0, 0, (1,))
        self.assertFalse(can_send_staged(TLSStringTransport()))
        self.assertFalse(can_send_staged(StringTransport()))
        for transport in (TLSStringTransport(), StringTransport()):
            self.assertIsInstance(range_body(read, transport), ReadBody)

    def test_not_without_a_file(self):
        """A read with no file descriptor (the memory store) is read()."""
        from speedy.testing import MemoryChunkStore
        store = MemoryChunkStore()
        write = store.put(1, 3)
        write.write(b"abc")
        write.finish()
        read = self.successResultOf(store.get(1))
        self.assertIsInstance(range_body(read, StringTransport()), ReadBody)
        self.assertRaises(OSError, read.fileno)
        read.release()


class BytesBodyTests(SynchronousTestCase):

    def test_pieces(self):
        """A body from memory goes out in bounded pieces, in order."""
        data = os.urandom(600_000)
        transport = StringTransport()
        done = BytesBody(data).start(transport)
        writes = 0
        while transport.producer is not None:
            transport.producer.resumeProducing()
            writes += 1
        self.assertEqual(transport.value(), data)
        self.assertEqual(writes, 3)
        self.assertIsNone(self.successResultOf(done))

    def test_pieces_in_bounded_copies(self):
        """
        A body given as pieces goes out in order, on a transport whose
        buffer cannot be seen, in copies of at most L{PIECE} bytes that
        never span two pieces; progress is reported as each is taken.
        """
        pieces = [os.urandom(300_000), b"", os.urandom(10), bytearray(os.urandom(600_000))]
        transport = StringTransport()
        progress = []
        body = BytesBody(pieces, progress=lambda: progress.append(len(transport.value())))
        done = body.start(transport)
        while transport.producer is not None:
            transport.producer.resumeProducing()
        self.assertEqual(transport.value(), b"".join(pieces))
        self.assertEqual(PIECE, 262_144)
        self.assertEqual(progress, [0, 262_144, 300_000, 300_010, 562_154, 824_298])
        self.assertIsNone(self.successResultOf(done))

    def test_stopped(self):
        transport = StringTransport()
        body = BytesBody(b"x" * 1_000_000)
        done = body.start(transport)
        body.stopProducing()
        self.failureResultOf(done)

    def test_empty(self):
        transport = StringTransport()
        self.assertIsNone(self.successResultOf(BytesBody(b"").start(transport)))
        self.assertIsNone(transport.producer)
