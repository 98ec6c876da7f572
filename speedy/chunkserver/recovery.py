# -*- test-case-name: speedy.test.test_store_recovery -*-
"""
Opening a store: the index checkpoint loaded, then the journal after it
(each volume scanned from its replay start) replayed in sequence order; a
volume compacted after the checkpoint, a missing or truncated volume file,
or an unusable checkpoint is logged, counted and scanned from the start,
never raised.  Recovery then writes a fresh checkpoint before anything is
written where the damage was.
"""

import os

from speedy.chunkserver.checkpoint import CorruptCheckpoint, read_checkpoint
from speedy.chunkserver.needle_index import NeedleIndex
from speedy.chunkserver.volume import (
    DAMAGED, RECORD, TORN, DamagedVolume, Volume, parse_volume_file_name, record_span,
    scan_records)


class Recovery:
    """
    The L{speedy.chunkserver.store.ChunkStore}'s recovery at open
    (C{_recover}, synchronous): fills C{_volumes}, C{_index},
    C{_sequence} and the volumes' accounting.
    """

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
        for volume in volumes.values():
            self._reserve_tombstones(volume)
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
        """@return: the usable L{speedy.chunkserver.checkpoint.Checkpoint},
        or None (then every volume is scanned)."""
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
            self._disk.set_size(volume.fd, volume.size)
        except OSError as e:
            self.log.error("cannot re-extend volume {volume_id}: {e}",
                           volume_id=volume.volume_id, e=e)
            volume.size = length

    def _reserve_tombstones(self, volume):
        """Reserve the disk blocks of the log and of the tombstones its live
        chunks may need (a volume is a hole past them), so a delete does not
        fail for lack of room on a full disk."""
        volume.allocated = volume.tail  # the log below it is written
        try:
            volume.reserve_to(volume.promised_end(), step=0)
        except OSError as e:
            self.log.error("cannot reserve room for the tombstones of volume"
                           " {volume_id}: {e}", volume_id=volume.volume_id, e=e)

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
