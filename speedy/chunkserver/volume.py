# -*- test-case-name: speedy.test.test_volume -*-
"""
Volume files: the on-disk format of the chunk store, and one open volume.

A volume is one large sparse file, C{volume-<id>.dat}: its size is set
when it is made, and its disk blocks are reserved (C{posix_fallocate}) as
puts need them, L{ALLOCATE_STEP} at a time.  All integers
are little-endian.  C{docs/on-disk-format.md} is the readable spec; the
tables here are the same.

Superblock, two copies (slot A at offset 0, slot B at offset 512, so a torn
sector spoils at most one; the valid slot with the higher sequence wins)::

    offset  size  field
    0       8     magic b"SPDYVOL1"
    8       2     format version (1)
    10      2     reserved, 0
    12      4     volume id
    16      8     generation (compaction revision; +1 per compaction)
    24      8     volume size in bytes
    32      8     superblock sequence
    40      20    reserved, 0
    60      4     CRC32C of bytes 0-59

Records start at offset 4096 (L{DATA_START}), each at a multiple of 8::

    offset  size  field
    0       4     magic b"SPdN"
    4       4     flags: 1 COMPLETE, 2 TOMBSTONE
    8       8     file id
    16      8     sequence (store-wide order of completion; 0 while incomplete)
    24      4     data size
    28      4     CRC32C of the data (0 while incomplete)
    32      4     reserved, 0
    36      4     CRC32C of header bytes 0-35
    40      size  data
    ...           zero padding to a multiple of 8

A put first writes its header without COMPLETE (the size is known, so a scan
can step over it), streams the data, then rewrites the header with COMPLETE,
its sequence and the data's CRC32C.  A tombstone is a COMPLETE|TOMBSTONE
header with size 0, appended to the volume holding the chunk it deletes.

The log ends at the first all-zero header.  A non-zero header that does not
check out is damage (or a torn write): the scanner looks for the next valid
header within one maximum record span and resumes there, or, finding none,
ends the log at the damaged header (a torn tail, truncated).
"""

import struct

from attrs import define, field, frozen

from speedy.crc import crc32c

#: Byte offsets of the two superblock slots, and the size of each.
SUPERBLOCK_SLOTS = (0, 512)
SUPERBLOCK_SIZE = 64
SUPERBLOCK_MAGIC = b"SPDYVOL1"
FORMAT_VERSION = 1

#: Bytes of disk a volume reserves at once, ahead of its tail, when a put
#: needs more than it holds (so its blocks are reserved in few, large
#: extents, and a full disk fails the put before any byte is written).
ALLOCATE_STEP = 32 * 2**20

#: First byte of the first record.  Offset 0 is never a record, so the index
#: uses it to mean "absent".
DATA_START = 4096
ALIGNMENT = 8

HEADER_SIZE = 40
RECORD_MAGIC = b"SPdN"
COMPLETE = 1
TOMBSTONE = 2

#: A record offset is kept in the index as offset / 8 in 32 bits.
MAX_VOLUME_SIZE = (2**32) * ALIGNMENT

_SUPERBLOCK = struct.Struct("<8sHHIQQQ20x")
_CRC = struct.Struct("<I")
_HEADER = struct.Struct("<4sIQQII4x")
_ZERO_HEADER = bytes(HEADER_SIZE)

#: Read-ahead of the scanner, in bytes.
SCAN_WINDOW = 1 << 20


def record_span(size):
    """@return: the bytes a record with C{size} data bytes takes, padding included."""
    return (HEADER_SIZE + size + ALIGNMENT - 1) & ~(ALIGNMENT - 1)


#: The bytes a tombstone takes; every live chunk keeps this much room in its
#: volume so that it can always be deleted.
TOMBSTONE_SPAN = record_span(0)


class DamagedVolume(Exception):
    """Neither superblock slot of a volume file checks out."""


@frozen
class Superblock:
    """What a volume file says about itself."""

    volume_id: int
    generation: int
    size: int
    sequence: int = 0

    def pack(self):
        """@return: the 64 bytes of one superblock slot."""
        body = _SUPERBLOCK.pack(
            SUPERBLOCK_MAGIC, FORMAT_VERSION, 0, self.volume_id,
            self.generation, self.size, self.sequence)
        return body + _CRC.pack(crc32c(body))

    @classmethod
    def unpack(cls, raw):
        """@return: the L{Superblock} in C{raw}, or None if it does not check out."""
        if len(raw) != SUPERBLOCK_SIZE:
            return None
        body, (crc,) = raw[:-4], _CRC.unpack(raw[-4:])
        if crc32c(body) != crc:
            return None
        magic, version, _, volume_id, generation, size, sequence = _SUPERBLOCK.unpack(body)
        if magic != SUPERBLOCK_MAGIC or version != FORMAT_VERSION:
            return None
        return cls(volume_id, generation, size, sequence)


