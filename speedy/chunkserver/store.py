# -*- test-case-name: speedy.test.test_store,speedy.test.test_direct_io -*-
"""
The chunkserver's storage engine: chunks appended to preallocated volume
files (L{speedy.chunkserver.volume}), found through a compact in-memory
index (L{speedy.chunkserver.needle_index}), made durable by group commit
(L{speedy.chunkserver.group_commit}), restarted from an index checkpoint
plus the journal that follows it (L{speedy.chunkserver.checkpoint}), and
compacted online (L{speedy.chunkserver.compaction}).

Threads: the pieces of a PUT (a writer throttled by the kernel's dirty-page
limits must not stall the reactor), C{fdatasync}, checkpoint writes, the
CRC32C check of a GET of more than L{INLINE_VERIFY_LIMIT} bytes (or of one
not in the page cache) and the copying of a compaction run through
C{run_in_thread} (by default the reactor's thread pool; tests pass one that
runs inline).  A small GET whose record is in the page cache is read with
C{RWF_NOWAIT} and checked on the reactor thread, which costs it less than a
thread hop.  The 40-byte record headers are written on the reactor thread,
in order, so the log never has a hole (see C{bench/bench_store.py} for the
costs).  C{IChunkRead.read}, the fallback for transports that cannot
sendfile, serves the bytes a small GET was checked with, those a large GET
kept from its direct verify (a staged read, below), or is a C{pread} of the
bytes a large GET just verified.  All in-memory state is touched on
the reactor thread only.

Direct I/O (C{direct_io="auto"}, where the file system allows C{O_DIRECT}):
copying chunk bodies into fresh page-cache pages is most of a chunkserver's
CPU in a VM (C{perf}: 46% in C{copy_folio_from_iter_atomic}), so the body of
a record of at least C{direct_io_threshold} bytes is copied into reused,
page-aligned staging buffers (L{_StagingPool}) and written with C{pwrite} on
a second, C{O_DIRECT} descriptor of the volume (L{_DirectRegion}).  Only
whole blocks strictly inside a record's data go direct; see
L{_DirectRegion} for why the page cache stays coherent.

A large GET verifies its record with direct reads (L{read_record_direct})
into staging buffers, one per 1 MiB window, and keeps them: the read is
then "staged" (L{_StagedSpan}), its bytes are sent from those buffers
(L{speedy.wire.sendfile.StagedBody}) and the record is read from the disk
once per GET.  Sending it with C{sendfile} instead would read it a second
time: its direct-written blocks are never in the page cache.  The staged
bytes of all GETs in flight are capped (C{staged_read_limit}); a GET that
would pass the cap verifies with one reused buffer and is sent with
C{sendfile}, as is every GET with direct I/O off.  Every buffer goes back
to the pool once, when the read is released.

The chunk cache (L{speedy.chunkserver.cache}, C{cache_size} bytes, 0 for
none): a PUT asked to keep its chunk (C{put(..., keep=True)}, the wire's
C{KEEP} flag) whose record has a direct region keeps the staging buffers
its direct writes were made from, instead of giving them back, and copies
of its few bytes before and after that region; once the record is
published, they become the chunk's L{CachedChunk}.  A GET of a cached chunk
is answered at once from those buffers, like a staged read (C{staged} is a
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
import os

from twisted.internet.defer import Deferred, DeferredLock, fail, succeed
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from speedy.chunkserver import compaction
from speedy.chunkserver.cache import CachedChunk, ChunkCache
from speedy.chunkserver.checkpoint import (
    Checkpoint, CorruptCheckpoint, VolumeState, read_checkpoint,
    write_checkpoint)
from speedy.chunkserver.disk import Disk
from speedy.chunkserver.group_commit import GroupCommit
from speedy.chunkserver.needle_index import NeedleIndex
from speedy.chunkserver.volume import (
    COMPLETE, DAMAGED, DATA_START, HEADER_SIZE, MAX_VOLUME_SIZE, RECORD,
    TOMBSTONE, TOMBSTONE_SPAN, TORN, DamagedVolume, RecordHeader, Volume,
    check_record, crc32c, direct_windows, parse_volume_file_name, read_record,
    read_record_direct, record_span, scan_records, volume_file_name)
from speedy.errors import (
    BadRequest, Busy, ChecksumMismatch, ChunkExists, ChunkNotFound, NoSpace,
    RangeNotSatisfiable, ReadOnly, TooLarge)
from speedy.interfaces import IChunkRead, IChunkStore, IChunkWrite
from speedy.records import ChunkInfo

SYNC_POLICIES = ("always", "batch", "none")

#: Default free-space reserve: below this many free bytes the store turns
#: read-only.
DEFAULT_RESERVE = 2**30

#: Default largest chunk (the imageservers cut 16 MiB chunks).
DEFAULT_MAX_CHUNK_SIZE = 64 * 2**20

#: Records (header and data) up to this size are read and checked on the
#: reactor thread when the page cache holds them.  Below it the check costs
#: the reactor less than a thread hop does (~20 us); above it the cost grows
#: with the size (C{bench/bench_store.py}, "GET verify").
INLINE_VERIFY_LIMIT = 128 * 1024

#: "auto": direct I/O for large records where the file system allows it;
#: "off": everything through the page cache.
DIRECT_IO_MODES = ("auto", "off")

#: Records with fewer data bytes than this are written and verified through
#: the page cache only (a direct write waits for the device; for a small
#: record that costs more than the copy it saves).
DIRECT_IO_THRESHOLD = 256 * 1024

#: The smallest alignment of direct I/O the store uses (the page size); a
#: file system with larger blocks (C{statvfs} C{f_bsize}) raises it.
DIRECT_IO_BLOCK = 4096

#: Size of one staging buffer: the unit of a direct write (1 MiB writes
#: keep the device busy; smaller ones each wait for it).
STAGING_SIZE = 1 << 20

#: Idle staging buffers a store keeps for reuse; more are made when needed
#: and dropped when given back (their memory is touched only once).
STAGING_POOL_SIZE = 32

#: Default cap on the staging-buffer bytes that all staged GETs of one store
#: hold at once (their records' bytes, kept from the verify until the body
#: is sent).  The pool keeps that many buffers idle too, on top of
#: L{STAGING_POOL_SIZE}.
STAGED_READ_LIMIT = 64 * 2**20

#: Default budget of the chunk cache (L{ChunkCache}): the bytes of recently
#: written chunks kept in memory to answer GETs from.
CACHE_SIZE = 512 * 2**20

COUNTERS = (
    "reads", "writes", "deletes", "bytes_read", "bytes_written",
    "checksum_errors", "damaged_records", "torn_records", "damaged_volumes",
    "corrupt_checkpoints", "nospace_errors", "sync_errors", "compactions",
    "bytes_compacted_away", "cache_hits", "cache_misses")


def thread_pool_runner(reactor):
    """
    @return: a C{run_in_thread(f, *args)} that runs C{f} in C{reactor}'s
        thread pool and returns a Deferred of its result.
    """
    pool = reactor.getThreadPool()

    def run_in_thread(f, *args):
        return deferToThreadPool(reactor, pool, f, *args)

    return run_in_thread


@implementer(IChunkStore)
class ChunkStore:
    """
    A directory of volume files and the index over them.  Build one with
    L{open}; the constructor only wires its parts together.
    """

    log = Logger()

    def __init__(self, reactor, data_dir, disk, run_in_thread, volume_size,
                 sync, reserve, compact_threshold, max_chunk_size,
                 checkpoint_interval, compact_interval, space_check_interval,
                 direct_io="off", direct_io_threshold=DIRECT_IO_THRESHOLD,
                 staged_read_limit=STAGED_READ_LIMIT, cache_size=CACHE_SIZE):
        self._reactor = reactor
        self.data_dir = data_dir
        self._disk = disk
        self._run_in_thread = run_in_thread
        self.volume_size = volume_size
        self.sync = sync
        self.reserve = reserve
        self.compact_threshold = compact_threshold
        self.max_chunk_size = max_chunk_size
        self._max_span = record_span(max_chunk_size)
        self._intervals = (checkpoint_interval, compact_interval, space_check_interval)
        self._index = NeedleIndex()
        self._volumes = {}
        self._next_volume_id = 1
        self._sequence = 0
        self._changes = 0
        self._repaired = False
        self._drain_waiters = {}
        self._group_commit = GroupCommit(run_in_thread, disk, data_dir)
        self._checkpoint_lock = DeferredLock()
        self._compaction_lock = DeferredLock()
        self._loops = []
        self._closed = False
        self.read_only = False
        self.counters = dict.fromkeys(COUNTERS, 0)
        self.direct_io = direct_io == "auto"
        self.direct_io_threshold = direct_io_threshold
        self._block = DIRECT_IO_BLOCK
        self._staging = None
        self.staged_read_limit = staged_read_limit
        self._staged_bytes = 0
        self.cache_size = cache_size
        self._cache = None

    @classmethod
    def open(cls, reactor, data_dir, volume_size=2 * 2**30, sync="always",
             reserve=DEFAULT_RESERVE, compact_threshold=0.3, *,
             max_chunk_size=DEFAULT_MAX_CHUNK_SIZE, run_in_thread=None,
             disk=None, checkpoint_interval=60.0, compact_interval=15 * 60.0,
             space_check_interval=10.0, direct_io="auto",
             direct_io_threshold=DIRECT_IO_THRESHOLD,
             staged_read_limit=STAGED_READ_LIMIT, cache_size=CACHE_SIZE):
        """
        Open (creating if needed) the store in C{data_dir}: load the index
        checkpoint and replay the journal that follows it, or scan every
        volume when there is no usable checkpoint.  Synchronous; damaged
        data is logged, counted and skipped, never raised.

        @param reactor: provides C{IReactorTime} (and C{IReactorThreads}
            unless C{run_in_thread} is given).
        @param sync: "always" (a write is acknowledged after fdatasync),
            "batch" (acknowledged at once, synced every second) or "none"
            (left to the operating system).
        @param reserve: free bytes below which the store turns read-only,
            or a fraction (below 1) of the file system's size.
        @param max_chunk_size: the largest chunk C{put} accepts.
        @param run_in_thread: C{f(callable, *args)} returning a Deferred of
            its result; tests pass one that runs inline.
        @param disk: the L{Disk} whose system calls the store makes.
        @param direct_io: "auto" (write and verify records of at least
            C{direct_io_threshold} data bytes with C{O_DIRECT} when the file
            system allows it) or "off".
        @param staged_read_limit: the staging-buffer bytes that GETs
            verified with direct reads may keep, all together, to send the
            records from (a GET beyond it is verified with one reused buffer
            and sent with C{sendfile}, reading the record twice); 0 keeps
            none.
        @param cache_size: the bytes of recently written chunks (those put
            with C{keep}) kept in memory to answer GETs from; 0 keeps none.
            Only with direct I/O.
        @return: a ready L{ChunkStore}.
        @raise ValueError: for impossible settings.
        """
        if sync not in SYNC_POLICIES:
            raise ValueError(f"sync must be one of {SYNC_POLICIES}, not {sync!r}")
        if not DATA_START + 4 * TOMBSTONE_SPAN <= volume_size <= MAX_VOLUME_SIZE:
            raise ValueError(f"volume size {volume_size} out of range")
        if not 0 < compact_threshold <= 1:
            raise ValueError("compact_threshold must be in (0, 1]")
        if reserve < 0:
            raise ValueError("reserve must not be negative")
        if staged_read_limit < 0:
            raise ValueError("staged_read_limit must not be negative")
        if cache_size < 0:
            raise ValueError("cache_size must not be negative")
        if direct_io not in DIRECT_IO_MODES:
            raise ValueError(f"direct_io must be one of {DIRECT_IO_MODES}, not {direct_io!r}")
        largest = volume_size - DATA_START - HEADER_SIZE - 2 * TOMBSTONE_SPAN
        max_chunk_size = min(max_chunk_size, largest) & ~7
        if run_in_thread is None:
            run_in_thread = thread_pool_runner(reactor)
        store = cls(reactor, data_dir, disk or Disk(), run_in_thread,
                    volume_size, sync, reserve, compact_threshold,
                    max_chunk_size, checkpoint_interval, compact_interval,
                    space_check_interval, direct_io, direct_io_threshold,
                    staged_read_limit, cache_size)
        store._recover()
        store._setup_direct_io()
        store._check_space()
        return store

    # --- recovery ------------------------------------------------------

    def _recover(self):
        disk = self._disk
        disk.makedirs(self.data_dir)
        volumes = self._volumes = self._open_volumes()
        checkpoint = self._load_checkpoint()
        states = {}
        after = 0
        if checkpoint is not None:
            states = {state.volume_id: state for state in checkpoint.volumes}
            after = self._sequence = checkpoint.sequence
        for volume_id in sorted(set(states) - set(volumes)):
            lost = self._index.drop_volume(volume_id)
            self._repaired = True
            self.log.error(
                "volume {volume_id} is missing: {lost} chunks lost",
                volume_id=volume_id, lost=lost)
        pending = []
        for volume in volumes.values():
            state = states.get(volume.volume_id)
            if state is not None and state.generation == volume.generation:
                volume.live_bytes = state.live_bytes
                volume.live_count = state.live_count
                volume.tail = state.replay_start
                replay_after = after
            else:
                if state is not None:
                    self.log.info(
                        "volume {volume_id} was compacted after the checkpoint;"
                        " rescanning it", volume_id=volume.volume_id)
                    self._index.drop_volume(volume.volume_id)
                    self._repaired = True
                replay_after = 0
            self._drop_beyond_end(volume)
            pending.extend(self._replay_volume(volume, replay_after))
        pending.sort(key=lambda item: item[0])
        for sequence, volume, offset, header in pending:
            self._apply(volume, offset, header)
        if self._repaired:
            # The old checkpoint no longer describes the files: replace it
            # before anything is written where the damage was.
            self._write_checkpoint(list(volumes.values()), self._snapshot())
            self._changes = 0

    def _open_volumes(self):
        """@return: {volume id: L{Volume}} of every readable volume file."""
        volumes = {}
        for name in sorted(self._disk.listdir(self.data_dir)):
            path = os.path.join(self.data_dir, name)
            if name.endswith((".cpd", ".tmp")):
                self.log.info("removing leftover {name}", name=name)
                self._disk.unlink(path)
                continue
            volume_id = parse_volume_file_name(name)
            if volume_id is None:
                continue
            self._next_volume_id = max(self._next_volume_id, volume_id + 1)
            try:
                volume = Volume.open(self._disk, path)
            except (DamagedVolume, OSError) as e:
                self.counters["damaged_volumes"] += 1
                self.log.error("volume file {path} is unusable ({e}); skipping it",
                               path=path, e=e)
                continue
            if volume.volume_id != volume_id:
                self.counters["damaged_volumes"] += 1
                self.log.error("volume file {path} claims to be volume {other};"
                               " skipping it", path=path, other=volume.volume_id)
                volume.close()
                continue
            volumes[volume_id] = volume
        return volumes

    def _load_checkpoint(self):
        """@return: the usable L{Checkpoint}, or None (then every volume is scanned)."""
        try:
            checkpoint = read_checkpoint(self._disk, self.data_dir)
            if checkpoint is not None:
                self._index = NeedleIndex.from_runs(checkpoint.runs)
            return checkpoint
        except (CorruptCheckpoint, ValueError, OSError) as e:
            self.counters["corrupt_checkpoints"] += 1
            self._repaired = True
            self.log.error("index checkpoint unusable ({e}); scanning every volume",
                           e=e)
            self._index = NeedleIndex()
            self._sequence = 0
            return None

    def _drop_beyond_end(self, volume):
        """A volume file shorter than its superblock says lost its end:
        forget the chunks that were there and make the file whole again."""
        length = self._disk.file_size(volume.fd)
        if length >= volume.size:
            return
        self.log.error("volume {volume_id} is truncated to {length} bytes",
                       volume_id=volume.volume_id, length=length)
        self._repaired = True
        lost = [(fid, offset, size) for fid, vid, offset, size, _ in self._index.items()
                if vid == volume.volume_id and offset + record_span(size) > length]
        for file_id, offset, size in lost:
            self._index.remove(file_id)
            volume.live_bytes -= record_span(size)
            volume.live_count -= 1
            self.counters["damaged_records"] += 1
        volume.tail = min(volume.tail, length - length % 8)
        try:
            self._disk.allocate(volume.fd, volume.size)
        except OSError as e:
            self.log.error("cannot re-extend volume {volume_id}: {e}",
                           volume_id=volume.volume_id, e=e)
            volume.size = length

    def _replay_volume(self, volume, after):
        """
        Scan C{volume} from its tail, setting the tail to the end of its log.

        @return: C{(sequence, volume, offset, header)} of every complete
            record whose sequence is above C{after}.
        """
        found = []
        limit = min(volume.size, self._disk.file_size(volume.fd))
        events = scan_records(self._disk, volume.fd, volume.tail, limit,
                              self._max_span,
                              verify=lambda header: header.sequence > after)
        for event in events:
            if event.kind == RECORD:
                header = event.header
                self._sequence = max(self._sequence, header.sequence)
                if header.complete and header.sequence > after:
                    found.append((header.sequence, volume, event.offset, header))
                volume.tail = event.end
            elif event.kind == DAMAGED:
                self.counters["damaged_records"] += 1
                self.log.error(
                    "damaged record in volume {volume_id} at {offset}"
                    " ({size} bytes skipped)", volume_id=volume.volume_id,
                    offset=event.offset, size=event.end - event.offset)
                volume.tail = event.end
            elif event.kind == TORN:
                self.counters["torn_records"] += 1
                self.log.info(
                    "truncated a torn record in volume {volume_id} at {offset}",
                    volume_id=volume.volume_id, offset=event.offset)
                volume.tail = event.offset
        return found

    def _apply(self, volume, offset, header):
        """Apply one replayed record to the index and the accounting."""
        file_id = header.file_id
        if header.tombstone:
            current = self._index.get(file_id)
            if current is not None and current[0] == volume.volume_id:
                self._index.remove(file_id)
                volume.live_bytes -= record_span(current[2])
                volume.live_count -= 1
            return
        previous = self._index.set(file_id, volume.volume_id, offset,
                                   header.size, header.crc32c)
        volume.live_bytes += header.span
        volume.live_count += 1
        if previous is not None:
            self._forget_location(previous)

    def _forget_location(self, location):
        volume_id, _, size, _ = location
        volume = self._volumes.get(volume_id)
        if volume is not None:
            volume.live_bytes -= record_span(size)
            volume.live_count -= 1

    # --- direct I/O ----------------------------------------------------

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
        self._staging = _StagingPool(
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
        @return: the L{_DirectRegion} of a new record of C{size} data bytes
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
        return _DirectRegion(fd, start, end, block, self._staging)

    # --- timers --------------------------------------------------------

    def start(self):
        """Start the periodic checkpoint, compaction and free-space checks."""
        checkpoint_interval, compact_interval, space_interval = self._intervals
        loops = [
            (self._periodic_checkpoint, checkpoint_interval),
            (self._periodic_compaction, compact_interval),
            (self._check_space, space_interval),
        ]
        if self.sync == "batch":
            loops.append((self._periodic_sync, 1.0))
        for function, interval in loops:
            loop = LoopingCall(function)
            loop.clock = self._reactor
            loop.start(interval, now=False).addErrback(
                self._log_failure, "storage timer stopped")
            self._loops.append(loop)

    def _log_failure(self, failure, what):
        self.log.failure(what, failure)

    def _periodic_checkpoint(self):
        if self._changes:
            self.checkpoint().addErrback(self._log_failure, "checkpoint failed")

    def _periodic_compaction(self):
        self.compact().addErrback(self._log_failure, "compaction failed")

    def _periodic_sync(self):
        self._group_commit.flush().addErrback(self._log_failure, "batch sync failed")

    def _check_space(self):
        """Turn read-only below the free-space reserve, and back above it."""
        try:
            total, available = self._disk.space(self.data_dir)
        except OSError as e:
            self.log.error("cannot check free space: {e}", e=e)
            return
        reserve = self._reserve_bytes(total)
        read_only = available < reserve
        if read_only != self.read_only:
            self.log.warn(
                "{available} bytes free, reserve {reserve}: {state}",
                available=available, reserve=reserve,
                state="read-only" if read_only else "writable again")
            self.read_only = read_only

    def _reserve_bytes(self, total):
        return int(self.reserve * total) if self.reserve < 1 else int(self.reserve)

    # --- writes --------------------------------------------------------

    def put(self, file_id, size, keep=False):
        if self._closed:
            raise Busy("the store is closing")
        if self.read_only:
            raise ReadOnly("below the free-space reserve")
        if not 0 <= file_id < 2**64 or size < 0:
            raise BadRequest(f"bad file id {file_id} or size {size}")
        if size > self.max_chunk_size:
            raise TooLarge(f"{size} bytes exceeds the {self.max_chunk_size}-byte limit")
        if self._index.get(file_id) is not None:
            return _RepeatedWrite(self, file_id, size)
        span = record_span(size)
        volume = self._writable_volume(span)
        offset = volume.append(span)
        try:
            self._disk.pwrite(volume.fd, RecordHeader(0, file_id, 0, size, 0).pack(), offset)
        except OSError as e:
            volume.tail = offset
            raise self._no_space(e)
        volume.reservations.add(offset)
        region = self._direct_region(volume, offset, size)
        keep = keep and region is not None and self._cache is not None
        return _ChunkWrite(self, volume, offset, file_id, size, region, keep)

    def _writable_volume(self, span):
        """
        @return: the first volume with room for C{span} more bytes, creating
            one if none has.
        @raise NoSpace: when no volume can be made.
        """
        for volume_id in sorted(self._volumes):
            volume = self._volumes[volume_id]
            if not volume.compacting and volume.room() >= span:
                return volume
        try:
            total, available = self._disk.space(self.data_dir)
            if available - self.volume_size < self._reserve_bytes(total):
                raise NoSpace("no room for another volume above the reserve")
            volume_id = self._next_volume_id
            path = os.path.join(self.data_dir, volume_file_name(volume_id))
            volume = Volume.create(self._disk, path, volume_id, self.volume_size)
        except OSError as e:
            raise self._no_space(e)
        except NoSpace:
            self.counters["nospace_errors"] += 1
            raise
        self._next_volume_id += 1
        self._volumes[volume_id] = volume
        self.log.info("created volume {volume_id}", volume_id=volume_id)
        return volume

    def _no_space(self, error):
        """Count and log a failed write.  @return: the L{NoSpace} to raise."""
        self.counters["nospace_errors"] += 1
        self.log.error("write failed: {error}", error=error)
        return NoSpace(str(error))

    def _next_sequence(self):
        self._sequence += 1
        self._changes += 1
        return self._sequence

    def _durable(self, volume):
        """
        @return: a Deferred firing with None once C{volume}'s bytes are as
            durable as the sync policy promises.

        The group commit's C{fdatasync} of the volume's buffered descriptor
        covers the direct writes too: C{fdatasync} acts on the inode, not
        the descriptor.  A direct C{pwrite} has returned only once the
        device took the data (possibly into its volatile cache), and it
        returned before C{finish} could ask for this sync; the sync then
        writes the inode's metadata those writes need (ext4 converting the
        preallocated, unwritten extents to written ones) and flushes the
        device's cache.
        """
        if self.sync == "always":
            d = self._group_commit.sync(volume)

            def failed(failure):
                failure.trap(OSError)
                self.counters["sync_errors"] += 1
                raise NoSpace(f"fdatasync failed: {failure.value}")

            return d.addErrback(failed)
        self._group_commit.mark_dirty(volume)
        return succeed(None)

    def _complete(self, write):
        """Make a fully streamed put visible.  @return: Deferred of its ChunkInfo."""
        try:
            return self._publish(write)
        finally:
            # Last: a compaction waiting for this volume to drain may start now.
            self._release_reservation(write.volume, write.offset)

    def _publish(self, write):
        volume, offset = write.volume, write.offset
        info = ChunkInfo(write.file_id, write.size, write.crc)
        existing = self._index.get(write.file_id)
        if existing is not None:
            # Another put of this id finished first; ours is garbage.
            write.drop_kept()
            return self._compare(write.file_id, info)
        header = RecordHeader(COMPLETE, write.file_id, self._next_sequence(),
                              write.size, write.crc)
        try:
            self._disk.pwrite(volume.fd, header.pack(), offset)
        except OSError as e:
            write.drop_kept()
            return fail(self._no_space(e))
        self._index.set(write.file_id, volume.volume_id, offset, write.size, write.crc)
        entry = write.take_kept()
        if entry is not None:
            self._cache.add(write.file_id, entry)
        volume.live_bytes += header.span
        volume.live_count += 1
        self.counters["writes"] += 1
        self.counters["bytes_written"] += write.size
        return self._durable(volume).addCallback(lambda _: info)

    def _compare(self, file_id, info):
        """
        A put of an id that is already stored: succeed if the bytes are the
        same (an idempotent retry), else fail with L{ChunkExists}.

        @return: a Deferred of the stored L{ChunkInfo}.
        """
        existing = self._index.get(file_id)
        if existing is None:
            return fail(Busy(f"chunk {file_id} was deleted during a retry of its put"))
        volume_id, _, size, crc = existing
        if (size, crc) != (info.size, info.crc32c):
            return fail(ChunkExists(f"a different chunk {file_id} is stored"))
        return self._durable(self._volumes[volume_id]).addCallback(lambda _: info)

    def _abandon(self, write):
        self._release_reservation(write.volume, write.offset)

    def _release_reservation(self, volume, offset):
        volume.reservations.discard(offset)
        if not volume.reservations:
            for d in self._drain_waiters.pop(volume, []):
                d.callback(None)

    def _drained(self, volume):
        """@return: a Deferred firing when no put is streaming into C{volume}."""
        if not volume.reservations:
            return succeed(None)
        d = Deferred()
        self._drain_waiters.setdefault(volume, []).append(d)
        return d

    def delete(self, file_id):
        if self._closed:
            return fail(Busy("the store is closing"))
        location = self._index.get(file_id)
        if location is None:
            return fail(ChunkNotFound(f"no chunk {file_id}"))
        volume_id, _, size, _ = location
        volume = self._volumes[volume_id]
        header = RecordHeader(COMPLETE | TOMBSTONE, file_id, self._next_sequence(), 0, 0)
        offset = volume.append(TOMBSTONE_SPAN)
        try:
            self._disk.pwrite(volume.fd, header.pack(), offset)
        except OSError as e:
            volume.tail = offset
            return fail(self._no_space(e))
        self._index.remove(file_id)
        if self._cache is not None:
            self._cache.drop(file_id)
        volume.live_bytes -= record_span(size)
        volume.live_count -= 1
        self.counters["deletes"] += 1
        return self._durable(volume)

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

    # --- reads ---------------------------------------------------------

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
                return succeed(_ChunkRead(
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
                self.counters["checksum_errors"] += 1
                self.log.error(
                    "chunk {file_id} in volume {volume_id} at {offset} is damaged",
                    file_id=file_id, volume_id=volume_id, offset=record_offset)
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
            return _ChunkRead(self._disk, volume, info, record_offset + HEADER_SIZE,
                              offset, length, cached, staged)

        def unreadable(failure):
            volume.unpin()
            failure.trap(OSError)
            self.counters["checksum_errors"] += 1
            self.log.error("cannot read chunk {file_id}: {e}",
                           file_id=file_id, e=failure.value)
            raise ChecksumMismatch(f"chunk {file_id} is unreadable: {failure.value}")

        return d.addCallbacks(checked, unreadable)

    def _verify(self, volume, record_offset, file_id, size, crc):
        """
        Read and check one record: on the reactor thread when it is small
        and wholly in the page cache (a thread hop costs the reactor more
        than the check), else in a thread, so a 16 MiB verify never stalls
        the reactor.  A record of at least C{direct_io_threshold} bytes is
        read with direct I/O, into staging buffers it keeps (a
        L{_StagedSpan}) while the store's C{staged_read_limit} allows, else
        into one reused buffer.

        @return: a Deferred firing with C{(ok, raw, staged)}: whether the
            record checks out, its bytes when they were read inline (else
            None), and the L{_StagedSpan} holding them when they were
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
            staged = _StagedSpan(self, [pool.take() for _ in range(windows)],
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

    def stat(self, file_id):
        location = self._index.get(file_id)
        if location is None:
            return None
        _, _, size, crc = location
        return ChunkInfo(file_id, size, crc)

    def file_ids(self):
        return iter(self._index)

    # --- status --------------------------------------------------------

    def status(self):
        total, available = self._disk.space(self.data_dir)
        volumes = [
            {"volume_id": v.volume_id, "size": v.size,
             "used": v.tail - DATA_START, "live": v.live_bytes,
             "garbage": v.garbage, "chunks": v.live_count,
             "compacting": v.compacting}
            for _, v in sorted(self._volumes.items())]
        room = sum(v.room() for v in self._volumes.values() if not v.compacting)
        free = room + max(0, available - self._reserve_bytes(total))
        counters = dict(self.counters, sync_rounds=self._group_commit.rounds)
        cache = self._cache
        return {
            "capacity": total,
            "used": sum(v["used"] for v in volumes),
            "free": 0 if self.read_only else free,
            "read_only": self.read_only,
            "chunks": len(self._index),
            "volumes": volumes,
            "counters": counters,
            "cache": ({"size": 0, "bytes": 0, "chunks": 0} if cache is None else
                      {"size": cache.budget, "bytes": cache.bytes, "chunks": cache.count}),
        }

    # --- checkpoints ---------------------------------------------------

    def checkpoint(self):
        """
        Write an index checkpoint (after syncing every volume, so that it
        never points at bytes that are not on disk).

        @return: a Deferred firing with None when it is durable.
        """
        return self._checkpoint_lock.run(
            lambda: Deferred.fromCoroutine(self._checkpoint()))

    def _snapshot(self):
        """@return: a L{Checkpoint} of the store as it is now."""
        return Checkpoint(
            self._sequence,
            tuple(VolumeState(v.volume_id, v.generation, v.replay_start(),
                              v.live_bytes, v.live_count)
                  for v in self._volumes.values()),
            self._index.runs())

    async def _checkpoint(self):
        volumes = list(self._volumes.values())
        snapshot = self._snapshot()
        changes = self._changes
        for volume in volumes:
            volume.pin()
        try:
            await self._run_in_thread(self._write_checkpoint, volumes, snapshot)
        finally:
            for volume in volumes:
                volume.unpin()
        self._changes -= changes

    def _write_checkpoint(self, volumes, snapshot):
        for volume in volumes:
            self._disk.fdatasync(volume.fd)
        write_checkpoint(self._disk, self.data_dir, snapshot)

    # --- compaction ----------------------------------------------------

    def compact(self, volume_id=None):
        return Deferred.fromCoroutine(self._compact(volume_id))

    async def _compact(self, volume_id):
        if volume_id is None:
            targets = sorted(
                v.volume_id for v in self._volumes.values()
                if v.garbage and v.garbage_ratio >= self.compact_threshold)
        elif volume_id in self._volumes:
            targets = [volume_id]
        else:
            raise BadRequest(f"no volume {volume_id}")
        freed = 0
        for target in targets:
            freed += await self._compaction_lock.run(
                lambda target=target: Deferred.fromCoroutine(self._compact_volume(target)))
        return freed

    async def _compact_volume(self, volume_id):
        """Compact one volume while reads and writes go on.  @return: bytes freed."""
        volume = self._volumes.get(volume_id)
        if volume is None or self._closed:
            return 0
        volume.compacting = True
        try:
            await self._drained(volume)
            copy = await compaction.copy_live(
                self._run_in_thread, self._disk, volume, self._is_live,
                self._max_span)
        except OSError as e:
            self.log.error("compaction of volume {volume_id} failed: {e}",
                           volume_id=volume_id, e=e)
            raise NoSpace(f"compaction of volume {volume_id} failed: {e}")
        finally:
            volume.compacting = False
        freed = volume.tail - copy.tail
        self._swap(volume, copy)
        self.counters["compactions"] += 1
        self.counters["bytes_compacted_away"] += freed
        self.log.info("compacted volume {volume_id}: {freed} bytes freed",
                      volume_id=volume_id, freed=freed)
        await self.checkpoint()
        return freed

    def _swap(self, volume, copy):
        """
        Put the compacted copy in the place of C{volume} in one reactor turn:
        rename it over the old file, point the index at the new offsets, and
        retire the old file (it closes when its last read is released).
        """
        volume_id = volume.volume_id
        try:
            self._disk.rename(copy.path, volume.path)
        except OSError as e:
            self._disk.close(copy.fd)
            self._disk.unlink(copy.path)
            raise NoSpace(f"compaction of volume {volume_id} failed: {e}")
        replacement = Volume(
            self._disk, volume.path, copy.fd, volume_id,
            volume.generation + 1, volume.size, tail=copy.tail,
            needs_directory_sync=True)
        kept = set()
        for file_id, old_offset, new_offset in copy.moved:
            location = self._index.get(file_id)
            if location is not None and location[:2] == (volume_id, old_offset):
                self._index.set(file_id, volume_id, new_offset, location[2], location[3])
                replacement.live_bytes += record_span(location[2])
                replacement.live_count += 1
                kept.add(file_id)
        if replacement.live_count != volume.live_count:
            # Live chunks the copy could not carry over (damaged bytes).
            for file_id, location_volume, offset, _, _ in list(self._index.items()):
                if location_volume == volume_id and file_id not in kept:
                    self._index.remove(file_id)
                    if self._cache is not None:
                        self._cache.drop(file_id)
                    self.counters["damaged_records"] += 1
                    self.log.error(
                        "chunk {file_id} in volume {volume_id} at {offset} is"
                        " damaged; compaction dropped it", file_id=file_id,
                        volume_id=volume_id, offset=offset)
        self._volumes[volume_id] = replacement
        self._group_commit.mark_dirty(replacement)
        volume.retire()

    def _is_live(self, volume, offset, header):
        """@return: whether the index still points C{header}'s id at
        C{offset} of C{volume}."""
        location = self._index.get(header.file_id)
        return location is not None and location[:2] == (volume.volume_id, offset)

    # --- closing -------------------------------------------------------

    def close(self):
        return Deferred.fromCoroutine(self._close())

    async def _close(self):
        if self._closed:
            return
        self._closed = True
        if self._cache is not None:
            self._cache.clear()
        for loop in self._loops:
            if loop.running:
                loop.stop()
        self._loops = []
        await self._compaction_lock.acquire()
        try:
            await self._group_commit.flush()
            await self.checkpoint()
        finally:
            self._compaction_lock.release()
            for volume in self._volumes.values():
                volume.retire()


class _StagingPool:
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
    bytes, L{ChunkStore.reserve_cache}), it is kept as if the cache had
    held it already.
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


