# -*- test-case-name: speedy.test.test_chunk_client -*-
"""
L{ChunkClient}: the L{IChunkClient} every imageserver and tool uses to talk
to chunkservers.

Per chunkserver address it keeps a pool of up to
C{max_connections_per_server} connections, each carrying many requests at
once; a request goes to an idle connection, else a new one while the pool
has room, else the least loaded.  A chunkserver that cannot be reached is
not retried before a backoff delay (doubling per failure, capped) has
passed; requests meanwhile fail at once with L{ConnectionFailed}, so
callers fail over to another replica instead of waiting.  A request fails
with L{Timeout} once nothing has moved on its connection for
C{request_timeout} seconds (a slow transfer that keeps moving is never cut
short; see L{speedy.wire.connection}); connecting has its own
C{connect_timeout}; a dropped connection fails its requests.

A PUT of a whole chunk waits in one queue per chunkserver, first come first
served, for a pooled connection with no PUT body going out (or a new one,
while the pool has room), and goes out on the first that finishes its
body: bodies on one connection go out one after another, and TCP shares a
link unevenly between connections, so a PUT tied to a connection when it
was asked for could wait behind a slow one while others sit idle.  A PUT
waiting there fails with L{Timeout} once neither the queue nor a byte on
the pool's connections has moved for C{request_timeout} seconds.

A PUT of a L{GrowingChunk} (cut-through replication) waits on a client's
bytes as it goes out, so it gets a connection to itself: an idle one, or
one opened for it; no other request is queued behind it.  Those
connections are kept apart for such PUTs, so the shared pool stays at
C{max_connections_per_server}: more connections sharing one link would
share it less fairly.

With a C{secret} (the cluster secret), every new connection first passes
the handshake of L{speedy.wire.handshake}; a chunkserver that fails it
counts as unreachable (L{Unauthenticated}, a L{ConnectionFailed}).  With
C{tls} every connection is TLS, the chunkserver's certificate checked
against the given authority for the address connected to.

A request made while a request id is current (L{speedy.logs.request_id}:
an imageserver serving an HTTP request, a chunkserver forwarding a chain)
carries it as its trace (C{protocol.md}, *Traces*), read when the request
is made, so that the chunkserver's log lines about it carry the same id.
"""

import json
from collections import deque

import attrs
from twisted.internet.defer import Deferred, DeferredList, fail
from OpenSSL import SSL, crypto
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, wrapClientTLS
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.internet.protocol import Factory
from zope.interface import implementer

from speedy.errors import BadRequest, ConnectionFailed, Timeout, Unauthenticated
from speedy.interfaces import IChunkClient
from speedy.logs import request_id as current_request_id
from speedy.records import ChunkInfo
from speedy.wire.connection import ChunkClientProtocol
from speedy.wire.frames import (
    ALL_BYTES, ALL_VOLUMES, CHAIN_PREFIX, CHUNK_INFO, MAX_CHAIN, MAX_ROUTE, OP_CHAIN_PUT, COMPACT_REQUEST, COMPACT_RESPONSE,
    FILE_ID, FLAG_KEEP, GET_REQUEST, OP_COMPACT, OP_DELETE, OP_GET, OP_LIST, OP_PING,
    OP_PUT, OP_STAT, OP_STATUS, OP_VERIFY, trace_of)
from speedy.wire.growing import GrowingChunk
from speedy.wire.timings import OPERATIONS, RequestTimings


def parse_address(address):
    """
    @param address: C{"host:port"} or C{"[v6]:port"}.
    @return: (host, port).
    @raise BadRequest: it is not such a string.
    """
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise BadRequest(f"not a host:port address: {address!r}")
    return host.strip("[]"), int(port)


