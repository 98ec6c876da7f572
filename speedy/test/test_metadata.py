"""
The metadata store's contract: one set of tests, L{MetadataStoreTestsMixin},
run against the in-memory store, SQLite and MariaDB.
"""

import atexit
import os
import sqlite3
import time
from urllib.parse import urlsplit, urlunsplit

import attrs
import pymysql
from twisted.enterprise.adbapi import ConnectionLost
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import Clock, deferLater
from twisted.protocols import portforward
from twisted.trial.unittest import TestCase
from zope.interface.verify import verifyObject

from speedy.errors import (
    BadRequest, IntentExpired, Internal, NotFound, ReferencesMissing, SizeMismatch, Unavailable)
from speedy.interfaces import (
    IClusterTables, IFileTables, IGarbageTables, IMetadataStore, IRegistryTables, IRepairTables,
    ISweepTables, ITransferTables, IUploadTables, IV1Tables)
from speedy.metadata.memory import MemoryMetadataStore
from speedy.metadata.mysql import mysql_store, parse_url
from speedy.metadata.schema import MYSQL_MIGRATIONS, SQLITE_MIGRATIONS, latest_version
from speedy.metadata.sqlite import sqlite_store
from speedy.records import (
    DOWN,
    RW,
    BadReplica,
    BlobRecord,
    ChunkMove,
    ChunkRef,
    FileRecord,
    GarbageChunk,
    GroupRecord,
    ManifestRecord,
    ServerRecord,
    TransferRecord,
    UploadRecord,
    V1ImageRecord,
    V1TagRecord,
)
from speedy.test.processes import free_port
from speedy.test.util import require_mysql
from speedy.testing import OutageStore


START = 1_700_000_000.0
#: The schema version a migrated database is at.
LATEST = latest_version(SQLITE_MIGRATIONS)
assert LATEST == latest_version(MYSQL_MIGRATIONS)
SHA = "sha256:" + "ab" * 32
SHA2 = "sha256:" + "cd" * 32
SHA3 = "sha256:" + "ef" * 32
SHA512 = "sha512:" + "0f" * 64


#: The role interfaces IMetadataStore unites.
ROLES = (IClusterTables, IFileTables, IRegistryTables, IUploadTables, IV1Tables,
         IGarbageTables, ISweepTables, IRepairTables, ITransferTables)


def chunks(*file_ids, group_id=1):
    """@return: a tuple of L{ChunkRef}s, one per file id."""
    return tuple(ChunkRef(group_id, file_id, 1000 + file_id, 0xFFFFFFFF - file_id)
                 for file_id in file_ids)


def server(server_id, group_id=1, address=None, **kwargs):
    return ServerRecord(server_id, group_id, address or f"10.0.0.{server_id[-1]}:8000", **kwargs)


#: V1 image ids
BASE, CHILD, OTHER = "b" * 64, "c" * 64, "d" * 64


def v1_image(image_id, parent=None, ancestry=None, **kwargs):
    """@return: an unfinished L{V1ImageRecord} whose JSON names it."""
    json = b'{"id": "%s"%s}' % (image_id.encode(), b', "parent": "%s"' % parent.encode() if parent else b"")
    return V1ImageRecord(image_id, json, parent, ancestry or (image_id,) + ((parent,) if parent else ()),
                         **kwargs)


def manifest(repository="library/app", digest=SHA, **kwargs):
    kwargs.setdefault("media_type", "application/vnd.oci.image.manifest.v1+json")
    kwargs.setdefault("content", b'{"schemaVersion": 2}')
    return ManifestRecord(repository, digest, **kwargs)


async def failure_of(deferred, exception_type):
    """
    @return: the exception C{deferred} fails with; fail the test if it
        succeeds or fails with anything but C{exception_type}.
    """
    try:
        result = await deferred
    except exception_type as e:
        return e
    raise AssertionError(f"expected {exception_type.__name__}, got result {result!r}")


