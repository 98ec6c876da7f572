# -*- test-case-name: speedy.test.test_sendfile,speedy.test.test_wire_producers -*-
"""
Frame bodies written as the transport drains (pull producers): piece by
piece, or, for a C{bytes} chunk on plain TCP, handed over whole without a
copy (L{BytesBody}); a chunk is never copied whole into a transport's buffer.
See L{speedy.wire.outbox} for the body protocol they follow.
"""

from twisted.internet import tcp
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import IPullProducer, ISSLTransport
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
    """
    A body from a bytes-like object already in memory (a client's PUT).

    A C{bytes} body bound for a plain TCP transport is handed over in one
    write once the transport's buffer is empty (the frame's header sent):
    C{tcp.Connection} then keeps the object itself as its buffer and sends
    from memoryview slices of it, so not a byte is copied in Python (a
    16 MiB chunk written to three replicas in L{PIECE} copies costs the
    reactor thread 48 MiB of C{memcpy}).  Anything else in the buffer would
    be joined with it into a new C{bytes}, hence the wait for the header to
    drain, and the body ends only once the transport drained it too (its
    next C{resumeProducing}), so the next frame is never written behind it.
    Under TLS, and for other bytes-like objects and transports, it goes out
    in L{PIECE} copies.
    """

    def __init__(self, data):
        self._view = memoryview(data).cast("B")
        self._whole = data if type(data) is bytes else None
        super().__init__(len(self._view))

    def start(self, consumer):
        if not _buffer_visible(consumer):
            self._whole = None
        return super().start(consumer)

    def _produce(self):
        if self._whole is None:
            super()._produce()
        elif not _buffer_empty(self._consumer):
            return  # the transport is writing and calls us when drained
        elif self._position == 0:
            self._position = self.length
            self._consumer.write(self._whole)
        else:
            self._finish()

    def _piece(self, position, size):
        return bytes(self._view[position:position + size])

    def _release(self):
        self._view = self._whole = None


def _buffer_visible(transport):
    """@return: True for a plain TCP transport whose write buffer we can see
    (attributes of L{tcp.Connection} that are not public API)."""
    return (isinstance(transport, tcp.Connection)
            and not ISSLTransport.providedBy(transport)
            and all(hasattr(transport, name) for name in ("dataBuffer", "offset", "_tempDataLen")))


def _buffer_empty(transport):
    return transport._tempDataLen == 0 and len(transport.dataBuffer) == transport.offset


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
