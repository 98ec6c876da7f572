"""
L{MemoryChunkedStorage}: the in-memory L{IChunkedStorage} other tests build on.
"""

from twisted.internet.error import ConnectionLost
from twisted.test.proto_helpers import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest
from zope.interface.verify import verifyObject

from speedy.errors import Unavailable
from speedy.interfaces import IChunkedStorage, IChunkedWriter
from speedy.testing import MemoryChunkedStorage


class PausingConsumer(StringTransport):
    """A consumer that pauses its producer after every write."""

    def write(self, data):
        super().write(data)
        self.producer.pauseProducing()


class MemoryChunkedStorageTests(SynchronousTestCase):

    def setUp(self):
        self.storage = MemoryChunkedStorage(chunk_size=10, piece_size=4)

    def store(self, data):
        writer = self.storage.writer()
        self.successResultOf(writer.write(data))
        return self.successResultOf(writer.finish())

    def test_interfaces(self):
        """The storage and its writers provide their interfaces."""
        verifyObject(IChunkedStorage, self.storage)
        verifyObject(IChunkedWriter, self.storage.writer())

    def test_chunks(self):
        """Writes are cut into chunk_size chunks, the tail shorter."""
        chunks = self.store(b"0123456789abcdefghijXYZ")
        self.assertEqual([c.size for c in chunks], [10, 10, 3])
        self.assertEqual(self.storage.contents(chunks), b"0123456789abcdefghijXYZ")

    def test_read_honours_back_pressure(self):
        """A read writes one piece per resumeProducing of a pausing
        consumer, then unregisters and fires."""
        chunks = self.store(b"0123456789abc")
        consumer = PausingConsumer()
        reading = self.storage.read(chunks, 2, 9, consumer)
        self.assertEqual(consumer.value(), b"2345")
        self.assertNoResult(reading)
        consumer.producer.resumeProducing()
        consumer.producer.resumeProducing()
        self.assertEqual(consumer.value(), b"23456789a")
        self.assertIsNone(self.successResultOf(reading))
        self.assertIsNone(consumer.producer)

    def test_cancel_and_stop(self):
        """Cancelling a read, or the consumer stopping it, ends it and
        unregisters it."""
        chunks = self.store(b"0123456789")
        consumer = PausingConsumer()
        reading = self.storage.read(chunks, 0, 10, consumer)
        reading.cancel()
        self.assertIsNone(consumer.producer)
        self.assertEqual(self.storage.reads_in_progress, 0)
        self.failureResultOf(reading)
        consumer = PausingConsumer()
        reading = self.storage.read(chunks, 0, 10, consumer)
        consumer.producer.stopProducing()
        self.failureResultOf(reading, ConnectionLost)

    def test_missing_chunk(self):
        """Reading a deleted chunk fails with Unavailable."""
        chunks = self.store(b"0123456789")
        self.successResultOf(self.storage.delete(chunks))
        self.failureResultOf(self.storage.read(chunks, 0, 10, DummyRequest([])), Unavailable)

    def test_abort(self):
        """An aborted writer leaves nothing in storage."""
        writer = self.storage.writer()
        writer.write(b"x" * 25)
        self.successResultOf(writer.abort())
        self.assertEqual(self.storage.chunks, {})
