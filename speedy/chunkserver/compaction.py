# -*- test-case-name: speedy.test.test_store_compaction -*-
"""
Online compaction of one volume (SeaweedFS's vacuum, Haystack's compaction).

While the volume takes no new puts (deletes still append tombstones to it,
reads go on), its live records are copied, CRC-checked, into
C{volume-<id>.dat.cpd}: a fresh volume file of the next generation.  Then
whatever was appended to the old file during the copy (tombstones) is copied
after them ("makeupDiff"), until nothing new arrived, and the store renames
the copy over the old file and remaps the index, all in one reactor turn.
Reads pinned on the old file keep its descriptor, and with it the old
inode, until they are released; then the space is really freed.
"""

from attrs import define

from speedy.chunkserver.volume import (
    DATA_START, HEADER_SIZE, RECORD, RecordHeader, Superblock, crc32c,
    scan_records, write_superblock)

SUFFIX = ".cpd"


@define
class CompactedCopy:
    """
    The compacted copy of a volume, durable and ready to be renamed in.

    C{moved} lists C{(file_id, old offset, new offset)} of every record
    copied.  Live records whose bytes fail their CRC are left behind (the
    store then drops them from its index).
    """

    path: str
    fd: int
    tail: int
    moved: list


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
        disk.allocate(fd, superblock.size)
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
    return CompactedCopy(path, fd, tail, moved)


def _copy_bytes(disk, source, start, end, destination, at):
    """Append bytes C{start}-C{end} of C{source} to C{destination} at C{at},
    durably.  @return: the new end of C{destination}."""
    disk.pwrite(destination, disk.pread(source, end - start, start), at)
    disk.fdatasync(destination)
    return at + end - start
