"""
The mark and sweep under concurrent pushes: randomized interleavings of
pushes (layers then manifest, some layers skipped because a HEAD found
them), cross-repository mounts, tags, index pushes, referrers, manifest
and tag deletes, and collections, run by a seeded scheduler over the
in-memory store, real SQLite and MariaDB.

Every metadata store call is one transaction; the scheduler holds each
call and runs the pending ones one at a time in a random order (and moves
the clock on by a random step before each), so the clients' and the
collector's transactions interleave every way the seeds pick.  After each
step it checks the invariants:

  - a manifest never references a collected blob: every stored manifest's
    layers and config are still linked in its repository, and its index
    children are still there;
  - live data is never deleted: no chunk of a stored blob is in the
    garbage table or was deleted from storage;

and at the end, after a quiet grace period and one more collection, that
every blob no manifest references is gone.

A client may lose a race (its manifest put answers MANIFEST_BLOB_UNKNOWN,
its mount finds nothing to mount): that is allowed, and counted, so the
test can tell the races did happen.
"""

import json
import os
from random import Random

from twisted.internet import reactor
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from speedy.chunkmaster.sweep import MetadataSweep
from speedy.errors import Busy
from speedy.metadata.memory import MemoryMetadataStore
from speedy.metadata.mysql import mysql_store
from speedy.metadata.sqlite import sqlite_store
from speedy.records import ChunkRef
from speedy.registry.blobs import Blobs
from speedy.registry.digests import digest_of
from speedy.registry.errors import RegistryError
from speedy.registry.manifests import OCI_INDEX, OCI_MANIFEST, Manifests
from speedy.test.test_metadata import _mysql_admin, new_mysql_database
from speedy.test.util import require_mysql

#: Seconds a blob or manifest waits before it may be garbage; the clock
#: moves up to a second a step.
GRACE = 6.0
REPOSITORIES = ("a/app", "b/app")
#: The contents of every layer the clients push: few, so images share them.
LAYERS = [b"layer %d" % n for n in range(6)]


class Scheduler:
    """
    Holds every call made through L{ScheduledStore}s and runs the pending
    ones one at a time, the next picked at random.
    """

    def __init__(self, rng, clock):
        self.rng = rng
        self.clock = clock
        self.pending = []
        self.steps = 0

    def hold(self, method, args, kwargs):
        d = Deferred()
        self.pending.append((method, args, kwargs, d))
        return d

    async def run(self, check, observe):
        """Run every pending call (and those they lead to), calling
        C{observe(name, args, result)} after each that succeeds and
        C{check} after each."""
        while self.pending:
            method, args, kwargs, d = self.pending.pop(self.rng.randrange(len(self.pending)))
            self.clock.advance(self.rng.random())
            try:
                result = await method(*args, **kwargs)
            except Exception as e:
                d.errback(e)
            else:
                observe(method.__name__, args, result)
                d.callback(result)
            self.steps += 1
            await check()


class ScheduledStore:
    """A metadata store whose every call waits for the L{Scheduler}."""

    def __init__(self, store, scheduler):
        self._store = store
        self._scheduler = scheduler

    def __getattr__(self, name):
        method = getattr(self._store, name)
        return lambda *args, **kwargs: self._scheduler.hold(method, args, kwargs)


class RecordingStorage:
    """The chunk storage, as far as L{Blobs} uses it: records deletes."""

    def __init__(self):
        self.deleted = set()

    def delete(self, chunks):
        self.deleted.update(chunks)
        return succeed(None)


