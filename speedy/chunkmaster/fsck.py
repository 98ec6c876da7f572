# -*- test-case-name: speedy.test.test_fsck -*-
"""
fsck: the metadata store's chunk lists checked against what every member
of every group holds.

For each group, every live member is asked for its chunk ids (LIST); every
chunk the metadata names (L{IRepairTables.referenced_chunks}: files, blobs,
uploads in progress) is then

  - I{missing} on a live member that does not hold it;
  - I{damaged} on a member whose copy's size or CRC32C (STAT, from its
    index; or, with C{verify}, VERIFY, read back from its disk) differs
    from what the metadata recorded;
  - I{under-replicated} when fewer than all the group's members hold a
    good copy (also when a member is down);
  - I{lost} when no member holds a good copy;

and every chunk a member holds that nothing owns and that is not waiting
in the garbage table (or recorded as an intent: a PATCH, a whole-blob POST
or a file PUT being written, or whose imageserver died) is I{orphaned} (a
write that failed half-way and whose clean-up failed too, a V1 layer PUT
being written or cut short, which records no intents, or a chunk stored
through the chunk API, which nothing owns).  With C{repair},
missing and damaged replicas are queued for repair (C{bad_replicas});
orphans are only reported: deleting chunks is the garbage collector's
business.

A run's progress (groups and chunks checked) is visible while it runs
(L{Fsck.progress}); the report lists the first L{MAX_LISTED} findings of
each kind with their counts.
"""

from collections import defaultdict

from attrs import define, field
from twisted.internet.defer import Deferred, DeferredSemaphore, gatherResults
from twisted.logger import Logger

from speedy.errors import ChecksumMismatch, ChunkNotFound, SpeedyError
from speedy.logs import run_for
from speedy.records import RO, RW, BadReplica

log = Logger()

#: Findings of each kind listed in a report (all are counted).
MAX_LISTED = 100

KINDS = ("missing", "damaged", "under_replicated", "lost", "orphaned", "unreachable")


@define
class Findings:
    """The counts and first findings of one kind."""

    count: int = 0
    items: list = field(factory=list)

    def add(self, item):
        self.count += 1
        if len(self.items) < MAX_LISTED:
            self.items.append(item)


