# -*- test-case-name: speedy.test.test_store_compaction -*-
"""
Online compaction of one volume (SeaweedFS's vacuum, Haystack's compaction).

While the volume takes no new puts (deletes still append tombstones to it,
reads go on), its live records are copied, CRC-checked, into
C{volume-<id>.dat.cpd}: a fresh volume file of the next generation, a hole
past the records it holds (so the space freed goes back to the file system:
C{du} drops; puts reserve blocks again as they need them).  Then
whatever was appended to the old file during the copy (tombstones) is copied
after them ("makeupDiff"), until nothing new arrived, and the store renames
the copy over the old file and remaps the index, all in one reactor turn.
Reads pinned on the old file keep its descriptor, and with it the old
inode, until they are released; then the space is really freed.
"""

from attrs import define
from twisted.internet.defer import Deferred

from speedy.chunkserver.volume import (
    DATA_START, HEADER_SIZE, RECORD, TOMBSTONE_SPAN, RecordHeader, Superblock, Volume, crc32c,
    record_span, scan_records, write_superblock)
from speedy.errors import BadRequest, NoSpace

SUFFIX = ".cpd"


@define
class CompactedCopy:
    """
    The compacted copy of a volume, durable and ready to be renamed in.

    C{moved} lists C{(file_id, old offset, new offset)} of every record
    copied; the disk blocks below C{allocated} are reserved, the rest of
    the file is a hole.  Live records whose bytes fail their CRC are left behind (the
    store then drops them from its index).
    """

    path: str
    fd: int
    tail: int
    moved: list
    allocated: int = 0


async def copy_live(run_in_thread, disk, volume, is_live, max_span):
    """
    Copy C{volume}'s live records, then what was appended during the copy.

    @param is_live: C{is_live(volume, offset, header)}, asked on the reactor
        thread, says whether the index still points at that record.
    @return: a L{CompactedCopy}; on failure nothing is left behind.
    """
    copied_to = volume.tail
    records = await run_in_thread(_list_records, disk, volume.fd, copied_to, max_span)
    live = [(offset, header) for offset, header in records
            if is_live(volume, offset, header)]
    superblock = Superblock(volume.volume_id, volume.generation + 1, volume.size)
    copy = await run_in_thread(
        _copy_records, disk, volume.fd, volume.path + SUFFIX, superblock, live)
    try:
        while volume.tail != copied_to:
            end = volume.tail
            copy.tail = await run_in_thread(
                _copy_bytes, disk, volume.fd, copied_to, end, copy.fd, copy.tail)
            copied_to = end
    except BaseException:
        disk.close(copy.fd)
        disk.unlink(copy.path)
        raise
    return copy


def _list_records(disk, fd, end, max_span):
    """@return: C{(offset, header)} of every complete put record below C{end}."""
    return [
        (event.offset, event.header)
        for event in scan_records(disk, fd, DATA_START, end, max_span)
        if event.kind == RECORD and event.header.complete
        and not event.header.tombstone]


def _copy_records(disk, source, path, superblock, records):
    """Write a new volume file holding C{records}, each CRC-checked.
    @return: a L{CompactedCopy}."""
    fd = disk.open(path, create=True)
    try:
        # A hole but for the live records and the tombstones they may need
        # (those the old file got during the copy are among them): the
        # bytes compaction frees go back to the file system.
        records_end = DATA_START + sum(header.span for _, header in records)
        allocated = min(superblock.size, records_end + (len(records) + 1) * TOMBSTONE_SPAN)
        disk.set_size(fd, superblock.size)
        disk.allocate(fd, allocated)
        write_superblock(disk, fd, superblock)
        tail = DATA_START
        moved = []
        for offset, header in records:
            raw = disk.pread(source, HEADER_SIZE + header.size, offset)
            if (RecordHeader.unpack(raw[:HEADER_SIZE]) != header
                    or crc32c(memoryview(raw)[HEADER_SIZE:]) != header.crc32c
                    or len(raw) != HEADER_SIZE + header.size):
                continue
            disk.pwrite(fd, raw, tail)
            moved.append((header.file_id, offset, tail))
            tail += header.span
        disk.fdatasync(fd)
    except BaseException:
        disk.close(fd)
        disk.unlink(path)
        raise
    return CompactedCopy(path, fd, tail, moved, allocated)


def _copy_bytes(disk, source, start, end, destination, at):
    """Append bytes C{start}-C{end} of C{source} to C{destination} at C{at},
    durably.  @return: the new end of C{destination}."""
    disk.pwrite(destination, disk.pread(source, end - start, start), at)
    disk.fdatasync(destination)
    return at + end - start


class Compacting:
    """
    The L{speedy.chunkserver.store.ChunkStore}'s side of compaction: which
    volumes to compact, waiting for their puts to drain, L{copy_live}, and
    the swap of the copy into the index in one reactor turn.
    """

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
            copy = await copy_live(
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
            needs_directory_sync=True, allocated=copy.allocated)
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
                    self._report_damaged(file_id)
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
