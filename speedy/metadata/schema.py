# -*- test-case-name: speedy.test.test_metadata_schema -*-
"""
The metadata store's tables: the limits every implementation enforces on
what it is given, and the numbered migrations that build the tables in
SQLite and in MySQL/MariaDB.

Limits (characters unless said otherwise; checked before anything is
written, so no database ever truncates a value):

    ===================  =====  ==========================================
    value                limit  column
    ===================  =====  ==========================================
    repository name      255    C{VARBINARY(1020)} (255 UTF-8 characters)
    tag                  128    C{VARBINARY(512)}
    digest               135    C{VARBINARY(135)} (C{sha512:} + 128 hex)
    file path            1024   UTF-8 bytes, C{VARBINARY(1024)}
    server id            128    C{VARBINARY(512)}
    address, media type  255    C{VARBINARY(1020)}
    upload id            128    C{VARBINARY(512)}
    hash algorithm       32     C{VARBINARY(128)}
    V1 image id          64     C{VARBINARY(64)}
    V1 checksum          135    C{VARBINARY(135)}
    ===================  =====  ==========================================

Names are stored as their UTF-8 bytes (C{VARBINARY} on MySQL, C{TEXT} with
SQLite's byte-wise C{BINARY} collation), so equality is exact and order is
code point order, the same as Python's C{str} order.  Chunk lists are the
JSON of L{ChunkRef.to_json} lists, in a C{LONGBLOB}; manifest bytes and
hash states are C{LONGBLOB}s, kept byte-exact.

Migrations are a list of C{(version, statements)} steps per dialect; the
table C{schema_version} holds the number of the last step applied.
L{migrate} applies the missing steps in order while holding a lock that
keeps two processes from migrating at once (C{BEGIN IMMEDIATE} on SQLite,
where DDL is transactional; C{GET_LOCK} on MySQL, where DDL commits by
itself and every statement is written to be re-run safely).
"""

from speedy.errors import BadRequest, IntentExpired, Internal, ReferencesMissing, SizeMismatch
from speedy.records import SERVER_STATES, TRANSFER_KINDS, TRANSFER_STATES, ChunkRef

MAX_REPOSITORY = 255
MAX_TAG = 128
MAX_DIGEST = len("sha512:") + 128
MAX_PATH_BYTES = 1024
MAX_SERVER_ID = 128
MAX_ADDRESS = 255
MAX_MEDIA_TYPE = 255
MAX_UPLOAD_ID = 128
MAX_HASH_ALGORITHM = 32
MAX_V1_IMAGE_ID = 64
MAX_V1_CHECKSUM = MAX_DIGEST

#: Members a replica group may have.
GROUP_SIZE = 3

#: The largest id range one L{allocate_file_ids} call may reserve.
MAX_FILE_ID_COUNT = 1 << 32

_INT64 = 1 << 63


# --- validation --------------------------------------------------------------