class MetadataStoreTestsMixin:
    """
    The behaviour every L{IMetadataStore} shares.  Subclasses define
    C{make_store(clock)}, which returns a started store with empty tables
    whose unstamped times come from C{clock}, and close it at cleanup.
    """

    async def setUp(self):
        self.clock = Clock()
        self.clock.advance(START)
        self.store = await self.make_store(self.clock)

    def test_interface(self):
        """The store provides IMetadataStore, and so every role's tables."""
        self.assertTrue(verifyObject(IMetadataStore, self.store))
        for role in ROLES:
            self.assertTrue(verifyObject(role, self.store))

    # servers and groups ---------------------------------------------------

    async def test_server_round_trip(self):
        record = server("cs1", state=RW, capacity=10**13, used=5, free=10**12,
                        read_only=True, last_heartbeat=START + 0.25,
                        load={"reads": 3, "queue": [1, 2], "name": "\u00e9t\u00e9"})
        self.assertIsNone(await self.store.upsert_server(record))
        self.assertEqual(await self.store.get_server("cs1"), record)
        self.assertIsNone(await self.store.get_server("cs9"))

    async def test_server_replaced(self):
        await self.store.upsert_server(server("cs1"))
        moved = server("cs1", group_id=2, address="10.0.0.9:8001", state=DOWN)
        await self.store.upsert_server(moved)
        self.assertEqual(await self.store.list_servers(), [moved])

    async def test_list_and_remove_servers(self):
        for name in ("cs3", "cs1", "cs2"):
            await self.store.upsert_server(server(name))
        self.assertEqual(
            [s.server_id for s in await self.store.list_servers()], ["cs1", "cs2", "cs3"])
        self.assertTrue(await self.store.remove_server("cs2"))
        self.assertFalse(await self.store.remove_server("cs2"))
        self.assertEqual(
            [s.server_id for s in await self.store.list_servers()], ["cs1", "cs3"])

    async def test_removal_sticks_until_upserted(self):
        """A removed server is remembered as removed (also one the store
        never had) until it is upserted again."""
        await self.store.upsert_server(server("cs1"))
        await self.store.upsert_server(server("cs2", address="10.0.0.2:8001"))
        self.assertTrue(await self.store.remove_server("cs1"))
        self.assertFalse(await self.store.remove_server("ghost"))
        self.assertEqual(await self.store.removed_servers(), {"cs1", "ghost"})
        await self.store.upsert_server(server("cs1"))
        self.assertEqual(await self.store.removed_servers(), {"ghost"})

    async def test_rebuilding_flag(self):
        await self.store.upsert_server(server("cs1", rebuilding=True))
        self.assertTrue((await self.store.get_server("cs1")).rebuilding)
        await self.store.upsert_server(server("cs1"))
        self.assertFalse((await self.store.get_server("cs1")).rebuilding)

    async def test_server_load_is_json(self):
        """The load dict comes back as JSON gives it: keys as strings."""
        await self.store.upsert_server(server("cs1", load={1: (2, 3)}))
        self.assertEqual((await self.store.get_server("cs1")).load, {"1": [2, 3]})

    async def test_duplicate_address_refused(self):
        await self.store.upsert_server(server("cs1", address="h:1"))
        error = await failure_of(
            self.store.upsert_server(server("cs2", group_id=2, address="h:1")), BadRequest)
        self.assertIn("h:1", str(error))
        self.assertIsNone(await self.store.get_server("cs2"))

    async def test_fourth_group_member_refused(self):
        for name in ("cs1", "cs2", "cs3"):
            await self.store.upsert_server(server(name, group_id=7))
        await failure_of(self.store.upsert_server(server("cs4", group_id=7)), BadRequest)
        self.assertIsNone(await self.store.get_server("cs4"))
        # A member may still be updated, and a fourth fits once one left.
        await self.store.upsert_server(server("cs3", group_id=7, state=RW))
        await self.store.remove_server("cs3")
        await self.store.upsert_server(server("cs4", group_id=7))
        self.assertEqual(
            [s.server_id for s in await self.store.list_servers()], ["cs1", "cs2", "cs4"])

    async def test_invalid_server_refused(self):
        await failure_of(self.store.upsert_server(server("cs1", state="BROKEN")), BadRequest)
        await failure_of(self.store.upsert_server(server("x" * 129)), BadRequest)
        await failure_of(self.store.upsert_server(server("cs1", used=-1)), BadRequest)
        self.assertEqual(await self.store.list_servers(), [])

    async def test_groups(self):
        await self.store.upsert_group(GroupRecord(2, created=5.0))
        await self.store.upsert_group(GroupRecord(1))
        self.assertEqual(
            await self.store.list_groups(),
            [GroupRecord(1, created=START), GroupRecord(2, created=5.0)])
        await self.store.upsert_group(GroupRecord(2, read_only=True, created=5.0))
        self.assertEqual(
            (await self.store.list_groups())[1], GroupRecord(2, read_only=True, created=5.0))

    # file ids ---------------------------------------------------------------

    async def test_allocate_file_ids(self):
        first = await self.store.allocate_file_ids(100)
        second = await self.store.allocate_file_ids(1)
        self.assertEqual(first[1] - first[0], 100)
        self.assertGreaterEqual(first[0], 1)
        self.assertEqual(second, (first[1], first[1] + 1))

    async def test_allocate_file_ids_concurrently(self):
        """Many allocations at once never share an id."""
        ranges = await gatherResults(
            [self.store.allocate_file_ids(n) for n in range(1, 41)])
        ids = [i for start, end in ranges for i in range(start, end)]
        self.assertEqual(len(ids), sum(range(1, 41)))
        self.assertEqual(len(set(ids)), len(ids))

    async def test_allocate_bad_count(self):
        for count in (0, -5, 1.5, True, "10"):
            await failure_of(self.store.allocate_file_ids(count), BadRequest)
        self.assertEqual((await self.store.allocate_file_ids(1))[0], 1)

    # files --------------------------------------------------------------------

    async def test_file_round_trip(self):
        record = FileRecord("dir/\u00fcber \U0001f433.tar", 2000, chunks(5, 6),
                            created=START - 7, sha256="ab" * 32)
        self.assertIsNone(await self.store.put_file(record))
        self.assertEqual(await self.store.get_file(record.path), record)
        self.assertIsNone(await self.store.get_file("dir/other"))

    async def test_put_file_replaces(self):
        old = FileRecord("a", 1, chunks(1))
        new = FileRecord("a", 2, chunks(2, 3), created=9.0)
        await self.store.put_file(old)
        self.clock.advance(60)
        self.assertEqual(await self.store.put_file(new), attrs.evolve(old, created=START))
        self.assertEqual(await self.store.get_file("a"), new)

    async def test_delete_file(self):
        record = FileRecord("a", 1, chunks(1), created=3.0)
        await self.store.put_file(record)
        self.assertEqual(await self.store.delete_file("a"), record)
        self.assertIsNone(await self.store.delete_file("a"))
        self.assertIsNone(await self.store.get_file("a"))

    async def test_list_files(self):
        paths = ["a/", "a/b", "a/b/c", "a/\uffff", "a/\U0001f433", "a0", "a.", "b", "A/x", ""]
        for path in paths:
            if path:
                await self.store.put_file(FileRecord(path, 0, ()))
        self.assertEqual(
            await self.store.list_files("a/"),
            ["a/", "a/b", "a/b/c", "a/\uffff", "a/\U0001f433"])
        self.assertEqual(await self.store.list_files("a/", limit=2, after="a/"), ["a/b", "a/b/c"])
        self.assertEqual(await self.store.list_files("a/", limit=0), [])
        self.assertEqual(await self.store.list_files("a/b"), ["a/b", "a/b/c"])
        self.assertEqual(await self.store.list_files("a/\U0001f433"), ["a/\U0001f433"])
        self.assertEqual(
            await self.store.list_files(""),
            ["A/x", "a.", "a/", "a/b", "a/b/c", "a/\uffff", "a/\U0001f433", "a0", "b"])
        self.assertEqual(await self.store.list_files("c"), [])

    async def test_file_path_limits(self):
        longest = "\u00e9" * 512  # 1024 UTF-8 bytes
        await self.store.put_file(FileRecord(longest, 0, ()))
        self.assertEqual(await self.store.list_files("\u00e9"), [longest])
        for bad in (longest + "x", "", "\udc80", None):
            await failure_of(self.store.put_file(FileRecord(bad, 0, ())), BadRequest)
        await failure_of(self.store.put_file(FileRecord("p", 0, ([1, 2, 3, 4],))), BadRequest)

    # blobs --------------------------------------------------------------------

    async def test_put_blob(self):
        record = BlobRecord(SHA, 3000, chunks(1, 2, 3), created=4.0)
        self.assertEqual(await self.store.put_blob(record), record)
        self.assertEqual(await self.store.get_blob(SHA), record)
        self.assertIsNone(await self.store.get_blob(SHA2))

    async def test_put_blob_keeps_first(self):
        """A second blob with the same digest is not stored; the first is
        the answer, so the caller can collect its own chunks."""
        first = BlobRecord(SHA512, 10, chunks(1))
        stored = await self.store.put_blob(first)
        self.assertEqual(stored, attrs.evolve(first, created=START))
        self.assertEqual(await self.store.put_blob(BlobRecord(SHA512, 10, chunks(2))), stored)
        self.assertEqual(await self.store.get_blob(SHA512), stored)

    async def test_delete_blob(self):
        record = BlobRecord(SHA, 1, chunks(1), created=1.0)
        await self.store.put_blob(record)
        await self.store.link_blob("r", SHA)
        self.assertEqual(await self.store.delete_blob(SHA), record)
        self.assertIsNone(await self.store.delete_blob(SHA))
        self.assertIsNone(await self.store.blob_linked("r", SHA))
        self.assertIsNone(await self.store.get_blob(SHA))

    async def test_links(self):
        record = BlobRecord(SHA, 1, chunks(1), created=1.0)
        await self.store.put_blob(record)
        self.assertIsNone(await self.store.blob_linked("r", SHA))
        await self.store.link_blob("r", SHA)
        await self.store.link_blob("r", SHA)
        self.assertEqual(await self.store.blob_linked("r", SHA), record)
        self.assertIsNone(await self.store.blob_linked("s", SHA))
        self.assertTrue(await self.store.unlink_blob("r", SHA))
        self.assertFalse(await self.store.unlink_blob("r", SHA))
        self.assertIsNone(await self.store.blob_linked("r", SHA))
        self.assertEqual(await self.store.get_blob(SHA), record)

    async def test_link_unknown_blob(self):
        await failure_of(self.store.link_blob("r", SHA), BadRequest)
        self.assertEqual(await self.store.list_repositories(), [])

    async def test_delete_blob_if_unlinked(self):
        """A blob some repository links stays; once none does, it is
        deleted (once), and can no longer be linked."""
        record = BlobRecord(SHA, 1, chunks(1), created=1.0)
        await self.store.put_blob(record)
        await self.store.link_blob("r", SHA)
        await self.store.link_blob("s", SHA)
        await self.store.unlink_blob("r", SHA)
        self.assertIsNone(await self.store.delete_blob_if_unlinked(SHA))
        self.assertEqual(await self.store.blob_linked("s", SHA), record)
        await self.store.unlink_blob("s", SHA)
        self.assertEqual(await self.store.delete_blob_if_unlinked(SHA), record)
        self.assertIsNone(await self.store.delete_blob_if_unlinked(SHA))
        self.assertIsNone(await self.store.get_blob(SHA))
        await failure_of(self.store.link_blob("r", SHA), BadRequest)
        self.assertIsNone(await self.store.blob_linked("r", SHA))

    async def test_delete_blob_if_unlinked_other_digests(self):
        """Links of other blobs do not keep a blob."""
        await self.store.put_blob(BlobRecord(SHA, 1, chunks(1)))
        await self.store.put_blob(BlobRecord(SHA2, 1, chunks(2)))
        await self.store.link_blob("r", SHA2)
        self.assertEqual((await self.store.delete_blob_if_unlinked(SHA)).digest, SHA)
        self.assertIsNone(await self.store.delete_blob_if_unlinked(SHA2))
        self.assertIsNotNone(await self.store.blob_linked("r", SHA2))

    # manifests and tags -------------------------------------------------------

    async def test_manifest_round_trip(self):
        record = manifest(
            content=bytes(range(256)) * 3, created=2.5, subject=SHA2,
            artifact_type="application/vnd.example+\u00e9",
            annotations={"org.opencontainers.image.title": "\u4e2d\u6587", "n": "1"},
            references=(SHA2, SHA3))
        await self.store.put_manifest(record)
        self.assertEqual(await self.store.get_manifest("library/app", SHA), record)
        self.assertIsNone(await self.store.get_manifest("library/other", SHA))
        self.assertIsNone(await self.store.get_manifest("library/app", SHA2))

    async def test_manifest_replaced(self):
        await self.store.put_manifest(manifest(content=b"old"), tags=["v1"])
        new = manifest(content=b"new", created=3.0, media_type="x/y")
        await self.store.put_manifest(new, tags=["v2"])
        self.assertEqual(await self.store.get_manifest("library/app", SHA), new)
        self.assertEqual(await self.store.list_tags("library/app"), ["v1", "v2"])

    async def test_empty_manifest_content(self):
        await self.store.put_manifest(manifest(content=b""))
        self.assertEqual((await self.store.get_manifest("library/app", SHA)).content, b"")

    async def test_tags(self):
        await self.store.put_manifest(manifest(digest=SHA), tags=["latest", "v1"])
        self.assertEqual(await self.store.resolve_tag("library/app", "latest"), SHA)
        self.assertIsNone(await self.store.resolve_tag("library/app", "v9"))
        self.assertIsNone(await self.store.resolve_tag("library/other", "latest"))
        await self.store.put_manifest(manifest(digest=SHA2), tags=["latest"])
        self.assertEqual(await self.store.resolve_tag("library/app", "latest"), SHA2)
        self.assertEqual(await self.store.resolve_tag("library/app", "v1"), SHA)
        self.assertTrue(await self.store.delete_tag("library/app", "v1"))
        self.assertFalse(await self.store.delete_tag("library/app", "v1"))
        self.assertEqual(await self.store.list_tags("library/app"), ["latest"])
        self.assertIsNotNone(await self.store.get_manifest("library/app", SHA))

    async def test_delete_manifest_deletes_its_tags(self):
        await self.store.put_manifest(manifest(digest=SHA), tags=["a", "b"])
        await self.store.put_manifest(manifest(digest=SHA2), tags=["c"])
        await self.store.put_manifest(manifest("other/app", SHA), tags=["a"])
        self.assertTrue(await self.store.delete_manifest("library/app", SHA))
        self.assertFalse(await self.store.delete_manifest("library/app", SHA))
        self.assertIsNone(await self.store.get_manifest("library/app", SHA))
        self.assertEqual(await self.store.list_tags("library/app"), ["c"])
        self.assertEqual(await self.store.resolve_tag("other/app", "a"), SHA)

    async def test_manifest_required_references(self):
        """A manifest whose blobs are linked in its repository and whose
        child manifests are stored there, each with the size given, is
        stored."""
        await self.store.put_blob(BlobRecord(SHA2, 5, chunks(1)))
        await self.store.link_blob("library/app", SHA2)
        await self.store.put_manifest(manifest(digest=SHA3, content=b"abc"))
        record = manifest(references=(SHA2, SHA3))
        await self.store.put_manifest(
            record, tags=["v1"], required_blobs=[(SHA2, 5), (SHA2, 5)],
            required_manifests=[(SHA3, 3)])
        self.assertEqual(await self.store.get_manifest("library/app", SHA),
                         attrs.evolve(record, created=START))
        self.assertEqual(await self.store.resolve_tag("library/app", "v1"), SHA)

    async def test_manifest_references_missing(self):
        """
        Blobs not linked in the manifest's repository (unknown, or linked
        in another only) and child manifests not stored there are named,
        each once, in one error; nothing is stored.
        """
        unknown = "sha256:" + "01" * 32
        await self.store.put_blob(BlobRecord(SHA2, 5, chunks(1)))
        await self.store.link_blob("other/app", SHA2)
        await self.store.put_manifest(manifest("other/app", SHA3, content=b"abc"))
        error = await failure_of(self.store.put_manifest(
            manifest(), tags=["v1"], required_blobs=[(SHA2, 5), (unknown, 1), (SHA2, 5)],
            required_manifests=[(SHA3, 3)]), ReferencesMissing)
        self.assertEqual(error.digests, (SHA2, unknown, SHA3))
        self.assertIsInstance(error, NotFound)
        self.assertIsNone(await self.store.get_manifest("library/app", SHA))
        self.assertIsNone(await self.store.resolve_tag("library/app", "v1"))

    async def test_manifest_reference_sizes(self):
        """A blob or child manifest there with another size than the one
        given refuses the manifest; nothing is stored."""
        await self.store.put_blob(BlobRecord(SHA2, 5, chunks(1)))
        await self.store.link_blob("library/app", SHA2)
        await self.store.put_manifest(manifest(digest=SHA3, content=b"abc"))
        for blobs, manifests, wrong in [([(SHA2, 6)], [(SHA3, 3)], (SHA2, 6, 5)),
                                        ([(SHA2, 5)], [(SHA3, 0)], (SHA3, 0, 3))]:
            error = await failure_of(self.store.put_manifest(
                manifest(), tags=["v1"], required_blobs=blobs, required_manifests=manifests),
                SizeMismatch)
            self.assertEqual((error.digest, error.given, error.stored), wrong)
        self.assertIsNone(await self.store.get_manifest("library/app", SHA))
        self.assertIsNone(await self.store.resolve_tag("library/app", "v1"))

    async def test_manifest_after_its_blob_is_unlinked(self):
        """Once a blob is unlinked from the repository (and deleted), a
        manifest needing it is refused."""
        await self.store.put_blob(BlobRecord(SHA2, 5, chunks(1)))
        await self.store.link_blob("library/app", SHA2)
        await self.store.unlink_blob("library/app", SHA2)
        await failure_of(self.store.put_manifest(
            manifest(), required_blobs=[(SHA2, 5)]), ReferencesMissing)
        await self.store.delete_blob_if_unlinked(SHA2)
        await failure_of(self.store.put_manifest(
            manifest(), required_blobs=[(SHA2, 5)]), ReferencesMissing)
        self.assertIsNone(await self.store.get_manifest("library/app", SHA))

    async def test_list_tags(self):
        names = ["v10", "v2", "latest", "V1", "1.0", "a_b", "a-b", "a.b"]
        await self.store.put_manifest(manifest(), tags=names)
        self.assertEqual(await self.store.list_tags("library/app"), sorted(names))
        self.assertEqual(
            await self.store.list_tags("library/app", limit=3), ["1.0", "V1", "a-b"])
        self.assertEqual(
            await self.store.list_tags("library/app", limit=3, last="a-b"),
            ["a.b", "a_b", "latest"])
        self.assertEqual(
            await self.store.list_tags("library/app", last="latest"), ["v10", "v2"])
        self.assertEqual(await self.store.list_tags("library/app", last="zzz"), [])
        self.assertEqual(await self.store.list_tags("library/app", limit=0), [])
        self.assertIsNone(await self.store.list_tags("library/none"))

    async def test_list_tags_without_tags(self):
        """A repository with untagged manifests lists no tags; one without
        manifests lists None, even if it has linked blobs."""
        await self.store.put_manifest(manifest())
        await self.store.put_blob(BlobRecord(SHA, 1, ()))
        await self.store.link_blob("blobs/only", SHA)
        self.assertEqual(await self.store.list_tags("library/app"), [])
        self.assertIsNone(await self.store.list_tags("blobs/only"))

    async def test_list_repositories(self):
        await self.store.put_blob(BlobRecord(SHA, 1, ()))
        for repository in ("b/x", "a", "c"):
            await self.store.put_manifest(manifest(repository))
        await self.store.put_manifest(manifest("a", SHA2))
        await self.store.link_blob("a", SHA)
        await self.store.link_blob("bb", SHA)  # blobs only: not listed
        self.assertEqual(await self.store.list_repositories(), ["a", "b/x", "c"])
        self.assertEqual(await self.store.list_repositories(limit=2), ["a", "b/x"])
        self.assertEqual(await self.store.list_repositories(limit=2, last="b/x"), ["c"])
        self.assertEqual(await self.store.list_repositories(limit=0), [])
        await self.store.delete_manifest("c", manifest("c").digest)
        self.assertEqual(await self.store.list_repositories(), ["a", "b/x"])

    async def test_referrers(self):
        signature = manifest(digest=SHA2, subject=SHA, artifact_type="sig")
        sbom = manifest(digest=SHA3, subject=SHA, artifact_type="sbom")
        await self.store.put_manifest(manifest())
        for record in (sbom, signature, manifest("other", SHA2, subject=SHA)):
            await self.store.put_manifest(record)
        found = await self.store.referrers("library/app", SHA)
        self.assertEqual([m.digest for m in found], [SHA2, SHA3])
        self.assertEqual(found[0].artifact_type, "sig")
        self.assertEqual(await self.store.referrers("library/app", SHA, "sbom"),
                         [attrs.evolve(sbom, created=START)])
        self.assertEqual(await self.store.referrers("library/app", SHA, "none"), [])
        self.assertEqual(await self.store.referrers("library/app", SHA2), [])

    async def test_manifest_limits(self):
        await self.store.put_manifest(manifest("r" * 255, SHA512), tags=["t" * 128])
        self.assertEqual(await self.store.list_tags("r" * 255), ["t" * 128])
        bad = [
            (manifest("r" * 256), ()),
            (manifest(digest="sha256:" + "0" * 200), ()),
            (manifest(), ["t" * 129]),
            (manifest(), [""]),
            (manifest(content="text"), ()),
        ]
        for record, tags in bad:
            await failure_of(self.store.put_manifest(record, tags), BadRequest)
        self.assertEqual(await self.store.list_repositories(), ["r" * 255])

    # uploads --------------------------------------------------------------------

    async def test_upload_round_trip(self):
        record = UploadRecord("u1", "library/app", 2000, chunks(1, 2), "sha512",
                              bytes(range(256)), created=3.0, updated=4.0)
        await self.store.create_upload(record)
        self.assertEqual(await self.store.get_upload("u1"), record)
        self.assertIsNone(await self.store.get_upload("u2"))

    async def test_create_upload_stamps_times(self):
        await self.store.create_upload(UploadRecord("u1", "r"))
        self.assertEqual(
            await self.store.get_upload("u1"),
            UploadRecord("u1", "r", created=START, updated=START))

    async def test_duplicate_upload_refused(self):
        await self.store.create_upload(UploadRecord("u1", "r", created=1.0))
        await failure_of(self.store.create_upload(UploadRecord("u1", "s")), BadRequest)
        self.assertEqual((await self.store.get_upload("u1")).repository, "r")

    async def test_update_upload_compare_and_set(self):
        await self.store.create_upload(UploadRecord("u1", "r", created=1.0, updated=1.0))
        step = UploadRecord("u1", "r", 1001, chunks(1), hash_state=b"\0state", created=1.0)
        self.clock.advance(5)
        self.assertTrue(await self.store.update_upload(step, 0))
        self.assertEqual(await self.store.get_upload("u1"), attrs.evolve(step, updated=START + 5))
        # A second writer that also read offset 0 loses.
        rival = UploadRecord("u1", "r", 1002, chunks(2), updated=9.0)
        self.assertFalse(await self.store.update_upload(rival, 0))
        self.assertEqual((await self.store.get_upload("u1")).chunks, chunks(1))
        # Repeating the last state is a success, and None clears the hash state.
        again = attrs.evolve(step, hash_state=None, updated=7.0)
        self.assertTrue(await self.store.update_upload(again, 1001))
        self.assertEqual(await self.store.get_upload("u1"), again)
        self.assertFalse(await self.store.update_upload(UploadRecord("u9", "r"), 0))
        self.assertIsNone(await self.store.get_upload("u9"))

    async def test_delete_upload(self):
        record = UploadRecord("u1", "r", created=1.0, updated=2.0)
        await self.store.create_upload(record)
        self.assertEqual(await self.store.delete_upload("u1"), record)
        self.assertIsNone(await self.store.delete_upload("u1"))
        self.assertFalse(await self.store.update_upload(record, 0))

    async def test_delete_upload_at_offset(self):
        """With an expected offset, an upload is deleted only while it
        still stands there."""
        await self.store.create_upload(UploadRecord("u1", "r", created=1.0, updated=1.0))
        moved = UploadRecord("u1", "r", 1001, chunks(1), created=1.0, updated=2.0)
        await self.store.update_upload(moved, 0)
        self.assertIsNone(await self.store.delete_upload("u1", expected_offset=0))
        self.assertEqual(await self.store.get_upload("u1"), moved)
        self.assertEqual(await self.store.delete_upload("u1", expected_offset=1001), moved)
        self.assertIsNone(await self.store.get_upload("u1"))
        self.assertIsNone(await self.store.delete_upload("u1", expected_offset=1001))

    async def test_update_upload_keeps_repository_and_created(self):
        await self.store.create_upload(UploadRecord("u1", "r", created=1.0, updated=1.0))
        other = UploadRecord("u1", "elsewhere", 1001, chunks(1), created=9.0, updated=2.0)
        self.assertTrue(await self.store.update_upload(other, 0))
        self.assertEqual(
            await self.store.get_upload("u1"), attrs.evolve(other, repository="r", created=1.0))

    async def test_stale_uploads(self):
        for name, updated in (("u1", 30.0), ("u2", 10.0), ("u3", 20.0), ("u4", 40.0)):
            await self.store.create_upload(UploadRecord(name, "r", created=1.0, updated=updated))
        stale = await self.store.stale_uploads(35.0)
        self.assertEqual([u.upload_id for u in stale], ["u2", "u3", "u1"])
        self.assertEqual(
            [u.upload_id for u in await self.store.stale_uploads(35.0, limit=1)], ["u2"])
        self.assertEqual(await self.store.stale_uploads(10.0), [])

    async def test_count_uploads(self):
        self.assertEqual(await self.store.count_uploads(), (0, 0))
        await self.store.create_upload(UploadRecord("u1", "r"))
        await self.store.create_upload(UploadRecord("u2", "r"))
        self.assertTrue(await self.store.update_upload(
            UploadRecord("u2", "r", 1001, chunks(1)), 0))
        self.assertEqual(await self.store.count_uploads(), (2, 1001))
        await self.store.delete_upload("u1")
        self.assertEqual(await self.store.count_uploads(), (1, 1001))

    # garbage and bad replicas ----------------------------------------------------

    async def test_garbage(self):
        await self.store.record_garbage(chunks(3, 1), "write failed")
        self.clock.advance(1)
        await self.store.record_garbage(chunks(2) + chunks(1), "aborted \u2014 twice")
        garbage = await self.store.list_garbage()
        self.assertEqual(garbage, [
            GarbageChunk(chunks(1)[0], "write failed", START),
            GarbageChunk(chunks(3)[0], "write failed", START),
            GarbageChunk(chunks(2)[0], "aborted \u2014 twice", START + 1),
        ])
        self.assertEqual(await self.store.list_garbage(limit=1), garbage[:1])
        self.assertEqual(await self.store.list_garbage(limit=1, after=garbage[0]), garbage[1:2])
        self.assertEqual(await self.store.list_garbage(after=garbage[1]), garbage[2:])
        self.assertEqual(await self.store.list_garbage(after=garbage[2]), [])
        await self.store.forget_garbage(chunks(1, 2) + chunks(9))
        self.assertEqual(await self.store.list_garbage(), garbage[1:2])

    async def test_intents(self):
        """Intents are listed oldest first; a chunk already recorded keeps
        its first record."""
        await self.store.record_intents(chunks(3, 1), "upload u1")
        self.clock.advance(1)
        await self.store.record_intents(chunks(2, 1), "upload u2")
        self.assertEqual(await self.store.list_intents(), [
            GarbageChunk(chunks(1)[0], "upload u1", START),
            GarbageChunk(chunks(3)[0], "upload u1", START),
            GarbageChunk(chunks(2)[0], "upload u2", START + 1),
        ])
        self.assertEqual(len(await self.store.list_intents(limit=1)), 1)
        self.assertEqual(await self.store.list_garbage(), [])

    async def test_adopted_intents_go(self):
        """An upload update that adopts chunks removes their intents in its
        transaction; a failed compare-and-set removes none."""
        await self.store.create_upload(UploadRecord("u1", "r", created=1.0, updated=1.0))
        await self.store.record_intents(chunks(1, 2, 3), "upload u1")
        step = UploadRecord("u1", "r", 2002, chunks(1, 2), created=1.0)
        self.assertFalse(await self.store.update_upload(step, 7, adopted=chunks(1, 2)))
        self.assertEqual(len(await self.store.list_intents()), 3)
        self.assertTrue(await self.store.update_upload(step, 0, adopted=chunks(1, 2)))
        self.assertEqual([g.chunk for g in await self.store.list_intents()], list(chunks(3)))
        self.assertEqual((await self.store.get_upload("u1")).chunks, chunks(1, 2))

    async def test_expired_intent_is_not_adopted(self):
        """Intents recorded before a time move into the garbage table (their
        time kept); an upload update adopting one of them then changes
        nothing, so no upload names a chunk the collector deletes."""
        await self.store.create_upload(UploadRecord("u1", "r", created=1.0, updated=1.0))
        await self.store.record_intents(chunks(1, 2), "upload u1")
        self.clock.advance(10)
        await self.store.record_intents(chunks(3), "upload u1")
        self.assertEqual(await self.store.expire_intents(START + 5), 2)
        self.assertEqual(await self.store.expire_intents(START + 5), 0)
        garbage = await self.store.list_garbage()
        self.assertEqual([(g.chunk, g.recorded) for g in garbage],
                         [(c, START) for c in chunks(1, 2)])
        self.assertIn("upload u1", garbage[0].reason)
        step = UploadRecord("u1", "r", 3003, chunks(2, 3), created=1.0)
        self.assertFalse(await self.store.update_upload(step, 0, adopted=chunks(2, 3)))
        self.assertEqual(await self.store.get_upload("u1"),
                         UploadRecord("u1", "r", created=1.0, updated=1.0))
        self.assertEqual([g.chunk for g in await self.store.list_intents()], list(chunks(3)))
        self.assertEqual(await self.store.expire_intents(START + 11, limit=None), 1)
        self.assertEqual(await self.store.list_intents(), [])

    async def intents_by_file_id(self):
        """@return: {file id: reason} of the intents recorded."""
        return {g.chunk.file_id: g.reason for g in await self.store.list_intents(limit=None)}

    async def test_put_blob_adopts_intents(self):
        """A blob stored from chunks written under intents removes their
        intents in its transaction; a digest already stored keeps its
        blob and leaves the intents alone (the caller deletes its chunks,
        or the intents expire)."""
        await self.store.record_intents(chunks(1, 2, 3), "monolithic upload")
        record = BlobRecord(SHA, 2003, chunks(1, 2), created=4.0)
        self.assertEqual(await self.store.put_blob(record, adopted=chunks(1, 2)), record)
        self.assertEqual(await self.intents_by_file_id(), {3: "monolithic upload"})
        self.assertEqual(
            await self.store.put_blob(BlobRecord(SHA, 2003, chunks(3)), adopted=chunks(3)), record)
        self.assertEqual(await self.intents_by_file_id(), {3: "monolithic upload"})
        self.assertEqual(await self.store.get_blob(SHA), record)

    async def test_put_blob_with_an_expired_intent_stores_nothing(self):
        """If one adopted chunk's intent expired into the garbage table, the
        blob is not stored (the collector deletes that chunk) and no other
        intent is removed: the store fails with IntentExpired."""
        await self.store.record_intents(chunks(1), "monolithic upload")
        self.clock.advance(10)
        await self.store.record_intents(chunks(2), "monolithic upload")
        self.assertEqual(await self.store.expire_intents(START + 5), 1)
        error = await failure_of(
            self.store.put_blob(BlobRecord(SHA, 2003, chunks(1, 2)), adopted=chunks(1, 2)),
            IntentExpired)
        self.assertIn(f"blob {SHA}", str(error))
        self.assertIn("1/1", str(error))
        self.assertIsNone(await self.store.get_blob(SHA))
        self.assertEqual(await self.intents_by_file_id(), {2: "monolithic upload"})
        self.assertEqual([g.chunk for g in await self.store.list_garbage()], list(chunks(1)))

    async def test_put_file_adopts_intents(self):
        """A file written from chunks under intents removes them in its
        transaction; with one of them expired, nothing changes: the file it
        would replace stays, and the other intents too."""
        old = FileRecord("f", 1001, chunks(9), created=1.0)
        await self.store.put_file(old)
        await self.store.record_intents(chunks(1, 2), "file 'f'")
        self.clock.advance(10)
        await self.store.record_intents(chunks(3), "file 'f'")
        await self.store.expire_intents(START + 5, limit=1)  # chunk 1
        late = FileRecord("f", 2003, chunks(1, 3), created=2.0)
        error = await failure_of(self.store.put_file(late, adopted=chunks(1, 3)), IntentExpired)
        self.assertIn("file 'f'", str(error))
        self.assertEqual(await self.store.get_file("f"), old)
        self.assertEqual(await self.intents_by_file_id(), {2: "file 'f'", 3: "file 'f'"})
        new = FileRecord("f", 2003, chunks(2, 3), created=3.0)
        self.assertEqual(await self.store.put_file(new, adopted=chunks(2, 3)), old)
        self.assertEqual(await self.store.get_file("f"), new)
        self.assertEqual(await self.store.list_intents(), [])

    async def test_delete_upload_hands_chunks_over(self):
        """Deleting an upload can record its chunks, in the same
        transaction, as intents (for the blob that takes them over) or as
        garbage; an upload that moved on meanwhile is neither deleted nor
        recorded."""
        for name in ("u1", "u2"):
            await self.store.create_upload(UploadRecord(name, "r", created=1.0, updated=1.0))
        self.assertTrue(await self.store.update_upload(
            UploadRecord("u1", "r", 2003, chunks(1, 2)), 0))
        self.assertTrue(await self.store.update_upload(
            UploadRecord("u2", "r", 1003, chunks(3)), 0))
        self.clock.advance(7)
        self.assertIsNone(await self.store.delete_upload(
            "u1", expected_offset=5, chunks_to="intents"))
        self.assertEqual(await self.store.list_intents(), [])
        deleted = await self.store.delete_upload("u1", expected_offset=2003, chunks_to="intents")
        self.assertEqual(deleted.chunks, chunks(1, 2))
        self.assertIsNone(await self.store.get_upload("u1"))
        self.assertEqual(await self.store.list_intents(),
                         [GarbageChunk(c, "upload u1", START + 7) for c in chunks(1, 2)])
        await self.store.delete_upload("u2", chunks_to="garbage", reason="upload u2 cancelled")
        self.assertEqual(await self.store.list_garbage(),
                         [GarbageChunk(chunks(3)[0], "upload u2 cancelled", START + 7)])
        await failure_of(self.store.delete_upload("u3", chunks_to="trash"), BadRequest)

    async def test_garbage_keyed_by_group(self):
        """The same file id in two groups is two garbage chunks."""
        await self.store.record_garbage(chunks(5, group_id=1) + chunks(5, group_id=2), "r")
        self.assertEqual(len(await self.store.list_garbage()), 2)
        await self.store.forget_garbage(chunks(5, group_id=2))
        self.assertEqual(
            [g.chunk for g in await self.store.list_garbage()], list(chunks(5, group_id=1)))

    async def test_bad_replicas(self):
        await self.store.record_bad_replica(BadReplica("cs2", 1, 7, "checksum"))
        await self.store.record_bad_replica(BadReplica("cs1", 1, 7, "missing", recorded=5.0))
        self.assertEqual(await self.store.list_bad_replicas(), [
            BadReplica("cs1", 1, 7, "missing", 5.0),
            BadReplica("cs2", 1, 7, "checksum", START),
        ])
        self.assertEqual(len(await self.store.list_bad_replicas(limit=1)), 1)
        await self.store.record_bad_replica(BadReplica("cs1", 1, 7, "checksum", recorded=6.0))
        self.assertEqual(
            (await self.store.list_bad_replicas())[0], BadReplica("cs1", 1, 7, "checksum", 6.0))
        self.assertEqual(await self.store.count_bad_replicas(), 2)
        self.assertTrue(await self.store.forget_bad_replica("cs1", 7))
        self.assertFalse(await self.store.forget_bad_replica("cs1", 7))
        self.assertEqual(await self.store.list_bad_replicas(), [
            BadReplica("cs2", 1, 7, "checksum", START)])
        self.assertEqual(await self.store.count_bad_replicas(), 1)

    async def test_referenced_chunks(self):
        """Every chunk of every file, blob and upload, named by its owner."""
        await self.store.put_file(FileRecord("f", 2, chunks(1, 2)))
        await self.store.put_blob(BlobRecord(SHA, 1, chunks(3)))
        await self.store.create_upload(UploadRecord("u1", "library/app", 1, chunks(4)))
        image = v1_image(BASE)
        await self.store.put_v1_image(image)
        await self.store.set_v1_layer(BASE, image.json, 1, chunks(5), "sha256:x")
        found = await self.store.referenced_chunks()
        self.assertEqual(sorted((owner, chunk.file_id) for owner, chunk in found), [
            (f"blob {SHA}", 3), ("file f", 1), ("file f", 2), ("upload u1", 4),
            (f"v1-image {BASE}", 5)])

    # online data transfer ----------------------------------------------------------

    async def test_transfer_round_trip(self):
        record = TransferRecord("drain-1-ab", "drain", 1, (2, 3), byte_budget=None,
                                chunks_done=4, bytes_done=4000, chunks_left=9)
        stored = await self.store.put_transfer(record)
        self.assertEqual(stored, attrs.evolve(record, created=START, updated=START))
        self.clock.advance(5)
        later = await self.store.put_transfer(attrs.evolve(stored, state="done"))
        self.assertEqual((later.created, later.updated), (START, START + 5))
        self.assertEqual(await self.store.get_transfer("drain-1-ab"), later)
        self.assertIsNone(await self.store.get_transfer("nope"))
        self.assertEqual(await self.store.list_transfers(), [later])
        await failure_of(self.store.put_transfer(attrs.evolve(record, kind="shuffle")),
                         BadRequest)

    async def test_switch_moves(self):
        """One switch rewrites every chunk list naming a moving chunk (and no
        other entry), stamps the move once, and a second switch catches a
        chunk list written back with the old chunk."""
        await self.store.put_file(FileRecord("f", 2, chunks(1, 2)))
        await self.store.put_blob(BlobRecord(SHA, 1, chunks(1)))
        await self.store.create_upload(UploadRecord("u1", "library/app", 1, chunks(12)))
        image = v1_image(BASE)
        await self.store.put_v1_image(image)
        await self.store.set_v1_layer(BASE, image.json, 1, chunks(1), "sha256:x")
        old, = chunks(1)
        new = ChunkRef(2, 77, old.size, old.crc32c)
        move = ChunkMove(old, new, "t1")
        await self.store.record_move(move)
        await failure_of(self.store.record_move(move), BadRequest)
        self.assertEqual(await self.store.list_moves(switched=True), [])
        self.assertEqual(await self.store.switch_moves([move]), 3)
        self.assertEqual((await self.store.get_file("f")).chunks, (new,) + chunks(2))
        self.assertEqual((await self.store.get_blob(SHA)).chunks, (new,))
        self.assertEqual((await self.store.get_upload("u1")).chunks, chunks(12))
        self.assertEqual((await self.store.get_v1_image(BASE)).chunks, (new,))
        self.assertEqual(await self.store.list_moves(transfer_id="t1"),
                         [attrs.evolve(move, switched=START)])
        self.clock.advance(10)
        await self.store.put_file(FileRecord("late", 1, chunks(1)))
        self.assertEqual(await self.store.switch_moves([move]), 1)
        self.assertEqual((await self.store.get_file("late")).chunks, (new,))
        self.assertEqual(await self.store.list_moves(switched_before=START + 1),
                         [attrs.evolve(move, switched=START)])
        self.assertEqual(await self.store.list_moves(switched_before=START), [])
        await self.store.forget_moves([move])
        self.assertEqual(await self.store.list_moves(), [])
        await failure_of(self.store.record_move(attrs.evolve(move, new=chunks(5, group_id=1)[0])),
                         BadRequest)

    # Docker Registry V1 ----------------------------------------------------------

    async def test_v1_image_push(self):
        """An image's JSON, then its layer, then the checksum that completes it."""
        record = v1_image(BASE)
        self.assertIsNone(await self.store.put_v1_image(record))
        self.assertEqual(await self.store.get_v1_image(BASE), attrs.evolve(record, created=START))
        self.assertIsNone(await self.store.get_v1_image(OTHER))
        self.assertFalse(await self.store.complete_v1_image(BASE, "sha256:" + "0" * 64))
        before = await self.store.set_v1_layer(BASE, record.json, 2001, chunks(1, 2), "sha256:x")
        self.assertEqual(before.size, None)
        stored = await self.store.get_v1_image(BASE)
        self.assertEqual((stored.size, stored.chunks, stored.checksum, stored.complete),
                         (2001, chunks(1, 2), "sha256:x", False))
        self.assertFalse(await self.store.complete_v1_image(BASE, "sha256:y"))
        self.assertTrue(await self.store.complete_v1_image(BASE, "sha256:x"))
        self.assertFalse(await self.store.complete_v1_image(BASE, "sha256:x"))
        self.assertTrue((await self.store.get_v1_image(BASE)).complete)

    async def test_v1_complete_image_kept(self):
        """A complete image is never replaced, nor its layer changed."""
        record = v1_image(BASE)
        await self.store.put_v1_image(record)
        await self.store.set_v1_layer(BASE, record.json, 1, chunks(1), "sha256:x")
        await self.store.complete_v1_image(BASE, "sha256:x")
        complete = await self.store.get_v1_image(BASE)
        again = attrs.evolve(record, json=b'{"id": "%s", "more": 1}' % BASE.encode())
        self.assertEqual(await self.store.put_v1_image(again), complete)
        self.assertIsNone(await self.store.set_v1_layer(BASE, record.json, 2, chunks(2), "sha256:y"))
        self.assertFalse(await self.store.clear_v1_layer(BASE, chunks(1)))
        self.assertEqual(await self.store.get_v1_image(BASE), complete)

    async def test_v1_retried_push(self):
        """An unfinished image's JSON PUT again replaces it, layer and all,
        and hands back what it replaced; a layer stored against the older
        JSON is refused."""
        record = v1_image(BASE)
        await self.store.put_v1_image(record)
        await self.store.set_v1_layer(BASE, record.json, 1, chunks(1), "sha256:x")
        retried = attrs.evolve(record, json=b'{"id": "%s", "retry": 1}' % BASE.encode())
        replaced = await self.store.put_v1_image(retried)
        self.assertEqual(replaced.chunks, chunks(1))
        stored = await self.store.get_v1_image(BASE)
        self.assertEqual((stored.json, stored.size, stored.chunks, stored.checksum),
                         (retried.json, None, (), None))
        self.assertIsNone(await self.store.set_v1_layer(BASE, record.json, 2, chunks(2), "sha256:y"))
        self.assertIsNone(await self.store.set_v1_layer(OTHER, record.json, 2, chunks(2), "sha256:y"))

    async def test_v1_clear_layer(self):
        """A layer whose checksum did not match is forgotten, only if it is
        still the one stored."""
        record = v1_image(BASE)
        await self.store.put_v1_image(record)
        await self.store.set_v1_layer(BASE, record.json, 1, chunks(1), "sha256:x")
        self.assertFalse(await self.store.clear_v1_layer(BASE, chunks(2)))
        self.assertTrue(await self.store.clear_v1_layer(BASE, chunks(1)))
        self.assertFalse(await self.store.clear_v1_layer(BASE, chunks(1)))
        stored = await self.store.get_v1_image(BASE)
        self.assertEqual((stored.size, stored.chunks, stored.checksum), (None, (), None))
        self.assertFalse(await self.store.complete_v1_image(BASE, "sha256:x"))

    async def test_v1_layer_adopts_intents(self):
        """A layer written under intents removes them in the transaction
        that records it; with one of them expired, nothing changes (the
        image keeps no layer, the other intents stay); a layer refused
        (the JSON changed) leaves its intents alone, to expire."""
        record = v1_image(BASE)
        await self.store.put_v1_image(record)
        await self.store.record_intents(chunks(1), "v1 layer")
        self.clock.advance(10)
        await self.store.record_intents(chunks(2, 3), "v1 layer")
        await self.store.expire_intents(START + 5)  # chunk 1
        error = await failure_of(self.store.set_v1_layer(
            BASE, record.json, 2001, chunks(1, 2), "sha256:x", adopted=chunks(1, 2)),
            IntentExpired)
        self.assertIn(f"v1-image {BASE}", str(error))
        self.assertEqual(await self.store.get_v1_image(BASE), attrs.evolve(record, created=START))
        self.assertEqual(await self.intents_by_file_id(), {2: "v1 layer", 3: "v1 layer"})
        self.assertIsNone(await self.store.set_v1_layer(
            BASE, b"{}", 1001, chunks(3), "sha256:y", adopted=chunks(3)))
        self.assertEqual(await self.intents_by_file_id(), {2: "v1 layer", 3: "v1 layer"})
        await self.store.set_v1_layer(
            BASE, record.json, 2001, chunks(2, 3), "sha256:x", adopted=chunks(2, 3))
        self.assertEqual((await self.store.get_v1_image(BASE)).chunks, chunks(2, 3))
        self.assertEqual(await self.store.list_intents(), [])

    async def test_v1_replaced_layers_are_garbage(self):
        """A layer replaced by another, by its JSON PUT again, or cleared
        is recorded as garbage in the transaction that changes the image;
        a clear that does not apply records nothing."""
        record = v1_image(BASE)
        await self.store.put_v1_image(record)
        self.assertEqual(await self.store.list_garbage(), [])
        await self.store.set_v1_layer(BASE, record.json, 1, chunks(1), "sha256:x")
        await self.store.set_v1_layer(BASE, record.json, 2, chunks(2), "sha256:y")
        self.assertEqual(await self.store.list_garbage(), [
            GarbageChunk(chunks(1)[0], f"v1-image {BASE}: layer replaced", START)])
        await self.store.forget_garbage(chunks(1))
        await self.store.put_v1_image(record)
        self.assertEqual(await self.store.list_garbage(), [
            GarbageChunk(chunks(2)[0], f"v1-image {BASE} pushed again", START)])
        await self.store.forget_garbage(chunks(2))
        await self.store.set_v1_layer(BASE, record.json, 3, chunks(3), "sha256:z")
        self.assertFalse(await self.store.clear_v1_layer(BASE, chunks(4), "mismatch"))
        self.assertEqual(await self.store.list_garbage(), [])
        self.assertTrue(await self.store.clear_v1_layer(BASE, chunks(3), "mismatch"))
        self.assertEqual(await self.store.list_garbage(),
                         [GarbageChunk(chunks(3)[0], "mismatch", START)])
        await self.store.set_v1_layer(BASE, record.json, 5, chunks(5), "sha256:z")
        self.assertTrue(await self.store.clear_v1_layer(BASE, chunks(5)))
        self.assertEqual([g.reason for g in await self.store.list_garbage()],
                         ["mismatch", f"v1-image {BASE}: layer cleared"])

    async def test_v1_stale_layers(self):
        """Unfinished images with a layer, oldest JSON first: what layer
        expiry drops."""
        for image_id, created in ((BASE, START - 30), (CHILD, START - 10), (OTHER, START - 20)):
            record = v1_image(image_id, created=created)
            await self.store.put_v1_image(record)
            if image_id != OTHER:
                await self.store.set_v1_layer(image_id, record.json, 1, chunks(1), "sha256:x")
        done = v1_image(SHA[-64:], created=START - 40)
        await self.store.put_v1_image(done)
        await self.store.set_v1_layer(done.image_id, done.json, 1, chunks(2), "sha256:x")
        await self.store.complete_v1_image(done.image_id, "sha256:x")
        stale = await self.store.stale_v1_layers(START)
        self.assertEqual([i.image_id for i in stale], [BASE, CHILD])
        self.assertEqual(stale[0].chunks, chunks(1))
        self.assertEqual([i.image_id for i in await self.store.stale_v1_layers(START, limit=1)],
                         [BASE])
        self.assertEqual([i.image_id for i in await self.store.stale_v1_layers(START - 15)], [BASE])
        await failure_of(self.store.stale_v1_layers(START, limit=-1), BadRequest)

    async def test_v1_summary(self):
        self.assertEqual(await self.store.v1_summary(), {
            "repositories": 0, "tags": 0, "images": 0, "unfinished": 0, "layer_bytes": 0,
            "unfinished_layers": 0, "unfinished_layer_bytes": 0})
        for image_id, size, complete in ((BASE, 1000, True), (CHILD, 250, False),
                                         (OTHER, None, False)):
            record = v1_image(image_id)
            await self.store.put_v1_image(record)
            if size is not None:
                await self.store.set_v1_layer(image_id, record.json, size, chunks(1), "sha256:x")
            if complete:
                await self.store.complete_v1_image(image_id, "sha256:x")
        await self.store.put_v1_tag(V1TagRecord("library/app", "latest", BASE))
        await self.store.put_v1_tag(V1TagRecord("library/app", "old", BASE))
        await self.store.put_v1_index("team/web", [])
        self.assertEqual(await self.store.v1_summary(), {
            "repositories": 2, "tags": 2, "images": 1, "unfinished": 2, "layer_bytes": 1000,
            "unfinished_layers": 1, "unfinished_layer_bytes": 250})

    async def test_v1_parent_required(self):
        """An image whose parent is not stored is refused; one whose parent
        is, keeps its ancestry."""
        e = await failure_of(self.store.put_v1_image(v1_image(CHILD, BASE)), ReferencesMissing)
        self.assertEqual(e.digests, (BASE,))
        self.assertIsNone(await self.store.get_v1_image(CHILD))
        await self.store.put_v1_image(v1_image(BASE))
        await self.store.put_v1_image(v1_image(CHILD, BASE))
        self.assertEqual((await self.store.get_v1_image(CHILD)).ancestry, (CHILD, BASE))

    async def test_v1_bad_image_refused(self):
        await failure_of(self.store.put_v1_image(v1_image("x" * 65)), BadRequest)
        await failure_of(self.store.put_v1_image(v1_image(BASE, ancestry=(OTHER,))), BadRequest)
        await failure_of(self.store.put_v1_image(
            V1ImageRecord(BASE, "text", ancestry=(BASE,))), BadRequest)

    async def test_v1_index(self):
        """Index PUTs merge as docker-registry merged them: one entry per
        id, the first with a checksum wins, in the order first named."""
        self.assertIsNone(await self.store.get_v1_repository("library/app"))
        stored = await self.store.put_v1_index("library/app", [{"id": BASE}, {"id": CHILD}])
        self.assertEqual(stored.images, ({"id": BASE}, {"id": CHILD}))
        self.assertEqual(stored.created, START)
        self.clock.advance(5)
        stored = await self.store.put_v1_index("library/app", [
            {"id": CHILD, "checksum": "sha256:c", "other": "dropped"}, {"id": OTHER}])
        self.assertEqual(stored.images, (
            {"id": CHILD, "checksum": "sha256:c"}, {"id": OTHER}, {"id": BASE}))
        stored = await self.store.put_v1_index("library/app", [{"id": CHILD, "checksum": "sha256:z"}])
        self.assertEqual(stored.images[0], {"id": CHILD, "checksum": "sha256:z"})
        self.assertEqual(await self.store.get_v1_repository("library/app"), stored)
        self.assertEqual(stored.created, START)
        await failure_of(self.store.put_v1_index("library/app", [{"name": "x"}]), BadRequest)
        await failure_of(self.store.put_v1_index("library/app", {"id": BASE}), BadRequest)

    async def test_v1_tags(self):
        """Tags point at stored images; a tag makes its repository; deleting
        the repository deletes its tags, not its images."""
        await failure_of(self.store.put_v1_tag(V1TagRecord("library/app", "latest", BASE)),
                         ReferencesMissing)
        self.assertIsNone(await self.store.list_v1_tags("library/app"))
        await self.store.put_v1_image(v1_image(BASE))
        await self.store.put_v1_image(v1_image(CHILD, BASE))
        props = {"docker_version": "1.9.1", "last_update": 1}
        await self.store.put_v1_tag(V1TagRecord("library/app", "latest", BASE, props))
        await self.store.put_v1_tag(V1TagRecord("library/app", "1.0", BASE))
        await self.store.put_v1_tag(V1TagRecord("library/app", "latest", CHILD, props))
        await self.store.put_v1_tag(V1TagRecord("other/app", "latest", BASE))
        self.assertEqual(await self.store.get_v1_tag("library/app", "latest"),
                         V1TagRecord("library/app", "latest", CHILD, props, START))
        self.assertIsNone(await self.store.get_v1_tag("library/app", "2.0"))
        self.assertEqual([(t.tag, t.image_id) for t in await self.store.list_v1_tags("library/app")],
                         [("1.0", BASE), ("latest", CHILD)])
        self.assertEqual((await self.store.get_v1_repository("library/app")).images, ())
        self.assertTrue(await self.store.delete_v1_tag("library/app", "1.0"))
        self.assertFalse(await self.store.delete_v1_tag("library/app", "1.0"))
        self.assertTrue(await self.store.delete_v1_repository("library/app"))
        self.assertFalse(await self.store.delete_v1_repository("library/app"))
        self.assertIsNone(await self.store.list_v1_tags("library/app"))
        self.assertIsNone(await self.store.get_v1_tag("library/app", "latest"))
        self.assertEqual(len(await self.store.list_v1_tags("other/app")), 1)
        self.assertIsNotNone(await self.store.get_v1_image(CHILD))

    async def test_v1_search(self):
        for name in ("library/busybox", "team/busy-app", "team/web", "library/Busy"):
            await self.store.put_v1_index(name, [])
        self.assertEqual(await self.store.search_v1_repositories("busy"),
                         ["library/busybox", "team/busy-app"])
        self.assertEqual(await self.store.search_v1_repositories("busy", limit=1),
                         ["library/busybox"])
        self.assertEqual(len(await self.store.search_v1_repositories("")), 4)
        self.assertEqual(await self.store.search_v1_repositories("%"), [])
        await failure_of(self.store.search_v1_repositories("a", limit=-1), BadRequest)

    async def test_v1_apart_from_v2(self):
        """A V1 repository and a V2 one of the same name do not see each other."""
        await self.store.put_v1_index("library/app", [{"id": BASE}])
        self.assertIsNone(await self.store.list_tags("library/app"))
        self.assertEqual(await self.store.list_repositories(), [])
        await self.store.put_manifest(manifest(), tags=["latest"])
        self.assertEqual(await self.store.list_v1_tags("library/app"), [])

    # mark and sweep ---------------------------------------------------------

    async def old_blob(self, digest=SHA2, repository="library/app", *file_ids):
        """Store a blob long before the test's horizons, linked in
        C{repository} (if any) then too."""
        blob = BlobRecord(digest, 5, chunks(*(file_ids or (1,))), created=START - 7200)
        await self.store.put_blob(blob)
        if repository is not None:
            await self.store.link_blob(repository, digest)
        return blob

    async def test_unreferenced_blob_is_collected(self):
        """A blob that no manifest references, linked before the horizon,
        is marked; the sweep deletes it and its links, and records its
        chunks as garbage."""
        blob = await self.old_blob(SHA2, "library/app", 1, 2)
        await self.store.link_blob("other/app", SHA2)
        self.assertEqual(await self.store.unreferenced_blobs(START), [blob])
        self.assertEqual(await self.store.collect_blobs([SHA2], START), [blob])
        self.assertIsNone(await self.store.get_blob(SHA2))
        self.assertIsNone(await self.store.blob_linked("library/app", SHA2))
        self.assertIsNone(await self.store.blob_linked("other/app", SHA2))
        garbage = await self.store.list_garbage()
        self.assertEqual([g.chunk for g in garbage], list(blob.chunks))
        self.assertEqual({g.reason for g in garbage}, {f"blob {SHA2} collected"})
        self.assertEqual(await self.store.collect_blobs([SHA2], START), [])
        self.assertEqual(len(await self.store.list_garbage()), 2)

    async def test_referenced_blob_is_kept(self):
        """A blob a manifest of any repository references stays, linked
        or not; once that manifest is deleted it is garbage."""
        blob = await self.old_blob(SHA2, "library/app")
        await self.store.put_manifest(manifest(repository="other/app", references=(SHA2,)))
        self.assertEqual(await self.store.unreferenced_blobs(START + 1), [])
        self.assertEqual(await self.store.collect_blobs([SHA2], START + 1), [])
        self.assertEqual(await self.store.get_blob(SHA2), blob)
        await self.store.delete_manifest("other/app", SHA)
        self.assertEqual(await self.store.unreferenced_blobs(START + 1), [blob])

    async def test_manifest_put_again_keeps_its_references(self):
        """A manifest put again (another tag) still references its blobs;
        deleted, it does not."""
        await self.old_blob(SHA2)
        record = manifest(references=(SHA2,))
        await self.store.put_manifest(record, tags=["a"])
        await self.store.put_manifest(record, tags=["b"])
        self.assertEqual(await self.store.unreferenced_blobs(START + 1), [])
        await self.store.delete_manifest("library/app", SHA)
        self.assertEqual(len(await self.store.unreferenced_blobs(START + 1)), 1)

    async def test_young_blob_or_link_is_kept(self):
        """A blob stored after the horizon, or linked (pushed, mounted)
        again after it, is not garbage yet."""
        await self.store.put_blob(BlobRecord(SHA2, 5, chunks(1), created=START))
        self.assertEqual(await self.store.unreferenced_blobs(START - 1), [])
        self.assertEqual(await self.store.collect_blobs([SHA2], START - 1), [])
        self.assertEqual(len(await self.store.unreferenced_blobs(START)), 1)
        await self.old_blob(SHA3, "library/app")
        self.clock.advance(100)
        await self.store.link_blob("library/app", SHA3)
        self.assertEqual(await self.store.unreferenced_blobs(START + 50, after=SHA2), [])
        self.assertEqual(await self.store.collect_blobs([SHA3], START + 50), [])
        self.assertEqual(len(await self.store.unreferenced_blobs(START + 100, after=SHA2)), 1)

    async def test_upload_in_progress_keeps_the_repository_blobs(self):
        """A repository with an upload in progress keeps the blobs it
        links: its push may reference them."""
        await self.old_blob(SHA2, "library/app")
        await self.store.create_upload(UploadRecord("u", "other/app", created=1.0))
        self.assertEqual(len(await self.store.unreferenced_blobs(START)), 1)
        await self.store.create_upload(UploadRecord("v", "library/app", created=1.0))
        self.assertEqual(await self.store.unreferenced_blobs(START), [])
        self.assertEqual(await self.store.collect_blobs([SHA2], START), [])
        await self.store.delete_upload("v")
        self.assertEqual(len(await self.store.collect_blobs([SHA2], START)), 1)

    async def test_sweep_checks_again(self):
        """A blob marked, then referenced by a manifest put before the
        sweep, stays."""
        await self.old_blob(SHA2)
        marked = [b.digest for b in await self.store.unreferenced_blobs(START)]
        self.assertEqual(marked, [SHA2])
        await self.store.put_manifest(manifest(references=(SHA2,)), required_blobs=[(SHA2, 5)])
        self.assertEqual(await self.store.collect_blobs(marked, START), [])
        self.assertIsNotNone(await self.store.blob_linked("library/app", SHA2))

    async def test_collected_blob_refuses_links_and_manifests(self):
        """Once swept, a blob can be neither linked nor required."""
        await self.old_blob(SHA2)
        await self.store.collect_blobs([SHA2], START)
        await failure_of(self.store.link_blob("library/app", SHA2), BadRequest)
        await failure_of(self.store.put_manifest(
            manifest(references=(SHA2,)), required_blobs=[(SHA2, 5)]), ReferencesMissing)

    async def test_unlinked_blob_is_collected(self):
        await self.old_blob(SHA2, None)
        self.assertEqual(len(await self.store.collect_blobs([SHA2], START)), 1)

    async def test_unreferenced_blobs_pages(self):
        digests = ["sha256:%064x" % n for n in range(5)]
        for n, digest in enumerate(digests):
            await self.old_blob(digest, "r", n + 1)
        first = await self.store.unreferenced_blobs(START, limit=3)
        rest = await self.store.unreferenced_blobs(START, limit=3, after=first[-1].digest)
        self.assertEqual([b.digest for b in first + rest], digests)
        await failure_of(self.store.unreferenced_blobs(START, limit=-1), BadRequest)

    async def put_manifests(self, *specs):
        """Store manifests long ago: each spec is (digest, tags,
        references, subject)."""
        for digest, tags, references, subject in specs:
            await self.store.put_manifest(
                manifest(digest=digest, references=references, subject=subject,
                         created=START - 7200), tags=tags)

    async def test_manifest_policies_off(self):
        """With no policy, no manifest is ever garbage."""
        await self.put_manifests((SHA, [], (), None), (SHA2, [], (), "sha256:" + "00" * 32))
        self.assertEqual(await self.store.unkept_manifests(START), [])
        self.assertEqual(await self.store.collect_manifests(
            [("library/app", SHA)], START), [])
        self.assertIsNotNone(await self.store.get_manifest("library/app", SHA))

    async def test_untagged_manifests(self):
        """
        Under the untagged policy: a tag keeps a manifest, an index keeps
        its children, a subject its referrers, the grace period the young;
        an untagged index goes first, then its children (the next mark).
        """
        tagged, index, child, referrer, young = (
            "sha256:%064x" % n for n in range(1, 6))
        await self.put_manifests(
            (tagged, ["t"], (SHA2,), None),
            (index, [], (child,), None),
            (child, [], (SHA3,), None),
            (referrer, [], (), tagged))
        await self.store.put_manifest(manifest(digest=young))
        keys = await self.store.unkept_manifests(START - 1, untagged=True)
        self.assertEqual(keys, [("library/app", index)])
        self.assertEqual(await self.store.collect_manifests(
            [("library/app", d) for d in (tagged, referrer, young)], START - 1, untagged=True),
            [])
        self.assertEqual(await self.store.collect_manifests(keys, START - 1, untagged=True), keys)
        self.assertEqual(await self.store.unkept_manifests(START - 1, untagged=True),
                         [("library/app", child)])
        await self.store.collect_manifests([("library/app", child)], START - 1, untagged=True)
        self.assertIsNone(await self.store.get_manifest("library/app", child))
        self.assertEqual(len(await self.store.unreferenced_blobs(START + 1)), 0)
        # Untagging the subject lets the referrer go once the subject went.
        await self.store.delete_tag("library/app", "t")
        self.assertEqual(await self.store.unkept_manifests(START - 1, untagged=True),
                         [("library/app", tagged)])
        await self.store.collect_manifests([("library/app", tagged)], START - 1, untagged=True)
        self.assertEqual(await self.store.unkept_manifests(START - 1, untagged=True),
                         [("library/app", referrer)])

    async def test_orphaned_artifacts(self):
        """Under the orphans policy alone: only untagged artifacts whose
        subject is not in their repository go."""
        subject, orphan, tagged_orphan, attached, plain = (
            "sha256:%064x" % n for n in range(1, 6))
        await self.put_manifests(
            (subject, ["s"], (), None),
            (orphan, [], (), "sha256:" + "00" * 32),
            (tagged_orphan, ["keep"], (), "sha256:" + "00" * 32),
            (attached, [], (), subject),
            (plain, [], (), None))
        self.assertEqual(await self.store.unkept_manifests(START, orphans=True),
                         [("library/app", orphan)])
        collected = await self.store.collect_manifests(
            [("library/app", d) for d in (subject, orphan, tagged_orphan, attached, plain)],
            START, orphans=True)
        self.assertEqual(collected, [("library/app", orphan)])
        self.assertEqual(await self.store.referrers("library/app", "sha256:" + "00" * 32),
                         [await self.store.get_manifest("library/app", tagged_orphan)])

    async def test_garbage_after(self):
        """
        For a dry run, deleting nothing: what only the given manifests keep
        is listed: under the policies, an index's children and a subject's
        referrers; the blobs only they reference, unless another manifest
        references one, it was linked after the horizon, or a repository
        linking it has an upload in progress.
        """
        index, child, referrer, tagged = ("sha256:%064x" % n for n in range(1, 5))
        own, shared, signature, young, busy = ("sha256:%064x" % n for n in range(11, 16))
        for n, digest in enumerate((own, shared, signature, young), 1):
            await self.old_blob(digest, "library/app", n)
        await self.old_blob(busy, "busy/app", 5)
        await self.store.create_upload(UploadRecord("u", "busy/app", created=1.0))
        await self.put_manifests(
            (index, [], (child,), None),
            (child, [], (own, shared, young, busy), None),
            (referrer, [], (signature,), index),
            (tagged, ["t"], (shared,), None))
        self.clock.advance(100)
        await self.store.link_blob("other/app", young)
        horizon = START + 50
        app = "library/app"
        self.assertEqual(await self.store.unkept_manifests(horizon, untagged=True),
                         [(app, index)])
        self.assertEqual(await self.store.garbage_after([(app, index)], horizon, untagged=True),
                         ([(app, child), (app, referrer)], []))
        self.assertEqual(await self.store.garbage_after([(app, index)], horizon, orphans=True),
                         ([(app, referrer)], []))
        keys, blobs = await self.store.garbage_after(
            [(app, index), (app, child), (app, referrer)], horizon, untagged=True)
        self.assertEqual((keys, [b.digest for b in blobs]), ([], [own, signature]))
        self.assertEqual(await self.store.garbage_after([], horizon, untagged=True), ([], []))
        self.assertIsNotNone(await self.store.get_manifest(app, index))
        self.assertEqual(await self.store.unreferenced_blobs(horizon), [])
        await failure_of(self.store.garbage_after([(app, None)], horizon), BadRequest)

    async def test_manifest_sweep_checks_again(self):
        """A manifest marked, then tagged (put again) or listed by an index
        before the sweep, stays."""
        child, index = "sha256:%064x" % 1, "sha256:%064x" % 2
        await self.put_manifests((SHA, [], (), None), (child, [], (), None))
        marked = await self.store.unkept_manifests(START, untagged=True)
        self.assertEqual(len(marked), 2)
        await self.store.put_manifest(manifest(), tags=["now"])
        await self.store.put_manifest(manifest(digest=index, references=(child,),
                                               content=b'{"schemaVersion": 2}'),
                                      required_manifests=[(child, 20)])
        self.assertEqual(await self.store.collect_manifests(marked, START, untagged=True), [])

    async def test_unkept_manifests_pages(self):
        await self.put_manifests(*[("sha256:%064x" % n, [], (), None) for n in range(5)])
        await self.store.put_manifest(manifest(repository="a/b", created=START - 7200))
        first = await self.store.unkept_manifests(START, untagged=True, limit=4)
        rest = await self.store.unkept_manifests(START, untagged=True, after=first[-1])
        self.assertEqual([r for r, _ in first + rest], ["a/b"] + ["library/app"] * 5)
        self.assertEqual(len(set(first + rest)), 6)

    async def test_negative_limit_refused(self):
        await failure_of(self.store.list_tags("r", limit=-1), BadRequest)
        await failure_of(self.store.list_files("", limit=-1), BadRequest)
        await failure_of(self.store.list_garbage(limit=-1), BadRequest)
        await failure_of(self.store.list_files(None), BadRequest)
        await failure_of(self.store.list_files("a", after=3), BadRequest)


