"""
Tests for L{speedy.wire.growing}: a chunk filled over time, and the PUT
bodies that send it on as it fills.
"""

import google_crc32c
from twisted.internet.error import ConnectionLost
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from speedy.wire.growing import BodyAbandoned, GrowingBody, GrowingChunk
from speedy.wire.producers import PIECE


class GrowingChunkTests(SynchronousTestCase):

    def test_pieces_kept_as_added(self):
        chunk = GrowingChunk(10)
        first, second = b"abcd", b"efghij"
        whole = chunk.whole()
        chunk.add(first)
        self.assertNoResult(whole)
        chunk.add(b"")
        chunk.add(second)
        pieces = self.successResultOf(whole)
        self.assertEqual(pieces, (first, second))
        self.assertIs(pieces[0], first)  # not copied
        self.assertEqual(chunk.crc32c, google_crc32c.value(first + second))
        self.assertEqual(self.successResultOf(chunk.whole()), (first, second))

    def test_overfill_refused(self):
        chunk = GrowingChunk(3)
        chunk.add(b"ab")
        self.assertRaises(ValueError, chunk.add, b"cd")
        self.assertEqual((chunk.filled, chunk.pieces), (2, [b"ab"]))

    def test_fail(self):
        """A failed chunk fails L{whole} (before and after) and refuses
        more bytes; failing again, or failing a complete chunk, changes
        nothing."""
        chunk = GrowingChunk(4)
        waiting = chunk.whole()
        chunk.add(b"a")
        chunk.fail(ConnectionError("client gone"))
        chunk.fail(ValueError("later"))
        self.failureResultOf(waiting, ConnectionError)
        self.failureResultOf(chunk.whole(), ConnectionError)
        self.assertRaises(ValueError, chunk.add, b"b")
        complete = GrowingChunk(1)
        complete.add(b"x")
        complete.fail(ConnectionError("too late"))
        self.assertIsNone(complete.failure)


class GrowingBodyTests(SynchronousTestCase):
    """On a transport whose buffer is not visible (pieces are copied in
    at most PIECE bytes); C{resumeProducing} is the transport asking for
    more, as a pull consumer does once it drained what it had."""

    def setUp(self):
        self.transport = StringTransport()
        self.chunk = GrowingChunk(PIECE + 100)
        self.moved = []
        self.body = GrowingBody(self.chunk, progress=lambda: self.moved.append(1))

    def test_sends_what_arrived_and_waits(self):
        self.chunk.add(b"a" * 50)
        done = self.body.start(self.transport)
        self.assertIs(self.transport.producer, self.body)
        self.body.resumeProducing()
        self.assertEqual(self.transport.value(), b"a" * 50)
        self.body.resumeProducing()  # nothing more yet: it waits
        self.assertEqual(len(self.transport.value()), 50)
        self.chunk.add(b"b" * PIECE)  # the transport asked: sent at once, up to PIECE
        self.assertEqual(self.transport.value(), b"a" * 50 + b"b" * PIECE)
        self.body.resumeProducing()
        self.chunk.add(b"c" * 50)
        self.assertEqual(self.transport.value(), b"a" * 50 + b"b" * PIECE + b"c" * 50)
        self.assertNoResult(done)
        self.body.resumeProducing()  # the last piece was taken: the body ends
        self.successResultOf(done)
        self.assertIsNone(self.transport.producer)
        self.assertEqual(len(self.moved), 3)

    def test_not_sent_until_asked(self):
        """Bytes that arrive while the transport has not asked for more
        wait for it to ask."""
        self.body.start(self.transport)
        self.body.resumeProducing()
        self.chunk.add(b"a" * 10)  # asked for: sent at once
        self.chunk.add(b"b" * 10)  # not asked again yet
        self.assertEqual(self.transport.value(), b"a" * 10)
        self.body.resumeProducing()
        self.assertEqual(self.transport.value(), b"a" * 10 + b"b" * 10)

    def test_chunk_failure_abandons(self):
        done = self.body.start(self.transport)
        self.body.resumeProducing()
        self.chunk.add(b"a")
        self.chunk.fail(ConnectionError("client gone"))
        failure = self.failureResultOf(done, BodyAbandoned)
        self.assertIn("client gone", str(failure.value))
        self.assertIsNone(self.transport.producer)

    def test_stopped(self):
        done = self.body.start(self.transport)
        self.body.stopProducing()
        self.failureResultOf(done, ConnectionLost)
        self.chunk.add(b"late")  # no longer watched
        self.assertEqual(self.transport.value(), b"")

    def test_stopped_before_start(self):
        self.body.stopProducing()
        self.failureResultOf(self.body.start(self.transport), ConnectionLost)

    def test_empty_chunk(self):
        body = GrowingBody(GrowingChunk(0))
        self.successResultOf(body.start(self.transport))
        self.assertIsNone(self.transport.producer)


class ForgetfulChunkTests(SynchronousTestCase):
    """A chunk forwarded along a chain holds only what its one body has
    not taken yet."""

    def test_pieces_dropped_once_taken(self):
        chunk = GrowingChunk(30, forget=True)
        body = GrowingBody(chunk)
        transport = StringTransport()
        body.start(transport)
        chunk.add(b"a" * 10)
        chunk.add(b"b" * 10)
        self.assertEqual(chunk.backlog(), 20)
        waiting = chunk.when_taken(5)
        body.resumeProducing()
        self.assertNoResult(waiting)
        body.resumeProducing()
        self.successResultOf(waiting)
        self.assertEqual((chunk.backlog(), chunk.taken), (0, 20))
        self.assertEqual(chunk.pieces, [None, None])
        self.assertEqual(transport.value(), b"a" * 10 + b"b" * 10)

    def test_failure_releases_waiters(self):
        chunk = GrowingChunk(30, forget=True)
        chunk.add(b"x" * 20)
        waiting = chunk.when_taken(0)
        chunk.fail(ConnectionError("gone"))
        self.successResultOf(waiting)