def write_superblock(disk, fd, superblock):
    """Write C{superblock} to both slots."""
    raw = superblock.pack()
    for slot in SUPERBLOCK_SLOTS:
        disk.pwrite(fd, raw, slot)


def read_superblock(disk, fd):
    """
    @return: the valid superblock slot with the highest sequence.
    @raise DamagedVolume: when neither slot is valid.
    """
    found = [
        Superblock.unpack(disk.pread(fd, SUPERBLOCK_SIZE, slot))
        for slot in SUPERBLOCK_SLOTS]
    found = [sb for sb in found if sb is not None]
    if not found:
        raise DamagedVolume("no valid superblock slot")
    return max(found, key=lambda sb: sb.sequence)


@frozen
class RecordHeader:
    """The 40-byte header in front of every record."""

    flags: int
    file_id: int
    sequence: int
    size: int
    crc32c: int

    @property
    def complete(self):
        return bool(self.flags & COMPLETE)

    @property
    def tombstone(self):
        return bool(self.flags & TOMBSTONE)

    @property
    def span(self):
        return record_span(self.size)

    def pack(self):
        """@return: the header's 40 bytes."""
        body = _HEADER.pack(
            RECORD_MAGIC, self.flags, self.file_id, self.sequence,
            self.size, self.crc32c)
        return body + _CRC.pack(crc32c(body))

    @classmethod
    def unpack(cls, raw):
        """@return: the L{RecordHeader} in C{raw}, or None if it does not check out."""
        if len(raw) != HEADER_SIZE or raw[:4] != RECORD_MAGIC:
            return None
        body = raw[:-4]
        if crc32c(body) != _CRC.unpack_from(raw, HEADER_SIZE - 4)[0]:
            return None
        _, flags, file_id, sequence, size, data_crc = _HEADER.unpack(body)
        if flags & ~(COMPLETE | TOMBSTONE):
            return None
        return cls(flags, file_id, sequence, size, data_crc)


# --- scanning ------------------------------------------------------------

#: Kinds of L{ScanEvent}.
RECORD, DAMAGED, TORN = "record", "damaged", "torn"


@frozen
class ScanEvent:
    """
    One thing a scan found at C{offset}: a RECORD (with its C{header}), a
    DAMAGED stretch ending at C{end} (C{header} set when only the data failed
    its CRC), or a TORN tail (the log ends at C{offset}).
    """

    kind: str
    offset: int
    end: int
    header: RecordHeader | None = None


class _WindowReader:
    """Reads a file through a sliding window, so that a scan over many small
    records costs one system call per L{SCAN_WINDOW} bytes."""

    def __init__(self, disk, fd):
        self._disk = disk
        self._fd = fd
        self._start = 0
        self._data = b""

    def read(self, offset, size):
        end = offset + size
        if not (self._start <= offset and end <= self._start + len(self._data)):
            if size > SCAN_WINDOW:
                return self._disk.pread(self._fd, size, offset)
            self._start = offset
            self._data = self._disk.pread(self._fd, SCAN_WINDOW, offset)
        return self._data[offset - self._start:end - self._start]


def _find_header(reader, start, limit):
    """
    @return: the offset of the first valid header at an aligned position in
        [C{start}, C{limit}), or None.
    """
    position = start
    while position < limit:
        size = min(SCAN_WINDOW, limit - position + HEADER_SIZE)
        block = reader.read(position, size)
        if len(block) < HEADER_SIZE:
            return None
        hit = block.find(RECORD_MAGIC)
        while hit != -1 and position + hit < limit:
            at = position + hit
            if at % ALIGNMENT == 0 and RecordHeader.unpack(
                    block[hit:hit + HEADER_SIZE]) is not None:
                return at
            hit = block.find(RECORD_MAGIC, hit + 1)
        position += max(ALIGNMENT, len(block) - HEADER_SIZE) & ~(ALIGNMENT - 1)
    return None


