# -*- test-case-name: speedy.test.test_testing,speedy.test.test_chunkserver_protocol -*-
"""
L{MemoryChunkStore}: an L{IChunkStore} held in a dict, for tests of
everything that drives a chunk store (the wire protocol, the daemon, the
imageserver's storage path).  It keeps the contract, not the disk format.
"""

import errno

from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from zope.interface import implementer

from speedy.crc import crc32c
from speedy.errors import (
    BadRequest, Busy, ChecksumMismatch, ChunkExists, ChunkNotFound, NoSpace,
    RangeNotSatisfiable, ReadOnly, TooLarge)
from speedy.interfaces import IChunkRead, IChunkStore, IChunkWrite
from speedy.records import ChunkInfo


@implementer(IChunkStore)
class MemoryChunkStore:
    """
    Chunks in memory.

    @ivar capacity: bytes it may hold; a write past it raises L{NoSpace}.
    @ivar max_chunk: the largest chunk C{put} accepts (L{TooLarge} beyond).
    @ivar open_writes: writes begun and neither finished nor aborted.
    @ivar pinned: reads handed out and not yet released.
    @ivar used: bytes of the stored chunks.
    @ivar lagging: while True, written bytes stay C{buffered} (a slow disk)
        until L{catch_up}.
    @ivar in_place: the most bytes a write offers to be read into at once
        (C{write_space}); 0, the default, offers none.
    """

    def __init__(self, capacity=1 << 40, max_chunk=64 << 20):
        self.capacity = capacity
        self.max_chunk = max_chunk
        self.read_only = False
        self.lagging = False
        self.in_place = 0
        self._writes = set()
        self.open_writes = 0
        self.pinned = 0
        self.used = 0
        self._chunks = {}
        self._damaged = set()
        self._garbage = 0
        self._closed = False
        self.counters = dict(checksum_errors=0, reads=0, writes=0, deletes=0, aborts=0)

    def add(self, file_id, data):
        """
        Store C{data} under C{file_id} at once, as a finished PUT does (also
        for setting up tests).  Storing the same bytes again is an
        idempotent retry: it changes nothing.

        @return: its L{ChunkInfo}.
        @raise ChunkExists: other bytes are stored under that id.
        """
        data = bytes(data)
        existing = self._chunks.get(file_id)
        if existing is not None and existing != data:
            raise ChunkExists(f"chunk {file_id} exists with other bytes")
        if existing is None:
            self._chunks[file_id] = data
            self.used += len(data)
            self.counters["writes"] += 1
        return ChunkInfo(file_id, len(data), crc32c(data))

    def contents(self, file_id):
        """@return: the bytes stored under C{file_id}, or None."""
        return self._chunks.get(file_id)

    def catch_up(self):
        """The slow disk caught up: nothing is buffered any more."""
        for write in list(self._writes):
            write.catch_up()

    def damage(self, file_id):
        """Make the stored bytes of C{file_id} fail their checksum on read."""
        self._damaged.add(file_id)

    def put(self, file_id, size, keep=False):
        """See L{IChunkStore.put}; C{keep} is ignored (every chunk is in
        memory already)."""
        if self._closed:
            raise Busy("the store is closed")
        if self.read_only:
            raise ReadOnly("the store is read-only")
        if not 0 <= file_id < 2**64 or size < 0:
            raise BadRequest(f"bad file id {file_id} or size {size}")
        if size > self.max_chunk:
            raise TooLarge(f"a chunk holds at most {self.max_chunk} bytes, not {size}")
        if self.used + size > self.capacity:
            raise NoSpace(f"no room for {size} bytes")
        self.open_writes += 1
        write = _MemoryChunkWrite(self, file_id, size)
        self._writes.add(write)
        return write

    def get(self, file_id, offset=0, length=None):
        if self._closed:
            return fail(Busy("the store is closed"))
        data = self._chunks.get(file_id)
        if data is None:
            return fail(ChunkNotFound(f"no chunk {file_id}"))
        if length is None:
            length = len(data) - offset
        if offset < 0 or length < 0 or offset + length > len(data):
            return fail(RangeNotSatisfiable(
                f"bytes {offset}+{length} lie outside chunk {file_id} of {len(data)}"))
        if file_id in self._damaged:
            self.counters["checksum_errors"] += 1
            return fail(ChecksumMismatch(f"chunk {file_id} is damaged"))
        self.counters["reads"] += 1
        self.pinned += 1
        return succeed(_MemoryChunkRead(self, self.stat(file_id), data, offset, length))

    def stat(self, file_id):
        data = self._chunks.get(file_id)
        if data is None:
            return None
        return ChunkInfo(file_id, len(data), crc32c(data))

    def delete(self, file_id):
        if self._closed:
            return fail(Busy("the store is closed"))
        data = self._chunks.pop(file_id, None)
        if data is None:
            return fail(ChunkNotFound(f"no chunk {file_id}"))
        self._damaged.discard(file_id)
        self.used -= len(data)
        self._garbage += len(data)
        self.counters["deletes"] += 1
        return succeed(None)

    def file_ids(self):
        return iter(sorted(self._chunks))

    def compact(self, volume_id=None):
        freed, self._garbage = self._garbage, 0
        return succeed(freed)

    def status(self):
        used = self.used
        return {
            "capacity": self.capacity,
            "used": used,
            "free": 0 if self.read_only else self.capacity - used,
            "read_only": self.read_only,
            "chunks": len(self._chunks),
            "volumes": [{"volume_id": 0, "size": used + self._garbage,
                         "used": used, "garbage": self._garbage}],
            "counters": dict(self.counters),
        }

    def close(self):
        self._closed = True
        return succeed(None)


