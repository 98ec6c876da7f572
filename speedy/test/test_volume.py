"""
Tests for L{speedy.chunkserver.volume}: the superblock, record headers, and
scanning a volume's log through damage.
"""

import os

from twisted.trial.unittest import SynchronousTestCase

from speedy.chunkserver.disk import Disk
from speedy.chunkserver.volume import (
    ALLOCATE_STEP, COMPLETE, DAMAGED, DATA_START, HEADER_SIZE, RECORD, SUPERBLOCK_SLOTS,
    TOMBSTONE, TORN, DamagedVolume, RecordHeader, Superblock, Volume,
    check_record, crc32c, parse_volume_file_name, read_record, read_superblock, record_span,
    scan_records, volume_file_name)

MAX_SPAN = record_span(64 * 1024)


class SuperblockTests(SynchronousTestCase):
    def setUp(self):
        self.disk = Disk()
        path = os.path.join(self.mktemp())
        self.volume = Volume.create(self.disk, path, 7, 1 << 20, generation=3)
        self.addCleanup(self.volume.close)

    def test_round_trip(self):
        """A new volume's superblock reads back with its id, generation and size."""
        sb = read_superblock(self.disk, self.volume.fd)
        self.assertEqual((sb.volume_id, sb.generation, sb.size), (7, 3, 1 << 20))

    def test_sparse(self):
        """The file has its full size up front, but takes disk blocks only
        for the bytes reserved (at most one L{ALLOCATE_STEP})."""
        self.assertEqual(os.fstat(self.volume.fd).st_size, 1 << 20)
        self.assertEqual(self.volume.allocated, min(1 << 20, ALLOCATE_STEP))

    def test_reserve_to(self):
        """L{Volume.reserve_to} reserves the disk blocks below an offset,
        a step at a time, and no more than the volume."""
        path = self.mktemp()
        volume = Volume.create(self.disk, path, 8, 64 << 20)
        self.addCleanup(volume.close)
        self.assertEqual(volume.allocated, ALLOCATE_STEP)
        self.assertLess(os.stat(path).st_blocks * 512, ALLOCATE_STEP + 65536)
        volume.reserve_to(ALLOCATE_STEP + 1)
        self.assertEqual(volume.allocated, 2 * ALLOCATE_STEP)
        self.assertGreaterEqual(os.stat(path).st_blocks * 512, 2 * ALLOCATE_STEP)
        volume.reserve_to(10 << 30)
        self.assertEqual(volume.allocated, 64 << 20)
        volume.reserve_to(1 << 20)  # below: nothing to do
        self.assertEqual(volume.allocated, 64 << 20)

    def test_torn_slot(self):
        """One damaged slot (a torn write) leaves the other in charge."""
        os.pwrite(self.volume.fd, b"\xff" * 20, SUPERBLOCK_SLOTS[0] + 10)
        self.assertEqual(read_superblock(self.disk, self.volume.fd).volume_id, 7)

    def test_newer_slot_wins(self):
        """The valid slot with the higher sequence is the current superblock."""
        newer = Superblock(7, 4, 1 << 20, sequence=1)
        os.pwrite(self.volume.fd, newer.pack(), SUPERBLOCK_SLOTS[1])
        self.assertEqual(read_superblock(self.disk, self.volume.fd), newer)

    def test_both_slots_damaged(self):
        """With no valid slot, opening the volume raises L{DamagedVolume}."""
        for slot in SUPERBLOCK_SLOTS:
            os.pwrite(self.volume.fd, b"garbage!", slot)
        self.assertRaises(DamagedVolume, Volume.open, self.disk, self.volume.path)

    def test_not_a_superblock(self):
        """Random bytes of the right length are not a superblock."""
        self.assertIsNone(Superblock.unpack(os.urandom(64)))
        self.assertIsNone(Superblock.unpack(b"short"))


