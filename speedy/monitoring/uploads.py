# -*- test-case-name: speedy.test.test_monitoring -*-
"""
L{UploadSessions}: the registry's upload sessions open, for the
chunkmaster's C{/metrics}.

Sessions live in the metadata store, not in an imageserver (any worker
continues any upload), so one count for the whole registry comes from the
store: read before a scrape, at most every C{max_age} seconds.
"""

from prometheus_client.core import GaugeMetricFamily

from speedy.monitoring.recent import RecentRead


class UploadSessions:
    """
    A collector of C{speedy_chunkmaster_upload_sessions} and
    C{speedy_chunkmaster_upload_session_bytes}.

    @param clock: an L{IReactorTime}.
    @param store: an L{speedy.interfaces.IUploadTables} (C{count_uploads}).
    @param max_age: seconds a count is kept before the store is asked again.
    """

    def __init__(self, clock, store, max_age=5.0):
        self._count = RecentRead(clock, store.count_uploads, max_age, "upload sessions")

    async def refresh(self):
        """Count the sessions unless the count at hand is recent.  Never
        fails: a store that does not answer leaves the last count."""
        await self._count.refresh()

    def collect(self):
        if self._count.value is None:
            return
        sessions, received = self._count.value
        open_ = GaugeMetricFamily("speedy_chunkmaster_upload_sessions",
                                  "Registry upload sessions open (not finished, cancelled "
                                  "or expired), all imageservers together.")
        open_.add_metric([], sessions)
        held = GaugeMetricFamily("speedy_chunkmaster_upload_session_bytes",
                                 "Bytes the open upload sessions received so far.")
        held.add_metric([], received)
        yield open_
        yield held
