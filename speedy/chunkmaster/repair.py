# -*- test-case-name: speedy.test.test_repair -*-
"""
Repair: every replica known to be bad or missing is copied back from a
healthy member of its group, and a member that replaced a lost one is
filled from the others (a group rebuild).  Runs in the chunkmaster, off the
data path: it reads and writes chunkservers with the wire protocol like an
imageserver does.

The queue is the C{bad_replicas} table (L{IRepairTables}): imageservers
record a replica that failed a read, chunkservers report the chunks their
scrubber or a read found damaged (they drop those at once), and fsck
records what it finds missing.  Being in the database, the queue outlives a
restart of any role.  Repairing one entry (L{RepairService.repair}):

  1. the target must be alive (RW or RO); otherwise the entry waits;
  2. VERIFY on the target: if its copy is good after all and the other
     members hold the same chunk (STAT), the entry is done (a read that
     failed for a passing reason); a damaged copy is dropped there by the
     check itself, and a consistent copy of other bytes than the other
     members hold (a chunk replaced behind the metadata's back) is deleted;
  3. GET the whole chunk from another live member of the group (the chunk
     client checks the whole chunk's CRC32C as it arrives; a source whose
     copy is damaged is recorded bad in turn and the next is tried);
  4. PUT it to the target under the same file id.  A chunkserver takes a
     PUT of an id it does not hold, or of the same bytes, never other bytes
     over a good record, so a repair can never spoil a good copy; the
     CRC32C the target computed must equal the source's;
  5. forget the entry.

If no live member holds the chunk any more, it was deleted (or lost with
every copy): the entry is forgotten, and fsck reports a lost chunk.

A rebuild (L{RepairService.rebuild}) lists the chunks of every other live
member of the group, lists the newcomer's, and copies what it lacks, then
lists again; once it holds everything the others hold, the chunkmaster
ends its rebuild (L{Cluster.finish_rebuild}) and the group takes writes
again.  Its progress (chunks and bytes done, rate, time left) is kept in
memory and rebuilt from the lists after a restart.

Both share a bound on the chunks copied at once (C{parallelism}) and on the
bytes a second (C{rate}, through one L{Pacer}).
"""

from attrs import define
from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, DeferredSemaphore, succeed
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from speedy.crc import crc32c
from speedy.errors import ChecksumMismatch, ChunkNotFound, SpeedyError
from speedy.logs import run_for
from speedy.pacing import Pacer
from speedy.records import RO, RW, BadReplica

#: States a server reads and writes in.
ALIVE = (RW, RO)


@define
class RebuildProgress:
    """How far the rebuild of one server has come."""

    server_id: str
    group_id: int
    started: float
    state: str = "listing"  # listing, copying, finishing, done, waiting
    chunks_total: int = 0
    chunks_done: int = 0
    bytes_done: int = 0
    failed: int = 0
    rate: float = 0.0  # bytes a second, a moving average
    last: float = 0.0  # when the last chunk was copied
    ended: float = None  # when it was done

    def copied(self, now, size):
        """Count one chunk copied now; keep the byte rate's moving average."""
        self.chunks_done += 1
        self.bytes_done += size
        elapsed = max(now - self.last, 1e-3) if self.last else None
        self.last = now
        if elapsed is not None:
            sample = size / elapsed
            self.rate = sample if not self.rate else 0.8 * self.rate + 0.2 * sample

    def as_json(self, now):
        left = self.chunks_total - self.chunks_done
        average = self.bytes_done / self.chunks_done if self.chunks_done else 0
        eta = left * average / self.rate if self.rate and left > 0 else None
        return {"server_id": self.server_id, "group_id": self.group_id, "state": self.state,
                "started": self.started,
                "elapsed": (now if self.ended is None else self.ended) - self.started,
                "chunks_total": self.chunks_total, "chunks_done": self.chunks_done,
                "bytes_done": self.bytes_done, "failed": self.failed,
                "rate": round(self.rate, 1), "eta": None if eta is None else round(eta, 1)}


class NoSource(SpeedyError):
    """No live member of the group could give the chunk right now."""


