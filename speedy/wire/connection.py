# -*- test-case-name: speedy.test.test_chunk_client -*-
"""
One client connection to a chunkserver: requests tagged with ids, many in
flight, answers matched back by id in whatever order they come.
L{speedy.wire.client.ChunkClient} pools these.

Timeouts count stalls, not durations: a request fails with L{Timeout} once
C{request_timeout} seconds have passed both since it was sent and since
bytes last moved on its connection (any answer's bytes arriving, or the
transport taking the next piece of a PUT body, which it does only once the
last one went out).  A 16 MiB transfer that crawls, or a request queued
behind others that are still flowing, lives on; a dead or wedged peer is
given up on after the timeout.

Answers are read as they arrive, C{RECEIVE_SIZE} bytes per read: a GET's
body is kept as the bytes objects the socket returned (no copy), or handed
to the request's sink piece by piece as it arrives (L{request} with a
C{sink}); the CRC32C of a whole chunk is computed on the way and compared
at its end.
"""

import sys
from array import array

from twisted.internet.defer import Deferred, fail
from twisted.internet.protocol import Protocol
from twisted.logger import Logger

from speedy.crc import crc32c
from speedy.errors import (
    BadRequest, ChecksumMismatch, ConnectionFailed, SpeedyError, Timeout, TooLarge,
    Unauthenticated)
from speedy.wire.frames import (
    CHUNK_INFO, COMPACT_RESPONSE, FILE_ID, FLAG_ERROR, FLAG_MORE,
    FLAG_RESPONSE, GET_RESPONSE, LIST_BATCH, MAX_BODY,
    MAX_ERROR_MESSAGE, OP_COMPACT, OP_DELETE, OP_GET, OP_LIST, OP_PING,
    OP_AUTH, OP_CHAIN_PUT, MAX_CHAIN, OP_PUT, OP_STAT, OP_STATUS, OP_VERIFY, OPCODES, RECEIVE_SIZE, ERROR_BODY, Header,
    decode_error, frame)
from speedy.wire.growing import GrowingBody, GrowingChunk
from speedy.wire.handshake import NONCE_SIZE, PROOF_SIZE, client_answer, new_nonce
from speedy.wire.outbox import Outbox, no_delay
from speedy.wire.producers import BytesBody
from speedy.wire.reader import FrameReader, check_answer
from speedy.zerocopy.internals import set_read_size

#: Largest response body accepted per opcode (GET is bounded by MAX_BODY).
RESPONSE_LIMITS = {
    OP_PUT: CHUNK_INFO.size,
    OP_GET: MAX_BODY,
    OP_STAT: CHUNK_INFO.size,
    OP_DELETE: 0,
    OP_PING: 0,
    OP_STATUS: 4 << 20,
    OP_LIST: LIST_BATCH * FILE_ID.size,
    OP_COMPACT: COMPACT_RESPONSE.size,
    OP_VERIFY: CHUNK_INFO.size,
    OP_AUTH: NONCE_SIZE + PROOF_SIZE,
    OP_CHAIN_PUT: CHUNK_INFO.size * MAX_CHAIN,
}


class ProtocolViolation(ConnectionFailed):
    """The chunkserver sent something the protocol forbids; the connection
    is closed."""


