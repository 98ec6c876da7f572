"""
Tests for L{speedy.testing}: every fake provides the interface it stands
for, and keeps the same contract as the real implementation, the same
tests run against both:

  - L{MemoryChunkStore} as the engine (L{speedy.test.test_store} runs
    that mixin against L{ChunkStore});
  - L{FakeChunkClient} as L{ChunkClient} talking to real chunkserver
    protocols over a L{MemoryNetwork};
  - L{MemoryChunkedStorage} as L{ReplicatedStorage} on a L{FakeCluster};
  - L{FakeMaster} as L{HTTPMasterClient} talking to the real chunkmaster
    API over a L{MemoryNetwork}.

The metadata store's contract runs in L{speedy.test.test_metadata}.
"""

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionLost, ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.test.iosim import ConnectionCompleter
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.server import Site
from zope.interface.verify import verifyObject

from speedy.chunkmaster.api import build_api
from speedy.chunkmaster.cluster import Cluster
from speedy.chunkmaster.messages import Heartbeat
from speedy.chunkserver.protocol import ChunkServerFactory
from speedy.imageserver.clusterview import IClusterView
from speedy.imageserver.master import HTTPMasterClient, IMasterClient
from speedy.interfaces import (
    IChunkClient, IChunkedStorage, IChunkedWriter, IChunkStore, IMetadataStore)
from speedy.testing import (
    DOWN, SLOW, ChunkClientTestsMixin, ChunkedStorageTestsMixin, ChunkStoreTestsMixin,
    FakeChunkClient, FakeCluster, FakeMaster, MasterClientTestsMixin, MemoryChunkedStorage,
    MemoryChunkStore, MemoryMetadataStore, OutageStore, StaticClusterView, make_view)
from speedy.testing.chunkedstorage import PausingConsumer
from speedy.wire.client import ChunkClient


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


class FakeChunkClientContractTests(ChunkClientTestsMixin, SynchronousTestCase):
    """L{FakeChunkClient} against the L{IChunkClient} contract."""

    def setUp(self):
        self.clock = Clock()
        super().setUp()

    def make_client(self):
        return FakeChunkClient(self.clock)

    def settle(self):
        """The fake answers at once."""

    def damage(self, address, file_id):
        server = self.client.server(address)
        server.chunks[file_id] = bytes(b ^ 1 for b in server.chunks[file_id])

    def take_down(self, address):
        self.client.server(address).mode = DOWN

    def stall(self, address):
        self.client.server(address).mode = SLOW


class MemoryNetwork:
    """
    Servers listening on a L{MemoryReactorClock}, and the connections that
    clients ask it for: L{settle} completes them (or refuses those to a
    server taken down) and moves their bytes, but not those of a stalled
    server.
    """

    def __init__(self, reactor):
        self.reactor = reactor
        self.completer = ConnectionCompleter(reactor)
        self.pumps = []  # (address, IOPump) of every connection made
        self.down = set()
        self.stalled = set()

    @staticmethod
    def port(address):
        return int(address.rsplit(":", 1)[1])

    def listen(self, address, factory):
        host = address.rsplit(":", 1)[0]
        self.reactor.listenTCP(self.port(address), factory, interface=host)

    def settle(self):
        """Complete or refuse the connections asked for, and pump every
        connection not stalled until nothing moves."""
        moved = True
        while moved:
            moved = False
            while self.reactor.tcpClients:
                host, port = self.reactor.tcpClients[0][:2]
                address = f"{host}:{port}"
                if address in self.down:
                    _, _, factory, _, _ = self.reactor.tcpClients.pop(0)
                    factory.clientConnectionFailed(
                        self.reactor.connectors.pop(0), Failure(ConnectionRefusedError()))
                else:
                    self.pumps.append((address, self.completer.succeedOnce()))
                moved = True
            for address, pump in self.pumps:
                if address not in self.stalled and pump.flush():
                    moved = True

    def take_down(self, address):
        """The server at C{address} stops listening and drops its
        connections."""
        self.down.add(address)
        self.reactor.tcpServers = [
            server for server in self.reactor.tcpServers if server[0] != self.port(address)]
        for at, pump in self.pumps:
            if at == address:
                pump.serverIO.abortConnection()
        self.settle()

    def stall(self, address):
        """The server at C{address} gets no more bytes, and sends none."""
        self.stalled.add(address)


