# -*- test-case-name: speedy.test.test_transfer -*-
"""
Online data transfer: chunks moved between replica groups while the
cluster serves, to drain a group (empty it so its servers can be removed)
or to rebalance (move bytes from the fullest group to the emptiest).

A transfer (L{TransferRecord}) moves chunks in batches.  One chunk
(L{ChunkMove}):

  1. a new file id in a target group (a writable group other than the
     source, the emptiest first) is allocated and the move is recorded
     I{before} any copy, so a crash leaves no copy nothing knows of;
  2. the chunk is read whole from a live member of the source group
     (DRAINING and read-only members first: they serve no writes; then
     any member but the one imageservers read this chunk from first, its
     rendezvous-hashed preferred replica, so the transfer reads from a
     replica clients are not reading it from) and checked against the metadata's size and CRC32C; it is written to
     every member of the target group under the new id, each PUT's CRC32C
     checked (all three durable: a chunkserver answers a PUT once synced);
  3. the batch is switched: in one transaction of the metadata store every
     reference to each old chunk (files, blobs, uploads, V1 layers) names
     the new one (L{ITransferTables.switch_moves});
  4. after C{delete_delay} seconds (long enough for reads that looked up a
     chunk list before the switch to finish), the switch is run once more
     (catching a writer that wrote an old chunk list back in the meantime)
     and the old copies are deleted from every member of the source group;
     then the move is forgotten.

Reads in flight are right throughout: until the delete both copies hold the
same bytes.  Everything is in the metadata store, so a crash of any role
resumes: a recorded move not switched yet is copied again (a chunkserver
takes a PUT of the same bytes under an id it holds), a switched one waits
for its delete.  A cancelled transfer deletes the new copies of moves not
switched yet and keeps the ones switched; a cancel that comes while a batch
copies stops it there (no copy starts after it) and stays, whatever the
batch saves afterwards.  A copy that cannot be deleted
now (a member down), or that nothing names once switched (its blob or file
was deleted during the move), goes to the garbage collector's table
(L{speedy.interfaces.IGarbageTables}), which deletes it from every member
in time, so a move leaves no orphan behind.

A drain sets its group read-only first (no new writes land there) and is
done once no chunk list names the group; its servers then hold no live
chunk (see docs/operations.md for removing them).  Copies share one
L{Pacer} (C{rate} bytes a second, counted once per target replica written)
and C{parallelism} chunks at once.

A transfer's chunkserver requests (its reads, copies and deletes) carry
its id (C{drain-3-1a2b3c4d}) as their trace, and the lines logged about it
carry it as their C{request_id} (L{speedy.logs}): an operator follows one
transfer through every log as one request.  The rest of the work carries
none, whoever kicked it (an admin's request starts a transfer, and the
next look serves every transfer at once).
"""

import secrets
from collections import deque

from attrs import define, evolve, field
from twisted.application.service import Service
from twisted.internet.defer import (
    CancelledError,
    Deferred,
    DeferredSemaphore,
    gatherResults,
    succeed,
)
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from speedy.crc import crc32c
from speedy.errors import BadRequest, ChecksumMismatch, ChunkNotFound, SpeedyError
from speedy.imageserver.placement import preferred_replica
from speedy.imageserver.replication import chain_order
from speedy.logs import run_for
from speedy.pacing import Pacer
from speedy.records import (
    DRAINING,
    RO,
    RW,
    TRANSFER_CANCELLED,
    TRANSFER_DELETING,
    TRANSFER_DONE,
    TRANSFER_RUNNING,
    BadReplica,
    ChunkMove,
    ChunkRef,
    TransferRecord,
)

#: States a source member is read in, the ones serving no writes first.
READABLE = (DRAINING, RO, RW)


class TransferFailed(SpeedyError):
    """One chunk could not be moved now; it is tried again."""


