# -*- test-case-name: speedy.test.test_wire_growing -*-
"""
Cut-through replication: a chunk sent on to its replicas while its bytes
are still arriving from the client.

A L{GrowingChunk} is a chunk of known length that an upload fills piece by
piece; every replica's PUT streams it through its own L{GrowingBody}, which
sends each piece as soon as it was added and the connection took the one
before.  The pieces stay in the chunk until it is stored, so a chunk whose
put failed on some member can be sent whole to another group.

A chunk that can no longer be completed (the client went away, the body
ended short) is L{GrowingChunk.fail}ed: its bodies end with
L{BodyAbandoned}, on which the connection is aborted, and the chunkserver
drops the partial PUT (nothing of it becomes visible).
"""

from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import IPullProducer
from twisted.python.failure import Failure
from zope.interface import implementer

from speedy.crc import crc32c
from speedy.wire.producers import PIECE
from speedy.zerocopy.internals import write_buffer_empty, write_buffer_visible


class BodyAbandoned(Exception):
    """The chunk a body streams cannot be completed: the connection it was
    going out on must be aborted."""


class GrowingChunk:
    """
    The bytes of one chunk as they arrive.

    @ivar length: the chunk's size, known before its first byte.
    @ivar pieces: the C{bytes} added so far, in order (never copied).
    @ivar filled: their total length.
    @ivar crc32c: the CRC32C of the bytes added so far.
    @ivar failure: the L{Failure} it was failed with, or None.
    @ivar forget: True when the chunk is streamed by one body only and each
        piece is dropped once that body handed it to its transport (a
        chunkserver forwarding a chain PUT holds only what the next member
        has not taken yet); L{whole} then never fires.
    @ivar taken: bytes the body handed to its transport, with C{forget}.
    """

    def __init__(self, length, forget=False):
        self.length = length
        self.forget = forget
        self.taken = 0
        self._on_taken = []
        self.pieces = []
        self.filled = 0
        self.crc32c = 0
        self.failure = None
        self._watchers = []
        self._whole = []

    @property
    def complete(self):
        return self.filled == self.length

    def add(self, piece):
        """
        Append C{piece} (C{bytes}, kept as it is) and wake the bodies
        waiting for it.

        @raise ValueError: the chunk failed, or C{piece} would overfill it.
        """
        if self.failure is not None:
            raise ValueError("adding to a failed chunk")
        if self.filled + len(piece) > self.length:
            raise ValueError(f"{len(piece)} bytes overfill a chunk of {self.length} "
                             f"holding {self.filled}")
        if not piece:
            return
        self.pieces.append(piece)
        self.filled += len(piece)
        self.crc32c = crc32c(piece, self.crc32c)
        self._notify()
        if self.complete:
            whole, self._whole = self._whole, []
            for d in whole:
                d.callback(tuple(self.pieces))

    def fail(self, reason):
        """
        The chunk will not be completed: abandon its bodies and fail
        L{whole}.  A complete chunk, or one failed already, is left as it is.

        @param reason: an exception or L{Failure}.
        """
        if self.complete or self.failure is not None:
            return
        self.failure = reason if isinstance(reason, Failure) else Failure(reason)
        self._notify()
        whole, self._whole = self._whole, []
        for d in whole:
            d.errback(self.failure)
        waiting, self._on_taken = self._on_taken, []
        for _, d in waiting:
            d.callback(None)

    def whole(self):
        """@return: a Deferred firing with the tuple of pieces once the chunk
        is complete, or failing with the chunk's failure."""
        if self.complete:
            return succeed(tuple(self.pieces))
        d = Deferred()
        if self.failure is not None:
            d.errback(self.failure)
        else:
            self._whole.append(d)
        return d

    def backlog(self):
        """@return: bytes added and not yet taken by the body (C{forget})."""
        return self.filled - self.taken

    def when_taken(self, backlog):
        """@return: a Deferred firing once at most C{backlog} bytes wait to
        be taken (C{forget}), or the chunk failed."""
        d = Deferred()
        if self.backlog() <= backlog or self.failure is not None:
            d.callback(None)
        else:
            self._on_taken.append((backlog, d))
        return d

    def _took(self, index, count):
        """The body handed C{count} bytes of piece C{index} on."""
        self.taken += count
        if self.forget and index is not None:
            self.pieces[index] = None
        waiting, self._on_taken = self._on_taken, []
        for backlog, d in waiting:
            if self.backlog() <= backlog:
                d.callback(None)
            else:
                self._on_taken.append((backlog, d))

    def watch(self, wake):
        """Call C{wake()} after every piece added, and when the chunk fails."""
        self._watchers.append(wake)

    def unwatch(self, wake):
        if wake in self._watchers:
            self._watchers.remove(wake)

    def _notify(self):
        for wake in list(self._watchers):
            wake()