class RoleInterfacesTests(TestCase):
    """The seams of L{IMetadataStore}: each table method belongs to one role."""

    def test_every_method_has_one_role(self):
        """IMetadataStore adds only start and close to its roles, and no
        method is in two roles."""
        self.assertEqual(set(IMetadataStore.names()), {"start", "close"})
        names = [name for role in ROLES for name in role.names()]
        self.assertEqual(len(names), len(set(names)))
        self.assertEqual(set(IMetadataStore.names(all=True)), set(names) | {"start", "close"})


class MemoryMetadataStoreTests(MetadataStoreTestsMixin, TestCase):
    """The in-memory store meets the contract."""

    async def make_store(self, clock):
        store = MemoryMetadataStore(clock)
        await store.start()
        self.addCleanup(store.close)
        return store


class OutageStoreTests(MetadataStoreTestsMixin, TestCase):
    """The chunkmaster tests' L{OutageStore}, its database up, meets the
    contract too: what it wraps to fail it changes nothing else."""

    async def make_store(self, clock):
        store = OutageStore(clock)
        await store.start()
        self.addCleanup(store.close)
        return store


class SQLStoreTestsMixin:
    """
    What the database stores add: data and file ids outlive the process,
    migrations, several processes on one database, and outages.
    Subclasses define C{new_store(clock=None)}, which returns an unstarted
    store on the test's database and closes it at cleanup, C{run_sql(sql)},
    which runs a statement on that database through a connection of its
    own, and C{drop_tables()}.
    """

    async def make_store(self, clock):
        store = self.new_store(clock)
        await store.start()
        return store

    async def test_reopen_keeps_everything(self):
        record = FileRecord("f", 3, chunks(1), created=2.0)
        await self.store.put_file(record)
        await self.store.put_manifest(manifest(content=b"\0\xff"), tags=["t"])
        _, end = await self.store.allocate_file_ids(1000)
        await self.store.close()
        store = await self.make_store(self.clock)
        self.assertEqual(await store.get_file("f"), record)
        self.assertEqual(await store.resolve_tag("library/app", "t"), SHA)
        self.assertEqual((await store.get_manifest("library/app", SHA)).content, b"\0\xff")
        self.assertEqual((await store.allocate_file_ids(1))[0], end)

    async def test_two_stores_allocate_disjoint_ranges(self):
        """Two processes (two connection pools) on one database never get
        the same id: the allocator locks its row."""
        other = await self.make_store(self.clock)
        ranges = await gatherResults(
            [store.allocate_file_ids(10) for _ in range(15) for store in (self.store, other)])
        ids = [i for start, end in ranges for i in range(start, end)]
        self.assertEqual(len(set(ids)), 300)

    async def test_two_stores_fill_a_group(self):
        """Servers joining one group through two processes at once: three
        get in, the rest are refused."""
        other = await self.make_store(self.clock)

        async def join(store, name):
            try:
                await store.upsert_server(server(name, group_id=4, address=f"{name}:8000"))
            except BadRequest:
                return "refused"
            return "joined"

        results = await gatherResults([
            Deferred.fromCoroutine(join(store, f"cs{n}"))
            for n, store in enumerate([self.store, other] * 8)
        ])
        self.assertEqual(sorted(results), ["joined"] * 3 + ["refused"] * 13)
        self.assertEqual(len(await other.list_servers()), 3)

    async def test_two_stores_put_one_blob(self):
        """Two processes storing one digest at once both get the same record."""
        other = await self.make_store(self.clock)
        stored = await gatherResults([
            store.put_blob(BlobRecord(SHA, 1, chunks(n)))
            for n, store in enumerate([self.store, other] * 3)
        ])
        self.assertEqual(len(set(stored)), 1)
        self.assertEqual(await self.store.get_blob(SHA), stored[0])

    async def test_two_stores_race_on_an_upload(self):
        """Of imageservers appending at one offset at once, exactly one wins."""
        other = await self.make_store(self.clock)
        await self.store.create_upload(UploadRecord("u", "r", created=1.0))
        won = await gatherResults([
            store.update_upload(UploadRecord("u", "r", 1000 + n, chunks(n)), 0)
            for n, store in enumerate([self.store, other] * 3)
        ])
        self.assertEqual(won.count(True), 1)
        winner = won.index(True)
        self.assertEqual((await other.get_upload("u")).chunks, chunks(winner))

    async def test_two_stores_race_link_and_delete(self):
        """
        Links and deletes of one blob by two processes at once serialise:
        either the link comes first and the blob stays, or the delete does
        and the link fails.  No link is ever left to a deleted blob.
        """
        other = await self.make_store(self.clock)
        digests = ["sha256:%064x" % n for n in range(12)]
        for digest in digests:
            await self.store.put_blob(BlobRecord(digest, 1, ()))

        async def link(store, digest):
            try:
                await store.link_blob("r", digest)
            except BadRequest:
                return False
            return True

        outcomes = await gatherResults([
            gatherResults([
                linker.delete_blob_if_unlinked(digest),
                Deferred.fromCoroutine(link(deleter, digest)),
            ])
            for n, digest in enumerate(digests)
            for linker, deleter in [(self.store, other) if n % 2 else (other, self.store)]
        ])
        for digest, (deleted, linked) in zip(digests, outcomes):
            self.assertEqual(deleted is None, linked, digest)
            self.assertEqual(await self.store.get_blob(digest) is None, deleted is not None)
            self.assertEqual(await other.blob_linked("r", digest) is not None, linked)
        self.assertEqual(
            self.run_sql("SELECT COUNT(*) FROM blob_links l LEFT JOIN blobs b"
                         " ON b.digest = l.digest WHERE b.digest IS NULL")[0][0], 0)

    async def test_two_stores_race_sweep_and_push(self):
        """
        A sweep by one process while another puts a manifest that requires
        the blob, or links it again: either the put (or link) comes first
        and the blob stays, or the sweep does and the put (or link) fails.
        A manifest never references a swept blob.
        """
        other = await self.make_store(self.clock)
        digests = ["sha256:%064x" % n for n in range(16)]
        for n, digest in enumerate(digests):
            await self.old_blob(digest, "r", n + 1)
        self.clock.advance(10)  # the links below are after the horizon

        async def push(store, n, digest):
            try:
                if n % 4 < 2:
                    await store.put_manifest(
                        manifest(repository="r", digest="sha256:%064x" % (100 + n),
                                 references=(digest,)), required_blobs=[(digest, 5)])
                else:
                    await store.link_blob("r", digest)
            except (ReferencesMissing, BadRequest):
                return False
            return True

        outcomes = await gatherResults([
            gatherResults([sweeper.collect_blobs([digest], START),
                           Deferred.fromCoroutine(push(pusher, n, digest))])
            for n, digest in enumerate(digests)
            for sweeper, pusher in [(self.store, other) if n % 2 else (other, self.store)]
        ])
        for n, (digest, (swept, pushed)) in enumerate(zip(digests, outcomes)):
            self.assertNotEqual(bool(swept), pushed, digest)
            self.assertEqual(await self.store.get_blob(digest) is not None, pushed)
            if n % 4 < 2:
                self.assertEqual(await other.get_manifest(
                    "r", "sha256:%064x" % (100 + n)) is not None, pushed)

    async def test_two_stores_race_delete_and_append(self):
        """An upload appended to by one process while another deletes it at
        the old offset: exactly one of them wins."""
        other = await self.make_store(self.clock)
        for n in range(6):
            await self.store.create_upload(UploadRecord(f"u{n}", "r", created=1.0))
        outcomes = await gatherResults([
            gatherResults([
                deleter.delete_upload(f"u{n}", expected_offset=0),
                appender.update_upload(UploadRecord(f"u{n}", "r", 1001, chunks(n)), 0),
            ])
            for n in range(6)
            for deleter, appender in [(self.store, other) if n % 2 else (other, self.store)]
        ])
        for n, (deleted, appended) in enumerate(outcomes):
            self.assertNotEqual(deleted is not None, appended)
            stored = await self.store.get_upload(f"u{n}")
            self.assertEqual(stored is not None and stored.offset == 1001, appended)

    async def test_migrations_upgrade_old_database(self):
        """A database at an old version is brought up to date, keeping its
        data.  Until then, a missing table is a bug, not an outage."""
        store = self.new_store()
        self.drop_tables()
        self.assertEqual(await store.migrate(target=1), (0, 1))
        record = FileRecord("kept", 1, chunks(1), created=1.0)
        await store.put_file(record)
        start, _ = await store.allocate_file_ids(5)
        error = await failure_of(store.list_garbage(), Exception)
        self.assertNotIsInstance(error, Unavailable)
        self.assertEqual(await store.migrate(), (1, LATEST))
        self.assertEqual(await store.get_file("kept"), record)
        self.assertEqual(await store.allocate_file_ids(1), (start + 5, start + 6))
        await store.record_garbage(chunks(1), "r")
        self.assertEqual(len(await store.list_garbage()), 1)

    async def test_migration_7_indexes_references(self):
        """Upgrading to version 7 records what the stored manifests
        reference, and stamps the stored links with the upgrade's time (so
        their blobs wait a grace period from then)."""
        store = self.new_store()
        self.drop_tables()
        await store.migrate(target=6)
        refs = '["%s","%s"]' % (SHA2, SHA3)
        self.run_sql("INSERT INTO manifests (repository, digest, media_type, content, created,"
                     " annotations, refs) VALUES ('r', '%s', 'm', 'x', 1, '{}', '%s')" % (SHA, refs))
        self.run_sql("INSERT INTO blobs (digest, size, chunks, created) VALUES"
                     " ('%s', 1, '[]', 1), ('%s', 1, '[]', 1)" % (SHA2, SHA512))
        self.run_sql("INSERT INTO blob_links (repository, digest) VALUES"
                     " ('r', '%s'), ('r', '%s')" % (SHA2, SHA512))
        self.assertEqual(await store.migrate(), (6, LATEST))
        self.assertEqual(await store.unreferenced_blobs(START), [])
        self.assertEqual([b.digest for b in await store.unreferenced_blobs(time.time() + 1)],
                         [SHA512])
        await store.delete_manifest("r", SHA)
        self.assertEqual(len(await store.unreferenced_blobs(time.time() + 1)), 2)

    async def test_migrations_run_again(self):
        await self.store.put_file(FileRecord("kept", 1, ()))
        self.assertEqual(await self.store.migrate(), (LATEST, LATEST))
        await self.store.start()
        self.assertIsNotNone(await self.store.get_file("kept"))

    async def test_concurrent_start(self):
        """Several processes starting at once on a new database migrate it once."""
        self.drop_tables()
        stores = [self.new_store() for _ in range(3)]
        versions = await gatherResults([store.migrate() for store in stores])
        self.assertEqual(sorted(versions), [(0, LATEST), (LATEST, LATEST), (LATEST, LATEST)])
        self.assertEqual(await stores[0].allocate_file_ids(1), (1, 2))

    async def test_newer_schema_refused(self):
        self.run_sql("UPDATE schema_version SET version = 99")
        error = await failure_of(self.new_store().start(), Internal)
        self.assertIn("99", str(error))

    async def test_not_started(self):
        await failure_of(self.new_store().get_file("f"), Unavailable)


