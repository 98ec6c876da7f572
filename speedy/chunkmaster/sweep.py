# -*- test-case-name: speedy.test.test_sweep,speedy.test.test_sweep_interleavings -*-
"""
The mark and sweep of the registry's tables: blobs no manifest references
(and, under policies off by default, manifests nothing keeps) are deleted
from the metadata store while the registry serves, and their chunks go to
the C{garbage} table, where the chunk collector
(L{speedy.chunkmaster.collector}) deletes them after its grace period.

A round, run by the chunk collector before its chunk pass:

  1. manifests, when a policy is on: mark (a plain read of the candidates,
     L{ISweepTables.unkept_manifests}), then sweep them a batch a
     transaction (L{ISweepTables.collect_manifests}, which takes each row
     exclusively and checks it again); again while a pass deletes some
     (an index's children and an artifact's referrers become candidates
     once it is gone);
  2. blobs: mark (L{ISweepTables.unreferenced_blobs}) a page at a time,
     then sweep each page a batch a transaction
     (L{ISweepTables.collect_blobs}, which checks again under the blob's
     exclusive lock, deletes the blob and its links and records its chunks
     as garbage, in one transaction).

Marks are only hints: every decision is taken again by the sweep's
transaction, so a push, mount, tag or manifest put between the two either
keeps the candidate alive or finds it gone.  C{docs/gc.md} is the
protocol.  Sweeps are paced (L{speedy.pacing.Pacer}): at most C{rate} rows
a second, C{batch} rows a transaction.
"""

import attr

from speedy.pacing import Pacer

#: Rows swept in one transaction.
BATCH = 100

#: Rows a mark reads in one page.
PAGE = 1000

#: Rows swept a second at most, by default.
RATE = 1000

#: Manifest passes in one round at most (an index of indexes of ... is
#: swept one level a pass; the next round goes on).
MANIFEST_PASSES = 8


#: The manifest policies C{--gc-delete} may name.
POLICIES = ("untagged", "orphans")


def parse_policies(text):
    """
    @param text: C{none}, or policies of L{POLICIES} separated by commas.
    @return: the frozenset of the policies named.
    @raise ValueError: an unknown policy.
    """
    names = {name.strip() for name in str(text).split(",")} - {"", "none"}
    unknown = names - set(POLICIES)
    if unknown:
        raise ValueError(f"unknown policies {', '.join(sorted(unknown))}: use none or "
                         f"{', '.join(POLICIES)}")
    return frozenset(names)


@attr.define
class SweepCounts:
    """
    What a sweep deleted (or, in a dry run, would delete now).

    @ivar manifests: manifests deleted under the policies (a dry run counts
        those that are garbage now and, level by level, those that would
        be once they are deleted, as a round's passes do).
    @ivar blobs: blobs deleted (a dry run counts those that are garbage
        now and those only the manifests it counts reference).
    @ivar blob_chunks: their chunks, now recorded as garbage.
    @ivar blob_bytes: their bytes (one replica's worth).
    """

    manifests: int = 0
    blobs: int = 0
    blob_chunks: int = 0
    blob_bytes: int = 0

    def add_blobs(self, blobs):
        self.blobs += len(blobs)
        self.blob_chunks += sum(len(b.chunks) for b in blobs)
        self.blob_bytes += sum(b.size for b in blobs)


class MetadataSweep:
    """
    Marks and sweeps the registry's tables of one metadata store.

    @param metadata: an L{speedy.interfaces.ISweepTables}.
    @param clock: an L{IReactorTime}: the horizon is its time less C{grace}.
    @param grace: seconds a blob (or manifest) stays after its last push,
        link or mount before it may be garbage.
    @param untagged: the policy that deletes untagged manifests nothing
        keeps (off by default, as in Distribution).
    @param orphans: the policy that deletes untagged artifacts whose
        subject is not in their repository.
    @param rate: rows swept a second at most; 0 or None for no limit.
    """

    def __init__(self, metadata, clock, grace, untagged=False, orphans=False, rate=RATE,
                 batch=BATCH, page=PAGE):
        self._metadata = metadata
        self._clock = clock
        self.grace = grace
        self.untagged = untagged
        self.orphans = orphans
        self.batch = batch
        self.page = page
        self._pacer = Pacer(clock, rate)

    @property
    def rate(self):
        return self._pacer.rate

    def settings(self):
        """@return: the policies and pace, as JSON."""
        return {"grace": self.grace, "untagged": self.untagged, "orphans": self.orphans,
                "rate": self.rate}

    async def sweep(self, counts=None):
        """
        Run one mark and sweep now.

        @param counts: a L{SweepCounts} to add to as it goes (a round's
            progress), or None.
        @return: the L{SweepCounts}.
        """
        counts = SweepCounts() if counts is None else counts
        horizon = self._clock.seconds() - self.grace
        if self.untagged or self.orphans:
            for _ in range(MANIFEST_PASSES):
                deleted = await self._sweep_manifests(horizon, counts)
                if not deleted:
                    break
        after = None
        while True:
            marked = await self._metadata.unreferenced_blobs(horizon, self.page, after)
            for first in range(0, len(marked), self.batch):
                digests = [b.digest for b in marked[first:first + self.batch]]
                await self._pacer.spend(len(digests))
                counts.add_blobs(await self._metadata.collect_blobs(digests, horizon))
            if len(marked) < self.page:
                return counts
            after = marked[-1].digest

    async def _sweep_manifests(self, horizon, counts):
        """One pass over the manifests.  @return: how many it deleted."""
        deleted, after = 0, None
        while True:
            marked = await self._metadata.unkept_manifests(
                horizon, self.untagged, self.orphans, self.page, after)
            for first in range(0, len(marked), self.batch):
                keys = marked[first:first + self.batch]
                await self._pacer.spend(len(keys))
                swept = await self._metadata.collect_manifests(
                    keys, horizon, self.untagged, self.orphans)
                deleted += len(swept)
                counts.manifests += len(swept)
            if len(marked) < self.page:
                return deleted
            after = marked[-1]

    async def dry_run(self):
        """
        Count what a sweep would delete now, deleting nothing: the
        manifests that are garbage now under the policies, then, level by
        level (at most L{MANIFEST_PASSES} in all, as a round), those that
        would be once those are deleted (an index's children, an
        artifact's referrers); the blobs that are garbage now, and those
        only the manifests counted reference
        (L{ISweepTables.garbage_after}).

        @return: a L{SweepCounts}.
        """
        counts = SweepCounts()
        horizon = self._clock.seconds() - self.grace
        gone = set()
        after = None
        while self.untagged or self.orphans:
            marked = await self._metadata.unkept_manifests(
                horizon, self.untagged, self.orphans, self.page, after)
            gone.update(marked)
            if len(marked) < self.page:
                break
            after = marked[-1]
        after = None
        while True:
            marked = await self._metadata.unreferenced_blobs(horizon, self.page, after)
            counts.add_blobs(marked)
            if len(marked) < self.page:
                break
            after = marked[-1].digest
        for level in range(1, MANIFEST_PASSES + 1):
            if not gone:
                break
            more, blobs = await self._metadata.garbage_after(
                sorted(gone), horizon, self.untagged, self.orphans)
            if not more or level == MANIFEST_PASSES:
                counts.add_blobs(blobs)
                break
            gone.update(more)
        counts.manifests = len(gone)
        return counts