@define
class Rate:
    """
    A transfer's byte rate: the chunk bytes copied in the last C{window}
    seconds (or since its first batch began, when that is more recent),
    counted as each chunk's copies are written, so the status moves with
    every chunk rather than once a batch.  Kept in memory: a restarted
    chunkmaster shows it again after its first copy.
    """

    window: float = 30.0
    since: float | None = None
    copies: deque = field(factory=deque)  # (when copied, size)
    count: int = 0
    total: int = 0

    def start(self, now):
        """A batch of copies begins at C{now} (the first one counts from there)."""
        if self.since is None or not self.copies:
            self.since = now

    def add(self, now, size):
        """Count a chunk of C{size} bytes whose copies were all written at C{now}."""
        self._forget(now)
        self.copies.append((now, size))
        self.count += 1
        self.total += size

    def _forget(self, now):
        while self.copies and self.copies[0][0] < now - self.window:
            self.copies.popleft()

    def rate(self, now):
        """@return: bytes a second copied over the last C{window} seconds."""
        self._forget(now)
        if not self.copies or self.since is None:
            return 0.0
        span = min(self.window, now - self.since)
        return sum(size for _, size in self.copies) / max(span, 1e-3)


def fill(cluster, group_id):
    """@return: C{(used, capacity)} of a group: its fullest member's."""
    members = cluster.members(group_id)
    if not members:
        return 0, 0
    fullest = max(members, key=lambda s: s.used / s.capacity if s.capacity else 1.0)
    return fullest.used, fullest.capacity