@implementer(IChunkClient)
class ChunkClient:
    """
    Pooled, timed, reconnecting wire-protocol client.

    @param connect_timeout: seconds a connection attempt may take.
    @param request_timeout: seconds a request may wait without any byte
        moving on its connection.
    @param secret: the cluster secret, proven on every connection before
        its first request; None for chunkservers that ask for none.
    @param tls: the certificate authority (an C{IOpenSSLTrustRoot}, e.g.
        L{load_authority}) that signed the chunkservers' certificates, to
        connect to them over TLS; None for plain TCP.

    @ivar timings: a L{RequestTimings} of every request's duration or
        failure, by chunkserver and operation.
    @ivar backoff_initial: seconds to wait after the first failed connect.
    @ivar backoff_max: the longest wait between connect attempts.
    """

    backoff_initial = 0.25
    backoff_max = 10.0

    def __init__(self, reactor, connect_timeout=5.0, request_timeout=30.0,
                 max_connections_per_server=8, secret=None, tls=None):
        self._reactor = reactor
        self.secret = secret
        self.tls = tls
        self.connect_timeout = connect_timeout
        self.request_timeout = request_timeout
        self._max_connections = max_connections_per_server
        self._pools = {}
        self._closed = False
        self.timings = RequestTimings()

    def _pool(self, address):
        if self._closed:
            raise ConnectionFailed("the client is closed")
        pool = self._pools.get(address)
        if pool is None:
            pool = self._pools[address] = _ServerPool(self, address)
        return pool

    def _request(self, address, opcode, body=b"", data=None, sink=None, length=None, flags=0,
                 expect=None):
        try:
            pool = self._pool(address)
        except ConnectionFailed as e:
            return fail(e)
        started = self._reactor.seconds()
        trace = trace_of(current_request_id.get())
        if isinstance(data, GrowingChunk):
            d = pool.request_alone(opcode, body, data, flags, trace)
        else:
            d = pool.request(opcode, body, data, sink, length, flags, expect, trace)
        return d.addBoth(lambda result: self.timings.settled(
            result, address, OPERATIONS.get(opcode, "other"), self._reactor.seconds() - started))

    def put(self, address, file_id, data, keep=False):
        """
        Send C{data} (bytes-like, or a list or tuple of bytes-like pieces)
        without joining or copying its C{bytes} on plain TCP.

        C{data} may also be a L{GrowingChunk}: its bytes go out as they are
        added, on a connection of its own, kept for such puts only (an idle
        one, or a new one beyond C{max_connections_per_server}: the caller
        bounds how many such puts it has going).

        @return: see L{IChunkClient.put}.
        """
        d = self._request(address, OP_PUT, FILE_ID.pack(file_id), data,
                          flags=FLAG_KEEP if keep else 0)
        return d.addCallback(lambda body: ChunkInfo(file_id, *CHUNK_INFO.unpack(body)))

    def chain_put(self, address, file_id, data, route=(), keep_mask=0):
        """
        Store C{data} on the chain that starts at C{address} and goes on
        through the addresses of C{route}: C{address} stores it and forwards
        it, as its bytes arrive, to C{route[0]}, and so on (CHAIN_PUT in
        C{protocol.md}).  C{data} is as L{put}'s.

        @param keep_mask: bit i asks member i of the chain (0: C{address})
            to keep the chunk in its memory cache.
        @return: a Deferred firing with a list of L{ChunkInfo}, one per
            member in chain order, once every member has it durable;
            failing with the first error any member met (its message names
            the member).
        """
        try:
            prefix = chain_prefix(file_id, route, keep_mask)
        except BadRequest as e:
            return fail(e)
        d = self._request(address, OP_CHAIN_PUT, prefix, data)
        return d.addCallback(lambda body: chain_infos(file_id, body, 1 + len(route)))

    def get(self, address, file_id, offset=0, length=None):
        """
        @return: a Deferred firing with a bytearray of the range's bytes
            (joined from the pieces they arrived in: one copy).
        """
        return self._get(address, file_id, offset, length).addCallback(
            lambda result: result.data)

    def get_pieces(self, address, file_id, offset=0, length=None):
        """
        Like L{get}, without joining the bytes: for a caller that passes
        them on in pieces anyway (a streamed download).

        @return: a Deferred firing with a list of bytes objects, the range's
            bytes in order as they came off the socket.
        """
        return self._get(address, file_id, offset, length).addCallback(
            lambda result: result.pieces)

    def get_stream(self, address, file_id, offset, length, sink, expect=None):
        """
        Stream C{length} bytes at C{offset} of a chunk into C{sink} as they
        arrive, without holding them.

        @return: see L{IChunkClient.get_stream}.
        """
        body = GET_REQUEST.pack(file_id, offset, length)
        return self._request(address, OP_GET, body, sink=sink, length=length,
                             expect=expect).addCallback(lambda result: None)

    def _get(self, address, file_id, offset, length):
        body = GET_REQUEST.pack(file_id, offset, ALL_BYTES if length is None else length)
        return self._request(address, OP_GET, body)

    def stat(self, address, file_id):
        d = self._request(address, OP_STAT, FILE_ID.pack(file_id))
        return d.addCallback(lambda body: ChunkInfo(file_id, *CHUNK_INFO.unpack(body)))

    def verify(self, address, file_id):
        d = self._request(address, OP_VERIFY, FILE_ID.pack(file_id))
        return d.addCallback(lambda body: ChunkInfo(file_id, *CHUNK_INFO.unpack(body)))

    def delete(self, address, file_id):
        return self._request(address, OP_DELETE, FILE_ID.pack(file_id)).addCallback(lambda _: None)

    def ping(self, address):
        started = self._reactor.seconds()
        return self._request(address, OP_PING).addCallback(
            lambda _: self._reactor.seconds() - started)

    def status(self, address):
        return self._request(address, OP_STATUS).addCallback(
            lambda body: json.loads(body.decode("utf-8")))

    def list(self, address):
        return self._request(address, OP_LIST)

    def compact(self, address, volume_id=None):
        body = COMPACT_REQUEST.pack(ALL_VOLUMES if volume_id is None else volume_id)
        return self._request(address, OP_COMPACT, body).addCallback(
            lambda body: COMPACT_RESPONSE.unpack(body)[0])

    def close(self):
        """
        Fail pending requests, stop connecting and close every connection.

        @return: a Deferred firing with None once every connection is closed.
        """
        self._closed = True
        pools, self._pools = self._pools, {}
        closing = [pool.close() for pool in pools.values()]
        return DeferredList(closing, consumeErrors=True).addCallback(lambda _: None)


