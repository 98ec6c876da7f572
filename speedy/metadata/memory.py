# -*- test-case-name: speedy.test.test_metadata -*-
"""
An L{IMetadataStore} held in memory, for unit tests of the roles that use
the metadata store (each through its role interface: L{IClusterTables},
L{IFileTables} and the others), and for C{--db memory:}.

It is a faithful model of L{speedy.metadata.sql}: the same validation and
errors, the same ordering, the same "a zero time is stamped with the
store's clock" rule, and records that come back as fresh copies (chunk
lists rebuilt, JSON-ready dicts round-tripped through JSON), so a caller
cannot pass here and fail against a database.  The conformance tests in
L{speedy.test.test_metadata} hold both to one contract.
"""

import functools
import json

import attrs
from twisted.internet.defer import maybeDeferred
from zope.interface import implementer

from speedy.errors import BadRequest, IntentExpired, ReferencesMissing
from speedy.interfaces import IMetadataStore
from speedy.metadata import schema
from speedy.records import ChunkRef, GarbageChunk, V1RepositoryRecord

#: The first file id handed out; 0 never names a chunk.
FIRST_FILE_ID = 1


def _copy_chunks(chunks):
    """
    @return: C{chunks} as a tuple of fresh L{ChunkRef}s, as a database would
        give them back.
    """
    return tuple(ChunkRef.from_json(chunk.to_json()) for chunk in chunks)


def _copy_json(value):
    """@return: C{value} after a trip through JSON (dict keys become str)."""
    return json.loads(json.dumps(value))


def _page(names, limit, last):
    """
    @param names: sorted names.
    @return: the list of those after C{last}, at most C{limit} of them.
    """
    schema.check_limit(limit)
    if last is not None:
        names = [name for name in names if name > last]
    return list(names if limit is None else names[:limit])


def _deferred(method):
    """
    Make a synchronous method answer like the database stores: with a
    Deferred that has already fired, failing if the method raised.
    """

    @functools.wraps(method)
    def answer(self, *args, **kwargs):
        return maybeDeferred(method, self, *args, **kwargs)

    return answer


