# -*- test-case-name: speedy.test.test_monitoring_progress -*-
"""
The chunkmaster's background work as metrics and dashboard figures: the
garbage collector's rounds (L{speedy.chunkmaster.collector.ChunkCollector})
and the transfers (L{speedy.chunkmaster.transfer.TransferService}).

Both are read through what they already expose (C{status()}).  The
collector's status is synchronous; the transfers' reads the metadata store,
so L{WorkProgress.refresh} fetches it before a scrape or a dashboard read
and keeps it for C{max_age} seconds: a dashboard open in many browsers, or
a fast scrape, costs the database one read every C{max_age} seconds.
"""

from prometheus_client.core import GaugeMetricFamily

from speedy.monitoring.recent import RecentRead
from speedy.records import TRANSFER_RUNNING, TRANSFER_STATES


class WorkProgress:
    """
    The garbage collector's and the transfers' progress.

    @param clock: an L{IReactorTime}.
    @param collector: the L{ChunkCollector}, or None.
    @param transfers: the L{TransferService}, or None.
    @param max_age: seconds a transfers' status is kept before it is read again.
    """

    def __init__(self, clock, collector=None, transfers=None, max_age=2.0):
        self._clock = clock
        self._collector = collector
        self._transfers = transfers
        self._status = None if transfers is None else RecentRead(
            clock, transfers.status, max_age, "transfers' status")

    async def refresh(self):
        """Read the transfers' status unless the one at hand is recent.
        Never fails: a store that does not answer leaves the last one."""
        if self._status is not None:
            await self._status.refresh()

    def gc(self):
        """
        @return: C{{"running", "runs", "chunks_freed", "bytes_freed",
            "blobs_deleted", "manifests_deleted", "pending_chunks",
            "pending_bytes", "last_duration", "last_finished",
            "current": {"chunks_due", "chunks_deleted"} or None}}, or None
            without a collector.  Pending garbage is what the last round
            left: chunks inside the grace period and chunks a member kept.
        """
        if self._collector is None:
            return None
        status = self._collector.status()
        totals, last, current = status["totals"], status["last"], status["current"]
        return {
            "running": bool(status["running"]),
            "runs": totals.get("runs", 0),
            "chunks_freed": totals.get("chunks_deleted", 0),
            "bytes_freed": totals.get("bytes_deleted", 0),
            "blobs_deleted": totals.get("blobs_deleted", 0),
            "manifests_deleted": totals.get("manifests_deleted", 0),
            "pending_chunks": (last["chunks_waiting"] + last["chunks_kept"]) if last else 0,
            "pending_bytes": last["bytes_waiting"] if last else 0,
            "last_duration": last["duration"] if last else None,
            "last_finished": last["finished"] if last else None,
            "current": None if current is None else {
                "chunks_due": current["chunks_due"],
                "chunks_deleted": current["chunks_deleted"]},
        }

    def transfers(self):
        """
        @return: C{{"chunks_moved", "bytes_moved", "old_copies_deleted",
            "failures", "active", "by_state": {state: n}, "rate",
            "chunks_left"}} (the rate in bytes a second over the running
            transfers), or None without a transfer service.
        """
        if self._transfers is None:
            return None
        counters = self._transfers.counters
        status = self._status.value or {"transfers": []}
        by_state = dict.fromkeys(TRANSFER_STATES, 0)
        rate = left = 0
        for t in status["transfers"]:
            by_state[t["state"]] = by_state.get(t["state"], 0) + 1
            if t["state"] == TRANSFER_RUNNING:
                rate += t["rate"] or 0
                left += t["chunks_left"] or 0
        return {
            "chunks_moved": counters.get("moved", 0),
            "bytes_moved": counters.get("bytes", 0),
            "old_copies_deleted": counters.get("deleted", 0),
            "failures": counters.get("failed", 0),
            "active": by_state[TRANSFER_RUNNING],
            "by_state": by_state,
            "rate": rate,
            "chunks_left": left,
        }

    def collect(self):
        """
        The Prometheus families the collector's and the transfer service's
        own counters (L{speedy.monitoring.collectors.CollectorMetrics},
        L{speedy.monitoring.collectors.TransferMetrics}) do not give: the
        transfers by state, their rate and chunks left (from the store), and
        the bytes the last collector round left waiting (a collector's
        C{collect}).
        """
        gc = self.gc()
        if gc is not None:
            waiting = GaugeMetricFamily(
                "speedy_chunkmaster_gc_waiting_bytes",
                "Bytes of the garbage chunks still inside their grace at the last round.")
            waiting.add_metric([], gc["pending_bytes"])
            yield waiting
        transfers = self.transfers()
        if transfers is not None:
            states = GaugeMetricFamily("speedy_chunkmaster_transfers",
                                       "Transfers recorded, by state.", labels=["state"])
            for state, count in sorted(transfers["by_state"].items()):
                states.add_metric([state], count)
            yield states
            for name, key, documentation in [
                    ("transfer_rate_bytes_per_second", "rate",
                     "Bytes a second the running transfers copy (their moving averages summed)."),
                    ("transfer_left_chunks", "chunks_left",
                     "Chunks the running transfers have yet to copy.")]:
                family = GaugeMetricFamily("speedy_chunkmaster_" + name, documentation)
                family.add_metric([], transfers[key])
                yield family
