"""
Where Speedy's roles meet.  Only ``zope.interface`` Interfaces live here; the
records they pass are in L{speedy.records}, the errors in L{speedy.errors}.

Every method that may touch a disk, a socket or a database returns a
L{Deferred}; "fires with X" below means the Deferred's result.  Failures are
L{speedy.errors.SpeedyError} subclasses unless said otherwise.
"""

from zope.interface import Attribute, Interface

# --- chunkserver engine ---------------------------------------------------


class IChunkStore(Interface):
    """
    The chunkserver's storage engine: chunks appended to large volume files,
    found through a compact in-memory index, deleted by tombstone, compacted
    online.  The wire protocol drives it; it knows nothing of sockets.
    """

    read_only = Attribute(
        "True while the store takes no writes (below its free-space reserve, "
        "or set read-only); reads and deletes still work.")

    def put(file_id, size, keep=False):
        """
        Begin storing a chunk of exactly C{size} bytes under C{file_id}.

        @param keep: a hint (the wire's C{KEEP} flag): keep the chunk in
            the store's memory cache, reads of it are to come here first.  A
            store without a cache, or a chunk it does not cache (too small,
            a repeated put), ignores it.
        @return: an L{IChunkWrite} to stream the bytes into.
        @raise ReadOnly: the store takes no writes.
        @raise TooLarge: C{size} exceeds the largest chunk a volume can hold.
        @raise NoSpace: no volume has room and none can be created.
        """

    def get(file_id, offset=0, length=None):
        """
        Locate a live chunk, verify its checksum, and pin its volume so a
        compaction cannot free the bytes while they are being sent.

        @param length: bytes wanted from C{offset}; None means to the end.
        @return: a Deferred firing with an L{IChunkRead}.
        @raise ChunkNotFound: no live chunk has that id.
        @raise RangeNotSatisfiable: the range lies outside the chunk.
        @raise ChecksumMismatch: the stored bytes are damaged: the chunk is
            dropped (counted, and listed in C{damaged}) so that a repair can
            write it anew.
        """

    def verify(file_id):
        """
        Read a chunk's stored bytes from the disk (never from a memory
        cache) and check them against its CRC32C, as a scrub or a repair
        does.  A damaged chunk is dropped as L{get} drops it.

        @return: a Deferred firing with its L{speedy.records.ChunkInfo}.
        @raise ChunkNotFound: no live chunk has that id.
        @raise ChecksumMismatch: the stored bytes are damaged or unreadable.
        """

    damaged = Attribute(
        "A dict whose keys are the ids of chunks found damaged and dropped, "
        "oldest first, until acknowledge_damaged: what the chunkserver "
        "reports to the chunkmaster for repair.")

    def acknowledge_damaged(file_ids):
        """The chunkmaster recorded these damaged chunks: drop them from
        C{damaged}."""

    def stat(file_id):
        """
        @return: the L{speedy.records.ChunkInfo} of a live chunk, or None.
            Answered from memory, no disk access.
        """

    def delete(file_id):
        """
        Append a tombstone for C{file_id}.

        @return: a Deferred firing with None once the tombstone is durable.
        @raise ChunkNotFound: no live chunk has that id.
        """

    def file_ids():
        """
        @return: an iterator over the file ids of all live chunks, in
            ascending order (for fsck, repair and data transfer).
        """

    def compact(volume_id=None):
        """
        Compact C{volume_id}, or every volume whose garbage ratio passes the
        threshold when None, while reads and writes continue.

        @return: a Deferred firing with the number of bytes freed.
        """

    def status():
        """
        @return: a JSON-ready dict with at least C{capacity}, C{used}, C{free}
            (bytes), C{read_only}, C{chunks}, C{volumes} (a list of dicts with
            C{volume_id}, C{size}, C{used}, C{garbage}) and C{counters}
            (checksum_errors, damaged_records, torn_records, damaged_volumes,
            corrupt_checkpoints, nospace_errors, sync_errors, compactions,
            bytes_compacted_away, sync_rounds, reads, writes, deletes).
        """

    def close():
        """
        Write an index checkpoint and close every volume.  Calls after
        C{close()} fail with L{Busy}.

        @return: a Deferred firing with None when done.
        """


