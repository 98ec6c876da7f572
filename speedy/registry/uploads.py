# -*- test-case-name: speedy.test.test_registry_uploads,speedy.test.test_registry_api -*-
"""
Blob upload sessions.

A session is an L{UploadRecord} in the metadata store: the bytes received
so far (C{offset}), the chunks they were written as, and the serialised
running hash.  Nothing of it lives in the imageserver, so any imageserver
can take the next PATCH or the final PUT.  Each PATCH's body is written as
chunks of its own (its tail may be a short chunk) appended to the session's
list by a compare-and-set on the offset, so two imageservers can never both
append at one offset: the loser deletes its chunks and answers 416.

Each chunk of a session's body is recorded as an I{intent} in the metadata
store before its bytes go out (L{IGarbageTables.record_intents}); the
compare-and-set that appends it to the session takes it over in the same
transaction.  So the chunks of a PATCH whose imageserver dies half-way are
found by the chunk collector once the intents expire, and a PATCH slower
than that expiry fails (416: the client resumes) instead of naming a chunk
the collector deletes.  A whole blob in one request (a monolithic POST) is
written under intents too, which the blob's row takes over; and a session
that completes hands its chunks to intents in the transaction that deletes
it, for the blob to take over in turn.

Stale sessions (untouched for C{expiry} seconds) are deleted by a timer,
their chunks recorded as garbage in the same transaction (the chunk
collector deletes them).
"""

import re
import uuid

from attrs import evolve
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IConsumer, IReactorThreads
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import implementer

from speedy.records import UploadRecord
from speedy.registry.bodies import BlobBody
from speedy.registry.digests import OneShotHash, ResumableHash, hashing_lane
from speedy.registry.errors import (
    BLOB_UPLOAD_UNKNOWN,
    DIGEST_INVALID,
    RANGE_INVALID,
    RegistryError,
)
from speedy.registry.names import parse_digest

_log = Logger()

#: Sessions examined per round of expiry.
EXPIRY_BATCH = 100


def upload_location(repository, upload_id):
    """@return: the relative URL of an upload session."""
    return f"/v2/{repository}/blobs/uploads/{upload_id}"


def upload_range(offset):
    """@return: the C{Range} header value for C{offset} bytes received:
    C{0-<last byte>}, C{0-0} while nothing arrived (as Distribution)."""
    return f"0-{max(offset - 1, 0)}"


def session_headers(record):
    """@return: the headers every answer about an upload session carries."""
    return {
        "Location": upload_location(record.repository, record.upload_id),
        "Range": upload_range(record.offset),
        "Docker-Upload-UUID": record.upload_id,
        "Blob-Upload-Session-ID": record.upload_id,
    }


def out_of_order(record, message="chunk does not start where the upload stands"):
    """@return: the 416 L{RegistryError} telling the client where to resume."""
    return RegistryError(
        RANGE_INVALID, message, detail={"offset": record.offset}, headers=session_headers(record))