class RecordHeaderTests(SynchronousTestCase):
    def test_round_trip(self):
        header = RecordHeader(COMPLETE, 2**63 + 5, 99, 4096, 0xDEADBEEF)
        raw = header.pack()
        self.assertEqual(len(raw), HEADER_SIZE)
        self.assertEqual(RecordHeader.unpack(raw), header)
        self.assertTrue(header.complete)
        self.assertFalse(header.tombstone)

    def test_any_flipped_bit_is_detected(self):
        """A header with any single bit flipped does not check out."""
        raw = bytearray(RecordHeader(COMPLETE | TOMBSTONE, 1, 2, 0, 0).pack())
        for bit in range(len(raw) * 8):
            damaged = bytearray(raw)
            damaged[bit // 8] ^= 1 << (bit % 8)
            self.assertIsNone(RecordHeader.unpack(bytes(damaged)), bit)

    def test_span_is_aligned(self):
        self.assertEqual(record_span(0), HEADER_SIZE)
        self.assertEqual(record_span(1), HEADER_SIZE + 8)
        self.assertEqual(record_span(8), HEADER_SIZE + 8)
        self.assertEqual(record_span(9), HEADER_SIZE + 16)

    def test_file_names(self):
        self.assertEqual(parse_volume_file_name(volume_file_name(42)), 42)
        self.assertIsNone(parse_volume_file_name("index.ckpt"))
        self.assertIsNone(parse_volume_file_name("volume-x.dat"))


class ScanTests(SynchronousTestCase):
    """Scanning a log with complete, incomplete, damaged and torn records."""

    def setUp(self):
        self.disk = Disk()
        self.volume = Volume.create(self.disk, self.mktemp(), 1, 1 << 20)
        self.addCleanup(self.volume.close)

    def append(self, file_id, data, flags=COMPLETE, sequence=1):
        """Append a record the way the store does.  @return: its offset."""
        header = RecordHeader(flags, file_id, sequence, len(data), crc32c(data))
        offset = self.volume.append(header.span)
        os.pwrite(self.volume.fd, header.pack() + data, offset)
        return offset

    def scan(self, verify=None):
        return list(scan_records(self.disk, self.volume.fd, DATA_START,
                                 self.volume.size, MAX_SPAN, verify))

    def test_records_in_order(self):
        offsets = [self.append(i, bytes([i]) * (i * 100)) for i in range(1, 5)]
        events = self.scan()
        self.assertEqual([e.kind for e in events], [RECORD] * 4)
        self.assertEqual([e.offset for e in events], offsets)
        self.assertEqual([e.header.file_id for e in events], [1, 2, 3, 4])

    def test_empty_volume(self):
        self.assertEqual(self.scan(), [])

    def test_incomplete_record_is_stepped_over(self):
        """A put still streaming at a crash has its size, so the scan goes on."""
        self.append(1, b"x" * 1000, flags=0, sequence=0)
        self.append(2, b"y" * 10)
        events = self.scan()
        self.assertEqual([(e.kind, e.header.file_id, e.header.complete) for e in events],
                         [(RECORD, 1, False), (RECORD, 2, True)])

    def test_damaged_header_resyncs(self):
        """Garbage over a header is reported, and the next record is found."""
        first = self.append(1, b"a" * 5000)
        self.append(2, b"b" * 100)
        os.pwrite(self.volume.fd, os.urandom(HEADER_SIZE), first)
        events = self.scan()
        self.assertEqual([e.kind for e in events], [DAMAGED, RECORD])
        self.assertEqual(events[0].offset, first)
        self.assertEqual(events[1].header.file_id, 2)

    def test_torn_tail(self):
        """A damaged header with nothing valid after it is a torn tail."""
        self.append(1, b"a" * 100)
        second = self.append(2, b"b" * 100)
        os.pwrite(self.volume.fd, b"\x01" * 12, second + 4)
        events = self.scan()
        self.assertEqual([e.kind for e in events], [RECORD, TORN])
        self.assertEqual(events[1].offset, second)

    def test_verify_finds_damaged_data(self):
        """With verification, a record whose data fails its CRC is DAMAGED."""
        first = self.append(1, b"a" * 100)
        self.append(2, b"b" * 100)
        os.pwrite(self.volume.fd, b"X", first + HEADER_SIZE + 50)
        events = self.scan(verify=lambda header: True)
        self.assertEqual([e.kind for e in events], [DAMAGED, RECORD])
        self.assertEqual(events[0].header.file_id, 1)
        self.assertEqual([e.kind for e in self.scan()], [RECORD, RECORD])

    def test_record_past_the_limit_is_torn(self):
        """A header whose record would run past the end of the file is torn."""
        header = RecordHeader(COMPLETE, 1, 1, 1 << 21, 0)
        os.pwrite(self.volume.fd, header.pack(), DATA_START)
        self.assertEqual([e.kind for e in self.scan()], [TORN])

    def test_read_record(self):
        data = os.urandom(3000)
        offset = self.append(9, data)
        crc = crc32c(data)
        self.assertTrue(read_record(self.disk, self.volume.fd, offset, 9, 3000, crc))
        self.assertFalse(read_record(self.disk, self.volume.fd, offset, 8, 3000, crc))
        os.pwrite(self.volume.fd, b"\x00", offset + HEADER_SIZE + 2999)
        if data[-1] != 0:
            self.assertFalse(read_record(self.disk, self.volume.fd, offset, 9, 3000, crc))

    def test_check_record(self):
        """check_record refuses a record cut short, or one whose header
        is a tombstone or not yet complete."""
        data = os.urandom(100)
        raw = RecordHeader(COMPLETE, 9, 1, 100, crc32c(data)).pack() + data
        self.assertTrue(check_record(raw, 9, 100, crc32c(data)))
        self.assertFalse(check_record(raw[:-1], 9, 100, crc32c(data)))
        for flags in (0, COMPLETE | TOMBSTONE):
            raw = RecordHeader(flags, 9, 1, 100, crc32c(data)).pack() + data
            self.assertFalse(check_record(raw, 9, 100, crc32c(data)))

    def test_pread_cached(self):
        """Bytes in the page cache are read without waiting; a read the
        file cannot fill says None (the caller then reads in a thread)."""
        os.pwrite(self.volume.fd, b"cached", DATA_START)
        self.assertEqual(self.disk.pread_cached(self.volume.fd, 6, DATA_START), b"cached")
        self.assertIsNone(self.disk.pread_cached(self.volume.fd, 10, (1 << 20) - 4))
