# -*- test-case-name: speedy.test.test_collector,speedy.test.test_admin -*-
"""
The chunk collector: deletes, on every member of their groups, the chunks
recorded in the metadata store's C{garbage} table (deleted blobs and
files, replaced files, partial writes, deletes that failed on a member),
once they have been there longer than a grace period.  Each round first
runs the mark and sweep of the registry's tables
(L{speedy.chunkmaster.sweep}), which adds the chunks of the blobs no
manifest references to that table, and moves the intents older than the
grace period (chunks of upload bodies whose writer never handed them over:
an imageserver killed in a PATCH) into it, due at once.

The grace period is what makes deleting safe while the registry serves:
a blob or file row is removed first (in the metadata store, atomically),
and its chunks only become garbage then.  A pull that looked the row up
before it went holds the chunk list and reads for at most the grace
period; nothing can find the row afterwards, so after the grace period
no reader is left.  A chunk is forgotten only once every member of its
group acknowledged its delete (or never had it): one whose member is down
stays recorded and is tried again on the next round, so it does not
stay live on that member when it returns.

Several collectors may run at once (two chunkmasters on one database): a
chunkserver's delete of a missing chunk counts as done, so they only
repeat each other's work.  C{docs/gc.md} is the whole protocol.
"""

import attr
from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from speedy.chunkmaster.sweep import SweepCounts
from speedy.errors import ChunkNotFound
from speedy.logs import run_for
from speedy.records import DRAINING, RO, RW

log = Logger()

#: Default seconds a chunk stays recorded as garbage before it is deleted:
#: longer than any pull of a blob found before its delete.
DEFAULT_GRACE = 3600.0

#: Garbage records read per page.
PAGE = 1000


class GroupDeleter:
    """
    Deletes a chunk from every member of its group, as the chunkmaster
    knows them.

    @param cluster: the L{speedy.chunkmaster.cluster.Cluster}.
    @param client: an L{speedy.interfaces.IChunkClient}.
    """

    def __init__(self, cluster, client):
        self._cluster = cluster
        self._client = client

    def delete_replicas(self, chunk):
        """
        @return: a Deferred firing with True once every member of the
            chunk's group deleted it or did not hold it; False when the
            group has no members, a member is INIT or DOWN (it is not
            asked: the chunk waits for it) or a delete failed.
        """
        return Deferred.fromCoroutine(self._delete(chunk))

    async def _delete(self, chunk):
        members = self._cluster.members(chunk.group_id)
        # A DRAINING member stays DRAINING whether it is up or not: it is
        # asked, and a delete it fails keeps the record as a down one does.
        if not members or any(s.state not in (RW, RO, DRAINING) for s in members):
            return False
        results = await DeferredList(
            [self._client.delete(s.address, chunk.file_id) for s in members],
            consumeErrors=True)
        return all(ok or result.check(ChunkNotFound) for ok, result in results)


@attr.define
class CollectionRun:
    """What one round of the collector did (or, in a dry run, would do).

    @ivar started: when it started (the clock's seconds).
    @ivar dry_run: True if nothing was deleted, only counted.
    @ivar finished: when it ended, or None while it runs.
    @ivar chunks_deleted: chunks deleted from every member and forgotten
        (in a dry run: due for deletion).
    @ivar bytes_deleted: their bytes (one replica's worth).
    @ivar chunks_kept: due chunks some member did not delete (retried on
        the next round).
    @ivar chunks_waiting: chunks still inside the grace period.
    @ivar bytes_waiting: their bytes.
    @ivar chunks_due: the chunks past the grace period when the round
        started (what it works through: the progress's total).
    @ivar sweep: what the mark and sweep of the registry's tables deleted
        (in a dry run: what is garbage now), a L{SweepCounts}; None when
        the collector has no sweep.
    """

    started: float
    dry_run: bool = False
    finished: float = None
    chunks_deleted: int = 0
    bytes_deleted: int = 0
    chunks_kept: int = 0
    chunks_waiting: int = 0
    bytes_waiting: int = 0
    chunks_due: int = 0
    sweep: SweepCounts = None

    @property
    def duration(self):
        return None if self.finished is None else self.finished - self.started

    def as_json(self):
        return dict(attr.asdict(self), duration=self.duration)