@implementer(IPullProducer)
class GrowingBody:
    """
    A PUT body streamed from a L{GrowingChunk} as it fills (see
    L{speedy.wire.outbox} for the body protocol).

    On a plain TCP transport each piece is handed over whole once the
    transport's buffer is empty, as L{speedy.wire.producers.BytesBody} does,
    so no byte is copied; elsewhere (TLS) pieces go in copies of at most
    L{PIECE} bytes.  The body ends once its last byte was written and the
    transport drained it, and fails with L{BodyAbandoned} when the chunk
    fails first.

    @param progress: called with no argument each time the transport takes
        a piece.
    """

    def __init__(self, chunk, progress=lambda: None):
        self.length = chunk.length
        self._chunk = chunk
        self._progress = progress
        self._index = 0  # of the next piece in chunk.pieces
        self._offset = 0  # into it, when pieces go out in copies
        self._sent = 0
        self._consumer = None
        self._whole = False
        self._hungry = False  # the transport asked and nothing was there
        self._done = None
        self._stopped = False

    def start(self, consumer):
        """
        @return: a Deferred firing with None once every byte was written,
            failing with L{BodyAbandoned} if the chunk failed, or with
            L{ConnectionLost} if the body was stopped.
        """
        self._consumer = consumer
        self._whole = write_buffer_visible(consumer)
        self._done = Deferred()
        if self._stopped:
            self._done.errback(Failure(ConnectionLost("body stopped before it started")))
        elif self.length == 0:
            self._done.callback(None)
        else:
            consumer.registerProducer(self, False)
            self._chunk.watch(self._arrived)
        return self._done

    def resumeProducing(self):
        self._hungry = True
        self._produce()

    def _arrived(self):
        if self._hungry or self._chunk.failure is not None:
            self._produce()

    def _produce(self):
        if self._done is None or self._done.called:
            return
        chunk = self._chunk
        if chunk.failure is not None:
            return self._end(Failure(BodyAbandoned(chunk.failure.getErrorMessage())))
        if self._whole and not write_buffer_empty(self._consumer):
            return  # the transport asks again once it drained
        if self._sent == self.length:
            return self._end(None)
        if self._index == len(chunk.pieces):
            return  # wait for the next piece: _arrived
        self._hungry = False
        self._progress()
        piece = chunk.pieces[self._index]
        if self._whole:
            done = self._index
            self._index += 1
            data = piece
        else:
            done = None
            data = piece[self._offset:self._offset + PIECE]
            self._offset += len(data)
            if self._offset == len(piece):
                done = self._index
                self._index += 1
                self._offset = 0
        self._sent += len(data)
        self._consumer.write(data)
        chunk._took(done, len(data))

    def stopProducing(self):
        self._stopped = True
        if self._done is not None and not self._done.called:
            self._end(Failure(ConnectionLost("body stopped")))

    def _end(self, failure):
        self._chunk.unwatch(self._arrived)
        self._consumer.unregisterProducer()
        if failure is None:
            self._done.callback(None)
        else:
            self._done.errback(failure)
