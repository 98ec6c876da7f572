# -*- test-case-name: speedy.test.test_splice -*-
"""
Dedicated non-blocking TCP sockets to chunkservers for spliced GETs
(L{SourcePool}): one GET answer at a time on each (a spliced body must be
the only thing on its socket while it streams), kept idle per address for
the next GET once an answer was read to its end; and the pool of pipes.

The read window: by default the kernel sizes each source socket's receive
buffer, and it grows it with the round trip it measures, queueing included.
When many chunkservers answer one imageserver through one NIC (TCP
incast), the windows grow until their sum overruns the queue in front of
that NIC, and the drops stall the relays.  A C{receive_buffer} caps every
source socket's C{SO_RCVBUF} (set before connecting, so the window scale
fits it) and with it the bytes each chunkserver has in flight.

Idle sockets are not watched by the reactor: one is checked with C{poll}
when it is taken again, and dropped if it turned readable (the chunkserver
closed it, or sent something unasked) or errored, or if it sat idle longer
than C{idle_limit} (below the chunkserver's idle timeout).

With a C{secret} (the cluster secret) every new socket passes the handshake
of L{speedy.wire.handshake} before its first GET.
"""

import errno
import fcntl
import os
import select
import socket
import termios
from array import array
from collections import Counter

from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReadWriteDescriptor
from zope.interface import implementer

from speedy.errors import BadRequest, ConnectionFailed, Timeout, Unauthenticated
from speedy.wire.client import parse_address
from speedy.wire.frames import FLAG_ERROR, HEADER_SIZE, OP_AUTH, Header, decode_error, frame
from speedy.wire.handshake import NONCE_SIZE, PROOF_SIZE, client_answer, new_nonce
from speedy.wire.reader import check_answer
from speedy.zerocopy.pipes import PipePool
from speedy.zerocopy.spliceget import SpliceGet

#: Idle sockets kept per chunkserver address.
MAX_IDLE_SOCKETS = 16
#: Seconds an idle socket is kept (the chunkserver closes idle connections
#: after 120 s by default).
IDLE_LIMIT = 60.0


@implementer(IReadWriteDescriptor)
class _SourceSocket:
    """
    A non-blocking socket to one chunkserver, as a reactor selectable that
    calls C{on_read} / C{on_write} when it is readable / writable and
    C{on_lost} when the reactor drops it.
    """

    def __init__(self, reactor, address, sock):
        self._reactor = reactor
        self.address = address
        self.sock = sock
        self._fd = sock.fileno()
        self.on_read = self.on_write = self.on_lost = None
        self._reading = self._writing = False
        self.next_id = 1
        self.closed = False

    def fileno(self):
        return -1 if self.closed else self._fd

    def logPrefix(self):
        return f"SpliceSource({self.address})"

    def doRead(self):
        if self.on_read is not None:
            self.on_read()

    def doWrite(self):
        if self.on_write is not None:
            self.on_write()

    def connectionLost(self, reason):
        # The reactor dropped the fd (an error on it, or a handler raised).
        self._reading = self._writing = False
        if self.on_lost is not None:
            self.on_lost(reason)

    def want_read(self, on):
        if on != self._reading and not self.closed:
            self._reading = on
            (self._reactor.addReader if on else self._reactor.removeReader)(self)

    def want_write(self, on):
        if on != self._writing and not self.closed:
            self._writing = on
            (self._reactor.addWriter if on else self._reactor.removeWriter)(self)

    def quiet(self):
        """@return: True if nothing happened on the idle socket (no byte,
        no end, no error)."""
        poller = select.poll()
        poller.register(self._fd, select.POLLIN | select.POLLPRI)
        return not poller.poll(0)

    def pending(self):
        """@return: bytes waiting in the socket's receive queue."""
        out = array("i", [0])
        fcntl.ioctl(self._fd, termios.FIONREAD, out, True)
        return out[0]

    def close(self):
        if not self.closed:
            self.want_read(False)
            self.want_write(False)
            self.on_read = self.on_write = self.on_lost = None
            self.closed = True
            self.sock.close()


