# -*- test-case-name: speedy.test.test_sendfile -*-
"""
Frame bodies written piece by piece as the transport drains (pull
producers), so a chunk is never copied whole into a transport's buffer.
See L{speedy.wire.outbox} for the body protocol they follow.
"""

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import IPullProducer
from twisted.python.failure import Failure
from zope.interface import implementer

#: Bytes written per resumeProducing: large enough to keep a socket busy,
#: small enough to bound what sits in the transport's buffer.
PIECE = 256 * 1024


@implementer(IPullProducer)
class PullBody:
    """
    Base of bodies of a known C{length}.  Subclasses implement
    C{_piece(position, size)} returning the next bytes and may override
    C{_release()}.
    """

    def __init__(self, length):
        self.length = length
        self._position = 0
        self._consumer = None
        self._done = None
        self._released = False

    def start(self, consumer):
        """
        Register with C{consumer} and write as it asks for more.

        @return: a Deferred firing with None once C{length} bytes were
            written, failing if the body was stopped or could not be read.
        """
        self._consumer = consumer
        self._done = Deferred()
        if self._released:
            self._done.errback(Failure(ConnectionLost("body stopped before it started")))
        elif self.length == 0:
            self._finish()
        else:
            consumer.registerProducer(self, False)
        return self._done

    def resumeProducing(self):
        if self._done is None or self._done.called:
            return
        try:
            self._produce()
        except Exception:
            self._fail(Failure())

    def _produce(self):
        size = min(PIECE, self.length - self._position)
        data = self._piece(self._position, size)
        if not data:
            raise OSError(f"body source ended {self.length - self._position} bytes early")
        self._position += len(data)
        self._consumer.write(data)
        if self._position == self.length:
            self._finish()

    def stopProducing(self):
        self._release_once()
        if self._done is not None and not self._done.called:
            self._done.errback(Failure(ConnectionLost("body stopped")))

    def _finish(self):
        if self.length:
            self._consumer.unregisterProducer()
        self._release_once()
        self._done.callback(None)

    def _fail(self, reason):
        self._consumer.unregisterProducer()
        self._release_once()
        self._done.errback(reason)

    def _release_once(self):
        if not self._released:
            self._released = True
            self._release()

    def _release(self):
        """Free what the body holds (nothing by default)."""

    def _piece(self, position, size):
        raise NotImplementedError


class BytesBody(PullBody):
    """A body from a bytes-like object already in memory (a client's PUT)."""

    def __init__(self, data):
        self._view = memoryview(data).cast("B")
        super().__init__(len(self._view))

    def _piece(self, position, size):
        return bytes(self._view[position:position + size])

    def _release(self):
        self._view = None


class ReadBody(PullBody):
    """
    A body read through L{speedy.interfaces.IChunkRead.read}: the path for
    TLS transports and wherever C{sendfile} cannot be used.  The read is
    released when the body ends, whichever way.
    """

    def __init__(self, read):
        super().__init__(read.length)
        self._read = read

    def _piece(self, position, size):
        return self._read.read(position, size)

    def _release(self):
        self._read.release()
