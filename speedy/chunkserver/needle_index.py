# -*- test-case-name: speedy.test.test_needle_index -*-
"""
The compact in-memory index: file id -> (volume, offset, size, CRC32C).

File ids arrive in contiguous ranges handed out by the chunkmaster, used in
order by each imageserver, several imageservers interleaving.  So the index
is a sorted list of I{runs}: a run holds a base id and one packed 14-byte
entry per consecutive id from that base::

    offset  size  field
    0       4     record offset in its volume / 8 (0: no live chunk)
    4       4     data size
    8       4     CRC32C of the data
    12      2     volume id

Entries are little-endian and live in an C{array('B')}, so a million chunks
cost about 14 MB plus the array's over-allocation (1/16), not the ~150 bytes
per entry of a dict of tuples.  A lookup is a bisect over the run bases and
one C{struct.unpack_from}.  An id past the end of a run by at most
L{MAX_GAP} entries extends that run (the gap holds absent entries, the cost
of ids burned by failed writes); further away it starts a new run.  Runs
that grow into each other are merged.
"""

import struct
from array import array
from bisect import bisect_right

from speedy.chunkserver.volume import ALIGNMENT

ENTRY = struct.Struct("<IIIH")
ENTRY_SIZE = ENTRY.size

#: The largest hole of absent ids a run is extended across.
MAX_GAP = 64

_ABSENT = bytes(ENTRY_SIZE)


class NeedleIndex:
    """
    Where every live chunk is.  Offsets must be multiples of 8 below 32 GiB,
    volume ids below 65536.
    """

    def __init__(self):
        self._bases = []
        self._runs = []
        self._live = 0

    def __len__(self):
        """@return: the number of live chunks."""
        return self._live

    @property
    def nbytes(self):
        """The bytes of memory the entries take (the runs, holes included)."""
        return sum(len(run) for run in self._runs)

    def _locate(self, file_id):
        """@return: C{(run number, entry number)} holding C{file_id}, or None."""
        i = bisect_right(self._bases, file_id) - 1
        if i >= 0:
            n = file_id - self._bases[i]
            if n * ENTRY_SIZE < len(self._runs[i]):
                return i, n
        return None

    def get(self, file_id):
        """
        @return: C{(volume_id, offset, size, crc32c)} of the live chunk
            C{file_id}, or None.
        """
        where = self._locate(file_id)
        if where is None:
            return None
        i, n = where
        offset8, size, crc, volume_id = ENTRY.unpack_from(self._runs[i], n * ENTRY_SIZE)
        if offset8 == 0:
            return None
        return volume_id, offset8 * ALIGNMENT, size, crc

    def set(self, file_id, volume_id, offset, size, crc):
        """
        Point C{file_id} at a record, replacing what it pointed at.

        @return: the previous C{(volume_id, offset, size, crc32c)}, or None.
        """
        if offset <= 0 or offset % ALIGNMENT:
            raise ValueError(f"bad record offset {offset}")
        previous = self.get(file_id)
        where = self._locate(file_id)
        if where is None:
            self._append(file_id, ENTRY.pack(offset // ALIGNMENT, size, crc, volume_id))
        else:
            i, n = where
            ENTRY.pack_into(self._runs[i], n * ENTRY_SIZE,
                            offset // ALIGNMENT, size, crc, volume_id)
        if previous is None:
            self._live += 1
        return previous

    def remove(self, file_id):
        """
        Forget C{file_id}.

        @return: its former C{(volume_id, offset, size, crc32c)}, or None.
        """
        previous = self.get(file_id)
        if previous is not None:
            i, n = self._locate(file_id)
            ENTRY.pack_into(self._runs[i], n * ENTRY_SIZE, 0, 0, 0, 0)
            self._live -= 1
        return previous

    def _append(self, file_id, packed):
        i = bisect_right(self._bases, file_id) - 1
        if i >= 0:
            end = self._bases[i] + len(self._runs[i]) // ENTRY_SIZE
            if file_id - end <= MAX_GAP and (
                    i + 1 == len(self._bases) or file_id < self._bases[i + 1]):
                run = self._runs[i]
                run.frombytes(_ABSENT * (file_id - end) + packed)
                self._merge_next(i)
                return
        self._bases.insert(i + 1, file_id)
        self._runs.insert(i + 1, array("B", packed))
        self._merge_next(i + 1)

    def _merge_next(self, i):
        """Merge run C{i+1} into run C{i} when they touch."""
        if i + 1 < len(self._bases):
            end = self._bases[i] + len(self._runs[i]) // ENTRY_SIZE
            if end == self._bases[i + 1]:
                self._runs[i].extend(self._runs[i + 1])
                del self._bases[i + 1], self._runs[i + 1]

    def __iter__(self):
        """@return: an iterator over the live file ids, ascending."""
        for base, run in zip(list(self._bases), list(self._runs)):
            for n, (offset8,) in enumerate(struct.iter_unpack("<I10x", run)):
                if offset8:
                    yield base + n

    def items(self):
        """
        @return: an iterator of C{(file_id, volume_id, offset, size, crc32c)}
            for every live chunk, ascending by file id.
        """
        for base, run in zip(list(self._bases), list(self._runs)):
            for n, (offset8, size, crc, volume_id) in enumerate(ENTRY.iter_unpack(run)):
                if offset8:
                    yield base + n, volume_id, offset8 * ALIGNMENT, size, crc

    def drop_volume(self, volume_id):
        """Forget every chunk stored in C{volume_id}.  @return: how many."""
        dropped = [fid for fid, vid, _, _, _ in self.items() if vid == volume_id]
        for file_id in dropped:
            self.remove(file_id)
        return len(dropped)

    # --- checkpoints ---------------------------------------------------

    def runs(self):
        """
        @return: a list of C{(base, packed entries)} (bytes of
            L{ENTRY_SIZE}-byte entries): a consistent copy for a checkpoint.
        """
        return [(base, bytes(run)) for base, run in zip(self._bases, self._runs)]

    @classmethod
    def from_runs(cls, runs):
        """
        @param runs: C{(base, packed entries)} pairs as L{runs} returns, in
            ascending order of base, not overlapping.
        @return: a L{NeedleIndex} holding them.
        """
        index = cls()
        for base, packed in runs:
            if len(packed) % ENTRY_SIZE:
                raise ValueError("truncated index run")
            if index._bases and base < index._bases[-1] + len(index._runs[-1]) // ENTRY_SIZE:
                raise ValueError("index runs overlap or are out of order")
            run = array("B", packed)
            index._bases.append(base)
            index._runs.append(run)
            index._live += sum(1 for (offset8,) in struct.iter_unpack("<I10x", run) if offset8)
        return index

