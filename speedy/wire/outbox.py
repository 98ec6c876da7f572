# -*- test-case-name: speedy.test.test_chunkserver_protocol -*-
"""
The frames leaving one connection, kept whole and in order.

Both ends of the wire protocol answer or ask many things at once, but a frame
must never be cut by another: while one frame's body is being streamed (a
chunk going out with C{sendfile}, a PUT body), later frames wait behind it.

A streamed body is any object with::

    start(consumer)  -> Deferred firing when its last byte was written
                        (failing if it was stopped or broke)
    stopProducing()  -> give up and release what it holds; idempotent, also
                        before start()

(L{speedy.wire.producers.BytesBody}, L{speedy.wire.producers.ReadBody},
L{speedy.zerocopy.sendfile.SendfileBody}, L{speedy.wire.growing.GrowingBody}).
A body that fails with L{BodyAbandoned} aborts the connection quietly: the
peer drops the frame it never got whole.
"""

from collections import deque

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionLost
from twisted.logger import Logger
from twisted.python.failure import Failure

from speedy.wire.growing import BodyAbandoned


def no_delay(transport):
    """
    Turn off Nagle's algorithm on C{transport} when it is TCP: a frame's
    header and body often leave in two writes, and a small answer must not
    wait for the peer's delayed ACK.
    """
    set_no_delay = getattr(transport, "setTcpNoDelay", None)
    if set_no_delay is not None:
        set_no_delay(True)


class Outbox:
    """
    Queue of outgoing frames for one transport.

    @ivar on_sent: called with no argument after each queued item has been
        handed over whole (used to count progress for idle timeouts).
    """

    _log = Logger()

    def __init__(self, transport, on_sent=lambda: None):
        self._transport = transport
        self._queue = deque()
        self._active = None
        self._pumping = False
        self._closed = False
        self.on_sent = on_sent

    @property
    def idle(self):
        """True when nothing is being streamed and nothing waits."""
        return self._active is None and not self._queue

    def send(self, data):
        """Write the bytes of whole frames, after everything queued before."""
        if not self._closed:
            self._queue.append(data)
            self._pump()

    def stream(self, head, body):
        """
        Write C{head} (bytes) and then the bytes C{body} produces, after
        everything queued before.

        @return: a Deferred firing with None once the body was written whole,
            or failing if the connection closed or the body broke (then the
            connection is aborted: the peer cannot find the next frame).
        """
        sent = Deferred()
        if self._closed:
            body.stopProducing()
            sent.errback(Failure(ConnectionLost("connection closed")))
        else:
            self._queue.append((head, body, sent))
            self._pump()
        return sent

    def close(self):
        """The connection is gone: stop the body being written, release the
        waiting ones and fail their Deferreds."""
        if self._closed:
            return
        self._closed = True
        waiting, self._queue = self._queue, deque()
        if self._active is not None:
            self._active.stopProducing()
        for item in waiting:
            if isinstance(item, tuple):
                head, body, sent = item
                body.stopProducing()
                sent.errback(Failure(ConnectionLost("connection closed")))

    def _pump(self):
        if self._pumping:
            return
        self._pumping = True
        try:
            while self._active is None and self._queue and not self._closed:
                item = self._queue.popleft()
                if isinstance(item, tuple):
                    head, body, sent = item
                    if head:
                        self._transport.write(head)
                    self._active = body
                    body.start(self._transport).addCallbacks(
                        self._body_written, self._body_failed,
                        callbackArgs=(sent,), errbackArgs=(sent,))
                else:
                    self._transport.write(item)
                    self.on_sent()
        finally:
            self._pumping = False

    def _body_written(self, _, sent):
        self._active = None
        self.on_sent()
        sent.callback(None)
        self._pump()

    def _body_failed(self, reason, sent):
        self._active = None
        if reason.check(ConnectionLost):  # stopped: the connection went away
            self.close()
        elif reason.check(BodyAbandoned):  # its chunk will not be completed
            self._transport.abortConnection()
            self.close()
        elif not self._closed:
            self._log.failure("streaming a frame body failed; aborting the connection",
                              reason)
            self._transport.abortConnection()
            self.close()
        sent.errback(reason)