class _ServerPool:
    """The connections to one chunkserver, and its reconnect backoff."""

    def __init__(self, client, address):
        self._client = client
        self._address = address
        self._connections = []  # shared by requests (at most max_connections)
        self._alone = []  # made for growing PUTs, and kept for them only
        self._connecting = []  # Deferreds of connection attempts in progress
        self._connecting_alone = []  # those made for one request (request_alone)
        self._waiters = []  # requests waiting for an attempt to finish
        self._bodies = deque()  # _Put: whole PUTs waiting for a connection
        self._queue_moved = 0.0  # when a queued PUT last went out
        self._queue_check = None  # DelayedCall of _queue_stalled
        self._failures = 0
        self._retry_at = 0.0

    def request(self, opcode, body, data, sink=None, length=None, flags=0, expect=None,
                trace=b""):
        """
        @return: the Deferred of the request, sent on a pooled connection
            (see L{ChunkClientProtocol.request} for the arguments).
        """
        if data is not None:
            return self._queue_put(opcode, body, data, flags, trace)
        connection = self._choose()
        if connection is not None:
            return connection.request(opcode, body, data, sink, length, flags, expect, trace)
        return _sent_on(self._acquire(), opcode, body, data, sink, length, flags, expect, trace)

    def _queue_put(self, opcode, body, data, flags, trace=b""):
        """
        @return: the Deferred of a PUT with a whole body, sent in its turn
            on the first pooled connection with no body going out
            (L{_send_puts}); cancelling it before then takes it off the
            queue.
        """
        if self._backing_off():
            return fail(self._unreachable())
        put = _Put(opcode, body, data, flags, self._client._reactor.seconds(), trace)
        put.answer = Deferred(lambda _: self._cancel_put(put))
        self._bodies.append(put)
        self._send_puts()
        return put.answer

    def _cancel_put(self, put):
        if put.sent is None:
            self._bodies.remove(put)
            self._watch_queue()
        else:
            put.sent.cancel()

    def _watch_queue(self):
        """Look at the queue again at its deadline while PUTs wait in it
        (the deadline only ever moves later: L{_queue_stalled} looks
        again then), and not at all once it is empty."""
        if not self._bodies:
            if self._queue_check is not None and self._queue_check.active():
                self._queue_check.cancel()
            self._queue_check = None
        elif self._queue_check is None:
            reactor = self._client._reactor
            self._queue_check = reactor.callLater(
                max(0.0, self._queue_deadline() - reactor.seconds()), self._queue_stalled)

    def _queue_deadline(self):
        """@return: when the queued PUTs time out: C{request_timeout} after
        the oldest was queued, one went out, or bytes last moved on a
        pooled connection, whichever is latest."""
        moved = [c.last_moved for c in self._connections if c.connected]
        return max([self._bodies[0].queued_at, self._queue_moved] + moved) + \
            self._client.request_timeout

    def _queue_stalled(self):
        self._queue_check = None
        if self._queue_deadline() > self._client._reactor.seconds():
            return self._watch_queue()  # the bodies ahead are still moving
        self._fail_puts(Timeout(f"PUT to {self._address}: no connection was free "
                                f"for {self._client.request_timeout}s"))

    def _send_puts(self):
        """Send queued PUTs, oldest first, on connections with no body
        going out; open one more while the pool has room."""
        while self._bodies:
            free = [c for c in self._connections if c.connected and c.bodies_out == 0]
            if not free:
                break
            put = self._bodies.popleft()
            self._queue_moved = self._client._reactor.seconds()
            connection = min(free, key=lambda c: c.in_flight)
            put.sent = connection.request(put.opcode, put.body, put.data, flags=put.flags,
                                          trace=put.trace)
            put.sent.chainDeferred(put.answer)
        self._watch_queue()
        if not self._bodies:
            return
        live = [c for c in self._connections if c.connected]
        if len(live) + len(self._connecting) < self._client._max_connections:
            if not self._backing_off():
                return self._connect()
        if not live and not self._connecting:  # nothing left to send them on
            self._fail_puts(self._unreachable())

    def _fail_puts(self, error):
        puts, self._bodies = self._bodies, deque()
        self._watch_queue()
        for put in puts:
            put.answer.errback(error)

    def request_alone(self, opcode, body, data, flags=0, trace=b""):
        """
        @return: the Deferred of a request whose body (a L{GrowingChunk})
            waits for bytes to arrive: sent on an idle connection kept for
            such requests, or on a new one, which is kept for them after;
            no other request is sent there while the body goes out.
        """
        idle = [c for c in self._alone if c.connected and c.in_flight == 0]
        if idle:
            return idle[0].request(opcode, body, data, flags=flags, trace=trace)
        if self._backing_off():
            return fail(self._unreachable())
        dedicated = Deferred()
        answer = _sent_on(dedicated, opcode, body, data, flags=flags, trace=trace)
        self._connect(dedicated)
        return answer

    def _choose(self):
        """@return: the connection to use now, or None to open another."""
        live = [c for c in self._connections if c.connected]
        best = min(live, key=lambda c: c.in_flight, default=None)
        if best is not None and best.in_flight == 0:
            return best
        room = len(live) + len(self._connecting) < self._client._max_connections
        if best is not None and (not room or self._backing_off()):
            return best
        return None

    def _backing_off(self):
        return self._client._reactor.seconds() < self._retry_at

    def _unreachable(self):
        wait = self._retry_at - self._client._reactor.seconds()
        return ConnectionFailed(f"{self._address} is unreachable; next attempt in {wait:.2f}s")

    def _acquire(self):
        """@return: a Deferred firing with a connected L{ChunkClientProtocol}."""
        if self._backing_off():
            return fail(self._unreachable())
        waiter = Deferred()
        self._waiters.append(waiter)
        if len(self._connections) + len(self._connecting) < self._client._max_connections:
            self._connect()
        return waiter

    def _connect(self, dedicated=None):
        """
        Open a connection and hand it to every waiting request, or only to
        C{dedicated} (a Deferred) when given.
        """
        client = self._client
        reactor = client._reactor
        wake = self._wake if dedicated is None else (
            lambda connection, error: dedicated.errback(error) if error is not None
            else dedicated.callback(connection))
        try:
            host, port = parse_address(self._address)
        except BadRequest as e:
            return wake(None, e)
        endpoint_type = TCP6ClientEndpoint if ":" in host else TCP4ClientEndpoint
        endpoint = endpoint_type(reactor, host, port, timeout=client.connect_timeout)
        if client.tls is not None:
            endpoint = wrapClientTLS(optionsForClientTLS(host, trustRoot=client.tls), endpoint)
        factory = Factory.forProtocol(
            lambda: ChunkClientProtocol(reactor, client.request_timeout, self._address))
        factory.noisy = False
        attempt = endpoint.connect(factory)
        if client.secret is not None:
            attempt.addCallback(_authenticated, client.secret)
        attempt.addTimeout(client.connect_timeout, reactor)
        attempts = self._connecting if dedicated is None else self._connecting_alone
        attempts.append(attempt)

        def connected(connection):
            attempts.remove(attempt)
            self._failures = 0
            self._retry_at = 0.0
            pool = self._connections if dedicated is None else self._alone
            pool.append(connection)
            connection.when_lost().addCallback(lambda _: pool.remove(connection))
            wake(connection, None)
            if dedicated is None:
                connection.body_sent = self._send_puts
                self._send_puts()

        def failed(reason):
            attempts.remove(attempt)
            if client._closed:
                return wake(None, ConnectionFailed("the client is closed"))
            self._failures += 1
            delay = min(client.backoff_max, client.backoff_initial * 2 ** (self._failures - 1))
            self._retry_at = reactor.seconds() + delay
            kind = Unauthenticated if reason.check(Unauthenticated) else ConnectionFailed
            wake(None, kind(f"cannot connect to {self._address}: {reason.getErrorMessage()}"))

        attempt.addCallbacks(connected, failed)

    def _wake(self, connection, error):
        """Hand a new connection to every waiting request, or fail them all
        (the queued PUTs too, when no connection is left to send them)."""
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if error is None:
                waiter.callback(connection)
            else:
                waiter.errback(error)
        if error is not None and not any(c.connected for c in self._connections):
            self._fail_puts(error)

    def close(self):
        """@return: a Deferred firing once every connection is closed."""
        closed = ConnectionFailed("the client is closed")
        self._fail_puts(closed)
        for attempt in self._connecting + self._connecting_alone:
            attempt.cancel()
        self._wake(None, closed)
        closing = []
        for connection in self._connections + self._alone:
            if connection.connected:
                closing.append(connection.when_lost())
                connection.close()
        return DeferredList(closing, consumeErrors=True)


