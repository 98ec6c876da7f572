# -*- test-case-name: speedy.test.test_monitoring -*-
"""
L{RecentRead}: what an asynchronous read (the metadata store's) last
answered, for collectors, which Prometheus asks synchronously.  It is read
again before a scrape or a dashboard read only once it is C{max_age}
seconds old, so many scrapers cost the database one read per C{max_age}.
"""

from twisted.logger import Logger

log = Logger()


class RecentRead:
    """
    @param clock: an L{IReactorTime}.
    @param read: returns a Deferred (or is a coroutine function).
    @param max_age: seconds an answer is kept before C{read} is asked again.
    @param what: what is read, for the log line of a failed read.
    @ivar value: the last answer, or None before the first.
    """

    def __init__(self, clock, read, max_age, what):
        self._clock = clock
        self._read = read
        self.max_age = max_age
        self._what = what
        self.value = None
        self._read_at = None

    async def refresh(self):
        """Read again unless the answer at hand is recent.  Never fails: a
        read that fails leaves the last answer."""
        now = self._clock.seconds()
        if self._read_at is not None and now - self._read_at < self.max_age:
            return
        self._read_at = now
        try:
            self.value = await self._read()
        except Exception as e:
            log.warn("{what} unreadable for the metrics: {error!r}", what=self._what, error=e)
