# -*- test-case-name: speedy.test.test_testing,speedy.test.test_imageserver_clusterview -*-
"""
L{FakeMaster}: the chunkmaster as an imageserver sees it
(L{speedy.imageserver.master.IMasterClient}), in memory.

L{MasterClientTestsMixin} is the contract: it runs against L{FakeMaster},
and against the real L{speedy.imageserver.master.HTTPMasterClient} talking
HTTP to the real chunkmaster API through in-memory connections, in
L{speedy.test.test_testing}.
"""

from twisted.internet.defer import Deferred, fail, succeed
from zope.interface import implementer
from zope.interface.verify import verifyObject

from speedy import errors
from speedy.imageserver.clusterview import ClusterView
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
        if not wait:
            return succeed(None)
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


class MasterClientTestsMixin:
    """
    The L{IMasterClient} contract the imageserver's cluster-view poller and
    file-id ranges rely on, for a C{SynchronousTestCase} on a fake clock.

    Mix into a test case that provides:

      - C{clock}: the clock long-polls wait on;
      - C{make_master_client()}: @return: a new L{IMasterClient} whose
        master knows one writable group, 1, of the servers at
        L{addresses};
      - C{settle()}: let every request go as far as it can without the
        clock moving;
      - C{change_view()}: the master's view changes: a server at
        L{new_address} joins group 2;
      - C{take_down()}: the master goes away.
    """

    addresses = ("10.0.0.1:8000", "10.0.0.2:8000")
    new_address = "10.0.0.3:8000"

    def setUp(self):
        super().setUp()
        self.master = self.make_master_client()

    def answer(self, d):
        self.settle()
        return self.successResultOf(d)

    def view(self):
        """@return: the master's current L{ClusterView}."""
        return self.answer(self.master.cluster())

    def test_interface(self):
        verifyObject(IMasterClient, self.master)

    def test_view(self):
        """The view names the master's groups and their servers."""
        view = self.view()
        self.assertIsInstance(view, ClusterView)
        self.assertIsInstance(view.version, int)
        self.assertEqual(list(view.groups), [1])
        self.assertTrue(view.groups[1].writable)
        self.assertEqual({s.address for s in view.groups[1].servers}, set(self.addresses))

    def test_unchanged(self):
        """Asked with the version held, the master answers None once the
        wait is over, not before; without a wait, at once."""
        version = self.view().version
        d = self.master.cluster(etag=version, wait=5)
        self.settle()
        self.clock.advance(4.9)
        self.settle()
        self.assertNoResult(d)
        self.clock.advance(0.1)
        self.assertIsNone(self.answer(d))
        self.assertIsNone(self.answer(self.master.cluster(etag=version)))

    def test_changed_while_waiting(self):
        """A change while a long-poll waits answers it with the new view."""
        version = self.view().version
        d = self.master.cluster(etag=version, wait=20)
        self.settle()
        self.assertNoResult(d)
        self.change_view()
        view = self.answer(d)
        self.assertGreater(view.version, version)
        self.assertEqual([s.address for s in view.groups[2].servers], [self.new_address])

    def test_other_version(self):
        """Asked with another version than the current one, the master
        answers the current view at once."""
        view = self.view()
        self.assertEqual(self.answer(self.master.cluster(etag=view.version - 1, wait=20)), view)

    def test_file_ids(self):
        """Each allocation is a new range of the size asked for, above
        every range before it."""
        start, end = self.answer(self.master.allocate_file_ids(5))
        self.assertEqual(end - start, 5)
        again, stop = self.answer(self.master.allocate_file_ids(3))
        self.assertEqual(stop - again, 3)
        self.assertGreaterEqual(again, end)

    def test_unavailable(self):
        """A master gone fails every call with Unavailable, within a
        second (a client may try its addresses one after the other)."""
        version = self.view().version
        self.take_down()
        calls = [self.master.cluster(), self.master.cluster(etag=version, wait=5),
                 self.master.allocate_file_ids(5)]
        for _ in range(10):
            self.settle()
            self.clock.advance(0.1)
        self.settle()
        for d in calls:
            self.failureResultOf(d, errors.Unavailable)

    def test_close(self):
        self.view()
        self.assertIsNone(self.answer(self.master.close()))
