# -*- test-case-name: speedy.test.test_chunk_cache -*-
"""
A memory cache of recently written chunks (L{ChunkCache}), so that a GET of
one is sent straight from memory: no disk read, no verify (the bytes were
checked against the client's CRC32C when they arrived).

An entry (L{CachedChunk}) holds a chunk's data as ordered segments: the
few bytes before its first direct-written block (copied), the filled parts
of the staging buffers its direct writes were made from, and the few bytes
after its last direct block (copied).  Its buffers go back to the staging
pool (the C{give} callable) exactly once: when the entry is evicted,
dropped or cleared, or, if GETs still send from it then (L{Lease}), when
the last of those is released.
"""

from bisect import bisect_right
from collections import OrderedDict

from speedy.chunkserver.volume import HEADER_SIZE


class CachedChunk:
    """
    The data of one chunk, in memory.

    @ivar size: the chunk's data bytes.
    @ivar memory: the bytes it holds: its buffers whole (a staging buffer is
        held whole however much of it the chunk fills), plus its segments
        that lie outside them.
    @ivar buffers: the staging buffers its segments point into, given back
        once the entry is done with.
    """

    def __init__(self, segments, buffers=()):
        """
        @param segments: bytes-like objects holding the chunk's data in
            order (empty ones are skipped).
        @param buffers: the staging buffers some of C{segments} are views of.
        """
        self.buffers = list(buffers)
        owned = {id(buffer) for buffer in self.buffers}
        self._segments = []
        self._starts = []
        self.size = 0
        self.memory = sum(len(buffer) for buffer in self.buffers)
        for segment in segments:
            view = memoryview(segment)
            if not len(view):
                continue
            if id(view.obj) not in owned:
                self.memory += len(view)
            self._starts.append(self.size)
            self._segments.append(view)
            self.size += len(view)
        self.leases = 0
        self.retired = False

    def views(self, start, length):
        """
        @param start: the first data byte wanted (0 is the chunk's first).
        @return: memoryviews of the data bytes C{[start, start + length)},
            in order, no empty one.
        """
        if start < 0 or length < 0 or start + length > self.size:
            raise ValueError(f"range {start}+{length} outside {self.size} bytes")
        views = []
        index = bisect_right(self._starts, start) - 1
        while length > 0:
            segment = self._segments[index]
            low = start - self._starts[index]
            high = min(len(segment), low + length)
            views.append(segment[low:high])
            length -= high - low
            start += high - low
            index += 1
        return views


class Lease:
    """
    A GET's hold on a cached chunk: its bytes stay in memory until
    L{release}, even if the entry is evicted or dropped meanwhile.  It has
    the contract of a staged read's span
    (L{speedy.chunkserver.staging.StagedSpan}): positions are counted from
    the record's first header byte.
    """

    def __init__(self, cache, entry):
        self._cache = cache
        self._entry = entry
        entry.leases += 1

    def views(self, start, length):
        """
        @param start: a record position (the data's byte 0 is
            C{HEADER_SIZE}).
        @return: memoryviews of the bytes C{[start, start + length)}, in
            order, no empty one.
        @raise ValueError: after L{release}, or for a range outside the chunk.
        """
        if self._entry is None:
            raise ValueError("views of a released lease")
        return self._entry.views(start - HEADER_SIZE, length)

    def release(self):
        """Let the entry's buffers go (if it is gone already).  Idempotent."""
        entry, self._entry = self._entry, None
        if entry is not None:
            entry.leases -= 1
            if entry.retired and not entry.leases:
                self._cache._give(entry)


class ChunkCache:
    """
    Cached chunks by file id, least recently used first out, holding at
    most C{budget} bytes (L{CachedChunk.memory}).  Touched on the reactor
    thread only.

    @ivar bytes: the bytes the cached entries hold now.
    @ivar count: the entries cached now.
    @ivar buffer_bytes: the bytes of the staging buffers held now, those of
        entries evicted while leased included.
    @ivar peak: the most bytes the cache has held (at most C{budget}): the
        staging pool keeps as many idle that the cache let go, to reuse
        (L{speedy.chunkserver.staging.StagingPool}).
    """

    def __init__(self, budget, give):
        """
        @param budget: the most bytes the cached entries may hold.
        @param give: called with each staging buffer that no entry needs
            any more.
        """
        self.budget = budget
        self._give_buffer = give
        self._entries = OrderedDict()
        self.bytes = 0
        self.buffer_bytes = 0
        self.peak = 0

    @property
    def count(self):
        return len(self._entries)

    def __contains__(self, file_id):
        return file_id in self._entries

    def add(self, file_id, entry):
        """
        Cache C{entry} (a L{CachedChunk}) as C{file_id}'s data, replacing
        any entry it had, and evict the least recently used entries until
        the cache is within its budget.  An entry larger than the budget is
        not cached: its buffers are given back at once.

        @return: whether it was cached.
        """
        self.drop(file_id)
        self.buffer_bytes += sum(len(buffer) for buffer in entry.buffers)
        if entry.memory > self.budget:
            entry.retired = True
            self._give(entry)
            return False
        self._entries[file_id] = entry
        self.bytes += entry.memory
        while self.bytes > self.budget:
            _, oldest = self._entries.popitem(last=False)
            self._retire(oldest)
        self.peak = max(self.peak, self.bytes)
        return True

    def lease(self, file_id):
        """@return: None, or a L{Lease} of C{file_id}'s cached data, which
        becomes the most recently used entry."""
        entry = self._entries.get(file_id)
        if entry is None:
            return None
        self._entries.move_to_end(file_id)
        return Lease(self, entry)

    def drop(self, file_id):
        """Forget C{file_id}'s entry, if any (its chunk was deleted or
        replaced)."""
        entry = self._entries.pop(file_id, None)
        if entry is not None:
            self._retire(entry)

    def clear(self):
        """Forget every entry (the store closes)."""
        entries, self._entries = self._entries, OrderedDict()
        for entry in entries.values():
            self._retire(entry)

    def _retire(self, entry):
        self.bytes -= entry.memory
        entry.retired = True
        if not entry.leases:
            self._give(entry)

    def _give(self, entry):
        """Give C{entry}'s buffers back (once: they are forgotten)."""
        buffers, entry.buffers = entry.buffers, []
        self.buffer_bytes -= sum(len(buffer) for buffer in buffers)
        for buffer in buffers:
            self._give_buffer(buffer)

