"""
Tests for L{speedy.imageserver.fillgate}: admission of chunk fills.
"""

from twisted.internet.defer import CancelledError
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from speedy.imageserver.fillgate import FillGate


class FillGateTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.gate = FillGate(self.clock, 2, idle=1.0, min_rate=0)

    def test_slots_then_first_come_first_served(self):
        """Two passes go out at once; the third and fourth callers wait and
        are admitted in the order they came as passes are given back."""
        first = self.successResultOf(self.gate.enter())
        second = self.successResultOf(self.gate.enter())
        third, fourth = self.gate.enter(), self.gate.enter()
        self.assertNoResult(third)
        self.assertEqual((self.gate.holders, self.gate.waiting), (2, 2))
        second.leave()
        self.assertTrue(self.successResultOf(third).valid)
        self.assertNoResult(fourth)
        first.leave()
        self.successResultOf(fourth)
        self.assertEqual((self.gate.holders, self.gate.waiting), (2, 0))

    def test_backlog(self):
        """With a backlog, no pass goes out while more than that many bytes
        of whole chunks are held; released bytes let the waiters in, in
        order, while the backlog allows."""
        gate = FillGate(self.clock, 8, idle=1.0, min_rate=0, backlog=100)
        gate.hold(100)
        self.successResultOf(gate.enter()).leave()  # at the backlog: still open
        gate.hold(50)
        first, second = gate.enter(), gate.enter()
        self.assertNoResult(first)
        self.assertEqual((gate.held, gate.waiting), (150, 2))
        gate.release(50)
        self.successResultOf(first)
        self.successResultOf(second)
        self.assertEqual((gate.held, gate.holders, gate.waiting), (100, 2, 0))

    def test_slow_holder_gives_its_slot_back(self):
        """A holder whose client sent less than the minimum rate over the
        last window gives its slot to the next caller but keeps a valid,
        unmetered pass; a fast one keeps its slot window after window."""
        gate = FillGate(self.clock, 2, idle=1.0, min_rate=1000)
        fast = self.successResultOf(gate.enter())
        slow = self.successResultOf(gate.enter())
        waiting = gate.enter()
        fast.touch(600)
        slow.touch(100)
        self.clock.advance(0.5)
        fast.touch(600)
        slow.touch(100)
        self.assertNoResult(waiting)
        self.clock.advance(0.5)
        admitted = self.successResultOf(waiting)
        self.assertTrue(slow.valid)
        self.assertFalse(slow.metered)
        self.assertTrue(fast.metered)
        self.assertEqual(gate.holders, 2)
        admitted.touch(1000)
        self.clock.advance(1.0)  # the fast one sent nothing in this window
        self.assertFalse(fast.metered)
        self.assertTrue(admitted.metered)
        self.assertEqual(gate.holders, 1)

    def test_trickling_uploads_do_not_starve_the_queue(self):
        """A hundred trickling holders let a caller that queued behind them
        in within a window or two, not after their hold times."""
        gate = FillGate(self.clock, 8, idle=1.0, hold=10.0, min_rate=1000)
        passes = []
        for _ in range(100):
            gate.enter().addCallback(passes.append)
        waiting = gate.enter()
        for _ in range(4):
            for granted in passes:
                granted.touch(100)
            self.clock.advance(0.5)
        self.assertGreaterEqual(len(passes), 8)
        # Every window lets the next 8 in; the caller behind 100 gets a
        # slot after ~13 windows (before: ~13 hold times of 10 s each).
        self.clock.pump([1.0] * 14)
        self.successResultOf(waiting)

    def test_unmetered_pass_leaves(self):
        gate = FillGate(self.clock, 1, idle=1.0, min_rate=1000)
        granted = self.successResultOf(gate.enter())
        self.clock.advance(1.0)
        self.assertEqual(gate.holders, 0)
        granted.leave()
        self.assertFalse(granted.valid)
        self.assertEqual(gate.holders, 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_hold_limit(self):
        """A fast pass goes back after the hold time however much it is
        touched."""
        gate = FillGate(self.clock, 1, idle=1.0, hold=3.0, min_rate=1000)
        fast = self.successResultOf(gate.enter())
        waiting = gate.enter()
        for _ in range(5):
            self.clock.advance(0.5)
            fast.touch(1000)
        self.assertNoResult(waiting)
        self.clock.advance(0.5)
        self.successResultOf(waiting)
        self.assertFalse(fast.valid)

    def test_leave_twice(self):
        """Giving a pass back again changes nothing, and touching a pass given
        back does not take a slot."""
        granted = self.successResultOf(self.gate.enter())
        granted.leave()
        granted.leave()
        granted.touch()
        self.assertEqual(self.gate.holders, 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_cancel_gives_up_the_place(self):
        """A cancelled wait leaves the queue; the one after it is admitted
        next."""
        held = [self.successResultOf(self.gate.enter()) for _ in range(2)]
        gone, next_one = self.gate.enter(), self.gate.enter()
        gone.cancel()
        self.failureResultOf(gone, CancelledError)
        self.assertEqual(self.gate.waiting, 1)
        held[0].leave()
        self.successResultOf(next_one)

    def test_needs_a_slot(self):
        self.assertRaises(ValueError, FillGate, self.clock, 0)