class RepairService(Service):
    """
    Works the repair queue and the rebuilds every C{interval} seconds (and
    when asked, L{kick}).

    @ivar counters: C{repaired}, C{found_good}, C{gone} (deleted or lost),
        C{failed} and C{bytes} since the start.
    """

    log = Logger()

    def __init__(self, clock, cluster, store, client, parallelism=2, rate=64 << 20,
                 interval=5.0, batch=200):
        """
        @param cluster: the L{speedy.chunkmaster.cluster.Cluster}.
        @param store: the L{speedy.interfaces.IRepairTables}.
        @param client: an L{speedy.interfaces.IChunkClient}.
        @param parallelism: chunks copied at once, repairs and rebuilds
            together; 0 copies none here (another chunkmaster on the same
            database does), and L{kick} does nothing.
        @param rate: bytes a second copied at most, all together.
        @param interval: seconds between looks at the queue.
        @param batch: queue entries taken per look.
        """
        self._clock = clock
        self._cluster = cluster
        self._store = store
        self._client = client
        self.enabled = parallelism > 0
        self._slots = DeferredSemaphore(max(1, parallelism))
        self._pacer = Pacer(clock, rate)
        self.interval = interval
        self.batch = batch
        self._loop = None
        self._working = None
        self._again = False
        self._repairing = set()  # (server_id, file_id) being repaired
        self._rebuilds = {}  # server_id -> Deferred of its rebuild
        self.progress = {}  # server_id -> RebuildProgress
        self.counters = dict(repaired=0, found_good=0, gone=0, failed=0, bytes=0)
        self.queued = 0

    def startService(self):
        super().startService()
        self._loop = LoopingCall(self.kick)
        self._loop.clock = self._clock
        self._loop.start(self.interval, now=False)

    def stopService(self):
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        for d in list(self._rebuilds.values()):
            d.cancel()
        if self._working is not None:
            self._working.cancel()

    def kick(self):
        """Look at the queue and the rebuilds now (once the last look is
        done).  @return: a Deferred firing when this look is done."""
        if not self.enabled:
            return succeed(None)
        if self._working is not None:
            self._again = True
            return self._working
        # For no request, whoever kicked it (a heartbeat, an admin's POST):
        # its chunkserver requests carry no trace.
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
            self.log.failure("looking at the repair queue failed", failure)

    async def _work(self):
        while True:
            self._again = False
            self._start_rebuilds()
            await self._work_queue()
            if not self._again:
                break

    async def _work_queue(self):
        self.queued = await self._store.count_bad_replicas()
        entries = await self._store.list_bad_replicas(limit=self.batch)
        pending = []
        for bad in entries:
            key = (bad.server_id, bad.file_id)
            if key in self._repairing:
                continue
            self._repairing.add(key)
            d = self._slots.run(lambda bad=bad: Deferred.fromCoroutine(self.repair(bad)))
            d.addBoth(self._repaired, key)
            pending.append(d)
        for d in pending:
            await d
        self.queued = await self._store.count_bad_replicas()

    def _repaired(self, result, key):
        self._repairing.discard(key)
        if hasattr(result, "check"):  # a Failure
            if result.check(CancelledError):
                return result
            self.counters["failed"] += 1
            self.log.info("repair of chunk {file_id} on {server_id} failed, will retry: {why}",
                          file_id=key[1], server_id=key[0], why=result.getErrorMessage())
        return None

    # --- one bad replica -------------------------------------------------

    async def repair(self, bad):
        """
        Repair one L{BadReplica} (see the module docstring).

        @return: what happened: C{"repaired"}, C{"found_good"}, C{"gone"},
            C{"waiting"} (the target is not alive, or no source answered:
            the entry stays queued).
        """
        target = self._cluster.server(bad.server_id)
        if target is None or target.group_id != bad.group_id:
            # Removed (a replacement is rebuilt from scratch) or moved.
            await self._store.forget_bad_replica(bad.server_id, bad.file_id)
            self.counters["gone"] += 1
            return "gone"
        if target.state not in ALIVE:
            return "waiting"
        try:
            held = await self._client.verify(target.address, bad.file_id)
        except (ChunkNotFound, ChecksumMismatch):
            pass
        else:
            if await self._agrees(bad.group_id, target, held):
                await self._store.forget_bad_replica(bad.server_id, bad.file_id)
                self.counters["found_good"] += 1
                return "found_good"
            self.log.warn("chunk {file_id} on {server_id} is other bytes than the other members"
                          " hold: replacing it", file_id=bad.file_id, server_id=bad.server_id)
            await self._client.delete(target.address, bad.file_id)
        try:
            size = await self.copy(bad.group_id, bad.file_id, target)
        except NoSource as e:
            if e.args and e.args[0] == "gone":
                await self._store.forget_bad_replica(bad.server_id, bad.file_id)
                self.counters["gone"] += 1
                self.log.warn("chunk {file_id} of group {group_id} is on no live member: "
                              "deleted, or lost", file_id=bad.file_id, group_id=bad.group_id)
                return "gone"
            return "waiting"
        await self._store.forget_bad_replica(bad.server_id, bad.file_id)
        self.counters["repaired"] += 1
        self.log.info("repaired chunk {file_id} on {server_id} ({size} bytes)",
                      file_id=bad.file_id, server_id=bad.server_id, size=size)
        return "repaired"

    async def _agrees(self, group_id, target, held):
        """@return: True unless the other live members that hold the chunk
        all hold another size or CRC32C than C{held}."""
        others = []
        for source in self._sources(group_id, target):
            try:
                others.append(await self._client.stat(source.address, held.file_id))
            except SpeedyError:
                continue
        return not others or any((o.size, o.crc32c) == (held.size, held.crc32c) for o in others)

    def _sources(self, group_id, target):
        """@return: the live members of the group a chunk may be copied
        from onto C{target}."""
        return [s for s in self._cluster.members(group_id)
                if s.server_id != target.server_id and s.state in ALIVE and not s.rebuilding]

    async def copy(self, group_id, file_id, target):
        """
        Copy chunk C{file_id} of group C{group_id} from another live member
        onto C{target}, checked end to end.

        @return: the chunk's size.
        @raise NoSource: C{"gone"} when every live member answered that it
            does not hold the chunk; C{"unreachable"} when some could not
            be asked.
        @raise SpeedyError: the target refused or failed the PUT.
        """
        sources = self._sources(group_id, target)
        unreachable = not sources
        for source in sources:
            try:
                data = bytes(await self._client.get(source.address, file_id))
            except ChunkNotFound:
                continue
            except ChecksumMismatch:
                await self._store.record_bad_replica(BadReplica(
                    source.server_id, group_id, file_id, "damaged, found by a repair"))
                continue
            except SpeedyError:
                unreachable = True
                continue
            # The client checked the whole chunk against the source's CRC32C.
            expected = crc32c(data)
            await self._pacer.spend(len(data))
            info = await self._client.put(target.address, file_id, data)
            if (info.size, info.crc32c) != (len(data), expected):
                raise ChecksumMismatch(
                    f"chunk {file_id} arrived on {target.server_id} as {info.size} bytes "
                    f"{info.crc32c:08x}, not {len(data)} {expected:08x}")
            self.counters["bytes"] += len(data)
            return len(data)
        raise NoSource("unreachable" if unreachable else "gone")

    # --- rebuilds ----------------------------------------------------------

    def _start_rebuilds(self):
        for server in self._cluster.servers():
            if server.rebuilding and server.server_id not in self._rebuilds:
                d = Deferred.fromCoroutine(self.rebuild(server.server_id))
                self._rebuilds[server.server_id] = d
                d.addBoth(self._rebuild_ended, server.server_id)

    def _rebuild_ended(self, result, server_id):
        del self._rebuilds[server_id]
        if hasattr(result, "check") and not result.check(CancelledError):
            self.log.failure("the rebuild of {server_id} stopped; it restarts", result,
                             server_id=server_id)
        return None

    async def rebuild(self, server_id):
        """
        Fill rebuilding server C{server_id} with every chunk the other live
        members of its group hold, then end its rebuild.

        @return: True once it is rebuilt; False when it cannot go on now
            (it or every other member is not alive; it is tried again).
        """
        server = self._cluster.server(server_id)
        progress = self.progress.get(server_id)
        if progress is None or progress.state == "done":
            progress = self.progress[server_id] = RebuildProgress(
                server_id, server.group_id, self._clock.seconds())
        while True:
            server = self._cluster.server(server_id)
            if server is None or not server.rebuilding:
                return False
            others = [s for s in self._cluster.members(server.group_id)
                      if s.server_id != server_id and s.state in ALIVE and not s.rebuilding]
            if server.state not in ALIVE or not others:
                progress.state = "waiting"
                return False
            progress.state = "listing"
            wanted = set()
            for other in others:
                wanted.update(await self._client.list(other.address))
            held = set(await self._client.list(server.address))
            missing = sorted(wanted - held)
            progress.chunks_total = progress.chunks_done + len(missing)
            if not missing:
                progress.state = "finishing"
                await self._cluster.finish_rebuild(server_id)
                progress.state = "done"
                progress.ended = self._clock.seconds()
                self.log.info("rebuilt {server_id}: {chunks} chunks, {size} bytes copied",
                              server_id=server_id, chunks=progress.chunks_done,
                              size=progress.bytes_done)
                return True
            progress.state = "copying"
            copies = [self._slots.run(lambda fid=fid: Deferred.fromCoroutine(
                self._rebuild_one(server, fid, progress))) for fid in missing]
            for d in copies:
                await d

    async def _rebuild_one(self, server, file_id, progress):
        try:
            size = await self.copy(server.group_id, file_id, server)
        except NoSource:
            progress.failed += 1  # deleted meanwhile, or its holders are away
            return
        except SpeedyError as e:
            progress.failed += 1
            self.log.info("rebuild of {server_id}: chunk {file_id} failed ({error}); "
                          "it is tried again", server_id=server.server_id, file_id=file_id,
                          error=e)
            return
        progress.copied(self._clock.seconds(), size)

    async def current_status(self):
        """@return: L{status}, with the queue counted now."""
        self.queued = await self._store.count_bad_replicas()
        return self.status()

    def status(self):
        """@return: the JSON-ready state of repairs and rebuilds."""
        now = self._clock.seconds()
        return {
            "queued": self.queued,
            "repairing": len(self._repairing),
            "counters": dict(self.counters),
            "rebuilds": [p.as_json(now) for _, p in sorted(self.progress.items())],
        }