class IChunkWrite(Interface):
    """One chunk being streamed into the store."""

    def write(data):
        """
        Append the next piece of the chunk's bytes (bytes or memoryview).
        Writing more than the announced size raises L{TooLarge}.

        @raise NoSpace: this or an earlier piece (written in a thread)
            failed; the write is aborted, nothing else lost.
        @raise Busy: the store was closed meanwhile; the write is aborted.
        @raise BadRequest: the write was finished or aborted.
        """

    def write_space():
        """
        Where the next bytes of the chunk go, for a caller that can read
        them in place (C{socket.recv_into}) rather than copy them in with
        L{write}: the store's own buffer for them, if it has one.

        @return: a writable memoryview, or None (use L{write}).  It is
            valid only until the next call on this write.
        """

    def wrote(count):
        """
        The first C{count} bytes of the last L{write_space} now hold the
        chunk's next bytes: take them as L{write} would (same errors).
        """

    def finish():
        """
        All bytes were written.

        @return: a Deferred firing with the L{speedy.records.ChunkInfo}
            once the record is durable per the sync policy (group commit).
        @raise ChunkExists: (errback) another chunk with different bytes is
            stored under that id.  An identical one is an idempotent retry
            and succeeds.
        @raise BadRequest: fewer bytes than announced were written, or
            the write was finished or aborted already.
        @raise NoSpace: (errback) a piece or the sync failed.
        @raise Busy: (errback) the store was closed meanwhile.
        """

    def abort():
        """
        Give up on this write; nothing becomes visible, the space is garbage.
        """

    def drained(limit):
        """
        Wait for the store to catch up with the writes: the protocol stops
        reading its connection while C{buffered} is above its limit, and
        reads on when this fires.

        @return: a Deferred firing with None once C{buffered} <= C{limit}
            (at once if it is already).  It also fires when the write
            fails or ends, as nothing is buffered then.  Cancelling it
            forgets the wait.
        """

    buffered = Attribute(
        "Bytes accepted by write() and not yet in the volume file.")


class IChunkRead(Interface):
    """A verified, pinned byte range of one chunk, ready to be sent."""

    info = Attribute("The L{speedy.records.ChunkInfo} of the whole chunk.")
    offset = Attribute("First byte of the range within the chunk.")
    length = Attribute("Number of bytes in the range.")

    def fileno():
        """
        @return: a file descriptor of the volume file, valid until
            L{release}, for C{os.sendfile}.
        @raise OSError: the bytes are in no file (a store in memory); the
            protocol then sends them through L{read}.
        """

    def file_offset():
        """
        @return: the absolute position of the range's first byte in that
            volume file.
        @raise OSError: as for L{fileno}.
        """

    def read(position, size):
        """
        @return: up to C{size} bytes of the range starting C{position} bytes
            into it (for transports that cannot sendfile, such as TLS).
        """

    def release():
        """Unpin the volume.  Idempotent."""


# --- chunkserver client (used by imageservers and tools) ------------------


class IChunkClient(Interface):
    """
    Speaks the wire protocol to any chunkserver, with a connection pool per
    address ("host:port"), a timeout on every request (it fails once no byte
    moved on its connection for that long, so big transfers queued behind
    others survive; connecting has its own timeout) and reconnect with
    backoff.  Error frames come back as the matching L{speedy.errors} class;
    timeouts as L{Timeout}; unreachable peers as L{ConnectionFailed}.
    """

    connect_timeout = Attribute("Seconds a connection attempt may take.")
    request_timeout = Attribute(
        "Seconds a request may go without a byte moving on its connection.")
    timings = Attribute(
        "A L{speedy.wire.timings.RequestTimings}: every request's duration, or "
        "the class of its error, by chunkserver address and operation.")

    def put(address, file_id, data, keep=False):
        """
        Store a whole chunk under C{file_id}.

        @param data: the chunk: a bytes-like object, or a list or tuple of
            bytes-like pieces holding it in order (sent one after the
            other, never joined).  Leave it unchanged until the Deferred
            fired.
        @param keep: ask the chunkserver to keep the chunk in its memory
            cache: it is the replica reads of the chunk go to first
            (L{speedy.imageserver.placement.preferred_replica}).

        @return: a Deferred firing with the L{speedy.records.ChunkInfo} once
            the chunkserver acknowledged it durable.
        """

    def chain_put(address, file_id, data, route=(), keep_mask=0):
        """
        Store a chunk on a chain of chunkservers: the one at C{address}
        stores it and forwards it as its bytes arrive to C{route[0]}, which
        forwards it to C{route[1]}, and so on (CHAIN_PUT in C{protocol.md}).

        @param data: as L{put}'s.
        @param route: the addresses of the chain's members after the first.
        @param keep_mask: bit i asks member i (0: C{address}) to keep the
            chunk in its memory cache.
        @return: a Deferred firing with a list of
            L{speedy.records.ChunkInfo}, one per member in chain order, once
            every member acknowledged it durable; failing with the error of
            the first member that failed, its message naming the member.
        """

    def get(address, file_id, offset=0, length=None):
        """
        @return: a Deferred firing with a bytearray holding the range (joined
            from the pieces it arrived in).  A whole-chunk read is verified
            against the chunkserver's CRC32C on arrival (L{ChecksumMismatch}
            on a difference).
        """

    def get_pieces(address, file_id, offset=0, length=None):
        """
        Like L{get}, without joining the range's bytes into one buffer.

        @return: a Deferred firing with a list of bytes objects holding the
            range in order, as they came off the connection; verified as
            L{get} is.
        """

    def get_stream(address, file_id, offset, length, sink, expect=None):
        """
        Stream C{length} bytes at C{offset} of a chunk to C{sink}, a
        callable given each piece (bytes) in order as it arrives.  An
        answer of another length is refused before any byte reaches
        C{sink}; the chunkserver checks its record's CRC32C before it
        answers, and a whole-chunk range is checked again against it at its
        end, after its bytes went to C{sink}.

        @param expect: the (size, CRC32C) the chunk was written with, as the
            metadata store recorded them: a chunkserver holding another
            chunk under the id (replaced, or lying) fails the read with
            L{ChecksumMismatch} before any byte reaches C{sink}.

        @return: a Deferred firing with None once all C{length} bytes went
            to C{sink}; failing with L{ChecksumMismatch} when the bytes of a
            whole chunk did not match its CRC32C, or as L{get} does.  C{sink}
            is not called once it failed or was cancelled; a failure may
            come after some bytes went to C{sink}.
        """

    def stat(address, file_id):
        """@return: a Deferred firing with a L{speedy.records.ChunkInfo}."""

    def verify(address, file_id):
        """
        Have the chunkserver read the chunk's stored bytes from its disk
        and check them (L{IChunkStore.verify}); a damaged chunk is dropped
        there.

        @return: a Deferred firing with a L{speedy.records.ChunkInfo}, or
            failing with L{speedy.errors.ChunkNotFound} or
            L{speedy.errors.ChecksumMismatch}.
        """

    def delete(address, file_id):
        """@return: a Deferred firing with None."""

    def ping(address):
        """@return: a Deferred firing with the round-trip time in seconds."""

    def status(address):
        """@return: a Deferred firing with the chunkserver's status dict."""

    def list(address):
        """@return: a Deferred firing with a list of the stored file ids."""

    def compact(address, volume_id=None):
        """@return: a Deferred firing with the number of bytes freed."""

    def close():
        """Close every pooled connection.  @return: a Deferred."""