class _StagedSpan:
    """
    The block-aligned span of one record, read directly into staging
    buffers of the store's pool (one per window of L{read_record_direct})
    and kept to send the record's bytes from.  Positions are counted from
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


class _DirectRegion:
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


class _Stage:
    """One staging buffer being filled with the bytes of file offsets
    C{base} onwards; the first C{sent} bytes are already on their way."""

    def __init__(self, buffer, base, limit):
        self.buffer = buffer
        self.base = base
        self.limit = limit
        self.fill = 0
        self.sent = 0


@implementer(IChunkWrite)
class _ChunkWrite:
    """
    A put streaming into its reserved place in a volume.

    Arriving pieces are checksummed on the reactor thread and written by
    one thread job at a time (a job takes everything that became ready
    while the previous one ran), so a disk that throttles writers stalls
    this chunk, not the reactor.  With a L{_DirectRegion}, the bytes of that
    region are copied into staging buffers and each buffer is written with
    one direct C{pwrite} once full; the rest of the data is written through
    the page cache, piece by piece.  C{buffered} says how many bytes wait
    in memory (not counting up to one block of direct bytes that cannot be
    written until the bytes completing the block arrive); C{drained} waits
    for it to fall.  A failed write is reported by the next C{write} or by
    C{finish}.  The volume's reservation is given back exactly once, however
    the write ends.

    With C{keep} (and a L{_DirectRegion}), each staging buffer is kept once
    its bytes are complete, instead of going back to the pool, and so are
    copies of the data outside the region (less than a block on each side):
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
            stage = self._stage = _Stage(
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
class _RepeatedWrite:
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


@implementer(IChunkRead)
class _ChunkRead:
    """
    A verified byte range of a chunk; its volume stays open until released.
    A range verified on the reactor thread keeps the bytes it was checked
    with (C{cached}, at most L{INLINE_VERIFY_LIMIT}), so C{read} does not
    read them again.  A staged read (C{staged}, a L{_StagedSpan}) keeps the
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
