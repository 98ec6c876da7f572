# -*- test-case-name: speedy.test.test_chunkserver_protocol -*-
"""
L{MemoryChunkStore}: an L{IChunkStore} held in a dict, for tests of
everything that drives a chunk store (the wire protocol, the daemon, the
imageserver's storage path).  It keeps the contract, not the disk format.
"""

import errno

import google_crc32c
from twisted.internet.defer import fail, maybeDeferred, succeed
from zope.interface import implementer

from speedy.errors import (
    BadRequest, ChecksumMismatch, ChunkExists, ChunkNotFound, NoSpace,
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
    """

    def __init__(self, capacity=1 << 40, max_chunk=64 << 20):
        self.capacity = capacity
        self.max_chunk = max_chunk
        self.read_only = False
        self.lagging = False
        self._writes = set()
        self.open_writes = 0
        self.pinned = 0
        self.used = 0
        self._chunks = {}
        self._damaged = set()
        self._garbage = 0
        self.counters = dict(checksum_errors=0, reads=0, writes=0, deletes=0, aborts=0)

    def add(self, file_id, data):
        """
        Store C{data} under C{file_id} at once, as a finished PUT does (also
        for setting up tests).

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
        return ChunkInfo(file_id, len(data), google_crc32c.value(data))

    def contents(self, file_id):
        """@return: the bytes stored under C{file_id}, or None."""
        return self._chunks.get(file_id)

    def catch_up(self):
        """The slow disk caught up: nothing is buffered any more."""
        for write in self._writes:
            write.buffered = 0

    def damage(self, file_id):
        """Make the stored bytes of C{file_id} fail their checksum on read."""
        self._damaged.add(file_id)

    def put(self, file_id, size):
        if self.read_only:
            raise ReadOnly("the store is read-only")
        if size > self.max_chunk:
            raise TooLarge(f"a chunk holds at most {self.max_chunk} bytes, not {size}")
        if self.used + size > self.capacity:
            raise NoSpace(f"no room for {size} bytes")
        self.open_writes += 1
        write = _MemoryChunkWrite(self, file_id, size)
        self._writes.add(write)
        return write

    def get(self, file_id, offset=0, length=None):
        data = self._chunks.get(file_id)
        if data is None:
            return fail(ChunkNotFound(f"no chunk {file_id}"))
        if file_id in self._damaged:
            self.counters["checksum_errors"] += 1
            return fail(ChecksumMismatch(f"chunk {file_id} is damaged"))
        if length is None:
            length = len(data) - offset
        if offset < 0 or length < 0 or offset + length > len(data):
            return fail(RangeNotSatisfiable(
                f"bytes {offset}+{length} lie outside chunk {file_id} of {len(data)}"))
        self.counters["reads"] += 1
        self.pinned += 1
        return succeed(_MemoryChunkRead(self, self.stat(file_id), data, offset, length))

    def stat(self, file_id):
        data = self._chunks.get(file_id)
        if data is None:
            return None
        return ChunkInfo(file_id, len(data), google_crc32c.value(data))

    def delete(self, file_id):
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
            "free": self.capacity - used,
            "read_only": self.read_only,
            "chunks": len(self._chunks),
            "volumes": [{"volume_id": 0, "size": used + self._garbage,
                         "used": used, "garbage": self._garbage}],
            "counters": dict(self.counters),
        }

    def close(self):
        return succeed(None)


@implementer(IChunkWrite)
class _MemoryChunkWrite:
    def __init__(self, store, file_id, size):
        self._store = store
        self._file_id = file_id
        self._size = size
        self._data = bytearray()
        self._open = True
        self.buffered = 0

    def write(self, data):
        if len(self._data) + len(data) > self._size:
            self.abort()
            raise TooLarge(f"more than the announced {self._size} bytes")
        self._data += data
        if self._store.lagging:
            self.buffered += len(data)

    def finish(self):
        self._close()
        if len(self._data) != self._size:
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
