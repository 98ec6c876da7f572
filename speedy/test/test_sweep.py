"""
Tests for L{speedy.chunkmaster.sweep}: the mark and sweep of the registry's
tables, alone and in the chunk collector's rounds, over the registry's own
blobs and manifests on a fake cluster.
"""

import json

from twisted.internet.defer import Deferred
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from speedy.chunkmaster.collector import ChunkCollector
from speedy.chunkmaster.sweep import MetadataSweep, SweepCounts, parse_policies
from speedy.registry.blobs import Blobs
from speedy.registry.digests import digest_of
from speedy.registry.errors import RegistryError
from speedy.registry.manifests import OCI_INDEX, OCI_MANIFEST, Manifests
from speedy.testing import FakeCluster

GRACE = 3600.0
CHUNK_GRACE = 600.0
REPO = "library/app"


def run(coroutine):
    return Deferred.fromCoroutine(coroutine)


class Registry:
    """The registry's blobs and manifests over a L{FakeCluster}."""

    def __init__(self, cluster):
        self.cluster = cluster
        self.blobs = Blobs(cluster.metadata, cluster.storage, cluster.clock)
        self.manifests = Manifests(cluster.metadata, cluster.clock)

    async def push_blob(self, repository, data):
        """Store C{data} and commit it as a blob of C{repository}.
        @return: its descriptor."""
        writer = self.cluster.storage.writer()
        await writer.write(data)
        chunks = await writer.finish()
        digest = digest_of("sha256", data)
        await self.blobs.commit(repository, digest, len(data), chunks)
        return {"mediaType": "application/octet-stream", "digest": digest, "size": len(data)}

    async def push_image(self, repository, tag, layers, subject=None):
        """Push C{layers} and a config, then the manifest under C{tag}
        (by digest if None).  @return: the manifest's digest."""
        descriptors = [await self.push_blob(repository, layer) for layer in layers]
        config = await self.push_blob(repository, json.dumps({"tag": tag}).encode())
        body = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config,
                "layers": descriptors}
        if subject is not None:
            body["subject"] = {"mediaType": OCI_MANIFEST, "digest": subject, "size": 1}
        content = json.dumps(body).encode()
        digest = digest_of("sha256", content)
        await self.manifests.put(repository, tag or digest, content)
        return digest

    async def push_index(self, repository, tag, children):
        """Push an index listing the manifests C{children} (digests of
        C{repository}) under C{tag} (by digest if None).  @return: its
        digest."""
        listed = []
        for child in children:
            record = await self.manifests.get(repository, child)
            listed.append({"mediaType": OCI_MANIFEST, "digest": child,
                           "size": len(record.content)})
        content = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX,
                              "manifests": listed}).encode()
        digest = digest_of("sha256", content)
        await self.manifests.put(repository, tag or digest, content)
        return digest