class Fsck:
    """One fsck run over a cluster."""

    def __init__(self, cluster, store, client, repair=False, verify=False, concurrency=32):
        """
        @param cluster: the L{speedy.chunkmaster.cluster.Cluster}.
        @param store: the L{speedy.interfaces.IRepairTables} (and
            L{IGarbageTables}) of the metadata store.
        @param client: an L{speedy.interfaces.IChunkClient}.
        @param repair: queue missing and damaged replicas for repair.
        @param verify: read every copy back from its disk (VERIFY) instead
            of comparing the chunkservers' indexes (STAT): slow, thorough.
        @param concurrency: chunkserver requests in flight at once.
        """
        self._cluster = cluster
        self._store = store
        self._client = client
        self.repair = repair
        self.verify = verify
        self._requests = DeferredSemaphore(concurrency)
        self.findings = {kind: Findings() for kind in KINDS}
        self.progress = {"groups": 0, "groups_done": 0, "chunks": 0, "chunks_done": 0}
        self.queued = 0

    async def run(self):
        """@return: the report (L{report})."""
        references = await self._store.referenced_chunks()
        garbage = await self._store.list_garbage(limit=None)
        garbage += await self._store.list_intents(limit=None)
        owned = defaultdict(dict)  # group -> file id -> (owner, ChunkRef)
        for owner, chunk in references:
            owned[chunk.group_id][chunk.file_id] = (owner, chunk)
        waiting = {(g.chunk.group_id, g.chunk.file_id) for g in garbage}
        groups = sorted(set(owned) | {s.group_id for s in self._cluster.servers()})
        self.progress.update(groups=len(groups), chunks=len(references))
        for group_id in groups:
            await self._check_group(group_id, owned.get(group_id, {}), waiting)
            self.progress["groups_done"] += 1
        return self.report()

    async def _check_group(self, group_id, owned, waiting):
        members = self._cluster.members(group_id)
        size = self._cluster.group_size
        held = {}
        for server in members:
            if server.state not in (RW, RO):
                continue
            try:
                held[server.server_id] = set(await self._client.list(server.address))
            except SpeedyError as e:
                self.findings["unreachable"].add({"group_id": group_id,
                                                  "server_id": server.server_id,
                                                  "error": str(e)})
        alive = [s for s in members if s.server_id in held]
        checks = []
        for file_id, (owner, chunk) in sorted(owned.items()):
            checks.append(Deferred.fromCoroutine(
                self._check_chunk(group_id, file_id, owner, chunk, alive, held, size)))
        await gatherResults(checks, consumeErrors=True)
        for server in alive:
            for file_id in sorted(held[server.server_id] - owned.keys()):
                if (group_id, file_id) not in waiting:
                    self.findings["orphaned"].add({"group_id": group_id, "file_id": file_id,
                                                   "server_id": server.server_id})

    async def _check_chunk(self, group_id, file_id, owner, chunk, alive, held, size):
        good = 0
        for server in alive:
            item = {"group_id": group_id, "file_id": file_id, "server_id": server.server_id,
                    "owner": owner}
            if file_id not in held[server.server_id]:
                await self._bad(self.findings["missing"], item, "fsck: missing")
                continue
            if await self._copy_is_good(server, chunk):
                good += 1
            else:
                await self._bad(self.findings["damaged"], item, "fsck: damaged")
        if good == 0:
            self.findings["lost"].add({"group_id": group_id, "file_id": file_id, "owner": owner})
        elif good < size:
            self.findings["under_replicated"].add(
                {"group_id": group_id, "file_id": file_id, "owner": owner, "good": good})
        self.progress["chunks_done"] += 1

    async def _copy_is_good(self, server, chunk):
        ask = self._client.verify if self.verify else self._client.stat
        try:
            info = await self._requests.run(ask, server.address, chunk.file_id)
        except (ChunkNotFound, ChecksumMismatch):
            return False
        return (info.size, info.crc32c) == (chunk.size, chunk.crc32c)

    async def _bad(self, findings, item, reason):
        findings.add(item)
        if self.repair:
            await self._store.record_bad_replica(BadReplica(
                item["server_id"], item["group_id"], item["file_id"], reason))
            self.queued += 1

    def report(self):
        """@return: the JSON-ready findings: for each kind its count and
        first items, the progress, and how many repairs were queued."""
        report = {kind: {"count": f.count, "items": f.items} for kind, f in self.findings.items()}
        report["progress"] = dict(self.progress)
        report["repairs_queued"] = self.queued
        report["clean"] = not any(f.count for f in self.findings.values())
        return report


class FsckRunner:
    """
    The chunkmaster's fsck runs, one at a time, in the background: what
    C{POST /v1/admin/fsck} starts and C{GET /v1/admin/fsck} shows.
    """

    def __init__(self, clock, cluster, store, client):
        self._clock = clock
        self._cluster = cluster
        self._store = store
        self._client = client
        self._fsck = None
        self._running = None
        self._state = {"state": "idle"}

    @property
    def running(self):
        return self._running is not None

    def start(self, repair=False, verify=False):
        """
        Start a run.

        @return: the run's state (L{status}).
        @raise FsckRunning: one is running already.
        """
        if self._running is not None:
            raise FsckRunning("an fsck is running already")
        self._fsck = Fsck(self._cluster, self._store, self._client, repair=repair, verify=verify)
        self._state = {"state": "running", "repair": repair, "verify": verify,
                       "started": self._clock.seconds(), "ended": None}
        # For no request (it outlives the admin's POST that started it):
        # its chunkserver requests carry no trace.
        self._running = run_for(None, Deferred.fromCoroutine, self._fsck.run())
        self._running.addCallbacks(self._done, self._failed)
        return self.status()

    def _done(self, report):
        self._state.update(state="done", ended=self._clock.seconds(), report=report)
        self._running = None

    def _failed(self, failure):
        self._state.update(state="failed", ended=self._clock.seconds(),
                           error=failure.getErrorMessage(), report=self._fsck.report())
        self._running = None
        if not isinstance(failure.value, SpeedyError):
            log.failure("fsck failed", failure)

    def status(self):
        """@return: the JSON-ready state of the last run (its progress while
        it runs, its report once done)."""
        state = dict(self._state)
        if self._running is not None:
            state["progress"] = dict(self._fsck.progress)
        return state

    def stop(self):
        if self._running is not None:
            self._running.cancel()


class FsckRunning(SpeedyError):
    """A second fsck was asked for while one runs."""
