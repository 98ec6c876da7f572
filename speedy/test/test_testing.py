"""
Tests for L{speedy.testing}: every fake provides the interface it stands
for, and L{MemoryChunkStore} keeps the same L{IChunkStore} contract as the
engine (L{speedy.test.test_store.ContractTests} runs the same mixin there).
"""

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from speedy.imageserver.clusterview import IClusterView
from speedy.imageserver.master import IMasterClient
from speedy.interfaces import (
    IChunkClient, IChunkedStorage, IChunkedWriter, IChunkStore, IMetadataStore)
from speedy.testing import (
    ChunkStoreTestsMixin, FakeChunkClient, FakeCluster, FakeMaster,
    MemoryChunkedStorage, MemoryChunkStore, MemoryMetadataStore,
    OutageStore, StaticClusterView)


class FakesProvideTheirInterfacesTests(SynchronousTestCase):
    """Each fake in the table of L{speedy.testing} verifies against its
    interface, so a test written against a fake cannot call what the real
    thing lacks."""

    def test_chunk_store(self):
        verifyObject(IChunkStore, MemoryChunkStore())

    def test_chunk_client(self):
        verifyObject(IChunkClient, FakeChunkClient(Clock()))

    def test_metadata_store(self):
        verifyObject(IMetadataStore, MemoryMetadataStore(Clock()))

    def test_outage_store(self):
        verifyObject(IMetadataStore, OutageStore(Clock()))

    def test_chunked_storage(self):
        storage = MemoryChunkedStorage()
        verifyObject(IChunkedStorage, storage)
        verifyObject(IChunkedWriter, storage.writer())

    def test_master(self):
        verifyObject(IMasterClient, FakeMaster(Clock()))

    def test_cluster_view(self):
        verifyObject(IClusterView, StaticClusterView())

    def test_cluster(self):
        """FakeCluster wires a real IChunkedStorage to the fakes."""
        cluster = FakeCluster({1: ["a:1", "b:1"]})
        verifyObject(IChunkedStorage, cluster.storage)
        verifyObject(IChunkClient, cluster.client)


class MemoryChunkStoreContractTests(ChunkStoreTestsMixin, SynchronousTestCase):
    """L{MemoryChunkStore} against the L{IChunkStore} contract."""

    def make_store(self):
        return MemoryChunkStore(max_chunk=self.max_chunk)

    def damage(self, store, file_id):
        store.damage(file_id)


class MemoryChunkStoreTests(SynchronousTestCase):
    """What the fake adds for tests: a store that lags, and bookkeeping of
    open writes and pinned reads."""

    def test_lagging_write_drains_on_catch_up(self):
        store = MemoryChunkStore()
        store.lagging = True
        write = store.put(1, 8)
        write.write(b"abcd")
        self.assertEqual(write.buffered, 4)
        waiting = write.drained(2)
        self.assertNoResult(waiting)
        store.catch_up()
        self.assertEqual(write.buffered, 0)
        self.assertIsNone(self.successResultOf(waiting))

    def test_ended_write_wakes_drain_waiters(self):
        """An aborted write holds nothing back: its waiters wake."""
        store = MemoryChunkStore()
        store.lagging = True
        write = store.put(1, 8)
        write.write(b"abcd")
        waiting = write.drained(0)
        write.abort()
        self.assertIsNone(self.successResultOf(waiting))
        self.assertEqual(store.open_writes, 0)

    def test_pins(self):
        store = MemoryChunkStore()
        store.add(1, b"abc")
        read = self.successResultOf(store.get(1))
        self.assertEqual(store.pinned, 1)
        read.release()
        read.release()
        self.assertEqual(store.pinned, 0)
