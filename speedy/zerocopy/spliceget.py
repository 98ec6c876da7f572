# -*- test-case-name: speedy.test.test_splice -*-
"""
One GET on a socket of a L{speedy.zerocopy.sources.SourcePool}
(L{SpliceGet}): the request frame goes out as soon as a socket is at hand;
L{SpliceGet.head} reads the 16-byte frame header and the 20-byte GET prefix
with C{recv} (exactly those bytes, never more), checks the header as the
chunk client does (L{speedy.wire.reader.check_answer}) and turns an error
frame into its L{speedy.errors} class; then the body is for
L{speedy.zerocopy.relay.SpliceRelay} to take.

Timeouts count stalls, as the chunk client's do: a source that moves no
byte for C{request_timeout} seconds while the relay waits for it fails with
L{Timeout} (time it spends not read, because the pipe is full or its turn
has not come, does not count); connecting has C{connect_timeout}.
"""

import os

from twisted.internet.defer import Deferred

from speedy.errors import BadRequest, ChecksumMismatch, ConnectionFailed, SpeedyError, Timeout
from speedy.logs import request_id as current_request_id
from speedy.wire.connection import ProtocolViolation
from speedy.wire.frames import (
    FLAG_ERROR, GET_REQUEST, GET_RESPONSE, HEADER_SIZE, OP_GET, Header, decode_error, frame,
    trace_of)
from speedy.wire.reader import check_answer
from speedy.zerocopy.pipes import _SPLICE_FLAGS

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

    def __init__(self, pool, address, file_id, offset, length, expect=None):
        self._pool = pool
        self.expect = expect
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
        # The request id current when the GET was asked for (the HTTP
        # request it serves): its trace.
        self._trace = trace_of(current_request_id.get())
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
                                GET_REQUEST.pack(self.file_id, self.offset, self.length),
                                trace=self._trace))
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
            check_answer(header, OP_GET, self._request_id)
            if not header.flags & FLAG_ERROR and header.body_length != GET_RESPONSE.size + self.length:
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
        size, crc, offset = GET_RESPONSE.unpack(prefix)
        if offset != self.offset:
            self._break()
            raise ProtocolViolation(f"{self.address} answered offset {offset}, not {self.offset}")
        if self.expect is not None and (size, crc) != tuple(self.expect):
            # Spliced bytes are never hashed here: what the chunkserver says
            # of the chunk must be what was written.
            self._break()
            raise ChecksumMismatch(
                f"{self.address} has {size} bytes with CRC32C {crc:08x} as chunk {self.file_id}, "
                f"not the {self.expect[0]} bytes with CRC32C {self.expect[1]:08x} written")
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
