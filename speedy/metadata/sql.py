# -*- test-case-name: speedy.test.test_metadata -*-
"""
The L{IMetadataStore} on a SQL database, through C{twisted.enterprise.adbapi}.

One implementation serves SQLite and MySQL/MariaDB; a dialect object
(L{speedy.metadata.sqlite.SQLiteDialect},
L{speedy.metadata.mysql.MySQLDialect}) holds what differs: how to connect,
how a transaction begins and locks, the upsert syntax, the migrations, and
which driver errors mean "the database is unreachable".  The tables are
described in L{speedy.metadata.schema}.

Every method runs one adbapi interaction (one transaction) in the pool's
threads, never on the reactor thread.  Failures:

  - L{BadRequest} for invalid arguments (checked by L{speedy.metadata.schema}
    before anything is written, the same checks as the in-memory store);
  - L{Unavailable} when the database cannot be reached: the pool drops the
    dead connection and the next call connects anew;
  - anything else (a driver's ProgrammingError, say) is a bug and passes
    through unchanged.

Write transactions that the database aborts to break a deadlock are retried.
"""

import json

import attrs

from twisted.internet.defer import Deferred, succeed
from zope.interface import implementer

from speedy.errors import BadRequest, IntentExpired, ReferencesMissing, Unavailable
from speedy.interfaces import IMetadataStore
from speedy.metadata import schema
from speedy.records import (
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
    V1RepositoryRecord,
    V1TagRecord,
)

#: Attempts of a transaction the database keeps aborting as a deadlock victim.
CONFLICT_ATTEMPTS = 5


class Cursor:
    """
    The cursor of one interaction, speaking the dialect's placeholders.
    Statements are written with C{?} placeholders.
    """

    def __init__(self, transaction, dialect):
        self._transaction = transaction
        self.dialect = dialect

    def execute(self, sql, *params):
        """@return: the number of rows the statement matched."""
        self._transaction.execute(self.dialect.placeholders(sql), params)
        return self._transaction.rowcount

    def one(self, sql, *params):
        """@return: the first row of a query, or None."""
        self.execute(sql, *params)
        return self._transaction.fetchone()

    def all(self, sql, *params):
        """@return: every row of a query, as a list."""
        self.execute(sql, *params)
        return list(self._transaction.fetchall())


# --- columns <-> records -------------------------------------------------------


def _text(value):
    """@return: a text column's value as C{str} (MySQL's VARBINARY gives bytes)."""
    return value.decode("utf-8") if isinstance(value, bytes) else value


def _dump_json(value):
    """@return: C{value} as ASCII JSON bytes, for a BLOB column."""
    return json.dumps(value, separators=(",", ":")).encode("ascii")


def _dump_chunks(chunks):
    return _dump_json([chunk.to_json() for chunk in chunks])


def _load_chunks(value):
    return tuple(ChunkRef.from_json(item) for item in json.loads(value))


def _limit(limit):
    """@return: the C{LIMIT} clause for C{limit} (None: no limit)."""
    return "" if limit is None else f" LIMIT {int(limit)}"


def prefix_successor(prefix):
    """
    @return: the least string greater than every string that starts with
        C{prefix}, or None when no string is (C{prefix} is empty or all
        U+10FFFF).  Skips the surrogates, which no stored string contains.
    """
    stripped = prefix.rstrip("\U0010ffff")
    if not stripped:
        return None
    code = ord(stripped[-1]) + 1
    if 0xD800 <= code <= 0xDFFF:
        code = 0xE000
    return stripped[:-1] + chr(code)


_SERVER = ("server_id, group_id, address, state, capacity, used, free, read_only, "
           "last_heartbeat, load_counters, rebuilding")


def _server(row):
    (server_id, group_id, address, state, capacity, used, free, read_only,
     last_heartbeat, load, rebuilding) = row
    return ServerRecord(
        _text(server_id), group_id, _text(address), _text(state), capacity, used, free,
        bool(read_only), float(last_heartbeat), json.loads(load), bool(rebuilding))


_FILE = "path, size, chunks, created, sha256"


def _file(row):
    path, size, chunks, created, sha256 = row
    return FileRecord(_text(path), size, _load_chunks(chunks), float(created), _text(sha256))


_BLOB = "digest, size, chunks, created"


def _blob(row):
    digest, size, chunks, created = row
    return BlobRecord(_text(digest), size, _load_chunks(chunks), float(created))


_MANIFEST = ("repository, digest, media_type, content, created, subject, artifact_type, "
             "annotations, refs")


def _manifest(row):
    (repository, digest, media_type, content, created, subject, artifact_type,
     annotations, refs) = row
    return ManifestRecord(
        _text(repository), _text(digest), _text(media_type), bytes(content), float(created),
        _text(subject), _text(artifact_type), json.loads(annotations), tuple(json.loads(refs)))


_UPLOAD = ("upload_id, repository, upload_offset, chunks, hash_algorithm, hash_state, "
           "created, updated")


def _upload(row):
    (upload_id, repository, offset, chunks, hash_algorithm, hash_state, created,
     updated) = row
    return UploadRecord(
        _text(upload_id), _text(repository), offset, _load_chunks(chunks),
        _text(hash_algorithm), None if hash_state is None else bytes(hash_state),
        float(created), float(updated))


_GARBAGE = "group_id, file_id, size, crc32c, reason, recorded"


def _garbage(row):
    group_id, file_id, size, crc32c, reason, recorded = row
    return GarbageChunk(ChunkRef(group_id, file_id, size, crc32c), _text(reason), float(recorded))


_BAD_REPLICA = "server_id, group_id, file_id, reason, recorded"


def _bad_replica(row):
    server_id, group_id, file_id, reason, recorded = row
    return BadReplica(_text(server_id), group_id, file_id, _text(reason), float(recorded))


_V1_IMAGE = "image_id, json, parent, ancestry, size, chunks, checksum, complete, created"


def _v1_image(row):
    image_id, json_, parent, ancestry, size, chunks, checksum, complete, created = row
    return V1ImageRecord(
        _text(image_id), bytes(json_), _text(parent), tuple(json.loads(ancestry)), size,
        _load_chunks(chunks), _text(checksum), bool(complete), float(created))


_V1_TAG = "repository, tag, image_id, properties, created"


def _v1_tag(row):
    repository, tag, image_id, properties, created = row
    return V1TagRecord(
        _text(repository), _text(tag), _text(image_id), json.loads(properties), float(created))


_TRANSFER = ("transfer_id, kind, source_group, target_groups, state, byte_budget, chunks_done, "
             "bytes_done, chunks_left, created, updated")


def _transfer(row):
    (transfer_id, kind, source_group, target_groups, state, byte_budget, chunks_done,
     bytes_done, chunks_left, created, updated) = row
    return TransferRecord(
        _text(transfer_id), _text(kind), source_group, tuple(json.loads(target_groups)),
        _text(state), byte_budget, chunks_done, bytes_done, chunks_left, float(created),
        float(updated))


_MOVE = "group_id, file_id, size, crc32c, new_group_id, new_file_id, transfer_id, switched"


