# -*- test-case-name: speedy.test.test_testing,speedy.test.test_imageserver_replication -*-
"""
L{FakeCluster}: the imageserver's real storage path
(L{speedy.imageserver.replication.ReplicatedStorage}) wired to the fakes of
what it talks to, on one L{Clock}.
"""

from random import Random

from twisted.internet.task import Clock

from speedy.imageserver.fileids import FileIdRange
from speedy.imageserver.replication import ReplicatedStorage
from speedy.metadata.memory import MemoryMetadataStore
from speedy.testing.chunkclient import FakeChunkClient
from speedy.testing.clusterview import StaticClusterView, make_view
from speedy.testing.master import FakeMaster


class FakeCluster:
    """
    A L{ReplicatedStorage} wired to fakes on one L{Clock}: C{client},
    C{master}, C{view} (a L{StaticClusterView}), C{file_ids} and C{metadata}
    (a L{MemoryMetadataStore}).  C{groups} maps a group id to its member
    addresses.
    """

    def __init__(self, groups, chunk_size=8, parallelism=2, tries=3, seed=0, id_batch=100,
                 fill_slots=0, cut_through=0, replication="fanout", upload_backlog=0):
        self.clock = Clock()
        self.client = FakeChunkClient(self.clock)
        self.view = StaticClusterView(make_view(groups))
        self.master = FakeMaster(self.clock, self.view.current)
        self.file_ids = FileIdRange(self.master, batch=id_batch, low_water=id_batch // 4)
        self.metadata = MemoryMetadataStore(self.clock)
        self.storage = ReplicatedStorage(
            self.client, self.view, self.file_ids, self.metadata, self.clock,
            chunk_size=chunk_size, parallelism=parallelism, tries=tries, rng=Random(seed),
            fill_slots=fill_slots, cut_through=cut_through, replication=replication,
            upload_backlog=upload_backlog)

    def copies(self, ref):
        """@return: {address: bytes} of the copies of C{ref} on its group's members."""
        group = self.view.current.groups[ref.group_id]
        return {s.address: self.client.server(s.address).chunks.get(ref.file_id)
                for s in group.servers}