def _sqlite_connect(path):
    """A second connection to the test's database, as another process has."""
    return sqlite3.connect(path, isolation_level=None)


class SQLiteMetadataStoreTests(SQLStoreTestsMixin, MetadataStoreTestsMixin, TestCase):
    """The SQLite store meets the contract."""

    def new_store(self, clock=None, busy_timeout=5.0):
        if not hasattr(self, "path"):
            self.path = os.path.abspath(self.mktemp() + ".db")
        store = sqlite_store(self.path, reactor, clock, busy_timeout=busy_timeout)
        self.addCleanup(store.close)
        return store

    def run_sql(self, statement):
        connection = _sqlite_connect(self.path)
        try:
            return connection.execute(statement).fetchall()
        finally:
            connection.close()

    def drop_tables(self):
        for (table,) in self.run_sql("SELECT name FROM sqlite_master WHERE type = 'table'"):
            self.run_sql(f"DROP TABLE {table}")

    async def test_wal_mode(self):
        connection = _sqlite_connect(self.path)
        self.addCleanup(connection.close)
        self.assertEqual(connection.execute("PRAGMA journal_mode").fetchone(), ("wal",))

    async def test_unopenable_file_then_fixed(self):
        """A database that cannot be opened is Unavailable, until it can."""
        parent = os.path.abspath(self.mktemp())
        with open(parent, "w"):
            pass  # a file where the directory should be
        store = sqlite_store(os.path.join(parent, "meta.db"), reactor)
        self.addCleanup(store.close)
        await failure_of(store.start(), Unavailable)
        os.remove(parent)
        os.mkdir(parent)
        await store.start()
        self.assertEqual(await store.allocate_file_ids(2), (1, 3))

    async def test_locked_then_released(self):
        """
        While another process holds the write lock past the busy timeout,
        writes fail with Unavailable and write nothing; reads go on; once
        the lock is released, writes work again.
        """
        store = await self.make_store_with(busy_timeout=0.05)
        await store.put_file(FileRecord("a", 1, ()))
        other = _sqlite_connect(self.path)
        self.addCleanup(other.close)
        other.execute("BEGIN IMMEDIATE")
        await failure_of(store.put_file(FileRecord("b", 1, ())), Unavailable)
        await failure_of(store.allocate_file_ids(1), Unavailable)
        self.assertEqual(await store.list_files(""), ["a"])
        other.execute("ROLLBACK")
        await store.put_file(FileRecord("b", 1, ()))
        self.assertEqual(await store.list_files(""), ["a", "b"])
        self.assertEqual(await store.allocate_file_ids(1), (1, 2))

    async def make_store_with(self, **kwargs):
        store = self.new_store(**kwargs)
        await store.start()
        return store