def chain_prefix(file_id, route, keep_mask):
    """
    @return: the bytes of a CHAIN_PUT body before the chunk's.
    @raise BadRequest: the route is too long or not addresses.
    """
    for address in route:
        parse_address(address)
        if "," in address:
            raise BadRequest(f"not a host:port address: {address!r}")
    encoded = ",".join(route).encode("utf-8")
    if len(route) + 1 > MAX_CHAIN or len(encoded) > MAX_ROUTE:
        raise BadRequest(f"a chain of {len(route) + 1} members ({len(encoded)} bytes of "
                         f"route) exceeds {MAX_CHAIN} members or {MAX_ROUTE} bytes")
    return CHAIN_PREFIX.pack(file_id, keep_mask & 0xFF, len(encoded)) + encoded


def chain_infos(file_id, body, members):
    """@return: the L{ChunkInfo}s of a CHAIN_PUT answer from a chain of
    C{members}.
    @raise ConnectionFailed: the answer does not have one per member."""
    if len(body) != CHUNK_INFO.size * members:
        raise ConnectionFailed(f"a CHAIN_PUT answer of {len(body)} bytes from a chain of "
                               f"{members}")
    return [ChunkInfo(file_id, *CHUNK_INFO.unpack_from(body, i * CHUNK_INFO.size))
            for i in range(members)]