class World:
    """
    The clients and the collector of one run, over one store, and what
    they know: the manifests they stored and what those require.
    """

    def __init__(self, store, clock, seed):
        self.rng = Random(seed)
        self.clock = clock
        self.store = store
        self.scheduler = Scheduler(self.rng, clock)
        scheduled = ScheduledStore(store, self.scheduler)
        self.storage = RecordingStorage()
        self.blobs = Blobs(scheduled, self.storage, clock)
        self.manifests = Manifests(scheduled, clock)
        self.sweep = MetadataSweep(scheduled, clock, GRACE, untagged=self.rng.random() < 0.5,
                                   orphans=self.rng.random() < 0.5, rate=0,
                                   batch=self.rng.choice([1, 2, 50]), page=3)
        self.file_ids = iter(range(1, 1 << 30))
        #: (repository, digest) -> (required blob digests, required manifest digests)
        self.known = {}
        self.outcomes = {}
        self.linked = {}  # digest -> when it was last linked
        #: manifests a client deleted by digest (the registry lets a client
        #: delete an index's child: that is not the collector's doing)
        self.user_deleted = set()
        self.collected = 0

    def count(self, what):
        self.outcomes[what] = self.outcomes.get(what, 0) + 1

    # the clients ----------------------------------------------------------

    async def push_blob(self, repository, content):
        digest = digest_of("sha256", content)
        if self.rng.random() < 0.5 and await self.blobs._metadata.blob_linked(
                repository, digest) is not None:
            self.count("layer skipped (HEAD found it)")
        else:
            chunks = (ChunkRef(1, next(self.file_ids), len(content), 0),)
            await self.blobs.commit(repository, digest, len(content), chunks)
        return {"mediaType": "application/octet-stream", "digest": digest, "size": len(content)}

    async def put_manifest(self, repository, body, tag, blobs=(), children=()):
        content = json.dumps(body).encode()
        digest = digest_of("sha256", content)
        try:
            await self.manifests.put(repository, tag or digest, content)
        except RegistryError as e:
            self.count(f"manifest put refused: {e.code.name}")
            return None
        self.known[repository, digest] = (tuple(blobs), tuple(children), len(content))
        self.user_deleted.discard((repository, digest))
        self.count("manifest stored")
        return digest

    async def push_image(self, repository):
        layers = self.rng.sample(LAYERS, self.rng.randint(1, 3))
        descriptors = [await self.push_blob(repository, layer) for layer in layers]
        config = await self.push_blob(repository, b"config %d" % self.rng.randrange(4))
        body = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config,
                "layers": descriptors}
        mine = [key for key in self.known if key[0] == repository]
        if mine and self.rng.random() < 0.3:
            body["subject"] = {"mediaType": OCI_MANIFEST,
                               "digest": self.rng.choice(mine)[1], "size": 1}
        tag = self.rng.choice([None, "v1", "v2", "latest"])
        await self.put_manifest(repository, body, tag,
                                blobs=[d["digest"] for d in [config] + descriptors])

    async def push_index(self, repository):
        mine = [(key[1], known[2]) for key, known in self.known.items()
                if key[0] == repository]
        if not mine:
            return
        children = self.rng.sample(mine, min(len(mine), 2))
        body = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
            {"mediaType": OCI_MANIFEST, "digest": digest, "size": size}
            for digest, size in children]}
        await self.put_manifest(repository, body, self.rng.choice([None, "multi"]),
                                children=[digest for digest, _ in children])

    async def mount_and_push(self, repository):
        """Mount a layer from the other repository, then push an image of it."""
        source = [r for r in REPOSITORIES if r != repository][0]
        content = self.rng.choice(LAYERS)
        digest = digest_of("sha256", content)
        if await self.blobs.mount(repository, digest, source) is None:
            self.count("mount found nothing")
            return
        config = await self.push_blob(repository, b"config mounted")
        layer = {"mediaType": "application/octet-stream", "digest": digest,
                 "size": len(content)}
        body = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config,
                "layers": [layer]}
        await self.put_manifest(repository, body, "mounted",
                                blobs=[digest, config["digest"]])

    async def tag_again(self, repository):
        """Get a manifest and put it back under another tag."""
        mine = [key[1] for key in self.known if key[0] == repository]
        if not mine:
            return
        try:
            record = await self.manifests.get(repository, self.rng.choice(mine))
        except RegistryError:
            return
        try:
            await self.manifests.put(repository, "retagged", record.content,
                                     record.media_type)
        except RegistryError as e:
            self.count(f"tag refused: {e.code.name}")

    async def delete(self, repository):
        mine = [key[1] for key in self.known if key[0] == repository]
        reference = self.rng.choice(["v1", "v2", "latest", "multi"] + mine[:3])
        try:
            await self.manifests.delete(repository, reference)
        except RegistryError:
            return
        if reference.startswith("sha256:"):
            self.user_deleted.add((repository, reference))

    async def collect(self):
        counts = await self.sweep.sweep()
        self.collected += counts.blobs

    async def client(self, operations):
        actions = [self.push_image, self.push_image, self.push_index, self.mount_and_push,
                   self.tag_again, self.delete, self.delete]
        for _ in range(operations):
            if self.rng.random() < 0.25:
                await self.collect()
                continue
            try:
                await self.rng.choice(actions)(self.rng.choice(REPOSITORIES))
            except Busy:
                self.count("commit busy")

    # the invariants ---------------------------------------------------------

    def observe(self, name, args, result):
        """
        Each link's time, as the store stamped it; a blob is never swept
        while a link of it made after the sweep's horizon stands (a push or
        mount keeps it a grace period).
        """
        if name == "link_blob":
            self.linked[args[1]] = self.clock.seconds()
        elif name == "collect_blobs":
            horizon = args[1]
            for blob in result:
                if self.linked.get(blob.digest, 0) > horizon:
                    raise AssertionError(f"blob {blob.digest} linked at "
                                         f"{self.linked[blob.digest]} swept at horizon {horizon}")

    async def check(self):
        for (repository, digest), (blobs, children, _) in self.known.items():
            if await self.store.get_manifest(repository, digest) is None:
                continue
            for blob in blobs:
                if await self.store.blob_linked(repository, blob) is None:
                    raise AssertionError(
                        f"manifest {repository}@{digest} references {blob}, collected")
            for child in children:
                if ((repository, child) not in self.user_deleted
                        and await self.store.get_manifest(repository, child) is None):
                    raise AssertionError(
                        f"index {repository}@{digest} lists {child}, collected")
        live = set()
        for content in LAYERS + [b"config %d" % n for n in range(4)] + [b"config mounted"]:
            blob = await self.store.get_blob(digest_of("sha256", content))
            if blob is not None:
                live.update(blob.chunks)
        garbage = {g.chunk for g in await self.store.list_garbage(limit=None)}
        if live & garbage or live & self.storage.deleted:
            raise AssertionError(f"live chunks deleted: {live & (garbage | self.storage.deleted)}")

    async def run(self, clients=4, operations=12):
        done = [Deferred.fromCoroutine(self.client(operations)) for _ in range(clients)]
        await self.scheduler.run(self.check, self.observe)
        for d in done:
            await d  # a client's unexpected error fails the test here
        # Everything quiet for a grace period: one more collection takes
        # every blob no manifest references.
        self.clock.advance(GRACE + 1)
        last = Deferred.fromCoroutine(self.collect())
        await self.scheduler.run(self.check, self.observe)
        await last
        await self.check_nothing_left()

    async def check_nothing_left(self):
        """After a quiet grace period and a collection, every blob left is
        one a stored manifest references."""
        referenced = set()
        for (repository, digest), (blobs, _, _) in self.known.items():
            if await self.store.get_manifest(repository, digest) is not None:
                referenced.update(blobs)
        for content in LAYERS + [b"config %d" % n for n in range(4)] + [b"config mounted"]:
            digest = digest_of("sha256", content)
            if digest not in referenced and await self.store.get_blob(digest) is not None:
                raise AssertionError(f"blob {digest} no manifest references was not collected")


