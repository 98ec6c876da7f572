# -*- test-case-name: speedy.test.test_registry_names,speedy.test.test_registry_hashing -*-
"""
Running sha256/sha512 hashes whose state can be saved in the metadata store
and restored by another imageserver (PyPI C{rehashes}; C{hashlib} objects
cannot be serialised).

Measured here (rehashes 0.3.0, 2 cores): sha256 ~1.1-1.4 GB/s like
C{hashlib} (SHA-NI), sha512 ~300-450 MB/s: a 16 MiB chunk costs 12-15 ms of
sha256, about a fifth of what pushing it costs the imageserver's reactor
thread.  Both C{hashlib} and C{rehashes} release the GIL while hashing, so
L{HashFeed} does it in a worker thread, one batch of body pieces at a time
(the pieces of a streamed body are up to 1 MiB, so a batch costs one thread
hop per megabyte or more), and L{hashing_lane} runs the batches of all
bodies one at a time; without a thread pool (tests on a L{Clock}) a body is
hashed inline, piece by piece as it comes off the socket, never more than
L{SLICE} at once.
"""

import hashlib

import rehashes
from twisted.internet.defer import Deferred, DeferredSemaphore, fail, succeed
from twisted.internet.threads import deferToThreadPool

from speedy.registry.names import HEX_LENGTHS

_HASHERS = {"sha256": rehashes.PySha256, "sha512": rehashes.PySha512}

#: Largest buffer hashed in one call.
SLICE = 1 << 20


class ResumableHash:
    """
    A running hash of one algorithm over a byte stream.

    @ivar algorithm: C{"sha256"} or C{"sha512"}.
    """

    def __init__(self, algorithm, state=None):
        """
        @param state: bytes from L{state} of an earlier hash of the same
            algorithm, to continue it.
        @raise ValueError: unknown algorithm, or a state that cannot be
            restored (the caller then re-hashes the stored bytes).
        """
        if algorithm not in _HASHERS:
            raise ValueError(f"unsupported digest algorithm {algorithm!r}")
        self.algorithm = algorithm
        if state is None:
            self._hasher = _HASHERS[algorithm]()
        else:
            try:
                self._hasher = _HASHERS[algorithm].deserialize(bytes(state))
            except Exception as e:
                raise ValueError(f"cannot restore {algorithm} hash state: {e}") from e

    def update(self, data):
        """Feed C{data} (bytes-like)."""
        if type(data) is bytes and len(data) <= SLICE:
            self._hasher.update(data)  # as it is: rehashes takes bytes only
            return
        view = memoryview(data)
        for start in range(0, len(view), SLICE):
            self._hasher.update(bytes(view[start:start + SLICE]))

    def state(self):
        """@return: the serialised state, as bytes, for L{ResumableHash}C{(algorithm, state)}."""
        return bytes(self._hasher.serialize())

    def digest(self):
        """@return: the digest of everything fed so far, C{"<algorithm>:<hex>"}.
        Feeding may continue afterwards."""
        return f"{self.algorithm}:{self._hasher.finalize()}"


class OneShotHash:
    """
    A running hash whose state is never needed again (a blob pushed in
    one request, or an upload session's first body when it is also its
    last), with L{ResumableHash}'s interface: C{hashlib}'s, which does not
    need C{rehashes}' serialisable state and is faster where the CPU has no
    SHA extensions (measured on a 2-core VM without SHA-NI, sha256 on 1 MiB
    pieces: C{hashlib} 346 MB/s, C{rehashes} 158 MB/s; with SHA-NI both ran
    at 1.1-1.4 GB/s).
    """

    def __init__(self, algorithm):
        """@raise ValueError: unknown algorithm."""
        if algorithm not in _HASHERS:
            raise ValueError(f"unsupported digest algorithm {algorithm!r}")
        self.algorithm = algorithm
        self._hasher = hashlib.new(algorithm)

    def update(self, data):
        """Feed C{data} (bytes-like)."""
        self._hasher.update(data)

    def digest(self):
        """@return: C{"<algorithm>:<hex>"} of everything fed so far."""
        return f"{self.algorithm}:{self._hasher.hexdigest()}"

    def state(self):
        """@return: None: there is nothing to resume from (a session that
        goes on after all re-hashes its stored bytes)."""
        return None


class HashFeed:
    """
    Feeds a L{ResumableHash} off the reactor thread, in the order the bytes
    came: one batch at a time, a batch being every piece queued while the
    previous one was hashed.  Until L{caught_up} fires, the hash belongs to
    the worker: its C{state} and C{digest} are not to be read.

    @param hash: the L{ResumableHash} to feed.
    @param run_in_thread: C{run_in_thread(f, *args)} runs C{f(*args)} in a
        worker thread and returns a Deferred firing with its result
        (L{hashing_lane}).
    @ivar backlog: bytes queued or being hashed.
    """

    def __init__(self, hash, run_in_thread):
        self.hash = hash
        self._run_in_thread = run_in_thread
        self._queue = []
        self.backlog = 0
        self._busy = False
        self._waiting = []  # (backlog, Deferred) of caught_up() calls
        self._failure = None

    def update(self, data):
        """Queue C{data} (bytes; not to be changed afterwards) for hashing."""
        if self._failure is None:
            self._queue.append(data)
            self.backlog += len(data)
            self._next()

    def caught_up(self, backlog=0):
        """
        @return: a Deferred firing with the hash once at most C{backlog}
            bytes wait to be hashed (with C{backlog=0}: everything fed is
            hashed and the hash may be read), or failing with why hashing
            stopped.
        """
        if self._failure is not None:
            return fail(self._failure)
        if self.backlog <= backlog:
            return succeed(self.hash)
        d = Deferred()
        self._waiting.append((backlog, d))
        return d

    def stop(self):
        """Drop what was not hashed yet: the body was abandoned."""
        self._queue = []

    def _next(self):
        if self._busy or not self._queue:
            return
        batch, self._queue = self._queue, []
        self._busy = True
        self._run_in_thread(_update_all, self.hash, batch).addCallbacks(
            self._hashed, self._stopped, callbackArgs=(sum(map(len, batch)),))

    def _hashed(self, _, size):
        self._busy = False
        self.backlog -= size
        waiting, self._waiting = self._waiting, []
        for backlog, d in waiting:
            if self.backlog <= backlog:
                d.callback(self.hash)
            else:
                self._waiting.append((backlog, d))
        self._next()

    def _stopped(self, failure):
        self._busy = False
        self._failure = failure
        self._queue = []
        waiting, self._waiting = self._waiting, []
        for _, d in waiting:
            d.errback(failure)


def hashing_lane(reactor):
    """
    @param reactor: an L{IReactorThreads}.
    @return: a C{run_in_thread} for L{HashFeed}s that runs their batches in
        C{reactor}'s thread pool one at a time, whichever body they are of:
        one thread hashes faster than an imageserver receives, and more
        only contend with the reactor thread for the GIL.
    """
    lane = DeferredSemaphore(1)

    def run_in_thread(f, *args):
        return lane.run(deferToThreadPool, reactor, reactor.getThreadPool(), f, *args)
    return run_in_thread


def _update_all(hash, pieces):
    """Feed C{hash} the C{pieces} (in a worker thread)."""
    for piece in pieces:
        hash.update(piece)


def digest_of(algorithm, data):
    """@return: the C{"<algorithm>:<hex>"} digest of the bytes C{data}
    (C{hashlib}, for whole small bodies such as manifests)."""
    if algorithm not in HEX_LENGTHS:
        raise ValueError(f"unsupported digest algorithm {algorithm!r}")
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"
