"""
Upload sessions and blob bodies without HTTP: L{UploadSessions} and
L{BlobBody} over L{MemoryMetadataStore} and L{MemoryChunkedStorage}, on a
L{Clock}.
"""

import hashlib

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from speedy.errors import Busy, IntentExpired, NoWritableGroup
from speedy.metadata.memory import MemoryMetadataStore
from speedy.registry.api import RegistryAPI
from speedy.registry.blobs import Blobs
from speedy.registry.bodies import BoundedBody
from speedy.registry.errors import RegistryError
from speedy.registry.uploads import UploadSessions, parse_content_range
from speedy.testing import MemoryChunkedStorage


async def _raise(exception):
    raise exception


def sha256(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


class UploadSessionTests(SynchronousTestCase):

    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1000)
        self.metadata = MemoryMetadataStore(self.clock)
        self.storage = MemoryChunkedStorage(chunk_size=100)
        self.uploads = UploadSessions(
            self.metadata, self.storage, Blobs(self.metadata, self.storage, self.clock),
            self.clock, expiry=3600, expiry_interval=60)

    def result_of(self, coroutine):
        """@return: the result of a coroutine that completes at once."""
        return self.successResultOf(Deferred.fromCoroutine(coroutine))

    def send(self, body, *pieces):
        """Feed C{body} the pieces and finish it; @return: its outcome Deferred."""
        for piece in pieces:
            self.assertIsNone(self.successResultOf(body.write(piece)))
        body.finish()
        return body.outcome()

    def patch_upload(self, record, data, start=None):
        content_range = None if start is None else f"{start}-{start + len(data) - 1}"
        body = self.uploads.receive_chunk(record.repository, record.upload_id, content_range, len(data))
        received = self.successResultOf(self.send(body, data))
        return Deferred.fromCoroutine(self.uploads.append(received))

    def test_concurrent_appends(self):
        """Two bodies prepared at the same offset (two imageservers): the
        first to commit wins; the second is 416 at the new offset and its
        chunks are deleted."""
        record = self.result_of(self.uploads.create("repo"))
        first = self.uploads.receive_chunk("repo", record.upload_id, "0-149", 150)
        second = self.uploads.receive_chunk("repo", record.upload_id, "0-149", 150)
        first = self.successResultOf(self.send(first, b"a" * 150))
        second = self.successResultOf(self.send(second, b"b" * 150))
        self.result_of(self.uploads.append(first))
        failure = self.failureResultOf(
            Deferred.fromCoroutine(self.uploads.append(second)), RegistryError)
        self.assertEqual(failure.value.status, 416)
        self.assertEqual(failure.value.headers["Range"], "0-149")
        self.assertEqual(set(self.storage.chunks), {c.file_id for c in first.chunks})
        blob = self.result_of(self.uploads.complete("repo", record.upload_id, sha256(b"a" * 150)))
        self.assertEqual(self.storage.contents(blob.chunks), b"a" * 150)

    def intents(self):
        return [g.chunk.file_id for g in self.successResultOf(self.metadata.list_intents())]

    def recorded_intents(self):
        """Record, from now on, each intent's file id, whether its chunk
        was stored yet, and its reason.  @return: the list they go to."""
        seen = []
        record_intents = self.metadata.record_intents

        def recording(chunks, reason):
            for chunk in chunks:
                seen.append((chunk.file_id, chunk.file_id in self.storage.chunks, reason))
            return record_intents(chunks, reason)
        self.patch(self.metadata, "record_intents", recording)
        return seen

    def test_chunks_recorded_before_they_are_stored(self):
        """Each chunk of a PATCH body is recorded as an intent before it is
        stored (an imageserver that dies then leaves them findable); the
        append hands them to the session, and their intents go."""
        record = self.result_of(self.uploads.create("repo"))
        seen = self.recorded_intents()
        body = self.uploads.receive_chunk("repo", record.upload_id, "0-249", 250)
        received = self.successResultOf(self.send(body, b"z" * 250))
        self.assertEqual(seen, [(c.file_id, False, f"upload {record.upload_id}")
                                for c in received.chunks])
        self.assertEqual(self.intents(), [c.file_id for c in received.chunks])
        record = self.result_of(self.uploads.append(received))
        self.assertEqual(record.chunks, received.chunks)
        self.assertEqual(self.intents(), [])

    def test_patch_slower_than_the_intents(self):
        """A body whose intents expired before its append (the collector
        may delete its chunks) is refused with 416 at the session's offset;
        the session does not take the chunks, and the client resends."""
        record = self.result_of(self.uploads.create("repo"))
        body = self.uploads.receive_chunk("repo", record.upload_id, "0-149", 150)
        received = self.successResultOf(self.send(body, b"s" * 150))
        self.clock.advance(7200)
        self.assertEqual(self.successResultOf(self.metadata.expire_intents(self.clock.seconds())), 2)
        failure = self.failureResultOf(
            Deferred.fromCoroutine(self.uploads.append(received)), RegistryError)
        self.assertEqual((failure.value.status, failure.value.headers["Range"]), (416, "0-0"))
        self.assertEqual(self.successResultOf(self.metadata.get_upload(record.upload_id)).chunks, ())
        record = self.successResultOf(self.patch_upload(record, b"s" * 150, start=0))
        blob = self.result_of(self.uploads.complete("repo", record.upload_id, sha256(b"s" * 150)))
        self.assertEqual(self.storage.contents(blob.chunks), b"s" * 150)

    def test_no_chunk_without_its_intent(self):
        """When the intent cannot be recorded (the database is away), the
        chunk is not stored and the body fails."""
        record = self.result_of(self.uploads.create("repo"))
        self.patch(self.metadata, "record_intents",
                   lambda chunks, reason: Deferred.fromCoroutine(_raise(Busy("db away"))))
        body = self.uploads.receive_chunk("repo", record.upload_id, "0-149", 150)
        body.write(b"q" * 150)
        body.finish()
        self.failureResultOf(body.outcome())
        self.assertEqual(self.storage.chunks, {})

    def receive_whole(self, data, repository="repo"):
        """@return: the L{ReceivedBlob} of C{data} sent as a monolithic POST."""
        body = self.uploads.receive_blob("sha256", len(data), repository)
        return self.successResultOf(self.send(body, data))

    def test_whole_blob_chunks_recorded_before_they_are_stored(self):
        """Each chunk of a whole blob in one request (monolithic POST) is
        recorded as an intent before it is stored; the blob's row takes
        them over, and their intents go."""
        seen = self.recorded_intents()
        received = self.receive_whole(b"w" * 250)
        self.assertEqual(seen, [(c.file_id, False, "monolithic upload to repo")
                                for c in received.chunks])
        self.assertEqual(self.intents(), [c.file_id for c in received.chunks])
        blob = self.result_of(self.uploads.commit_whole("repo", sha256(b"w" * 250), received))
        self.assertEqual(blob.chunks, received.chunks)
        self.assertEqual(self.intents(), [])
        self.assertEqual(self.successResultOf(self.metadata.list_garbage()), [])

    def test_whole_blob_slower_than_its_intents(self):
        """A whole blob whose intents expired before its commit (the
        collector may delete its chunks) is not stored: the commit fails
        with IntentExpired (503, push again) and deletes its chunks."""
        received = self.receive_whole(b"e" * 150)
        self.clock.advance(7200)
        self.assertEqual(
            self.successResultOf(self.metadata.expire_intents(self.clock.seconds())), 2)
        self.failureResultOf(Deferred.fromCoroutine(
            self.uploads.commit_whole("repo", sha256(b"e" * 150), received)), IntentExpired)
        self.assertIsNone(self.successResultOf(self.metadata.get_blob(sha256(b"e" * 150))))
        self.assertEqual(self.storage.chunks, {})

    def test_whole_blob_no_chunk_without_its_intent(self):
        """When the intent of a whole blob's chunk cannot be recorded, the
        chunk is not stored and the body fails."""
        self.patch(self.metadata, "record_intents",
                   lambda chunks, reason: Deferred.fromCoroutine(_raise(Busy("db away"))))
        body = self.uploads.receive_blob("sha256", 150, "repo")
        body.write(b"q" * 150)
        body.finish()
        self.failureResultOf(body.outcome(), Busy)
        self.assertEqual(self.storage.chunks, {})

    def test_whole_blob_stored_already(self):
        """A whole blob whose digest is stored already: the stored copy
        wins and the new chunks are deleted at once; nothing else owns
        them, so their intents only wait to expire (the collector then
        finds them gone)."""
        first = self.receive_whole(b"d" * 150)
        stored = self.result_of(self.uploads.commit_whole("repo", sha256(b"d" * 150), first))
        second = self.receive_whole(b"d" * 150, repository="other")
        self.assertEqual(
            self.result_of(self.uploads.commit_whole("other", sha256(b"d" * 150), second)),
            stored)
        self.assertEqual(set(self.storage.chunks), {c.file_id for c in first.chunks})
        self.assertEqual(self.intents(), [c.file_id for c in second.chunks])

    def test_whole_blob_digest_mismatch(self):
        """A whole blob that does not match its digest is not stored, and
        its chunks are deleted."""
        received = self.receive_whole(b"m" * 150)
        failure = self.failureResultOf(Deferred.fromCoroutine(
            self.uploads.commit_whole("repo", sha256(b"other"), received)), RegistryError)
        self.assertEqual(failure.value.status, 400)
        self.assertEqual(self.storage.chunks, {})

    def test_completion_hands_chunks_over_in_one_transaction(self):
        """The transaction that deletes a completed session records its
        chunks as intents: an imageserver killed before the blob's row is
        written (its put_blob never answers) leaves them to the collector,
        not to nobody.  A completion that goes through takes them over."""
        record = self.result_of(self.uploads.create("repo"))
        record = self.successResultOf(self.patch_upload(record, b"k" * 250))
        self.patch(self.metadata, "put_blob", lambda blob, adopted=(): Deferred())
        completing = Deferred.fromCoroutine(
            self.uploads.complete("repo", record.upload_id, sha256(b"k" * 250)))
        self.assertNoResult(completing)  # killed here
        self.assertIsNone(self.successResultOf(self.metadata.get_upload(record.upload_id)))
        self.assertEqual(self.intents(), [c.file_id for c in record.chunks])
        self.assertEqual(
            self.successResultOf(self.metadata.expire_intents(self.clock.seconds() + 1)), 3)
        self.assertEqual({g.chunk for g in self.successResultOf(self.metadata.list_garbage())},
                         set(record.chunks))

    def test_completion_adopts_the_session_chunks(self):
        """A completed session's blob owns its chunks, and no intent or
        garbage record of them is left."""
        record = self.result_of(self.uploads.create("repo"))
        record = self.successResultOf(self.patch_upload(record, b"c" * 250))
        body = self.uploads.receive_chunk("repo", record.upload_id, None, 50, final=True)
        received = self.successResultOf(self.send(body, b"d" * 50))
        blob = self.result_of(self.uploads.complete(
            "repo", record.upload_id, sha256(b"c" * 250 + b"d" * 50), received))
        self.assertEqual(blob.chunks, record.chunks + received.chunks)
        self.assertEqual(self.intents(), [])
        self.assertEqual(self.successResultOf(self.metadata.list_garbage()), [])

    def test_completion_digest_mismatch_records_garbage(self):
        """A session completed with the wrong digest ends: its chunks are
        recorded as garbage in the transaction that deletes it, and
        deleted."""
        record = self.result_of(self.uploads.create("repo"))
        record = self.successResultOf(self.patch_upload(record, b"x" * 150))
        failure = self.failureResultOf(Deferred.fromCoroutine(
            self.uploads.complete("repo", record.upload_id, sha256(b"y" * 150))), RegistryError)
        self.assertEqual(failure.value.status, 400)
        self.assertIsNone(self.successResultOf(self.metadata.get_upload(record.upload_id)))
        garbage = self.successResultOf(self.metadata.list_garbage())
        self.assertEqual({g.chunk for g in garbage}, set(record.chunks))
        self.assertEqual({g.reason for g in garbage},
                         {f"upload {record.upload_id}: digest mismatch"})
        self.assertEqual(self.storage.chunks, {})

    def test_cancel_records_garbage_with_the_delete(self):
        """A cancelled session's chunks are recorded as garbage by the
        transaction that deletes it (no later call can be lost)."""
        record = self.result_of(self.uploads.create("repo"))
        record = self.successResultOf(self.patch_upload(record, b"x" * 150))
        self.patch(self.metadata, "record_garbage", lambda chunks, reason: Deferred())
        self.result_of(self.uploads.cancel("repo", record.upload_id))
        garbage = self.successResultOf(self.metadata.list_garbage())
        self.assertEqual({g.chunk for g in garbage}, set(record.chunks))
        self.assertEqual({g.reason for g in garbage}, {f"upload {record.upload_id} cancelled"})

    def test_hash_state_saved(self):
        """Each append saves the running hash so that another imageserver
        does not need to read the chunks back."""
        record = self.result_of(self.uploads.create("repo"))
        record = self.successResultOf(self.patch_upload(record, b"x" * 250, start=0))
        self.assertEqual((record.offset, record.hash_algorithm), (250, "sha256"))
        self.storage.read_failure = AssertionError("the chunks were read back")
        record = self.successResultOf(self.patch_upload(record, b"y" * 10))
        blob = self.result_of(self.uploads.complete("repo", record.upload_id, sha256(b"x" * 250 + b"y" * 10)))
        self.assertEqual(blob.size, 260)

    def test_stale_uploads_expire(self):
        """A session untouched for the expiry time is deleted by the timer,
        its chunks handed to the collector; a recently touched one stays; stop() leaves no
        timer behind."""
        old = self.result_of(self.uploads.create("repo"))
        self.successResultOf(self.patch_upload(old, b"o" * 150))
        self.uploads.start()
        self.clock.advance(1800)
        fresh = self.result_of(self.uploads.create("repo"))
        self.successResultOf(self.patch_upload(fresh, b"f" * 50))
        self.clock.advance(1801)
        self.assertIsNone(self.successResultOf(self.metadata.get_upload(old.upload_id)))
        self.assertIsNotNone(self.successResultOf(self.metadata.get_upload(fresh.upload_id)))
        fresh = self.successResultOf(self.metadata.get_upload(fresh.upload_id))
        garbage = self.successResultOf(self.metadata.list_garbage())
        self.assertEqual({g.chunk.file_id for g in garbage},
                         set(self.storage.chunks) - {c.file_id for c in fresh.chunks})
        self.assertEqual({g.reason for g in garbage}, {f"upload {old.upload_id} expired"})
        self.uploads.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_expiry_spares_a_session_revived_meanwhile(self):
        """A stale session that a PATCH moves on after the expiry found it
        is kept, with every chunk."""
        record = self.result_of(self.uploads.create("repo"))
        self.clock.advance(3601)
        stale_uploads = self.metadata.stale_uploads

        def found_then_appended(*args, **kwargs):
            found = stale_uploads(*args, **kwargs)
            self.successResultOf(self.patch_upload(record, b"p" * 150))
            return found
        self.patch(self.metadata, "stale_uploads", found_then_appended)
        self.assertEqual(self.result_of(self.uploads.expire()), 0)
        kept = self.successResultOf(self.metadata.get_upload(record.upload_id))
        self.assertEqual(kept.offset, 150)
        self.assertEqual(set(self.storage.chunks), {c.file_id for c in kept.chunks})

    def test_api_timers(self):
        """RegistryAPI.start() runs the expiry timer on the given clock;
        stop() leaves none behind."""
        api = RegistryAPI(self.metadata, self.storage, self.clock, upload_expiry=10, expiry_interval=5)
        record = self.result_of(api.uploads.create("repo"))
        api.start()
        self.clock.advance(5)
        self.assertIsNotNone(self.successResultOf(self.metadata.get_upload(record.upload_id)))
        self.clock.advance(10)
        self.assertIsNone(self.successResultOf(self.metadata.get_upload(record.upload_id)))
        api.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_body_waits_for_storage(self):
        """While the storage writer holds back, each write's Deferred stays
        unfired (so the site stops reading the socket), and fires once the
        writer can take more."""
        self.storage.write_gate = Deferred()
        body = self.uploads.receive_blob("sha256")
        waiting = body.write(b"a" * 10)
        self.assertNoResult(waiting)
        gate, self.storage.write_gate = self.storage.write_gate, None
        gate.callback(None)
        self.assertIsNone(self.successResultOf(waiting))
        self.assertIsNone(self.successResultOf(body.write(b"b")))
        body.finish()
        received = self.successResultOf(body.outcome())
        self.assertEqual((received.length, received.hash.digest()), (11, sha256(b"a" * 10 + b"b")))

    def test_body_failure_deletes_chunks(self):
        """A writer failing mid-body fails the outcome and deletes what was written."""
        body = self.uploads.receive_blob("sha256")
        body.write(b"a" * 250)
        self.storage.write_failure = NoWritableGroup("full")
        body.write(b"b" * 10)
        body.write(b"c" * 10)
        body.finish()
        self.failureResultOf(body.outcome(), NoWritableGroup)
        self.assertEqual(self.storage.chunks, {})

    def test_connection_lost_deletes_chunks(self):
        """A client gone mid-body leaves no chunk behind."""
        body = self.uploads.receive_blob("sha256")
        body.write(b"a" * 250)
        self.assertEqual(len(self.storage.chunks), 2)
        body.connection_lost(Failure(ConnectionError("gone")))
        self.assertEqual(self.storage.chunks, {})

    def test_bounded_body(self):
        """A bounded body gives its bytes back, or 413 past its limit."""
        body = BoundedBody(5)
        body.write(b"abc")
        body.write(b"de")
        body.finish()
        self.assertEqual(self.successResultOf(body.outcome()), b"abcde")
        body.write(b"f")
        self.assertEqual(self.failureResultOf(body.outcome(), RegistryError).value.status, 413)

    def test_content_range(self):
        """Content-Range is <start>-<end>, inclusive."""
        self.assertEqual(parse_content_range("0-0"), (0, 1))
        self.assertEqual(parse_content_range("100-199"), (100, 100))
        self.assertEqual(parse_content_range("bytes 5-9/10"), (5, 5))
        for bad in ["", "5", "9-5", "a-b", "-5", "1-2-3"]:
            self.assertRaises(ValueError, parse_content_range, bad)

    def test_other_algorithm_on_completion(self):
        """Completing a sha256 session with a sha512 digest hashes the
        stored chunks again with sha512."""
        record = self.result_of(self.uploads.create("repo"))
        self.successResultOf(self.patch_upload(record, b"z" * 120))
        digest = "sha512:" + hashlib.sha512(b"z" * 120).hexdigest()
        blob = self.result_of(self.uploads.complete("repo", record.upload_id, digest))
        self.assertEqual(blob.digest, digest)

    def test_unreadable_chunks_when_rehashing(self):
        """If the hash must be recomputed and storage cannot serve the
        chunks, completion fails and the session is kept for a retry."""
        record = self.result_of(self.uploads.create("repo"))
        record = self.successResultOf(self.patch_upload(record, b"z" * 120))
        self.successResultOf(self.metadata.update_upload(attrs.evolve(record, hash_state=None), 120))
        self.storage.read_failure = NoWritableGroup("no replica")
        self.failureResultOf(Deferred.fromCoroutine(
            self.uploads.complete("repo", record.upload_id, sha256(b"z" * 120))), NoWritableGroup)
        self.assertIsNotNone(self.successResultOf(self.metadata.get_upload(record.upload_id)))