@implementer(IChunkWrite)
class _MemoryChunkWrite:
    """A put gathered in memory; with the store C{lagging}, what is written
    stays C{buffered} until the store catches up."""

    def __init__(self, store, file_id, size):
        self._store = store
        self._file_id = file_id
        self._size = size
        self._data = bytearray()
        self._open = True
        self._drain_waiters = []
        self._space = None  # the last write_space()
        self.buffered = 0

    def write(self, data):
        if not self._open:
            raise BadRequest("write after finish or abort")
        if self._store._closed:
            self.abort()
            raise Busy("the store is closed")
        data = bytes(data)
        if len(self._data) + len(data) > self._size:
            self.abort()
            raise TooLarge(f"more than the announced {self._size} bytes")
        self._data += data
        if self._store.lagging:
            self.buffered += len(data)

    def write_space(self):
        """With the store's C{in_place} set, a scratch buffer of up to that
        many bytes (what the real store's staging buffer is to it)."""
        room = min(self._store.in_place, self._size - len(self._data))
        if not self._open or room <= 0:
            return None
        self._space = memoryview(bytearray(room))
        return self._space

    def wrote(self, count):
        self.write(self._space[:count])

    def drained(self, limit):
        if self.buffered <= limit:
            return succeed(None)
        d = Deferred(lambda d: self._drain_waiters.remove((limit, d)))
        self._drain_waiters.append((limit, d))
        return d

    def catch_up(self):
        """Nothing is buffered any more: wake every L{drained} waiter."""
        self.buffered = 0
        waiters, self._drain_waiters = self._drain_waiters, []
        for _, d in waiters:
            d.callback(None)

    def finish(self):
        if not self._open:
            return fail(BadRequest("finish after finish or abort"))
        if self._store._closed:
            self.abort()
            return fail(Busy("the store is closed"))
        self._close()
        if len(self._data) != self._size:
            self._store.counters["aborts"] += 1
            return fail(BadRequest(f"{len(self._data)} of {self._size} bytes written"))
        return maybeDeferred(self._store.add, self._file_id, self._data)

    def abort(self):
        if self._open:
            self._store.counters["aborts"] += 1
        self._close()
        self._data = bytearray()

    def _close(self):
        if self._open:
            self._open = False
            self._store.open_writes -= 1
            self._store._writes.discard(self)
            self.catch_up()


@implementer(IChunkRead)
class _MemoryChunkRead:
    def __init__(self, store, info, data, offset, length):
        self._store = store
        self.info = info
        self._data = data
        self.offset = offset
        self.length = length
        self._pinned = True

    def fileno(self):
        raise OSError(errno.EOPNOTSUPP, "a memory store has no file to sendfile from")

    def file_offset(self):
        raise OSError(errno.EOPNOTSUPP, "a memory store has no file to sendfile from")

    def read(self, position, size):
        start = self.offset + position
        return self._data[start:start + min(size, self.length - position)]

    def release(self):
        if self._pinned:
            self._pinned = False
            self._store.pinned -= 1