class ChunkClientProtocol(Protocol):
    """
    The client end of one connection.

    @ivar in_flight: requests sent and not yet answered.
    @ivar bodies_out: PUT bodies queued or going out, not yet written whole.
    @ivar body_sent: called with no argument each time one of them has been
        written whole, or dropped with the connection (set by the pool).
    """

    _log = Logger()

    def __init__(self, clock, request_timeout, address="?"):
        self._clock = clock
        self._request_timeout = request_timeout
        self._address = address
        self._next_id = 1
        self._calls = {}  # request id -> _Call
        self._frames = FrameReader(self._response_started, self._response_ended, whole_reads=True)
        self._outbox = None
        self._lost = []
        self._last_moved = 0.0  # when bytes last moved either way
        self._stall_check = None  # DelayedCall of _check_stalls
        self.connected = False
        self.bodies_out = 0
        self.body_sent = lambda: None

    @property
    def in_flight(self):
        return len(self._calls)

    @property
    def last_moved(self):
        """@return: when bytes last moved either way."""
        return self._last_moved

    def connectionMade(self):
        self.connected = True
        no_delay(self.transport)
        set_read_size(self.transport, RECEIVE_SIZE)
        self._outbox = Outbox(self.transport)

    def when_lost(self):
        """@return: a Deferred firing with None once the connection is closed."""
        d = Deferred()
        if self.connected or self._outbox is None:
            self._lost.append(d)
        else:
            d.callback(None)
        return d

    def connectionLost(self, reason):
        self.connected = False
        self._fail_all(ConnectionFailed(f"connection to {self._address} lost: "
                                        f"{reason.getErrorMessage()}"))
        self._outbox.close()
        lost, self._lost = self._lost, []
        for d in lost:
            d.callback(None)

    def close(self):
        """Fail what is pending and close the connection (at once if a
        request body is still going out)."""
        self._fail_all(ConnectionFailed("client closed"))
        if self._outbox.idle:
            self.transport.loseConnection()
        else:
            self.transport.abortConnection()

    def _fail_all(self, error):
        calls, self._calls = self._calls, {}
        self._unwatch()
        for call in calls.values():
            call.fail(error)

    async def authenticate(self, secret):
        """
        The handshake (L{speedy.wire.handshake}): prove that this end knows
        the cluster secret and check that the chunkserver does; requests
        may follow at once.

        @raise Unauthenticated: the chunkserver does not know it, or
            refused our proof (the connection is closed).
        """
        nonce = new_nonce()
        try:
            challenge = await self.request(OP_AUTH, nonce)
            proof = client_answer(secret, nonce, challenge)
        except SpeedyError as e:
            self._log.warn("chunkserver {address} failed the handshake: {why}",
                           address=self._address, why=e)
            if self.connected:
                self.transport.abortConnection()
            if isinstance(e, Unauthenticated):
                raise
            raise Unauthenticated(f"handshake with {self._address} failed: {e}")
        # Not answered unless wrong: then the server closes the connection.
        self._outbox.send(frame(OP_AUTH, 0, proof))

    # --- requests out ----------------------------------------------------

    def request(self, opcode, body=b"", data=None, sink=None, length=None, flags=0, expect=None,
                trace=b""):
        """
        Send a request: C{body} and, for a PUT, the chunk C{data} streamed
        after it (bytes-like, or a list or tuple of bytes-like pieces: see
        L{BytesBody}; or a L{GrowingChunk}, sent as its bytes arrive: see
        L{GrowingBody}).  A PUT of a L{GrowingChunk} that fails before its
        body went out whole aborts the connection.

        @param sink: for a GET, a callable given each piece of the answer's
            range (bytes) as it arrives, instead of gathering them; never
            called once the request failed or was cancelled.
        @param length: for a GET with a C{sink}, the range's length: an
            answer of another length breaks the protocol (the connection is
            closed) before any byte reaches the sink.
        @param expect: for a GET, the (size, CRC32C) the whole chunk was
            written with: an answer naming others fails with
            L{ChecksumMismatch} and hands on none of its bytes (they are
            read and dropped; the connection is kept).
        @param trace: the request's trace (L{speedy.wire.frames.trace_of}),
            sent at the front of its body; empty for none.
        @return: a Deferred firing with the response body (bytes; for GET
            the L{GetResult}, its C{pieces} empty with a C{sink}; for LIST
            the list of file ids), or failing with the L{speedy.errors}
            class of the error frame, L{Timeout}, or L{ConnectionFailed}.
            Cancelling it forgets the request.
        """
        if not self.connected:
            return fail(ConnectionFailed(f"connection to {self._address} is closed"))
        request_id = self._next_id
        self._next_id = self._next_id % (2**32 - 1) + 1
        growing = isinstance(data, GrowingChunk)
        if data is None:
            chunk = None
        elif growing:
            chunk = GrowingBody(data, progress=self._moved)
        else:
            chunk = BytesBody(data, progress=self._moved)
        body_length = len(body) + (0 if chunk is None else chunk.length)
        if body_length > MAX_BODY:
            return fail(TooLarge(f"a body of {body_length} bytes exceeds the limit of {MAX_BODY}"))
        if trace:
            head = Header(opcode, request_id, len(trace) + body_length, flags=flags,
                          trace_length=len(trace)).pack() + trace + body
        else:
            head = Header(opcode, request_id, body_length, flags=flags).pack() + body
        call = _Call(self, request_id, opcode, self._clock.seconds(), sink, length, expect)
        self._calls[request_id] = call
        self._watch()
        if chunk is None:
            self._outbox.send(head)
            return call.deferred
        self.bodies_out += 1
        sent = self._outbox.stream(head, chunk)
        # Its failure is the connection's, which fails the call.
        sent.addErrback(lambda _: None).addCallback(self._body_out)
        if growing:
            # An answer before the whole body went out (an error, a timeout,
            # a cancel) leaves the frame unfinished: abort the connection.
            # So a connection with nothing in flight has no body pending.
            call.deferred.addErrback(self._abandon, sent)
        return call.deferred

    def _body_out(self, _):
        self.bodies_out -= 1
        self.body_sent()

    def _abandon(self, failure, sent):
        if not sent.called and self.connected:
            self._log.info("abandoning the PUT body to {address}: {why}",
                           address=self._address, why=failure.getErrorMessage())
            self.transport.abortConnection()
        return failure

    def _forget(self, call):
        self._calls.pop(call.request_id, None)
        if not self._calls:
            self._unwatch()

    # --- stalls ----------------------------------------------------------

    def _moved(self):
        """Bytes moved: every waiting request gets C{request_timeout} more."""
        self._last_moved = self._clock.seconds()

    def _deadline(self, call):
        return max(call.sent_at, self._last_moved) + self._request_timeout

    def _watch(self):
        """Schedule the stall check for the earliest deadline, the oldest
        request's (requests are kept in the order they were sent)."""
        if self._stall_check is None and self._calls:
            oldest = next(iter(self._calls.values()))
            delay = max(0.0, self._deadline(oldest) - self._clock.seconds())
            self._stall_check = self._clock.callLater(delay, self._check_stalls)

    def _unwatch(self):
        if self._stall_check is not None:
            if self._stall_check.active():
                self._stall_check.cancel()
            self._stall_check = None

    def _check_stalls(self):
        """Fail the requests past their deadline; look again at the next."""
        self._stall_check = None
        now = self._clock.seconds()
        for call in list(self._calls.values()):
            if self._deadline(call) > now:
                break
            self._forget(call)
            call.fail(Timeout(f"{OPCODES[call.opcode]} to {self._address}: nothing moved "
                              f"for {self._request_timeout}s"))
        self._watch()

    # --- responses in ----------------------------------------------------

    def dataReceived(self, data):
        self._last_moved = self._clock.seconds()
        try:
            self._frames.feed(data, self._lost_already)
        except SpeedyError as e:
            self._violation(str(e))

    def _lost_already(self):
        return not self.connected

    def _response_started(self, raw):
        """@return: what takes the body of the answer whose header is C{raw}.
        @raise SpeedyError: the answer breaks the protocol."""
        header = Header.unpack(raw)
        call = self._calls.get(header.request_id)
        if call is None:  # timed out or cancelled: drop the answer
            if not header.flags & FLAG_RESPONSE or header.trace_length:
                raise BadRequest("a frame without the RESPONSE flag, or with a trace")
            return _Response(header, None, header.body_length)
        check_answer(header, call.opcode)
        if header.flags & FLAG_ERROR:
            return _Response(header, call, ERROR_BODY.size + MAX_ERROR_MESSAGE)
        if header.opcode == OP_GET:
            return _GetResponse(header, call)
        return _Response(header, call, RESPONSE_LIMITS[header.opcode])

    def _response_ended(self, response):
        call = response.call
        if call is None or call.request_id not in self._calls:
            return
        if response.header.flags & FLAG_ERROR:
            self._forget(call)
            return call.fail(decode_error(response.body()))
        if call.opcode == OP_LIST:
            call.collect(response.body())
            if response.header.flags & FLAG_MORE:
                return
        self._forget(call)
        try:
            call.succeed(response.result())
        except ChecksumMismatch as e:
            call.fail(e)

    def _violation(self, why):
        self._log.warn("closing connection to {address}: {why}", address=self._address, why=why)
        self._fail_all(ProtocolViolation(f"{self._address} broke the protocol: {why}"))
        self.transport.abortConnection()


