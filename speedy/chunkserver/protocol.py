# -*- test-case-name: speedy.test.test_chunkserver_protocol -*-
"""
The chunkserver's side of the wire protocol (``protocol.md``): frames in,
the L{IChunkStore} driven, answers out, many requests in flight per
connection and answered in whatever order the store finishes them.

Bodies are never gathered whole: a PUT body goes into the store's
L{IChunkWrite} piece by piece as it arrives, a GET body leaves from the
buffers its verify read the record into (a large record read with direct
I/O), else through C{sendfile} (or a pull producer under TLS): see
L{speedy.zerocopy.sendfile.range_body}.  A peer that sends garbage, lies
about lengths, stalls or vanishes costs its own connection at most: a bad
frame gets an error frame or a closed connection, a half-sent PUT is
aborted, and every pinned read is released.

With a cluster secret (C{ChunkServerFactory(secret=...)}, which every
chunkserver daemon has) a connection must pass the handshake of
L{speedy.wire.handshake} before its first request is read: any other frame
first (random bytes included), a wrong proof, or no proof within
L{HANDSHAKE_TIMEOUT} closes it, counted in C{handshake_failures} and
logged (C{warn}, with the peer's address and the reason), before it
touched any data.  Each such connection is refused once and closed, so
limiting lines per connection would limit nothing: a flood is many
connections.  The lines are limited per listener instead
(L{ChunkServerFactory.refusals}, a L{LogBudget}: 20 per 10 seconds, the
next line saying how many were held back); the counter counts them all.

The only request flag taken is C{KEEP}, on a PUT (C{REQUEST_FLAGS}): it is
passed to L{IChunkStore.put} as C{keep}, asking the store to keep the chunk
in its memory cache.  Any other flag of a request is answered BAD_REQUEST.

A request's trace (the id of the operation it serves, C{protocol.md}) is
taken off the front of its body and becomes the C{request_id} of the log
events about it (and the current L{speedy.logs.request_id} while it is
handled); a CHAIN_PUT's forward to the next member carries it on.  Every
error answered to a request is logged: C{info} for a chunk or range that
is not there (or a store still opening), at most 1,000 such lines per 10
seconds, C{warn} for every other (a damaged record, a refused write, a
chain's next member failing), with the opcode, file id, error code, the
wire request id (C{wire_id}) and the peer.
"""

import json
import sys
from array import array

from twisted.internet.defer import CancelledError, Deferred, maybeDeferred
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IPullProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure
from zope.interface import implementer

from speedy.errors import (
    BY_CODE, BadRequest, ChunkNotFound, Internal, RangeNotSatisfiable, SpeedyError, TooLarge,
    Unauthenticated, Unavailable)
from speedy.logs import LogBudget, run_as
from speedy.wire.client import parse_address
from speedy.wire.frames import (
    ALL_BYTES, ALL_VOLUMES, CHAIN_PREFIX, CHUNK_INFO, MAX_CHAIN, MAX_ROUTE, OP_CHAIN_PUT, COMPACT_REQUEST, COMPACT_RESPONSE,
    FILE_ID, FLAG_KEEP, FLAG_MORE, FLAG_RESPONSE, GET_REQUEST, GET_RESPONSE,
    LIST_BATCH, MAX_CHUNK, OP_AUTH, OP_COMPACT, OP_DELETE, OP_GET,
    OP_LIST, OP_PING, OP_PUT, OP_STAT, OP_STATUS, OP_VERIFY, OPCODES, RECEIVE_SIZE,
    REQUEST_BODY_SIZES, REQUEST_FLAGS, BadFrame, Header, error_frame, frame, read_trace)
from speedy.wire.growing import GrowingChunk
from speedy.wire.handshake import HANDSHAKE_TIMEOUT, NONCE_SIZE, same_proof, server_challenge
from speedy.wire.outbox import Outbox, no_delay
from speedy.wire.reader import FrameReader
from speedy.zerocopy.inplace import can_read_in_place, read_in_place
from speedy.zerocopy.internals import set_read_size
from speedy.zerocopy.sendfile import range_body


#: Reasons to stop reading a connection: too many requests in flight, the
#: store has too much of a PUT body in memory, or the next member of a
#: chain has not taken enough of a CHAIN_PUT body yet.
IN_FLIGHT, STORE_LAGS, FORWARD_LAGS = "in-flight", "store-lags", "forward-lags"

#: Bytes of a CHAIN_PUT body received and not yet handed to the connection
#: to the next member, before the connection stops reading; it reads on
#: once the next member took all but half of them.
FORWARD_BUFFER_LIMIT = 4 * 1024 * 1024

