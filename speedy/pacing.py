# -*- test-case-name: speedy.test.test_pacing -*-
"""
A byte rate kept by sleeping: background work (scrubbing, repair,
rebuilds, transfers) paces itself with a L{Pacer} so that it never takes
more of a disk or a link than it was given.
"""

from twisted.internet.task import deferLater

#: Pauses shorter than this are added up rather than slept one by one.
MIN_SLEEP = 0.05


class Pacer:
    """
    Spends bytes at most C{rate} a second, over everyone who spends through
    it: each L{spend} waits until the bytes spent before it are paid for
    (so the first goes at once, and a burst is spread out).
    """

    def __init__(self, clock, rate):
        """@param rate: bytes a second; 0 or None for no limit."""
        self._clock = clock
        self.rate = rate
        self._next_at = 0.0

    async def spend(self, count):
        """Account for C{count} bytes; return once the rate allows them."""
        if not self.rate:
            return
        now = self._clock.seconds()
        wait = self._next_at - now
        self._next_at = max(self._next_at, now) + count / self.rate
        if wait >= MIN_SLEEP:
            await deferLater(self._clock, wait, lambda: None)
