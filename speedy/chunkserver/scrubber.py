# -*- test-case-name: speedy.test.test_scrubber -*-
"""
The scrubber: every live chunk of the store read back from the disk in the
background and checked against its CRC32C (L{IChunkStore.verify}), so that
bytes that rot where nobody reads them are found and repaired while the
other replicas are still good.

A pass walks the chunk ids as they were when it started, in ascending
order, at most C{rate} bytes a second (the pace counts the bytes checked;
a pass over 1 TiB at the default 8 MiB/s takes about a day and a half),
and a new pass starts once C{period} seconds have passed since the last
one started (or at once, if the pass took longer).  Before each chunk it
yields to the chunkserver's clients: while requests are in flight it
waits, for up to a second, so that a busy server scrubs slowly but still
scrubs.  A damaged chunk is dropped by the store and reported to the
chunkmaster with the next heartbeat (L{IChunkStore.damaged}), which has it
repaired from another replica.

Counters, kept in the store's (so that STATUS and the heartbeat carry
them): C{scrub_chunks} and C{scrub_bytes} checked, C{scrub_damaged} found,
C{scrub_passes} finished.
"""

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import deferLater
from twisted.logger import Logger

from speedy.errors import Busy, ChecksumMismatch, ChunkNotFound
from speedy.pacing import Pacer

#: The longest the scrubber waits for clients before checking one chunk.
MAX_YIELD = 1.0
#: How often it looks again while clients keep the server busy.
YIELD_STEP = 0.05
#: Counters the scrubber adds to the store's.
COUNTERS = ("scrub_chunks", "scrub_bytes", "scrub_damaged", "scrub_passes")


class Scrubber(Service):
    """
    Scrubs the store L{ChunkStoreService} opens, from start to stop.

    @ivar passed: C{(chunks, total)} of the pass under way, or None between
        passes.
    @ivar last_pass: when the last finished pass started and ended, and how
        many chunks it checked and found damaged; None before the first.
    """

    log = Logger()

    def __init__(self, clock, store, rate, period, busy=lambda: False):
        """
        @param store: a callable returning the open L{IChunkStore}, or None
            while it is not open.
        @param rate: the most bytes a second a pass checks; 0 turns the
            scrubber off.
        @param period: the least seconds from the start of one pass to the
            start of the next.
        @param busy: returns True while clients have requests in flight.
        """
        self._clock = clock
        self._store = store
        self.rate = rate
        self.period = period
        self._busy = busy
        self._running = None
        self._pacer = Pacer(clock, rate)
        self.passed = None
        self.last_pass = None

    def startService(self):
        super().startService()
        if self.rate > 0:
            self._running = Deferred.fromCoroutine(self._run())
            self._running.addErrback(self._stopped)

    def stopService(self):
        super().stopService()
        if self._running is not None:
            self._running.cancel()
            self._running = None

    def _stopped(self, failure):
        if not failure.check(CancelledError):
            self.log.failure("the scrubber stopped", failure)

    def _sleep(self, seconds):
        return deferLater(self._clock, seconds, lambda: None)

    async def _run(self):
        while True:
            store = self._store()
            if store is None:
                await self._sleep(1.0)
                continue
            started = self._clock.seconds()
            checked, damaged = await self.scrub(store)
            self.last_pass = {"started": started, "ended": self._clock.seconds(),
                              "chunks": checked, "damaged": damaged}
            await self._sleep(max(1.0, started + self.period - self._clock.seconds()))

    async def scrub(self, store):
        """
        One pass over C{store}.

        @return: C{(chunks checked, chunks found damaged)}.
        """
        counters = store.counters
        for name in COUNTERS:
            counters.setdefault(name, 0)
        file_ids = list(store.file_ids())
        checked = damaged = 0
        self.passed = (0, len(file_ids))
        for n, file_id in enumerate(file_ids):
            info = store.stat(file_id)
            if info is None:
                continue  # deleted since the pass began
            await self._pacer.spend(info.size)
            await self._yield_to_clients()
            try:
                await store.verify(file_id)
            except ChecksumMismatch:
                damaged += 1
                counters["scrub_damaged"] += 1
            except ChunkNotFound:
                continue
            except Busy:
                break  # the store is closing
            checked += 1
            counters["scrub_chunks"] += 1
            counters["scrub_bytes"] += info.size
            self.passed = (n + 1, len(file_ids))
        else:
            counters["scrub_passes"] += 1
            self.log.info("scrub pass done: {checked} chunks checked, {damaged} damaged",
                          checked=checked, damaged=damaged)
        self.passed = None
        return checked, damaged

    async def _yield_to_clients(self):
        deadline = self._clock.seconds() + MAX_YIELD - YIELD_STEP / 2
        while self._busy() and self._clock.seconds() < deadline:
            await self._sleep(YIELD_STEP)