class BlobCommitTests(SynchronousTestCase):
    """L{Blobs.commit} against blobs deleted under it."""

    def setUp(self):
        self.clock = Clock()
        self.metadata = MemoryMetadataStore(self.clock)
        self.storage = MemoryChunkedStorage(chunk_size=100)
        self.blobs = Blobs(self.metadata, self.storage, self.clock)

    def delete_before_each_link(self):
        """Make every link find its blob just deleted, chunks and all, as
        a concurrent DELETE of its last link elsewhere does."""
        link = self.metadata.link_blob

        def deleted_then_link(repository, digest):
            removed = self.successResultOf(self.metadata.delete_blob(digest))
            if removed is not None:
                self.storage.delete(removed.chunks)
            return link(repository, digest)
        self.patch(self.metadata, "link_blob", deleted_then_link)

    def commit(self, repository, data):
        chunks = (self.storage.store(data),)
        return Deferred.fromCoroutine(
            self.blobs.commit(repository, sha256(data), len(data), chunks)), chunks

    def test_own_copy_deleted(self):
        """When the copy stored from the commit's own chunks is deleted
        before it is linked, those chunks may be gone: the commit fails
        with Busy (503, push again), and leaves no blob and no chunk."""
        self.delete_before_each_link()
        committing, _ = self.commit("repo", b"data")
        self.failureResultOf(committing, Busy)
        self.assertIsNone(self.successResultOf(self.metadata.get_blob(sha256(b"data"))))
        self.assertEqual(self.storage.chunks, {})

    def test_copies_of_others_keep_vanishing(self):
        """When every copy the commit finds is deleted before it is
        linked, it gives up with Busy after a few rounds and deletes its
        own chunks."""
        attempts = []
        put_blob = self.metadata.put_blob

        def put_theirs(record, adopted=()):
            attempts.append(record)
            theirs = (self.storage.store(b"data"),)
            self.successResultOf(put_blob(attrs.evolve(record, chunks=theirs)))
            return put_blob(record, adopted)
        self.patch(self.metadata, "put_blob", put_theirs)
        self.delete_before_each_link()
        committing, _ = self.commit("repo", b"data")
        self.failureResultOf(committing, Busy)
        self.assertEqual(len(attempts), 3)
        self.assertEqual(self.storage.chunks, {})

    def test_duplicate_linked(self):
        """A blob committed twice keeps the first copy and deletes the
        second's chunks; both repositories link it."""
        first, first_chunks = self.commit("one", b"data")
        second, _ = self.commit("two", b"data")
        self.assertEqual(self.successResultOf(second).chunks, first_chunks)
        self.assertEqual(set(self.storage.chunks), {c.file_id for c in first_chunks})
        for repository in ("one", "two"):
            self.assertIsNotNone(
                self.successResultOf(self.metadata.blob_linked(repository, sha256(b"data"))))