# --- metadata store ---------------------------------------------------------
#
# One database holds the tables of every role.  Each role's code names the
# interface of the tables it uses (IClusterTables, IFileTables, ...); one
# store, IMetadataStore, serves them all, and the rules in its docstring
# hold for every method of each.


class IClusterTables(Interface):
    """
    The chunkmaster's tables: chunkservers, their replica groups, and the
    file-id counter.  Used by L{speedy.chunkmaster.cluster.Cluster} and the
    chunkmaster's file-id API.  Keeps the rules of L{IMetadataStore}.
    """

    def upsert_server(server):
        """
        Insert or replace a L{ServerRecord} by C{server_id}; a server
        removed before (L{remove_server}) is no longer remembered as removed.

        @raise BadRequest: another server already has that address, or its
            group already has three other members.
        @return: Deferred firing with None.
        """

    def get_server(server_id):
        """@return: Deferred firing with a L{ServerRecord} or None."""

    def list_servers():
        """@return: Deferred firing with a list of L{ServerRecord}."""

    def remove_server(server_id):
        """
        Forget a server, and remember that it was removed (L{removed_servers})
        until it is upserted again.

        @return: Deferred firing with True if it existed.
        """

    def removed_servers():
        """@return: Deferred firing with the set of the ids of removed servers."""

    def upsert_group(group):
        """Insert or replace a L{GroupRecord}.  @return: Deferred."""

    def list_groups():
        """@return: Deferred firing with a list of L{GroupRecord}."""

    def allocate_file_ids(count):
        """
        Reserve C{count} never-before-issued file ids in one transaction
        (C{SELECT ... FOR UPDATE} on MySQL), persisted before they are
        returned: no id is ever issued twice, across crashes, restarts and
        several chunkmasters on one database.

        @return: Deferred firing with (start, end): ids start <= id < end.
        """


class IFileTables(Interface):
    """
    The REST file API's tables: each file's path and its chunk list.  Used
    by L{speedy.imageserver.fileapi.FileAPI}.  Keeps the rules of
    L{IMetadataStore}.
    """

    def put_file(record, adopted=()):
        """
        Insert or replace a L{FileRecord} by path.

        @param adopted: L{ChunkRef}s of C{record.chunks} written under an
            intent (L{IGarbageTables.record_intents}): the file takes them
            over, and their intents are removed in the same transaction.
            If one of those intents is gone (expired into the garbage
            table), nothing changes and it fails with
            L{speedy.errors.IntentExpired}.
        @return: Deferred firing with the replaced record or None.
        """

    def get_file(path):
        """@return: Deferred firing with a L{FileRecord} or None."""

    def delete_file(path):
        """@return: Deferred firing with the deleted L{FileRecord} or None."""

    def list_files(prefix, limit=1000, after=None):
        """@return: Deferred firing with a sorted list of paths under
        C{prefix} (an indexed range scan, never C{LIKE '%...'})."""


