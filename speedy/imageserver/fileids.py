# -*- test-case-name: speedy.test.test_imageserver_replication -*-
"""
File ids handed out from ranges prefetched from the chunkmaster, so writes
go on while the master is away for as long as the ids last.

How many are held ahead follows how fast they are used: enough for
C{horizon} seconds at the rate of the last minute (at least C{low_water}),
fetched C{batch} or more at a time, so that a chunkmaster outage of that
long stops no push at the rate it was going.
"""

from collections import Counter, deque

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger

from speedy import errors

log = Logger()


#: Seconds of use the rate is measured over.
RATE_WINDOW = 60

#: The most ids one fetch asks for (the chunkmaster may give fewer).
MAX_FETCH = 100_000


class FileIdRange:
    """
    Hands out file ids from ranges fetched with
    C{master.allocate_file_ids(n)}.  When fewer are left than it wants to
    hold (L{wanted}) it fetches more in the background, one fetch at a
    time; callers wait only when every id is used up.
    """

    def __init__(self, master, batch=1000, low_water=250, clock=None, horizon=0.0):
        """
        @param batch: the fewest ids one fetch asks for.
        @param low_water: the fewest ids held ahead.
        @param clock: the clock the rate of use is measured on (needed
            with a C{horizon}).
        @param horizon: seconds of use at the recent rate to hold ahead; 0
            holds C{low_water}.
        """
        self._master = master
        self._batch = batch
        self._low_water = low_water
        self._clock = clock
        self._horizon = horizon
        self._used = Counter()  # second -> ids handed out in it
        self._ranges = deque()  # [start, end) pairs, oldest first
        self._fetching = None
        self._waiters = deque()

    @property
    def available(self):
        """The number of ids held and not yet handed out."""
        return sum(end - start for start, end in self._ranges)

    @property
    def rate(self):
        """Ids handed out a second, over the last L{RATE_WINDOW} seconds."""
        if self._clock is None:
            return 0.0
        now = int(self._clock.seconds())
        for second in [s for s in self._used if s <= now - RATE_WINDOW]:
            del self._used[second]
        return sum(self._used.values()) / RATE_WINDOW

    @property
    def wanted(self):
        """How many ids to hold ahead now."""
        return max(self._low_water, int(self.rate * self._horizon))

    def next(self):
        """
        @return: a Deferred firing with a file id never handed out before;
            it fails with L{Unavailable} when none is held and the master
            cannot give more.
        """
        if self._ranges:
            file_id = self._take()
            self._maybe_refill()
            return succeed(file_id)
        d = Deferred(lambda d: self._waiters.remove(d))
        self._waiters.append(d)
        self._maybe_refill()
        return d

    def _take(self):
        if self._clock is not None:
            self._used[int(self._clock.seconds())] += 1
        start, end = self._ranges[0]
        if start + 1 == end:
            self._ranges.popleft()
        else:
            self._ranges[0] = (start + 1, end)
        return start

    def _maybe_refill(self):
        if self._fetching is not None:
            return
        available, wanted = self.available, self.wanted
        if available < wanted:
            count = min(MAX_FETCH, max(self._batch, wanted - available))
            self._fetching = d = self._master.allocate_file_ids(count)
            d.addCallbacks(self._fetched, self._fetch_failed)
            d.addErrback(lambda f: log.failure("handing out file ids crashed", f))

    def _fetched(self, range_):
        self._fetching = None
        self._ranges.append(tuple(range_))
        while self._waiters and self._ranges:
            self._waiters.popleft().callback(self._take())
        self._maybe_refill()

    def _fetch_failed(self, failure):
        self._fetching = None
        log.warn("could not fetch file ids ({left} left): {why}",
                 left=self.available, why=failure.getErrorMessage())
        waiters, self._waiters = self._waiters, deque()
        for d in waiters:
            d.errback(errors.Unavailable(
                f"no file ids left and the chunkmaster gave none: {failure.getErrorMessage()}"))
