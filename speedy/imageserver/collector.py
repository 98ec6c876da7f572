# -*- test-case-name: speedy.test.test_imageserver_collector -*-
"""
The chunk collector: deletes, on every member of their groups, the chunks
recorded in the metadata store's C{garbage} table (deleted blobs and
files, replaced files, partial writes, deletes that failed on a member),
once they have been there longer than a grace period.

The grace period is what makes deleting safe while the registry serves:
a blob or file row is removed first (in the metadata store, atomically),
and its chunks only become garbage then.  A pull that looked the row up
before it went holds the chunk list and reads for at most the grace
period; nothing can find the row afterwards, so after the grace period
no reader is left.  A chunk is forgotten only once every member of its
group acknowledged its delete (or never had it): one whose member is down
stays recorded and is tried again on the next round, so it does not
stay live on that member when it returns.

Several imageservers may collect at once: a chunkserver's delete of a
missing chunk counts as done, so two collectors only repeat each other's
work.
"""

import attr
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

log = Logger()

#: Default seconds a chunk stays recorded as garbage before it is deleted:
#: longer than any pull of a blob found before its delete.
DEFAULT_GRACE = 3600.0

#: Garbage records read per page.
PAGE = 1000


@attr.frozen
class CollectionRun:
    """What one round of the collector did.

    @ivar started: when it started (the clock's seconds).
    @ivar duration: seconds it took.
    @ivar chunks_deleted: chunks deleted from every member and forgotten.
    @ivar bytes_deleted: their bytes (one replica's worth).
    @ivar chunks_kept: due chunks some member did not delete (retried on
        the next round).
    @ivar chunks_waiting: chunks still inside the grace period.
    """

    started: float
    duration: float = 0.0
    chunks_deleted: int = 0
    bytes_deleted: int = 0
    chunks_kept: int = 0
    chunks_waiting: int = 0

    def as_json(self):
        return attr.asdict(self)


class ChunkCollector:
    """
    Deletes garbage chunks past their grace period, a round every
    C{period} seconds while started.

    @param storage: has C{delete_replicas(chunk)} (a
        L{speedy.imageserver.replication.ReplicatedStorage}).
    @param metadata: an L{speedy.interfaces.IGarbageTables}.
    @param clock: an L{IReactorTime}.
    @param grace: seconds a chunk stays recorded before it is deleted.
    @param period: seconds between rounds; 0 never starts the timer
        (L{collect} still runs a round on demand).
    @param parallelism: chunk deletes in flight at once (the rate limit:
        each is one request to every member of a group).
    """

    def __init__(self, storage, metadata, clock, grace=DEFAULT_GRACE, period=60.0,
                 parallelism=8, page=PAGE):
        self._storage = storage
        self._metadata = metadata
        self._clock = clock
        self.grace = grace
        self.period = period
        self.parallelism = parallelism
        self.page = page
        #: the last finished L{CollectionRun}, or None
        self.last = None
        #: totals since start: runs, chunks_deleted, bytes_deleted
        self.totals = {"runs": 0, "chunks_deleted": 0, "bytes_deleted": 0}
        self._loop = None
        self._running = None

    def start(self):
        """Collect every C{period} seconds (the first round after one period)."""
        if self.period and self._loop is None:
            self._loop = LoopingCall(self._collect_logged)
            self._loop.clock = self._clock
            self._loop.start(self.period, now=False)

    def stop(self):
        """Stop the timer (a round in progress finishes)."""
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None

    def _collect_logged(self):
        d = self.collect()
        d.addErrback(lambda f: log.failure("collecting garbage chunks failed", f))
        return d

    def collect(self):
        """
        Run one round now, or join the round in progress.

        @return: a Deferred firing with its L{CollectionRun}.
        """
        d = Deferred()
        if self._running is not None:
            self._running.append(d)
            return d
        self._running = waiters = [d]

        def done(result):
            self._running = None
            for waiter in waiters:
                waiter.callback(result)
        Deferred.fromCoroutine(self._collect()).addBoth(done)
        return d

    async def _collect(self):
        started = self._clock.seconds()
        horizon = started - self.grace
        deleted = kept = waiting = size = 0
        after = None
        while True:
            records = await self._metadata.list_garbage(limit=self.page, after=after)
            due = [g for g in records if g.recorded <= horizon]
            waiting_here = len(records) - len(due)
            for first in range(0, len(due), self.parallelism):
                batch = due[first:first + self.parallelism]
                results = await DeferredList(
                    [self._storage.delete_replicas(g.chunk) for g in batch], consumeErrors=True)
                done = [g.chunk for g, (ok, result) in zip(batch, results) if ok and result]
                if done:
                    await self._metadata.forget_garbage(done)
                deleted += len(done)
                size += sum(c.size for c in done)
                kept += len(batch) - len(done)
            if waiting_here or len(records) < self.page:
                if waiting_here:
                    waiting += waiting_here  # counted on this page only
                break
            after = records[-1]
        run = CollectionRun(started, self._clock.seconds() - started, deleted, size, kept,
                            waiting)
        self.last = run
        self.totals["runs"] += 1
        self.totals["chunks_deleted"] += deleted
        self.totals["bytes_deleted"] += size
        if deleted or kept:
            log.info("garbage collection: {deleted} chunks ({size} bytes) deleted, "
                     "{kept} kept for a later round", deleted=deleted, size=size, kept=kept)
        return run
