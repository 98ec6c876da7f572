"""
End-to-end chain replication: the cluster of L{test_imageserver_e2e} with
imageservers that store each chunk along a chain of its group's members
(C{--replication chain}): a file written through one reads back through
the other, the chunkservers forwarded it, and a chunkserver killed during
an upload fails the chains it was in, which are stored again on the other
group.
"""

from twisted.internet import reactor

from speedy.test import test_imageserver_e2e as e2e
from speedy.test.util import TEST_SECRET
from speedy.wire.client import ChunkClient


class ChainEndToEndTests(e2e.EndToEndTests):
    imageserver_args = ("--replication", "chain")

    async def test_write_here_read_there_and_damage(self):
        """A file stored along chains reads back through the other
        imageserver; the chunkservers forwarded its chunks (two hops per
        chunk: every member but the last forwards)."""
        await self.write_here_read_there()
        client = ChunkClient(reactor, secret=TEST_SECRET)
        try:
            forwarded = 0
            for daemon in self.cluster.chunkservers:
                status = await client.status(f"127.0.0.1:{daemon.port}")
                forwarded += status["wire"]["chains_forwarded"]
        finally:
            await client.close()
        self.assertEqual(forwarded, 2 * 6, "5 MiB and a bit in 1 MiB chunks: six chains")

    async def test_chunkservers_killed(self):
        """A chain member dies during an upload: the upload succeeds on the
        other group and reads back."""
        await self.killed_mid_upload()