class _Call:
    """
    One request waiting for its answer, sent at C{sent_at}; a streamed GET's
    C{sink} and expected C{length} (see L{ChunkClientProtocol.request}).
    """

    def __init__(self, protocol, request_id, opcode, sent_at, sink=None, length=None, expect=None):
        self.request_id = request_id
        self.expect = expect
        self.opcode = opcode
        self.sent_at = sent_at
        self.streamed = sink is not None
        self.sink = sink
        self.length = length
        self.deferred = Deferred(lambda d: self._cancel(protocol))
        self._file_ids = []

    def _cancel(self, protocol):
        self.sink = None
        protocol._forget(self)

    def collect(self, body):
        """Add the file ids of one LIST frame."""
        ids = array("Q", body)
        if sys.byteorder == "little":
            ids.byteswap()
        self._file_ids.extend(ids.tolist())

    def succeed(self, result):
        if not self.deferred.called:
            self.deferred.callback(self._file_ids if self.opcode == OP_LIST else result)

    def fail(self, error):
        self.sink = None
        if not self.deferred.called:
            self.deferred.errback(error)


class _Response:
    """A small response body, gathered (at most C{limit} bytes)."""

    def __init__(self, header, call, limit):
        self.header = header
        self.call = call
        self.remaining = header.body_length
        self._data = bytearray() if call is not None else None
        if header.body_length > limit:
            raise BadRequest(f"{OPCODES.get(header.opcode, header.opcode)} answer of "
                             f"{header.body_length} bytes exceeds {limit}")
        if header.opcode == OP_LIST and header.body_length % FILE_ID.size:
            raise BadRequest("a LIST frame holds whole 8-byte file ids")

    def feed(self, piece):
        self.remaining -= len(piece)
        if self._data is not None:
            self._data += piece

    def body(self):
        return bytes(self._data)

    def result(self):
        return self.body()


