# -*- test-case-name: speedy.test.test_direct_io,speedy.test.test_chunk_cache -*-
"""
The memory a chunk's bytes pass through on their way to and from the disk
with direct I/O: page-aligned staging buffers (L{StagingPool}), the direct
region of a record (L{DirectRegion}), the buffers a large GET keeps
(L{StagedSpan}), and the store's side of them (L{DirectIO}: probing
C{O_DIRECT}, opening direct descriptors, reserving the chunk cache).

Direct I/O (C{direct_io="auto"}, where the file system allows C{O_DIRECT}):
copying chunk bodies into fresh page-cache pages is most of a chunkserver's
CPU in a VM (C{perf}: 46% in C{copy_folio_from_iter_atomic}), so the body of
a record of at least C{direct_io_threshold} bytes is copied into reused,
page-aligned staging buffers (L{StagingPool}) and written with C{pwrite} on
a second, C{O_DIRECT} descriptor of the volume (L{DirectRegion}).  Only
whole blocks strictly inside a record's data go direct; see
L{DirectRegion} for why the page cache stays coherent.

The chunk cache (L{speedy.chunkserver.cache}, C{cache_size} bytes, 0 for
none): a PUT asked to keep its chunk (C{put(..., keep=True)}, the wire's
C{KEEP} flag) whose record has a direct region keeps the staging buffers
its direct writes were made from, instead of giving them back, and copies
of its few bytes before and after that region; once the record is
published, they become the chunk's
L{speedy.chunkserver.cache.CachedChunk}.  A GET of a cached chunk is
answered at once from those buffers, like a staged read (C{staged} is a
lease of the entry): no disk read, no verify, since the bytes were checked
against the client's CRC32C as they arrived.  Entries are evicted least
recently used first, dropped when their chunk is deleted and cleared when
the store closes; compaction moves records without changing their bytes,
so it leaves them be.  A buffer evicted while a GET sends from it goes
back to the pool when that GET's read is released.  A write that fails or
is aborted gives every buffer it kept back, once.  Repeated puts and
records written wholly buffered are never cached.  C{cache_hits} counts the
GETs answered from the cache, C{cache_misses} the GETs of records of at
least C{direct_io_threshold} bytes that were not, while the cache is on.
"""

import errno
import mmap

from twisted.internet.defer import succeed

from speedy.chunkserver.cache import ChunkCache
from speedy.chunkserver.volume import HEADER_SIZE

#: The smallest alignment of direct I/O the store uses (the page size); a
#: file system with larger blocks (C{statvfs} C{f_bsize}) raises it.
DIRECT_IO_BLOCK = 4096

#: Size of one staging buffer: the unit of a direct write (1 MiB writes
#: keep the device busy; smaller ones each wait for it).
STAGING_SIZE = 1 << 20

#: Idle staging buffers a store keeps for reuse; more are made when needed
#: and dropped when given back (their memory is touched only once).
STAGING_POOL_SIZE = 32


