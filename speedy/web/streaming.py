# -*- test-case-name: speedy.test.test_streaming -*-
"""
Request bodies streamed to the application as they arrive, with back-pressure.

Twisted Web spools a whole request body into memory or a temporary file and
calls C{render} only once it is complete.  A L{StreamingSite} asks
C{body_sink_for(request)} as soon as a request's headers have arrived; a
request that gets an L{IBodySink} hands every piece of its body to the sink
instead of spooling it, and stops reading the client's socket while the sink
is busy.  The resource renders after the whole body went to the sink, and
finds the sink as C{request.body_sink}.

The order of calls on a sink is::

    write(data)*  then  finish()              the body arrived whole
    write(data)*  then  connection_lost(why)  the client went away first

A sink's C{write} that fails ends the writes: the rest of the body is read
and discarded, C{finish} is not called, and the failure waits in
C{request.body_failure} for the resource to answer (it still gets
C{connection_lost} if the client goes away before that).

While a body streams into a sink, the client's socket is read
L{BODY_READ_SIZE} bytes at a time instead of Twisted's 64 KiB: a pushed blob
then reaches the sink in pieces of up to 1 MiB, and the per-piece work of
the HTTP parser, the request and the sink is paid 16 times less often.
"""

from collections import deque
from io import BytesIO

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import parse_qs
from twisted.web.server import Request
from zope.interface import Interface

from speedy.web.channel import GuardedSite, PlainHTTPChannel  # noqa: F401 (re-exported)
from speedy.zerocopy.internals import (
    http_version, request_line, restore_idle_timeout_after_response, set_read_size)

log = Logger()

#: The most read from a client's socket at once while its body streams into
#: a sink (C{bufferSize} of the TCP transport; Twisted's default is 64 KiB).
BODY_READ_SIZE = 1 << 20


class IBodySink(Interface):
    """
    Where a streamed request body goes.

    A sink may have a C{refusal} attribute: an exception that refuses the
    request (a 413 for a body declared too large).  A request whose sink
    has one is rendered at once, before its body, which is dropped; the
    connection closes after the answer
    (L{speedy.web.channel.GuardedChannel.answer_before_body}).
    """

    def write(data):
        """
        Take the next piece of the body (bytes).

        @return: None when the sink can take more at once, or a Deferred:
            until it fires the request reads no more from the client's
            socket.  If it fails, the rest of the body is discarded and the
            failure is kept as C{request.body_failure}.
        """

    def finish():
        """The whole body has arrived; called before the resource renders."""

    def connection_lost(reason):
        """
        The client went away before the whole body arrived (a L{Failure});
        cancel the work upstream.  Nothing is rendered for this request.
        """


