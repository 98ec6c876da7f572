# -*- test-case-name: speedy.test.test_store_recovery -*-
"""
Index checkpoints: the whole
L{speedy.chunkserver.needle_index.NeedleIndex} and each volume's
accounting, written atomically (temporary file, fsync, rename, directory
fsync) to C{index.ckpt} in the data directory.  The volume bytes written
after a checkpoint are its journal: recovery
(L{speedy.chunkserver.recovery}) loads the checkpoint, then scans each
volume from its C{replay_start}.  All integers little-endian::

    offset  size   field
    0       8      magic b"SPDYCKPT"
    8       4      format version (1)
    12      4      number of volumes V
    16      8      number of runs R
    24      8      sequence: every record with a sequence up to this one is
                   reflected here
    32      8      reserved, 0
    40      48*V   volumes, each:
                     0  4  volume id
                     4  4  reserved, 0
                     8  8  generation (must match the volume's superblock)
                     16 8  replay start (the volume offset to scan from)
                     24 8  live bytes
                     32 8  live records
                     40 8  reserved, 0
    ...            runs, each: base file id (8), entry count N (4),
                   reserved (4), then N 14-byte index entries (see
                   L{speedy.chunkserver.needle_index})
    end-4   4      CRC32C of every byte before it
"""

import os
import struct

from attrs import frozen
from twisted.internet.defer import Deferred

from speedy.chunkserver.needle_index import ENTRY_SIZE
from speedy.chunkserver.volume import crc32c

FILE_NAME = "index.ckpt"
MAGIC = b"SPDYCKPT"
VERSION = 1

_HEADER = struct.Struct("<8sIIQQ8x")
_VOLUME = struct.Struct("<I4xQQQQ8x")
_RUN = struct.Struct("<QI4x")
_CRC = struct.Struct("<I")


class CorruptCheckpoint(Exception):
    """The checkpoint file does not check out; recovery falls back to a full scan."""


@frozen
class VolumeState:
    """A volume's accounting as of a checkpoint."""

    volume_id: int
    generation: int
    replay_start: int
    live_bytes: int
    live_count: int


@frozen
class Checkpoint:
    """The store's state at one moment."""

    sequence: int
    volumes: tuple  # of VolumeState
    runs: list  # of (base file id, packed entries), as NeedleIndex.runs()


def pack_checkpoint(checkpoint):
    """@return: the bytes of C{checkpoint}'s file."""
    pieces = [_HEADER.pack(MAGIC, VERSION, len(checkpoint.volumes),
                           len(checkpoint.runs), checkpoint.sequence)]
    for v in checkpoint.volumes:
        pieces.append(_VOLUME.pack(v.volume_id, v.generation, v.replay_start,
                                   v.live_bytes, v.live_count))
    for base, packed in checkpoint.runs:
        pieces.append(_RUN.pack(base, len(packed) // ENTRY_SIZE))
        pieces.append(packed)
    body = b"".join(pieces)
    return body + _CRC.pack(crc32c(body))


def unpack_checkpoint(raw):
    """
    @return: the L{Checkpoint} in C{raw}.
    @raise CorruptCheckpoint: when it does not check out.
    """
    if len(raw) < _HEADER.size + _CRC.size:
        raise CorruptCheckpoint("checkpoint too short")
    view = memoryview(raw)
    body = view[:-_CRC.size]
    if crc32c(body) != _CRC.unpack_from(raw, len(raw) - _CRC.size)[0]:
        raise CorruptCheckpoint("checkpoint CRC32C mismatch")
    magic, version, volume_count, run_count, sequence = _HEADER.unpack_from(raw)
    if magic != MAGIC or version != VERSION:
        raise CorruptCheckpoint("not a version 1 checkpoint")
    try:
        position = _HEADER.size
        volumes = []
        for _ in range(volume_count):
            volumes.append(VolumeState(*_VOLUME.unpack_from(body, position)))
            position += _VOLUME.size
        runs = []
        for _ in range(run_count):
            base, count = _RUN.unpack_from(body, position)
            position += _RUN.size
            end = position + count * ENTRY_SIZE
            if end > len(body):
                raise CorruptCheckpoint("checkpoint run runs past the end")
            runs.append((base, bytes(body[position:end])))
            position = end
    except struct.error as e:
        raise CorruptCheckpoint(f"truncated checkpoint: {e}")
    if position != len(body):
        raise CorruptCheckpoint("trailing bytes in checkpoint")
    return Checkpoint(sequence, tuple(volumes), runs)


def write_checkpoint(disk, directory, checkpoint):
    """
    Replace the checkpoint in C{directory} atomically.  Blocking: run it in
    a thread.
    """
    path = os.path.join(directory, FILE_NAME)
    temporary = path + ".tmp"
    if os.path.exists(temporary):
        disk.unlink(temporary)
    fd = disk.open(temporary, create=True)
    try:
        disk.pwrite(fd, pack_checkpoint(checkpoint), 0)
        disk.fsync(fd)
    finally:
        disk.close(fd)
    disk.rename(temporary, path)
    disk.fsync_directory(directory)


def read_checkpoint(disk, directory):
    """
    @return: the L{Checkpoint} in C{directory}, or None when there is none.
    @raise CorruptCheckpoint: when it does not check out.
    """
    path = os.path.join(directory, FILE_NAME)
    if not os.path.exists(path):
        return None
    fd = disk.open(path)
    try:
        raw = disk.pread(fd, disk.file_size(fd), 0)
    finally:
        disk.close(fd)
    return unpack_checkpoint(raw)


class Checkpointing:
    """
    The L{speedy.chunkserver.store.ChunkStore}'s checkpoints: a snapshot of
    its index and volumes, written after every volume is synced.
    """

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