class DirectIO:
    """
    The L{speedy.chunkserver.store.ChunkStore}'s direct-I/O set-up: the
    alignment, the staging pool, each volume's C{O_DIRECT} descriptor, and
    the chunk cache's memory.  Uses the store's C{_disk}, C{data_dir},
    C{direct_io}, C{direct_io_threshold}, C{staged_read_limit},
    C{cache_size} and C{_closed}; sets C{_block}, C{_staging} and C{_cache}.
    """

    def _setup_direct_io(self):
        """Find the alignment direct I/O needs here, and size the staging
        buffers to it."""
        if not self.direct_io:
            return
        try:
            self._block = max(DIRECT_IO_BLOCK, self._disk.block_size(self.data_dir))
        except OSError as e:
            self.log.info("cannot read the block size under {path} ({e});"
                          " assuming {block}", path=self.data_dir, e=e,
                          block=self._block)
        size = max(STAGING_SIZE, 2 * self._block)
        size -= size % self._block
        self._staging = StagingPool(
            size, STAGING_POOL_SIZE + self.staged_read_limit // size)
        if self.cache_size:
            self._cache = self._staging.cache = ChunkCache(
                self.cache_size, self._staging.give)

    def _direct_fd(self, volume):
        """
        The first call of a store is its probe: a file system refusing
        C{O_DIRECT} (C{EINVAL}: tmpfs, some FUSE and network file systems)
        turns direct I/O off for good, logged once.

        @return: C{volume}'s C{O_DIRECT} descriptor (opened on first use),
            or None: go through the page cache.
        """
        if not self.direct_io or volume.retired or volume.closed:
            # A retired volume's path names its compacted copy now.
            return None
        if volume.direct_fd is None:
            try:
                volume.direct_fd = self._disk.open_direct(volume.path)
            except OSError as e:
                if e.errno in (errno.EINVAL, errno.EOPNOTSUPP):
                    self.direct_io = False
                    self.log.info(
                        "the file system under {path} refuses O_DIRECT ({e});"
                        " writing through the page cache", path=self.data_dir, e=e)
                else:
                    self.log.error(
                        "cannot open {path} for direct I/O ({e}); using the"
                        " page cache for now", path=volume.path, e=e)
                return None
        return volume.direct_fd

    def _direct_region(self, volume, offset, size):
        """
        @return: the L{DirectRegion} of a new record of C{size} data bytes
            at C{offset}, or None when it is written wholly buffered.
        """
        if not self.direct_io or size < self.direct_io_threshold:
            return None
        block = self._block
        data = offset + HEADER_SIZE
        start = -(-data // block) * block
        end = (data + size) // block * block
        if end <= start:
            return None
        fd = self._direct_fd(volume)
        if fd is None:
            return None
        return DirectRegion(fd, start, end, block, self._staging)

    def reserve_cache(self):
        """
        Fault in the chunk cache's memory now, in a thread, and stock the
        staging pool with it, so that the first writes kept for the cache
        do not touch new memory on their way (in a VM, memory touched for
        the first time costs far more than memory reused).  The chunkserver
        calls this once it has started.

        @return: a Deferred firing with the number of buffers stocked (0
            without a cache, or when the store closed meanwhile).
        """
        cache, pool = self._cache, self._staging
        if cache is None or self._closed:
            return succeed(0)
        count = cache.budget // pool.size
        d = self._run_in_thread(populated_buffers, pool.size, count)

        def stock(buffers):
            if self._closed:
                return 0
            pool.reserved = max(pool.reserved, count * pool.size)
            before = pool.idle
            pool.stock(buffers)
            return pool.idle - before

        return d.addCallback(stock)


class StagingPool:
    """
    Page-aligned buffers (anonymous C{mmap}s) for direct I/O, reused: memory
    a VM touches for the first time is expensive, memory it reuses is not.
    At most C{keep} idle buffers are kept; beyond that a buffer given back is
    dropped (freed once nothing refers to it any more).  C{lent} counts the
    buffers taken and not given back yet.

    With a chunk cache (C{cache}, a L{ChunkCache} whose buffers come from
    this pool), up to as many more idle buffers are kept as the cache once
    held and holds no more (its C{peak} less its C{buffer_bytes}): buffers
    it evicts or drops are taken again by the next writes instead of being
    unmapped and new memory touched, and the cache and the idle buffers
    together never hold more than the cache's budget on top of C{keep}.
    Once L{stock} was given the cache's budget in buffers (C{reserved}
    bytes, L{speedy.chunkserver.store.ChunkStore.reserve_cache}), it is
    kept as if the cache had held it already.
    """

    def __init__(self, size, keep):
        self.size = size
        self._keep = keep
        self._idle = []
        self.lent = 0
        self.cache = None
        self.reserved = 0

    def take(self):
        """@return: a buffer of C{size} bytes."""
        self.lent += 1
        if self._idle:
            return self._idle.pop()
        return mmap.mmap(-1, self.size)

    def give(self, buffer):
        """Take back a buffer no thread uses any more."""
        self.lent -= 1
        if len(self._idle) < self._most_idle():
            self._idle.append(buffer)

    def stock(self, buffers):
        """Add new buffers, never lent, to the idle ones (as many as may
        be kept)."""
        room = max(0, self._most_idle() - len(self._idle))
        self._idle.extend(buffers[:room])

    @property
    def idle(self):
        """The number of idle buffers kept."""
        return len(self._idle)

    def _most_idle(self):
        keep = self._keep
        if self.cache is not None:
            held = max(self.cache.peak, self.reserved)
            keep += max(0, held - self.cache.buffer_bytes) // self.size
        return keep


def populated_buffers(size, count):
    """
    @return: C{count} staging buffers (shared anonymous C{mmap}s like the
        pool's own) of C{size} bytes, their pages faulted in by the kernel
        (C{MAP_POPULATE}).  Runs in a thread.
    """
    flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
    return [mmap.mmap(-1, size, flags=flags) for _ in range(count)]


class StagedSpan:
    """
    The block-aligned span of one record, read directly into staging
    buffers of the store's pool (one per window of
    L{speedy.chunkserver.volume.read_record_direct}) and kept to send the
    record's bytes from.  Positions are counted from
    the record's first header byte, which is byte C{skip} of the first
    window.  Its buffers count against the store's C{staged_read_limit}
    until they go back to the pool, each exactly once: those outside the
    range a GET sends when it is verified (L{keep}), the others when its
    read is released (L{release}).
    """

    def __init__(self, store, buffers, skip):
        self._store = store
        self._pool = store._staging
        self.buffers = buffers
        self._origin = -skip  # record position of buffers[0][0]
        store._staged_bytes += len(buffers) * self._pool.size

    def _give(self, buffers):
        for buffer in buffers:
            self._pool.give(buffer)
        self._store._staged_bytes -= len(buffers) * self._pool.size

    def keep(self, start, length):
        """Give back the buffers holding no byte of C{[start, start + length)}."""
        size = self._pool.size
        first = (start - self._origin) // size
        last = -(-(start + length - self._origin) // size) if length else first
        self._give(self.buffers[:first] + self.buffers[last:])
        self.buffers = self.buffers[first:last]
        self._origin += first * size

    def views(self, start, length):
        """@return: memoryviews of the bytes C{[start, start + length)}, in
        order, no empty one."""
        size = self._pool.size
        views = []
        at = start - self._origin
        while length > 0:
            index, low = divmod(at, size)
            high = min(size, low + length)
            views.append(memoryview(self.buffers[index])[low:high])
            length -= high - low
            at += high - low
        return views

    def release(self):
        """Give every buffer still held back to the pool.  Idempotent."""
        buffers, self.buffers = self.buffers, []
        self._give(buffers)


class DirectRegion:
    """
    The whole blocks of a record's data that go straight to the disk:
    C{[start, end)}, both multiples of C{block}, through C{fd} (the volume's
    C{O_DIRECT} descriptor).  The data before C{start} shares its block with
    the record's header, the data after C{end} shares its block with the
    padding and the next record; those go through the page cache.

    Why the page cache stays coherent: the kernel keeps a file's cached pages
    and its direct writes consistent only when nobody writes one block both
    ways.  Every block of C{[start, end)} lies wholly inside this record's
    reserved span, so no other put (each streams into its own span), no
    header or tombstone (each in its own span) and no compaction (it copies
    a volume only when no put streams into it, writes buffered into a new
    file, and appends to the new file after its tail) ever writes to it
    through the page cache; this record's own buffered bytes are outside it
    by construction.  A direct write also drops any cached copy of its
    blocks, so a buffered read of them (a recovery scan) cannot see stale
    bytes.
    """

    def __init__(self, fd, start, end, block, pool):
        self.fd = fd
        self.start = start
        self.end = end
        self.block = block
        self.pool = pool


class Stage:
    """One staging buffer being filled with the bytes of file offsets
    C{base} onwards; the first C{sent} bytes are already on their way."""

    def __init__(self, buffer, base, limit):
        self.buffer = buffer
        self.base = base
        self.limit = limit
        self.fill = 0
        self.sent = 0
