"""
Tests for L{speedy.chunkmaster.states}: the server state machine's table.
"""

from twisted.trial.unittest import SynchronousTestCase

from speedy.chunkmaster.states import (
    DRAIN, EVENTS, REPORT_RO, REPORT_RW, TIMEOUT, TRANSITIONS, next_state, report_event)
from speedy.records import DOWN, DRAINING, INIT, RO, RW, SERVER_STATES


class TransitionTableTests(SynchronousTestCase):
    def test_complete(self):
        """
        Every state has an entry for every event, and leads only to states.
        """
        self.assertEqual(
            set(TRANSITIONS), {(s, e) for s in SERVER_STATES for e in EVENTS})
        self.assertLessEqual(set(TRANSITIONS.values()), set(SERVER_STATES))

    def test_reports(self):
        """
        A heartbeat with room makes any server but a draining one RW, one
        without room RO.
        """
        for state in (INIT, RW, RO, DOWN):
            self.assertEqual(next_state(state, REPORT_RW), RW)
            self.assertEqual(next_state(state, REPORT_RO), RO)

    def test_timeout(self):
        """Silence makes any server but a draining one DOWN."""
        for state in (INIT, RW, RO, DOWN):
            self.assertEqual(next_state(state, TIMEOUT), DOWN)

    def test_draining_sticks(self):
        """Nothing but removal takes a server out of DRAINING."""
        for state in SERVER_STATES:
            self.assertEqual(next_state(state, DRAIN), DRAINING)
        for event in EVENTS:
            self.assertEqual(next_state(DRAINING, event), DRAINING)

    def test_unknown(self):
        """An unknown state or event is a KeyError, not a guess."""
        self.assertRaises(KeyError, next_state, "ERR", REPORT_RW)
        self.assertRaises(KeyError, next_state, RW, "REBOOT")


class ReportEventTests(SynchronousTestCase):
    def test_room(self):
        """Free space above the reserve, not read-only: RW."""
        self.assertEqual(report_event(False, 101, 100), REPORT_RW)

    def test_read_only(self):
        """A server that says it is read-only is RO whatever its space."""
        self.assertEqual(report_event(True, 10**12, 100), REPORT_RO)

    def test_at_reserve(self):
        """Free space at or below the reserve: RO."""
        self.assertEqual(report_event(False, 100, 100), REPORT_RO)
        self.assertEqual(report_event(False, 0, 0), REPORT_RO)
