"""
CRC32C (Castagnoli), the checksum of every chunk and of every record and
checkpoint a chunkserver writes.
"""

from crc32c import crc32c as _crc32c


def crc32c(data, crc=0):
    """
    @param data: any contiguous bytes-like object (C{bytes}, a
        C{memoryview} of a staging buffer or of a received frame): it is
        read in place, never copied.
    @param crc: the CRC32C of the bytes before C{data}, to continue from.
    @return: the CRC32C of C{data}, continuing from C{crc}.

    The hardware-accelerated C{crc32c} package lets go of the GIL over big
    buffers, so a thread verifying a 16 MiB record does not stall the
    reactor.
    """
    return _crc32c(data, crc)
