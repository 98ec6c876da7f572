"""
Plain records that cross role boundaries: what the engine, the wire, the
metadata store, the chunkmaster and the imageservers hand each other.

All are immutable ``attrs`` classes; a change is a new record
(``attrs.evolve``).  Times are float seconds since the epoch, taken from an
injected clock (``reactor.seconds()``), never from ``time.time()`` directly.
"""

from __future__ import annotations

from attrs import field, frozen


# --- chunks --------------------------------------------------------------


@frozen
class ChunkInfo:
    """What a chunkserver knows of one stored chunk."""

    file_id: int
    size: int
    crc32c: int


@frozen
class ChunkRef:
    """
    Where one chunk of a file or blob lives: written under C{file_id} to every
    member of replica group C{group_id}.  Chunks of one file may differ in size
    (the last one, or the tail of each registry PATCH); their order in the
    owning list gives their place in the file.
    """

    group_id: int
    file_id: int
    size: int
    crc32c: int

    def to_json(self):
        return [self.group_id, self.file_id, self.size, self.crc32c]

    @classmethod
    def from_json(cls, value):
        group_id, file_id, size, crc32c = value
        return cls(int(group_id), int(file_id), int(size), int(crc32c))


# --- cluster state (chunkmaster) -----------------------------------------

#: Server states.  INIT: registered, never heard from.  RW: heartbeating,
#: writable.  RO: heartbeating, not writable (full, or set so).  DOWN: missed
#: heartbeats.  DRAINING: an admin is moving it out; readable, never chosen
#: for writes.
INIT, RW, RO, DOWN, DRAINING = "INIT", "RW", "RO", "DOWN", "DRAINING"
SERVER_STATES = (INIT, RW, RO, DOWN, DRAINING)


@frozen
class ServerRecord:
    """One chunkserver as the metadata store keeps it."""

    server_id: str
    group_id: int
    address: str  # "host:port" of its wire protocol listener
    state: str = INIT
    capacity: int = 0  # bytes
    used: int = 0  # bytes
    free: int = 0  # bytes above the reserve that writes may still use
    read_only: bool = False  # as the chunkserver reported it
    last_heartbeat: float = 0.0
    load: dict = field(factory=dict)  # counters from the heartbeat
    rebuilding: bool = False  # replaces a lost member; not whole yet


@frozen
class GroupRecord:
    """A replica group: up to three servers that hold identical chunks."""

    group_id: int
    read_only: bool = False  # set by an admin
    created: float = 0.0


# --- files (the imageserver's REST file API) ------------------------------


@frozen
class FileRecord:
    """A file stored by path through the REST file API."""

    path: str
    size: int
    chunks: tuple  # of ChunkRef, in order
    created: float = 0.0
    sha256: str | None = None  # hex digest when known


# --- registry ------------------------------------------------------------


@frozen
class BlobRecord:
    """A content-addressed blob, shared by every repository that links it."""

    digest: str  # "sha256:<hex>" or "sha512:<hex>"
    size: int
    chunks: tuple  # of ChunkRef, in order
    created: float = 0.0


@frozen
class ManifestRecord:
    """A manifest in one repository, kept byte-exact."""

    repository: str
    digest: str
    media_type: str
    content: bytes
    created: float = 0.0
    subject: str | None = None  # digest of the manifest it refers to
    artifact_type: str | None = None  # artifactType, or the config mediaType
    annotations: dict = field(factory=dict)
    #: digests of the blobs and manifests it references (for GC and deletes)
    references: tuple = ()


@frozen
class UploadRecord:
    """
    A blob upload session.  It lives in the metadata store so any imageserver
    can continue it.  C{offset} is the number of bytes received so far and
    always equals the sum of C{chunks} sizes; C{hash_state} is the serialised
    running hash (PyPI ``rehashes``) of those bytes, or None when the next
    imageserver must re-hash the stored chunks.
    """

    upload_id: str
    repository: str
    offset: int = 0
    chunks: tuple = ()  # of ChunkRef
    hash_algorithm: str = "sha256"
    hash_state: bytes | None = None
    created: float = 0.0
    updated: float = 0.0


