# -*- test-case-name: speedy.test.test_splice -*-
"""
Chunk bytes relayed with C{os.splice}: from a chunkserver's socket into a
pipe and from the pipe into an HTTP client's socket, never through Python
memory.

Three parts, none of which knows about imageservers:

  - L{SourcePool}: dedicated non-blocking TCP sockets to chunkservers, one
    GET answer at a time on each (a spliced body must be the only thing on
    its socket while it streams), kept idle per address for the next GET
    once an answer was read to its end; and a pool of empty pipes.
  - L{SpliceGet}: one GET on such a socket.  The request frame goes out as
    soon as a socket is at hand; L{SpliceGet.head} reads the 16-byte frame
    header and the 20-byte GET prefix with C{recv} (exactly those bytes,
    never more), turning an error frame into its L{speedy.errors} class;
    then the body is for L{SpliceRelay} to take.
  - L{SpliceRelay}: moves bodies through one pipe into the socket of a
    C{twisted.web} response, as the request's streaming producer.

Back-pressure comes for free: the source's fd is registered with the
reactor (C{addReader}) only while the pipe has room, so a client that does
not read fills the pipe, the relay stops reading the chunkserver's socket,
and TCP slows the chunkserver down.

Waiting for the client socket without a second reactor writer on its fd
(epoll maps one selectable per fd): when the client socket says C{EAGAIN},
or Twisted's own write buffer is not empty (the HTTP headers went through
it, and spliced bytes must not overtake them), the relay does what
C{FileDescriptor.write} does when its buffer overfills: it sets
C{transport.producerPaused}, calls C{transport.producer.pauseProducing()}
(the L{HTTPChannel}, which pauses its request producer: the relay) and
C{transport.startWriting()}.  Once the socket drained, C{FileDescriptor.doWrite}
finds its buffer empty, calls the channel's C{resumeProducing}, which calls
the relay's.  That needs attributes of L{twisted.internet.tcp.Connection}
and L{twisted.web.http.HTTPChannel} that are not public API (checked against
Twisted 26.10); L{can_splice} and L{splice_transport} check for all of them,
and callers fall back to copying through Python without them (TLS, HTTP/2,
other transports, no C{os.splice}, C{SPEEDY_NO_SPLICE=1} in the environment).

Timeouts count stalls, as the chunk client's do: a source that moves no
byte for C{request_timeout} seconds while the relay waits for it fails with
L{Timeout} (time it spends not read, because the pipe is full or its turn
has not come, does not count); connecting has C{connect_timeout}.

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
from twisted.internet.defer import CancelledError, Deferred, fail
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import IPushProducer, IReadWriteDescriptor
from twisted.web.http import NO_BODY_CODES
from zope.interface import implementer

from speedy.errors import BadRequest, ConnectionFailed, SpeedyError, Timeout
from speedy.wire.client import parse_address
from speedy.wire.connection import ProtocolViolation
from speedy.wire.frames import (
    ERROR_BODY, FLAG_ERROR, FLAG_RESPONSE, GET_REQUEST, GET_RESPONSE, HEADER_SIZE,
    MAX_ERROR_MESSAGE, OP_GET, Header, decode_error, frame)
from speedy.wire.producers import buffer_empty, buffer_visible

#: The pipe size asked for with C{F_SETPIPE_SZ}; smaller when the kernel
#: refuses (C{/proc/sys/fs/pipe-max-size}, the per-user pipe quota).
PIPE_SIZE = 1 << 20
#: The smallest pipe size tried before taking the kernel's default.
MIN_PIPE_SIZE = 64 * 1024

#: Idle sockets kept per chunkserver address, and empty pipes kept.
MAX_IDLE_SOCKETS = 16
MAX_IDLE_PIPES = 16
#: Seconds an idle socket is kept (the chunkserver closes idle connections
#: after 120 s by default).
IDLE_LIMIT = 60.0

_SPLICE_FLAGS = getattr(os, "SPLICE_F_MOVE", 0) | getattr(os, "SPLICE_F_NONBLOCK", 0)
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
_F_GETPIPE_SZ = getattr(fcntl, "F_GETPIPE_SZ", 1032)
_GONE = (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN, errno.EBADF, errno.ESHUTDOWN)


def splice_disabled():
    """@return: True if C{SPEEDY_NO_SPLICE} is set (to anything but 0)."""
    return os.environ.get("SPEEDY_NO_SPLICE", "") not in ("", "0")


def can_splice(transport):
    """
    @return: True if bytes may be spliced into C{transport}'s socket: a
        plain TCP connection whose write buffer we can see (as for
        sendfile), with a streaming producer registered that we can pause
        the way C{FileDescriptor.write} does.
    """
    return (hasattr(os, "splice") and not splice_disabled()
            and buffer_visible(transport)
            and all(hasattr(transport, name) for name in (
                "producer", "producerPaused", "streamingProducer", "startWriting",
                "fileno", "connected", "disconnecting"))
            and bool(transport.streamingProducer)
            and hasattr(transport.producer, "pauseProducing"))


def splice_transport(request):
    """
    @param request: the consumer a body is about to be streamed into.
    @return: the transport to splice the body into if C{request} is a
        C{twisted.web} request on HTTP/1.x whose body goes to its socket as
        it is (a C{Content-Length}, so no chunked framing; no content
        encoding; not HEAD; headers not yet written) and whose channel
        pauses it when the transport's buffer fills; else None.
    """
    channel = getattr(request, "channel", None)
    transport = getattr(channel, "transport", None)
    headers = getattr(request, "responseHeaders", None)
    if (transport is None or headers is None
            or not hasattr(request, "registerProducer")
            or not hasattr(channel, "_requestProducer")
            or getattr(request, "startedWriting", True)
            or getattr(request, "method", None) == b"HEAD"
            or getattr(request, "code", None) in NO_BODY_CODES
            or getattr(request, "_encoder", None) is not None
            or not headers.hasHeader(b"content-length")
            or headers.hasHeader(b"transfer-encoding")
            or not can_splice(transport)
            or transport.producer is not channel):
        return None
    return transport


class Pipe:
    """
    A non-blocking pipe: C{r} and C{w} fds, its C{size} in bytes and the
    bytes it C{held} (counted by its user).
    """

    def __init__(self, size=PIPE_SIZE):
        self.r, self.w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.held = 0
        try:
            while size >= MIN_PIPE_SIZE:
                try:
                    fcntl.fcntl(self.w, _F_SETPIPE_SZ, size)
                    break
                except OSError as e:
                    if e.errno not in (errno.EPERM, errno.EBUSY, errno.EINVAL):
                        raise
                    size //= 2
            self.size = fcntl.fcntl(self.w, _F_GETPIPE_SZ)
        except BaseException:
            self.close()
            raise

    def close(self):
        for fd in (self.r, self.w):
            if fd >= 0:
                os.close(fd)
        self.r = self.w = -1


class PipePool:
    """Empty pipes kept for the next relay."""

    def __init__(self, size=PIPE_SIZE, max_idle=MAX_IDLE_PIPES):
        self._size = size
        self._max_idle = max_idle
        self._idle = []
        self.created = 0

    def take(self):
        """@return: an empty L{Pipe}."""
        if self._idle:
            return self._idle.pop()
        self.created += 1
        return Pipe(self._size)

    def give_back(self, pipe):
        """Keep C{pipe} if it is empty and there is room, else close it."""
        if pipe.held == 0 and pipe.r >= 0 and len(self._idle) < self._max_idle:
            self._idle.append(pipe)
        else:
            pipe.close()

    @property
    def idle(self):
        return len(self._idle)

    def close(self):
        idle, self._idle = self._idle, []
        for pipe in idle:
            pipe.close()


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
    @ivar counters: C{connects}, C{reuses}, C{dropped_idle}.
    """

    def __init__(self, reactor, connect_timeout=5.0, request_timeout=30.0,
                 max_idle=MAX_IDLE_SOCKETS, idle_limit=IDLE_LIMIT, pipes=None, receive_buffer=0):
        self.reactor = reactor
        self.connect_timeout = connect_timeout
        self.request_timeout = request_timeout
        self.receive_buffer = receive_buffer
        self._max_idle = max_idle
        self._idle_limit = idle_limit
        self._idle = {}  # address -> [(_SourceSocket, idle since)]
        self.pipes = PipePool() if pipes is None else pipes
        self.counters = Counter()
        self._closed = False

    def get(self, address, file_id, offset, length):
        """
        Send a GET of C{length} bytes at C{offset} of chunk C{file_id} to
        C{address}, on an idle socket or a new one.

        @return: its L{SpliceGet} (whose C{close} must be called).
        """
        return SpliceGet(self, address, file_id, offset, length)

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
        except BaseException:
            source.close()
            raise
        return source

    async def _connected(self, source):
        """@return: the errno of a non-blocking connect, once it ended."""
        done = Deferred()

        def writable():
            source.want_write(False)
            if not done.called:
                done.callback(source.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR))

        def too_slow():
            if not done.called:
                done.errback(Timeout(f"connecting to {source.address} took more than "
                                     f"{self.connect_timeout}s"))

        source.on_write = writable
        source.on_lost = lambda reason: writable()
        source.want_write(True)
        timer = self.reactor.callLater(self.connect_timeout, too_slow)
        try:
            return await done
        finally:
            if timer.active():
                timer.cancel()
            source.want_write(False)
            source.on_write = source.on_lost = None

    def close(self):
        """Close the idle sockets and pipes; sockets in use close when their
        GET does."""
        self._closed = True
        idle, self._idle = self._idle, {}
        for sources in idle.values():
            for source, _ in sources:
                source.close()
        self.pipes.close()


