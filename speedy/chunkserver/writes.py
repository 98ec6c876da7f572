# -*- test-case-name: speedy.test.test_store,speedy.test.test_direct_io,speedy.test.test_inplace -*-
"""
A PUT's bytes on their way into the record span reserved for them in a
volume (L{ChunkWrite}), or into nowhere when the same chunk is already
stored (L{RepeatedWrite}, an idempotent retry).  The store reserves the
span and writes the record's header (L{speedy.chunkserver.store.ChunkStore.put});
a write checksums each piece on the reactor thread, copies the bytes of
its direct region into staging buffers (L{speedy.chunkserver.staging}) or
offers them to be read straight from the socket (L{ChunkWrite.write_space}),
writes them in a thread, and once the last byte is out hands itself back to
the store to be published (C{_complete}).
"""

from twisted.internet.defer import Deferred, fail, succeed
from twisted.python.failure import Failure
from zope.interface import implementer

from speedy.chunkserver.cache import CachedChunk
from speedy.chunkserver.staging import Stage
from speedy.chunkserver.volume import HEADER_SIZE, crc32c
from speedy.errors import BadRequest, Busy, NoSpace, TooLarge
from speedy.interfaces import IChunkWrite
from speedy.records import ChunkInfo


@implementer(IChunkWrite)
class ChunkWrite:
    """
    A put streaming into its reserved place in a volume.

    Arriving pieces are checksummed on the reactor thread and written by
    one thread job at a time (a job takes everything that became ready
    while the previous one ran), so a disk that throttles writers stalls
    this chunk, not the reactor.  With a
    L{speedy.chunkserver.staging.DirectRegion}, the bytes of that region
    are copied into staging buffers and each buffer is written with
    one direct C{pwrite} once full; the rest of the data is written through
    the page cache, piece by piece.  C{buffered} says how many bytes wait
    in memory (not counting up to one block of direct bytes that cannot be
    written until the bytes completing the block arrive); C{drained} waits
    for it to fall.  A failed write is reported by the next C{write} or by
    C{finish}.  The volume's reservation is given back exactly once, however
    the write ends.

    With C{keep} (and a L{speedy.chunkserver.staging.DirectRegion}), each
    staging buffer is kept once its bytes are complete, instead of going
    back to the pool, and so are copies of the data outside the region
    (less than a block on each side):
    L{take_kept} hands them over as a L{CachedChunk} when the record is
    published.  However else the write ends, L{drop_kept} gives them back,
    once, after any thread job that may still be writing from them.
    """

    def __init__(self, store, volume, offset, file_id, size, direct=None,
                 keep=False):
        self._store = store
        self.volume = volume
        self.offset = offset
        self.file_id = file_id
        self.size = size
        self.crc = 0
        self._written = 0
        self._done = False
        self._reserved = True
        self._direct = direct
        self._stage = None
        self._pending = []
        self._queued = 0
        self._position = offset + HEADER_SIZE
        self._flushing = False
        self._error = None
        self._idle = []
        self._drain_waiters = []
        self._orphans = []
        self._keep = keep and direct is not None
        self._kept = []  # (buffer, bytes used) of each complete stage, in order
        self._kept_head = []  # copies of the data before the region
        self._kept_tail = []  # and after it
        self._drop_kept_later = False

    @property
    def buffered(self):
        stage = self._stage
        if stage is None:
            return self._queued
        whole = stage.fill - stage.fill % self._direct.block
        return self._queued + max(0, whole - stage.sent)

    def write(self, data):
        if self._error is not None:
            raise NoSpace(self._error)
        if self._done:
            raise BadRequest("write after finish or abort")
        if self._store._closed:
            # Its volume's descriptor may be closed (and its number reused).
            self.abort()
            raise Busy("the store is closing")
        piece = memoryview(data).cast("B")
        if self._written + len(piece) > self.size:
            self.abort()
            raise TooLarge(f"more than the announced {self.size} bytes")
        self.crc = crc32c(piece, self.crc)
        self._written += len(piece)
        if self._direct is None:
            self._queue(self.volume.fd, _owned(piece), self._position)
            self._position += len(piece)
        else:
            self._split(piece)
        self._flush_taken()

    def _flush_taken(self):
        """Start writing what the last piece queued, unless a job already
        runs (it takes the rest when done); report a failed write."""
        if self._pending and not self._flushing:
            self._flush()
        if self._error is not None:
            raise NoSpace(self._error)

    def write_space(self):
        """
        @return: the rest of the staging buffer the next bytes go to, when
            they lie in the direct region (taking a buffer from the pool
            if none is being filled), else None: the bytes beside the
            record's header and padding come through L{write}.
        """
        region = self._direct
        position = self._position
        if (self._error is not None or self._done or self._store._closed or region is None
                or not region.start <= position < region.end):
            return None
        stage = self._staging(position)
        return memoryview(stage.buffer)[position - stage.base:stage.limit - stage.base]

    def wrote(self, count):
        """Take C{count} bytes read into the last L{write_space}: no copy."""
        if self._error is not None:
            raise NoSpace(self._error)
        stage = self._stage
        if self._done or stage is None or stage.base + stage.fill + count > stage.limit:
            raise BadRequest("wrote() past the space write_space() gave")
        at = stage.fill
        self.crc = crc32c(memoryview(stage.buffer)[at:at + count], self.crc)
        self._written += count
        self._position += count
        self._staged(stage, count)
        self._flush_taken()

    def _split(self, piece):
        """Queue the buffered parts of C{piece} (a byte memoryview), copy
        its direct part into staging buffers: its bytes are copied once."""
        region = self._direct
        view = piece
        position = self._position
        while view:
            if region.start <= position < region.end:
                taken = self._stage_bytes(view[:region.end - position], position)
            else:
                taken = len(view)
                if position < region.start:
                    taken = min(taken, region.start - position)
                self._queue(self.volume.fd, _owned(view[:taken]), position)
                if self._keep:
                    kept = self._kept_head if position < region.start else self._kept_tail
                    kept.append(bytes(view[:taken]))
            view = view[taken:]
            position += taken
        self._position = position

    def _stage_bytes(self, view, position):
        """Copy what fits of C{view} (for C{position} onwards) into the
        staging buffer, queueing the buffer once full.  @return: bytes taken."""
        stage = self._staging(position)
        taken = min(len(view), stage.limit - position)
        at = position - stage.base
        stage.buffer[at:at + taken] = view[:taken]
        self._staged(stage, taken)
        return taken

    def _staging(self, position):
        """@return: the staging buffer being filled, taking one from the
        pool for the bytes from C{position} on if none is."""
        stage = self._stage
        if stage is None:
            # Stages follow each other from region.start, so position is
            # aligned here.
            region = self._direct
            buffer = region.pool.take()
            stage = self._stage = Stage(
                buffer, position, min(region.end, position + len(buffer)))
        return stage

    def _staged(self, stage, count):
        """C{count} more bytes are in C{stage}: queue it once full."""
        stage.fill += count
        if stage.base + stage.fill == stage.limit:
            self._send_stage(stage.fill, last=True)

    def _send_stage(self, upto, last):
        """Queue the staged bytes C{[sent, upto)} (whole blocks) for a
        direct write; with C{last}, the buffer goes back to the pool after
        (or, when keeping, is kept once the stage is complete)."""
        stage = self._stage
        # A kept buffer is this write's to give back, not its job's.
        returned = last and not self._keep
        if upto > stage.sent:
            data = memoryview(stage.buffer)[stage.sent:upto]
            self._queue(self._direct.fd, data, stage.base + stage.sent,
                        stage.buffer if returned else None)
            stage.sent = upto
        elif returned:
            self._direct.pool.give(stage.buffer)
        if last:
            if self._keep:
                self._kept.append((stage.buffer, stage.limit - stage.base))
            self._stage = None

    def _queue(self, fd, data, position, buffer=None):
        self._pending.append((fd, data, position, buffer))
        self._queued += len(data)

    def drained(self, limit):
        if self.buffered <= limit:
            return succeed(None)
        d = Deferred(self._forget_drain_waiter)
        self._drain_waiters.append((limit, d))
        self._unstick()
        return d

    def _forget_drain_waiter(self, d):
        self._drain_waiters = [w for w in self._drain_waiters if w[1] is not d]

    def _unstick(self):
        """A drain waiter that nothing in flight will satisfy: send the
        whole blocks of the staging buffer now, before it is full."""
        stage = self._stage
        if self._flushing or stage is None or not self._drain_waiters:
            return
        whole = stage.fill - stage.fill % self._direct.block
        if whole > stage.sent:
            self._send_stage(whole, last=False)
            self._flush()

    def _flush(self):
        jobs, self._pending = self._pending, []
        self._flushing = True
        self.volume.pin()
        d = self._store._run_in_thread(_write_pieces, self._store._disk, jobs)
        d.addBoth(self._flushed, jobs)

    def _flushed(self, result, jobs):
        self.volume.unpin()
        self._flushing = False
        for _, data, _, buffer in jobs:
            self._queued -= len(data)
            if buffer is not None:
                self._direct.pool.give(buffer)
        for buffer in self._orphans:
            self._direct.pool.give(buffer)
        self._orphans = []
        if self._drop_kept_later:
            self._drop_kept_later = False
            self.drop_kept()
        if isinstance(result, Failure):
            if self._error is None:
                self._error = str(self._store._no_space(result.value))
            self._done = True
            self._discard()
            self._release()
        elif self._pending:
            self._flush()
        waiters, self._drain_waiters = self._drain_waiters, []
        for waiter in waiters:
            limit, d = waiter
            if self.buffered <= limit:
                d.callback(None)
            else:
                self._drain_waiters.append(waiter)
        self._unstick()
        if not self._flushing:
            idle, self._idle = self._idle, []
            for d in idle:
                d.callback(None)

    def _discard(self):
        """Drop what has not been handed to a thread, giving buffers back."""
        for _, data, _, buffer in self._pending:
            self._queued -= len(data)
            if buffer is not None:
                self._direct.pool.give(buffer)
        self._pending = []
        if self._stage is not None:
            if self._flushing:
                # A thread may be writing its first blocks: give it back
                # once that job is done.
                self._orphans.append(self._stage.buffer)
            else:
                self._direct.pool.give(self._stage.buffer)
            self._stage = None
        self.drop_kept()

    def drop_kept(self):
        """Give back what the write kept for the cache: now, or once the
        thread job that may be writing from it is done.  Idempotent."""
        if self._flushing:
            self._drop_kept_later = True
            return
        kept, self._kept = self._kept, []
        self._kept_head = self._kept_tail = []
        for buffer, _ in kept:
            self._direct.pool.give(buffer)

    def take_kept(self):
        """
        Hand over what the write kept (when its record is published, so
        nothing writes from the buffers any more).

        @return: a L{CachedChunk} of the chunk's data, or None when nothing
            was kept.
        """
        if not self._keep or self._flushing:
            self.drop_kept()
            return None
        kept, self._kept = self._kept, []
        segments = list(self._kept_head)
        segments.extend(memoryview(buffer)[:used] for buffer, used in kept)
        segments.extend(self._kept_tail)
        self._kept_head = self._kept_tail = []
        entry = CachedChunk(segments, [buffer for buffer, _ in kept])
        if entry.size != self.size:  # cannot happen; never serve a wrong entry
            for buffer in entry.buffers:
                self._direct.pool.give(buffer)
            return None
        return entry

    def _written_out(self):
        """@return: a Deferred firing when every piece is in the file."""
        if not self._flushing:
            return succeed(None)
        d = Deferred()
        self._idle.append(d)
        return d

    def finish(self):
        if self._error is not None:
            return fail(NoSpace(self._error))
        if self._done:
            return fail(BadRequest("finish after finish or abort"))
        if self._written != self.size:
            self.abort()
            return fail(BadRequest(
                f"{self._written} of the announced {self.size} bytes written"))
        self._done = True

        def complete(_):
            if self._error is not None:
                raise NoSpace(self._error)
            if self._store._closed:
                self.drop_kept()
                self._release()
                raise Busy("the store is closing")
            self._reserved = False
            return self._store._complete(self)

        return self._written_out().addCallback(complete)

    def abort(self):
        if not self._done:
            self._done = True
            self._discard()
            self._release()

    def _release(self):
        """Give the reservation back (the space becomes garbage).  Idempotent."""
        if self._reserved:
            self._reserved = False
            self._store._abandon(self)