class _RelayServer(portforward.ProxyServer):
    """The database client's side of one relayed connection."""

    def connectionMade(self):
        self.relay = self.factory.relay
        self.relay.opened(self)
        super().connectionMade()

    def connectionLost(self, reason):
        super().connectionLost(reason)
        self.relay.closed(self)


class _RelayClient(portforward.ProxyClient):
    """The database server's side of one relayed connection."""

    def connectionMade(self):
        self.relay = self.peer.relay
        self.relay.opened(self)
        super().connectionMade()

    def connectionLost(self, reason):
        super().connectionLost(reason)
        self.relay.closed(self)


class _RelayClientFactory(portforward.ProxyClientFactory):
    protocol = _RelayClient


_RelayServer.clientProtocolFactory = _RelayClientFactory


class DatabaseRelay:
    """
    A TCP relay on loopback in front of the database, that a test cuts
    (as a database crash or a partition would) and restores.

    @ivar port: the port to connect to instead of the database's.
    """

    def __init__(self, host, port):
        self._factory = portforward.ProxyFactory(host, port)
        self._factory.protocol = _RelayServer
        self._factory.relay = self
        self.port = free_port()
        self._listening = None
        self._open = set()
        self._all_closed = []

    def opened(self, connection):
        self._open.add(connection)

    def closed(self, connection):
        self._open.discard(connection)
        if not self._open:
            waiting, self._all_closed = self._all_closed, []
            for d in waiting:
                d.callback(None)

    def up(self):
        """Accept connections again, on the same port."""
        self._listening = reactor.listenTCP(self.port, self._factory, interface="127.0.0.1")

    async def down(self):
        """Refuse new connections and cut the open ones; fires once all are gone."""
        if self._listening is not None:
            await self._listening.stopListening()
            self._listening = None
        for connection in list(self._open):
            connection.transport.abortConnection()
        if self._open:
            waiting = Deferred()
            self._all_closed.append(waiting)
            await waiting


