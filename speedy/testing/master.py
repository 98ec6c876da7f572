# -*- test-case-name: speedy.test.test_testing,speedy.test.test_imageserver_clusterview -*-
"""
L{FakeMaster}: the chunkmaster as an imageserver sees it
(L{speedy.imageserver.master.IMasterClient}), in memory.
"""

from twisted.internet.defer import Deferred, fail, succeed
from zope.interface import implementer

from speedy import errors
from speedy.imageserver.master import IMasterClient


@implementer(IMasterClient)
class FakeMaster:
    """
    L{IMasterClient} in memory: serves C{view} (long-polls wait on the
    clock for L{publish}), hands out consecutive file ids, and fails every
    call with L{Unavailable} while C{down}.
    """

    def __init__(self, clock, view=None, first_id=1):
        self._clock = clock
        self.view = view
        self.next_id = first_id
        self.down = False
        self.allocations = []
        self._polls = []

    def publish(self, view):
        """Make C{view} current and answer the waiting long-polls."""
        self.view = view
        polls, self._polls = self._polls, []
        for d, call in polls:
            call.cancel()
            d.callback(view)

    def cluster(self, etag=None, wait=None):
        if self.down:
            return fail(errors.Unavailable("the chunkmaster is down"))
        if self.view is None:
            return fail(errors.Unavailable("the chunkmaster has no view yet"))
        if etag is None or self.view.version != etag:
            return succeed(self.view)
        d = Deferred(lambda d: self._forget(d))
        call = self._clock.callLater(wait or 0, self._expire, d)
        self._polls.append((d, call))
        return d

    def _expire(self, d):
        self._polls = [(p, c) for p, c in self._polls if p is not d]
        d.callback(None)

    def _forget(self, d):
        for p, c in self._polls:
            if p is d:
                c.cancel()
        self._polls = [(p, c) for p, c in self._polls if p is not d]

    def allocate_file_ids(self, count):
        if self.down:
            return fail(errors.Unavailable("the chunkmaster is down"))
        start = self.next_id
        self.next_id += count
        self.allocations.append((start, self.next_id))
        return succeed((start, self.next_id))

    def close(self):
        return succeed(None)
