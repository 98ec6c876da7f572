# -*- test-case-name: speedy.test.test_store,speedy.test.test_staged_get,speedy.test.test_chunk_cache -*-
"""
GET: a chunk from the cache, or its record read and checked against its
CRC32C (L{ReadPath}, the store's side), and the L{ChunkRead} the wire
protocol sends the bytes from.

A large GET verifies its record with direct reads (L{read_record_direct})
into staging buffers, one per 1 MiB window, and keeps them: the read is
then "staged" (L{StagedSpan}), its bytes are sent from those buffers
(L{speedy.zerocopy.sendfile.StagedBody}) and the record is read from the disk
once per GET.  Sending it with C{sendfile} instead would read it a second
time: its direct-written blocks are never in the page cache.  The staged
bytes of all GETs in flight are capped (C{staged_read_limit}); a GET that
would pass the cap verifies with one reused buffer and is sent with
C{sendfile}, as is every GET with direct I/O off.  Every buffer goes back
to the pool once, when the read is released.
"""

from twisted.internet.defer import fail, succeed
from zope.interface import implementer

from speedy.chunkserver.staging import StagedSpan
from speedy.chunkserver.volume import (
    HEADER_SIZE, check_record, direct_windows, read_record, read_record_direct)
from speedy.errors import Busy, ChecksumMismatch, ChunkNotFound, RangeNotSatisfiable
from speedy.interfaces import IChunkRead
from speedy.records import ChunkInfo

#: Records (header and data) up to this size are read and checked on the
#: reactor thread when the page cache holds them.  Below it the check costs
#: the reactor less than a thread hop does (~20 us); above it the cost grows
#: with the size (C{bench/bench_store.py}, "GET verify").
INLINE_VERIFY_LIMIT = 128 * 1024


class ReadPath:
    """
    The L{speedy.chunkserver.store.ChunkStore}'s GET: C{get} and the
    record check behind it.  Uses the store's index, volumes, cache,
    staging pool and counters.
    """

    def get(self, file_id, offset=0, length=None):
        if self._closed:
            return fail(Busy("the store is closing"))
        location = self._index.get(file_id)
        if location is None:
            return fail(ChunkNotFound(f"no chunk {file_id}"))
        volume_id, record_offset, size, crc = location
        if length is None:
            length = size - offset
        if offset < 0 or length < 0 or offset + length > size:
            return fail(RangeNotSatisfiable(
                f"range {offset}+{length} outside chunk of {size} bytes"))
        volume = self._volumes[volume_id]
        volume.pin()
        info = ChunkInfo(file_id, size, crc)
        if self._cache is not None:
            lease = self._cache.lease(file_id)
            if lease is not None:
                # Checked against the client's CRC when it arrived.
                self.counters["cache_hits"] += 1
                self.counters["reads"] += 1
                self.counters["bytes_read"] += length
                return succeed(ChunkRead(
                    self._disk, volume, info, record_offset + HEADER_SIZE,
                    offset, length, None, lease))
            if size >= self.direct_io_threshold:
                self.counters["cache_misses"] += 1
        d = self._verify(volume, record_offset, file_id, size, crc)

        def checked(result):
            ok, raw, staged = result
            if not ok:
                if staged is not None:
                    staged.release()
                volume.unpin()
                self._drop_damaged(file_id, location)
                raise ChecksumMismatch(f"chunk {file_id} is damaged")
            if staged is not None and self._closed:
                staged.release()
                volume.unpin()
                raise Busy("the store is closing")
            self.counters["reads"] += 1
            self.counters["bytes_read"] += length
            cached = None
            if raw is not None:
                start = HEADER_SIZE + offset
                cached = memoryview(raw)[start:start + length]
            if staged is not None:
                # Only the windows holding the range are needed any more.
                staged.keep(HEADER_SIZE + offset, length)
            return ChunkRead(self._disk, volume, info, record_offset + HEADER_SIZE,
                              offset, length, cached, staged)

        def unreadable(failure):
            volume.unpin()
            failure.trap(OSError)
            self.counters["checksum_errors"] += 1
            self.log.error("cannot read chunk {file_id}: {e}",
                           file_id=file_id, e=failure.value)
            raise ChecksumMismatch(f"chunk {file_id} is unreadable: {failure.value}")

        return d.addCallbacks(checked, unreadable)

    def verify(self, file_id):
        """
        Read chunk C{file_id}'s record from the disk, past the chunk cache
        and, where direct I/O works, past the page cache too, and check it
        against its CRC32C: what the scrubber and a repair ask.  A damaged
        record is dropped
        (L{speedy.chunkserver.store.ChunkStore._drop_damaged}), so the
        chunk can be written anew; a record that cannot be read (an I/O
        error) is kept.

        @return: a Deferred firing with the chunk's L{ChunkInfo}, or failing
            with L{ChunkNotFound}, L{ChecksumMismatch} (damaged or
            unreadable) or L{Busy} (the store is closing).
        """
        if self._closed:
            return fail(Busy("the store is closing"))
        location = self._index.get(file_id)
        if location is None:
            return fail(ChunkNotFound(f"no chunk {file_id}"))
        volume_id, record_offset, size, crc = location
        volume = self._volumes[volume_id]
        volume.pin()
        fd = self._direct_fd(volume)
        if fd is None:
            d = self._run_in_thread(read_record, self._disk, volume.fd, record_offset,
                                    file_id, size, crc)
        else:
            buffer = self._staging.take()
            d = self._run_in_thread(read_record_direct, self._disk, fd, record_offset,
                                    file_id, size, crc, [buffer], self._block)
            d.addBoth(_giving_back, self._staging, buffer)

        def checked(ok):
            volume.unpin()
            self.counters["verified"] += 1
            self.counters["bytes_verified"] += size
            if not ok:
                self._drop_damaged(file_id, location)
                raise ChecksumMismatch(f"chunk {file_id} is damaged")
            return ChunkInfo(file_id, size, crc)

        def unreadable(failure):
            volume.unpin()
            failure.trap(OSError)
            self.counters["checksum_errors"] += 1
            self.log.error("cannot read chunk {file_id}: {e}", file_id=file_id, e=failure.value)
            raise ChecksumMismatch(f"chunk {file_id} is unreadable: {failure.value}")

        return d.addCallbacks(checked, unreadable)

    def _verify(self, volume, record_offset, file_id, size, crc):
        """
        Read and check one record: on the reactor thread when it is small
        and wholly in the page cache (a thread hop costs the reactor more
        than the check), else in a thread, so a 16 MiB verify never stalls
        the reactor.  A record of at least C{direct_io_threshold} bytes is
        read with direct I/O, into staging buffers it keeps (a
        L{StagedSpan}) while the store's C{staged_read_limit} allows, else
        into one reused buffer.

        @return: a Deferred firing with C{(ok, raw, staged)}: whether the
            record checks out, its bytes when they were read inline (else
            None), and the L{StagedSpan} holding them when they were
            staged (else None; the caller releases it).
        """
        span = HEADER_SIZE + size
        if span <= INLINE_VERIFY_LIMIT:
            try:
                raw = self._disk.pread_cached(volume.fd, span, record_offset)
            except Exception:
                return fail()
            if raw is not None:
                return succeed((check_record(raw, file_id, size, crc), raw, None))
        fd = None
        if size >= self.direct_io_threshold:
            fd = self._direct_fd(volume)
        if fd is None:
            d = self._run_in_thread(read_record, self._disk, volume.fd,
                                    record_offset, file_id, size, crc)
            return d.addCallback(lambda ok: (ok, None, None))
        # A large record is read past the page cache, so a cold GET costs
        # no fresh page-cache pages for the check.
        pool = self._staging
        windows = direct_windows(record_offset, size, pool.size, self._block)
        staged = None
        if self._staged_bytes + windows * pool.size <= self.staged_read_limit:
            # Each window into a buffer of its own, kept for the body.
            staged = StagedSpan(self, [pool.take() for _ in range(windows)],
                                 record_offset % self._block)
            buffers = staged.buffers
        else:
            # Over the cap: one reused buffer; the body goes by sendfile.
            buffers = [pool.take()]
        d = self._run_in_thread(read_record_direct, self._disk, fd,
                                record_offset, file_id, size, crc,
                                buffers, self._block)

        def verified(ok):
            if staged is None:
                pool.give(buffers[0])
            return ok, None, staged

        def failed(failure):
            if staged is None:
                pool.give(buffers[0])
            else:
                staged.release()
            return failure

        return d.addCallbacks(verified, failed)