def load_authority(path):
    """
    @return: the certificate authority in the PEM file at C{path}, as a
        trust root for L{ChunkClient}'s C{tls}.
    @raise ValueError: the file cannot be read or holds no certificate.
    """
    try:
        with open(path, "rb") as f:
            return Certificate.loadPEM(f.read())
    except (OSError, SSL.Error, crypto.Error, ValueError) as e:
        raise ValueError(f"{path}: not a PEM certificate ({e})")


def _authenticated(connection, secret):
    """@return: a Deferred firing with C{connection} once it passed the
    handshake; on failure or cancellation the connection is closed."""
    def failed(reason):
        if connection.connected:
            connection.transport.abortConnection()
        return reason
    d = Deferred.fromCoroutine(connection.authenticate(secret))
    return d.addCallbacks(lambda _: connection, failed)


@attrs.define(eq=False)
class _Put:
    """A PUT with a whole body, queued until a connection is free for it."""

    opcode: int
    body: bytes
    data: object
    flags: int
    queued_at: float
    trace: bytes = b""
    answer: Deferred = None  # the Deferred the caller holds
    sent: Deferred = None  # the connection's Deferred, once sent


def _sent_on(connecting, opcode, body, data, sink=None, length=None, flags=0, expect=None,
             trace=b""):
    """
    @param connecting: a Deferred firing with the L{ChunkClientProtocol} to
        send the request on, or failing.
    @return: the Deferred of the request, sent once C{connecting} fires
        (failing as it does); cancelling it cancels the request.
    """
    sent = []  # the request, once a connection was found for it

    def send(connection):
        if not answer.called:  # else cancelled meanwhile
            sent.append(connection.request(opcode, body, data, sink, length, flags, expect,
                                           trace))
            sent[0].chainDeferred(answer)

    def no_connection(reason):
        if not answer.called:
            answer.errback(reason)

    answer = Deferred(lambda _: [request.cancel() for request in sent])
    connecting.addCallbacks(send, no_connection)
    return answer
