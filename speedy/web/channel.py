# -*- test-case-name: speedy.test.test_web_channel -*-
"""
The HTTP/1.1 connection of Speedy's listeners, guarded against clients that
are slow, greedy or malformed, and the L{GuardedSite} that counts them.

L{GuardedChannel} (on Twisted's C{HTTPChannel}) enforces a listener's
L{HTTPLimits}:

    - the headers of a request must be complete within C{header_timeout}
      of the connection (or of the request's first byte on a kept-alive
      connection), else 408 and close: a client that opens connections and
      never finishes its headers holds none for long;
    - a connection that sends nothing for C{idle_timeout} while no answer is
      being sent is closed (Twisted's C{timeOut});
    - a request line over C{max_request_line} is answered 414, headers over
      C{max_header_size} or C{max_headers} 431 (Twisted would close the
      connection without a word);
    - an HTTP/1.1 request without exactly one C{Host} header is answered
      400 (RFC 9112, section 3.2);
    - a request its site answers before its body
      (L{GuardedChannel.answer_before_body}: a 413 for a body declared too
      large) gets its answer at once and the connection closes after it.

A connection answered before its request was read closes by I{lingering}:
its write side is shut, and what the client still sends is read and
dropped for C{linger} seconds (at most C{linger_bytes}) so that its
unread bytes do not make the kernel reset the connection before the client
read the answer.

L{GuardedSite} counts the open connections by client address
(L{ClientConnections}); one beyond C{max_connections_per_client} is
answered 429, one beyond C{max_connections} 503, and closed.
"""

from twisted.internet.interfaces import ISSLTransport
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.web.http import HTTPChannel, RESPONSES
from twisted.web.server import Site

from speedy.web.limits import ClientConnections, HTTPLimits
from speedy.zerocopy.internals import http_version

log = Logger()


#: The reason phrases of the answers given here (RFC 9110's).
REASONS = {400: "Bad Request", 408: "Request Timeout", 413: "Content Too Large",
           414: "URI Too Long", 429: "Too Many Requests", 431: "Request Header Fields Too Large",
           503: "Service Unavailable"}


