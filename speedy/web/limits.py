# -*- test-case-name: speedy.test.test_web_limits -*-
"""
What one HTTP listener (an imageserver's, a chunkmaster's) grants its
clients: how long a request's headers may take, how long a connection may
sit idle, how large a request line and its headers may be, and how many
connections one client address and all clients together may hold.

    limits = HTTPLimits(header_timeout=10, max_connections_per_client=128)
    site = GuardedSite(resource, limits=limits, reactor=reactor)

L{http_limit_options} declares them once as daemon options (the same keys
in the C{--config} file), L{limits_from_options} reads them back.  The
channel that enforces the per-request ones is L{speedy.web.channel}.
"""

from attrs import frozen

from speedy.config import Option, duration, number, size


@frozen
class HTTPLimits:
    """
    @ivar header_timeout: seconds from a connection's start, or from the
        first byte of a request on a kept-alive one, until its headers are
        complete; past it the client is answered 408 and closed.  None for
        no limit.
    @ivar idle_timeout: seconds a connection may go without a byte from
        the client while it is not being answered (between requests, or in
        the middle of a body); then it is closed.  None for no limit.
    @ivar max_request_line: bytes of the request line (method, URI,
        version); a longer one is answered 414.
    @ivar max_header_size: bytes of all header lines of one request
        together; more is answered 431.
    @ivar max_headers: header lines of one request; more is answered 431.
    @ivar max_connections_per_client: connections open at once from one
        client IP address; the next is answered 429 and closed.  0 for no
        limit.
    @ivar max_connections: connections open at once on the listener; the
        next is answered 503 and closed.  0 for no limit.
    @ivar linger: seconds a connection answered before its request was
        read (a 4xx above, a 413 before a body) goes on reading and
        dropping what its client still sends, so the client reads the
        answer rather than a reset.
    @ivar linger_bytes: bytes dropped so at most.
    """

    header_timeout: float | None = 10.0
    idle_timeout: float | None = 60.0
    max_request_line: int = 64 << 10
    max_header_size: int = 64 << 10
    max_headers: int = 256
    max_connections_per_client: int = 128
    max_connections: int = 0
    linger: float = 2.0
    linger_bytes: int = 1 << 20


def http_limit_options(per_client="128"):
    """
    @param per_client: the default of C{max-connections-per-client}.
    @return: the L{Option}s of a daemon's HTTP listener limits.
    """
    return [
        Option("header-timeout", "10", "Seconds a client has to send a request's headers, "
               "from its connection (or its request's first byte on a kept-alive one); "
               "then it is answered 408 and closed. 0 for no limit.", duration()),
        Option("idle-timeout", "60", "Seconds a connection may go without a byte from its "
               "client while no answer is being sent (between requests, or mid-body); then "
               "it is closed. 0 for no limit.", duration()),
        Option("max-request-line", "64KiB", "Largest request line (method, URI, version); a "
               "longer one is answered 414.", size(1024, 16 << 20)),
        Option("max-header-size", "64KiB", "Largest size of one request's headers together; "
               "more is answered 431.", size(1024, 16 << 20)),
        Option("max-connections-per-client", per_client, "Connections one client IP address "
               "may hold open at once; the next is answered 429 and closed. 0 for no limit "
               "(behind a proxy every client has the proxy's address).", number(int, 0)),
        Option("max-connections", "0", "Connections the listener holds open at once; the next "
               "is answered 503 and closed. 0 for no limit.", number(int, 0)),
    ]


def limits_from_options(options):
    """@return: the L{HTTPLimits} of a parsed daemon C{options} that has the
    L{http_limit_options}."""
    return HTTPLimits(
        header_timeout=options["header-timeout"] or None,
        idle_timeout=options["idle-timeout"] or None,
        max_request_line=options["max-request-line"],
        max_header_size=options["max-header-size"],
        max_connections_per_client=options["max-connections-per-client"],
        max_connections=options["max-connections"],
    )


class ClientConnections:
    """
    Counts the connections open on one listener, in all and by client
    address, and says whether one more may open.

    @ivar total: connections counted now.
    """

    def __init__(self, limits):
        self._limits = limits
        self._by_client = {}
        self.total = 0

    def admit(self, client):
        """
        Count a new connection from C{client} (an IP address, or None for
        one without: a UNIX socket, a test) if the limits allow it.

        @return: None when admitted (then call L{release} when it closes),
            else the HTTP status refusing it: 503 when the listener is full,
            429 when C{client} holds its share.
        """
        limits = self._limits
        if limits.max_connections and self.total >= limits.max_connections:
            return 503
        held = self._by_client.get(client, 0)
        if (client is not None and limits.max_connections_per_client
                and held >= limits.max_connections_per_client):
            return 429
        self.total += 1
        self._by_client[client] = held + 1
        return None

    def release(self, client):
        """A connection L{admit}ted from C{client} has closed."""
        self.total -= 1
        held = self._by_client.pop(client, 1) - 1
        if held > 0:
            self._by_client[client] = held

    def held_by(self, client):
        """@return: the connections open from C{client}."""
        return self._by_client.get(client, 0)