def _move(row):
    group_id, file_id, size, crc32c, new_group_id, new_file_id, transfer_id, switched = row
    return ChunkMove(ChunkRef(group_id, file_id, size, crc32c),
                     ChunkRef(new_group_id, new_file_id, size, crc32c), _text(transfer_id),
                     None if switched is None else float(switched))


#: The tables that hold chunk lists, and the key of each (for switch_moves).
_CHUNK_LISTS = (("files", "path"), ("blobs", "digest"), ("uploads", "upload_id"),
                ("v1_images", "image_id"))


def chunk_pattern(chunk):
    """@return: the bytes that begin C{chunk}'s entry in a stored chunk list
        (C{[group,file,}): an entry starts with C{[} and no other does."""
    return b"[%d,%d," % (chunk.group_id, chunk.file_id)


@implementer(IMetadataStore)
class SQLMetadataStore:
    """
    The metadata store in a SQL database.

    @param dialect: what is particular to the database (see the module
        docstring).
    @param reactor: runs the connection pool's threads and their results.
    @param clock: stamps records written with a zero time; the reactor if
        None.
    @ivar dialect: the C{dialect} given.
    """

    def __init__(self, dialect, reactor, clock=None):
        self.dialect = dialect
        self._reactor = reactor
        self._clock = reactor if clock is None else clock
        self._pool = None

    def __repr__(self):
        return f"<SQLMetadataStore {self.dialect!r}>"

    # running interactions ---------------------------------------------------

    def _interaction(self, transaction, write, function, args):
        """
        In a pool thread: begin the transaction and run C{function} in it
        (adbapi commits, or rolls back if it raises).

        @return: what C{function(db, *args)} returns.
        """
        db = Cursor(transaction, self.dialect)
        self.dialect.begin(db, write)
        return function(db, *args)

    async def _attempts(self, write, function, args):
        """
        Run C{function} in a transaction, again if the database aborted it
        to break a deadlock.

        @return: what C{function(db, *args)} returns.
        @raise Unavailable: the database could not be reached.
        """
        if self._pool is None:
            raise Unavailable("the metadata store is not started")
        attempt = 1
        while True:
            try:
                return await self._pool.runInteraction(
                    self._interaction, write, function, args)
            except Exception as e:
                if self.dialect.is_conflict(e) and attempt < CONFLICT_ATTEMPTS:
                    attempt += 1
                    continue
                if self.dialect.is_unavailable(e):
                    raise Unavailable(f"metadata database unreachable: {e}") from e
                raise

    def _read(self, function, *args):
        """
        Run C{function(db, *args)} in a read-only transaction.

        @return: a Deferred firing with its result.
        """
        return Deferred.fromCoroutine(self._attempts(False, function, args))

    def _write(self, function, *args):
        """
        Run C{function(db, *args)} in a transaction that writes.

        @return: a Deferred firing with its result.
        """
        return Deferred.fromCoroutine(self._attempts(True, function, args))

    def _now(self):
        return self._clock.seconds()

    # lifecycle ------------------------------------------------------------------

    def migrate(self, target=None):
        """
        Open the connection pool if needed and bring the schema to version
        C{target} (the latest if None).

        @return: a Deferred firing with C{(before, after)} schema versions.
        """
        if self._pool is None:
            self._pool = self.dialect.connection_pool(self._reactor)
        return self._write(schema.migrate, self.dialect, target)

    def start(self):
        return self.migrate().addCallback(lambda versions: None)

    def close(self):
        """
        Close the pool: its idle threads are joined, briefly, on the
        reactor thread (adbapi offers no other way).
        """
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()
        return succeed(None)

    # IClusterTables: servers, groups, file ids -------------------------------

    def upsert_server(self, server):
        return self._write(self._upsert_server, server)

    def _upsert_server(self, db, server):
        schema.check_server(server)
        others = db.all(
            f"SELECT {_SERVER} FROM servers WHERE (address = ? OR group_id = ?)"
            f" AND server_id <> ?" + self.dialect.for_update,
            server.address, server.group_id, server.server_id)
        schema.check_server_placement(server, [_server(row) for row in others])
        db.execute(
            self.dialect.upsert("servers", _SERVER, ["server_id"]),
            server.server_id, server.group_id, server.address, server.state,
            server.capacity, server.used, server.free, bool(server.read_only),
            float(server.last_heartbeat), _dump_json(server.load), bool(server.rebuilding))
        db.execute("DELETE FROM removed_servers WHERE server_id = ?", server.server_id)

    def get_server(self, server_id):
        return self._read(self._get_server, server_id)

    def _get_server(self, db, server_id):
        row = db.one(f"SELECT {_SERVER} FROM servers WHERE server_id = ?", server_id)
        return None if row is None else _server(row)

    def list_servers(self):
        return self._read(self._list_servers)

    def _list_servers(self, db):
        rows = db.all(f"SELECT {_SERVER} FROM servers ORDER BY server_id")
        return [_server(row) for row in rows]

    def remove_server(self, server_id):
        return self._write(self._remove_server, server_id, self._now())

    def _remove_server(self, db, server_id, now):
        schema.check_text(server_id, "server id", schema.MAX_SERVER_ID)
        db.execute(self.dialect.upsert("removed_servers", "server_id, removed", ["server_id"]),
                   server_id, now)
        return db.execute("DELETE FROM servers WHERE server_id = ?", server_id) > 0

    def removed_servers(self):
        return self._read(self._removed_servers)

    def _removed_servers(self, db):
        return {_text(row[0]) for row in db.all("SELECT server_id FROM removed_servers")}

    def upsert_group(self, group):
        return self._write(self._upsert_group, group, self._now())

    def _upsert_group(self, db, group, now):
        schema.check_group(group)
        db.execute(
            self.dialect.upsert("replica_groups", "group_id, read_only, created", ["group_id"]),
            group.group_id, bool(group.read_only), group.created or now)

    def list_groups(self):
        return self._read(self._list_groups)

    def _list_groups(self, db):
        return [
            GroupRecord(group_id, bool(read_only), float(created))
            for group_id, read_only, created in db.all(
                "SELECT group_id, read_only, created FROM replica_groups ORDER BY group_id")
        ]

    def allocate_file_ids(self, count):
        return self._write(self._allocate_file_ids, count)

    def _allocate_file_ids(self, db, count):
        schema.check_file_id_count(count)
        (start,) = db.one(
            "SELECT next_id FROM file_ids WHERE singleton = 1" + self.dialect.for_update)
        db.execute("UPDATE file_ids SET next_id = ? WHERE singleton = 1", start + count)
        return start, start + count

    # IFileTables -------------------------------------------------------------

    def put_file(self, record, adopted=()):
        return self._write(self._put_file, record, list(adopted), self._now())

    def _put_file(self, db, record, adopted, now):
        schema.check_file(record)
        replaced = self._get_file(db, record.path, lock=True)
        self._adopt(db, adopted, f"file {record.path!r}")
        db.execute(
            self.dialect.upsert("files", _FILE, ["path"]),
            record.path, record.size, _dump_chunks(record.chunks),
            record.created or now, record.sha256)
        return replaced

    def get_file(self, path):
        return self._read(self._get_file, path)

    def _get_file(self, db, path, lock=False):
        row = db.one(f"SELECT {_FILE} FROM files WHERE path = ?"
                     + (self.dialect.for_update if lock else ""), path)
        return None if row is None else _file(row)

    def delete_file(self, path):
        return self._write(self._delete_file, path)

    def _delete_file(self, db, path):
        deleted = self._get_file(db, path, lock=True)
        if deleted is not None:
            db.execute("DELETE FROM files WHERE path = ?", path)
        return deleted

    def list_files(self, prefix, limit=1000, after=None):
        return self._read(self._list_files, prefix, limit, after)

    def _list_files(self, db, prefix, limit, after):
        schema.check_prefix(prefix, after)
        schema.check_limit(limit)
        where, params = ["path >= ?"], [prefix]
        upper = prefix_successor(prefix)
        if upper is not None:
            where.append("path < ?")
            params.append(upper)
        if after is not None:
            where.append("path > ?")
            params.append(after)
        rows = db.all(
            f"SELECT path FROM files WHERE {' AND '.join(where)} ORDER BY path" + _limit(limit),
            *params)
        return [_text(path) for (path,) in rows]

    # IRegistryTables: blobs --------------------------------------------------

    def put_blob(self, record, adopted=()):
        return self._write(self._put_blob, record, list(adopted), self._now())

    def _put_blob(self, db, record, adopted, now):
        schema.check_blob(record)
        existing = self._get_blob(db, record.digest, self.dialect.for_update)
        if existing is not None:
            return existing
        self._adopt(db, adopted, f"blob {record.digest}")
        stored = BlobRecord(
            record.digest, record.size, tuple(record.chunks), record.created or now)
        db.execute(
            f"INSERT INTO blobs ({_BLOB}) VALUES (?, ?, ?, ?)",
            stored.digest, stored.size, _dump_chunks(stored.chunks), stored.created)
        return stored

    def get_blob(self, digest):
        return self._read(self._get_blob, digest)

    def _get_blob(self, db, digest, lock=""):
        """
        @param lock: the dialect's C{for_update} or C{for_share} to lock the
            blob's row until the transaction ends, or nothing.
        @return: the L{BlobRecord} of C{digest}, or None.
        """
        row = db.one(f"SELECT {_BLOB} FROM blobs WHERE digest = ?" + lock, digest)
        return None if row is None else _blob(row)

    def delete_blob(self, digest):
        return self._write(self._delete_blob, digest)

    def _delete_blob(self, db, digest):
        deleted = self._get_blob(db, digest, self.dialect.for_update)
        if deleted is not None:
            db.execute("DELETE FROM blob_links WHERE digest = ?", digest)
            db.execute("DELETE FROM blobs WHERE digest = ?", digest)
        return deleted

    def delete_blob_if_unlinked(self, digest):
        return self._write(self._delete_blob_if_unlinked, digest)

    def _delete_blob_if_unlinked(self, db, digest):
        """
        The blob's row is the lock that orders this against L{_link_blob}:
        held exclusively here from before the look for links until the
        commit, and shared by every link in the making.  Whichever comes
        second sees what the first committed (the links are read with a
        locking read, which sees the latest commit, not a snapshot).
        """
        blob = self._get_blob(db, digest, self.dialect.for_update)
        if blob is None:
            return None
        if db.one("SELECT 1 FROM blob_links WHERE digest = ? LIMIT 1" + self.dialect.for_share,
                  digest) is not None:
            return None
        db.execute("DELETE FROM blobs WHERE digest = ?", digest)
        return blob

    def link_blob(self, repository, digest):
        return self._write(self._link_blob, repository, digest, self._now())

    def _link_blob(self, db, repository, digest, now):
        schema.check_repository(repository)
        # A shared lock: links of one blob into many repositories go on
        # side by side, a delete of it waits (see _delete_blob_if_unlinked
        # and _collect_blobs).
        if self._get_blob(db, digest, self.dialect.for_share) is None:
            raise BadRequest(f"no blob {digest!r} to link")
        # Linking again (a push or mount of a blob the repository has)
        # stamps the link anew: the collector's grace period starts again.
        db.execute(
            self.dialect.upsert("blob_links", "repository, digest, linked",
                                ["repository", "digest"]),
            repository, digest, now)

    def unlink_blob(self, repository, digest):
        return self._write(self._unlink_blob, repository, digest)

    def _unlink_blob(self, db, repository, digest):
        return db.execute(
            "DELETE FROM blob_links WHERE repository = ? AND digest = ?", repository, digest) > 0

    def blob_linked(self, repository, digest):
        return self._read(self._blob_linked, repository, digest)

    def _blob_linked(self, db, repository, digest):
        row = db.one(
            "SELECT b.digest, b.size, b.chunks, b.created FROM blob_links l"
            " JOIN blobs b ON b.digest = l.digest WHERE l.repository = ? AND l.digest = ?",
            repository, digest)
        return None if row is None else _blob(row)

    # IRegistryTables: manifests and tags -------------------------------------

    def put_manifest(self, record, tags=(), required_blobs=(), required_manifests=()):
        return self._write(
            self._put_manifest, record, list(tags), list(required_blobs),
            list(required_manifests), self._now())

    def _put_manifest(self, db, record, tags, required_blobs, required_manifests, now):
        schema.check_manifest(record, tags)
        schema.check_references(
            required_blobs, lambda digest: self._linked_size(db, record.repository, digest),
            required_manifests, lambda digest: self._manifest_size(db, record.repository, digest))
        db.execute(
            self.dialect.upsert("manifests", _MANIFEST, ["repository", "digest"]),
            record.repository, record.digest, record.media_type, bytes(record.content),
            record.created or now, record.subject, record.artifact_type,
            _dump_json(record.annotations), _dump_json(list(record.references)))
        for tag in tags:
            db.execute(
                self.dialect.upsert("tags", "repository, tag, digest", ["repository", "tag"]),
                record.repository, tag, record.digest)
        # What it references, by digest, for the collector (same digest,
        # same content, same references: a put again adds nothing).
        insert = self.dialect.insert_new(
            "manifest_refs", "digest, repository, manifest", ["digest", "repository", "manifest"])
        for reference in dict.fromkeys(record.references):
            db.execute(insert, reference, record.repository, record.digest)

    def _linked_size(self, db, repository, digest):
        """
        Lock the blob's row shared, as L{_link_blob} does, so that a
        L{_delete_blob_if_unlinked} of it waits for this transaction; read
        its link with a locking read (the latest commit, not a snapshot),
        which holds off an unlink until then too.

        @return: the blob's size if C{repository} links it, else None.
        """
        blob = self._get_blob(db, digest, self.dialect.for_share)
        if blob is None or db.one(
                "SELECT 1 FROM blob_links WHERE repository = ? AND digest = ?"
                + self.dialect.for_share, repository, digest) is None:
            return None
        return blob.size

    def _manifest_size(self, db, repository, digest):
        """@return: the length of the manifest C{digest} of C{repository},
        locked shared until the transaction ends, or None."""
        row = db.one(
            "SELECT LENGTH(content) FROM manifests WHERE repository = ? AND digest = ?"
            + self.dialect.for_share, repository, digest)
        return None if row is None else row[0]

    def get_manifest(self, repository, digest):
        return self._read(self._get_manifest, repository, digest)

    def _get_manifest(self, db, repository, digest):
        row = db.one(
            f"SELECT {_MANIFEST} FROM manifests WHERE repository = ? AND digest = ?",
            repository, digest)
        return None if row is None else _manifest(row)

    def delete_manifest(self, repository, digest):
        return self._write(self._delete_manifest, repository, digest)

    def _delete_manifest(self, db, repository, digest):
        if not db.execute(
                "DELETE FROM manifests WHERE repository = ? AND digest = ?", repository, digest):
            return False
        db.execute("DELETE FROM tags WHERE repository = ? AND digest = ?", repository, digest)
        db.execute("DELETE FROM manifest_refs WHERE repository = ? AND manifest = ?",
                   repository, digest)
        return True

    def resolve_tag(self, repository, tag):
        return self._read(self._resolve_tag, repository, tag)

    def _resolve_tag(self, db, repository, tag):
        row = db.one("SELECT digest FROM tags WHERE repository = ? AND tag = ?", repository, tag)
        return None if row is None else _text(row[0])

    def delete_tag(self, repository, tag):
        return self._write(self._delete_tag, repository, tag)

    def _delete_tag(self, db, repository, tag):
        return db.execute("DELETE FROM tags WHERE repository = ? AND tag = ?", repository, tag) > 0

    def list_tags(self, repository, limit=None, last=None):
        return self._read(self._list_tags, repository, limit, last)

    def _list_tags(self, db, repository, limit, last):
        schema.check_limit(limit)
        if db.one("SELECT 1 FROM manifests WHERE repository = ? LIMIT 1", repository) is None:
            return None
        where, params = "repository = ?", [repository]
        if last is not None:
            where += " AND tag > ?"
            params.append(last)
        rows = db.all(f"SELECT tag FROM tags WHERE {where} ORDER BY tag" + _limit(limit), *params)
        return [_text(tag) for (tag,) in rows]

    def list_repositories(self, limit=None, last=None):
        return self._read(self._list_repositories, limit, last)

    def _list_repositories(self, db, limit, last):
        schema.check_limit(limit)
        where, params = "", []
        if last is not None:
            where, params = " WHERE repository > ?", [last]
        rows = db.all(
            f"SELECT DISTINCT repository FROM manifests{where}"
            " ORDER BY repository" + _limit(limit),
            *params)
        return [_text(repository) for (repository,) in rows]

    def referrers(self, repository, digest, artifact_type=None):
        return self._read(self._referrers, repository, digest, artifact_type)

    def _referrers(self, db, repository, digest, artifact_type):
        where, params = "repository = ? AND subject = ?", [repository, digest]
        if artifact_type is not None:
            where += " AND artifact_type = ?"
            params.append(artifact_type)
        rows = db.all(f"SELECT {_MANIFEST} FROM manifests WHERE {where} ORDER BY digest", *params)
        return [_manifest(row) for row in rows]

    # IUploadTables -----------------------------------------------------------

    def create_upload(self, record):
        return self._write(self._create_upload, record, self._now())

    def _create_upload(self, db, record, now):
        schema.check_upload(record)
        if self._get_upload(db, record.upload_id, lock=True) is not None:
            raise BadRequest(f"upload {record.upload_id!r} already exists")
        created = record.created or now
        db.execute(
            f"INSERT INTO uploads ({_UPLOAD}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            record.upload_id, record.repository, record.offset, _dump_chunks(record.chunks),
            record.hash_algorithm, record.hash_state, created, record.updated or created)

    def get_upload(self, upload_id):
        return self._read(self._get_upload, upload_id)

    def _get_upload(self, db, upload_id, lock=False):
        row = db.one(f"SELECT {_UPLOAD} FROM uploads WHERE upload_id = ?"
                     + (self.dialect.for_update if lock else ""), upload_id)
        return None if row is None else _upload(row)

    def update_upload(self, record, expected_offset, adopted=()):
        d = self._write(self._update_upload, record, expected_offset, list(adopted), self._now())

        def intent_gone(failure):
            failure.trap(IntentExpired)
            return False
        return d.addErrback(intent_gone)

    def _update_upload(self, db, record, expected_offset, adopted, now):
        schema.check_upload(record)
        schema.check_chunks(adopted)
        if db.execute(
                "UPDATE uploads SET upload_offset = ?, chunks = ?, hash_algorithm = ?,"
                " hash_state = ?, updated = ? WHERE upload_id = ? AND upload_offset = ?",
                record.offset, _dump_chunks(record.chunks), record.hash_algorithm,
                record.hash_state, record.updated or now, record.upload_id,
                expected_offset) != 1:
            return False
        self._adopt(db, adopted, f"upload {record.upload_id}")  # rolls the update back
        return True

    def _adopt(self, db, adopted, owner):
        """
        Remove the intents of the chunks C{adopted}: C{owner} takes them
        over in this transaction.

        @raise IntentExpired: one of them is gone (expired into the garbage
            table): the transaction rolls back, whatever it wrote.
        """
        schema.check_chunks(adopted)
        missing = [(chunk.group_id, chunk.file_id) for chunk in adopted
                   if db.execute("DELETE FROM chunk_intents WHERE group_id = ? AND file_id = ?",
                                 chunk.group_id, chunk.file_id) != 1]
        if missing:
            raise schema.intent_expired(owner, missing)

    def delete_upload(self, upload_id, expected_offset=None, chunks_to=None, reason=None):
        return self._write(self._delete_upload, upload_id, expected_offset, chunks_to,
                           f"upload {upload_id}" if reason is None else reason, self._now())

    def _delete_upload(self, db, upload_id, expected_offset, chunks_to, reason, now):
        schema.check_chunks_to(chunks_to)
        schema.check_reason(reason)
        deleted = self._get_upload(db, upload_id, lock=True)
        if deleted is None or (expected_offset is not None and deleted.offset != expected_offset):
            return None
        db.execute("DELETE FROM uploads WHERE upload_id = ?", upload_id)
        if chunks_to is not None:
            table = "garbage" if chunks_to == "garbage" else "chunk_intents"
            self._record_chunks(db, table, list(deleted.chunks), reason, now)
        return deleted

    def stale_uploads(self, updated_before, limit=100):
        return self._read(self._stale_uploads, updated_before, limit)

    def _stale_uploads(self, db, updated_before, limit):
        schema.check_limit(limit)
        rows = db.all(
            f"SELECT {_UPLOAD} FROM uploads WHERE updated < ? ORDER BY updated, upload_id"
            + _limit(limit), updated_before)
        return [_upload(row) for row in rows]

    def count_uploads(self):
        return self._read(self._count_uploads)

    def _count_uploads(self, db):
        sessions, received = db.one("SELECT COUNT(*), COALESCE(SUM(upload_offset), 0) FROM uploads")
        return int(sessions), int(received)

    # IV1Tables ---------------------------------------------------------------

    def put_v1_image(self, record):
        return self._write(self._put_v1_image, record, self._now())

    def _put_v1_image(self, db, record, now):
        schema.check_v1_image(record)
        existing = self._get_v1_image(db, record.image_id, self.dialect.for_update)
        if existing is not None and existing.complete:
            return existing
        if record.parent is not None and self._get_v1_image(
                db, record.parent, self.dialect.for_share) is None:
            raise ReferencesMissing([record.parent])
        if existing is not None:
            self._record_chunks(db, "garbage", list(existing.chunks),
                                f"v1-image {record.image_id} pushed again", now)
        db.execute(
            self.dialect.upsert("v1_images", _V1_IMAGE, ["image_id"]),
            record.image_id, bytes(record.json), record.parent,
            _dump_json(list(record.ancestry)), None, _dump_chunks(()), None, False,
            record.created or now)
        return existing

    def get_v1_image(self, image_id):
        return self._read(self._get_v1_image, image_id)

    def _get_v1_image(self, db, image_id, lock=""):
        row = db.one(f"SELECT {_V1_IMAGE} FROM v1_images WHERE image_id = ?" + lock, image_id)
        return None if row is None else _v1_image(row)

    def set_v1_layer(self, image_id, json, size, chunks, checksum, adopted=()):
        return self._write(self._set_v1_layer, image_id, json, size, tuple(chunks), checksum,
                           list(adopted), self._now())

    def _set_v1_layer(self, db, image_id, json_, size, chunks, checksum, adopted, now):
        schema.check_v1_layer(image_id, json_, size, chunks, checksum)
        image = self._get_v1_image(db, image_id, self.dialect.for_update)
        if image is None or image.complete or image.json != json_:
            return None
        self._adopt(db, adopted, f"v1-image {image_id}")
        self._record_chunks(db, "garbage", list(image.chunks),
                            f"v1-image {image_id}: layer replaced", now)
        db.execute("UPDATE v1_images SET size = ?, chunks = ?, checksum = ? WHERE image_id = ?",
                   size, _dump_chunks(chunks), checksum, image_id)
        return image

    def clear_v1_layer(self, image_id, chunks, reason=None):
        return self._write(
            self._clear_v1_layer, image_id, tuple(chunks),
            f"v1-image {image_id}: layer cleared" if reason is None else reason, self._now())

    def _clear_v1_layer(self, db, image_id, chunks, reason, now):
        schema.check_chunks(chunks)
        schema.check_reason(reason)
        image = self._get_v1_image(db, image_id, self.dialect.for_update)
        if image is None or image.complete or image.size is None or image.chunks != chunks:
            return False
        self._record_chunks(db, "garbage", list(chunks), reason, now)
        db.execute("UPDATE v1_images SET size = NULL, chunks = ?, checksum = NULL"
                   " WHERE image_id = ?", _dump_chunks(()), image_id)
        return True

    def complete_v1_image(self, image_id, checksum):
        return self._write(self._complete_v1_image, image_id, checksum)

    def _complete_v1_image(self, db, image_id, checksum):
        return db.execute(
            "UPDATE v1_images SET complete = ? WHERE image_id = ? AND complete = ?"
            " AND checksum = ?", True, image_id, False, checksum) == 1

    def stale_v1_layers(self, created_before, limit=100):
        return self._read(self._stale_v1_layers, created_before, limit)

    def _stale_v1_layers(self, db, created_before, limit):
        schema.check_limit(limit)
        # A scan: V1 images are few, and this runs every few minutes.
        rows = db.all(
            f"SELECT {_V1_IMAGE} FROM v1_images WHERE complete = ? AND size IS NOT NULL"
            " AND created < ? ORDER BY created, image_id" + _limit(limit), False, created_before)
        return [_v1_image(row) for row in rows]

    def v1_summary(self):
        return self._read(self._v1_summary)

    def _v1_summary(self, db):
        (repositories,) = db.one("SELECT COUNT(*) FROM v1_repositories")
        (tags,) = db.one("SELECT COUNT(*) FROM v1_tags")
        summary = {"repositories": int(repositories), "tags": int(tags)}
        for complete, count, layers, size in db.all(
                "SELECT complete, COUNT(*), COUNT(size), COALESCE(SUM(size), 0) FROM v1_images"
                " GROUP BY complete"):
            if complete:
                summary["images"], summary["layer_bytes"] = int(count), int(size)
            else:
                summary["unfinished"] = int(count)
                summary["unfinished_layers"], summary["unfinished_layer_bytes"] = int(layers), int(size)
        for key in ("images", "layer_bytes", "unfinished", "unfinished_layers",
                    "unfinished_layer_bytes"):
            summary.setdefault(key, 0)
        return summary

    def _v1_repository(self, db, name, now, lock=""):
        """@return: the L{V1RepositoryRecord} C{name}, or None; with C{now},
        created empty if needed."""
        row = db.one("SELECT name, images, created FROM v1_repositories WHERE name = ?" + lock,
                     name)
        if row is not None:
            return V1RepositoryRecord(_text(row[0]), tuple(json.loads(row[1])), float(row[2]))
        if now is None:
            return None
        db.execute(self.dialect.insert_new("v1_repositories", "name, images, created", ["name"]),
                   name, _dump_json([]), now)
        return self._v1_repository(db, name, None, lock)

    def put_v1_index(self, repository, images):
        return self._write(self._put_v1_index, repository, list(images), self._now())

    def _put_v1_index(self, db, repository, images, now):
        schema.check_repository(repository)
        schema.check_v1_index(images)
        record = self._v1_repository(db, repository, now, self.dialect.for_update)
        merged = schema.merge_v1_index(images, record.images)
        db.execute("UPDATE v1_repositories SET images = ? WHERE name = ?",
                   _dump_json(merged), repository)
        return V1RepositoryRecord(record.name, tuple(json.loads(_dump_json(merged))),
                                  record.created)

    def get_v1_repository(self, repository):
        return self._read(self._v1_repository, repository, None)

    def put_v1_tag(self, record):
        return self._write(self._put_v1_tag, record, self._now())

    def _put_v1_tag(self, db, record, now):
        schema.check_v1_tag(record)
        if self._get_v1_image(db, record.image_id, self.dialect.for_share) is None:
            raise ReferencesMissing([record.image_id])
        self._v1_repository(db, record.repository, now)
        db.execute(
            self.dialect.upsert("v1_tags", _V1_TAG, ["repository", "tag"]),
            record.repository, record.tag, record.image_id, _dump_json(record.properties),
            record.created or now)

    def get_v1_tag(self, repository, tag):
        return self._read(self._get_v1_tag, repository, tag)

    def _get_v1_tag(self, db, repository, tag):
        row = db.one(f"SELECT {_V1_TAG} FROM v1_tags WHERE repository = ? AND tag = ?",
                     repository, tag)
        return None if row is None else _v1_tag(row)

    def list_v1_tags(self, repository):
        return self._read(self._list_v1_tags, repository)

    def _list_v1_tags(self, db, repository):
        if self._v1_repository(db, repository, None) is None:
            return None
        rows = db.all(f"SELECT {_V1_TAG} FROM v1_tags WHERE repository = ? ORDER BY tag",
                      repository)
        return [_v1_tag(row) for row in rows]

    def delete_v1_tag(self, repository, tag):
        return self._write(self._delete_v1_tag, repository, tag)

    def _delete_v1_tag(self, db, repository, tag):
        return db.execute(
            "DELETE FROM v1_tags WHERE repository = ? AND tag = ?", repository, tag) > 0

    def delete_v1_repository(self, repository):
        return self._write(self._delete_v1_repository, repository)

    def _delete_v1_repository(self, db, repository):
        if not db.execute("DELETE FROM v1_repositories WHERE name = ?", repository):
            return False
        db.execute("DELETE FROM v1_tags WHERE repository = ?", repository)
        return True

    def search_v1_repositories(self, text, limit=None):
        return self._read(self._search_v1_repositories, text, limit)

    def _search_v1_repositories(self, db, text, limit):
        schema.check_limit(limit)
        if not isinstance(text, str):
            raise BadRequest(f"search text must be a string, not {text!r}")
        # A scan of the V1 repositories' names: V1 search is a substring
        # match, which no index serves; V1 repositories are few.
        rows = db.all("SELECT name FROM v1_repositories WHERE INSTR(name, ?) > 0 ORDER BY name"
                      + _limit(limit), text)
        return [_text(name) for (name,) in rows]

    # IGarbageTables ----------------------------------------------------------

    def record_garbage(self, chunks, reason):
        return self._write(self._record_garbage, list(chunks), reason, self._now())

    def _record_garbage(self, db, chunks, reason, now):
        self._record_chunks(db, "garbage", chunks, reason, now)

    def _record_chunks(self, db, table, chunks, reason, now):
        """Insert C{chunks} into C{table} (C{garbage} or C{chunk_intents},
        whose columns are the same), keeping the rows already there."""
        schema.check_chunks(chunks)
        schema.check_reason(reason)
        insert = self.dialect.insert_new(table, _GARBAGE, ["group_id", "file_id"])
        for chunk in chunks:
            db.execute(insert, chunk.group_id, chunk.file_id, chunk.size, chunk.crc32c,
                       reason, now)

    def list_garbage(self, limit=1000, after=None):
        return self._read(self._list_garbage, limit, after)

    def _list_garbage(self, db, limit, after):
        schema.check_limit(limit)
        where, args = "", ()
        if after is not None:
            where = (" WHERE recorded > ? OR (recorded = ? AND (group_id > ?"
                     " OR (group_id = ? AND file_id > ?)))")
            args = (after.recorded, after.recorded, after.chunk.group_id,
                    after.chunk.group_id, after.chunk.file_id)
        rows = db.all(f"SELECT {_GARBAGE} FROM garbage{where}"
                      " ORDER BY recorded, group_id, file_id" + _limit(limit), *args)
        return [_garbage(row) for row in rows]

    def record_intents(self, chunks, reason):
        return self._write(self._record_intents, list(chunks), reason, self._now())

    def _record_intents(self, db, chunks, reason, now):
        self._record_chunks(db, "chunk_intents", chunks, reason, now)

    def list_intents(self, limit=1000):
        return self._read(self._list_intents, limit)

    def _list_intents(self, db, limit):
        schema.check_limit(limit)
        rows = db.all(f"SELECT {_GARBAGE} FROM chunk_intents"
                      " ORDER BY recorded, group_id, file_id" + _limit(limit))
        return [_garbage(row) for row in rows]

    def expire_intents(self, recorded_before, limit=1000):
        return self._write(self._expire_intents, recorded_before, limit)

    def _expire_intents(self, db, recorded_before, limit):
        schema.check_limit(limit)
        rows = db.all(f"SELECT {_GARBAGE} FROM chunk_intents WHERE recorded < ?"
                      " ORDER BY recorded, group_id, file_id" + _limit(limit), recorded_before)
        insert = self.dialect.insert_new("garbage", _GARBAGE, ["group_id", "file_id"])
        moved = 0
        for group_id, file_id, size, crc32c, reason, recorded in rows:
            # Only if this transaction removed it: an upload that took the
            # chunk over meanwhile removed it first, and keeps it.
            if db.execute("DELETE FROM chunk_intents WHERE group_id = ? AND file_id = ?",
                          group_id, file_id) == 1:
                db.execute(insert, group_id, file_id, size, crc32c,
                           f"never handed over: {_text(reason)}", recorded)
                moved += 1
        return moved

    def forget_garbage(self, chunks):
        return self._write(self._forget_garbage, list(chunks))

    def _forget_garbage(self, db, chunks):
        schema.check_chunks(chunks)
        for chunk in chunks:
            db.execute("DELETE FROM garbage WHERE group_id = ? AND file_id = ?",
                       chunk.group_id, chunk.file_id)

    # ISweepTables: the mark and sweep of the registry's tables ---------------
    #
    # A blob is garbage when no manifest references it, it is older than
    # the horizon, no repository linked it after the horizon, and no
    # repository that links it has an upload in progress; a manifest (under
    # a policy) when no tag names it, no manifest of its repository lists
    # it, it is older than the horizon and its subject (if any) is not in
    # its repository.  Marks read these with plain reads; sweeps read them
    # again with locking reads under the row's exclusive lock, in the
    # transaction that deletes (docs/gc.md).

    _GARBAGE_BLOB = (
        "b.created <= ?"
        " AND NOT EXISTS (SELECT 1 FROM manifest_refs r WHERE r.digest = b.digest)"
        " AND NOT EXISTS (SELECT 1 FROM blob_links l WHERE l.digest = b.digest AND l.linked > ?)"
        " AND NOT EXISTS (SELECT 1 FROM blob_links l JOIN uploads u"
        " ON u.repository = l.repository WHERE l.digest = b.digest)")

    def unreferenced_blobs(self, horizon, limit=1000, after=None):
        return self._read(self._unreferenced_blobs, horizon, limit, after)

    def _unreferenced_blobs(self, db, horizon, limit, after):
        schema.check_limit(limit)
        where, params = "", ()
        if after is not None:
            where, params = " AND b.digest > ?", (after,)
        rows = db.all(
            f"SELECT b.digest, b.size, b.chunks, b.created FROM blobs b"
            f" WHERE {self._GARBAGE_BLOB}{where} ORDER BY b.digest" + _limit(limit),
            horizon, horizon, *params)
        return [_blob(row) for row in rows]

    def collect_blobs(self, digests, horizon):
        return self._write(self._collect_blobs, sorted(set(digests)), horizon, self._now())

    def _collect_blobs(self, db, digests, horizon, now):
        """
        Each blob's row is locked exclusively first: a L{_link_blob} or a
        L{_put_manifest} that needs the blob locks it shared, so it either
        committed before (and the locking reads below see its link or its
        reference) or waits for this commit (and finds the blob gone).
        """
        share = self.dialect.for_share
        collected = []
        for digest in digests:
            schema.check_digest(digest)
            blob = self._get_blob(db, digest, self.dialect.for_update)
            if (blob is None or blob.created > horizon
                    or db.one("SELECT 1 FROM manifest_refs WHERE digest = ? LIMIT 1" + share,
                              digest) is not None
                    or db.one("SELECT 1 FROM blob_links WHERE digest = ? AND linked > ? LIMIT 1"
                              + share, digest, horizon) is not None
                    or db.one("SELECT 1 FROM blob_links l JOIN uploads u"
                              " ON u.repository = l.repository WHERE l.digest = ? LIMIT 1"
                              + share, digest) is not None):
                continue
            db.execute("DELETE FROM blob_links WHERE digest = ?", digest)
            db.execute("DELETE FROM blobs WHERE digest = ?", digest)
            self._record_garbage(db, list(blob.chunks), f"blob {digest} collected", now)
            collected.append(blob)
        return collected

    @staticmethod
    def _garbage_manifest(untagged, orphans):
        """@return: the SQL condition on a manifest's row C{m} under these
        policies (one C{?}: the horizon), or None when both are off."""
        missing_subject = ("NOT EXISTS (SELECT 1 FROM manifests s"
                           " WHERE s.repository = m.repository AND s.digest = m.subject)")
        if untagged:
            subject = f"(m.subject IS NULL OR {missing_subject})"
        elif orphans:
            subject = f"m.subject IS NOT NULL AND {missing_subject}"
        else:
            return None
        return ("m.created <= ?"
                " AND NOT EXISTS (SELECT 1 FROM tags t"
                " WHERE t.repository = m.repository AND t.digest = m.digest)"
                " AND NOT EXISTS (SELECT 1 FROM manifest_refs r"
                " WHERE r.digest = m.digest AND r.repository = m.repository)"
                f" AND {subject}")

    def unkept_manifests(self, horizon, untagged=False, orphans=False, limit=1000, after=None):
        return self._read(self._unkept_manifests, horizon, untagged, orphans, limit, after)

    def _unkept_manifests(self, db, horizon, untagged, orphans, limit, after):
        schema.check_limit(limit)
        condition = self._garbage_manifest(untagged, orphans)
        if condition is None:
            return []
        where, params = "", ()
        if after is not None:
            where = " AND (m.repository > ? OR (m.repository = ? AND m.digest > ?))"
            params = (after[0], after[0], after[1])
        rows = db.all(
            f"SELECT m.repository, m.digest FROM manifests m WHERE {condition}{where}"
            " ORDER BY m.repository, m.digest" + _limit(limit), horizon, *params)
        return [(_text(repository), _text(digest)) for repository, digest in rows]

    def collect_manifests(self, keys, horizon, untagged=False, orphans=False):
        return self._write(self._collect_manifests, sorted(set(map(tuple, keys))), horizon,
                           untagged, orphans)

    def _collect_manifests(self, db, keys, horizon, untagged, orphans):
        """
        Each manifest's row is locked exclusively first: a put of it (a tag
        PUT too) writes the row, and a put of an index that lists it locks
        it shared, so either committed before (and the locking reads below,
        which see the latest commit, not a snapshot, find its tag or its
        reference) or waits for this commit (and finds it gone).
        """
        if not (untagged or orphans):
            return []
        share = self.dialect.for_share
        collected = []
        for repository, digest in keys:
            row = db.one("SELECT created, subject FROM manifests WHERE repository = ?"
                         " AND digest = ?" + self.dialect.for_update, repository, digest)
            if row is None or float(row[0]) > horizon:
                continue
            subject = _text(row[1])
            if subject is None and not untagged:
                continue
            if (db.one("SELECT 1 FROM tags WHERE repository = ? AND digest = ? LIMIT 1" + share,
                       repository, digest) is not None
                    or db.one("SELECT 1 FROM manifest_refs WHERE digest = ? AND repository = ?"
                              " LIMIT 1" + share, digest, repository) is not None
                    or (subject is not None and db.one(
                        "SELECT 1 FROM manifests WHERE repository = ? AND digest = ?" + share,
                        repository, subject) is not None)):
                continue
            self._delete_manifest(db, repository, digest)
            collected.append((repository, digest))
        return collected

    def garbage_after(self, gone, horizon, untagged=False, orphans=False):
        return self._read(self._garbage_after, sorted(set(map(tuple, gone))), horizon,
                          untagged, orphans)

    def _garbage_after(self, db, gone, horizon, untagged, orphans):
        """
        Only what C{gone} list or are the subject of can become garbage
        when they go: those are the candidates, each checked against the
        conditions of L{_GARBAGE_BLOB} and L{_garbage_manifest} with the
        manifests of C{gone} counted as deleted (plain reads, per row).
        """
        policies = untagged or orphans
        gone_set = set(gone)
        listed, referrers = set(), set()
        for repository, digest in gone:
            schema.check_repository(repository)
            schema.check_digest(digest)
            for (target,) in db.all("SELECT digest FROM manifest_refs"
                                    " WHERE repository = ? AND manifest = ?", repository, digest):
                listed.add((repository, _text(target)))
            if policies:
                for (referrer,) in db.all("SELECT digest FROM manifests"
                                          " WHERE repository = ? AND subject = ?",
                                          repository, digest):
                    referrers.add((repository, _text(referrer)))
        keys = []
        for key in sorted((listed | referrers) - gone_set if policies else ()):
            if self._garbage_once_gone(db, key, gone_set, horizon, untagged):
                keys.append(key)
        blobs = []
        for digest in sorted({digest for _, digest in listed}):
            blob = self._get_blob(db, digest)
            if (blob is None or blob.created > horizon
                    or any((_text(repository), _text(manifest)) not in gone_set
                           for repository, manifest in db.all(
                               "SELECT repository, manifest FROM manifest_refs WHERE digest = ?",
                               digest))
                    or db.one("SELECT 1 FROM blob_links WHERE digest = ? AND linked > ? LIMIT 1",
                              digest, horizon) is not None
                    or db.one("SELECT 1 FROM blob_links l JOIN uploads u"
                              " ON u.repository = l.repository WHERE l.digest = ? LIMIT 1",
                              digest) is not None):
                continue
            blobs.append(blob)
        return keys, blobs

    def _garbage_once_gone(self, db, key, gone, horizon, untagged):
        """@return: True if the manifest C{key} is garbage under the
        policies (C{untagged}, else only C{orphans}) once the manifests
        C{gone} are deleted."""
        repository, digest = key
        row = db.one("SELECT created, subject FROM manifests WHERE repository = ?"
                     " AND digest = ?", repository, digest)
        if row is None or float(row[0]) > horizon:
            return False
        subject = _text(row[1])
        if subject is None and not untagged:
            return False
        if db.one("SELECT 1 FROM tags WHERE repository = ? AND digest = ? LIMIT 1",
                  repository, digest) is not None:
            return False
        if any((repository, _text(manifest)) not in gone for (manifest,) in db.all(
                "SELECT manifest FROM manifest_refs WHERE digest = ? AND repository = ?",
                digest, repository)):
            return False
        return (subject is None or (repository, subject) in gone
                or db.one("SELECT 1 FROM manifests WHERE repository = ? AND digest = ?",
                          repository, subject) is None)

    # IRepairTables -----------------------------------------------------------

    def record_bad_replica(self, bad):
        return self._write(self._record_bad_replica, bad, self._now())

    def _record_bad_replica(self, db, bad, now):
        schema.check_bad_replica(bad)
        db.execute(
            self.dialect.upsert("bad_replicas", _BAD_REPLICA, ["server_id", "file_id"]),
            bad.server_id, bad.group_id, bad.file_id, bad.reason, bad.recorded or now)

    def list_bad_replicas(self, limit=1000):
        return self._read(self._list_bad_replicas, limit)

    def _list_bad_replicas(self, db, limit):
        schema.check_limit(limit)
        rows = db.all(
            f"SELECT {_BAD_REPLICA} FROM bad_replicas ORDER BY recorded, server_id, file_id"
            + _limit(limit))
        return [_bad_replica(row) for row in rows]

    def forget_bad_replica(self, server_id, file_id):
        return self._write(self._forget_bad_replica, server_id, file_id)

    def _forget_bad_replica(self, db, server_id, file_id):
        return db.execute("DELETE FROM bad_replicas WHERE server_id = ? AND file_id = ?",
                          server_id, file_id) > 0

    def count_bad_replicas(self):
        return self._read(self._count_bad_replicas)

    def _count_bad_replicas(self, db):
        return db.one("SELECT COUNT(*) FROM bad_replicas")[0]

    def referenced_chunks(self):
        return self._read(self._referenced_chunks)

    def _referenced_chunks(self, db):
        found = []
        for kind, query in (("file", "SELECT path, chunks FROM files ORDER BY path"),
                            ("blob", "SELECT digest, chunks FROM blobs ORDER BY digest"),
                            ("upload", "SELECT upload_id, chunks FROM uploads ORDER BY upload_id"),
                            ("v1-image", "SELECT image_id, chunks FROM v1_images ORDER BY image_id")):
            for name, chunks in db.all(query):
                found.extend((f"{kind} {_text(name)}", chunk) for chunk in _load_chunks(chunks))
        return found

    # ITransferTables ----------------------------------------------------------

    def put_transfer(self, record):
        return self._write(self._put_transfer, record, self._now())

    def _put_transfer(self, db, record, now):
        schema.check_transfer(record)
        stored = attrs.evolve(record, target_groups=tuple(record.target_groups),
                              created=record.created or now, updated=now)
        db.execute(self.dialect.upsert("transfers", _TRANSFER, ["transfer_id"]),
                   stored.transfer_id, stored.kind, stored.source_group,
                   _dump_json(list(stored.target_groups)), stored.state, stored.byte_budget,
                   stored.chunks_done, stored.bytes_done, stored.chunks_left, stored.created,
                   stored.updated)
        return stored

    def get_transfer(self, transfer_id):
        return self._read(self._get_transfer, transfer_id)

    def _get_transfer(self, db, transfer_id):
        row = db.one(f"SELECT {_TRANSFER} FROM transfers WHERE transfer_id = ?", transfer_id)
        return None if row is None else _transfer(row)

    def list_transfers(self):
        return self._read(self._list_transfers)

    def _list_transfers(self, db):
        rows = db.all(f"SELECT {_TRANSFER} FROM transfers ORDER BY created, transfer_id")
        return [_transfer(row) for row in rows]

    def record_move(self, move):
        return self._write(self._record_move, move)

    def _record_move(self, db, move):
        schema.check_move(move)
        if db.one("SELECT 1 FROM chunk_moves WHERE group_id = ? AND file_id = ?",
                  move.old.group_id, move.old.file_id) is not None:
            raise BadRequest(f"chunk {move.old.file_id} of group {move.old.group_id} "
                             "is on the move already")
        db.execute(f"INSERT INTO chunk_moves ({_MOVE}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                   move.old.group_id, move.old.file_id, move.old.size, move.old.crc32c,
                   move.new.group_id, move.new.file_id, move.transfer_id, move.switched)

    def list_moves(self, transfer_id=None, switched=None, switched_before=None, limit=None):
        return self._read(self._list_moves, transfer_id, switched, switched_before, limit)

    def _list_moves(self, db, transfer_id, switched, switched_before, limit):
        schema.check_limit(limit)
        where, params = [], []
        if transfer_id is not None:
            where.append("transfer_id = ?")
            params.append(transfer_id)
        if switched is not None:
            where.append("switched IS NOT NULL" if switched else "switched IS NULL")
        if switched_before is not None:
            where.append("switched < ?")
            params.append(switched_before)
        clause = (" WHERE " + " AND ".join(where)) if where else ""
        rows = db.all(f"SELECT {_MOVE} FROM chunk_moves{clause} ORDER BY group_id, file_id"
                      + _limit(limit), *params)
        return [_move(row) for row in rows]

    def switch_moves(self, moves):
        return self._write(self._switch_moves, list(moves), self._now())

    def _switch_moves(self, db, moves, now):
        for move in moves:
            schema.check_move(move)
        new = {(m.old.group_id, m.old.file_id): m.new for m in moves}
        rewritten = 0
        # Each chunk list that names a moving chunk, found by its entry's
        # bytes (a scan: chunk lists have no index by chunk).
        for table, key in _CHUNK_LISTS:
            owners = set()
            for move in moves:
                rows = db.all(f"SELECT {key} FROM {table} WHERE INSTR(chunks, ?) > 0",
                              chunk_pattern(move.old))
                owners.update(row[0] for row in rows)
            for owner in sorted(owners):
                row = db.one(f"SELECT chunks FROM {table} WHERE {key} = ?" + self.dialect.for_update,
                             owner)
                if row is None:
                    continue
                chunks = _load_chunks(row[0])
                switched = tuple(new.get((c.group_id, c.file_id), c) for c in chunks)
                changed = sum(a is not b for a, b in zip(chunks, switched))
                if changed:
                    db.execute(f"UPDATE {table} SET chunks = ? WHERE {key} = ?",
                               _dump_chunks(switched), owner)
                    rewritten += changed
        for move in moves:
            db.execute("UPDATE chunk_moves SET switched = COALESCE(switched, ?) "
                       "WHERE group_id = ? AND file_id = ?",
                       now, move.old.group_id, move.old.file_id)
        return rewritten

    def forget_moves(self, moves):
        return self._write(self._forget_moves, list(moves))

    def _forget_moves(self, db, moves):
        for move in moves:
            db.execute("DELETE FROM chunk_moves WHERE group_id = ? AND file_id = ?",
                       move.old.group_id, move.old.file_id)