class UploadSessions:
    """
    Upload sessions over the L{speedy.interfaces.IUploadTables} of a
    metadata store and an L{IChunkedStorage}.

    @param blobs: the L{speedy.registry.blobs.Blobs} completed uploads are
        committed to.
    @param expiry: seconds after its last change that a session expires.
    @param expiry_interval: seconds between two looks for stale sessions.
    """

    def __init__(self, metadata, storage, blobs, clock, expiry=24 * 3600, expiry_interval=600):
        self._metadata = metadata
        self._storage = storage
        self._blobs = blobs
        self._clock = clock
        self.expiry = expiry
        self._expiry_interval = expiry_interval
        self._expiry_loop = None
        # Bodies are hashed off the reactor thread when it has a thread pool.
        self._run_in_thread = hashing_lane(clock) if IReactorThreads.providedBy(clock) else None

    def start(self):
        """Start expiring stale sessions."""
        self._expiry_loop = LoopingCall(self._expire_logged)
        self._expiry_loop.clock = self._clock
        self._expiry_loop.start(self._expiry_interval, now=False).addErrback(
            lambda f: _log.failure("upload expiry stopped", f))

    def stop(self):
        """Stop the expiry timer."""
        if self._expiry_loop is not None and self._expiry_loop.running:
            self._expiry_loop.stop()
        self._expiry_loop = None

    def _expire_logged(self):
        d = Deferred.fromCoroutine(self.expire())
        d.addErrback(lambda f: _log.failure("expiring stale uploads failed", f))
        return d

    async def expire(self):
        """
        Delete every session untouched for C{expiry} seconds; its chunks
        go to the garbage table (a re-hash reading them elsewhere finishes
        before the collector's grace period ends).

        @return: the number of sessions deleted.
        """
        count = 0
        while True:
            stale = await self._metadata.stale_uploads(
                self._clock.seconds() - self.expiry, limit=EXPIRY_BATCH)
            for record in stale:
                deleted = await self._metadata.delete_upload(
                    record.upload_id, expected_offset=record.offset, chunks_to="garbage",
                    reason=f"upload {record.upload_id} expired")
                if deleted is not None:
                    count += 1
            if len(stale) < EXPIRY_BATCH:
                return count

    async def create(self, repository, algorithm="sha256"):
        """@return: a new, empty L{UploadRecord} for C{repository}, stored."""
        now = self._clock.seconds()
        record = UploadRecord(
            upload_id=uuid.uuid4().hex, repository=repository, offset=0, chunks=(),
            hash_algorithm=algorithm, hash_state=ResumableHash(algorithm).state(),
            created=now, updated=now)
        await self._metadata.create_upload(record)
        return record

    async def find(self, repository, upload_id):
        """
        @return: the L{UploadRecord} of C{upload_id} in C{repository}.
        @raise RegistryError: C{BLOB_UPLOAD_UNKNOWN} (404).
        """
        record = await self._metadata.get_upload(upload_id)
        if record is None or record.repository != repository:
            raise RegistryError(BLOB_UPLOAD_UNKNOWN, detail={"upload": upload_id})
        return record

    def receive_chunk(self, repository, upload_id, content_range=None, content_length=None,
                      body_length=None, final=False):
        """
        @param content_range: the request's C{Content-Range} (where its
            bytes go), or None to append wherever the session stands.
        @param content_length: the request's C{Content-Length}, or None.
        @param body_length: the length the HTTP layer holds the body to, or
            None (see L{BlobBody}).
        @param final: the body is the session's last (a PUT): if it is also
            its first, its hash is never saved, so it is a L{OneShotHash}.
        @return: a L{BlobBody} for a PATCH or final PUT body; its context is
            the session's L{UploadRecord} as it was before the body.  It
            fails with 416 when the range is malformed, does not start where
            the session stands or disagrees with the length.
        """
        try:
            declared = None if content_range is None else parse_content_range(content_range)
        except ValueError as e:
            declared = e
        length = declared[1] if isinstance(declared, tuple) else content_length
        def record_intent(chunk):
            return self._metadata.record_intents([chunk], f"upload {upload_id}")

        return BlobBody(
            Deferred.fromCoroutine(
                self._prepare_chunk(repository, upload_id, declared, content_length, final)),
            self._storage, expected_length=length, run_in_thread=self._run_in_thread,
            body_length=body_length, record_intent=record_intent)

    async def _prepare_chunk(self, repository, upload_id, declared, content_length, final):
        record = await self.find(repository, upload_id)
        if isinstance(declared, ValueError):
            raise out_of_order(record, str(declared))
        if declared is not None:
            start, length = declared
            if start != record.offset:
                raise out_of_order(record)
            if content_length is not None and content_length != length:
                raise out_of_order(record, "Content-Range and Content-Length disagree")
        if final and record.offset == 0:
            return record, OneShotHash(record.hash_algorithm)
        return record, await self._hash_of(record, record.hash_algorithm)

    def receive_blob(self, algorithm, body_length=None, repository=None):
        """
        @return: a L{BlobBody} for a whole blob in one request (no session,
            a monolithic POST) to C{repository}, of C{body_length} bytes if
            known (see L{BlobBody}).  Each of its chunks is recorded as an
            intent before its bytes go out, as a PATCH's are; the commit
            (L{commit_whole}) takes them over.
        """
        reason = "monolithic upload" if repository is None else f"monolithic upload to {repository}"

        def record_intent(chunk):
            return self._metadata.record_intents([chunk], reason)

        return BlobBody(succeed((None, OneShotHash(algorithm))), self._storage,
                        run_in_thread=self._run_in_thread, body_length=body_length,
                        record_intent=record_intent)

    async def _hash_of(self, record, algorithm):
        """
        @return: a L{ResumableHash} of C{algorithm} over the session's bytes:
            restored from its saved state, or, when there is none for that
            algorithm or it cannot be restored, computed again by reading
            the stored chunks back.
        """
        if record.hash_state is not None and record.hash_algorithm == algorithm:
            try:
                return ResumableHash(algorithm, record.hash_state)
            except ValueError as e:
                _log.warn("upload {upload}: {error}; re-hashing its chunks",
                          upload=record.upload_id, error=e)
        hasher = ResumableHash(algorithm)
        if record.offset:
            await self._storage.read(record.chunks, 0, record.offset, HashingConsumer(hasher, self._clock))
        return hasher

    async def append(self, received):
        """
        Add a received PATCH body to its session.

        @param received: the L{speedy.registry.bodies.ReceivedBlob} of a
            L{receive_chunk} body.
        @return: the session's new L{UploadRecord}.
        @raise RegistryError: 416 when another request moved the session on
            meanwhile, or the body's chunks took longer than the collector
            waits for (their intents expired), the body's chunks are then
            deleted; 404 when it is gone.
        """
        record = received.context
        updated = evolve(
            record, offset=record.offset + received.length,
            chunks=record.chunks + received.chunks,
            hash_algorithm=received.hash.algorithm, hash_state=received.hash.state(),
            updated=self._clock.seconds())
        try:
            moved_on = not await self._metadata.update_upload(
                updated, record.offset, adopted=received.chunks)
        except BaseException:
            await self._storage.delete(received.chunks)
            raise
        if moved_on:
            await self._storage.delete(received.chunks)
            current = await self.find(record.repository, record.upload_id)
            raise out_of_order(current, "another request changed the upload meanwhile")
        return updated

    async def complete(self, repository, upload_id, digest, received=None):
        """
        Finish an upload (the PUT): append the last body if any, check the
        whole against C{digest} and commit the blob.  The session ends
        either way, unless another request appended to it meanwhile; on a
        digest mismatch nothing is committed and every chunk of the session
        is deleted.

        The transaction that deletes the session records its chunks as
        intents (or, on a mismatch, as garbage), and the blob's commit
        takes them over: an imageserver that dies between the two leaves
        them to the collector, never to nobody.

        @return: the stored L{BlobRecord}.
        @raise RegistryError: C{DIGEST_INVALID} (400) on a mismatch; 416
            with the session's new C{Range} when another request appended
            to it meanwhile (the session and its bytes are kept); 404 when
            it is gone.
        """
        algorithm, _ = parse_digest(digest)
        if received is not None:
            record = await self.append(received)
            hasher = received.hash
        else:
            record = await self.find(repository, upload_id)
            hasher = None
        if hasher is None or hasher.algorithm != algorithm:
            hasher = await self._hash_of(record, algorithm)
        actual = hasher.digest()
        if actual == digest:
            chunks_to, reason = "intents", f"upload {upload_id} completed as {digest}"
        else:
            chunks_to, reason = "garbage", f"upload {upload_id}: digest mismatch"
        closed = await self._metadata.delete_upload(
            record.upload_id, expected_offset=record.offset, chunks_to=chunks_to, reason=reason)
        if closed is None:
            current = await self.find(repository, upload_id)
            raise out_of_order(current, "another request changed the upload while it was completed")
        if actual != digest:
            await self._storage.delete(record.chunks)
            raise RegistryError(DIGEST_INVALID, detail={"expected": digest, "actual": actual})
        return await self._blobs.commit(repository, digest, record.offset, record.chunks,
                                        adopted=True)

    async def commit_whole(self, repository, digest, received):
        """
        Commit a blob that arrived in one request (monolithic POST): the
        blob takes its chunks' intents over (see L{receive_blob}).

        @return: the stored L{BlobRecord}.
        @raise RegistryError: C{DIGEST_INVALID} (400) on a mismatch; the
            body's chunks are then deleted (their intents expire into the
            garbage table, where the collector finds them gone).
        @raise IntentExpired: the body took longer than the collector's
            grace period (503: the client pushes again); its chunks are
            deleted.
        """
        actual = received.hash.digest()
        if actual != digest:
            await self._storage.delete(received.chunks)
            raise RegistryError(DIGEST_INVALID, detail={"expected": digest, "actual": actual})
        return await self._blobs.commit(repository, digest, received.length, received.chunks,
                                        adopted=True)

    async def cancel(self, repository, upload_id):
        """
        End a session; its chunks go to the garbage table.

        @raise RegistryError: C{BLOB_UPLOAD_UNKNOWN} (404).
        """
        await self.find(repository, upload_id)
        deleted = await self._metadata.delete_upload(
            upload_id, chunks_to="garbage", reason=f"upload {upload_id} cancelled")
        if deleted is None:
            raise RegistryError(BLOB_UPLOAD_UNKNOWN, detail={"upload": upload_id})