def raw_answer(status, message, headers=()):
    """
    @return: the bytes of a complete HTTP/1.1 answer that closes the
        connection: C{status} with C{message} (text) as a plain-text body.
    """
    reason = REASONS.get(status) or RESPONSES.get(status, b"Error").decode("ascii")
    body = f"{status} {reason}: {message}\n".encode("utf-8")
    lines = [f"HTTP/1.1 {status} {reason}",
             "Connection: close", "Content-Type: text/plain; charset=utf-8",
             f"Content-Length: {len(body)}"] + [f"{k}: {v}" for k, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii") + body


class PlainHTTPChannel(HTTPChannel):
    """
    HTTP/1.1 only, and a connection that opens with a TLS handshake record
    (first byte 0x16, which no HTTP method starts with) is closed at once, as
    Go servers do: registry clients such as skopeo, podman and containerd try
    HTTPS first even with TLS verification off, and would otherwise wait for
    a handshake a plain HTTP listener never answers.
    """

    _first_data = True
    _tls_refused = False

    def dataReceived(self, data):
        if self._tls_refused:
            return
        if self._first_data and data:
            self._first_data = False
            if data[:1] == b"\x16" and not ISSLTransport.providedBy(self.transport):
                # Closed (FIN), not reset: the client sees the end at once
                # either way, and one that sent more reads no error.
                self._tls_refused = True
                self.transport.loseConnection()
                return
        HTTPChannel.dataReceived(self, data)


class GuardedChannel(PlainHTTPChannel):
    """
    A L{PlainHTTPChannel} that holds its client to the site's
    L{HTTPLimits} (see the module docstring).

    @ivar limits: the L{HTTPLimits} (set by L{GuardedSite.buildProtocol}).
    @ivar client: the client's address as counted by the site's
        L{ClientConnections}, when it was.
    """

    limits = HTTPLimits()
    client = None
    _counted = None  # the ClientConnections that admitted this connection
    _headers_pending = True  # between a request's start and its last header
    _header_timer = None
    _request_line_seen = False
    _header_bytes = 0
    _header_lines = 0
    _closing = False  # answered out of band: nothing more is parsed
    _linger_after_answer = False  # close by lingering once the answer is out
    _lingering = False
    _linger_timer = None
    _lingered = 0

    def connectionMade(self):
        limits = self.limits
        self.MAX_LENGTH = max(limits.max_request_line, limits.max_header_size)
        # Twisted's own header limits answer a bare 400: ours apply first.
        self.totalHeadersSize = limits.max_request_line + limits.max_header_size + 1
        self.maxHeaders = limits.max_headers + 1
        PlainHTTPChannel.connectionMade(self)
        self._start_header_timer()

    # --- receiving --------------------------------------------------------

    def dataReceived(self, data):
        if self._lingering:
            self._drop(data)
            return
        if self._closing:
            return
        if self._headers_pending and self._header_timer is None and data:
            self._start_header_timer()
        PlainHTTPChannel.dataReceived(self, data)

    def lineReceived(self, line):
        if self._closing:
            return
        if self._headers_pending:
            if self._header_timer is None:  # a pipelined request's first line
                self._start_header_timer()
            if not self._request_line_seen:
                if line:
                    self._request_line_seen = True
                    if len(line) > self.limits.max_request_line:
                        return self._refuse(414, f"the request line is over "
                                                 f"{self.limits.max_request_line} bytes")
            elif line:
                self._header_bytes += len(line)
                self._header_lines += 1
                if self._header_bytes > self.limits.max_header_size:
                    return self._refuse(431, f"the headers are over "
                                             f"{self.limits.max_header_size} bytes")
                if self._header_lines > self.limits.max_headers:
                    return self._refuse(431, f"over {self.limits.max_headers} header lines")
        return PlainHTTPChannel.lineReceived(self, line)

    def lineLengthExceeded(self, line):
        if not self._request_line_seen:
            return self._refuse(414, f"the request line is over "
                                     f"{self.limits.max_request_line} bytes")
        return self._refuse(431, f"a header line is over {self.MAX_LENGTH} bytes")

    def rawDataReceived(self, data):
        if self._closing:
            return
        PlainHTTPChannel.rawDataReceived(self, data)

    def allHeadersReceived(self):
        self._headers_pending = False
        self._cancel_header_timer()
        self._request_line_seen = False
        self._header_bytes = self._header_lines = 0
        request = self.requests[-1]
        if http_version(self) == b"HTTP/1.1":
            hosts = request.requestHeaders.getRawHeaders(b"host") or []
            if len(hosts) != 1:
                self._refuse(400, "an HTTP/1.1 request needs exactly one Host header"
                             if hosts else "an HTTP/1.1 request needs a Host header")
                return
        PlainHTTPChannel.allHeadersReceived(self)

    def allContentReceived(self):
        if self._closing:
            return
        PlainHTTPChannel.allContentReceived(self)

    def requestDone(self, request):
        PlainHTTPChannel.requestDone(self, request)
        if self.persistent and not self._closing:
            self._headers_pending = True  # the header timer starts with the next byte

    # --- answering out of band ---------------------------------------------

    def answer_before_body(self, request):
        """
        C{request}'s headers are in and it will be answered before its
        body (its site refused it): make the connection close once the
        answer is sent, lingering (see the module docstring), and drop the
        body meanwhile.  Called from the request's C{gotLength}.
        """
        self.persistent = False
        self._linger_after_answer = True
        request.requestHeaders.removeHeader(b"expect")  # no 100 Continue
        request.responseHeaders.setRawHeaders(b"connection", [b"close"])

    def loseConnection(self):
        if self._linger_after_answer and not self._lingering:
            self._closing = True
            return self._linger()
        return PlainHTTPChannel.loseConnection(self)

    def _refuse(self, status, message, headers=()):
        """Answer C{status} outside any request, and close lingering."""
        if self._closing:
            return
        self._closing = True
        self._cancel_header_timer()
        log.info("refused {peer}: {status} {message}", peer=_peer(self.transport),
                 status=status, message=message)
        self.transport.write(raw_answer(status, message, headers))
        self._linger()

    def _linger(self):
        self.setTimeout(None)
        self._lingering = True
        transport = self.transport
        half_close = getattr(transport, "loseWriteConnection", None)
        if half_close is None or ISSLTransport.providedBy(transport):
            transport.loseConnection()
            return
        half_close()
        transport.resumeProducing()
        self._linger_timer = self.callLater(self.limits.linger, transport.abortConnection)

    def _drop(self, data):
        self._lingered += len(data)
        if self._lingered > self.limits.linger_bytes:
            self.transport.abortConnection()

    # --- timers ---------------------------------------------------------------

    def _start_header_timer(self):
        timeout = self.limits.header_timeout
        if timeout and self._header_timer is None:
            self._header_timer = self.callLater(timeout, self._headers_timed_out)

    def _cancel_header_timer(self):
        if self._header_timer is not None:
            if self._header_timer.active():
                self._header_timer.cancel()
            self._header_timer = None

    def _headers_timed_out(self):
        self._header_timer = None
        self._refuse(408, f"the request's headers took over {self.limits.header_timeout:g} s")

    def connectionLost(self, reason):
        self._cancel_header_timer()
        if self._linger_timer is not None and self._linger_timer.active():
            self._linger_timer.cancel()
        self._linger_timer = None
        if self._counted is not None:
            counted, self._counted = self._counted, None
            counted.release(self.client)
        PlainHTTPChannel.connectionLost(self, reason)


class RefusedConnection(Protocol):
    """A connection over the site's limits: answered C{status} and closed."""

    def __init__(self, status, message):
        self._answer = raw_answer(status, message, [("Retry-After", "1")])

    def connectionMade(self):
        self.transport.write(self._answer)
        self.transport.loseConnection()


def _peer(transport):
    try:
        peer = transport.getPeer()
    except Exception:
        return "?"
    host = getattr(peer, "host", None)
    return f"{host}:{peer.port}" if host is not None else str(peer)


class GuardedSite(Site):
    """
    A L{Site} of L{GuardedChannel}s that counts its connections by client
    address (see the module docstring).

    @ivar limits: its L{HTTPLimits}.
    @ivar connections: its L{ClientConnections}.
    """

    protocol = GuardedChannel

    def __init__(self, resource, limits=None, reactor=None, **kw):
        self.limits = limits = limits or HTTPLimits()
        kw.setdefault("timeout", limits.idle_timeout)
        Site.__init__(self, resource, reactor=reactor, **kw)
        self.connections = ClientConnections(limits)

    def limit(self, limits):
        """Hold the connections made from now on to C{limits} (an
        L{HTTPLimits}), counted afresh."""
        self.limits = limits
        self.timeOut = limits.idle_timeout
        self.connections = ClientConnections(limits)

    def buildProtocol(self, addr):
        client = getattr(addr, "host", None)
        refusal = self.connections.admit(client)
        if refusal is not None:
            log.info("refused a connection from {client}: {status}", client=client,
                     status=refusal)
            message = ("too many connections from your address" if refusal == 429
                       else "too many connections")
            return RefusedConnection(refusal, message)
        channel = Site.buildProtocol(self, addr)
        channel.limits = self.limits
        channel.client = client
        channel._counted = self.connections
        return channel
