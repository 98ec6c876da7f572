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
ends, or after C{hold} seconds in all; its next write queues again.  A
holder whose client sends less than C{min_rate} bytes a second (measured
over each C{idle} seconds) gives its I{slot} back but keeps its pass: its
writes go on, outside the count, until its chunk is sealed or its upload
ends.  A slow upload takes too little of the link to need staggering, and
neither a stalled client nor one that trickles a few bytes at a time keeps
the others out: before, a hundred uploads trickling 100 bytes every half
second queued every other upload behind them for a minute (bench/slowclients.py).
A client that trickles for a second and then sends fast fills at most one
chunk outside the count.

With a C{backlog} (bytes), the gate also bounds the memory of chunks that
are whole but not yet stored: their writers tell it how many such bytes
they hold (L{FillGate.hold}, L{FillGate.release}), and while more than
C{backlog} are held no pass is given, so no upload starts a new chunk until
the chunkservers have acknowledged enough.  When clients send faster than
the chunkservers store, as on loopback, whole chunks otherwise pile up in
memory at one per upload: at concurrency 50, two imageserver processes
held 0.55 GiB each.  A chunk waiting here holds only the client's socket.
"""

from collections import deque

from twisted.internet.defer import Deferred, succeed

#: Seconds over which a holder's rate is measured.
IDLE = 1.0
#: Bytes a second a holder's client must send to keep its slot.
MIN_RATE = 256 << 10
#: Seconds a pass is kept at most.
HOLD = 10.0


class FillGate:
    """
    At most C{slots} L{Pass}es are out at once.

    @param clock: an C{IReactorTime}, for the idle timers.
    @param slots: passes out at once (a positive int).
    @param idle: seconds over which a holder's rate is measured.
    @param hold: seconds a pass holds its slot at most.
    @param min_rate: bytes a second a holder must L{Pass.touch} to keep
        its slot.
    @param backlog: bytes of whole chunks not yet stored (L{hold}) above
        which no pass is given, or 0 for no limit.
    @ivar held: the bytes of whole chunks not yet stored.
    """

    def __init__(self, clock, slots, idle=IDLE, hold=HOLD, min_rate=MIN_RATE, backlog=0):
        if slots < 1:
            raise ValueError(f"a fill gate needs at least one slot, not {slots}")
        self._clock = clock
        self.slots = slots
        self.idle = idle
        self.hold_time = hold
        self.min_rate = min_rate
        self.backlog = backlog
        self.held = 0
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
        if self._open() and not self._waiting:
            return succeed(self._admit())
        waiter = Deferred(lambda d: self._waiting.remove(d))
        self._waiting.append(waiter)
        return waiter

    def hold(self, size):
        """C{size} more bytes of whole chunks wait to be stored."""
        self.held += size

    def release(self, size):
        """C{size} bytes of whole chunks were stored (or dropped)."""
        self.held -= size
        self._admit_waiting()

    def _open(self):
        """@return: whether a pass may be given now."""
        return len(self._holders) < self.slots and (
            not self.backlog or self.held <= self.backlog)

    def _admit(self):
        granted = Pass(self)
        self._holders.add(granted)
        return granted

    def _released(self, granted):
        self._holders.discard(granted)
        self._admit_waiting()

    def _admit_waiting(self):
        while self._waiting and self._open():
            self._waiting.popleft().callback(self._admit())


class Pass:
    """
    One slot of a L{FillGate}, held until L{leave}, for C{hold} seconds at
    most, and while its client sends at least C{min_rate} bytes a second;
    below that rate the slot goes back but the pass stays L{valid}
    (unmetered) until L{leave}.

    @ivar valid: whether the writer may go on writing with this pass.
    @ivar metered: whether it still takes one of the gate's slots.
    """

    def __init__(self, gate):
        self._gate = gate
        self._received = 0  # bytes touched in the current window
        self._window = gate._clock.callLater(gate.idle, self._measure)
        self._expiry = gate._clock.callLater(gate.hold_time, self.leave)
        self.valid = True
        self.metered = True

    def touch(self, size=0):
        """C{size} bytes arrived from the client."""
        self._received += size

    def _measure(self):
        gate = self._gate
        if self._received < gate.min_rate * gate.idle:
            self._window = None
            self._unmeter()
            return
        self._received = 0
        self._window = gate._clock.callLater(gate.idle, self._measure)

    def _unmeter(self):
        """Give the slot back, keeping the pass."""
        self.metered = False
        self._cancel_timers()
        self._gate._released(self)

    def _cancel_timers(self):
        for timer in (self._window, self._expiry):
            if timer is not None and timer.active():
                timer.cancel()
        self._window = self._expiry = None

    def leave(self):
        """Give the pass (and its slot, if it still holds one) back; again
        is a no-op."""
        if not self.valid:
            return
        self.valid = False
        self._cancel_timers()
        if self.metered:
            self.metered = False
            self._gate._released(self)