@implementer(IConsumer)
class HashingConsumer:
    """Feeds the bytes an L{IChunkedStorage.read} writes into a hash."""

    def __init__(self, hasher, clock):
        self._hasher = hasher
        self._clock = clock
        self._producer = None
        self._pulling = False
        self._pending = None

    def registerProducer(self, producer, streaming):
        self._producer = producer
        self._pulling = not streaming
        if self._pulling:
            self._pull()

    def _pull(self):
        self._pending = None
        if self._producer is not None:
            self._producer.resumeProducing()

    def unregisterProducer(self):
        self._producer = None
        if self._pending is not None and self._pending.active():
            self._pending.cancel()
        self._pending = None

    def write(self, data):
        self._hasher.update(data)
        if self._producer is not None and self._pending is None and self._pulling:
            self._pending = self._clock.callLater(0, self._pull)


_CONTENT_RANGE = re.compile(r"\s*(?:bytes[ =])?\s*(\d+)\s*-\s*(\d+)\s*(?:/\s*(?:\d+|\*))?\s*\Z")


def parse_content_range(text):
    """
    Read a PATCH's C{Content-Range}: C{<start>-<end>}, inclusive (a
    C{bytes } prefix and a C{/<total>} suffix are tolerated).

    @return: C{(start, length)}.
    @raise ValueError: for anything else.
    """
    m = _CONTENT_RANGE.match(text)
    if m is None:
        raise ValueError(f"not a Content-Range: {text[:100]!r}")
    start, end = int(m.group(1)), int(m.group(2))
    if end < start:
        raise ValueError(f"Content-Range ends before it starts: {text[:100]!r}")
    return start, end - start + 1