class MetadataSweepTests(SynchronousTestCase):
    """A round of the collector with a sweep: what no manifest references
    goes, what one does stays, and the chunks of what went are deleted
    from every member after the chunk collector's own grace period."""

    def setUp(self):
        self.cluster = FakeCluster({1: ["10.0.0.1:8001", "10.0.0.2:8001", "10.0.0.3:8001"]},
                                   chunk_size=8)
        self.clock = self.cluster.clock
        self.metadata = self.cluster.metadata
        self.registry = Registry(self.cluster)
        self.sweep = MetadataSweep(self.metadata, self.clock, GRACE, rate=0, batch=2, page=3)
        self.collector = ChunkCollector(self.cluster.storage, self.metadata, self.clock,
                                        grace=CHUNK_GRACE, period=0, sweep=self.sweep)

    def push(self, *args, **kwargs):
        return self.successResultOf(run(self.registry.push_image(*args, **kwargs)))

    def collect(self):
        return self.successResultOf(self.collector.collect())

    def blob(self, data):
        return self.successResultOf(self.metadata.get_blob(digest_of("sha256", data)))

    def test_deleted_image_goes_shared_layers_stay(self):
        """Two images share a layer; one is deleted (its manifest only, as
        skopeo delete does).  Its own layer and config are collected, and
        their chunks deleted from every member a chunk grace period
        later; the survivor keeps every blob and reads back whole."""
        shared, own, kept = b"shared layer bytes", b"own layer of the doomed", b"kept layer"
        doomed = self.push(REPO, "old", [shared, own])
        self.push(REPO, "new", [shared, kept])
        own_chunks = self.blob(own).chunks
        self.successResultOf(run(self.registry.manifests.delete(REPO, doomed)))
        self.clock.advance(GRACE - 1)
        self.assertEqual(self.collect().sweep, SweepCounts())
        self.assertIsNotNone(self.blob(own))
        self.clock.advance(1)
        dry = self.successResultOf(self.collector.dry_run())
        self.assertEqual((dry.sweep.blobs, dry.sweep.blob_bytes), (2, len(own) + len(json.dumps({"tag": "old"}))))
        first = self.collect()
        self.assertEqual((first.sweep.blobs, first.sweep.blob_bytes), (2, len(own) + len(json.dumps({"tag": "old"}))))
        self.assertIsNone(self.blob(own))
        for data in (shared, kept):
            self.assertIsNotNone(self.blob(data))
        # readable until the chunk grace period is over
        self.assertEqual([c for c in self.cluster.copies(own_chunks[0]).values()],
                         [own[:8]] * 3)
        self.clock.advance(CHUNK_GRACE)
        second = self.collect()
        self.assertEqual(second.chunks_deleted, len(own_chunks) + 2)
        for chunk in own_chunks:
            self.assertEqual(set(self.cluster.copies(chunk).values()), {None})
        blob = self.successResultOf(run(self.registry.blobs.linked(REPO, digest_of("sha256", shared))))
        consumer = StringTransport()
        self.successResultOf(self.cluster.storage.read(blob.chunks, 0, blob.size, consumer))
        self.assertEqual(consumer.value(), shared)
        self.assertEqual(self.collector.totals["blobs_deleted"], 2)

    def test_layers_pushed_before_their_manifest(self):
        """Layers pushed but not referenced yet stay for the grace period
        after their push: the manifest that follows finds them."""
        self.clock.advance(2 * GRACE)
        layer = b"layer before its manifest"
        descriptor = self.successResultOf(run(self.registry.push_blob(REPO, layer)))
        self.clock.advance(GRACE - 1)
        self.collect()
        self.assertEqual(self.successResultOf(
            run(self.registry.blobs.linked(REPO, descriptor["digest"]))).size, len(layer))
        self.push(REPO, "v1", [layer])
        self.clock.advance(10 * GRACE)
        self.assertEqual(self.collect().sweep.blobs, 0)

    def test_pushed_again_waits_again(self):
        """A blob pushed again (or mounted) long after its first push waits
        a grace period from then."""
        layer = b"layer pushed twice"
        self.successResultOf(run(self.registry.push_blob(REPO, layer)))
        self.clock.advance(2 * GRACE)
        self.successResultOf(run(self.registry.push_blob(REPO, layer)))
        self.successResultOf(run(self.registry.blobs.mount("other/app", digest_of("sha256", layer))))
        self.clock.advance(GRACE - 1)
        self.assertEqual(self.collect().sweep.blobs, 0)
        self.clock.advance(1)
        self.assertEqual(self.collect().sweep.blobs, 1)
        error = self.failureResultOf(run(self.registry.blobs.linked(
            "other/app", digest_of("sha256", layer))), RegistryError).value
        self.assertEqual(error.code.name, "BLOB_UNKNOWN")

    def test_pages_and_batches(self):
        """More blobs than a page and a batch are all swept."""
        for n in range(7):
            self.successResultOf(run(self.registry.push_blob(REPO, b"blob %d" % n)))
        self.clock.advance(GRACE)
        self.assertEqual(self.successResultOf(self.collector.dry_run()).sweep.blobs, 7)
        self.assertEqual(self.collect().sweep.blobs, 7)
        self.assertEqual(len(self.successResultOf(self.metadata.list_garbage())), 7)

    def test_untagged_policy(self):
        """Off by default: untagged manifests stay.  On: an untagged image
        goes with its blobs; a tagged one and its referrer stay."""
        tagged = self.push(REPO, "v1", [b"tagged layer"])
        untagged = self.push(REPO, None, [b"untagged layer"])
        referrer = self.push(REPO, None, [b"signature"], subject=tagged)
        self.clock.advance(GRACE)
        self.assertEqual(self.collect().sweep, SweepCounts())
        self.sweep.untagged = True
        self.assertEqual(self.successResultOf(self.collector.dry_run()).sweep.manifests, 1)
        self.assertEqual(self.collect().sweep.manifests, 1)
        for digest, there in ((tagged, True), (untagged, False), (referrer, True)):
            self.assertEqual(self.successResultOf(
                self.metadata.get_manifest(REPO, digest)) is not None, there)
        self.assertIsNone(self.blob(b"untagged layer"))
        self.assertIsNotNone(self.blob(b"signature"))

    def test_orphans_policy(self):
        """Artifacts whose subject was deleted go, with their blobs, in
        the same round as their subject's (the manifest passes go on while
        they delete)."""
        tagged = self.push(REPO, "v1", [b"tagged layer"])
        referrer = self.push(REPO, None, [b"signature"], subject=tagged)
        self.sweep.orphans = True
        self.clock.advance(GRACE)
        self.assertEqual(self.collect().sweep.manifests, 0)
        self.successResultOf(run(self.registry.manifests.delete(REPO, tagged)))
        self.clock.advance(GRACE)
        counts = self.collect().sweep
        self.assertEqual((counts.manifests, counts.blobs), (1, 4))
        self.assertIsNone(self.successResultOf(self.metadata.get_manifest(REPO, referrer)))

    def test_dry_run_follows_the_policies(self):
        """A dry run counts what the round then deletes, level by level: an
        untagged index; the images it lists and its signature, which only
        it kept; and the blobs only they reference (not the layer a tagged
        image shares)."""
        shared = b"shared layer"
        self.push(REPO, "kept", [shared])
        first = self.push(REPO, None, [b"first layer", shared])
        second = self.push(REPO, None, [b"second layer"])
        index = self.successResultOf(run(self.registry.push_index(REPO, None, [first, second])))
        self.push(REPO, None, [b"signature"], subject=index)
        self.sweep.untagged = True
        self.clock.advance(GRACE)
        dry = self.successResultOf(self.collector.dry_run()).sweep
        self.assertEqual((dry.manifests, dry.blobs), (4, 4))
        self.assertEqual(self.collect().sweep, dry)
        self.assertIsNotNone(self.blob(shared))
        self.assertEqual(self.successResultOf(self.collector.dry_run()).sweep, SweepCounts())

    def test_paced(self):
        """At most C{rate} rows a second: a sweep of 7 blobs at 2 a second,
        2 a transaction, takes 3 seconds."""
        for n in range(7):
            self.successResultOf(run(self.registry.push_blob(REPO, b"blob %d" % n)))
        self.clock.advance(GRACE)
        sweep = MetadataSweep(self.metadata, self.clock, GRACE, rate=2, batch=2, page=100)
        d = run(sweep.sweep())
        for _ in range(2):
            self.clock.advance(1)
            self.assertNoResult(d)
        self.clock.advance(1)
        self.assertEqual(self.successResultOf(d).blobs, 7)

    def test_status(self):
        self.assertEqual(self.collector.status()["sweep"],
                         {"grace": GRACE, "untagged": False, "orphans": False, "rate": 0})


class PolicyTests(SynchronousTestCase):
    def test_parse(self):
        self.assertEqual(parse_policies("none"), frozenset())
        self.assertEqual(parse_policies("untagged, orphans"), {"untagged", "orphans"})
        self.assertRaises(ValueError, parse_policies, "untagged,all")