class IRegistryTables(Interface):
    """
    The registry's tables: blobs and the repositories that link them,
    manifests, tags and referrers.  Used by L{speedy.registry}'s blobs,
    manifests and API.  Keeps the rules of L{IMetadataStore}.
    """

    # blobs ---------------------------------------------------------------

    def put_blob(record, adopted=()):
        """
        Insert a L{BlobRecord} unless one with its digest exists.

        @param adopted: L{ChunkRef}s of C{record.chunks} written under an
            intent (L{IGarbageTables.record_intents}): a blob stored from
            them takes them over, and their intents are removed in the same
            transaction.  If one of those intents is gone (expired into the
            garbage table), nothing is stored and it fails with
            L{speedy.errors.IntentExpired}.  When the digest was already
            there, the intents are left as they are (the caller deletes its
            chunks, or stores them in a later call; a caller that dies
            meanwhile leaves them to the collector).
        @return: Deferred firing with the stored record: the existing one if
            the digest was already there (the caller then collects its own
            chunks as garbage).
        """

    def get_blob(digest):
        """@return: Deferred firing with a L{BlobRecord} or None."""

    def delete_blob(digest):
        """
        Remove the blob and every repository's link to it, unconditionally
        (an admin's or garbage collector's delete; the registry uses
        L{delete_blob_if_unlinked}).

        @return: Deferred firing with the removed L{BlobRecord} or None.
        """

    def delete_blob_if_unlinked(digest):
        """
        Delete the blob in the same transaction as the check that no
        repository links it, so that a concurrent L{link_blob} either links
        it first (and it stays) or fails (it is gone).

        @return: Deferred firing with the removed L{BlobRecord}, or None if
            some repository still links it or it is gone.
        """

    def link_blob(repository, digest):
        """
        Make a blob visible in C{repository} (idempotent).

        @raise BadRequest: no blob has that digest (never stored, or
            deleted meanwhile).
        @return: Deferred firing with None.
        """

    def unlink_blob(repository, digest):
        """@return: Deferred firing with True if the link existed."""

    def blob_linked(repository, digest):
        """@return: Deferred firing with the L{BlobRecord} if linked there,
        else None."""

    # manifests and tags --------------------------------------------------

    def put_manifest(record, tags=(), required_blobs=(), required_manifests=()):
        """
        Store a L{ManifestRecord} (replacing one with the same repository and
        digest) and point each of C{tags} at it, in one transaction, which
        first checks what the manifest references.

        @param required_blobs: C{(digest, size)} pairs of blobs that must be
            linked in the record's repository with that size.  The check
            locks each blob as L{link_blob} does, so a concurrent
            L{delete_blob_if_unlinked} either comes first (and the put
            fails) or waits for the put to commit.
        @param required_manifests: C{(digest, size)} pairs of manifests
            that must be stored in the record's repository, with content of
            that many bytes.
        @raise ReferencesMissing: naming every required blob not linked and
            every required manifest not stored; nothing is stored.
        @raise SizeMismatch: a required blob or manifest is there with
            another size; nothing is stored.
        @return: Deferred firing with None.
        """

    def get_manifest(repository, digest):
        """@return: Deferred firing with a L{ManifestRecord} or None."""

    def delete_manifest(repository, digest):
        """Delete a manifest and every tag pointing at it.
        @return: Deferred firing with True if it existed."""

    def resolve_tag(repository, tag):
        """@return: Deferred firing with the digest the tag points at, or None."""

    def delete_tag(repository, tag):
        """@return: Deferred firing with True if it existed."""

    def list_tags(repository, limit=None, last=None):
        """@return: Deferred firing with tag names in lexical order, after
        C{last} (excluded), at most C{limit} of them; None if the repository
        has no manifests at all."""

    def list_repositories(limit=None, last=None):
        """@return: Deferred firing with repository names in lexical order:
        those with at least one manifest (a repository whose every manifest
        was deleted is gone from the catalog, whatever blobs it links, as
        its tag list is)."""

    def referrers(repository, digest, artifact_type=None):
        """@return: Deferred firing with the L{ManifestRecord}s in
        C{repository} whose subject is C{digest}, optionally only those of
        C{artifact_type}."""


