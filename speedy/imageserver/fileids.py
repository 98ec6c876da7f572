# -*- test-case-name: speedy.test.test_imageserver_replication -*-
"""
File ids handed out from ranges prefetched from the chunkmaster, so writes
go on while the master is away for as long as the ids last.
"""

from collections import deque

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger

from speedy import errors

log = Logger()


class FileIdRange:
    """
    Hands out file ids from ranges fetched with
    C{master.allocate_file_ids(batch)}.  When fewer than C{low_water} ids are
    left it fetches the next range in the background, one fetch at a time;
    callers wait only when every id is used up.
    """

    def __init__(self, master, batch=1000, low_water=250):
        self._master = master
        self._batch = batch
        self._low_water = low_water
        self._ranges = deque()  # [start, end) pairs, oldest first
        self._fetching = None
        self._waiters = deque()

    @property
    def available(self):
        """The number of ids held and not yet handed out."""
        return sum(end - start for start, end in self._ranges)

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
        start, end = self._ranges[0]
        if start + 1 == end:
            self._ranges.popleft()
        else:
            self._ranges[0] = (start + 1, end)
        return start

    def _maybe_refill(self):
        if self._fetching is None and self.available < self._low_water:
            self._fetching = d = self._master.allocate_file_ids(self._batch)
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