# The states of a SpliceGet.
_SENDING, _SENT, _HEAD, _BODY, _DONE, _BROKEN, _CLOSED = (
    "sending", "sent", "head", "body", "done", "broken", "closed")


class SpliceGet:
    """
    One GET answer read off a dedicated socket (see L{SourcePool.get}).

    The request goes out at once; L{head} reads the answer's header and
    prefix; then L{splice_to} takes body bytes into a pipe while the owner
    watches for readability (L{watch}).  L{close} returns the socket to
    the pool when the answer was read to its end (an error frame included),
    else closes it.

    @ivar moved: body bytes taken so far.
    @ivar remaining: body bytes not yet taken.
    """

    def __init__(self, pool, address, file_id, offset, length):
        self._pool = pool
        self._clock = pool.reactor
        self.address = address
        self.file_id = file_id
        self.offset = offset
        self.length = length
        self.moved = 0
        self.remaining = length
        self._source = None
        self._state = _SENDING
        self._send_failure = None
        self._sent_waiters = []
        self._last_moved = self._clock.seconds()
        self._stall = None  # DelayedCall of _check_stall
        self._on_stall = None  # called with a Timeout while someone waits
        self._sending = Deferred.fromCoroutine(self._send())
        self._sending.addBoth(self._sent)

    # --- the request -----------------------------------------------------

    async def _send(self):
        source = self._pool._take_idle(self.address)
        if source is None:
            source = await self._pool._connect(self.address)
        if self._state == _CLOSED:
            source.close()
            return
        self._source = source
        self._request_id = source.next_id
        source.next_id = source.next_id % (2**32 - 1) + 1
        data = memoryview(frame(OP_GET, self._request_id,
                                GET_REQUEST.pack(self.file_id, self.offset, self.length)))
        while data:
            try:
                data = data[source.sock.send(data):]
            except BlockingIOError:
                await self._ready(source.want_write, "on_write")
            except OSError as e:
                raise ConnectionFailed(f"sending a GET to {self.address} failed: {e}")

    def _sent(self, result):
        if self._state == _SENDING:
            self._state = _SENT
        if result is not None:  # a Failure
            self._send_failure = result
            self._break()
        waiters, self._sent_waiters = self._sent_waiters, []
        for d in waiters:
            if not d.called:  # else cancelled
                d.callback(None)

    # --- the head --------------------------------------------------------

    def head(self):
        """
        Read the answer's header and GET prefix.

        @return: a Deferred firing with None once the body is next (see
            L{remaining}); failing with the L{speedy.errors} class of an
            error frame, L{ConnectionFailed} (also for an answer that
            breaks the protocol, or of another length than asked),
            L{Timeout}, or L{CancelledError} when cancelled.
        """
        return Deferred.fromCoroutine(self._head())

    async def _head(self):
        if self._state == _SENDING:
            d = Deferred()
            self._sent_waiters.append(d)
            self._arm()
            await d
        if self._send_failure is not None:
            self._send_failure.raiseException()
        if self._state != _SENT:
            raise ConnectionFailed(f"GET to {self.address}: the answer is already being read")
        self._state = _HEAD
        raw = await self._recv_exactly(HEADER_SIZE)
        try:
            header = Header.unpack(raw)
            if not header.flags & FLAG_RESPONSE or header.opcode != OP_GET:
                raise BadRequest(f"expected a GET answer, got opcode {header.opcode} "
                                 f"flags {header.flags:#x}")
            if header.request_id != self._request_id:
                raise BadRequest(f"answer to request {header.request_id}, not {self._request_id}")
            if header.flags & FLAG_ERROR:
                if header.body_length > ERROR_BODY.size + MAX_ERROR_MESSAGE:
                    raise BadRequest(f"an error body of {header.body_length} bytes")
            elif header.body_length != GET_RESPONSE.size + self.length:
                raise BadRequest(f"answered {header.body_length - GET_RESPONSE.size} bytes, "
                                 f"not {self.length}")
        except SpeedyError as e:
            self._break()
            raise ProtocolViolation(f"{self.address} broke the protocol: {e}")
        if header.flags & FLAG_ERROR:
            body = await self._recv_exactly(header.body_length)
            self._state = _DONE  # the socket is clean again
            raise decode_error(body)
        prefix = await self._recv_exactly(GET_RESPONSE.size)
        _, _, offset = GET_RESPONSE.unpack(prefix)
        if offset != self.offset:
            self._break()
            raise ProtocolViolation(f"{self.address} answered offset {offset}, not {self.offset}")
        self._state = _BODY if self.length else _DONE

    async def _recv_exactly(self, size):
        data = bytearray()
        source = self._source
        while len(data) < size:
            try:
                piece = source.sock.recv(size - len(data))
            except BlockingIOError:
                await self._ready(source.want_read, "on_read")
                continue
            except OSError as e:
                self._break()
                raise ConnectionFailed(f"reading from {self.address} failed: {e}")
            if not piece:
                self._break()
                raise ConnectionFailed(f"{self.address} closed the connection mid-answer")
            self._last_moved = self._clock.seconds()
            data += piece
        return bytes(data)

    async def _ready(self, want, handler):
        """Wait until the socket is readable or writable (C{want} is its
        C{want_read} or C{want_write}, C{handler} the matching attribute)."""
        source = self._source
        d = Deferred()

        def fire(*_):
            if not d.called:
                d.callback(None)

        def stalled(error):
            if not d.called:
                d.errback(error)

        setattr(source, handler, fire)
        source.on_lost = fire
        self._on_stall = stalled
        want(True)
        self._arm()
        try:
            await d
        finally:
            self._on_stall = None
            want(False)
            if not source.closed:
                setattr(source, handler, None)
                source.on_lost = None

    # --- the body --------------------------------------------------------

    def splice_to(self, fd, size):
        """
        Move up to C{size} body bytes into C{fd} (a pipe's write end).

        @return: the bytes moved, or None when the socket had none ready
            (or the pipe had no room).
        @raise ConnectionFailed: the socket failed or ended before the
            body did.
        """
        if self._state != _BODY:
            raise ConnectionFailed(f"GET from {self.address} has no body to read")
        try:
            moved = os.splice(self._source._fd, fd, min(size, self.remaining), flags=_SPLICE_FLAGS)
        except BlockingIOError:
            return None
        except OSError as e:
            self._break()
            raise ConnectionFailed(f"reading from {self.address} failed at byte {self.moved} "
                                   f"of {self.length}: {e}")
        if moved == 0:
            self._break()
            raise ConnectionFailed(f"{self.address} closed the connection at byte {self.moved} "
                                   f"of {self.length}")
        self.moved += moved
        self.remaining -= moved
        self._last_moved = self._clock.seconds()
        if not self.remaining:
            self._state = _DONE
            self._on_stall = None
        return moved

    def pending(self):
        """@return: bytes waiting in the socket (0 if it has none)."""
        return self._source.pending() if self._source is not None and not self._source.closed else 0

    def watch(self, readable, failed):
        """
        Call C{readable()} whenever the socket turns readable (or errors),
        and C{failed(Timeout)} once it moved no byte for the request
        timeout, until L{unwatch}.
        """
        source = self._source
        if source is None or source.closed:
            return
        if self._on_stall is None:  # time spent unwatched does not count
            self._last_moved = max(self._last_moved, self._clock.seconds())
        source.on_read = readable
        source.on_lost = lambda reason: readable()
        self._on_stall = failed
        source.want_read(True)
        self._arm()

    def unwatch(self):
        """Stop watching the socket (see L{watch})."""
        self._on_stall = None
        source = self._source
        if source is not None and not source.closed:
            source.want_read(False)
            source.on_read = source.on_lost = None

    # --- timeouts --------------------------------------------------------

    def _arm(self):
        if self._stall is None:
            self._stall = self._clock.callLater(self._pool.request_timeout, self._check_stall)

    def _check_stall(self):
        self._stall = None
        waiting = self._on_stall is not None or self._sent_waiters
        if not waiting or self._state in (_DONE, _BROKEN, _CLOSED):
            return
        idle = self._clock.seconds() - self._last_moved
        if idle < self._pool.request_timeout:
            self._stall = self._clock.callLater(self._pool.request_timeout - idle,
                                                self._check_stall)
            return
        error = Timeout(f"GET of chunk {self.file_id} from {self.address}: nothing moved "
                        f"for {self._pool.request_timeout}s")
        self._break()
        on_stall, self._on_stall = self._on_stall, None
        waiters, self._sent_waiters = self._sent_waiters, []
        if not self._sending.called:
            self._sending.cancel()
        if on_stall is not None:
            on_stall(error)
        for d in waiters:
            if not d.called:
                d.errback(error)

    # --- the end ---------------------------------------------------------

    def _break(self):
        """The socket cannot be reused: close it now."""
        if self._state != _CLOSED:
            self._state = _BROKEN
        if self._source is not None:
            self._source.close()

    def close(self):
        """Give the socket back to the pool if the answer was read to its
        end, else close it; stop every timer."""
        if self._state == _CLOSED:
            return
        reusable = self._state == _DONE
        self._state = _CLOSED
        self._on_stall = None
        if self._stall is not None:
            if self._stall.active():
                self._stall.cancel()
            self._stall = None
        if not self._sending.called:
            self._sending.cancel()
        source, self._source = self._source, None
        if source is not None:
            self.unwatch_source(source)
            if reusable:
                self._pool._give_back(source)
            else:
                source.close()

    @staticmethod
    def unwatch_source(source):
        if not source.closed:
            source.want_read(False)
            source.want_write(False)