class IUploadTables(Interface):
    """
    Blob upload sessions, shared by every imageserver so that any of them
    can take the next piece of an upload.  Used by
    L{speedy.registry.uploads.UploadSessions}.  Keeps the rules of
    L{IMetadataStore}.
    """

    def create_upload(record):
        """
        Insert a new L{UploadRecord}; a zero C{updated} becomes its
        C{created} time.

        @raise BadRequest: an upload with that id exists.
        @return: Deferred firing with None.
        """

    def get_upload(upload_id):
        """@return: Deferred firing with an L{UploadRecord} or None."""

    def update_upload(record, expected_offset, adopted=()):
        """
        Replace an upload's state only if its stored offset is still
        C{expected_offset} (compare-and-set, so two imageservers cannot both
        append at one offset).  The stored C{repository} and C{created}
        are kept: C{record}'s are ignored.

        @param adopted: L{ChunkRef}s of C{record.chunks} written under an
            intent (L{IGarbageTables.record_intents}): the upload takes
            them over, and their intents are removed in the same
            transaction.  If one of those intents is gone (expired into
            the garbage table), nothing changes.
        @return: Deferred firing with True on success, False if the offset
            moved, the upload is gone or an adopted chunk's intent is gone.
        """

    def delete_upload(upload_id, expected_offset=None, chunks_to=None, reason=None):
        """
        Delete an upload; when C{expected_offset} is given, only while its
        stored offset is still C{expected_offset} (compare-and-delete, so a
        session that another imageserver appended to meanwhile survives).

        @param chunks_to: what becomes of the upload's chunks, in the same
            transaction as the delete (so a caller that dies next leaks
            none): None, nothing (the caller owns them); C{"garbage"},
            they are recorded as garbage (L{IGarbageTables.record_garbage});
            C{"intents"}, they are recorded as intents
            (L{IGarbageTables.record_intents}), for a row that takes them
            over next (L{IRegistryTables.put_blob}'s C{adopted}).
        @param reason: the reason they are recorded with; None: C{"upload
            <id>"}.
        @return: Deferred firing with the deleted L{UploadRecord}, or None
            if it is gone or its offset moved (then nothing is recorded).
        """

    def stale_uploads(updated_before, limit=100):
        """@return: Deferred firing with uploads last touched before the
        given time (for expiry)."""

    def count_uploads():
        """@return: Deferred firing with C{(sessions, bytes)}: the upload
        sessions open and the bytes they received so far."""


class IV1Tables(Interface):
    """
    The Docker Registry V1 tables: images (JSON, layer chunks, checksum,
    ancestry), repositories with their image index, and tags.  Used by
    L{speedy.registry.v1}.  V1 repositories are apart from the V2
    registry's: one name can be both, holding different things.  Keeps the
    rules of L{IMetadataStore}.
    """

    def put_v1_image(record):
        """
        Store the JSON of an image being pushed (C{record.complete} false,
        no layer): insert it, or replace an unfinished image of that id (a
        push tried again: its layer goes with it).  A complete image is
        never replaced.

        @return: Deferred firing with None for a new image, the replaced
            unfinished L{V1ImageRecord} (its layer's chunks are recorded as
            garbage, L{IGarbageTables.record_garbage}, in the same
            transaction), or the complete L{V1ImageRecord} already there,
            in which case nothing was stored.
        @raise ReferencesMissing: C{record.parent} is not stored; nothing is.
        """

    def get_v1_image(image_id):
        """@return: Deferred firing with a L{V1ImageRecord} or None."""

    def set_v1_layer(image_id, json, size, chunks, checksum, adopted=()):
        """
        Record the layer of an unfinished image whose JSON is still
        C{json} (the checksum was computed over it).

        @param adopted: L{ChunkRef}s of C{chunks} written under an intent
            (L{IGarbageTables.record_intents}): the layer takes them over,
            their intents are removed in the same transaction.
        @return: Deferred firing with the image's L{V1ImageRecord} as it
            was before (a layer it had is replaced: its chunks are recorded
            as garbage in the same transaction), or None when nothing was
            stored: the image is gone, complete, or its JSON changed (the
            caller deletes C{chunks}; their intents stay, to expire).
        @raise IntentExpired: an adopted chunk's intent is gone: nothing
            was stored.
        """

    def clear_v1_layer(image_id, chunks, reason=None):
        """
        Forget the layer of an unfinished image if it is still C{chunks}
        (its checksum did not match, or its push was abandoned), recording
        its chunks as garbage (with C{reason}, or one naming the image) in
        the same transaction.

        @return: Deferred firing with True if it was forgotten.
        """

    def complete_v1_image(image_id, checksum):
        """
        Mark an unfinished image complete if its layer's checksum is
        C{checksum}.

        @return: Deferred firing with True if it was marked, False if
            nothing changed (gone, complete, no layer, another checksum).
        """

    def stale_v1_layers(created_before, limit=100):
        """
        @return: Deferred firing with the unfinished L{V1ImageRecord}s that
            have a layer and whose JSON was PUT before C{created_before},
            oldest first, at most C{limit}: pushes abandoned between their
            layer and their checksum, whose layers are to be dropped
            (L{clear_v1_layer}).
        """

    def v1_summary():
        """
        @return: Deferred firing with the V1 tables at a glance, a dict:
            C{repositories}, C{tags}, C{images} (complete), C{unfinished}
            (images whose push did not complete), C{layer_bytes} (of
            complete images), C{unfinished_layers} and
            C{unfinished_layer_bytes} (layers of unfinished images, which
            expire).
        """

    def put_v1_index(repository, images):
        """
        Merge C{images} (a list of dicts with C{"id"} and maybe
        C{"checksum"}) into the repository's image index, creating the
        repository if needed (L{speedy.metadata.schema.merge_v1_index}).

        @return: Deferred firing with the stored L{V1RepositoryRecord}.
        """

    def get_v1_repository(repository):
        """@return: Deferred firing with a L{V1RepositoryRecord} or None."""

    def put_v1_tag(record):
        """
        Point a L{V1TagRecord} at its image, replacing the tag's earlier
        record, creating the repository if needed.

        @raise ReferencesMissing: no image has C{record.image_id}.
        @return: Deferred firing with None.
        """

    def get_v1_tag(repository, tag):
        """@return: Deferred firing with a L{V1TagRecord} or None."""

    def list_v1_tags(repository):
        """@return: Deferred firing with the repository's L{V1TagRecord}s
        in tag order, or None if there is no such repository."""

    def delete_v1_tag(repository, tag):
        """@return: Deferred firing with True if the tag existed."""

    def delete_v1_repository(repository):
        """Delete a repository, its tags and its index (not its images,
        which other repositories may share).
        @return: Deferred firing with True if it existed."""

    def search_v1_repositories(text, limit=None):
        """@return: Deferred firing with the names of the repositories
        that contain C{text}, in lexical order, at most C{limit}."""