@implementer(IMetadataStore)
class MemoryMetadataStore:
    """
    Every table of the metadata store as a dict.

    @param clock: an L{IReactorTime}; its C{seconds()} stamps records written
        with a zero C{created}, C{updated} or C{recorded} time.
    """

    def __init__(self, clock):
        self._clock = clock
        self._servers = {}  # server_id -> ServerRecord
        self._groups = {}  # group_id -> GroupRecord
        self._next_file_id = FIRST_FILE_ID
        self._files = {}  # path -> FileRecord
        self._blobs = {}  # digest -> BlobRecord
        self._links = {}  # (repository, digest) -> when linked
        self._manifests = {}  # (repository, digest) -> ManifestRecord
        self._tags = {}  # (repository, tag) -> digest
        self._uploads = {}  # upload_id -> UploadRecord
        self._garbage = {}  # (group_id, file_id) -> GarbageChunk
        self._intents = {}  # (group_id, file_id) -> GarbageChunk
        self._bad_replicas = {}  # (server_id, file_id) -> BadReplica
        self._removed = set()  # ids of removed servers
        self._v1_images = {}  # image_id -> V1ImageRecord
        self._v1_repositories = {}  # name -> V1RepositoryRecord
        self._v1_tags = {}  # (repository, tag) -> V1TagRecord
        self._transfers = {}  # transfer_id -> TransferRecord
        self._moves = {}  # (group_id, file_id) -> ChunkMove

    def _stamp(self, when):
        """@return: C{when}, or the clock's time if C{when} is zero."""
        return when or self._clock.seconds()

    @_deferred
    def start(self):
        return None

    @_deferred
    def close(self):
        return None

    # IClusterTables: servers, groups, file ids -------------------------------

    @_deferred
    def upsert_server(self, server):
        schema.check_server(server)
        others = [s for s in self._servers.values() if s.server_id != server.server_id]
        schema.check_server_placement(server, others)
        self._removed.discard(server.server_id)
        self._servers[server.server_id] = attrs.evolve(
            server,
            read_only=bool(server.read_only),
            rebuilding=bool(server.rebuilding),
            last_heartbeat=float(server.last_heartbeat),
            load=_copy_json(server.load))

    @_deferred
    def get_server(self, server_id):
        server = self._servers.get(server_id)
        return None if server is None else attrs.evolve(server, load=_copy_json(server.load))

    @_deferred
    def list_servers(self):
        return [
            attrs.evolve(server, load=_copy_json(server.load))
            for _, server in sorted(self._servers.items())
        ]

    @_deferred
    def remove_server(self, server_id):
        schema.check_text(server_id, "server id", schema.MAX_SERVER_ID)
        self._removed.add(server_id)
        return self._servers.pop(server_id, None) is not None

    @_deferred
    def removed_servers(self):
        return set(self._removed)

    @_deferred
    def upsert_group(self, group):
        schema.check_group(group)
        self._groups[group.group_id] = attrs.evolve(
            group, read_only=bool(group.read_only), created=self._stamp(group.created))

    @_deferred
    def list_groups(self):
        return [group for _, group in sorted(self._groups.items())]

    @_deferred
    def allocate_file_ids(self, count):
        schema.check_file_id_count(count)
        start = self._next_file_id
        self._next_file_id += count
        return start, self._next_file_id

    # IFileTables -------------------------------------------------------------

    @_deferred
    def put_file(self, record, adopted=()):
        schema.check_file(record)
        self._adopt(adopted, f"file {record.path!r}")
        replaced = self._files.get(record.path)
        self._files[record.path] = attrs.evolve(
            record, chunks=_copy_chunks(record.chunks), created=self._stamp(record.created))
        return replaced

    @_deferred
    def get_file(self, path):
        return self._files.get(path)

    @_deferred
    def delete_file(self, path):
        return self._files.pop(path, None)

    @_deferred
    def list_files(self, prefix, limit=1000, after=None):
        schema.check_prefix(prefix, after)
        schema.check_limit(limit)
        paths = sorted(
            path for path in self._files
            if path.startswith(prefix) and (after is None or path > after))
        return paths if limit is None else paths[:limit]

    # IRegistryTables: blobs --------------------------------------------------

    @_deferred
    def put_blob(self, record, adopted=()):
        schema.check_blob(record)
        existing = self._blobs.get(record.digest)
        if existing is not None:
            return existing
        self._adopt(adopted, f"blob {record.digest}")
        stored = attrs.evolve(
            record, chunks=_copy_chunks(record.chunks), created=self._stamp(record.created))
        self._blobs[record.digest] = stored
        return stored

    @_deferred
    def get_blob(self, digest):
        return self._blobs.get(digest)

    @_deferred
    def delete_blob(self, digest):
        self._unlink_all(digest)
        return self._blobs.pop(digest, None)

    def _unlink_all(self, digest):
        self._links = {key: when for key, when in self._links.items() if key[1] != digest}

    @_deferred
    def delete_blob_if_unlinked(self, digest):
        if any(d == digest for _, d in self._links):
            return None
        return self._blobs.pop(digest, None)

    @_deferred
    def link_blob(self, repository, digest):
        schema.check_repository(repository)
        if digest not in self._blobs:
            raise BadRequest(f"no blob {digest!r} to link")
        self._links[repository, digest] = self._clock.seconds()

    @_deferred
    def unlink_blob(self, repository, digest):
        return self._links.pop((repository, digest), None) is not None

    @_deferred
    def blob_linked(self, repository, digest):
        if (repository, digest) in self._links:
            return self._blobs[digest]
        return None

    # IRegistryTables: manifests and tags -------------------------------------

    @_deferred
    def put_manifest(self, record, tags=(), required_blobs=(), required_manifests=()):
        tags = list(tags)
        schema.check_manifest(record, tags)
        schema.check_references(
            required_blobs, functools.partial(self._linked_size, record.repository),
            required_manifests, functools.partial(self._manifest_size, record.repository))
        self._manifests[record.repository, record.digest] = attrs.evolve(
            record,
            content=bytes(record.content),
            created=self._stamp(record.created),
            annotations=_copy_json(record.annotations),
            references=tuple(record.references))
        for tag in tags:
            self._tags[record.repository, tag] = record.digest

    def _linked_size(self, repository, digest):
        """@return: the size of the blob C{digest} if C{repository} links
        it, else None."""
        if (repository, digest) in self._links:
            return self._blobs[digest].size
        return None

    def _manifest_size(self, repository, digest):
        """@return: the length of the manifest C{digest} of C{repository},
        or None if it is not there."""
        manifest = self._manifests.get((repository, digest))
        return None if manifest is None else len(manifest.content)

    @_deferred
    def get_manifest(self, repository, digest):
        manifest = self._manifests.get((repository, digest))
        if manifest is None:
            return None
        return attrs.evolve(manifest, annotations=_copy_json(manifest.annotations))

    @_deferred
    def delete_manifest(self, repository, digest):
        if self._manifests.pop((repository, digest), None) is None:
            return False
        self._tags = {
            key: target for key, target in self._tags.items()
            if not (key[0] == repository and target == digest)
        }
        return True

    @_deferred
    def resolve_tag(self, repository, tag):
        return self._tags.get((repository, tag))

    @_deferred
    def delete_tag(self, repository, tag):
        return self._tags.pop((repository, tag), None) is not None

    @_deferred
    def list_tags(self, repository, limit=None, last=None):
        schema.check_limit(limit)
        if not any(repo == repository for repo, _ in self._manifests):
            return None
        names = sorted(tag for repo, tag in self._tags if repo == repository)
        return _page(names, limit, last)

    @_deferred
    def list_repositories(self, limit=None, last=None):
        names = {repo for repo, _ in self._manifests}
        return _page(sorted(names), limit, last)

    @_deferred
    def referrers(self, repository, digest, artifact_type=None):
        return [
            attrs.evolve(manifest, annotations=_copy_json(manifest.annotations))
            for (repo, _), manifest in sorted(self._manifests.items())
            if repo == repository and manifest.subject == digest
            and (artifact_type is None or manifest.artifact_type == artifact_type)
        ]

    # IUploadTables -----------------------------------------------------------

    @_deferred
    def create_upload(self, record):
        schema.check_upload(record)
        if record.upload_id in self._uploads:
            raise BadRequest(f"upload {record.upload_id!r} already exists")
        created = self._stamp(record.created)
        self._uploads[record.upload_id] = attrs.evolve(
            record,
            chunks=_copy_chunks(record.chunks),
            created=created,
            updated=record.updated or created)

    @_deferred
    def get_upload(self, upload_id):
        return self._uploads.get(upload_id)

    def _adopt(self, adopted, owner):
        """
        Remove the intents of the chunks C{adopted} (C{owner} takes them
        over), or none of them if one is gone.

        @raise IntentExpired: one is gone (nothing was removed).
        """
        adopted = list(adopted)
        schema.check_chunks(adopted)
        keys = [(c.group_id, c.file_id) for c in adopted]
        missing = [key for key in keys if key not in self._intents]
        if missing:
            raise schema.intent_expired(owner, missing)
        for key in keys:
            del self._intents[key]

    @_deferred
    def update_upload(self, record, expected_offset, adopted=()):
        schema.check_upload(record)
        adopted = list(adopted)
        schema.check_chunks(adopted)
        stored = self._uploads.get(record.upload_id)
        if stored is None or stored.offset != expected_offset:
            return False
        try:
            self._adopt(adopted, f"upload {record.upload_id}")
        except IntentExpired:
            return False
        self._uploads[record.upload_id] = attrs.evolve(
            stored,
            offset=record.offset,
            chunks=_copy_chunks(record.chunks),
            hash_algorithm=record.hash_algorithm,
            hash_state=record.hash_state,
            updated=self._stamp(record.updated))
        return True

    @_deferred
    def delete_upload(self, upload_id, expected_offset=None, chunks_to=None, reason=None):
        schema.check_chunks_to(chunks_to)
        reason = f"upload {upload_id}" if reason is None else reason
        schema.check_reason(reason)
        stored = self._uploads.get(upload_id)
        if stored is None or (expected_offset is not None and stored.offset != expected_offset):
            return None
        if chunks_to is not None:
            table = self._garbage if chunks_to == "garbage" else self._intents
            self._record_chunks(table, stored.chunks, reason)
        return self._uploads.pop(upload_id)

    @_deferred
    def stale_uploads(self, updated_before, limit=100):
        schema.check_limit(limit)
        stale = sorted(
            (upload for upload in self._uploads.values() if upload.updated < updated_before),
            key=lambda upload: (upload.updated, upload.upload_id))
        return stale if limit is None else stale[:limit]

    @_deferred
    def count_uploads(self):
        return len(self._uploads), sum(upload.offset for upload in self._uploads.values())

    # IV1Tables ---------------------------------------------------------------

    @_deferred
    def put_v1_image(self, record):
        schema.check_v1_image(record)
        existing = self._v1_images.get(record.image_id)
        if existing is not None and existing.complete:
            return existing
        if record.parent is not None and record.parent not in self._v1_images:
            raise ReferencesMissing([record.parent])
        if existing is not None:
            self._record_chunks(self._garbage, existing.chunks,
                                f"v1-image {record.image_id} pushed again")
        self._v1_images[record.image_id] = attrs.evolve(
            record, json=bytes(record.json), ancestry=tuple(record.ancestry), size=None,
            chunks=(), checksum=None, complete=False, created=self._stamp(record.created))
        return existing

    @_deferred
    def get_v1_image(self, image_id):
        return self._v1_images.get(image_id)

    @_deferred
    def set_v1_layer(self, image_id, json, size, chunks, checksum, adopted=()):
        schema.check_v1_layer(image_id, json, size, chunks, checksum)
        image = self._v1_images.get(image_id)
        if image is None or image.complete or image.json != json:
            return None
        self._adopt(adopted, f"v1-image {image_id}")
        self._record_chunks(self._garbage, image.chunks, f"v1-image {image_id}: layer replaced")
        self._v1_images[image_id] = attrs.evolve(
            image, size=size, chunks=_copy_chunks(chunks), checksum=checksum)
        return image

    @_deferred
    def clear_v1_layer(self, image_id, chunks, reason=None):
        schema.check_chunks(chunks)
        reason = f"v1-image {image_id}: layer cleared" if reason is None else reason
        schema.check_reason(reason)
        image = self._v1_images.get(image_id)
        if image is None or image.complete or image.chunks != tuple(chunks) or image.size is None:
            return False
        self._record_chunks(self._garbage, image.chunks, reason)
        self._v1_images[image_id] = attrs.evolve(image, size=None, chunks=(), checksum=None)
        return True

    @_deferred
    def complete_v1_image(self, image_id, checksum):
        image = self._v1_images.get(image_id)
        if image is None or image.complete or image.checksum is None or image.checksum != checksum:
            return False
        self._v1_images[image_id] = attrs.evolve(image, complete=True)
        return True

    @_deferred
    def stale_v1_layers(self, created_before, limit=100):
        schema.check_limit(limit)
        stale = sorted((image for image in self._v1_images.values()
                        if not image.complete and image.size is not None
                        and image.created < created_before),
                       key=lambda image: (image.created, image.image_id))
        return stale if limit is None else stale[:limit]

    @_deferred
    def v1_summary(self):
        images = list(self._v1_images.values())
        complete = [i for i in images if i.complete]
        layers = [i for i in images if not i.complete and i.size is not None]
        return {
            "repositories": len(self._v1_repositories),
            "tags": len(self._v1_tags),
            "images": len(complete),
            "unfinished": len(images) - len(complete),
            "layer_bytes": sum(i.size for i in complete),
            "unfinished_layers": len(layers),
            "unfinished_layer_bytes": sum(i.size for i in layers),
        }

    def _v1_repository(self, name):
        """@return: the repository C{name}, created empty if needed."""
        repository = self._v1_repositories.get(name)
        if repository is None:
            repository = self._v1_repositories[name] = V1RepositoryRecord(
                name, (), self._clock.seconds())
        return repository

    @_deferred
    def put_v1_index(self, repository, images):
        schema.check_repository(repository)
        schema.check_v1_index(images)
        record = self._v1_repository(repository)
        merged = schema.merge_v1_index(_copy_json(list(images)), record.images)
        record = self._v1_repositories[repository] = attrs.evolve(record, images=tuple(merged))
        return attrs.evolve(record, images=tuple(_copy_json(list(record.images))))

    @_deferred
    def get_v1_repository(self, repository):
        record = self._v1_repositories.get(repository)
        if record is None:
            return None
        return attrs.evolve(record, images=tuple(_copy_json(list(record.images))))

    @_deferred
    def put_v1_tag(self, record):
        schema.check_v1_tag(record)
        if record.image_id not in self._v1_images:
            raise ReferencesMissing([record.image_id])
        self._v1_repository(record.repository)
        self._v1_tags[record.repository, record.tag] = attrs.evolve(
            record, properties=_copy_json(record.properties), created=self._stamp(record.created))

    def _tag_copy(self, record):
        return attrs.evolve(record, properties=_copy_json(record.properties))

    @_deferred
    def get_v1_tag(self, repository, tag):
        record = self._v1_tags.get((repository, tag))
        return None if record is None else self._tag_copy(record)

    @_deferred
    def list_v1_tags(self, repository):
        if repository not in self._v1_repositories:
            return None
        return [self._tag_copy(record) for (name, _), record in sorted(self._v1_tags.items())
                if name == repository]

    @_deferred
    def delete_v1_tag(self, repository, tag):
        return self._v1_tags.pop((repository, tag), None) is not None

    @_deferred
    def delete_v1_repository(self, repository):
        if self._v1_repositories.pop(repository, None) is None:
            return False
        self._v1_tags = {key: record for key, record in self._v1_tags.items()
                         if key[0] != repository}
        return True

    @_deferred
    def search_v1_repositories(self, text, limit=None):
        schema.check_limit(limit)
        if not isinstance(text, str):
            raise BadRequest(f"search text must be a string, not {text!r}")
        return _page(sorted(name for name in self._v1_repositories if text in name), limit, None)

    # IGarbageTables ----------------------------------------------------------

    @_deferred
    def record_garbage(self, chunks, reason):
        self._record_chunks(self._garbage, chunks, reason)

    def _record_chunks(self, table, chunks, reason):
        """Add fresh copies of C{chunks} to C{table} (the garbage or the
        intents), keeping the records already there."""
        chunks = list(chunks)
        schema.check_chunks(chunks)
        schema.check_reason(reason)
        now = self._clock.seconds()
        for chunk in _copy_chunks(chunks):
            key = chunk.group_id, chunk.file_id
            if key not in table:
                table[key] = GarbageChunk(chunk, reason, now)

    @_deferred
    def list_garbage(self, limit=1000, after=None):
        schema.check_limit(limit)

        def key(g):
            return g.recorded, g.chunk.group_id, g.chunk.file_id
        garbage = sorted(self._garbage.values(), key=key)
        if after is not None:
            garbage = [g for g in garbage if key(g) > key(after)]
        return garbage if limit is None else garbage[:limit]

    @_deferred
    def record_intents(self, chunks, reason):
        self._record_chunks(self._intents, chunks, reason)

    @_deferred
    def list_intents(self, limit=1000):
        schema.check_limit(limit)
        intents = sorted(self._intents.values(),
                         key=lambda g: (g.recorded, g.chunk.group_id, g.chunk.file_id))
        return intents if limit is None else intents[:limit]

    @_deferred
    def expire_intents(self, recorded_before, limit=1000):
        schema.check_limit(limit)
        due = sorted((g for g in self._intents.values() if g.recorded < recorded_before),
                     key=lambda g: (g.recorded, g.chunk.group_id, g.chunk.file_id))
        if limit is not None:
            due = due[:limit]
        for g in due:
            key = g.chunk.group_id, g.chunk.file_id
            del self._intents[key]
            if key not in self._garbage:
                self._garbage[key] = GarbageChunk(
                    g.chunk, f"never handed over: {g.reason}", g.recorded)
        return len(due)

    @_deferred
    def forget_garbage(self, chunks):
        chunks = list(chunks)
        schema.check_chunks(chunks)
        for chunk in chunks:
            self._garbage.pop((chunk.group_id, chunk.file_id), None)

    # ISweepTables --------------------------------------------------------------

    def _referenced(self, digest, repository=None, gone=frozenset()):
        """@return: True if a manifest (of C{repository}, if given), other
        than those of C{gone}, lists C{digest}."""
        return any(digest in m.references for key, m in self._manifests.items()
                   if (repository is None or key[0] == repository) and key not in gone)

    def _garbage_blob(self, blob, horizon, gone=frozenset()):
        """@return: True if C{blob} is garbage at C{horizon}, with the
        manifests C{gone} counted as deleted."""
        repositories = {repo for repo, d in self._links if d == blob.digest}
        return (blob.created <= horizon
                and not self._referenced(blob.digest, gone=gone)
                and not any(when > horizon for (_, d), when in self._links.items()
                            if d == blob.digest)
                and not any(u.repository in repositories for u in self._uploads.values()))

    @_deferred
    def unreferenced_blobs(self, horizon, limit=1000, after=None):
        schema.check_limit(limit)
        found = [blob for digest, blob in sorted(self._blobs.items())
                 if (after is None or digest > after) and self._garbage_blob(blob, horizon)]
        return found if limit is None else found[:limit]

    @_deferred
    def collect_blobs(self, digests, horizon):
        collected = []
        for digest in sorted(set(digests)):
            schema.check_digest(digest)
            blob = self._blobs.get(digest)
            if blob is None or not self._garbage_blob(blob, horizon):
                continue
            self._unlink_all(digest)
            del self._blobs[digest]
            self.record_garbage(blob.chunks, f"blob {digest} collected")
            collected.append(blob)
        return collected

    def _garbage_manifest(self, manifest, horizon, untagged, orphans, gone=frozenset()):
        """@return: True if C{manifest} is garbage at C{horizon} under the
        policies, with the manifests C{gone} counted as deleted."""
        repository, digest = manifest.repository, manifest.digest
        if manifest.subject is None:
            by_subject = untagged
        else:
            subject = (repository, manifest.subject)
            by_subject = ((untagged or orphans)
                          and (subject not in self._manifests or subject in gone))
        return (by_subject and manifest.created <= horizon
                and not any(key[0] == repository and target == digest
                            for key, target in self._tags.items())
                and not self._referenced(digest, repository, gone))

    @_deferred
    def unkept_manifests(self, horizon, untagged=False, orphans=False, limit=1000, after=None):
        schema.check_limit(limit)
        found = [key for key, manifest in sorted(self._manifests.items())
                 if (after is None or key > tuple(after))
                 and self._garbage_manifest(manifest, horizon, untagged, orphans)]
        return found if limit is None else found[:limit]

    @_deferred
    def collect_manifests(self, keys, horizon, untagged=False, orphans=False):
        collected = []
        for key in sorted(set(map(tuple, keys))):
            manifest = self._manifests.get(key)
            if manifest is None or not self._garbage_manifest(
                    manifest, horizon, untagged, orphans):
                continue
            self.delete_manifest(*key)
            collected.append(key)
        return collected

    @_deferred
    def garbage_after(self, gone, horizon, untagged=False, orphans=False):
        gone = frozenset(map(tuple, gone))
        for repository, digest in gone:
            schema.check_repository(repository)
            schema.check_digest(digest)
        keys = []
        if untagged or orphans:
            keys = [key for key, manifest in sorted(self._manifests.items())
                    if key not in gone
                    and not self._garbage_manifest(manifest, horizon, untagged, orphans)
                    and self._garbage_manifest(manifest, horizon, untagged, orphans, gone)]
        blobs = [blob for _, blob in sorted(self._blobs.items())
                 if not self._garbage_blob(blob, horizon)
                 and self._garbage_blob(blob, horizon, gone)]
        return keys, blobs

    # IRepairTables -----------------------------------------------------------

    @_deferred
    def record_bad_replica(self, bad):
        schema.check_bad_replica(bad)
        self._bad_replicas[bad.server_id, bad.file_id] = attrs.evolve(
            bad, recorded=self._stamp(bad.recorded))

    @_deferred
    def list_bad_replicas(self, limit=1000):
        schema.check_limit(limit)
        bad = sorted(
            self._bad_replicas.values(),
            key=lambda b: (b.recorded, b.server_id, b.file_id))
        return bad if limit is None else bad[:limit]

    @_deferred
    def forget_bad_replica(self, server_id, file_id):
        return self._bad_replicas.pop((server_id, file_id), None) is not None

    @_deferred
    def count_bad_replicas(self):
        return len(self._bad_replicas)

    @_deferred
    def referenced_chunks(self):
        found = []
        for kind, records in (("file", self._files), ("blob", self._blobs),
                              ("upload", self._uploads), ("v1-image", self._v1_images)):
            for name, record in sorted(records.items()):
                found.extend((f"{kind} {name}", chunk) for chunk in _copy_chunks(record.chunks))
        return found

    # ITransferTables ----------------------------------------------------------

    @_deferred
    def put_transfer(self, record):
        schema.check_transfer(record)
        now = self._clock.seconds()
        stored = attrs.evolve(record, target_groups=tuple(record.target_groups),
                              created=record.created or now, updated=now)
        self._transfers[stored.transfer_id] = stored
        return stored

    @_deferred
    def get_transfer(self, transfer_id):
        return self._transfers.get(transfer_id)

    @_deferred
    def list_transfers(self):
        return sorted(self._transfers.values(), key=lambda t: (t.created, t.transfer_id))

    @_deferred
    def record_move(self, move):
        schema.check_move(move)
        key = move.old.group_id, move.old.file_id
        if key in self._moves:
            raise BadRequest(f"chunk {move.old.file_id} of group {move.old.group_id} "
                             "is on the move already")
        self._moves[key] = move

    @_deferred
    def list_moves(self, transfer_id=None, switched=None, switched_before=None, limit=None):
        schema.check_limit(limit)
        moves = [m for _, m in sorted(self._moves.items())
                 if (transfer_id is None or m.transfer_id == transfer_id)
                 and (switched is None or (m.switched is not None) == switched)
                 and (switched_before is None
                      or (m.switched is not None and m.switched < switched_before))]
        return moves if limit is None else moves[:limit]

    @_deferred
    def switch_moves(self, moves):
        moves = list(moves)
        for move in moves:
            schema.check_move(move)
        new = {(m.old.group_id, m.old.file_id): m.new for m in moves}
        rewritten = 0
        for records in (self._files, self._blobs, self._uploads, self._v1_images):
            for name, record in list(records.items()):
                chunks = tuple(new.get((c.group_id, c.file_id), c) for c in record.chunks)
                changed = sum(a is not b for a, b in zip(record.chunks, chunks))
                if changed:
                    records[name] = attrs.evolve(record, chunks=_copy_chunks(chunks))
                    rewritten += changed
        now = self._clock.seconds()
        for move in moves:
            key = move.old.group_id, move.old.file_id
            if key in self._moves and self._moves[key].switched is None:
                self._moves[key] = attrs.evolve(self._moves[key], switched=now)
        return rewritten

    @_deferred
    def forget_moves(self, moves):
        for move in list(moves):
            self._moves.pop((move.old.group_id, move.old.file_id), None)