def _mysql_admin(url):
    """@return: an autocommitting PyMySQL connection for C{url}'s server."""
    return pymysql.connect(autocommit=True, **dict(parse_url(url), ssl_disabled=True))


_test_database = None


def _mysql_test_database(url):
    """
    @return: the URL of this process's test database on C{url}'s server,
        created on first use and dropped when the process exits.  (Creating
        InnoDB tables costs a few fsyncs each; emptying them is cheaper.)
    """
    global _test_database
    if _test_database is None:
        _test_database = new_mysql_database(url, f"speedy_test_{os.getpid()}")
    return _test_database


def new_mysql_database(url, name):
    """
    Make an empty database C{name} on C{url}'s server, dropped when the
    process exits.

    @return: its URL.
    """
    admin = _mysql_admin(url)
    with admin.cursor() as cursor:
        cursor.execute(f"DROP DATABASE IF EXISTS {name}")
        cursor.execute(f"CREATE DATABASE {name} CHARACTER SET utf8mb4")
    admin.close()
    atexit.register(_drop_database, url, name)
    return urlunsplit(urlsplit(url)._replace(path="/" + name, query="tls=off"))


def _drop_database(url, name):
    admin = _mysql_admin(url)
    with admin.cursor() as cursor:
        cursor.execute(f"DROP DATABASE IF EXISTS {name}")
    admin.close()


