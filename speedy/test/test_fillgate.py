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
        self.gate = FillGate(self.clock, 2, idle=1.0)

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

    def test_idle_pass_goes_back(self):
        """A pass not touched for the idle time is given back and the next
        caller admitted; touching it starts the idle time again."""
        first = self.successResultOf(self.gate.enter())
        self.successResultOf(self.gate.enter())
        waiting = self.gate.enter()
        self.clock.advance(0.9)
        first.touch()
        self.assertNoResult(waiting)
        self.clock.advance(0.1)  # the untouched second pass went idle
        self.successResultOf(waiting)
        self.clock.advance(0.8)
        self.assertTrue(first.valid)
        self.clock.advance(0.1)
        self.assertFalse(first.valid)
        self.assertEqual(self.gate.holders, 1)

    def test_hold_limit(self):
        """A pass goes back after the hold time however often it is
        touched: a client trickling bytes does not keep its slot."""
        gate = FillGate(self.clock, 1, idle=1.0, hold=3.0)
        trickling = self.successResultOf(gate.enter())
        waiting = gate.enter()
        for _ in range(5):
            self.clock.advance(0.5)
            trickling.touch()
        self.assertNoResult(waiting)
        self.clock.advance(0.5)
        self.successResultOf(waiting)
        self.assertFalse(trickling.valid)

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
