"""
Tests for L{speedy.crc}: the checksum every chunk, record and checkpoint
is checked with, against an independent implementation.
"""

import mmap
import os

import google_crc32c
from twisted.trial.unittest import SynchronousTestCase

from speedy.crc import crc32c


class CRC32CTests(SynchronousTestCase):
    def test_known_value(self):
        """The CRC32C check value of RFC 3720, appendix B.4: 32 zero bytes."""
        self.assertEqual(crc32c(bytes(32)), 0x8A9136AA)
        self.assertEqual(crc32c(b""), 0)

    def test_agrees_with_google_crc32c(self):
        for size in (1, 7, 4096, 65537, 1 << 20):
            data = os.urandom(size)
            self.assertEqual(crc32c(data), google_crc32c.value(data), size)

    def test_continues_from_a_crc(self):
        """The CRC of the whole is that of the tail continued from the
        head's: how a record is checked a window at a time."""
        data = os.urandom(100_000)
        for cut in (0, 1, 4095, 50_000, 100_000):
            self.assertEqual(crc32c(data[cut:], crc32c(data[:cut])), crc32c(data), cut)

    def test_reads_buffers_in_place(self):
        """Memoryviews of a staging buffer (an anonymous mmap) and slices of
        them are checksummed as they are: the same values as their bytes."""
        buffer = mmap.mmap(-1, 1 << 20)
        data = os.urandom(1 << 20)
        buffer[:] = data
        view = memoryview(buffer)
        self.assertEqual(crc32c(view), google_crc32c.value(data))
        self.assertEqual(crc32c(view[123:4567]), google_crc32c.value(data[123:4567]))
        self.assertEqual(crc32c(bytearray(data[:999])), google_crc32c.value(data[:999]))
        view.release()
        buffer.close()