@implementer(IPushProducer)
class SpliceRelay:
    """
    Moves GET bodies (L{SpliceGet}s, one after the other) through one pipe
    into the socket under a C{twisted.web} request (see the module
    docstring), as the request's streaming producer.

    @param request: a request L{splice_transport} accepts.
    @param pipes: a L{PipePool}.
    @param on_gone: called with a L{ConnectionLost} once the client went
        away (the request stopped its producer, or its socket failed).
    @ivar sent: bytes that went into the client's socket.
    """

    def __init__(self, request, pipes, on_gone=lambda error: None):
        self._request = request
        self._transport = request.channel.transport
        self._pipes = pipes
        self._on_gone = on_gone
        self._pipe = None
        self._source = None
        self._want = 0
        self._pumped = None  # the Deferred of pump()
        self._drained = None  # the Deferred of drained()
        self._paused = False
        self._pipe_full = False
        self._registered = False
        self._busy = False
        self._again = False
        self.gone = None  # the ConnectionLost, once the client went away
        self.sent = 0

    def start(self):
        """Take a pipe, register as the request's producer and write the
        response's headers (through Twisted's buffer)."""
        self._pipe = self._pipes.take()
        self._request.registerProducer(self, True)
        self._registered = True
        self._request.write(b"")

    def pump(self, source, length):
        """
        Take C{length} body bytes of C{source} (after its L{SpliceGet.head})
        into the pipe, passing the pipe's bytes on as the client takes them.

        @return: a Deferred firing with None once they all went into the
            pipe; failing with the source's error (C{source.moved} says how
            many went in), or with L{ConnectionLost} when the client went
            away.  Cancelling it stops taking bytes from C{source}.
        """
        if self.gone is not None:
            return fail(self.gone)
        self._source, self._want = source, length
        self._pumped = d = Deferred(lambda _: self._detach(d))
        self._pump()
        return d

    def drained(self):
        """
        @return: a Deferred firing with None once the pipe is empty (every
            byte went into the client's socket); failing with
            L{ConnectionLost} when the client went away.
        """
        if self.gone is not None:
            return fail(self.gone)
        self._drained = d = Deferred(lambda _: setattr(self, "_drained", None))
        self._pump()
        return d

    def close(self):
        """Stop, unregister from the request and give the pipe back (it is
        closed unless empty)."""
        if self._source is not None:
            self._source.unwatch()
            self._source = None
        if self._registered:
            self._registered = False
            self._request.unregisterProducer()
            # for the access log, which counts what went through write()
            self._request.sentLength = getattr(self._request, "sentLength", 0) + self.sent
        pipe, self._pipe = self._pipe, None
        if pipe is not None:
            self._pipes.give_back(pipe)

    # IPushProducer

    def pauseProducing(self):
        self._paused = True

    def resumeProducing(self):
        self._paused = False
        self._pump()

    def stopProducing(self):
        self._client_gone(ConnectionLost("the consumer stopped reading"))

    # the pump

    def _detach(self, d):
        if self._pumped is d:
            self._pumped = None
            if self._source is not None:
                self._source.unwatch()
            self._source, self._want = None, 0

    def _pump(self):
        if self._busy:
            self._again = True
            return
        self._busy = True
        try:
            self._again = True
            while self._again:
                self._again = False
                self._move()
        finally:
            self._busy = False

    def _move(self):
        progress = True
        while progress and self._pipe is not None and self.gone is None:
            progress = False
            pipe = self._pipe
            if pipe.held and not self._paused:
                progress = self._to_client(pipe)
                if self.gone is not None:
                    return
            source = self._source
            if source is None:
                continue
            if self._pipe_full or pipe.held >= pipe.size:
                source.unwatch()  # the pipe has no room: stop reading the chunkserver
                continue
            try:
                moved = source.splice_to(pipe.w, min(self._want, pipe.size - pipe.held))
            except Exception as e:
                self._source_failed(e)
                return
            if moved is None:
                if pipe.held and source.pending():
                    self._pipe_full = True  # bytes wait, so the pipe took none
                    source.unwatch()
                else:
                    source.watch(self._pump, self._source_failed)
                continue
            pipe.held += moved
            self._want -= moved
            progress = True
            if not self._want:
                source.unwatch()
                d, self._pumped = self._pumped, None
                self._source = None
                d.callback(None)  # may hand over the next source at once
        pipe = self._pipe
        if (self._drained is not None and self._source is None and pipe is not None
                and not pipe.held and self.gone is None):
            d, self._drained = self._drained, None
            d.callback(None)

    def _to_client(self, pipe):
        """Splice the pipe's bytes into the client's socket.
        @return: True if some went."""
        transport = self._transport
        if not transport.connected or transport.disconnecting:
            self._client_gone(ConnectionLost("the client connection is closing"))
            return False
        if not buffer_empty(transport):
            self._wait_for_client()
            return False
        try:
            sent = os.splice(pipe.r, transport.fileno(), pipe.held, flags=_SPLICE_FLAGS)
        except BlockingIOError:
            self._wait_for_client()
            return False
        except OSError as e:
            self._client_gone(ConnectionLost(f"sending to the client failed: {e}"))
            if e.errno in _GONE:
                transport.abortConnection()
            return False
        pipe.held -= sent
        self.sent += sent
        self._pipe_full = False
        return sent > 0

    def _wait_for_client(self):
        """Wait for the client's socket as C{FileDescriptor.write} does when
        its buffer overfills: the transport resumes us once it drained."""
        transport = self._transport
        self._paused = True
        transport.producerPaused = True
        transport.producer.pauseProducing()
        transport.startWriting()

    def _source_failed(self, error):
        source, self._source = self._source, None
        self._want = 0
        if source is not None:
            source.unwatch()
        d, self._pumped = self._pumped, None
        if d is not None:
            d.errback(error)

    def _client_gone(self, error):
        if self.gone is not None:
            return
        self.gone = error
        if self._source is not None:
            self._source.unwatch()
        self._on_gone(error)
        for name in ("_pumped", "_drained"):
            d = getattr(self, name)
            setattr(self, name, None)
            if d is not None and not d.called:
                d.errback(error)