def scan_records(disk, fd, start, limit, max_span, verify=None):
    """
    Walk the records of a volume file from C{start} (an aligned offset)
    until the end of its log or C{limit}.  Runs anywhere (recovery at open,
    a compaction thread); it never raises on damaged data.

    @param max_span: the largest record span the store writes; how far a
        scan looks past damage for the next valid header.
    @param verify: None, or a callable taking a header and returning whether
        that record's data must be checked against its CRC32C.
    @return: an iterator of L{ScanEvent}.
    """
    reader = _WindowReader(disk, fd)
    position = start
    while position + HEADER_SIZE <= limit:
        raw = reader.read(position, HEADER_SIZE)
        if len(raw) < HEADER_SIZE or raw == _ZERO_HEADER:
            return
        header = RecordHeader.unpack(raw)
        if header is not None and position + header.span <= limit:
            end = position + header.span
            if (verify is not None and header.complete and not header.tombstone
                    and verify(header)):
                data = disk.pread(fd, header.size, position + HEADER_SIZE)
                if len(data) != header.size or crc32c(data) != header.crc32c:
                    yield ScanEvent(DAMAGED, position, end, header)
                    position = end
                    continue
            yield ScanEvent(RECORD, position, end, header)
            position = end
            continue
        resume = _find_header(
            reader, position + ALIGNMENT, min(limit, position + max_span))
        if resume is None:
            yield ScanEvent(TORN, position, position)
            return
        yield ScanEvent(DAMAGED, position, resume)
        position = resume


def check_record(raw, file_id, size, expected_crc):
    """
    Check one whole record read from disk (header and data): the header must
    name C{file_id} and C{size}, and the data must match C{expected_crc}.

    @return: True when the record checks out, False when it is damaged.
    """
    header = RecordHeader.unpack(bytes(raw[:HEADER_SIZE]))
    return (
        header is not None and header.complete and not header.tombstone
        and header.file_id == file_id and header.size == size
        and header.crc32c == expected_crc and len(raw) == HEADER_SIZE + size
        and crc32c(memoryview(raw)[HEADER_SIZE:]) == expected_crc)


def read_record(disk, fd, offset, file_id, size, expected_crc):
    """
    Read one whole record and L{check_record} it.  This is the one disk
    read a GET of a large chunk costs; it runs in a thread.

    @return: True when the record checks out, False when it is damaged.
    """
    return check_record(disk.pread(fd, HEADER_SIZE + size, offset),
                        file_id, size, expected_crc)