class SourcePool:
    """
    Sockets to chunkservers for spliced GETs (see the module docstring),
    and the pipes of the relays.

    @param reactor: an C{IReactorFDSet} and C{IReactorTime} (and
        C{IReactorPluggableResolver} for addresses that are not IPs).
    @param receive_buffer: the C{SO_RCVBUF} of every new socket (the read
        window, see the module docstring), or 0 for the kernel's own
        sizing.
    @param secret: the cluster secret, proven on every new socket; None
        for chunkservers that ask for none.
    @ivar counters: C{connects}, C{reuses}, C{dropped_idle}.
    """

    def __init__(self, reactor, connect_timeout=5.0, request_timeout=30.0,
                 max_idle=MAX_IDLE_SOCKETS, idle_limit=IDLE_LIMIT, pipes=None, receive_buffer=0,
                 secret=None):
        self.reactor = reactor
        self.secret = secret
        self.connect_timeout = connect_timeout
        self.request_timeout = request_timeout
        self.receive_buffer = receive_buffer
        self._max_idle = max_idle
        self._idle_limit = idle_limit
        self._idle = {}  # address -> [(_SourceSocket, idle since)]
        self.pipes = PipePool() if pipes is None else pipes
        self.counters = Counter()
        self._closed = False

    def get(self, address, file_id, offset, length, expect=None):
        """
        Send a GET of C{length} bytes at C{offset} of chunk C{file_id} to
        C{address}, on an idle socket or a new one.

        @param expect: the (size, CRC32C) the chunk was written with; an
            answer naming others fails its head with L{ChecksumMismatch}.
        @return: its L{SpliceGet} (whose C{close} must be called).
        """
        return SpliceGet(self, address, file_id, offset, length, expect)

    def idle(self, address=None):
        """@return: the number of idle sockets (to C{address})."""
        if address is not None:
            return len(self._idle.get(address, ()))
        return sum(len(v) for v in self._idle.values())

    def _take_idle(self, address):
        idle = self._idle.get(address)
        now = self.reactor.seconds()
        while idle:
            source, since = idle.pop()
            if now - since <= self._idle_limit and source.quiet():
                self.counters["reuses"] += 1
                return source
            self.counters["dropped_idle"] += 1
            source.close()
        return None

    def _give_back(self, source):
        idle = self._idle.setdefault(source.address, [])
        if self._closed or len(idle) >= self._max_idle or source.closed:
            source.close()
        else:
            source.on_read = source.on_write = source.on_lost = None
            idle.append((source, self.reactor.seconds()))

    async def _connect(self, address):
        """@return: a connected L{_SourceSocket} to C{address}.
        @raise ConnectionFailed, Timeout: it could not be connected."""
        if self._closed:
            raise ConnectionFailed("the source pool is closed")
        try:
            host, port = parse_address(address)
        except BadRequest as e:
            raise ConnectionFailed(str(e))
        if not (isIPAddress(host) or isIPv6Address(host)):
            try:
                host = await self.reactor.resolve(host, (self.connect_timeout,))
            except CancelledError:
                raise
            except Exception as e:
                raise ConnectionFailed(f"cannot resolve {address}: {e}")
        family = socket.AF_INET6 if isIPv6Address(host) else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
        source = _SourceSocket(self.reactor, address, sock)
        self.counters["connects"] += 1
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.receive_buffer:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.receive_buffer)
            err = sock.connect_ex((host, port))
            if err in (errno.EINPROGRESS, errno.EAGAIN):
                err = await self._connected(source)
            if err:
                raise ConnectionFailed(f"cannot connect to {address}: {os.strerror(err)}")
            if self.secret is not None:
                await self._handshake(source)
        except BaseException:
            source.close()
            raise
        return source

    async def _handshake(self, source):
        """Prove the cluster secret to the chunkserver on the new socket
        C{source}, and check that it knows it too (L{speedy.wire.handshake}).
        @raise Unauthenticated, ConnectionFailed, Timeout: it failed."""
        nonce = new_nonce()
        self._send_small(source, frame(OP_AUTH, 1, nonce))
        try:
            header = Header.unpack(await self._receive(source, HEADER_SIZE))
            check_answer(header, OP_AUTH, 1)
        except BadRequest as e:
            raise Unauthenticated(f"{source.address} broke the handshake: {e}")
        if header.flags & FLAG_ERROR:
            raise Unauthenticated(f"{source.address} refused the handshake: "
                                  f"{decode_error(await self._receive(source, header.body_length))}")
        if header.body_length != NONCE_SIZE + PROOF_SIZE:
            raise Unauthenticated(f"{source.address} answered the handshake with "
                                  f"{header.body_length} bytes")
        challenge = await self._receive(source, header.body_length)
        self._send_small(source, frame(OP_AUTH, 0, client_answer(self.secret, nonce, challenge)))

    @staticmethod
    def _send_small(source, data):
        """Send a few bytes on a socket whose send buffer has room for them."""
        try:
            sent = source.sock.send(data)
        except OSError as e:
            raise ConnectionFailed(f"sending to {source.address}: {e}")
        if sent != len(data):
            raise ConnectionFailed(f"{source.address} took {sent} of {len(data)} bytes")

    async def _receive(self, source, count):
        """@return: exactly C{count} bytes read from C{source}, waiting for
        them at most C{connect_timeout} seconds."""
        data = bytearray()

        def read():
            try:
                while len(data) < count:
                    piece = source.sock.recv(count - len(data))
                    if not piece:
                        raise ConnectionFailed(f"{source.address} closed the connection")
                    data.extend(piece)
            except BlockingIOError:
                return None
            except OSError as e:
                raise ConnectionFailed(f"reading from {source.address}: {e}")
            return bytes(data)

        return await self._until(source, False, read, "answering the handshake")

    async def _connected(self, source):
        """@return: the errno of a non-blocking connect, once it ended."""
        return await self._until(
            source, True, lambda: source.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR),
            "connecting")

    async def _until(self, source, writing, step, what):
        """
        Call C{step} now and each time C{source} turns readable (writable,
        with C{writing}) or is dropped, until it returns something else
        than None.

        @return: what C{step} returned.
        @raise Timeout: C{what} took more than C{connect_timeout} seconds.
        @raise Exception: what C{step} raised.
        """
        done = Deferred()

        def ready():
            if done.called:
                return
            try:
                result = step()
            except Exception as e:
                done.errback(e)
                return
            if result is not None:
                done.callback(result)

        def too_slow():
            if not done.called:
                done.errback(Timeout(f"{source.address}: {what} took more than "
                                     f"{self.connect_timeout}s"))

        want = source.want_write if writing else source.want_read
        if writing:
            source.on_write = ready
        else:
            source.on_read = ready
        source.on_lost = lambda reason: ready()
        want(True)
        timer = self.reactor.callLater(self.connect_timeout, too_slow)
        try:
            if not writing:
                ready()
            return await done
        finally:
            if timer.active():
                timer.cancel()
            want(False)
            source.on_read = source.on_write = source.on_lost = None

    def close(self):
        """Close the idle sockets and pipes; sockets in use close when their
        GET does."""
        self._closed = True
        idle, self._idle = self._idle, {}
        for sources in idle.values():
            for source, _ in sources:
                source.close()
        self.pipes.close()