def _owned(view):
    """
    @return: C{view} (a byte memoryview) itself when it is a slice of
        C{bytes}, which cannot change while it waits to be written (a
        protocol hands on slices of what its socket reads returned), else a
        copy of it.
    """
    return view if type(view.obj) is bytes else bytes(view)


def _write_pieces(disk, jobs):
    """Write each C{(fd, data, position, _)} of C{jobs} (in a thread): the
    buffered pieces through the volume's descriptor, the full staging
    buffers through its direct one."""
    for fd, data, position, _ in jobs:
        disk.pwrite(fd, data, position)


@implementer(IChunkWrite)
class RepeatedWrite:
    """A put of an id that is already stored: the bytes are only checksummed,
    to tell an idempotent retry from a conflict; nothing is written, so
    nothing is ever C{buffered}."""

    buffered = 0

    def __init__(self, store, file_id, size):
        self._store = store
        self.file_id = file_id
        self.size = size
        self.crc = 0
        self._written = 0
        self._done = False

    def write(self, data):
        if self._done:
            raise BadRequest("write after finish or abort")
        view = memoryview(data).cast("B")
        if self._written + len(view) > self.size:
            self.abort()
            raise TooLarge(f"more than the announced {self.size} bytes")
        self.crc = crc32c(view, self.crc)
        self._written += len(view)

    def write_space(self):
        return None

    def wrote(self, count):
        raise BadRequest("wrote() without write_space()")

    def drained(self, limit):
        return succeed(None)

    def finish(self):
        if self._done:
            return fail(BadRequest("finish after finish or abort"))
        self._done = True
        if self._written != self.size:
            return fail(BadRequest(
                f"{self._written} of the announced {self.size} bytes written"))
        return self._store._compare(self.file_id, ChunkInfo(self.file_id, self.size, self.crc))

    def abort(self):
        self._done = True