class IGarbageTables(Interface):
    """
    Chunks that nothing owns any more (a replaced or deleted file, a
    partial write, a delete that failed on a member), waiting for the
    garbage collector.  Recorded by the imageserver's storage path.  Keeps
    the rules of L{IMetadataStore}.
    """

    def record_garbage(chunks, reason):
        """
        Record L{ChunkRef}s that nothing owns any more, for collection,
        stamped with the store's clock.  A chunk already recorded (same
        C{group_id} and C{file_id}) keeps its first record.

        @return: Deferred firing with None.
        """

    def list_garbage(limit=1000, after=None):
        """
        @param after: a L{GarbageChunk} listed before, or None: only the
            records that come after it are listed (pages).
        @return: Deferred firing with a list of L{GarbageChunk}, oldest
            first (by C{recorded}, then group id and file id), at most
            C{limit}.
        """

    def forget_garbage(chunks):
        """Remove collected chunks from the garbage list.  @return: Deferred."""

    def record_intents(chunks, reason):
        """
        Record L{ChunkRef}s about to be written that nothing owns yet (the
        chunks of a PATCH, a whole-blob POST, a file PUT or a V1 layer PUT
        before their bytes go out), stamped with the store's
        clock: if their writer dies, the collector finds them here.  The
        row that takes a chunk over removes its intent in its own
        transaction (the C{adopted} of L{IUploadTables.update_upload},
        L{IRegistryTables.put_blob}, L{IFileTables.put_file} and
        L{IV1Tables.set_v1_layer}).  Only
        C{group_id} and C{file_id} identify a chunk; C{crc32c} may be 0
        when not known yet.  A chunk already recorded keeps its record.

        @return: Deferred firing with None.
        """

    def list_intents(limit=1000):
        """@return: Deferred firing with the intents, as L{GarbageChunk}s,
        oldest first (by C{recorded}, then group id and file id), at most
        C{limit} (None: all)."""

    def expire_intents(recorded_before, limit=1000):
        """
        Move the intents recorded before C{recorded_before} (their chunks'
        writers never handed them over) into the garbage table, keeping
        their C{recorded} time, each in one transaction with its removal,
        at most C{limit} of them.

        @return: Deferred firing with the number moved.
        """


