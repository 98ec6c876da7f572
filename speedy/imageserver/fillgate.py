# -*- test-case-name: speedy.test.test_fillgate -*-
"""
L{FillGate}: how many uploads of one imageserver process take client bytes
into a chunk at once.

A chunk goes to its replicas only once it is whole.  When many uploads fill
chunks at the same time through one NIC, they share its bandwidth, all
complete their chunks late and together, and meanwhile the link to the
chunkservers has nothing to carry: on the 1 GbE testbed, 100 uploads of
16 MiB left it at 1 MiB/s for the first 2.5 s and at half its rate for 12
s.  Letting a few fill at a time, first come first served, staggers the
completions, so replication starts as soon as the first chunk is whole.
The others' writes wait, and their HTTP bodies are not read meanwhile.

A holder gives its pass back when its chunk is sealed, when its upload
ends, when its client has sent nothing for C{idle} seconds, or after
C{hold} seconds in all, so neither a stalled client nor one that trickles
a byte a second can keep the others out; its next write queues again.
"""

from collections import deque

from twisted.internet.defer import Deferred, succeed

#: Seconds a pass is kept without a byte from its client.
IDLE = 1.0
#: Seconds a pass is kept at most.
HOLD = 10.0


class FillGate:
    """
    At most C{slots} L{Pass}es are out at once.

    @param clock: an C{IReactorTime}, for the idle timers.
    @param slots: passes out at once (a positive int).
    @param idle: seconds a pass lasts without a L{Pass.touch}.
    @param hold: seconds a pass lasts at most.
    """

    def __init__(self, clock, slots, idle=IDLE, hold=HOLD):
        if slots < 1:
            raise ValueError(f"a fill gate needs at least one slot, not {slots}")
        self._clock = clock
        self.slots = slots
        self.idle = idle
        self.hold = hold
        self._holders = set()
        self._waiting = deque()

    @property
    def holders(self):
        """@return: the number of passes out."""
        return len(self._holders)

    @property
    def waiting(self):
        """@return: the number of L{enter} calls not yet admitted."""
        return len(self._waiting)

    def enter(self):
        """
        @return: a Deferred firing with a L{Pass} once a slot is free, in
            the order of the calls.  Cancelling it gives up the place in
            the queue.
        """
        if len(self._holders) < self.slots and not self._waiting:
            return succeed(self._admit())
        waiter = Deferred(lambda d: self._waiting.remove(d))
        self._waiting.append(waiter)
        return waiter

    def _admit(self):
        granted = Pass(self)
        self._holders.add(granted)
        granted.touch()
        return granted

    def _released(self, granted):
        self._holders.discard(granted)
        while self._waiting and len(self._holders) < self.slots:
            self._waiting.popleft().callback(self._admit())


class Pass:
    """
    One slot of a L{FillGate}, held until L{leave}, until C{idle} seconds
    pass without a L{touch}, or for C{hold} seconds at most.

    @ivar valid: whether the slot is still held.
    """

    def __init__(self, gate):
        self._gate = gate
        self._timer = None
        self._expiry = gate._clock.callLater(gate.hold, self.leave)
        self.valid = True

    def touch(self):
        """Bytes arrived: the idle time starts again."""
        if not self.valid:
            return
        if self._timer is not None and self._timer.active():
            self._timer.reset(self._gate.idle)
        else:
            self._timer = self._gate._clock.callLater(self._gate.idle, self.leave)

    def leave(self):
        """Give the slot back (again is a no-op)."""
        if not self.valid:
            return
        self.valid = False
        for timer in (self._timer, self._expiry):
            if timer is not None and timer.active():
                timer.cancel()
        self._timer = self._expiry = None
        self._gate._released(self)
