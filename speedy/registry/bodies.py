# -*- test-case-name: speedy.test.test_registry_uploads,speedy.test.test_registry_hashing,speedy.test.test_registry_api -*-
"""
Request bodies as they arrive: L{BlobBody} hashes a blob body and writes it
through an L{IChunkedWriter} piece by piece (never whole in memory);
L{BoundedBody} collects a small body (a manifest) up to a limit.

Both are C{IBodySink}s of C{speedy.web.streaming}: the site calls C{write}
for each piece (holding back the client's socket while a returned Deferred
is unfired), then C{finish}, then renders; the resource asks C{outcome()}
for the result.  Under a plain C{Site}, L{speedy.web.rest} feeds them the
body it buffered.

A L{BlobBody} given C{run_in_thread} hashes through a L{HashFeed}: the
pieces are stored as they come and hashed in a worker thread, in order,
and the body is complete once both the writer and the hash are done.  The
client's socket is held back when more than L{HASH_BACKLOG} bytes wait for
the hash, so a slow hash bounds memory like slow storage does.
"""

from attrs import frozen
from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger

from speedy.logs import request_id, run_for
from speedy.registry.digests import HashFeed
from speedy.registry.errors import MANIFEST_TOO_LARGE, SIZE_INVALID, RegistryError

_log = Logger()

#: Bytes of a body waiting for the hashing thread beyond which the body's
#: next piece waits.
HASH_BACKLOG = 8 << 20


@frozen
class ReceivedBlob:
    """A blob body that arrived whole and is stored as chunks."""

    context: object  # what the preparation produced (e.g. the upload record)
    hash: object  # the ResumableHash, fed every byte of the body
    chunks: tuple  # ChunkRefs of the body alone, in order
    length: int


class BlobBody:
    """
    A blob body streamed into storage while it is hashed.

    @param prepared: a Deferred firing with C{(context, hash)} once the
        request was checked (the upload session found, its hash state
        restored), or failing with the L{RegistryError} to answer; the body
        is then discarded.  Pieces arriving before it fired wait for it (the
        client's socket is held back meanwhile).
    @param storage: the L{IChunkedStorage} whose writer takes the bytes.
    @param expected_length: the length the request announced (from
        C{Content-Range}), or None.
    @param body_length: the length the HTTP layer holds the body to (its
        C{Content-Length}), or None: the writer is told, so it can send
        chunks on as they arrive (see L{IChunkedStorage.writer}).
    @param run_in_thread: C{run_in_thread(f, *args)} runs C{f(*args)} in a
        worker thread and returns a Deferred of its result; the body is
        then hashed there (a L{HashFeed}).  None: hashed inline, on the
        reactor thread.
    @param record_intent: given to the storage's writer (see
        L{IChunkedStorage.writer}).

    The body serves the request whose id (L{speedy.logs.request_id}) is
    current when it is made (the router chooses sinks under it): its
    writer is made under that id whenever C{prepared} fires, so every
    chunk it stores carries the request's trace.
    """

    def __init__(self, prepared, storage, expected_length=None, run_in_thread=None,
                 body_length=None, record_intent=None):
        self._storage = storage
        self._record_intent = record_intent
        self._expected_length = expected_length
        self._body_length = body_length
        self._run_in_thread = run_in_thread
        self._writer = None
        self._feed = None
        self._length = 0
        self._request_id = request_id.get()
        self._chain = prepared.addCallback(self._start)

    def _start(self, prepared):
        self._context, self._hash = prepared
        if self._run_in_thread is not None:
            self._feed = HashFeed(self._hash, self._run_in_thread)
        # prepared fired in whatever context finished it (a database's answer)
        self._writer = run_for(self._request_id, self._storage.writer,
                               length=self._body_length, record_intent=self._record_intent)

    def write(self, data):
        """Hash and store C{data}; @return: a Deferred firing when the next
        piece may come."""
        self._chain.addCallback(self._absorb, data)
        ready = Deferred()

        def release(result):
            ready.callback(None)
            return result
        self._chain.addBoth(release)
        return ready

    def _absorb(self, _, data):
        self._length += len(data)
        if self._feed is None:
            self._hash.update(data)
            return self._writer.write(data)
        if type(data) is not bytes:
            data = bytes(data)  # the hashing thread must see these bytes unchanged
        self._feed.update(data)
        stored = self._writer.write(data)
        if self._feed.backlog > HASH_BACKLOG:
            stored.addCallback(lambda _: self._feed.caught_up(HASH_BACKLOG))
        return stored

    def finish(self):
        """The whole body arrived: flush the writer."""
        self._chain.addCallback(self._complete)
        self._chain.addErrback(self._abort)

    def _complete(self, _):
        if self._expected_length is not None and self._length != self._expected_length:
            raise RegistryError(
                SIZE_INVALID, "body length differs from Content-Range",
                detail={"expected": self._expected_length, "received": self._length})
        stored = self._writer.finish()
        if self._feed is not None:
            stored.addCallback(lambda chunks: self._feed.caught_up().addCallback(lambda _: chunks))
        return stored.addCallback(
            lambda chunks: ReceivedBlob(self._context, self._hash, tuple(chunks), self._length))

    def _abort(self, failure):
        """Delete whatever was written, then pass C{failure} on."""
        if self._feed is not None:
            self._feed.stop()
        if self._writer is None:
            return failure
        writer, self._writer = self._writer, None
        return writer.abort().addBoth(lambda _: failure)

    def connection_lost(self, reason):
        """The client went away mid-body: nothing is committed, what was
        written is deleted."""
        self._chain.addBoth(self._drop)
        self._chain.addErrback(
            lambda f: _log.failure("deleting the chunks of an abandoned body failed", f))

    def _drop(self, _):
        if self._feed is not None:
            self._feed.stop()
        if self._writer is not None:
            writer, self._writer = self._writer, None
            return writer.abort()

    def outcome(self):
        """
        @return: a Deferred firing with the L{ReceivedBlob} once C{finish}
            was called and every chunk is stored, or failing with why not
            (nothing of the body is then left in storage).  Call once.
        """
        result = Deferred()

        def hand_over(value):
            result.callback(value)
        self._chain.addBoth(hand_over)
        return result


class BoundedBody:
    """
    A small body kept in memory up to C{limit} bytes; a longer one is
    dropped as it arrives and answered with 413 C{SIZE_INVALID}.
    """

    def __init__(self, limit):
        self._limit = limit
        self._parts = []
        self._length = 0

    def write(self, data):
        self._length += len(data)
        if self._length <= self._limit:
            self._parts.append(bytes(data))
        else:
            self._parts = []

    def finish(self):
        """The body is complete; L{outcome} tells what it was."""

    def connection_lost(self, reason):
        """Forget what arrived."""
        self._parts = []

    def outcome(self):
        """@return: a Deferred firing with the body's bytes, or failing with
        a 413 L{RegistryError} when it was longer than the limit."""
        if self._length > self._limit:
            return fail(RegistryError(
                MANIFEST_TOO_LARGE, f"body over the {self._limit} byte limit",
                detail={"limit": self._limit, "size": self._length}))
        return succeed(b"".join(self._parts))