def check_text(value, what, limit):
    """
    @raise BadRequest: C{value} is not a non-empty C{str} of at most
        C{limit} characters that UTF-8 can encode.
    """
    if not isinstance(value, str) or not value:
        raise BadRequest(f"{what} must be a non-empty string, not {value!r}")
    if len(value) > limit:
        raise BadRequest(f"{what} is longer than {limit} characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequest(f"{what} is not valid Unicode: {value!r}") from None


def check_optional_text(value, what, limit):
    """Like L{check_text}, but None is allowed too."""
    if value is not None:
        check_text(value, what, limit)


def check_int(value, what, minimum=0):
    """
    @raise BadRequest: C{value} is not an C{int} (C{bool} excluded) between
        C{minimum} and the largest signed 64-bit integer.
    """
    if type(value) is not int or not minimum <= value < _INT64:
        raise BadRequest(f"{what} must be an integer >= {minimum}, not {value!r}")


def check_limit(limit):
    """@raise BadRequest: C{limit} is neither None nor an integer >= 0."""
    if limit is not None:
        check_int(limit, "limit")


def check_path(path):
    """@raise BadRequest: C{path} is not a usable file path."""
    check_text(path, "path", MAX_PATH_BYTES)
    if len(path.encode("utf-8")) > MAX_PATH_BYTES:
        raise BadRequest(f"path is longer than {MAX_PATH_BYTES} UTF-8 bytes")


def check_prefix(prefix, after):
    """@raise BadRequest: C{prefix} is not a string, or C{after} neither a
        string nor None."""
    if not isinstance(prefix, str):
        raise BadRequest(f"prefix must be a string, not {prefix!r}")
    if after is not None and not isinstance(after, str):
        raise BadRequest(f"after must be a string, not {after!r}")


def check_repository(repository):
    check_text(repository, "repository", MAX_REPOSITORY)


def check_digest(digest, what="digest"):
    check_text(digest, what, MAX_DIGEST)


def check_chunks(chunks):
    """@raise BadRequest: C{chunks} holds something other than L{ChunkRef}s."""
    for chunk in chunks:
        if not isinstance(chunk, ChunkRef):
            raise BadRequest(f"chunks must be ChunkRefs, not {chunk!r}")
        check_int(chunk.group_id, "group id")
        check_int(chunk.file_id, "file id")
        check_int(chunk.size, "chunk size")
        check_int(chunk.crc32c, "chunk crc32c")


def check_server(server):
    check_text(server.server_id, "server id", MAX_SERVER_ID)
    check_text(server.address, "address", MAX_ADDRESS)
    check_int(server.group_id, "group id")
    if server.state not in SERVER_STATES:
        raise BadRequest(f"unknown server state {server.state!r}")
    for what in ("capacity", "used", "free"):
        check_int(getattr(server, what), what)
    if not isinstance(server.load, dict):
        raise BadRequest("load must be a dict")


def check_server_placement(server, others):
    """
    @param others: the stored servers other than C{server} (at least those
        that share its address or its group).
    @raise BadRequest: one of C{others} has C{server}'s address, or its
        group already has L{GROUP_SIZE} other members.
    """
    for other in others:
        if other.address == server.address:
            raise BadRequest(
                f"server {other.server_id!r} already has address {server.address!r}")
    members = [other for other in others if other.group_id == server.group_id]
    if len(members) >= GROUP_SIZE:
        raise BadRequest(f"group {server.group_id} already has {GROUP_SIZE} members")


def check_group(group):
    check_int(group.group_id, "group id")


def check_file_id_count(count):
    check_int(count, "count", minimum=1)
    if count > MAX_FILE_ID_COUNT:
        raise BadRequest(f"count must be at most {MAX_FILE_ID_COUNT}")


def check_file(record):
    check_path(record.path)
    check_int(record.size, "size")
    check_chunks(record.chunks)
    check_optional_text(record.sha256, "sha256", 64)


def check_blob(record):
    check_digest(record.digest)
    check_int(record.size, "size")
    check_chunks(record.chunks)


def check_manifest(record, tags):
    check_repository(record.repository)
    check_digest(record.digest)
    check_text(record.media_type, "media type", MAX_MEDIA_TYPE)
    if not isinstance(record.content, (bytes, bytearray, memoryview)):
        raise BadRequest("manifest content must be bytes")
    check_optional_text(record.subject, "subject", MAX_DIGEST)
    check_optional_text(record.artifact_type, "artifact type", MAX_MEDIA_TYPE)
    if not isinstance(record.annotations, dict):
        raise BadRequest("annotations must be a dict")
    for digest in record.references:
        check_digest(digest, "reference")
    for tag in tags:
        check_text(tag, "tag", MAX_TAG)


def check_references(required_blobs, blob_size, required_manifests, manifest_size):
    """
    Check a manifest's references against what is stored.

    @param required_blobs: C{(digest, size)} pairs of blobs it needs.
    @param blob_size: called with a blob's digest; returns its stored size,
        or None if it is not there.
    @param required_manifests: C{(digest, size)} pairs of manifests it needs.
    @param manifest_size: the same as C{blob_size}, for a manifest.
    @raise ReferencesMissing: naming every digest not there.
    @raise SizeMismatch: for the first reference there with another size.
    """
    missing, mismatch = [], None
    for required, stored_size in [(required_blobs, blob_size),
                                  (required_manifests, manifest_size)]:
        for digest, size in dict.fromkeys(required):
            check_digest(digest, "reference")
            stored = stored_size(digest)
            if stored is None:
                missing.append(digest)
            elif stored != size and mismatch is None:
                mismatch = SizeMismatch(digest, size, stored)
    if missing:
        raise ReferencesMissing(missing)
    if mismatch is not None:
        raise mismatch


def check_upload(record):
    check_text(record.upload_id, "upload id", MAX_UPLOAD_ID)
    check_repository(record.repository)
    check_int(record.offset, "offset")
    check_chunks(record.chunks)
    check_text(record.hash_algorithm, "hash algorithm", MAX_HASH_ALGORITHM)
    if record.hash_state is not None and not isinstance(record.hash_state, bytes):
        raise BadRequest("hash state must be bytes or None")


def check_v1_image_id(image_id, what="image id"):
    check_text(image_id, what, MAX_V1_IMAGE_ID)


def check_v1_image(record):
    check_v1_image_id(record.image_id)
    if not isinstance(record.json, bytes):
        raise BadRequest("image JSON must be bytes")
    if record.parent is not None:
        check_v1_image_id(record.parent, "parent")
    if not record.ancestry or record.ancestry[0] != record.image_id:
        raise BadRequest("an image's ancestry starts with the image")
    for image_id in record.ancestry:
        check_v1_image_id(image_id, "ancestor")
    if record.size is not None:
        check_int(record.size, "size")
    check_chunks(record.chunks)
    check_optional_text(record.checksum, "checksum", MAX_V1_CHECKSUM)


def check_v1_layer(image_id, json, size, chunks, checksum):
    check_v1_image_id(image_id)
    if not isinstance(json, bytes):
        raise BadRequest("image JSON must be bytes")
    check_int(size, "size")
    check_chunks(chunks)
    check_text(checksum, "checksum", MAX_V1_CHECKSUM)


def check_v1_index(images):
    """@raise BadRequest: C{images} is not a list of dicts each with a
    string C{"id"} (and, if any, a string C{"checksum"})."""
    if not isinstance(images, (list, tuple)):
        raise BadRequest("an image index is a list")
    for entry in images:
        if not isinstance(entry, dict) or not isinstance(entry.get("id"), str):
            raise BadRequest("each image of an index is an object with an id")
        check_v1_image_id(entry["id"])
        if "checksum" in entry:
            check_text(entry["checksum"], "checksum", MAX_V1_CHECKSUM)


def merge_v1_index(new, old):
    """
    docker-registry's rule for an image index PUT onto a stored one: one
    entry per image id, in the order first named (the new list first); the
    first entry of an id that has a checksum wins, else the last one.

    @param new: the list PUT.
    @param old: the stored list.
    @return: the merged list of dicts with C{"id"} and maybe C{"checksum"}.
    """
    merged = {}
    for entry in list(new) + list(old):
        image_id = entry["id"]
        if "checksum" in merged.get(image_id, {}):
            continue
        merged[image_id] = {k: entry[k] for k in ("id", "checksum") if k in entry}
    return list(merged.values())


def check_v1_tag(record):
    check_repository(record.repository)
    check_text(record.tag, "tag", MAX_TAG)
    check_v1_image_id(record.image_id)
    if not isinstance(record.properties, dict):
        raise BadRequest("tag properties must be a dict")


def check_transfer(record):
    check_text(record.transfer_id, "transfer id", 64)
    if record.kind not in TRANSFER_KINDS:
        raise BadRequest(f"transfer kind must be one of {TRANSFER_KINDS}, not {record.kind!r}")
    if record.state not in TRANSFER_STATES:
        raise BadRequest(f"transfer state must be one of {TRANSFER_STATES}, not {record.state!r}")
    check_int(record.source_group, "group id")
    for group_id in record.target_groups:
        check_int(group_id, "group id")
    if record.byte_budget is not None:
        check_int(record.byte_budget, "byte budget")
    for name in ("chunks_done", "bytes_done", "chunks_left"):
        check_int(getattr(record, name), name.replace("_", " "))


def check_move(move):
    check_chunks([move.old, move.new])
    if (move.old.size, move.old.crc32c) != (move.new.size, move.new.crc32c):
        raise BadRequest("a chunk moves with its size and CRC32C")
    if move.old.group_id == move.new.group_id:
        raise BadRequest("a chunk moves to another group")
    check_text(move.transfer_id, "transfer id", 64)


def check_bad_replica(bad):
    check_text(bad.server_id, "server id", MAX_SERVER_ID)
    check_int(bad.group_id, "group id")
    check_int(bad.file_id, "file id")
    check_text(bad.reason, "reason", 65535)


def check_reason(reason):
    check_text(reason, "reason", 65535)


#: Where C{delete_upload} may put the deleted upload's chunks.
CHUNKS_TO = (None, "garbage", "intents")


def check_chunks_to(chunks_to):
    """@raise BadRequest: not one of L{CHUNKS_TO}."""
    if chunks_to not in CHUNKS_TO:
        raise BadRequest(f"chunks_to must be one of {CHUNKS_TO}, not {chunks_to!r}")


def intent_expired(owner, missing):
    """
    @param owner: what was to take the chunks over (C{"blob <digest>"}).
    @param missing: the C{(group id, file id)} of the chunks whose intents
        are gone.
    @return: the L{IntentExpired} to raise.
    """
    shown = ", ".join(f"{group_id}/{file_id}" for group_id, file_id in missing[:5])
    more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
    return IntentExpired(
        f"{owner}: the intents of chunks {shown}{more} had expired when they were handed "
        f"over (they were written for longer than the collector's grace period); nothing "
        f"was stored, send the bytes again")


# --- migrations --------------------------------------------------------------

#: SQLite: each step runs inside the C{BEGIN IMMEDIATE} transaction of
#: L{migrate}, so a step is applied whole or not at all.
SQLITE_MIGRATIONS = [
    (1, [  # the cluster and the REST file API
        """CREATE TABLE servers (
            server_id TEXT PRIMARY KEY,
            group_id INTEGER NOT NULL,
            address TEXT NOT NULL UNIQUE,
            state TEXT NOT NULL,
            capacity INTEGER NOT NULL,
            used INTEGER NOT NULL,
            free INTEGER NOT NULL,
            read_only INTEGER NOT NULL,
            last_heartbeat REAL NOT NULL,
            load_counters BLOB NOT NULL)""",
        "CREATE INDEX servers_by_group ON servers (group_id)",
        """CREATE TABLE replica_groups (
            group_id INTEGER PRIMARY KEY,
            read_only INTEGER NOT NULL,
            created REAL NOT NULL)""",
        """CREATE TABLE file_ids (
            singleton INTEGER PRIMARY KEY CHECK (singleton = 1),
            next_id INTEGER NOT NULL)""",
        "INSERT INTO file_ids (singleton, next_id) VALUES (1, 1)",
        """CREATE TABLE files (
            path TEXT PRIMARY KEY,
            size INTEGER NOT NULL,
            chunks BLOB NOT NULL,
            created REAL NOT NULL,
            sha256 TEXT) WITHOUT ROWID""",
    ]),
    (2, [  # the registry
        """CREATE TABLE blobs (
            digest TEXT PRIMARY KEY,
            size INTEGER NOT NULL,
            chunks BLOB NOT NULL,
            created REAL NOT NULL)""",
        """CREATE TABLE blob_links (
            repository TEXT NOT NULL,
            digest TEXT NOT NULL,
            PRIMARY KEY (repository, digest)) WITHOUT ROWID""",
        "CREATE INDEX blob_links_by_digest ON blob_links (digest)",
        """CREATE TABLE manifests (
            repository TEXT NOT NULL,
            digest TEXT NOT NULL,
            media_type TEXT NOT NULL,
            content BLOB NOT NULL,
            created REAL NOT NULL,
            subject TEXT,
            artifact_type TEXT,
            annotations BLOB NOT NULL,
            refs BLOB NOT NULL,
            PRIMARY KEY (repository, digest))""",
        "CREATE INDEX manifests_by_subject ON manifests (repository, subject, digest)",
        """CREATE TABLE tags (
            repository TEXT NOT NULL,
            tag TEXT NOT NULL,
            digest TEXT NOT NULL,
            PRIMARY KEY (repository, tag)) WITHOUT ROWID""",
        "CREATE INDEX tags_by_digest ON tags (repository, digest)",
        """CREATE TABLE uploads (
            upload_id TEXT PRIMARY KEY,
            repository TEXT NOT NULL,
            upload_offset INTEGER NOT NULL,
            chunks BLOB NOT NULL,
            hash_algorithm TEXT NOT NULL,
            hash_state BLOB,
            created REAL NOT NULL,
            updated REAL NOT NULL)""",
        "CREATE INDEX uploads_by_updated ON uploads (updated, upload_id)",
    ]),
    (3, [  # garbage collection and repair
        """CREATE TABLE garbage (
            group_id INTEGER NOT NULL,
            file_id INTEGER NOT NULL,
            size INTEGER NOT NULL,
            crc32c INTEGER NOT NULL,
            reason TEXT NOT NULL,
            recorded REAL NOT NULL,
            PRIMARY KEY (group_id, file_id))""",
        "CREATE INDEX garbage_by_recorded ON garbage (recorded)",
        """CREATE TABLE bad_replicas (
            server_id TEXT NOT NULL,
            file_id INTEGER NOT NULL,
            group_id INTEGER NOT NULL,
            reason TEXT NOT NULL,
            recorded REAL NOT NULL,
            PRIMARY KEY (server_id, file_id))""",
        "CREATE INDEX bad_replicas_by_recorded ON bad_replicas (recorded)",
    ]),
    (4, [  # self-healing: group rebuilds, removals that stick
        "ALTER TABLE servers ADD COLUMN rebuilding INTEGER NOT NULL DEFAULT 0",
        """CREATE TABLE removed_servers (
            server_id TEXT PRIMARY KEY,
            removed REAL NOT NULL) WITHOUT ROWID""",
    ]),
    (5, [  # Docker Registry V1
        """CREATE TABLE v1_images (
            image_id TEXT PRIMARY KEY,
            json BLOB NOT NULL,
            parent TEXT,
            ancestry BLOB NOT NULL,
            size INTEGER,
            chunks BLOB NOT NULL,
            checksum TEXT,
            complete INTEGER NOT NULL,
            created REAL NOT NULL)""",
        """CREATE TABLE v1_repositories (
            name TEXT PRIMARY KEY,
            images BLOB NOT NULL,
            created REAL NOT NULL) WITHOUT ROWID""",
        """CREATE TABLE v1_tags (
            repository TEXT NOT NULL,
            tag TEXT NOT NULL,
            image_id TEXT NOT NULL,
            properties BLOB NOT NULL,
            created REAL NOT NULL,
            PRIMARY KEY (repository, tag)) WITHOUT ROWID""",
    ]),
    (6, [  # online data transfer: drains, rebalances, chunks on the move
        """CREATE TABLE transfers (
            transfer_id TEXT PRIMARY KEY,
            kind TEXT NOT NULL,
            source_group INTEGER NOT NULL,
            target_groups BLOB NOT NULL,
            state TEXT NOT NULL,
            byte_budget INTEGER,
            chunks_done INTEGER NOT NULL,
            bytes_done INTEGER NOT NULL,
            chunks_left INTEGER NOT NULL,
            created REAL NOT NULL,
            updated REAL NOT NULL) WITHOUT ROWID""",
        """CREATE TABLE chunk_moves (
            group_id INTEGER NOT NULL,
            file_id INTEGER NOT NULL,
            size INTEGER NOT NULL,
            crc32c INTEGER NOT NULL,
            new_group_id INTEGER NOT NULL,
            new_file_id INTEGER NOT NULL,
            transfer_id TEXT NOT NULL,
            switched REAL,
            PRIMARY KEY (group_id, file_id))""",
        "CREATE INDEX chunk_moves_by_transfer ON chunk_moves (transfer_id)",
    ]),
    (7, [  # mark and sweep: who references a blob, when a repository linked it
        """CREATE TABLE manifest_refs (
            digest TEXT NOT NULL,
            repository TEXT NOT NULL,
            manifest TEXT NOT NULL,
            PRIMARY KEY (digest, repository, manifest)) WITHOUT ROWID""",
        "CREATE INDEX manifest_refs_by_manifest ON manifest_refs (repository, manifest)",
        """INSERT OR IGNORE INTO manifest_refs (digest, repository, manifest)
            SELECT CAST(j.value AS TEXT), m.repository, m.digest
            FROM manifests m, json_each(CAST(m.refs AS TEXT)) j""",
        "ALTER TABLE blob_links ADD COLUMN linked REAL NOT NULL DEFAULT 0",
        "UPDATE blob_links SET linked = (julianday('now') - 2440587.5) * 86400.0",
        "CREATE INDEX uploads_by_repository ON uploads (repository)",
    ]),
    (8, [  # garbage collection: chunks being written, owned by nothing yet
        """CREATE TABLE chunk_intents (
            group_id INTEGER NOT NULL,
            file_id INTEGER NOT NULL,
            size INTEGER NOT NULL,
            crc32c INTEGER NOT NULL,
            reason TEXT NOT NULL,
            recorded REAL NOT NULL,
            PRIMARY KEY (group_id, file_id))""",
        "CREATE INDEX chunk_intents_by_recorded ON chunk_intents (recorded)",
    ]),
]

_INNODB = " ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 ROW_FORMAT=DYNAMIC"

#: MySQL/MariaDB: DDL commits by itself, so every statement can be re-run
#: after a crash half-way through a step.
MYSQL_MIGRATIONS = [
    (1, [
        """CREATE TABLE IF NOT EXISTS servers (
            server_id VARBINARY(512) NOT NULL PRIMARY KEY,
            group_id BIGINT NOT NULL,
            address VARBINARY(1020) NOT NULL,
            state VARBINARY(16) NOT NULL,
            capacity BIGINT NOT NULL,
            used BIGINT NOT NULL,
            free BIGINT NOT NULL,
            read_only BOOLEAN NOT NULL,
            last_heartbeat DOUBLE NOT NULL,
            load_counters LONGBLOB NOT NULL,
            UNIQUE KEY servers_by_address (address),
            KEY servers_by_group (group_id))""" + _INNODB,
        """CREATE TABLE IF NOT EXISTS replica_groups (
            group_id BIGINT NOT NULL PRIMARY KEY,
            read_only BOOLEAN NOT NULL,
            created DOUBLE NOT NULL)""" + _INNODB,
        """CREATE TABLE IF NOT EXISTS file_ids (
            singleton TINYINT NOT NULL PRIMARY KEY CHECK (singleton = 1),
            next_id BIGINT NOT NULL)""" + _INNODB,
        """INSERT INTO file_ids (singleton, next_id)
            SELECT 1, 1 FROM DUAL WHERE NOT EXISTS (SELECT 1 FROM file_ids)""",
        """CREATE TABLE IF NOT EXISTS files (
            path VARBINARY(1024) NOT NULL PRIMARY KEY,
            size BIGINT NOT NULL,
            chunks LONGBLOB NOT NULL,
            created DOUBLE NOT NULL,
            sha256 VARBINARY(64) NULL)""" + _INNODB,
    ]),
    (2, [
        """CREATE TABLE IF NOT EXISTS blobs (
            digest VARBINARY(135) NOT NULL PRIMARY KEY,
            size BIGINT NOT NULL,
            chunks LONGBLOB NOT NULL,
            created DOUBLE NOT NULL)""" + _INNODB,
        """CREATE TABLE IF NOT EXISTS blob_links (
            repository VARBINARY(1020) NOT NULL,
            digest VARBINARY(135) NOT NULL,
            PRIMARY KEY (repository, digest),
            KEY blob_links_by_digest (digest))""" + _INNODB,
        """CREATE TABLE IF NOT EXISTS manifests (
            repository VARBINARY(1020) NOT NULL,
            digest VARBINARY(135) NOT NULL,
            media_type VARBINARY(1020) NOT NULL,
            content LONGBLOB NOT NULL,
            created DOUBLE NOT NULL,
            subject VARBINARY(135) NULL,
            artifact_type VARBINARY(1020) NULL,
            annotations LONGBLOB NOT NULL,
            refs LONGBLOB NOT NULL,
            PRIMARY KEY (repository, digest),
            KEY manifests_by_subject (repository, subject, digest))""" + _INNODB,
        """CREATE TABLE IF NOT EXISTS tags (
            repository VARBINARY(1020) NOT NULL,
            tag VARBINARY(512) NOT NULL,
            digest VARBINARY(135) NOT NULL,
            PRIMARY KEY (repository, tag),
            KEY tags_by_digest (repository, digest))""" + _INNODB,
        """CREATE TABLE IF NOT EXISTS uploads (
            upload_id VARBINARY(512) NOT NULL PRIMARY KEY,
            repository VARBINARY(1020) NOT NULL,
            upload_offset BIGINT NOT NULL,
            chunks LONGBLOB NOT NULL,
            hash_algorithm VARBINARY(128) NOT NULL,
            hash_state LONGBLOB NULL,
            created DOUBLE NOT NULL,
            updated DOUBLE NOT NULL,
            KEY uploads_by_updated (updated, upload_id))""" + _INNODB,
    ]),
    (3, [
        """CREATE TABLE IF NOT EXISTS garbage (
            group_id BIGINT NOT NULL,
            file_id BIGINT NOT NULL,
            size BIGINT NOT NULL,
            crc32c BIGINT NOT NULL,
            reason MEDIUMTEXT NOT NULL,
            recorded DOUBLE NOT NULL,
            PRIMARY KEY (group_id, file_id),
            KEY garbage_by_recorded (recorded))""" + _INNODB,
        """CREATE TABLE IF NOT EXISTS bad_replicas (
            server_id VARBINARY(512) NOT NULL,
            file_id BIGINT NOT NULL,
            group_id BIGINT NOT NULL,
            reason MEDIUMTEXT NOT NULL,
            recorded DOUBLE NOT NULL,
            PRIMARY KEY (server_id, file_id),
            KEY bad_replicas_by_recorded (recorded))""" + _INNODB,
    ]),
    (4, [
        "ALTER TABLE servers ADD COLUMN IF NOT EXISTS rebuilding BOOLEAN NOT NULL DEFAULT FALSE",
        """CREATE TABLE IF NOT EXISTS removed_servers (
            server_id VARBINARY(512) NOT NULL PRIMARY KEY,
            removed DOUBLE NOT NULL)""" + _INNODB,
    ]),
    (5, [
        """CREATE TABLE IF NOT EXISTS v1_images (
            image_id VARBINARY(64) NOT NULL PRIMARY KEY,
            json LONGBLOB NOT NULL,
            parent VARBINARY(64) NULL,
            ancestry LONGBLOB NOT NULL,
            size BIGINT NULL,
            chunks LONGBLOB NOT NULL,
            checksum VARBINARY(135) NULL,
            complete BOOLEAN NOT NULL,
            created DOUBLE NOT NULL)""" + _INNODB,
        """CREATE TABLE IF NOT EXISTS v1_repositories (
            name VARBINARY(1020) NOT NULL PRIMARY KEY,
            images LONGBLOB NOT NULL,
            created DOUBLE NOT NULL)""" + _INNODB,
        """CREATE TABLE IF NOT EXISTS v1_tags (
            repository VARBINARY(1020) NOT NULL,
            tag VARBINARY(512) NOT NULL,
            image_id VARBINARY(64) NOT NULL,
            properties LONGBLOB NOT NULL,
            created DOUBLE NOT NULL,
            PRIMARY KEY (repository, tag))""" + _INNODB,
    ]),
    (6, [
        """CREATE TABLE IF NOT EXISTS transfers (
            transfer_id VARBINARY(64) NOT NULL PRIMARY KEY,
            kind VARBINARY(32) NOT NULL,
            source_group BIGINT NOT NULL,
            target_groups LONGBLOB NOT NULL,
            state VARBINARY(16) NOT NULL,
            byte_budget BIGINT NULL,
            chunks_done BIGINT NOT NULL,
            bytes_done BIGINT NOT NULL,
            chunks_left BIGINT NOT NULL,
            created DOUBLE NOT NULL,
            updated DOUBLE NOT NULL)""" + _INNODB,
        """CREATE TABLE IF NOT EXISTS chunk_moves (
            group_id BIGINT NOT NULL,
            file_id BIGINT NOT NULL,
            size BIGINT NOT NULL,
            crc32c BIGINT NOT NULL,
            new_group_id BIGINT NOT NULL,
            new_file_id BIGINT NOT NULL,
            transfer_id VARBINARY(64) NOT NULL,
            switched DOUBLE NULL,
            PRIMARY KEY (group_id, file_id),
            KEY chunk_moves_by_transfer (transfer_id))""" + _INNODB,
    ]),
    (7, [
        """CREATE TABLE IF NOT EXISTS manifest_refs (
            digest VARBINARY(135) NOT NULL,
            repository VARBINARY(1020) NOT NULL,
            manifest VARBINARY(135) NOT NULL,
            PRIMARY KEY (digest, repository, manifest),
            KEY manifest_refs_by_manifest (repository, manifest))""" + _INNODB,
        """INSERT IGNORE INTO manifest_refs (digest, repository, manifest)
            SELECT j.ref, m.repository, m.digest
            FROM manifests m, JSON_TABLE(CONVERT(m.refs USING utf8mb4), '$[*]'
                COLUMNS (ref VARCHAR(135) CHARACTER SET ascii PATH '$')) j""",
        "ALTER TABLE blob_links ADD COLUMN IF NOT EXISTS linked DOUBLE NOT NULL DEFAULT 0",
        "UPDATE blob_links SET linked = UNIX_TIMESTAMP(NOW(6)) WHERE linked = 0",
        "CREATE INDEX IF NOT EXISTS uploads_by_repository ON uploads (repository)",
    ]),
    (8, [
        """CREATE TABLE IF NOT EXISTS chunk_intents (
            group_id BIGINT NOT NULL,
            file_id BIGINT NOT NULL,
            size BIGINT NOT NULL,
            crc32c BIGINT NOT NULL,
            reason MEDIUMTEXT NOT NULL,
            recorded DOUBLE NOT NULL,
            PRIMARY KEY (group_id, file_id),
            KEY chunk_intents_by_recorded (recorded))""" + _INNODB,
    ]),
]


def latest_version(migrations):
    """@return: the version a database has once every step is applied."""
    return migrations[-1][0]


def migrate(db, dialect, target=None):
    """
    Bring a database's schema to version C{target} (the latest if None).
    Runs in a database thread, inside one adbapi interaction.

    @param db: the interaction's L{speedy.metadata.sql.Cursor}.
    @param dialect: the database's dialect; its C{migrations} are applied.
    @return: C{(before, after)}, the schema versions before and after.
    @raise Internal: the database was written by a newer Speedy.
    """
    migrations = dialect.migrations
    latest = latest_version(migrations)
    target = latest if target is None else target
    dialect.lock_schema(db)
    try:
        db.execute(
            "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)"
            + dialect.table_options)
        row = db.one("SELECT version FROM schema_version")
        if row is None:
            db.execute("INSERT INTO schema_version (version) VALUES (0)")
            before = 0
        else:
            before = row[0]
        if before > latest:
            raise Internal(
                f"the metadata database has schema version {before}, newer than "
                f"this Speedy's {latest}: upgrade Speedy")
        version = before
        for number, statements in migrations:
            if version < number <= target:
                for statement in statements:
                    db.execute(statement)
                db.execute("UPDATE schema_version SET version = ?", number)
                version = number
        return before, version
    finally:
        dialect.unlock_schema(db)