class TransferService(Service):
    """
    Runs the transfers recorded in the metadata store every C{interval}
    seconds (and when asked, L{kick}), and deletes old copies whose delay
    has passed.
    """

    log = Logger()

    def __init__(self, clock, cluster, store, client, parallelism=2, rate=32 << 20,
                 delete_delay=600.0, interval=5.0, batch=32, replication="chain"):
        """
        @param cluster: the L{speedy.chunkmaster.cluster.Cluster}.
        @param store: the L{speedy.interfaces.IMetadataStore}.
        @param client: an L{speedy.interfaces.IChunkClient}.
        @param parallelism: chunks copied at once; 0 runs no transfer here
            (another chunkmaster on the same database does).
        @param rate: bytes a second written at most, all transfers together
            (0: no limit).
        @param delete_delay: seconds between a switch and the delete of the
            old copies.
        @param replication: C{"chain"} (one CHAIN_PUT through the target
            group's members) or C{"fanout"} (a PUT to each; chunkservers
            reached over TLS forward no chains).
        """
        if replication not in ("chain", "fanout"):
            raise ValueError(f"replication must be chain or fanout, not {replication!r}")
        self.replication = replication
        self._clock = clock
        self._cluster = cluster
        self._store = store
        self._client = client
        self.enabled = parallelism > 0
        self._slots = DeferredSemaphore(max(1, parallelism))
        self._pacer = Pacer(clock, rate)
        self.delete_delay = delete_delay
        self.interval = interval
        self.batch = batch
        self._loop = None
        self._working = None
        self._again = False
        self._rates = {}  # transfer_id -> Rate
        self._cancelled = set()  # transfer ids cancelled through this service
        self.counters = dict(moved=0, bytes=0, deleted=0, failed=0)

    def startService(self):
        super().startService()
        self._loop = LoopingCall(self.kick)
        self._loop.clock = self._clock
        self._loop.start(self.interval, now=False)

    def stopService(self):
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        if self._working is not None:
            self._working.cancel()

    # --- starting and stopping transfers ------------------------------------

    async def drain(self, group_id):
        """
        Start draining group C{group_id} (or return the drain already
        running): it takes no more writes, and its chunks move to the
        other writable groups.

        @return: the L{TransferRecord}.
        @raise BadRequest: no such group, or no other group to move to.
        """
        if not self._cluster.members(group_id):
            raise BadRequest(f"group {group_id} has no servers")
        for record in await self._store.list_transfers():
            if record.kind == "drain" and record.source_group == group_id \
                    and record.state == TRANSFER_RUNNING:
                return record
        if not self._targets(group_id, ()):
            raise BadRequest(f"no writable group but {group_id} to move its chunks to")
        await self._cluster.set_group_read_only(group_id, True)
        return await self._new("drain", group_id, ())

    async def rebalance(self, spread):
        """
        Start moving bytes from the fullest group to the emptiest if their
        fill ratios differ by more than C{spread} (0.1: ten points).

        @return: the L{TransferRecord}, or None when the groups are within
            the spread already.
        """
        groups = [g for g in self._groups() if self._cluster.writable(g)]
        filled = {g: fill(self._cluster, g) for g in groups}
        ratios = {g: used / capacity for g, (used, capacity) in filled.items() if capacity}
        if len(ratios) < 2:
            return None
        fullest = max(ratios, key=lambda g: (ratios[g], -g))
        emptiest = min(ratios, key=lambda g: (ratios[g], g))
        if ratios[fullest] - ratios[emptiest] <= spread:
            return None
        (used_f, cap_f), (used_e, cap_e) = filled[fullest], filled[emptiest]
        # The bytes that leave both at one ratio.
        budget = int((used_f * cap_e - used_e * cap_f) / (cap_e + cap_f))
        return await self._new("rebalance", fullest, (emptiest,), budget)

    async def _new(self, kind, source, targets, budget=None):
        record = TransferRecord(
            f"{kind}-{source}-{secrets.token_hex(4)}", kind, source, tuple(targets),
            byte_budget=budget)
        record = await self._store.put_transfer(record)
        self.log.info("transfer {id}: {kind} of group {group} started",
                      id=record.transfer_id, kind=kind, group=source)
        self.kick()
        return record

    async def cancel(self, transfer_id):
        """
        Stop a transfer: moves not switched yet are abandoned (their new
        copies deleted), moves switched stay.

        @return: the L{TransferRecord}, or None if there is no such transfer.
        """
        record = await self._store.get_transfer(transfer_id)
        if record is None or record.state in (TRANSFER_DONE, TRANSFER_CANCELLED):
            return record
        self._cancelled.add(transfer_id)  # copies of a batch under way stop
        record = await self._store.put_transfer(evolve(record, state=TRANSFER_CANCELLED))
        self.kick()
        return record

    # --- the work ------------------------------------------------------------

    def kick(self):
        """Work the transfers now (once the last look is done).
        @return: a Deferred firing when this look is done."""
        if not self.enabled:
            return succeed(None)
        if self._working is not None:
            self._again = True
            return self._working
        d = run_for(None, Deferred.fromCoroutine, self._work())
        d.addErrback(self._look_failed)
        if not d.called:
            self._working = d
            d.addBoth(self._looked)
        return d

    def _looked(self, result):
        self._working = None
        return result

    def _look_failed(self, failure):
        if not failure.check(CancelledError):
            self.log.failure("working the transfers failed", failure)

    async def _work(self):
        while True:
            self._again = False
            for record in await self._store.list_transfers():
                if record.state == TRANSFER_CANCELLED:
                    await run_for(record.transfer_id, Deferred.fromCoroutine,
                                  self._abandon(record))
                elif record.state == TRANSFER_RUNNING:
                    await run_for(record.transfer_id, Deferred.fromCoroutine,
                                  self._advance(record))
            await self.delete_old()
            for record in await self._store.list_transfers():
                if record.state == TRANSFER_DELETING and not await self._store.list_moves(
                        transfer_id=record.transfer_id, limit=1):
                    await self._save(record, state=TRANSFER_DONE)
                    self.log.info("transfer {id} is done", id=record.transfer_id)
            if not self._again:
                break

    async def _abandon(self, record):
        for move in await self._store.list_moves(transfer_id=record.transfer_id,
                                                 switched=False):
            await self._discard(move, "the copy of a cancelled transfer's move")

    async def _discard(self, move, reason):
        """Give up a move not switched: its new copies are deleted, and
        recorded as garbage when a member did not answer (a target that
        crashed mid-copy may hold one when it is back); then it is
        forgotten."""
        if not await self._delete_copies(move.new):
            await self._store.record_garbage([move.new], reason)
        await self._store.forget_moves([move])

    async def _referenced(self):
        """@return: the C{(group_id, file_id)} of every chunk a chunk list
        names (a scan of the metadata)."""
        return {(c.group_id, c.file_id) for _, c in await self._store.referenced_chunks()}

    async def _advance(self, record):
        """Move one batch of C{record}'s chunks: those recorded and not
        switched (before a crash, or whose copy failed) and up to C{batch}
        new ones, so that a chunk no copy succeeds for holds up no other;
        mark it deleting once none is left."""
        moves = list(await self._store.list_moves(transfer_id=record.transfer_id,
                                                  switched=False))
        remaining = await self._remaining(record, pending=sum(m.old.size for m in moves))
        if not remaining and not moves:
            await self._save(record, state=TRANSFER_DELETING, chunks_left=0)
            self.log.info("transfer {id}: every chunk moved; old copies are deleted "
                          "after {delay}s", id=record.transfer_id, delay=self.delete_delay)
            return
        total = len(moves) + len(remaining)
        if record.chunks_left != total:
            # The total is shown from the first batch on, not after it.
            record = await self._save(record, chunks_left=total)
        if remaining:
            moves += await self._plan(record, remaining[:self.batch])
        if not moves:
            return  # no target has room now: tried again later
        self._rates.setdefault(record.transfer_id, Rate()).start(self._clock.seconds())
        # A slot may free up in any context: each copy starts under its id.
        copies = [self._slots.run(lambda m=m: run_for(m.transfer_id, Deferred.fromCoroutine,
                                                      self._copy(m)))
                  for m in moves]
        results = await gatherResults(copies, consumeErrors=True)
        done = [move for move, ok in zip(moves, results) if ok]
        failed = [move for move, ok in zip(moves, results) if not ok]
        referenced = await self._referenced() if failed else set()
        for move in failed:
            if not self._cluster.writable(move.new.group_id):
                # Its target went away: plan it again elsewhere.
                await self._discard(move, "the copy of a move whose target group failed")
            elif (move.old.group_id, move.old.file_id) not in referenced:
                # Its owner was deleted (and the collector may have taken the
                # old copies already): nothing is left to move.
                await self._discard(move, "the copy of a move whose chunk was deleted")
                self._again = True  # the next batch at once
        if done:
            await self._store.switch_moves(done)
        size = sum(m.old.size for m in done)
        self.counters["moved"] += len(done)
        left = max(total - len(done), 0)
        await self._save(record, chunks_done=record.chunks_done + len(done),
                         bytes_done=record.bytes_done + size, chunks_left=left)
        if done:
            self._again = True  # the next batch at once

    async def _save(self, record, **changes):
        """
        Save C{changes} to a transfer this service works, keeping a cancel
        that came meanwhile (the API's, while a batch copied): the state
        is read back first, so only a cancel in the last instant before
        the write could be lost, and none made through this service.

        @return: the L{TransferRecord} saved.
        """
        current = await self._store.get_transfer(record.transfer_id)
        if record.transfer_id in self._cancelled or (
                current is not None and current.state == TRANSFER_CANCELLED):
            changes["state"] = TRANSFER_CANCELLED
        return await self._store.put_transfer(evolve(record, **changes))

    async def _remaining(self, record, pending=0):
        """@return: the distinct chunks the metadata still places in the
        source group and that are not on the move, or none once a
        rebalance's budget is spent (by the bytes done and the C{pending}
        bytes of its moves not switched yet)."""
        spent = record.bytes_done + pending
        if record.byte_budget is not None and spent >= record.byte_budget:
            return []
        moving = {(m.old.group_id, m.old.file_id) for m in await self._store.list_moves()}
        found = {}
        for _, chunk in await self._store.referenced_chunks():
            key = (chunk.group_id, chunk.file_id)
            if chunk.group_id == record.source_group and key not in moving:
                found[key] = chunk
        chunks = [found[key] for key in sorted(found)]
        if record.byte_budget is not None:
            left, within = record.byte_budget - spent, []
            for chunk in chunks:
                if left < chunk.size / 2:
                    break  # moving it would leave the groups further apart
                within.append(chunk)
                left -= chunk.size
            chunks = within
        return chunks

    def _groups(self):
        return sorted({s.group_id for s in self._cluster.servers()})

    def _targets(self, source, allowed):
        return [g for g in self._groups()
                if g != source and self._cluster.writable(g) and (not allowed or g in allowed)]

    async def _plan(self, record, chunks):
        """Record a move for each of C{chunks} to the emptiest target."""
        targets = self._targets(record.source_group, record.target_groups)
        if not targets:
            self.log.info("transfer {id}: no writable target group now", id=record.transfer_id)
            return []
        planned = {g: 0 for g in targets}
        filled = {g: fill(self._cluster, g) for g in targets}

        def ratio(g):
            used, capacity = filled[g]
            return (used + planned[g]) / capacity if capacity else 1.0

        start, end = await self._store.allocate_file_ids(len(chunks))
        moves = []
        for chunk, file_id in zip(chunks, range(start, end)):
            target = min(targets, key=lambda g: (ratio(g), g))
            planned[target] += chunk.size
            move = ChunkMove(chunk, ChunkRef(target, file_id, chunk.size, chunk.crc32c),
                             record.transfer_id)
            await self._store.record_move(move)
            moves.append(move)
        return moves

    def _sources(self, chunk):
        """@return: the members of C{chunk}'s group to read it from, in
        order: those serving no writes first, then, of the rest, the ones
        clients do not read this chunk from (imageservers go to its
        preferred replica first, L{preferred_replica}): the transfer keeps
        off the disks and the cache clients are using."""
        group = self._cluster.members(chunk.group_id)
        keeper = preferred_replica(group, chunk.file_id)
        members = [s for s in group if s.state in READABLE and not s.rebuilding]
        return sorted(members, key=lambda s: (READABLE.index(s.state), s is keeper,
                                              s.server_id))

    async def _copy(self, move):
        """
        Copy one chunk to every member of its new group.

        @return: True once every copy is written and checked; False when it
            is tried again later.
        """
        if move.transfer_id in self._cancelled:
            return False  # left unswitched: the cancel deletes what it copied
        try:
            data = await self._read(move.old)
            targets = self._cluster.members(move.new.group_id)
            if not self._cluster.writable(move.new.group_id):
                raise TransferFailed(f"group {move.new.group_id} takes no writes now")
            await self._pacer.spend(len(data) * len(targets))
            if move.transfer_id in self._cancelled:
                return False
            if self.replication == "chain":
                targets = chain_order(targets, move.new.file_id)
                infos = await self._client.chain_put(
                    targets[0].address, move.new.file_id, data,
                    [t.address for t in targets[1:]])
            else:
                infos = await gatherResults(
                    [self._client.put(t.address, move.new.file_id, data) for t in targets],
                    consumeErrors=True)
            for target, info in zip(targets, infos):
                if (info.size, info.crc32c) != (move.new.size, move.new.crc32c):
                    raise ChecksumMismatch(
                        f"chunk {move.new.file_id} arrived on {target.server_id} as "
                        f"{info.size} bytes {info.crc32c:08x}")
        except Exception as e:
            if isinstance(e, CancelledError):
                raise
            self.counters["failed"] += 1
            why = e.subFailure.getErrorMessage() if hasattr(e, "subFailure") else str(e)
            self.log.info("moving chunk {file_id} of group {group} failed ({why}); it is "
                          "tried again", file_id=move.old.file_id, group=move.old.group_id,
                          why=why)
            return False
        self.counters["bytes"] += len(data)
        self._rates.setdefault(move.transfer_id, Rate()).add(self._clock.seconds(), len(data))
        return True

    async def _read(self, chunk):
        """@return: the bytes of C{chunk} from a live member of its group,
        checked against its size and CRC32C."""
        for source in self._sources(chunk):
            try:
                data = bytes(await self._client.get(source.address, chunk.file_id))
            except ChunkNotFound:
                continue
            except ChecksumMismatch:
                await self._store.record_bad_replica(BadReplica(
                    source.server_id, chunk.group_id, chunk.file_id,
                    "damaged, found by a transfer"))
                continue
            except SpeedyError:
                continue
            if (len(data), crc32c(data)) == (chunk.size, chunk.crc32c):
                return data
        raise TransferFailed(f"no member of group {chunk.group_id} gave chunk "
                             f"{chunk.file_id} with its recorded size and CRC32C")

    async def delete_old(self):
        """Delete the old copies of moves switched more than C{delete_delay}
        seconds ago, after switching any reference written back since."""
        due = await self._store.list_moves(
            switched=True, switched_before=self._clock.seconds() - self.delete_delay,
            limit=self.batch * 8)
        if not due:
            return
        await self._store.switch_moves(due)
        # A chunk whose owner was deleted between the move's record and the
        # switch has a new copy nothing names: garbage.  (One deleted after
        # the switch had its new copy recorded by its deleter.)
        referenced = await self._referenced()
        orphans = [m.new for m in due if (m.new.group_id, m.new.file_id) not in referenced]
        if orphans:
            await self._store.record_garbage(orphans, "the copy of a moved chunk whose owner "
                                             "was deleted during the move")
        gone = []
        for move in due:
            if await run_for(move.transfer_id, Deferred.fromCoroutine,
                             self._delete_copies(move.old)):
                gone.append(move)
        await self._store.forget_moves(gone)
        self.counters["deleted"] += len(gone)

    async def _delete_copies(self, chunk):
        """@return: True once no live member of the chunk's group holds it
        (a member down keeps it: it is tried again)."""
        whole = True
        for server in self._cluster.members(chunk.group_id):
            if server.state not in READABLE:
                whole = False
                continue
            try:
                await self._client.delete(server.address, chunk.file_id)
            except ChunkNotFound:
                pass
            except SpeedyError:
                whole = False
        return whole

    # --- progress --------------------------------------------------------------

    async def status(self):
        """@return: the JSON-ready state of every transfer, newest last."""
        transfers = []
        for record in await self._store.list_transfers():
            pending = len(await self._store.list_moves(
                transfer_id=record.transfer_id, switched=True))
            copied = self._rates.get(record.transfer_id, Rate())
            rate = copied.rate(self._clock.seconds())
            if record.chunks_done:
                average = record.bytes_done / record.chunks_done
            else:  # the first batch: the chunks copied so far
                average = copied.total / copied.count if copied.count else 0
            if record.byte_budget is not None:
                bytes_left = max(record.byte_budget - record.bytes_done, 0)
            else:
                bytes_left = record.chunks_left * average
            eta = bytes_left / rate if rate and bytes_left and \
                record.state == TRANSFER_RUNNING else None
            transfers.append({
                "transfer_id": record.transfer_id, "kind": record.kind,
                "source_group": record.source_group,
                "target_groups": list(record.target_groups), "state": record.state,
                "chunks_done": record.chunks_done, "chunks_left": record.chunks_left,
                "bytes_done": record.bytes_done, "byte_budget": record.byte_budget,
                "old_copies_pending": pending, "rate": round(rate, 1),
                "eta": None if eta is None else round(eta, 1),
                "created": record.created, "updated": record.updated})
        return {"transfers": transfers, "counters": dict(self.counters),
                "delete_delay": self.delete_delay}
