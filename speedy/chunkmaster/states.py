# -*- test-case-name: speedy.test.test_chunkmaster_states -*-
"""
The chunkserver state machine, as an explicit transition table.

States (constants in L{speedy.records}):

    INIT      registered (by an admin or its first heartbeat), or reloaded
              after a chunkmaster restart, and not heard from since
    RW        heartbeating, writable
    RO        heartbeating, not writable: it reports read_only, or free
              space at or below the chunkmaster's reserve
    DOWN      missed heartbeats for longer than the heartbeat timeout
    DRAINING  an admin is moving it out: readable, never written, and
              sticky until the server is removed

Events:

    REPORT_RW    a heartbeat with room to write
    REPORT_RO    a heartbeat reporting read_only or no room
    TIMEOUT      no heartbeat for the heartbeat timeout
    DRAIN        an admin drains the server

Every (state, event) pair has an entry, so L{next_state} never guesses.
"""

from speedy.records import DOWN, DRAINING, INIT, RO, RW

REPORT_RW, REPORT_RO, TIMEOUT, DRAIN = "REPORT_RW", "REPORT_RO", "TIMEOUT", "DRAIN"
EVENTS = (REPORT_RW, REPORT_RO, TIMEOUT, DRAIN)

#: (state, event) -> next state.
TRANSITIONS = {
    (INIT, REPORT_RW): RW,
    (INIT, REPORT_RO): RO,
    (INIT, TIMEOUT): DOWN,
    (INIT, DRAIN): DRAINING,
    (RW, REPORT_RW): RW,
    (RW, REPORT_RO): RO,
    (RW, TIMEOUT): DOWN,
    (RW, DRAIN): DRAINING,
    (RO, REPORT_RW): RW,
    (RO, REPORT_RO): RO,
    (RO, TIMEOUT): DOWN,
    (RO, DRAIN): DRAINING,
    (DOWN, REPORT_RW): RW,
    (DOWN, REPORT_RO): RO,
    (DOWN, TIMEOUT): DOWN,
    (DOWN, DRAIN): DRAINING,
    (DRAINING, REPORT_RW): DRAINING,
    (DRAINING, REPORT_RO): DRAINING,
    (DRAINING, TIMEOUT): DRAINING,
    (DRAINING, DRAIN): DRAINING,
}


def next_state(state, event):
    """
    @return: the state a server in C{state} moves to on C{event}.
    @raise KeyError: C{state} or C{event} is not one of the constants.
    """
    return TRANSITIONS[(state, event)]


def report_event(read_only, free, reserve):
    """
    @return: the event a heartbeat stands for: L{REPORT_RO} when the server
        reports itself read-only or has no more than C{reserve} bytes free,
        else L{REPORT_RW}.
    """
    return REPORT_RO if read_only or free <= reserve else REPORT_RW