class GetResult:
    """
    A GET answer: C{pieces} (the range's bytes as the list of bytes objects
    they arrived in), C{size} and C{crc32c} of the whole chunk, C{offset} of
    the range.
    """

    def __init__(self, size, crc32c, offset, pieces):
        self.size = size
        self.crc32c = crc32c
        self.offset = offset
        self.pieces = pieces

    @property
    def data(self):
        """The range's bytes joined into one bytearray (a copy)."""
        return bytearray().join(self.pieces)


class _GetResponse:
    """
    A GET answer, kept as the pieces it arrives in or handed to its call's
    sink as they arrive; the CRC32C of a whole-chunk answer is computed on
    the way.
    """

    def __init__(self, header, call):
        self.header = header
        self.call = call
        self.remaining = header.body_length
        if header.body_length < GET_RESPONSE.size:
            raise BadRequest("a GET answer starts with size, crc32c and offset")
        self._prefix = bytearray()
        self._pieces = None
        self._crc = 0
        self._whole = False
        self._wrong = None  # the ChecksumMismatch of a chunk not as written

    def feed(self, piece):
        self.remaining -= len(piece)
        if self._pieces is None:
            need = GET_RESPONSE.size - len(self._prefix)
            self._prefix += piece[:need]
            piece = piece[need:]
            if len(self._prefix) < GET_RESPONSE.size:
                return
            self.size, self.crc32c, self.offset = GET_RESPONSE.unpack(self._prefix)
            length = len(piece) + self.remaining
            if self.offset + length > self.size:
                raise BadRequest(f"range {self.offset}+{length} exceeds the chunk's {self.size} bytes")
            expected = None if self.call is None else self.call.length
            if expected is not None and length != expected:
                raise BadRequest(f"answered {length} bytes, not the {expected} asked for")
            self._pieces = []
            self._whole = self.offset == 0 and length == self.size
            expect = None if self.call is None else self.call.expect
            if expect is not None and (self.size, self.crc32c) != tuple(expect):
                self._wrong = ChecksumMismatch(
                    f"the chunkserver has {self.size} bytes with CRC32C {self.crc32c:08x}, not the "
                    f"{expect[0]} bytes with CRC32C {expect[1]:08x} the chunk was written with")
                self.call.sink = None
        call = self.call
        if not piece or call is None or self._wrong is not None:
            return
        piece = piece if isinstance(piece, bytes) else bytes(piece)
        if self._whole:
            self._crc = crc32c(piece, self._crc)
        if not call.streamed:
            self._pieces.append(piece)
        elif call.sink is not None:
            try:
                call.sink(piece)
            except Exception as e:
                # The sink's trouble is its request's, not the connection's.
                call.fail(e)

    def body(self):
        return b""

    def result(self):
        """
        @return: the L{GetResult}.
        @raise ChecksumMismatch: a whole chunk arrived with other bytes than
            its checksum says, or the chunk is not the one its caller
            expected.
        """
        if self._wrong is not None:
            raise self._wrong
        if self._whole and self._crc != self.crc32c:
            raise ChecksumMismatch(
                f"chunk arrived with CRC32C {self._crc:08x}, the server said {self.crc32c:08x}")
        return GetResult(self.size, self.crc32c, self.offset, self._pieces)