class StreamingRequest(Request):
    """
    A L{twisted.web.server.Request} that hands its body to an L{IBodySink}
    chosen when its headers arrive.

    @ivar body_sink: the L{IBodySink} of this request, or None when its body
        was spooled as usual (C{request.content}).
    @ivar body_failure: the L{Failure} of the sink's C{write} (or of
        choosing the sink), or None.
    @ivar body_sink_chosen: True once the site was asked for the sink as
        the headers arrived (even if it chose none); False when the body was
        spooled without asking (the request line could not be read before
        the body), as under a plain C{Site}.
    """

    body_sink = None
    body_sink_chosen = False
    #: the body's length from C{Content-Length}, which the channel holds the
    #: client to, or None (a chunked body)
    body_length = None
    body_failure = None

    _streaming = False  # the body goes to the sink (or, after a failure, nowhere)
    _pending = None  # the unfired Deferred of the sink's last write
    _received_args = None  # requestReceived's arguments, held while writes are pending
    _body_done = False  # requestReceived went ahead: the resource owns the sink now
    _paused = False
    _idle_timeout = None  # the channel's, while _paused
    _read_size = None  # the transport's own bufferSize, while the body streams

    def gotLength(self, length):
        """
        The headers have arrived: take the method and URI from the channel's
        request line and ask the site for a sink.

        twisted.web sets C{method} and C{uri} only in C{requestReceived},
        after the body; until then the request line is in the channel's
        private attributes (L{request_line}).  Where they cannot be read the
        body is spooled, as by a plain C{Site}, and no sink is chosen.
        """
        channel = self.channel
        self.body_length = length
        line = request_line(channel)
        if line is None:
            Request.gotLength(self, length)
            return
        self.body_sink_chosen = True
        self.method, self.uri = line
        self.path, _, query = self.uri.partition(b"?")
        self.args = parse_qs(query, 1)
        try:
            sink = channel.site.body_sink_for(self)
        except Exception:
            log.failure("choosing the body sink of {uri!r} failed", uri=self.uri)
            self.body_failure = Failure()
            sink = None
        if sink is None and self.body_failure is None:
            Request.gotLength(self, length)
            return
        self.body_sink = sink
        self._streaming = True
        self._queue = deque()
        self.content = BytesIO()
        if (getattr(sink, "refusal", None) is not None and length != 0
                and hasattr(channel, "answer_before_body")):
            self._answer_before_body()
            return
        self._read_size = set_read_size(channel.transport, BODY_READ_SIZE)

    def _answer_before_body(self):
        """
        Render now, before the body: the sink refuses the request (see
        L{IBodySink.refusal}); the body that follows is dropped.
        """
        self._body_done = True
        self.channel.answer_before_body(self)
        Request.requestReceived(self, self.method, self.uri,
                                http_version(self.channel) or b"HTTP/1.1")

    def handleContentChunk(self, data):
        if not self._streaming:
            Request.handleContentChunk(self, data)
        elif self.body_failure is None:
            self._queue.append(data)
            self._drain()

    def requestReceived(self, command, path, version):
        if not self._streaming:
            Request.requestReceived(self, command, path, version)
            return
        self._received_args = (command, path, version)
        self._drain()

    def connectionLost(self, reason):
        unfinished = self._streaming and not self._body_done
        self._body_done = True
        if self._streaming:
            self._queue.clear()
            self._restore_read_size()
        Request.connectionLost(self, reason)
        if unfinished and self.body_sink is not None:
            self.body_sink.connection_lost(reason)

    def _drain(self):
        """
        Feed queued pieces to the sink until a write is pending; once the
        queue is empty and the body complete, call C{finish} and render.
        """
        while self._pending is None and self._queue and self.body_failure is None:
            try:
                result = self.body_sink.write(self._queue.popleft())
            except Exception:
                self.body_failure = Failure()
                break
            if not isinstance(result, Deferred):
                continue
            if result.called:
                result.addErrback(self._sink_failed)
            else:
                self._pending = result
                result.addCallbacks(self._written, self._sink_failed)
        if self._pending is not None:
            self._pause()
            return
        if self.body_failure is not None:
            self._queue.clear()
        self._resume()
        if self._received_args is not None and not self._queue and not self._body_done:
            args, self._received_args = self._received_args, None
            self._body_done = True
            self._restore_read_size()
            if self.body_failure is None:
                self.body_sink.finish()
            Request.requestReceived(self, *args)

    def _restore_read_size(self):
        """The body is over: read the socket (and pause a producer of the
        answer) at the transport's own size again."""
        if self._read_size is not None:
            set_read_size(self.channel.transport, self._read_size)
            self._read_size = None

    def _written(self, _):
        self._pending = None
        if not self._disconnected:
            self._drain()

    def _sink_failed(self, failure):
        was_pending, self._pending = self._pending, None
        self.body_failure = failure
        if was_pending is not None and not self._disconnected:
            self._drain()

    def _pause(self):
        """
        Stop reading the client's socket.  The channel's idle timeout is off
        meanwhile: the client is not idle, the sink is (and the sink's own
        upstream timeouts bound the wait).
        """
        if not self._paused:
            self._paused = True
            self._idle_timeout = self.channel.setTimeout(None)
            self.channel.transport.pauseProducing()

    def _resume(self):
        if self._paused:
            self._paused = False
            if self._received_args is None:
                self.channel.setTimeout(self._idle_timeout)
            else:
                # The body is complete and the channel keeps its idle timeout
                # off until the answer is sent; it restores this one then
                # (allContentReceived saved none: it found the timeout off).
                restore_idle_timeout_after_response(self.channel, self._idle_timeout)
            self.channel.transport.resumeProducing()


class StreamingSite(GuardedSite):
    """
    A L{Site} whose requests stream their bodies into the sink that
    C{body_sink_for(request)} returns (an L{IBodySink}, or None to spool the
    body as usual).  When it is called, C{request.method}, C{uri}, C{path},
    C{args} and C{requestHeaders} are set; nothing else is.
    """

    requestFactory = StreamingRequest

    def __init__(self, resource, body_sink_for, reactor=None, limits=None, **kw):
        GuardedSite.__init__(self, resource, limits=limits, reactor=reactor, **kw)
        self.body_sink_for = body_sink_for