class ISweepTables(Interface):
    """
    The mark and sweep of the registry's tables (C{docs/gc.md}): blobs no
    manifest references and, under policies off by default, manifests
    nothing keeps.  A I{mark} is a plain read that lists candidates; a
    I{sweep} takes each candidate's row exclusively, checks it again with
    reads that see the latest commit, and deletes it in the same
    transaction, so a concurrent link, mount or manifest put either
    committed first (and the candidate stays) or finds it gone.  Used by
    L{speedy.chunkmaster.sweep}.  Keeps the rules of L{IMetadataStore}.

    A blob is garbage when, at C{horizon} (a time: now less the grace
    period): it was stored at or before the horizon; no manifest of any
    repository references it (config, layers, index children: a
    manifest's C{references}); no repository linked it (a push or mount)
    after the horizon; and no repository that links it has an upload in
    progress.

    A manifest is garbage, under the C{untagged} policy, when it was
    stored at or before the horizon, no tag names it, no manifest of its
    repository lists it, and it has no subject or its subject is not in
    its repository; under the C{orphans} policy, the same but only for a
    manifest with a subject (an artifact whose subject is gone).  A tag
    always keeps a manifest.
    """

    def unreferenced_blobs(horizon, limit=1000, after=None):
        """
        Mark: the blobs that are garbage now.

        @param after: a digest, or None: only blobs after it (pages).
        @return: Deferred firing with a list of L{BlobRecord}s, by digest,
            at most C{limit}.
        """

    def collect_blobs(digests, horizon):
        """
        Sweep, in one transaction: each blob of C{digests} still garbage is
        deleted with every repository's link to it, and its chunks are
        recorded as garbage (L{IGarbageTables.record_garbage}, reason
        C{"blob DIGEST collected"}).

        @return: Deferred firing with the list of the L{BlobRecord}s deleted.
        """

    def unkept_manifests(horizon, untagged=False, orphans=False, limit=1000, after=None):
        """
        Mark: the manifests that are garbage now under the policies (none
        when both are off).

        @param after: a C{(repository, digest)}, or None: only manifests
            after it (pages).
        @return: Deferred firing with a list of C{(repository, digest)},
            by repository and digest, at most C{limit}.
        """

    def collect_manifests(keys, horizon, untagged=False, orphans=False):
        """
        Sweep, in one transaction: each manifest of C{keys} (C{(repository,
        digest)}) still garbage is deleted as L{IRegistryTables.delete_manifest}
        does.  The manifests it listed may become garbage in turn: the
        next mark finds them.

        @return: Deferred firing with the list of the keys deleted.
        """

    def garbage_after(gone, horizon, untagged=False, orphans=False):
        """
        Mark, for a dry run, deleting nothing: what is not garbage now but
        would be once the manifests C{gone} (C{(repository, digest)}s,
        garbage now) were deleted: the manifests they list or are the
        subject of, under the policies, and the blobs only they (and
        other manifests of C{gone}) reference.

        @return: Deferred firing with C{(keys, blobs)}: the manifests'
            C{(repository, digest)}s (none of C{gone}) and the blobs'
            L{BlobRecord}s, each sorted.
        """


class IRepairTables(Interface):
    """
    Replicas found missing or damaged, waiting for repair.  Recorded by
    the imageserver's readers.  Keeps the rules of L{IMetadataStore}.
    """

    def record_bad_replica(bad):
        """
        Record a L{BadReplica} for repair, replacing any earlier record for
        the same C{server_id} and C{file_id}.

        @return: Deferred firing with None.
        """

    def list_bad_replicas(limit=1000):
        """@return: Deferred firing with a list of L{BadReplica}, oldest
        first."""

    def forget_bad_replica(server_id, file_id):
        """The replica was repaired (or found good): forget its record.
        @return: Deferred firing with True if there was one."""

    def count_bad_replicas():
        """@return: Deferred firing with the number of bad replicas recorded."""

    def referenced_chunks():
        """
        Every chunk something owns: the chunks of every file, blob, V1
        image layer and upload in progress (for fsck).

        @return: Deferred firing with a list of C{(owner, ChunkRef)}, where
            C{owner} names what owns it: C{"file PATH"}, C{"blob DIGEST"},
            C{"upload ID"}, C{"v1-image ID"} (a V1 image's layer).
        """


class ITransferTables(Interface):
    """
    Drains and rebalances (L{speedy.records.TransferRecord}) and the chunks
    they are moving (L{speedy.records.ChunkMove}), kept so a transfer
    resumes after a crash of any role.  Used by the chunkmaster's
    L{speedy.chunkmaster.transfer.TransferService}.  Keeps the rules of
    L{IMetadataStore}.

    Garbage collection must treat both copies of every recorded move as
    owned: the new one is not referenced until the switch, and the old one
    is still read by imageservers that looked up its chunk list before the
    switch until the move is forgotten.
    """

    def put_transfer(record):
        """Create or replace a transfer, stamping a zero C{created} and
        every C{updated} with the store's clock.  @return: Deferred firing
        with the stored L{TransferRecord}."""

    def get_transfer(transfer_id):
        """@return: Deferred firing with the L{TransferRecord}, or None."""

    def list_transfers():
        """@return: Deferred firing with every L{TransferRecord}, oldest first."""

    def record_move(move):
        """
        Record a L{ChunkMove} before its copy starts.

        @return: Deferred firing with None.
        @raise BadRequest: the old chunk is already on the move.
        """

    def list_moves(transfer_id=None, switched=None, switched_before=None, limit=None):
        """
        @param transfer_id: only that transfer's moves.
        @param switched: True for switched moves only, False for moves not
            switched yet, None for both.
        @param switched_before: only moves switched before that time.
        @return: Deferred firing with a list of L{ChunkMove}, by old group
            and file id.
        """

    def switch_moves(moves):
        """
        In one transaction: every reference to each move's old chunk (files,
        blobs, uploads, V1 image layers) names its new chunk instead, and
        each move not switched yet is stamped switched now.  Running it
        again for a switched move rewrites references written since (a
        late writer) and keeps its time.

        @return: Deferred firing with the number of chunk references rewritten.
        """

    def forget_moves(moves):
        """The old copies are deleted (or a move was abandoned): forget
        them.  @return: Deferred firing with None."""


