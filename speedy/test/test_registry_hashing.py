"""
Blob bodies hashed off the reactor thread: L{HashFeed}, L{hashing_lane}
and a L{BlobBody} given C{run_in_thread}, with workers the test runs by
hand, and once in the reactor's thread pool.
"""

import hashlib

from twisted.internet import reactor
from twisted.internet.defer import Deferred, fail, succeed
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from speedy.registry.bodies import HASH_BACKLOG, BlobBody
from speedy.registry.digests import HashFeed, OneShotHash, ResumableHash, hashing_lane
from speedy.testing import MemoryChunkedStorage


def sha256(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


class ManualWorker:
    """A C{run_in_thread} whose jobs run when the test says so."""

    def __init__(self):
        self.jobs = []  # (f, args, Deferred)

    def __call__(self, f, *args):
        d = Deferred()
        self.jobs.append((f, args, d))
        return d

    def run_one(self):
        f, args, d = self.jobs.pop(0)
        d.callback(f(*args))

    def run_all(self):
        while self.jobs:
            self.run_one()

    def fail_one(self, error):
        _, _, d = self.jobs.pop(0)
        d.errback(error)


class OneShotHashTests(SynchronousTestCase):

    def test_matches_the_resumable_hash(self):
        """The hash of a blob pushed in one request gives the digest the
        resumable one gives, for pieces of any kind and size."""
        data = bytes(range(256)) * 9000
        for algorithm in ("sha256", "sha512"):
            one, resumable = OneShotHash(algorithm), ResumableHash(algorithm)
            for piece in (data[:10], bytearray(data[10:5000]), memoryview(data)[5000:]):
                one.update(piece)
                resumable.update(piece)
            self.assertEqual(one.digest(), resumable.digest())
            self.assertEqual(one.digest(), f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}")
        self.assertRaises(ValueError, OneShotHash, "md5")


class HashFeedTests(SynchronousTestCase):

    def test_batches_in_order(self):
        """One batch is hashed at a time, holding every piece queued while
        the previous one ran; the hash covers the pieces in order."""
        worker = ManualWorker()
        feed = HashFeed(ResumableHash("sha256"), worker)
        feed.update(b"a" * 10)
        feed.update(b"b" * 10)
        feed.update(b"c" * 10)
        self.assertEqual(len(worker.jobs), 1)
        self.assertEqual(feed.backlog, 30)
        worker.run_one()
        self.assertEqual(len(worker.jobs), 1)
        self.assertEqual(feed.backlog, 20)
        worker.run_all()
        self.assertEqual(feed.backlog, 0)
        hashed = self.successResultOf(feed.caught_up())
        self.assertEqual(hashed.digest(), sha256(b"a" * 10 + b"b" * 10 + b"c" * 10))

    def test_caught_up_waits(self):
        """C{caught_up(n)} fires once at most C{n} bytes wait."""
        worker = ManualWorker()
        feed = HashFeed(ResumableHash("sha256"), worker)
        feed.update(b"x" * 100)
        feed.update(b"y" * 50)
        some, everything = feed.caught_up(60), feed.caught_up()
        self.assertNoResult(some)
        worker.run_one()
        self.successResultOf(some)
        self.assertNoResult(everything)
        worker.run_one()
        self.successResultOf(everything)

    def test_worker_failure(self):
        """A failed batch fails every wait, and later ones at once."""
        worker = ManualWorker()
        feed = HashFeed(ResumableHash("sha256"), worker)
        feed.update(b"x")
        waiting = feed.caught_up()
        worker.fail_one(RuntimeError("pool stopped"))
        self.failureResultOf(waiting, RuntimeError)
        feed.update(b"y")
        self.assertEqual(worker.jobs, [])
        self.failureResultOf(feed.caught_up(), RuntimeError)


class ThreadHashedBodyTests(SynchronousTestCase):

    def setUp(self):
        self.storage = MemoryChunkedStorage(chunk_size=100)
        self.worker = ManualWorker()

    def body(self, hash=None):
        prepared = succeed(("context", hash or ResumableHash("sha256")))
        return BlobBody(prepared, self.storage, run_in_thread=self.worker)

    def test_outcome_waits_for_the_hash(self):
        """The chunks are stored as the pieces come; the outcome waits until
        the worker hashed them all, and its hash state restores."""
        body = self.body()
        for piece in (b"a" * 150, bytearray(b"b" * 70)):
            self.assertIsNone(self.successResultOf(body.write(piece)))
        body.finish()
        outcome = body.outcome()
        self.assertEqual(len(self.storage.chunks), 3)
        self.assertNoResult(outcome)
        self.worker.run_all()
        received = self.successResultOf(outcome)
        self.assertEqual(self.storage.contents(received.chunks), b"a" * 150 + b"b" * 70)
        self.assertEqual(received.length, 220)
        restored = ResumableHash("sha256", received.hash.state())
        self.assertEqual(restored.digest(), sha256(b"a" * 150 + b"b" * 70))

    def test_backlog_holds_the_client(self):
        """Past L{HASH_BACKLOG} bytes waiting for the worker, a write's
        Deferred stays unfired until the worker caught up."""
        self.storage = MemoryChunkedStorage(chunk_size=4 << 20)
        body = self.body()
        piece = b"p" * (1 << 20)
        writes = [body.write(piece) for _ in range(HASH_BACKLOG // len(piece) + 1)]
        self.successResultOf(writes[-2])
        self.assertNoResult(writes[-1])
        self.worker.run_all()
        self.successResultOf(writes[-1])
        body.finish()
        received = self.successResultOf(body.outcome())
        self.assertEqual(received.hash.digest(), sha256(piece * len(writes)))

    def test_worker_failure_deletes_chunks(self):
        """A hash that cannot be computed fails the body; nothing of it is
        left in storage."""
        body = self.body()
        body.write(b"a" * 250)
        body.finish()
        self.worker.fail_one(RuntimeError("pool stopped"))
        self.failureResultOf(body.outcome(), RuntimeError)
        self.assertEqual(self.storage.chunks, {})

    def test_connection_lost_mid_hash(self):
        """The client gone while a batch is hashed: the chunks are deleted,
        queued pieces dropped, and the late batch result is harmless."""
        body = self.body()
        body.write(b"a" * 250)
        body.write(b"b" * 50)
        body.connection_lost(Failure(ConnectionError("gone")))
        self.assertEqual(self.storage.chunks, {})
        self.worker.run_all()
        self.assertEqual(self.worker.jobs, [])

    def test_prepare_failure(self):
        """A body whose preparation failed hashes nothing."""
        body = BlobBody(fail(KeyError("no upload")), self.storage, run_in_thread=self.worker)
        body.write(b"abc")
        body.finish()
        self.failureResultOf(body.outcome(), KeyError)
        self.assertEqual(self.worker.jobs, [])


class RealThreadTests(TestCase):

    async def test_digest(self):
        """Hashed in the reactor's thread pool, a body has the digest
        hashlib gives."""
        storage = MemoryChunkedStorage(chunk_size=1 << 20)
        body = BlobBody(succeed((None, ResumableHash("sha256"))), storage,
                        run_in_thread=hashing_lane(reactor))
        pieces = [bytes([i]) * (300 << 10) for i in range(10)]
        for piece in pieces:
            await body.write(piece)
        body.finish()
        received = await body.outcome()
        self.assertEqual(received.hash.digest(), sha256(b"".join(pieces)))
        self.assertEqual(storage.contents(received.chunks), b"".join(pieces))


class ManualPool:
    """The part of a L{ThreadPool} C{deferToThreadPool} uses; jobs run when
    the test says so."""

    def __init__(self):
        self.jobs = []

    def callInThreadWithCallback(self, on_result, f, *args, **kwargs):
        self.jobs.append((on_result, f, args))

    def run_one(self):
        on_result, f, args = self.jobs.pop(0)
        on_result(True, f(*args))


class ImmediateThreadsReactor:
    """A reactor whose thread pool is a L{ManualPool} and whose
    C{callFromThread} calls at once."""

    def __init__(self):
        self.pool = ManualPool()

    def getThreadPool(self):
        return self.pool

    def callFromThread(self, f, *args, **kwargs):
        f(*args, **kwargs)


class HashingLaneTests(SynchronousTestCase):

    def test_one_batch_at_a_time(self):
        """The batches of two bodies go to the pool one at a time, in the
        order they were started, and each hash gets its own bytes."""
        reactor = ImmediateThreadsReactor()
        lane = hashing_lane(reactor)
        first = HashFeed(ResumableHash("sha256"), lane)
        second = HashFeed(ResumableHash("sha256"), lane)
        first.update(b"1" * 10)
        second.update(b"2" * 10)
        self.assertEqual(len(reactor.pool.jobs), 1)
        reactor.pool.run_one()
        self.assertEqual(len(reactor.pool.jobs), 1)
        reactor.pool.run_one()
        self.assertEqual(reactor.pool.jobs, [])
        self.assertEqual(self.successResultOf(first.caught_up()).digest(), sha256(b"1" * 10))
        self.assertEqual(self.successResultOf(second.caught_up()).digest(), sha256(b"2" * 10))
