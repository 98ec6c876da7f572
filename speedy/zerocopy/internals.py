# -*- test-case-name: speedy.test.test_zerocopy_internals -*-
"""
Every use Speedy makes of Twisted attributes that are not public API, in
one place, each behind a function that says what it is for.

They are what lets bytes move without Python copying them (sendfile,
C{sendmsg} of staged buffers, reads into the store's buffers, splice), and
what lets a request body stream as it arrives.  Each trick checks its
preconditions first (L{write_buffer_visible}, L{can_take_over_reads},
L{can_pause_writes_like_a_full_buffer}, L{plain_body_response}) and its
caller falls back to the ordinary, public path when one fails (TLS, other
transports, HTTP/2, an older or newer Twisted).  L{INTERNALS} lists every
attribute relied on; C{speedy.test.test_zerocopy_internals} checks each one
against the installed Twisted, so the day one disappears a test fails
rather than a fallback silently costing speed.  C{setup.cfg} pins the
Twisted releases this was checked with.
"""

from twisted.internet import tcp
from twisted.internet.interfaces import ISSLTransport
from twisted.web import http, server

#: C{(class, attribute)} of every non-public attribute used below (on
#: instances: checked on a connected instance by the tests).
INTERNALS = [
    (tcp.Connection, "dataBuffer"),      # bytes written and not yet sent...
    (tcp.Connection, "offset"),          # ...how much of dataBuffer went out
    (tcp.Connection, "_tempDataLen"),    # bytes in the small-write list
    (tcp.Connection, "socket"),          # the socket itself
    (tcp.Connection, "doRead"),          # what the reactor calls when readable
    (tcp.Connection, "producer"),        # the registered producer
    (tcp.Connection, "producerPaused"),  # whether the transport paused it
    (tcp.Connection, "streamingProducer"),
    (tcp.Connection, "startWriting"),    # wait for writability, then drain
    (tcp.Connection, "bufferSize"),      # bytes asked of the socket per read
    (tcp.Connection, "SEND_LIMIT"),      # bytes handed to the socket per send
    (http.HTTPChannel, "_command"),      # the request line, before the body
    (http.HTTPChannel, "_path"),
    (http.HTTPChannel, "_version"),      # ...and its HTTP version
    (http.HTTPChannel, "_savedTimeOut"),  # the idle timeout kept during a response
    (http.HTTPChannel, "_requestProducer"),
    (server.Request, "_encoder"),        # a content encoder of the response
]


def plain_tcp(transport):
    """@return: True for Twisted's own TCP transport without TLS: its
    socket carries the bytes as they are."""
    return isinstance(transport, tcp.Connection) and not ISSLTransport.providedBy(transport)


def write_buffer_visible(transport):
    """@return: True for a plain TCP transport whose write buffer we can
    see (so bytes written past it need not overtake buffered ones)."""
    return (plain_tcp(transport)
            and all(hasattr(transport, name) for name in ("dataBuffer", "offset", "_tempDataLen")))


def write_buffer_empty(transport):
    """@return: True if a transport L{write_buffer_visible} holds nothing unsent."""
    return transport._tempDataLen == 0 and len(transport.dataBuffer) == transport.offset


def raw_socket(transport):
    """@return: the socket under a TCP transport, or None."""
    return getattr(transport, "socket", None)


def can_take_over_reads(transport):
    """@return: True if L{take_over_reads} can replace C{transport}'s reads."""
    return plain_tcp(transport) and hasattr(transport, "socket") and hasattr(transport, "doRead")


def own_reads(transport):
    """@return: what the reactor calls when C{transport}'s socket is
    readable: its own C{doRead}, until L{take_over_reads}."""
    return transport.doRead


def take_over_reads(transport, do_read):
    """Make the reactor call C{do_read()} instead of C{transport}'s own
    C{doRead} when its socket is readable."""
    transport.doRead = do_read


def set_read_size(transport, size):
    """
    Make C{transport} read at most C{size} bytes per read (the reactor
    reads C{bufferSize} at a time).

    @return: its previous read size, or None where it has none (then
        nothing changed).
    """
    previous = getattr(transport, "bufferSize", None)
    if previous is not None:
        transport.bufferSize = size
    return previous


def set_send_size(transport, size):
    """
    Let C{transport} hand up to C{size} bytes to each C{send} call (a TCP
    transport hands at most C{SEND_LIMIT}, 128 KiB by default).  A
    transport without one (TLS, other transports) is left as it is.
    """
    if hasattr(transport, "SEND_LIMIT"):
        transport.SEND_LIMIT = size


def registered_producer(transport):
    """@return: the producer registered with C{transport}, or None."""
    return getattr(transport, "producer", None)


def can_pause_writes_like_a_full_buffer(transport):
    """
    @return: True if L{pause_writes_like_a_full_buffer} works on
        C{transport}: a streaming producer is registered that we can pause
        the way C{FileDescriptor.write} does.
    """
    return (write_buffer_visible(transport)
            and all(hasattr(transport, name) for name in (
                "producer", "producerPaused", "streamingProducer", "startWriting",
                "fileno", "connected", "disconnecting"))
            and bool(transport.streamingProducer)
            and hasattr(transport.producer, "pauseProducing"))


def pause_writes_like_a_full_buffer(transport):
    """
    Pause the transport's producer and wait for its socket to drain, as
    C{FileDescriptor.write} does when its buffer overfills: once the socket
    took its bytes, C{doWrite} finds the buffer empty and resumes the
    producer.
    """
    transport.producerPaused = True
    transport.producer.pauseProducing()
    transport.startWriting()


def wait_for_writable(transport):
    """Have C{transport} (its buffer empty) call its producer's
    C{resumeProducing} once its socket can take more bytes."""
    transport.startWriting()


def request_line(channel):
    """
    @return: C{(method, uri)} of the request whose headers C{channel} has
        just read, before its body (twisted.web sets C{request.method} and
        C{uri} only once the body is in), or None on a channel that does not
        hold them (then the body is spooled as usual).
    """
    command = getattr(channel, "_command", None)
    path = getattr(channel, "_path", None)
    if command is None or path is None:
        return None
    return command, path


def http_version(channel):
    """
    @return: the HTTP version (C{b"HTTP/1.1"}) of the request whose headers
        C{channel} has just read, before its body, or None where it is not
        held there.
    """
    return getattr(channel, "_version", None)


def restore_idle_timeout_after_response(channel, timeout):
    """The body of a request is in and its answer pending: make C{channel}
    restore C{timeout} as its idle timeout once the answer is sent."""
    channel._savedTimeOut = timeout


def plain_body_response(request):
    """
    @return: True if C{request} is a C{twisted.web} request on HTTP/1.x
        whose channel is its producer and streams its body (it pauses it
        when the transport's buffer fills), and whose response body has no
        content encoding.
    """
    channel = getattr(request, "channel", None)
    return (channel is not None
            and hasattr(request, "registerProducer")
            and hasattr(channel, "_requestProducer")
            and getattr(request, "_encoder", None) is None)
