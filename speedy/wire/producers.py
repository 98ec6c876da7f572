# -*- test-case-name: speedy.test.test_sendfile,speedy.test.test_wire_producers -*-
"""
Frame bodies written as the transport drains (pull producers): piece by
piece, or, for a chunk in memory on plain TCP, handed over in the pieces it
is held in without a copy (L{BytesBody}); a chunk is never copied whole into
a transport's buffer.
See L{speedy.wire.outbox} for the body protocol they follow.
"""

from collections import deque

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import IPullProducer
from twisted.python.failure import Failure
from zope.interface import implementer

from speedy.zerocopy.internals import write_buffer_empty, write_buffer_visible

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
    A body from memory (a client's PUT): a bytes-like object, or a list or
    tuple of bytes-like pieces sent one after the other (see
    L{frozen_pieces}).

    On a plain TCP transport each piece is handed over in one write once
    the transport's buffer is empty (the frame's header, or the piece
    before, sent): C{tcp.Connection} then keeps the C{bytes} object itself
    as its buffer and sends from memoryview slices of it, so not a byte is
    copied in Python (a 16 MiB chunk written to three replicas in L{PIECE}
    copies costs the reactor thread 48 MiB of C{memcpy}).  Anything else in
    the buffer would be joined with it into a new C{bytes}, hence the wait
    for the buffer to drain, and the body ends only once the transport
    drained its last piece too (its next C{resumeProducing}), so the next
    frame is never written behind it.  Under TLS, and for other transports,
    it goes out in copies of at most L{PIECE} bytes.

    @param progress: called with no argument each time the transport takes
        a piece (it asks for more only once it sent what it held, so each
        call is progress on the wire).
    """

    def __init__(self, data, progress=lambda: None):
        self._pieces = deque(frozen_pieces(data))
        self._offset = 0  # of the next byte to send in self._pieces[0]
        self._whole = False  # pieces go to the transport whole
        self._progress = progress
        super().__init__(sum(len(piece) for piece in self._pieces))

    def start(self, consumer):
        self._whole = write_buffer_visible(consumer)
        return super().start(consumer)

    def _produce(self):
        if not self._whole:
            self._progress()
            super()._produce()
        elif write_buffer_empty(self._consumer):
            self._progress()
            if self._pieces:
                piece = self._pieces.popleft()
                self._position += len(piece)
                self._consumer.write(piece)
            else:
                self._finish()
        # else the transport is writing and calls us when drained

    def _piece(self, position, size):
        """@return: up to C{size} bytes from the next piece (C{position} is
        where it starts: pieces are taken in order)."""
        piece = self._pieces[0]
        data = piece[self._offset:self._offset + size]
        self._offset += len(data)
        if self._offset == len(piece):
            self._pieces.popleft()
            self._offset = 0
        return data

    def _release(self):
        self._pieces.clear()


def frozen_pieces(data):
    """
    @param data: a bytes-like object, or a list or tuple of them.
    @return: a tuple of C{bytes} holding C{data}'s bytes in order: its
        C{bytes} pieces themselves, copies of the others (a C{bytearray} or
        C{memoryview} could change under a body still being sent), and no
        empty ones.
    """
    pieces = data if isinstance(data, (list, tuple)) else (data,)
    return tuple(piece if type(piece) is bytes else bytes(piece)
                 for piece in pieces if len(piece))


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
