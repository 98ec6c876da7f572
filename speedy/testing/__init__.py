# -*- test-case-name: speedy.test.test_testing -*-
"""
Verified fakes of Speedy's interfaces, for tests of whatever sits on top of
them, and the conformance tests that hold a fake and the real thing to one
contract.  One module per interface; everything is re-exported here.

fake                  stands for       module          real implementation
--------------------  ---------------  --------------  ----------------------------------------------
MemoryChunkStore      IChunkStore      chunkstore      speedy.chunkserver.store.ChunkStore
FakeChunkClient       IChunkClient     chunkclient     speedy.wire.client.ChunkClient
MemoryChunkedStorage  IChunkedStorage  chunkedstorage  speedy.imageserver.replication.ReplicatedStorage
FakeMaster            IMasterClient    master          speedy.imageserver.master.HTTPMasterClient
StaticClusterView     IClusterView     clusterview     speedy.imageserver.clusterview.ClusterViewPoller
MemoryMetadataStore   IMetadataStore   (re-exported)   speedy.metadata.sql.SQLMetadataStore
OutageStore           IMetadataStore   metadata        (a MemoryMetadataStore whose database goes away)
FakeCluster           (a ReplicatedStorage wired to FakeChunkClient, FakeMaster,
                      StaticClusterView and MemoryMetadataStore on one Clock; module cluster)

L{MemoryMetadataStore} is no fake: it is the store behind C{--db memory:}
(L{speedy.metadata.memory}), and the one tests use.

Conformance: each fake's module has the mixin of behaviour tests that the
fake and the real implementation both pass.

mixin                     fake run in          real run in
------------------------  -------------------  ----------------------------------------------
ChunkStoreTestsMixin      test_testing         test_store (ChunkStore on disk)
ChunkClientTestsMixin     test_testing         test_testing (ChunkClient to real chunkserver
                                               protocols over MemoryChunkStores, in memory)
ChunkedStorageTestsMixin  test_testing         test_testing (ReplicatedStorage on FakeCluster)
MasterClientTestsMixin    test_testing         test_testing (HTTPMasterClient to the chunkmaster
                                               API, in memory)
MetadataStoreTestsMixin   test_metadata        test_metadata (SQLite, MariaDB); it runs against
                          (also OutageStore)   the memory store, which is a real one, too

L{StaticClusterView} has no mixin: L{IClusterView} is one attribute, the
latest view, which the fake holds as the test sets it; the poller's own
tests (L{speedy.test.test_imageserver_clusterview}) run it on L{FakeMaster}.
"""

from speedy.metadata.memory import MemoryMetadataStore
from speedy.testing.chunkclient import (
    CORRUPT, DOWN, PARTIAL, SLOW, ChunkClientTestsMixin, FakeChunkClient, FakeChunkServer)
from speedy.testing.chunkedstorage import (
    ChunkedStorageTestsMixin, MemoryChunkedStorage, MemoryChunkedWriter)
from speedy.testing.chunkstore import ChunkStoreTestsMixin, MemoryChunkStore
from speedy.testing.cluster import FakeCluster
from speedy.testing.clusterview import StaticClusterView, make_view
from speedy.testing.master import FakeMaster, MasterClientTestsMixin
from speedy.testing.metadata import OutageStore

__all__ = [
    "CORRUPT", "DOWN", "PARTIAL", "SLOW",
    "ChunkClientTestsMixin", "ChunkStoreTestsMixin", "ChunkedStorageTestsMixin",
    "FakeChunkClient", "FakeChunkServer", "FakeCluster", "FakeMaster", "MasterClientTestsMixin",
    "MemoryChunkStore", "MemoryChunkedStorage", "MemoryChunkedWriter", "MemoryMetadataStore",
    "OutageStore", "StaticClusterView", "make_view",
]