# --- Docker Registry V1 ---------------------------------------------------


@frozen
class V1ImageRecord:
    """
    A Docker Registry V1 image: its JSON, kept byte-exact, and its layer,
    stored as chunks like a blob.  Images are global (not per repository)
    and named by a 64-hex id the client chose.  An image is unfinished
    (C{complete} false) from its JSON's PUT until the checksum PUT matched
    the checksum computed from its layer; only complete images are served.
    """

    image_id: str
    json: bytes
    parent: str | None = None
    #: ids from this image to its base, this image first
    ancestry: tuple = ()
    #: layer bytes, or None while no layer is stored
    size: int | None = None
    chunks: tuple = ()  # of ChunkRef, in order: the layer
    #: C{"sha256:<hex>"} of the JSON, a newline and the layer, computed as
    #: the layer arrived (docker-registry's payload checksum); None without a layer
    checksum: str | None = None
    complete: bool = False
    created: float = 0.0


@frozen
class V1RepositoryRecord:
    """
    A V1 repository (C{namespace/name}): the image index clients PUT
    (C{[{"id": ..., "checksum": ...}, ...]}, merged as docker-registry did,
    see L{speedy.metadata.schema.merge_v1_index}).  Its tags are
    L{V1TagRecord}s.
    """

    name: str
    images: tuple = ()  # of dicts with "id" and maybe "checksum"
    created: float = 0.0


@frozen
class V1TagRecord:
    """A V1 tag: a name in a repository for an image id, and what the
    pushing client said of itself (docker-registry's tag JSON)."""

    repository: str
    tag: str
    image_id: str
    properties: dict = field(factory=dict)
    created: float = 0.0


@frozen
class GarbageChunk:
    """A chunk written but owned by nothing (a failed or abandoned write),
    recorded so garbage collection can delete it from its group."""

    chunk: ChunkRef
    reason: str
    recorded: float = 0.0


@frozen
class BadReplica:
    """A replica found damaged or missing on a read, recorded for repair."""

    server_id: str
    group_id: int
    file_id: int
    reason: str
    recorded: float = 0.0


# --- online data transfer (the chunkmaster's drains and rebalances) -----------

#: Transfer states.  RUNNING: chunks are being moved.  DELETING: every chunk
#: is moved; old copies wait for their delay.  DONE: nothing left.
#: CANCELLED: stopped by an admin (moves already switched keep their new place).
TRANSFER_RUNNING, TRANSFER_DELETING, TRANSFER_DONE, TRANSFER_CANCELLED = (
    "running", "deleting", "done", "cancelled")
TRANSFER_STATES = (TRANSFER_RUNNING, TRANSFER_DELETING, TRANSFER_DONE, TRANSFER_CANCELLED)
TRANSFER_KINDS = ("drain", "rebalance")


@frozen
class TransferRecord:
    """
    A drain or rebalance: chunks moved out of C{source_group}, into
    C{target_groups} (empty: any writable group but the source), until the
    source holds none (drain) or C{byte_budget} bytes are moved (rebalance).
    Its counters are saved after each batch, so it resumes after a restart.
    """

    transfer_id: str
    kind: str
    source_group: int
    target_groups: tuple = ()
    state: str = TRANSFER_RUNNING
    byte_budget: int | None = None
    chunks_done: int = 0
    bytes_done: int = 0
    chunks_left: int = 0  # as last counted
    created: float = 0.0
    updated: float = 0.0


@frozen
class ChunkMove:
    """
    One chunk on its way from C{old} to C{new} (same size and CRC32C, another
    group and file id).  Recorded before the copy (so a crash leaves no
    unknown copy), switched (every reference now names C{new}) at
    C{switched}, and forgotten once the old copies are deleted.
    """

    old: ChunkRef
    new: ChunkRef
    transfer_id: str
    switched: float | None = None
