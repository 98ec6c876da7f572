# -*- test-case-name: speedy.test.test_store,speedy.test.test_direct_io -*-
"""
The chunkserver's storage engine: chunks appended to sparse volume files
(L{speedy.chunkserver.volume}; disk blocks reserved as puts need them),
found through a compact in-memory index
(L{speedy.chunkserver.needle_index}), made durable by group commit
(L{speedy.chunkserver.group_commit}), restarted from an index checkpoint
plus the journal that follows it (L{speedy.chunkserver.checkpoint}), and
compacted online (L{speedy.chunkserver.compaction}).

Its parts, one module each, in the order a chunk meets them:

    store.py        this façade: L{ChunkStore}, opening, timers, free space,
                    put and delete (the index and volume accounting), status
    writes.py       L{ChunkWrite}: a PUT's bytes on their way into its
                    reserved span of a volume (checksum, staging, direct and
                    buffered writes, the cache entry it keeps)
    staging.py      the staging buffers and direct-I/O regions writes and
                    large reads go through, and the chunk cache's memory
    reads.py        GET: the cache, the record's check, L{ChunkRead}
    recovery.py     opening: checkpoint load, journal replay, scans
    checkpoint.py   index checkpoints (format and writing them)
    compaction.py   online compaction (the copy and the swap)

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
"""

import os

from twisted.internet.defer import Deferred, DeferredLock, fail, succeed
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from zope.interface import implementer

from speedy.chunkserver.checkpoint import Checkpointing
from speedy.chunkserver.compaction import Compacting
from speedy.chunkserver.disk import Disk
from speedy.chunkserver.group_commit import GroupCommit
from speedy.chunkserver.needle_index import NeedleIndex
from speedy.chunkserver.reads import INLINE_VERIFY_LIMIT, ChunkRead, ReadPath
from speedy.chunkserver.recovery import Recovery
from speedy.chunkserver.staging import (
    DIRECT_IO_BLOCK, STAGING_POOL_SIZE, STAGING_SIZE, DirectIO, StagingPool)
from speedy.chunkserver.volume import (
    COMPLETE, DATA_START, HEADER_SIZE, MAX_VOLUME_SIZE, TOMBSTONE, TOMBSTONE_SPAN,
    RecordHeader, Volume, record_span, volume_file_name)
from speedy.chunkserver.writes import ChunkWrite, RepeatedWrite
from speedy.errors import BadRequest, Busy, ChunkExists, ChunkNotFound, NoSpace, ReadOnly, TooLarge
from speedy.interfaces import IChunkStore
from speedy.records import ChunkInfo

__all__ = [
    "CACHE_SIZE", "DEFAULT_MAX_CHUNK_SIZE", "DEFAULT_RESERVE", "DIRECT_IO_BLOCK",
    "DIRECT_IO_MODES", "DIRECT_IO_THRESHOLD", "INLINE_VERIFY_LIMIT", "STAGED_READ_LIMIT",
    "STAGING_POOL_SIZE", "STAGING_SIZE", "SYNC_POLICIES", "ChunkRead", "ChunkStore",
    "ChunkWrite", "StagingPool", "thread_pool_runner"]

SYNC_POLICIES = ("always", "batch", "none")

#: Default free-space reserve: below this many free bytes the store turns
#: read-only.
DEFAULT_RESERVE = 2**30

#: Default seconds between a delete that takes a volume past the compaction
#: threshold and that compaction.
DEFAULT_COMPACT_DELAY = 30.0

#: Default largest chunk (the imageservers cut 16 MiB chunks).
DEFAULT_MAX_CHUNK_SIZE = 64 * 2**20

#: "auto": direct I/O for large records where the file system allows it;
#: "off": everything through the page cache.
DIRECT_IO_MODES = ("auto", "off")

#: Records with fewer data bytes than this are written and verified through
#: the page cache only (a direct write waits for the device; for a small
#: record that costs more than the copy it saves).
DIRECT_IO_THRESHOLD = 256 * 1024

#: Default cap on the staging-buffer bytes that all staged GETs of one store
#: hold at once (their records' bytes, kept from the verify until the body
#: is sent).  The pool keeps that many buffers idle too, on top of
#: L{STAGING_POOL_SIZE}.
STAGED_READ_LIMIT = 64 * 2**20

#: Default budget of the chunk cache
#: (L{speedy.chunkserver.cache.ChunkCache}): the bytes of recently written
#: chunks kept in memory to answer GETs from.
CACHE_SIZE = 512 * 2**20