class IMetadataStore(IClusterTables, IFileTables, IRegistryTables, IUploadTables,
                     IV1Tables, IGarbageTables, ISweepTables, IRepairTables, ITransferTables):
    """
    Cluster and registry metadata: every role's tables in one database,
    which the daemons start and close.  Implementations: in memory
    (C{--db memory:}, and tests), SQLite and MySQL/MariaDB through
    C{twisted.enterprise.adbapi}.  Code that uses only some tables names
    their role interface instead.

    A lost database errbacks with L{speedy.errors.Unavailable}; service
    resumes by itself when the database returns.  Lookups of missing
    things fire with None rather than failing, unless said otherwise.

    Rules every method keeps, those of the role interfaces too:

      - a record written with a zero C{created}, C{updated} or C{recorded}
        time is stored with the store's clock's time instead;
      - C{limit=None} means no limit; a negative limit (or one that is not
        an integer) raises L{speedy.errors.BadRequest};
      - invalid arguments raise L{speedy.errors.BadRequest} before anything
        is written.
    """

    def start():
        """
        Connect and apply pending schema migrations.  May be called again
        after it failed with L{Unavailable} (the database was unreachable).

        @return: Deferred firing with None.
        """

    def close():
        """@return: a Deferred firing when every connection is closed."""


# --- imageserver storage path --------------------------------------------------


class IChunkedStorage(Interface):
    """
    The imageserver's storage path: streams cut into chunks, each written to
    every member of one replica group, and read back from any replica with
    failover.  Both the REST file API and the registry API sit on it.
    """

    def writer(length=None, record_intent=None):
        """
        @param length: the number of bytes the stream will carry, when
            known (a request's C{Content-Length}): chunks may then be sent
            on while they arrive, and a stream that carries more or ends
            short of it fails.
        @param record_intent: None, or called with the L{ChunkRef} of each
            chunk (its C{crc32c} 0 when not known yet) once its group and
            file id are chosen and before any byte of it goes out; returns
            a Deferred, and the chunk waits for it (the write fails if it
            fails).  Each try of a chunk on another group is a new chunk.
        @return: a new L{IChunkedWriter}.  It serves the request whose id
            is current when it is made (L{speedy.logs.request_id}): what it
            asks of chunkservers carries that id as its trace, whatever
            context its methods are called in.
        """

    def read(chunks, offset, length, consumer):
        """
        Stream bytes C{offset} to C{offset + length} of the file made of
        C{chunks} (a sequence of L{ChunkRef}) into C{consumer} (an
        L{twisted.internet.interfaces.IConsumer}), in order, fetching the
        next chunks ahead concurrently and honouring the consumer's
        back-pressure.  C{consumer.unregisterProducer} is called at the end.

        @return: a Deferred firing with None when every byte was written, or
            failing with L{Unavailable} when no replica of some chunk could
            serve it, or with L{RangeNotSatisfiable} when the range lies
            outside the file.  Cancelling it stops the work upstream.
            Its fetches carry the id of the request current when C{read}
            is called (L{speedy.logs.request_id}) as their trace.
        """

    def delete(chunks):
        """
        Delete C{chunks} from every member of their groups, best-effort;
        what could not be deleted is recorded as garbage.
        @return: Deferred.
        """


class IChunkedWriter(Interface):
    """A stream being cut into chunks and written to replica groups."""

    def write(data):
        """
        Feed the next bytes.

        @return: a Deferred firing with None when the writer can take more
            (immediately while its buffers are below the limit): callers
            wait on it, which is how back-pressure reaches their socket.
            It fails if a chunk could not be stored on any group.
        """

    def finish():
        """
        @return: a Deferred firing with the tuple of L{ChunkRef}s written,
            in order, once every chunk is durable on all members of its group.
        """

    def abort():
        """
        Stop, and delete what was written (best-effort, the rest recorded as
        garbage).  @return: Deferred.
        """

    bytes_written = Attribute("Bytes fed so far.")