def _giving_back(result, pool, buffer):
    """Give a staging buffer back to its pool once the thread reading into
    it is done, and pass the result on."""
    pool.give(buffer)
    return result


@implementer(IChunkRead)
class ChunkRead:
    """
    A verified byte range of a chunk; its volume stays open until released.
    A range verified on the reactor thread keeps the bytes it was checked
    with (C{cached}, at most L{INLINE_VERIFY_LIMIT}), so C{read} does not
    read them again.  A staged read (C{staged}, a L{StagedSpan}) keeps the
    staging buffers its direct verify read the record into: C{read} copies
    from them, L{staged} hands them over for sending without a copy, and
    C{fileno} raises C{OSError} (a C{sendfile} would read the disk again).
    """

    def __init__(self, disk, volume, info, data_offset, offset, length,
                 cached=None, staged=None):
        self._disk = disk
        self._volume = volume
        self._data_offset = data_offset
        self._cached = cached
        self._staged = staged
        self.info = info
        self.offset = offset
        self.length = length
        self._released = False

    def fileno(self):
        if self._staged is not None:
            raise OSError("the range is in staging buffers; send it from there")
        return self._volume.fd

    def file_offset(self):
        return self._data_offset + self.offset

    def staged(self):
        """
        @return: None, or for a staged read, memoryviews of the range's
            bytes in order (valid until L{release}; send them, don't keep
            them).
        """
        if self._staged is None or self._released:
            return None
        return self._staged.views(HEADER_SIZE + self.offset, self.length)

    def read(self, position, size):
        size = min(size, self.length - position)
        if size <= 0:
            return b""
        if self._cached is not None:
            return bytes(self._cached[position:position + size])
        if self._staged is not None:
            if self._released:
                raise OSError("read of a released range")
            views = self._staged.views(HEADER_SIZE + self.offset + position, size)
            return b"".join(views)
        return self._disk.pread(self._volume.fd, size, self.file_offset() + position)

    def release(self):
        if not self._released:
            self._released = True
            self._cached = None
            if self._staged is not None:
                self._staged.release()
            self._volume.unpin()