#: Bytes of a PUT body the store may hold in memory (L{IChunkWrite.buffered})
#: before the connection stops reading; it reads on once
#: L{IChunkWrite.drained} says the store is down to half of it.
WRITE_BUFFER_LIMIT = 4 * 1024 * 1024

#: GET answers up to this size are read and written in one piece: one
#: write, no producer, no separate segment for the header.
SMALL_BODY = 64 * 1024

#: The opcodes whose request body begins with a file id.
_ABOUT_A_CHUNK = frozenset((OP_GET, OP_STAT, OP_DELETE, OP_VERIFY, OP_PUT, OP_CHAIN_PUT))
#: Errors that say a chunk or range is not there, or the store not open
#: yet: logged as info, not warn (a reader checking, a sweep deleting
#: twice, imageservers calling while the store opens), within
#: L{ChunkServerFactory.quiet_errors}.
_QUIET_ERRORS = (ChunkNotFound, RangeNotSatisfiable, Unavailable)


def error_name(error):
    """@return: the wire name of a L{SpeedyError}'s code (C{CHUNK_NOT_FOUND})."""
    name = BY_CODE.get(error.code, Internal).__name__
    return "".join("_" + c if c.isupper() and i else c for i, c in enumerate(name)).upper()


def _read_all(read):
    """@return: all the bytes of the L{IChunkRead} C{read}, which is released."""
    try:
        pieces, position = [], 0
        while position < read.length:
            piece = read.read(position, read.length - position)
            if not piece:
                raise Internal(f"chunk {read.info.file_id} ended {read.length - position} bytes early")
            pieces.append(piece)
            position += len(piece)
        return b"".join(pieces)
    finally:
        read.release()


class ChunkServerFactory(Factory):
    """
    Builds one L{ChunkServerProtocol} per connection.

    @ivar store: the L{IChunkStore} to serve, or None while it is being
        opened (requests that need it are answered L{Unavailable}).
    @ivar counters: connection and request counts, reported by STATUS.
    @ivar zero_copy: on plain TCP, read PUT bodies straight into the
        store's buffers where it offers them (L{speedy.zerocopy.inplace})
        and send GET answers with C{sendfile} or C{sendmsg}
        (L{speedy.zerocopy.sendfile}); False copies through Python.
    @ivar secret: the cluster secret every connection must prove it knows
        (L{speedy.wire.handshake}) before its first request, or None to
        take requests from anyone (tests of other things).
    @ivar refusals: the L{LogBudget} of the lines about refused
        connections (failed handshakes).
    @ivar quiet_errors: the L{LogBudget} of the C{info} lines about
        requests answered with a missing chunk or range.
    @ivar forwarder: the L{speedy.wire.client.ChunkClient} (with the cluster
        secret) a CHAIN_PUT is forwarded to the next member of its chain
        with, or a callable C{forwarder(after)} returning the client to
        forward to a member with C{after} members after it (so that each
        member waits longer than the one after it, and a stalled member is
        named by the one before it), or None: then a CHAIN_PUT with a route
        is answered BAD_REQUEST.
    """

    def __init__(self, clock, store=None, max_in_flight=64, idle_timeout=120.0,
                 max_chunk=MAX_CHUNK, zero_copy=True, secret=None,
                 handshake_timeout=HANDSHAKE_TIMEOUT, forwarder=None):
        self.clock = clock
        self.forwarder = forwarder

        self.secret = secret
        self.handshake_timeout = handshake_timeout
        self.refusals = LogBudget(clock)
        self.quiet_errors = LogBudget(clock, burst=1000)
        self.store = store
        self.max_in_flight = max_in_flight
        self.idle_timeout = idle_timeout
        self.max_chunk = max_chunk
        self.zero_copy = zero_copy
        self._connections = set()
        self.counters = dict(connections=0, open_connections=0, requests=0,
                             error_frames=0, bad_frames=0, idle_timeouts=0,
                             answers_abandoned=0, handshake_failures=0,
                             chains_forwarded=0)

    def buildProtocol(self, addr):
        return ChunkServerProtocol(self)

    def forwarder_for(self, after):
        """@return: the client to forward a chain to a member with C{after}
        members after it, or None."""
        forwarder = self.forwarder
        if forwarder is None or hasattr(forwarder, "chain_put"):
            return forwarder
        return forwarder(after)

    def busy(self):
        """@return: True while some client has a request in flight."""
        return any(connection._in_flight for connection in self._connections)


