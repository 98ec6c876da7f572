# -*- test-case-name: speedy.test.test_monitoring -*-
"""
L{DatabaseCheck}: the readiness check "the metadata store answers", for
C{/readyz} of the roles that need it (imageserver, chunkmaster).
"""

from twisted.internet.defer import Deferred, TimeoutError, maybeDeferred, succeed


class DatabaseCheck:
    """
    A readiness check (L{speedy.monitoring.endpoints}) that asks the
    metadata store a small question: ready when it answers within
    C{timeout} seconds.  An answer is kept C{max_age} seconds, and callers
    that come while a question is out share it, so however often load
    balancers and supervisors probe, the database is asked at most once per
    C{max_age}.

    @param clock: an L{IReactorTime}.
    @param read: asks the store a cheap question; returns a Deferred or a
        coroutine (e.g. L{IMetadataStore.count_uploads}).
    """

    def __init__(self, clock, read, max_age=2.0, timeout=5.0):
        self._clock = clock
        self._read = read
        self.max_age = max_age
        self.timeout = timeout
        self._last = None  # (when, (ok, detail))
        self._waiting = None  # the Deferreds of callers while a question is out

    def __call__(self):
        """@return: a Deferred firing with C{(ok, detail)}; never fails."""
        now = self._clock.seconds()
        if self._last is not None and now - self._last[0] < self.max_age:
            return succeed(self._last[1])
        waiter = Deferred()
        if self._waiting is not None:
            self._waiting.append(waiter)
            return waiter
        self._waiting = [waiter]
        asked = self._clock.seconds()
        d = maybeDeferred(self._read)  # a coroutine is wrapped too
        d.addTimeout(self.timeout, self._clock)

        def answered(_):
            took = (self._clock.seconds() - asked) * 1000
            return True, f"the metadata store answered in {took:.0f} ms"

        def unanswered(failure):
            if failure.check(TimeoutError):
                return False, f"the metadata store did not answer in {self.timeout:g} s"
            why = failure.getErrorMessage() or failure.type.__name__
            return False, f"the metadata store did not answer: {why}"

        d.addCallbacks(answered, unanswered)
        d.addCallback(self._settle)
        return waiter

    def _settle(self, result):
        self._last = (self._clock.seconds(), result)
        waiting, self._waiting = self._waiting, None
        for waiter in waiting:
            waiter.callback(result)
