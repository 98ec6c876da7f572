# -*- test-case-name: speedy.test.test_store -*-
"""
Group commit: every record finished while one round of fdatasync runs waits
for the next round, and that one round covers them all (one fdatasync per
dirty volume, plus a directory fsync when a volume file is new).  Under load
a round therefore carries as many requests as arrived during the previous
one, which is the batching SeaweedFS gets from its 128-request / 4 MB
queue, without a timer delaying the first request.
"""

from time import monotonic

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger

from speedy.monitoring.buckets import BATCH_BUCKETS, SYNC_BUCKETS, Buckets


class GroupCommit:
    """
    @param run_in_thread: C{f(callable, *args)} returning a Deferred of its
        result, run off the reactor thread.
    @param disk: the L{speedy.chunkserver.disk.Disk} to sync through.
    @param directory: the data directory (fsynced when it has a new volume).
    """

    log = Logger()

    def __init__(self, run_in_thread, disk, directory):
        self._run_in_thread = run_in_thread
        self._disk = disk
        self._directory = directory
        self._dirty = set()
        self._waiters = []
        self._running = False
        self.rounds = 0
        #: seconds each round's fdatasyncs took, and writes each round made durable
        self.sync_seconds = Buckets(SYNC_BUCKETS)
        self.batch_sizes = Buckets(BATCH_BUCKETS)
        self._round_seconds = 0.0  # set by the sync thread, read once it is done

    def mark_dirty(self, volume):
        """Note that C{volume} has bytes a later round must sync."""
        self._dirty.add(volume)

    def sync(self, volume):
        """
        @return: a Deferred firing with None once everything written to
            C{volume} before this call is on disk, or failing with the
            L{OSError} of the round.
        """
        self.mark_dirty(volume)
        return self.flush()

    def flush(self):
        """
        Sync whatever is dirty now (the "batch" policy's timer, close).

        @return: a Deferred firing with None when it is durable.
        """
        if not self._dirty and not self._running:
            return succeed(None)
        d = Deferred()
        self._waiters.append(d)
        if not self._running:
            self._round()
        return d

    def _round(self):
        waiters, self._waiters = self._waiters, []
        volumes = {v for v in self._dirty if not v.closed}
        self._dirty = set()
        new = [v for v in volumes if v.needs_directory_sync]
        for volume in volumes:
            volume.pin()
        self._running = True
        self.rounds += 1
        d = self._run_in_thread(self._sync_volumes, volumes, bool(new))

        def finished(result):
            self._running = False
            self.sync_seconds.observe(self._round_seconds)
            self.batch_sizes.observe(len(waiters))
            if result is None:
                for volume in new:
                    volume.needs_directory_sync = False
            else:
                self.log.failure("fdatasync failed", result)
                self._dirty.update(v for v in volumes if not v.retired)
            for volume in volumes:
                volume.unpin()
            for waiter in waiters:
                if result is None:
                    waiter.callback(None)
                else:
                    waiter.errback(result)
            if self._waiters and not self._running:
                self._round()

        d.addBoth(finished)

    def _sync_volumes(self, volumes, directory):
        started = monotonic()
        try:
            for volume in volumes:
                self._disk.fdatasync(volume.fd)
            if directory:
                self._disk.fsync_directory(self._directory)
        finally:
            self._round_seconds = monotonic() - started