#: Damaged chunk ids kept for the chunkmaster at most; beyond it the oldest
#: are forgotten here (their records are gone, so the chunkmaster's fsck
#: still finds them missing).
MAX_DAMAGED_KEPT = 100_000

COUNTERS = (
    "reads", "writes", "deletes", "bytes_read", "bytes_written",
    "checksum_errors", "damaged_records", "torn_records", "damaged_volumes",
    "corrupt_checkpoints", "nospace_errors", "sync_errors", "compactions",
    "bytes_compacted_away", "cache_hits", "cache_misses", "verified", "bytes_verified")


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
class ChunkStore(Recovery, DirectIO, ReadPath, Checkpointing, Compacting):
    """
    A directory of volume files and the index over them.  Build one with
    L{open}; the constructor only wires its parts together.
    """

    log = Logger()

    def __init__(self, reactor, data_dir, disk, run_in_thread, volume_size,
                 sync, reserve, compact_threshold, max_chunk_size,
                 checkpoint_interval, compact_interval, space_check_interval,
                 direct_io="off", direct_io_threshold=DIRECT_IO_THRESHOLD,
                 staged_read_limit=STAGED_READ_LIMIT, cache_size=CACHE_SIZE,
                 compact_delay=DEFAULT_COMPACT_DELAY):
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
        self.compact_delay = compact_delay
        self._compaction_soon = None
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
        #: ids of chunks found damaged and dropped, not yet acknowledged by
        #: the chunkmaster (insertion-ordered; at most MAX_DAMAGED_KEPT)
        self.damaged = {}

    @classmethod
    def open(cls, reactor, data_dir, volume_size=2 * 2**30, sync="always",
             reserve=DEFAULT_RESERVE, compact_threshold=0.3, *,
             max_chunk_size=DEFAULT_MAX_CHUNK_SIZE, run_in_thread=None,
             disk=None, checkpoint_interval=60.0, compact_interval=15 * 60.0,
             space_check_interval=10.0, direct_io="auto",
             direct_io_threshold=DIRECT_IO_THRESHOLD,
             staged_read_limit=STAGED_READ_LIMIT, cache_size=CACHE_SIZE,
             compact_delay=DEFAULT_COMPACT_DELAY):
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
        @param compact_delay: once started, seconds after a delete takes a
            volume past C{compact_threshold} that a compaction runs (the
            deletes of one garbage collection round come in a burst: one
            compaction follows them); None leaves it to the periodic one.
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
                    staged_read_limit, cache_size, compact_delay)
        store._recover()
        store._setup_direct_io()
        store._check_space()
        return store

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

    def _new_volumes(self, total, available):
        """@return: how many more volumes can be made above the reserve."""
        return max(0, (available - self._reserve_bytes(total)) // self.volume_size)

    def _largest_room(self):
        """@return: the largest record one existing volume still takes."""
        return max((v.room() for v in self._volumes.values() if not v.compacting), default=0)

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
            return RepeatedWrite(self, file_id, size)
        span = record_span(size)
        volume = self._writable_volume(span)
        offset = volume.append(span)
        try:
            # The span and the tombstones promised (this put's too) get
            # their disk blocks first: a full disk fails the put here.
            volume.reserve_to(volume.promised_end(more=1))
            self._disk.pwrite(volume.fd, RecordHeader(0, file_id, 0, size, 0).pack(), offset)
        except OSError as e:
            volume.tail = offset
            raise self._no_space(e)
        volume.reservations.add(offset)
        region = self._direct_region(volume, offset, size)
        keep = keep and region is not None and self._cache is not None
        return ChunkWrite(self, volume, offset, file_id, size, region, keep)

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
        except NoSpace as e:
            self.counters["nospace_errors"] += 1
            self.log.warn("refusing a chunk of {span} bytes: {error}", span=span, error=e)
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
        reserved, unwritten extents to written ones) and flushes the
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
        try:
            volume = self._tombstone(file_id, location)
        except NoSpace as e:
            return fail(e)
        self.counters["deletes"] += 1
        self._compact_soon(volume)
        return self._durable(volume)

    def _compact_soon(self, volume):
        """Once started, compact C{compact_delay} seconds after a delete took
        C{volume} past the threshold (one compaction for a burst)."""
        if (self.compact_delay is None or not self._loops or self._compaction_soon is not None
                or volume.garbage_ratio < self.compact_threshold):
            return

        def compact():
            self._compaction_soon = None
            self._periodic_compaction()

        self._compaction_soon = self._reactor.callLater(self.compact_delay, compact)

    def _tombstone(self, file_id, location):
        """
        Forget chunk C{file_id}, at C{location} in the index: append its
        tombstone, drop it from the index and the cache, and account for it.

        @return: the volume the tombstone went into.
        @raise NoSpace: the tombstone could not be written (nothing changed).
        """
        volume_id, _, size, _ = location
        volume = self._volumes[volume_id]
        header = RecordHeader(COMPLETE | TOMBSTONE, file_id, self._next_sequence(), 0, 0)
        offset = volume.append(TOMBSTONE_SPAN)
        try:
            self._disk.pwrite(volume.fd, header.pack(), offset)
        except OSError as e:
            volume.tail = offset
            raise self._no_space(e)
        self._index.remove(file_id)
        if self._cache is not None:
            self._cache.drop(file_id)
        volume.live_bytes -= record_span(size)
        volume.live_count -= 1
        return volume

    def _drop_damaged(self, file_id, location):
        """
        A check found chunk C{file_id}'s record at C{location} damaged: if
        the index still points there, forget it (a tombstone, so it stays
        forgotten after a restart) and keep its id in L{damaged} for the
        chunkmaster, which has it repaired from another replica.  A repair
        then writes it anew like any missing chunk.
        """
        self.counters["checksum_errors"] += 1
        self.log.error("chunk {file_id} in volume {volume_id} at {offset} is damaged;"
                       " dropping it for repair", file_id=file_id, volume_id=location[0],
                       offset=location[1])
        if self._index.get(file_id) != location:
            return  # deleted or replaced while it was being read
        try:
            volume = self._tombstone(file_id, location)
        except NoSpace:
            return  # the next check finds it again
        self.counters["damaged_records"] += 1
        self._report_damaged(file_id)
        self._durable(volume).addErrback(self._log_failure, "syncing a tombstone failed")

    def _report_damaged(self, file_id):
        """Keep the id of chunk C{file_id}, dropped as damaged, in
        L{damaged} for the chunkmaster."""
        self.damaged[file_id] = None
        while len(self.damaged) > MAX_DAMAGED_KEPT:
            self.damaged.pop(next(iter(self.damaged)))

    def acknowledge_damaged(self, file_ids):
        """The chunkmaster recorded these damaged chunks: stop reporting them."""
        for file_id in file_ids:
            self.damaged.pop(file_id, None)

    def stat(self, file_id):
        location = self._index.get(file_id)
        if location is None:
            return None
        _, _, size, crc = location
        return ChunkInfo(file_id, size, crc)

    def file_ids(self):
        return iter(self._index)

    # --- status --------------------------------------------------------

    @property
    def group_commit(self):
        """The L{GroupCommit} (its sync latency and batch sizes are metrics)."""
        return self._group_commit

    def status(self):
        total, available = self._disk.space(self.data_dir)
        volumes = [
            {"volume_id": v.volume_id, "size": v.size,
             "used": v.tail - DATA_START, "live": v.live_bytes,
             "garbage": v.garbage, "chunks": v.live_count,
             "compacting": v.compacting}
            for _, v in sorted(self._volumes.items())]
        # What one chunk can really take: the room of the roomiest volume (a
        # record never spans volumes, and older volumes keep only scraps),
        # plus the volumes still to be made above the reserve.
        free = (self._largest_room()
                + self._new_volumes(total, available) * (self.volume_size - DATA_START))
        counters = dict(self.counters, sync_rounds=self._group_commit.rounds)
        cache = self._cache
        return {
            "capacity": total,
            "used": sum(v["used"] for v in volumes),
            "free": 0 if self.read_only else free,
            "read_only": self.read_only,
            "chunks": len(self._index),
            "index_bytes": self._index.nbytes,
            "volumes": volumes,
            "counters": counters,
            "cache": ({"size": 0, "bytes": 0, "chunks": 0} if cache is None else
                      {"size": cache.budget, "bytes": cache.bytes, "chunks": cache.count}),
        }

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
        if self._compaction_soon is not None and self._compaction_soon.active():
            self._compaction_soon.cancel()
        self._compaction_soon = None
        await self._compaction_lock.acquire()
        try:
            await self._group_commit.flush()
            await self.checkpoint()
        finally:
            self._compaction_lock.release()
            for volume in self._volumes.values():
                volume.retire()