class ChunkServerProtocol(Protocol):
    """One client connection to the chunkserver."""

    _log = Logger()

    def __init__(self, factory):
        self.factory = factory
        self._frames = FrameReader(self._frame_started, self._frame_ended)
        self._in_flight = 0  # requests received and not yet answered whole
        self._store_calls = 0  # of those, waiting for the store
        self._paused = set()  # why reading is paused: IN_FLIGHT, STORE_LAGS
        self._held = b""  # bytes received after pausing, for when we resume
        self._drain = None  # IChunkWrite.drained() while the store lags
        self._closing = False
        self._idle = None
        self._outbox = None
        # The handshake: None once passed (or with no secret to prove), else
        # b"" before the client's nonce, then the proof the client owes.
        self._owed = None if factory.secret is None else b""
        self._handshake_timer = None

    # --- connection ------------------------------------------------------

    def connectionMade(self):
        counters = self.factory.counters
        counters["connections"] += 1
        counters["open_connections"] += 1
        self.factory._connections.add(self)
        no_delay(self.transport)
        set_read_size(self.transport, RECEIVE_SIZE)
        if self.factory.zero_copy and can_read_in_place(self.transport):
            read_in_place(self.transport, self._read_space, self._read_in_place)
        self._outbox = Outbox(self.transport, on_sent=self._touch)
        self._idle = self.factory.clock.callLater(self.factory.idle_timeout, self._idle_expired)
        if self._owed is not None:
            self._handshake_timer = self.factory.clock.callLater(
                self.factory.handshake_timeout, self._refuse_peer,
                f"no handshake within {self.factory.handshake_timeout:g}s")

    def connectionLost(self, reason):
        self.factory.counters["open_connections"] -= 1
        self.factory._connections.discard(self)
        self._closing = True
        if self._idle.active():
            self._idle.cancel()
        if self._handshake_timer is not None and self._handshake_timer.active():
            self._handshake_timer.cancel()
        if self._drain is not None:
            self._drain.cancel()
        if self._frames.body is not None:
            self._frames.body.abandon()
            self._frames.body = None
        self._outbox.close()

    def _touch(self):
        if self._idle is not None and self._idle.active():
            self._idle.reset(self.factory.idle_timeout)

    def _idle_expired(self):
        if self._store_calls:
            self._idle = self.factory.clock.callLater(self.factory.idle_timeout, self._idle_expired)
            return
        self.factory.counters["idle_timeouts"] += 1
        self._log.info("closing connection from {peer}: idle or stalled for {seconds}s",
                       peer=self.transport.getPeer(), seconds=self.factory.idle_timeout)
        self._closing = True
        self.transport.abortConnection()

    # --- frames in -------------------------------------------------------

    def dataReceived(self, data):
        if self._closing:
            return
        self._touch()
        held = self._frames.feed(data, self._stop_reading)
        if held and not self._closing:
            self._held += bytes(held)

    def _stop_reading(self):
        return self._closing or bool(self._paused)

    def _read_space(self):
        """@return: where the transport may read the next bytes in place
        (the store's own buffer for the current PUT body's next bytes), or
        None: then they come through L{dataReceived}."""
        body = self._frames.body
        if self._closing or self._paused or body is None:
            return None
        return body.space()

    def _read_in_place(self, count):
        """C{count} bytes were read into the last L{_read_space}."""
        self._touch()
        body = self._frames.body
        body.received(count)
        if body.remaining == 0:
            self._frames.end()

    def _frame_started(self, raw):
        """@return: what takes the body of the frame whose header is C{raw},
        or None when the stream broke (the connection is closing)."""
        try:
            header = Header.unpack(raw, max_body=self.factory.max_chunk + (
                CHAIN_PREFIX.size + MAX_ROUTE if raw[5] == OP_CHAIN_PUT else FILE_ID.size))
        except BadFrame as e:
            return self._bad_stream(0, 0, e)
        except TooLarge as e:
            opcode, request_id = raw[5], int.from_bytes(raw[8:12], "big")
            return self._bad_stream(opcode, request_id, e)
        if self._owed is not None:
            return self._handshake_frame(header)
        self.factory.counters["requests"] += 1
        self._in_flight += 1
        return self._body_for(header)

    def _frame_ended(self, body):
        body.complete()
        if self._in_flight >= self.factory.max_in_flight:
            self._pause(IN_FLIGHT)

    def _pause(self, reason):
        if not self._paused:
            self.transport.pauseProducing()
        self._paused.add(reason)

    def _resume(self, reason):
        self._paused.discard(reason)
        if not self._paused and not self._closing:
            self.transport.resumeProducing()
            held, self._held = self._held, b""
            if held:
                self.dataReceived(held)

    def _store_lags(self, write):
        """
        The store has more of a PUT body in memory than it should: stop
        reading until it has written most of it out.
        """
        self._pause(STORE_LAGS)
        self._store_calls += 1
        self._drain = write.drained(WRITE_BUFFER_LIMIT // 2)
        self._drain.addBoth(self._store_caught_up)

    def _forward_lags(self, chunk):
        """
        The next member of a chain has not taken enough of the
        L{GrowingChunk} forwarded to it: stop reading until it took all
        but half of L{FORWARD_BUFFER_LIMIT}.
        """
        if FORWARD_LAGS in self._paused:
            return
        self._pause(FORWARD_LAGS)
        chunk.when_taken(FORWARD_BUFFER_LIMIT // 2).addCallback(
            lambda _: self._resume(FORWARD_LAGS))

    def _store_caught_up(self, result):
        """The store drained its write buffer, or the connection was lost
        meanwhile (C{result} is then the wait's cancellation)."""
        self._drain = None
        self._store_calls -= 1
        self._resume(STORE_LAGS)
        if isinstance(result, Failure) and not result.check(CancelledError):
            self._log.failure("waiting for the store to drain failed", result)

    def _body_for(self, header):
        opcode, request_id = header.opcode, header.request_id
        allowed = REQUEST_FLAGS.get(opcode, 0)
        if header.flags & ~allowed:
            return self._refuse(header, BadRequest(
                f"request flags {header.flags:#x} not allowed"
                f" (a {OPCODES.get(opcode, opcode)} request may set {allowed:#x})"))
        trace_length = header.trace_length
        if opcode == OP_PUT:
            if header.body_length < FILE_ID.size + trace_length:
                return self._refuse(header, BadRequest("a PUT body starts with the file id"))
            return _PutBody(self, request_id, header.body_length,
                            keep=bool(header.flags & FLAG_KEEP), trace_length=trace_length)
        if opcode == OP_CHAIN_PUT:
            if header.body_length < CHAIN_PREFIX.size + trace_length:
                return self._refuse(header, BadRequest("a CHAIN_PUT body starts with its route"))
            return _ChainPutBody(self, request_id, header.body_length, trace_length)
        expected = REQUEST_BODY_SIZES.get(opcode)
        if opcode == OP_AUTH:
            return self._refuse(header, BadRequest(
                "no handshake here" if self.factory.secret is None else "handshake already done"))
        if expected is None:
            return self._refuse(header, BadRequest(f"unknown opcode {opcode}"))
        if header.body_length != expected + trace_length:
            return self._refuse(header, BadRequest(
                f"a {OPCODES[opcode]} body is {expected} bytes, not "
                f"{header.body_length - trace_length}"))
        if trace_length:
            return _SmallBody(header.body_length, lambda body: self._dispatch_traced(
                opcode, request_id, body, trace_length))
        return _SmallBody(expected, lambda body: self._dispatch(opcode, request_id, body))

    def _refuse(self, header, error):
        """Answer C{error} now and skip the frame's body."""
        self._log_error(header.opcode, header.request_id, error)
        self._answer_error(header.opcode, header.request_id, error)
        self._request_done()
        return _SkippedBody(header.body_length)

    def _bad_stream(self, opcode, request_id, error):
        """The byte stream cannot be trusted any more: say why, then close.
        Before the handshake it is a failed one (random bytes, another
        protocol)."""
        self.factory.counters["bad_frames"] += 1
        self._closing = True
        if self._owed is not None:
            self.factory.counters["handshake_failures"] += 1
            self._log_refused(f"not a frame of this protocol ({error})")
        else:
            self._log.info("closing connection from {peer}: {error}",
                           peer=self.transport.getPeer(), error=error)
        if self._outbox.idle:
            self._answer_error(opcode, request_id, error)
            self.transport.loseConnection()
        else:
            self.transport.abortConnection()

    # --- the handshake ---------------------------------------------------

    def _handshake_frame(self, header):
        """@return: what takes the body of a frame that arrived before the
        handshake was done: an AUTH step, else nothing (it is refused)."""
        if (header.opcode != OP_AUTH or header.flags or header.trace_length
                or header.body_length != NONCE_SIZE):
            return self._refuse_peer(f"{OPCODES.get(header.opcode, header.opcode)} "
                                     "before the handshake")
        return _SmallBody(NONCE_SIZE, lambda body: self._handshake_step(header.request_id, body))

    def _handshake_step(self, request_id, body):
        if self._closing:
            return
        if not self._owed:  # the client's nonce: answer with ours and our proof
            answer, self._owed = server_challenge(self.factory.secret, body)
            self._outbox.send(frame(OP_AUTH, request_id, answer, FLAG_RESPONSE))
        elif same_proof(self._owed, body):
            self._owed = None
            self._handshake_timer.cancel()
        else:
            self._refuse_peer("a wrong proof: it does not know the cluster secret",
                              request_id)

    def _refuse_peer(self, why, request_id=0):
        """The peer failed the handshake: say so and close, before it
        touched anything."""
        self.factory.counters["handshake_failures"] += 1
        self._closing = True
        self._log_refused(why)
        self._answer_error(OP_AUTH, request_id, Unauthenticated(f"handshake failed: {why}"))
        self.transport.loseConnection()

    def _log_refused(self, why):
        """Log a refused connection, within the listener's L{LogBudget}; it
        is refused once (its handshake timer stopped)."""
        timer = self._handshake_timer
        if timer is not None and timer.active():
            timer.cancel()
        held = self.factory.refusals.take()
        if held is not None:
            self._log.warn("refused connection from {peer}: {why}{more}",
                           peer=self.transport.getPeer(), why=why, held_back=held,
                           more=LogBudget.more(held))

    # --- requests --------------------------------------------------------

    def _dispatch(self, opcode, request_id, body):
        handler = self._handlers[opcode]
        self._respond(opcode, request_id, Deferred.fromCoroutine(handler(self, request_id, body)),
                      file_id=_file_id(opcode, body))

    def _dispatch_traced(self, opcode, request_id, body, trace_length):
        """Handle a small request whose body begins with a trace, under it."""
        try:
            trace = read_trace(body[:trace_length])
        except BadRequest as e:
            self._log_error(opcode, request_id, e)
            self._answer_error(opcode, request_id, e)
            return self._request_done()
        body = body[trace_length:]
        handler = self._handlers[opcode]
        result = run_as(trace, Deferred.fromCoroutine, handler(self, request_id, body))
        self._respond(opcode, request_id, result, trace, _file_id(opcode, body))

    def _respond(self, opcode, request_id, result, trace=None, file_id=None):
        """
        Answer a request once C{result} (a Deferred) fires: with its bytes as
        the response body, with nothing when the handler answered itself
        (None), or with an error frame (logged with the request's C{trace}
        and C{file_id}).
        """
        def answered(response):
            if response is not None:
                self._outbox.send(frame(opcode, request_id, response, FLAG_RESPONSE))

        def failed(reason):
            if self._closing:
                return
            if reason.check(ConnectionLost, ConnectionDone):
                # The client hung up mid-answer (an imageserver whose HTTP
                # client left drops its spliced socket): nobody to answer.
                self.factory.counters["answers_abandoned"] += 1
                return
            if reason.check(SpeedyError):
                error = reason.value
                self._log_error(opcode, request_id, error, trace, file_id)
            else:
                self._log.failure("{op} request {wire_id} failed", reason,
                                  op=OPCODES.get(opcode, opcode), wire_id=request_id,
                                  file_id=file_id, request_id=trace)
                error = Internal(f"{reason.type.__name__}: {reason.value}")
            self._answer_error(opcode, request_id, error)

        result.addCallbacks(answered, failed)
        result.addErrback(lambda reason: self._log.failure("answering request failed", reason))
        result.addBoth(lambda _: self._request_done())

    def _log_error(self, opcode, request_id, error, trace=None, file_id=None):
        """Log the error answered to a request: C{info} for a chunk or range
        that is not there, C{warn} for any other."""
        held = 0
        if isinstance(error, _QUIET_ERRORS):
            held = self.factory.quiet_errors.take()
            if held is None:
                return
        text = "{op} of chunk {file_id} failed: {code} {error}" if file_id is not None \
            else "{op} request failed: {code} {error}"
        if trace is not None:
            text += " (request {request_id})"
        self._log.emit(LogLevel.info if isinstance(error, _QUIET_ERRORS) else LogLevel.warn,
                       text + "{more}", op=OPCODES.get(opcode, f"opcode {opcode}"),
                       file_id=file_id, code=error_name(error), error=error, wire_id=request_id,
                       peer=self.transport.getPeer(), request_id=trace, held_back=held,
                       more=LogBudget.more(held))

    def _answer_error(self, opcode, request_id, error):
        self.factory.counters["error_frames"] += 1
        self._outbox.send(error_frame(opcode, request_id, error))

    def _request_done(self):
        self._in_flight -= 1
        if IN_FLIGHT in self._paused and self._in_flight < self.factory.max_in_flight:
            self._resume(IN_FLIGHT)

    def _store(self):
        store = self.factory.store
        if store is None:
            raise Unavailable("the chunk store is not open")
        return store

    async def _store_call(self, method, *args):
        """@return: the result of C{method(*args)}, counted as waiting on the store."""
        self._store_calls += 1
        try:
            return await maybeDeferred(method, *args)
        finally:
            self._store_calls -= 1

    async def _get(self, request_id, body):
        file_id, offset, length = GET_REQUEST.unpack(body)
        read = await self._store_call(self._store().get, file_id, offset,
                                      None if length == ALL_BYTES else length)
        try:
            head = (Header(OP_GET, request_id, GET_RESPONSE.size + read.length,
                           FLAG_RESPONSE).pack()
                    + GET_RESPONSE.pack(read.info.size, read.info.crc32c, read.offset))
            if read.length > SMALL_BODY:
                body = range_body(read, self.transport, self.factory.zero_copy)
        except BaseException:
            read.release()  # nothing took it over
            raise
        if read.length <= SMALL_BODY:
            self._outbox.send(head + _read_all(read))
        else:
            await self._outbox.stream(head, body)

    async def _stat(self, request_id, body):
        (file_id,) = FILE_ID.unpack(body)
        info = self._store().stat(file_id)
        if info is None:
            raise ChunkNotFound(f"no chunk {file_id}")
        return CHUNK_INFO.pack(info.size, info.crc32c)

    async def _verify(self, request_id, body):
        (file_id,) = FILE_ID.unpack(body)
        info = await self._store_call(self._store().verify, file_id)
        return CHUNK_INFO.pack(info.size, info.crc32c)

    async def _delete(self, request_id, body):
        (file_id,) = FILE_ID.unpack(body)
        await self._store_call(self._store().delete, file_id)
        return b""

    async def _ping(self, request_id, body):
        return b""

    async def _status(self, request_id, body):
        status = dict(self._store().status(), wire=dict(self.factory.counters))
        return json.dumps(status).encode("utf-8")

    async def _list(self, request_id, body):
        await self._outbox.stream(b"", _FileIdFrames(request_id, self._store().file_ids()))

    async def _compact(self, request_id, body):
        (volume_id,) = COMPACT_REQUEST.unpack(body)
        freed = await self._store_call(self._store().compact,
                                       None if volume_id == ALL_VOLUMES else volume_id)
        return COMPACT_RESPONSE.pack(freed)

    _handlers = {
        OP_GET: _get, OP_STAT: _stat, OP_DELETE: _delete, OP_PING: _ping,
        OP_STATUS: _status, OP_LIST: _list, OP_COMPACT: _compact, OP_VERIFY: _verify,
    }

    def _put_received(self, put):
        """The whole body of C{put} (a L{_PutBody}) went to the store."""
        async def finish():
            info = await self._store_call(put.write.finish)
            return CHUNK_INFO.pack(info.size, info.crc32c)
        result = run_as(put.trace, Deferred.fromCoroutine, finish())
        self._respond(OP_PUT, put.request_id, result, put.trace, put.file_id)

    def _put_refused(self, put, error):
        """The store (or the chain's next member) refused C{put}, a
        L{_PutBody} whose body is still arriving: answer now."""
        opcode, request_id = put.opcode, put.request_id
        if not isinstance(error, SpeedyError):
            self._log.failure("{op} request {wire_id} failed", Failure(error),
                              op=OPCODES[opcode], wire_id=request_id, file_id=put.file_id,
                              request_id=put.trace)
            error = Internal(f"{type(error).__name__}: {error}")
        else:
            self._log_error(opcode, request_id, error, put.trace, put.file_id)
        self._answer_error(opcode, request_id, error)
        self._request_done()


# --- frame bodies as they arrive --------------------------------------------


def _file_id(opcode, body):
    """@return: the file id a small request's C{body} begins with, or None."""
    return int.from_bytes(body[:FILE_ID.size], "big") if opcode in _ABOUT_A_CHUNK else None


class _SmallBody:
    """A fixed-size request body (at most a few dozen bytes), gathered."""

    def __init__(self, size, received):
        self.remaining = size
        self._data = bytearray()
        self._received = received

    def feed(self, piece):
        self._data += piece
        self.remaining -= len(piece)

    def space(self):
        return None

    def complete(self):
        self._received(bytes(self._data))

    def abandon(self):
        pass


class _SkippedBody:
    """The body of a refused request: counted off and dropped."""

    def __init__(self, size):
        self.remaining = size

    def feed(self, piece):
        self.remaining -= len(piece)

    def space(self):
        return None

    def complete(self):
        pass

    def abandon(self):
        pass


class _PutBody:
    """
    A PUT body: the file id, then the chunk's bytes handed to the store's
    L{IChunkWrite} as they arrive.  If the store refuses, the rest is
    skipped and an error frame answers at once; if the connection dies
    first, the write is aborted.  C{keep} (the request's C{KEEP} flag) asks
    the store to keep the chunk in its memory cache.  A body that begins
    with a trace (C{trace_length} bytes) has it taken off first.

    @ivar trace: the request's trace (str), or None.
    @ivar file_id: the chunk's file id, once it arrived, else None.
    @ivar write: the store's L{IChunkWrite}, once opened, else None.
    """

    opcode = OP_PUT

    def __init__(self, server, request_id, body_length, keep=False, trace_length=0):
        self.remaining = body_length
        self.request_id = request_id
        self.trace = None
        self.file_id = None
        self.write = None
        self._keep = keep
        self._server = server
        self._trace_length = trace_length
        self._head = bytearray()  # the trace and the file id, as they arrive
        self._refused = False

    def feed(self, piece):
        self.remaining -= len(piece)
        if self._refused:
            return
        if self.write is None:
            need = self._trace_length + FILE_ID.size - len(self._head)
            self._head += piece[:need]
            piece = piece[need:]
            if len(self._head) < self._trace_length + FILE_ID.size:
                return
            try:
                if self._trace_length:
                    self.trace = read_trace(self._head[:self._trace_length])
                (self.file_id,) = FILE_ID.unpack_from(self._head, self._trace_length)
                self.write = run_as(self.trace, self._server._store().put,
                                    self.file_id, len(piece) + self.remaining, keep=self._keep)
            except Exception as e:
                return self._refuse(e)
        if piece:
            self._take(self.write.write, piece)

    def space(self):
        """@return: the store's buffer for this body's next bytes, at most
        the rest of the body, or None."""
        if self.write is None or self._refused:
            return None
        space = self.write.write_space()
        return None if space is None else space[:self.remaining]

    def received(self, count):
        """C{count} bytes were read into the last L{space}."""
        self.remaining -= count
        self._take(self.write.wrote, count)

    def _take(self, take, data):
        """Hand the store the next bytes (C{take} is its write's C{write}
        or C{wrote}): a failure refuses the PUT, a store lagging behind
        pauses the connection."""
        try:
            take(data)
        except Exception as e:
            self.write.abort()
            return self._refuse(e)
        if self.write.buffered > WRITE_BUFFER_LIMIT:
            self._server._store_lags(self.write)

    def _refuse(self, error):
        self._refused = True
        self._server._put_refused(self, error)

    def complete(self):
        if not self._refused:
            self._server._put_received(self)

    def abandon(self):
        if self.write is not None and not self._refused:
            self.write.abort()


class _ChainPutBody(_PutBody):
    """
    A CHAIN_PUT body: the chain prefix and route, then the chunk's bytes,
    each piece handed to the store (as a PUT's) and, when the route names
    a next member, added to a L{GrowingChunk} that a CHAIN_PUT to that
    member streams on as it fills (the rest of the route with it).  Pieces
    are dropped once handed to the next member's connection; when more
    than L{FORWARD_BUFFER_LIMIT} wait for it, this connection stops
    reading, so a slow member slows the whole chain down to its pace.

    The answer is this member's size and CRC-32C, then the next member's
    answer, sent once both are in.  Anything failing fails the request:
    the store refusing, the next member unreachable, refusing or timing
    out (its error, prefixed with its address, is answered at once; the
    rest of the body is skipped), or the connection lost (the write is
    aborted and the forwarded body abandoned, so the next members drop
    theirs too).
    """

    opcode = OP_CHAIN_PUT

    def __init__(self, server, request_id, body_length, trace_length=0):
        super().__init__(server, request_id, body_length, trace_length=trace_length)
        self._prefix = bytearray()
        self._route_length = None
        self._keep_mask = 0
        self._next = None  # the GrowingChunk forwarded, with a route
        self._next_address = None
        self._outcome = None  # the next member's answer (infos) or Failure
        self._waiting = None  # a Deferred waiting for _outcome
        self._complete = False

    def feed(self, piece):
        if self.write is None and not self._refused:
            piece = self._gather(piece)
            if piece is None:
                return
        self.remaining -= len(piece)
        if self._refused or not piece:
            return
        self._take(self.write.write, piece)
        if self._next is not None and not self._refused:
            self._next.add(bytes(piece))
            if self._next.backlog() > FORWARD_BUFFER_LIMIT:
                self._server._forward_lags(self._next)

    def _gather(self, piece):
        """Take the trace, the prefix and the route from the front of C{piece}.
        @return: the rest of C{piece}, or None while they are incomplete."""
        while True:
            tracing = self._trace_length and self.trace is None
            want = (self._trace_length if tracing else CHAIN_PREFIX.size
                    if self._route_length is None else self._route_length)
            used = min(want - len(self._prefix), len(piece))
            self._prefix += piece[:used]
            self.remaining -= used
            piece = piece[used:]
            if len(self._prefix) < want:
                return None
            if tracing:
                try:
                    self.trace = read_trace(self._prefix)
                except BadRequest as e:
                    self._refuse(e)
                    return piece
                self._prefix = bytearray()
                continue
            if self._route_length is None:
                self.file_id, self._keep_mask, self._route_length = \
                    CHAIN_PREFIX.unpack(self._prefix)
                self._prefix = bytearray()
                if self._route_length > min(MAX_ROUTE, self.remaining):
                    self._refuse(BadRequest(f"a route of {self._route_length} bytes"))
                    return piece
                if self._route_length:
                    continue
            self._start()
            return piece

    def _start(self):
        """The route is in: open the store's write and the next hop."""
        route = bytes(self._prefix).decode("utf-8", "replace").split(",") \
            if self._route_length else []
        size = self.remaining
        forwarder = self._server.factory.forwarder_for(max(0, len(route) - 1))
        try:
            if len(route) + 1 > MAX_CHAIN:
                raise BadRequest(f"a chain of {len(route) + 1} members exceeds {MAX_CHAIN}")
            for address in route:
                parse_address(address)
            if route and forwarder is None:
                raise BadRequest("this chunkserver forwards to no one")
            self.write = run_as(self.trace, self._server._store().put, self.file_id, size,
                                keep=bool(self._keep_mask & 1))
        except Exception as e:
            return self._refuse(e)
        if route:
            self._server.factory.counters["chains_forwarded"] += 1
            self._next_address = route[0]
            self._next = GrowingChunk(size, forget=True)
            # Under the trace: the forward carries it to the next member.
            run_as(self.trace, forwarder.chain_put, route[0], self.file_id, self._next,
                   route[1:], self._keep_mask >> 1).addBoth(self._forwarded)

    def space(self):
        if self._next is not None:
            return None  # the bytes go on to the next member: read them as bytes
        return super().space()

    def _forwarded(self, result):
        """The next member answered, or failed."""
        self._outcome = result if not isinstance(result, Failure) else self._hop_error(result)
        if (isinstance(self._outcome, Exception) and not self._complete
                and not self._refused and not self._server._closing):
            if self.write is not None:
                self.write.abort()
            self._refuse(self._outcome)
        waiting, self._waiting = self._waiting, None
        if waiting is not None:
            waiting.callback(None)

    def _hop_error(self, failure):
        """@return: the error of the next member, naming it."""
        error = failure.value
        kind = type(error) if isinstance(error, SpeedyError) else Internal
        try:
            return kind(f"{self._next_address}: {error}")
        except TypeError:
            return Internal(f"{self._next_address}: {error}")

    def _refuse(self, error):
        if self._next is not None:
            self._next.fail(error)
        super()._refuse(error)

    def complete(self):
        self._complete = True
        if not self._refused:
            result = run_as(self.trace, Deferred.fromCoroutine, self._finish())
            self._server._respond(OP_CHAIN_PUT, self.request_id, result, self.trace,
                                  self.file_id)

    async def _finish(self):
        info = await self._server._store_call(self.write.finish)
        answer = CHUNK_INFO.pack(info.size, info.crc32c)
        if self._next is None:
            return answer
        if self._outcome is None:
            self._waiting = Deferred()
            await self._waiting
        if isinstance(self._outcome, Exception):
            raise self._outcome
        return answer + b"".join(CHUNK_INFO.pack(i.size, i.crc32c) for i in self._outcome)

    def abandon(self):
        if self._next is not None:
            self._next.fail(ConnectionLost("the chain's previous member went away"))
        super().abandon()


@implementer(IPullProducer)
class _FileIdFrames:
    """
    The LIST answer: frames of up to L{LIST_BATCH} file ids, each flagged
    MORE but the last, produced as the transport drains.  The ids are a
    snapshot taken when the request arrived (8 bytes each), so the store's
    iterator is never held open across reactor turns.
    """

    def __init__(self, request_id, file_ids):
        self._request_id = request_id
        self._file_ids = array("Q", file_ids)
        self._position = 0
        self._consumer = None
        self._done = None

    def start(self, consumer):
        self._consumer = consumer
        self._done = Deferred()
        consumer.registerProducer(self, False)
        return self._done

    def resumeProducing(self):
        if self._done is None or self._done.called:
            return
        batch = self._file_ids[self._position:self._position + LIST_BATCH]
        self._position += len(batch)
        last = self._position == len(self._file_ids)
        if sys.byteorder == "little":
            batch.byteswap()
        self._consumer.write(frame(OP_LIST, self._request_id, batch.tobytes(),
                                   FLAG_RESPONSE | (0 if last else FLAG_MORE)))
        if last:
            self._consumer.unregisterProducer()
            self._done.callback(None)

    def stopProducing(self):
        if self._done is not None and not self._done.called:
            self._done.errback(ConnectionLost("LIST stopped: connection closed"))