class ChunkClientContractTests(ChunkClientTestsMixin, SynchronousTestCase):
    """
    L{ChunkClient} against the L{IChunkClient} contract: real chunkserver
    protocols over L{MemoryChunkStore}s listen on a L{MemoryNetwork}.
    """

    def setUp(self):
        self.clock = MemoryReactorClock()
        self.network = MemoryNetwork(self.clock)
        self.stores = {}
        for address in self.addresses:
            self.stores[address] = store = MemoryChunkStore()
            self.network.listen(address, ChunkServerFactory(self.clock, store))
        super().setUp()
        self.addCleanup(self.close_client)

    def make_client(self):
        return ChunkClient(self.clock, connect_timeout=5.0, request_timeout=30.0,
                           max_connections_per_server=4)

    def close_client(self):
        self.network.stalled.clear()
        d = self.client.close()
        self.settle()
        self.successResultOf(d)

    def settle(self):
        self.network.settle()

    def damage(self, address, file_id):
        self.stores[address].damage(file_id)

    def take_down(self, address):
        self.network.take_down(address)

    def stall(self, address):
        self.network.stall(address)


class MemoryChunkedStorageContractTests(ChunkedStorageTestsMixin, SynchronousTestCase):
    """L{MemoryChunkedStorage} against the L{IChunkedStorage} contract."""

    def make_storage(self):
        return MemoryChunkedStorage(chunk_size=self.chunk_size, piece_size=4)

    def stored(self):
        return {(self.storage.group_id, file_id) for file_id in self.storage.chunks}


class MemoryChunkedStorageTests(SynchronousTestCase):
    """What the fake adds for tests: reads in pieces of C{piece_size}, and
    bookkeeping of the reads in progress."""

    def setUp(self):
        self.storage = MemoryChunkedStorage(chunk_size=10, piece_size=4)

    def store(self, data):
        writer = self.storage.writer()
        self.successResultOf(writer.write(data))
        return self.successResultOf(writer.finish())

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
        self.assertEqual(self.storage.reads_in_progress, 0)


class ReplicatedStorageContractTests(ChunkedStorageTestsMixin, SynchronousTestCase):
    """
    L{ReplicatedStorage} against the L{IChunkedStorage} contract, over
    two groups of fake chunkservers (L{FakeCluster}): a chunk is held while
    any member of its group holds it.
    """

    def make_storage(self):
        self.cluster = FakeCluster({1: ["a:1", "b:1"], 2: ["c:1", "d:1"]},
                                   chunk_size=self.chunk_size)
        return self.cluster.storage

    def stored(self):
        return {(group_id, file_id)
                for group_id, group in self.cluster.view.current.groups.items()
                for server in group.servers
                for file_id in self.cluster.client.server(server.address).chunks}

    def test_every_member_holds_each_chunk(self):
        """What the contract calls stored is on every member of its group."""
        chunks = self.store(b"x" * 25)
        for chunk in chunks:
            for server in self.cluster.view.current.groups[chunk.group_id].servers:
                self.assertIn(chunk.file_id, self.cluster.client.server(server.address).chunks)


class FakeMasterContractTests(MasterClientTestsMixin, SynchronousTestCase):
    """L{FakeMaster} against the L{IMasterClient} contract."""

    def setUp(self):
        self.clock = Clock()
        super().setUp()

    def make_master_client(self):
        return FakeMaster(self.clock, make_view({1: self.addresses}))

    def settle(self):
        """The fake answers at once."""

    def change_view(self):
        view = self.master.view
        self.master.publish(make_view({1: self.addresses, 2: [self.new_address]},
                                      version=view.version + 1))

    def take_down(self):
        self.master.down = True


class HTTPMasterClientContractTests(MasterClientTestsMixin, SynchronousTestCase):
    """
    L{HTTPMasterClient} against the L{IMasterClient} contract: the real
    chunkmaster API over a L{Cluster} listens on a L{MemoryNetwork}, and
    its servers heartbeat straight into the L{Cluster}.
    """

    address = "127.0.0.1:8123"

    def setUp(self):
        self.clock = MemoryReactorClock()
        self.clock.advance(1_700_000_000)
        self.network = MemoryNetwork(self.clock)
        store = MemoryMetadataStore(self.clock)
        self.cluster = Cluster(store, self.clock, group_size=2, reserve=0)
        self.addCleanup(self.cluster.stop)
        self.network.listen(self.address, Site(build_api(self.cluster, store, cluster_secret="s3")))
        for n, address in enumerate(self.addresses):
            self.heartbeat(f"s{n}", 1, address)
        super().setUp()
        self.addCleanup(self.close_client)

    def heartbeat(self, server_id, group_id, address):
        self.successResultOf(Deferred.fromCoroutine(self.cluster.heartbeat(Heartbeat(
            server_id, group_id, address, capacity=1 << 40, used=0, free=1 << 40,
            read_only=False, load={}))))

    def make_master_client(self):
        return HTTPMasterClient(self.clock, f"http://{self.address}/", "s3")

    def close_client(self):
        d = self.master.close()
        self.settle()
        self.successResultOf(d)

    def settle(self):
        self.network.settle()

    def change_view(self):
        self.heartbeat("s9", 2, self.new_address)

    def take_down(self):
        self.network.take_down(self.address)