def read_record_direct(disk, fd, offset, file_id, size, expected_crc, buffers, block):
    """
    L{read_record} through a direct (C{O_DIRECT}) descriptor: read the
    block-aligned span covering the record one window at a time and CRC the
    record's slice of each window, so that a GET of a cold record costs no
    fresh page-cache pages.  Runs in a thread.

    Window M{i} is read into C{buffers[i % len(buffers)]}: with one buffer
    (reused for every window) only the check is left; with
    L{direct_windows} buffers each keeps its window, and the record's bytes
    stay in memory for sending (a "staged" read): the record's first header
    byte is then byte C{offset % block} of C{buffers[0]}, and the span
    continues through the buffers in order.

    @param buffers: a list of writable, page-aligned buffers (anonymous
        C{mmap}s) of one length, a multiple of C{block} and at least two
        blocks, so the first window holds the whole header.
    @param block: the file system's block size; the alignment of every read.
    @return: True when the record checks out, False when it is damaged.
    """
    window = len(buffers[0]) - len(buffers[0]) % block
    end = offset + HEADER_SIZE + size
    data_start = offset + HEADER_SIZE
    views = [memoryview(buffer) for buffer in buffers]
    position = offset - offset % block
    crc = 0
    n = 0
    while position < end:
        view = views[n % len(views)]
        n += 1
        want = min(window, -(-(end - position) // block) * block)
        got = disk.pread_into(fd, view[:want], position)
        if got < min(want, end - position):
            return False
        if n == 1:
            at = offset - position
            header = RecordHeader.unpack(bytes(view[at:at + HEADER_SIZE]))
            if (header is None or not header.complete or header.tombstone
                    or header.file_id != file_id or header.size != size
                    or header.crc32c != expected_crc):
                return False
        low = max(position, data_start) - position
        high = min(position + want, end) - position
        if high > low:
            crc = crc32c(view[low:high], crc)
        position += want
    return crc == expected_crc


def direct_windows(offset, size, window, block):
    """
    @return: how many windows of C{window} bytes L{read_record_direct} reads
        for the record of C{size} data bytes at C{offset}.
    """
    start = offset - offset % block
    end = -(-(offset + HEADER_SIZE + size) // block) * block
    return -(-(end - start) // window)


def volume_file_name(volume_id):
    """@return: the file name of volume C{volume_id}."""
    return f"volume-{volume_id:08d}.dat"


def parse_volume_file_name(name):
    """@return: the volume id in file name C{name}, or None if it is no volume."""
    if name.startswith("volume-") and name.endswith(".dat"):
        digits = name[len("volume-"):-len(".dat")]
        if digits.isdigit():
            return int(digits)
    return None


# --- an open volume ------------------------------------------------------


@define(eq=False)
class Volume:
    """
    One open volume file and what the store keeps in memory about it.

    C{tail} is where the next record goes.  C{live_bytes}/C{live_count} are
    the spans and number of records the index points at; every other byte
    below C{tail} is garbage.  C{reservations} are the offsets of puts still
    streaming.  A retired volume (replaced by its compacted copy) keeps its
    descriptor open until the last pinned read is released.  C{allocated}:
    every disk block below it is reserved (a lower bound; past it the file
    may be a hole, see L{reserve_to}).
    """

    disk: object
    path: str
    fd: int
    volume_id: int
    generation: int
    size: int
    tail: int = DATA_START
    live_bytes: int = 0
    live_count: int = 0
    reservations: set = field(factory=set)
    compacting: bool = False
    needs_directory_sync: bool = False
    pins: int = 0
    allocated: int = 0
    retired: bool = False
    closed: bool = False
    #: A second descriptor of the file, opened with C{O_DIRECT} by the store
    #: on first use (None: not open).  Closed with the volume.
    direct_fd: int | None = None

    @classmethod
    def create(cls, disk, path, volume_id, size, generation=1):
        """
        Create and format a new volume file of C{size} bytes, a hole but for
        its superblocks and the first L{ALLOCATE_STEP} bytes (reserved).

        @return: the open L{Volume}.
        @raise OSError: the file could not be made (no half-made file is left).
        """
        fd = disk.open(path, create=True)
        allocated = min(size, ALLOCATE_STEP)
        try:
            disk.set_size(fd, size)
            disk.allocate(fd, allocated)
            write_superblock(disk, fd, Superblock(volume_id, generation, size))
        except BaseException:
            disk.close(fd)
            disk.unlink(path)
            raise
        return cls(disk, path, fd, volume_id, generation, size,
                   needs_directory_sync=True, allocated=allocated)

    @classmethod
    def open(cls, disk, path):
        """
        Open an existing volume file.

        @return: the open L{Volume}, positioned at L{DATA_START}.
        @raise DamagedVolume: neither superblock slot checks out.
        """
        fd = disk.open(path)
        try:
            superblock = read_superblock(disk, fd)
        except BaseException:
            disk.close(fd)
            raise
        return cls(disk, path, fd, superblock.volume_id, superblock.generation,
                   superblock.size)

    @property
    def garbage(self):
        """@return: bytes below C{tail} that no live record uses."""
        return self.tail - DATA_START - self.live_bytes

    @property
    def garbage_ratio(self):
        """@return: garbage as a fraction of the bytes written."""
        written = self.tail - DATA_START
        return self.garbage / written if written else 0.0

    def room(self):
        """
        @return: the largest record span a new put may take, keeping room
            for the tombstone of every live chunk and every streaming put.
        """
        promised = (self.live_count + len(self.reservations) + 1) * TOMBSTONE_SPAN
        return max(0, self.size - self.tail - promised)

    def promised_end(self, more=0):
        """@return: the end of the bytes the volume may need without another
        put: its tail, plus a tombstone for every live chunk, every
        streaming put, C{more} puts to come and one more (L{room})."""
        promised = self.live_count + len(self.reservations) + more + 1
        return min(self.size, self.tail + promised * TOMBSTONE_SPAN)

    def reserve_to(self, end, step=ALLOCATE_STEP):
        """
        Make sure the disk blocks of every byte below C{end} are reserved,
        reserving at least C{step} more when some are not.

        @raise OSError: the file system has no room (C{ENOSPC}); nothing of
            the volume changed.
        """
        if end <= self.allocated or self.allocated >= self.size:
            return
        target = min(self.size, max(end, self.allocated + step))
        self.disk.allocate(self.fd, target, self.allocated)
        self.allocated = target

    def replay_start(self):
        """@return: where recovery must start scanning if the store stopped now:
            the first put still streaming, or the tail."""
        return min(self.reservations, default=self.tail)

    def append(self, span):
        """Claim C{span} bytes at the tail.  @return: their offset."""
        offset = self.tail
        self.tail += span
        return offset

    def pin(self):
        self.pins += 1

    def unpin(self):
        self.pins -= 1
        if self.retired and self.pins == 0:
            self.close()

    def retire(self):
        """This volume has been replaced; close it once nothing pins it."""
        self.retired = True
        if self.pins == 0:
            self.close()

    def close(self):
        """Close the file descriptor.  Idempotent."""
        if not self.closed:
            self.closed = True
            if self.direct_fd is not None:
                self.disk.close(self.direct_fd)
                self.direct_fd = None
            self.disk.close(self.fd)