class MySQLMetadataStoreTests(SQLStoreTestsMixin, MetadataStoreTestsMixin, TestCase):
    """
    The MySQL/MariaDB store meets the contract.  Each test starts on empty
    tables, with C{schema_version} emptied too, so that every start re-runs
    every migration step on existing tables.
    """

    async def setUp(self):
        self.url = _mysql_test_database(require_mysql())
        with self.admin().cursor() as cursor:
            cursor.execute("SHOW TABLES")
            for (table,) in cursor.fetchall():
                cursor.execute(f"DELETE FROM {table}")
        await super().setUp()

    def admin(self):
        """@return: a PyMySQL connection to the test's database, closed at cleanup."""
        connection = _mysql_admin(self.url)
        self.addCleanup(connection.close)
        return connection

    def new_store(self, clock=None, url=None, pool_size=5):
        store = mysql_store(url or self.url, reactor, clock, pool_size=pool_size)
        self.addCleanup(store.close)
        return store

    def run_sql(self, statement):
        """Run C{statement} on a connection of its own, closed at once (a
        polling loop must not pile up connections until the server refuses
        more)."""
        connection = _mysql_admin(self.url)
        try:
            with connection.cursor() as cursor:
                cursor.execute(statement)
                return cursor.fetchall()
        finally:
            connection.close()

    def drop_tables(self):
        for (table,) in self.run_sql("SHOW TABLES"):
            self.run_sql(f"DROP TABLE {table}")

    async def test_half_applied_step_runs_again(self):
        """A crash between a step's DDL and its version update (MySQL
        commits DDL by itself) is repaired by running the step again."""
        await self.store.put_file(FileRecord("kept", 1, ()))
        self.run_sql("DROP TABLE bad_replicas")
        self.run_sql("UPDATE schema_version SET version = 2")
        self.assertEqual(await self.store.migrate(), (2, LATEST))
        await self.store.record_bad_replica(BadReplica("cs1", 1, 2, "missing"))
        self.assertEqual(len(await self.store.list_bad_replicas()), 1)
        self.assertIsNotNone(await self.store.get_file("kept"))

    async def test_every_step_runs_again(self):
        """Each step can be run again over its own tables and columns, as
        after a crash right before its version update."""
        await self.store.upsert_server(server("cs1", rebuilding=True))
        for version in range(LATEST):
            self.run_sql(f"UPDATE schema_version SET version = {version}")
            self.assertEqual(await self.store.migrate(), (version, LATEST))
        self.assertTrue((await self.store.get_server("cs1")).rebuilding)

    async def test_innodb_utf8mb4(self):
        with self.admin().cursor() as cursor:
            cursor.execute(
                "SELECT DISTINCT engine, table_collation FROM information_schema.tables"
                " WHERE table_schema = DATABASE()")
            self.assertEqual(cursor.fetchall(), (("InnoDB", "utf8mb4_general_ci"),))

    async def test_put_manifest_waits_for_a_delete_under_way(self):
        """
        A manifest put while another process's transaction is deleting one
        of its blobs waits for that transaction, then sees the blob gone and
        is refused: its check reads the blob and link with locks, never
        from a snapshot taken before the delete committed.
        """
        await self.store.put_blob(BlobRecord(SHA2, 5, chunks(1)))
        await self.store.link_blob("library/app", SHA2)
        deleter = self.admin()
        deleter.begin()
        with deleter.cursor() as cursor:
            cursor.execute("SELECT digest FROM blobs WHERE digest = %s FOR UPDATE", (SHA2,))
            cursor.execute("DELETE FROM blob_links WHERE digest = %s", (SHA2,))
        putting = self.store.put_manifest(manifest(), required_blobs=[(SHA2, 5)])
        # InnoDB refills information_schema.innodb_trx only when nobody has
        # read it for 0.1 s: polling faster would read the same snapshot,
        # taken before the put began to wait, until the put timed out.
        while not putting.called and not self.run_sql(
                "SELECT 1 FROM information_schema.innodb_trx t"
                " JOIN information_schema.processlist p ON p.id = t.trx_mysql_thread_id"
                " WHERE t.trx_state = 'LOCK WAIT' AND p.db = DATABASE()"):
            await deferLater(reactor, 0.2, lambda: None)
        with deleter.cursor() as cursor:
            cursor.execute("DELETE FROM blobs WHERE digest = %s", (SHA2,))
        deleter.commit()
        await failure_of(putting, ReferencesMissing)
        self.assertIsNone(await self.store.get_manifest("library/app", SHA))

    async def test_unreachable_server(self):
        store = self.new_store(url=f"mysql://root@127.0.0.1:{free_port()}/test")
        await failure_of(store.start(), Unavailable)
        await failure_of(store.get_blob(SHA), Unavailable)

    async def test_connection_killed_then_reconnected(self):
        """
        A call on a connection the server killed fails with Unavailable and
        loses nothing; the next call reconnects by itself.
        """
        store = self.new_store(pool_size=1)
        await store.start()
        record = FileRecord("a", 1, chunks(1), created=1.0)
        await store.put_file(record)
        with self.admin().cursor() as cursor:
            cursor.execute(
                "SELECT id FROM information_schema.processlist"
                " WHERE db = DATABASE() AND id <> CONNECTION_ID()")
            for (connection_id,) in cursor.fetchall():
                cursor.execute(f"KILL {connection_id}")
        await failure_of(store.put_file(FileRecord("b", 1, ())), Unavailable)
        self.flushLoggedErrors(ConnectionLost, pymysql.err.Error)
        self.assertEqual(await store.get_file("a"), record)
        self.assertEqual(await store.list_files(""), ["a"])

    async def test_database_down_then_back(self):
        """
        While the database is unreachable, calls fail with Unavailable (the
        connection cut, then connections refused); when it comes back,
        service resumes by itself with nothing lost.
        """
        server = parse_url(self.url)
        relay = DatabaseRelay(server["host"], server["port"])
        relay.up()
        self.addCleanup(relay.down)
        store = self.new_store(
            url=f"mysql://{server['user']}@127.0.0.1:{relay.port}/{server['database']}?tls=off",
            pool_size=1)
        await store.start()
        record = FileRecord("a", 1, chunks(1), created=1.0)
        await store.put_file(record)
        await relay.down()
        await failure_of(store.get_file("a"), Unavailable)
        await failure_of(store.put_file(FileRecord("b", 1, ())), Unavailable)
        await failure_of(store.allocate_file_ids(1), Unavailable)
        relay.up()
        self.assertEqual(await store.get_file("a"), record)
        await store.put_file(FileRecord("b", 1, ()))
        self.assertEqual(await store.list_files(""), ["a", "b"])
        self.assertEqual(await store.allocate_file_ids(1), (1, 2))
        self.flushLoggedErrors(ConnectionLost, pymysql.err.Error)