class InterleavingsMixin:
    """Subclasses define C{make_store(clock)} and C{SEEDS}."""

    async def test_random_interleavings(self):
        totals = {}
        collected = 0
        for seed in self.SEEDS:
            clock = Clock()
            clock.advance(1_700_000_000)
            world = World(await self.make_store(clock), clock, seed)
            try:
                await world.run()
            except AssertionError as e:
                raise AssertionError(f"seed {seed}: {e}") from e
            collected += world.collected
            for what, n in world.outcomes.items():
                totals[what] = totals.get(what, 0) + n
        # The runs were not vacuous: blobs were collected, pushes stored
        # manifests, and some lost a race to the collector.
        self.assertGreater(collected, 0)
        self.assertGreater(totals.get("manifest stored", 0), 0)
        self.assertGreater(totals.get("manifest put refused: MANIFEST_BLOB_UNKNOWN", 0), 0,
                           totals)


class MemoryInterleavingsTests(InterleavingsMixin, TestCase):
    SEEDS = range(60)

    async def make_store(self, clock):
        return MemoryMetadataStore(clock)


class SQLiteInterleavingsTests(InterleavingsMixin, TestCase):
    SEEDS = range(6)

    async def make_store(self, clock):
        store = sqlite_store(os.path.abspath(self.mktemp() + ".db"), reactor, clock)
        await store.start()
        self.addCleanup(store.close)
        return store


_mariadb = None


class MariaDBInterleavingsTests(InterleavingsMixin, TestCase):
    """The same over MariaDB: its statements (locking reads, joins) under
    the random workload; each seed starts on emptied tables."""

    SEEDS = range(3)

    async def make_store(self, clock):
        global _mariadb
        if _mariadb is None:
            _mariadb = new_mysql_database(require_mysql(), f"speedy_sweep_{os.getpid()}")
        store = mysql_store(_mariadb, reactor, clock)
        await store.start()
        self.addCleanup(store.close)
        admin = _mysql_admin(_mariadb)
        try:
            with admin.cursor() as cursor:
                cursor.execute("SHOW TABLES")
                for (table,) in cursor.fetchall():
                    if table not in ("schema_version", "file_ids"):
                        cursor.execute(f"DELETE FROM {table}")
        finally:
            admin.close()
        return store