class ChunkCollector(Service):
    """
    Deletes garbage chunks past their grace period, a round every
    C{period} seconds while running as a service.

    @param deleter: has C{delete_replicas(chunk)}, a Deferred firing with
        True once every member of the chunk's group deleted it (or never
        had it) (L{GroupDeleter},
        L{speedy.imageserver.replication.ReplicatedStorage}).
    @param metadata: an L{speedy.interfaces.IGarbageTables}.
    @param clock: an L{IReactorTime}.
    @param grace: seconds a chunk stays recorded before it is deleted.
    @param period: seconds between rounds; 0 never starts the timer
        (L{collect} still runs a round on demand).
    @param parallelism: chunk deletes in flight at once (the rate limit:
        each is one request to every member of a group).
    @param sweep: the L{speedy.chunkmaster.sweep.MetadataSweep} each round
        runs first, or None.

    @ivar last: the last finished L{CollectionRun} (dry runs excluded), or
        None.
    @ivar current: the L{CollectionRun} in progress, or None.
    @ivar totals: C{runs}, C{chunks_deleted}, C{bytes_deleted},
        C{blobs_deleted}, C{manifests_deleted} since start.
    """

    def __init__(self, deleter, metadata, clock, grace=DEFAULT_GRACE, period=60.0,
                 parallelism=8, page=PAGE, sweep=None):
        self._deleter = deleter
        self.sweep = sweep
        self._metadata = metadata
        self._clock = clock
        self.grace = grace
        self.period = period
        self.parallelism = parallelism
        self.page = page
        self.last = None
        self.current = None
        self.totals = {"runs": 0, "chunks_deleted": 0, "bytes_deleted": 0, "blobs_deleted": 0,
                       "manifests_deleted": 0}
        self._loop = None
        self._waiters = None

    def startService(self):
        """Collect every C{period} seconds (the first round after one period)."""
        super().startService()
        if self.period and self._loop is None:
            self._loop = LoopingCall(self._collect_logged)
            self._loop.clock = self._clock
            self._loop.start(self.period, now=False)

    def stopService(self):
        """Stop the timer (a round in progress finishes)."""
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None

    def _collect_logged(self):
        d = self.collect()
        d.addErrback(lambda f: log.failure("collecting garbage chunks failed", f))
        return d

    @property
    def collecting(self):
        """True while a round runs."""
        return self._waiters is not None

    def collect(self):
        """
        Run one round now, or join the round in progress.

        @return: a Deferred firing with its L{CollectionRun}.
        """
        d = Deferred()
        if self._waiters is not None:
            self._waiters.append(d)
            return d
        self._waiters = waiters = [d]
        self.current = CollectionRun(self._clock.seconds())

        def done(result):
            self._waiters = None
            self.current = None
            for waiter in waiters:
                waiter.callback(result)
        # For no request (an admin's POST joins the round running): its
        # chunkserver requests carry no trace.
        run_for(None, Deferred.fromCoroutine, self._collect(self.current)).addBoth(done)
        return d

    def dry_run(self):
        """
        Count what a round would delete now, deleting nothing.

        @return: a Deferred firing with a L{CollectionRun} (C{dry_run}
            True; C{chunks_deleted} and C{bytes_deleted} are what is due;
            C{sweep} what the mark and sweep would delete now).
        """
        return run_for(None, Deferred.fromCoroutine,
                       self._dry_run(CollectionRun(self._clock.seconds(), True)))

    async def _dry_run(self, run):
        if self.sweep is not None:
            run.sweep = await self.sweep.dry_run()
        return await self._count(run)

    async def _pages(self):
        after = None
        while True:
            records = await self._metadata.list_garbage(limit=self.page, after=after)
            yield records
            if len(records) < self.page:
                return
            after = records[-1]

    async def _count(self, run):
        horizon = run.started - self.grace
        intents = await self._metadata.list_intents(limit=None)
        for g in intents:
            if g.recorded < horizon:
                run.chunks_deleted += 1
                run.bytes_deleted += g.chunk.size
            else:
                run.chunks_waiting += 1
                run.bytes_waiting += g.chunk.size
        async for records in self._pages():
            for g in records:
                if g.recorded <= horizon:
                    run.chunks_deleted += 1
                    run.bytes_deleted += g.chunk.size
                else:
                    run.chunks_waiting += 1
                    run.bytes_waiting += g.chunk.size
        run.finished = self._clock.seconds()
        return run

    async def _collect(self, run):
        if self.sweep is not None:
            run.sweep = SweepCounts()
            await self.sweep.sweep(run.sweep)
        horizon = run.started - self.grace
        # Chunks whose writer never handed them over (an imageserver died
        # in a PATCH) become garbage, already due: nothing can name them.
        while await self._metadata.expire_intents(horizon, limit=self.page) == self.page:
            pass
        run.chunks_due = (await self._count(CollectionRun(run.started, True))).chunks_deleted
        async for records in self._pages():
            due = [g for g in records if g.recorded <= horizon]
            for g in records[len(due):]:
                run.chunks_waiting += 1
                run.bytes_waiting += g.chunk.size
            for first in range(0, len(due), self.parallelism):
                batch = due[first:first + self.parallelism]
                results = await DeferredList(
                    [self._deleter.delete_replicas(g.chunk) for g in batch], consumeErrors=True)
                done = [g.chunk for g, (ok, result) in zip(batch, results) if ok and result]
                if done:
                    await self._metadata.forget_garbage(done)
                run.chunks_deleted += len(done)
                run.bytes_deleted += sum(c.size for c in done)
                run.chunks_kept += len(batch) - len(done)
        run.finished = self._clock.seconds()
        self.last = run
        self.totals["runs"] += 1
        self.totals["chunks_deleted"] += run.chunks_deleted
        self.totals["bytes_deleted"] += run.bytes_deleted
        if run.sweep is not None:
            self.totals["blobs_deleted"] += run.sweep.blobs
            self.totals["manifests_deleted"] += run.sweep.manifests
            if run.sweep.blobs or run.sweep.manifests:
                log.info("garbage collection: {blobs} blobs no manifest references ({chunks} "
                         "chunks, {size} bytes) and {manifests} manifests deleted",
                         blobs=run.sweep.blobs, chunks=run.sweep.blob_chunks,
                         size=run.sweep.blob_bytes, manifests=run.sweep.manifests)
        if run.chunks_deleted or run.chunks_kept:
            log.info("garbage collection: {deleted} chunks ({size} bytes) deleted, "
                     "{kept} kept for a later round", deleted=run.chunks_deleted,
                     size=run.bytes_deleted, kept=run.chunks_kept)
        return run

    def status(self):
        """@return: the collector's settings, the round in progress and the
        last one, and the totals, as JSON."""
        return {
            "grace": self.grace,
            "period": self.period,
            "sweep": None if self.sweep is None else self.sweep.settings(),
            "running": self.collecting,
            "current": None if self.current is None else self.current.as_json(),
            "last": None if self.last is None else self.last.as_json(),
            "totals": dict(self.totals),
        }
