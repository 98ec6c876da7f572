# -*- test-case-name: speedy.test.test_splice -*-
"""
GET bodies moved through one pipe into the socket of a C{twisted.web}
response (L{SpliceRelay}, the request's streaming producer):
chunkserver socket -> pipe -> client socket with C{os.splice}.

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
and L{twisted.web.http.HTTPChannel} that are not public API
(L{speedy.zerocopy.internals}); L{can_splice} and L{splice_transport} check
for all of them, and callers fall back to copying through Python without
them (TLS, HTTP/2, other transports, no C{os.splice}, C{--zero-copy off}).
"""

import errno
import os

from twisted.internet.defer import Deferred, fail
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import IPushProducer
from twisted.web.http import NO_BODY_CODES
from zope.interface import implementer

from speedy.zerocopy.internals import (
    can_pause_writes_like_a_full_buffer, pause_writes_like_a_full_buffer,
    plain_body_response, registered_producer, write_buffer_empty)
from speedy.zerocopy.pipes import _SPLICE_FLAGS

_GONE = (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN, errno.EBADF, errno.ESHUTDOWN)


def can_splice(transport):
    """
    @return: True if bytes may be spliced into C{transport}'s socket: a
        plain TCP connection whose write buffer we can see (as for
        sendfile), with a streaming producer registered that we can pause
        the way C{FileDescriptor.write} does.
    """
    return hasattr(os, "splice") and can_pause_writes_like_a_full_buffer(transport)


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
            or not plain_body_response(request)
            or getattr(request, "startedWriting", True)
            or getattr(request, "method", None) == b"HEAD"
            or getattr(request, "code", None) in NO_BODY_CODES
            or not headers.hasHeader(b"content-length")
            or headers.hasHeader(b"transfer-encoding")
            or not can_splice(transport)
            or registered_producer(transport) is not channel):
        return None
    return transport


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
        self.started = False  # start() was called: the response's head is out

    def start(self):
        """Take a pipe, register as the request's producer and write the
        response's headers (through Twisted's buffer)."""
        self.started = True
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
        if not write_buffer_empty(transport):
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
        pause_writes_like_a_full_buffer(transport)

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
