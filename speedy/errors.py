# -*- test-case-name: speedy.test.test_errors -*-
"""
The errors every role shares.

Each storage error carries the wire error code that the chunkserver protocol
answers for it (see ``protocol.md``), so a client can turn an error frame back
into the same exception class the engine raised.  Code 0 is success and is
never an error.
"""


class SpeedyError(Exception):
    """Base class of every error Speedy raises on purpose."""

    code = 255  # INTERNAL


class ChunkNotFound(SpeedyError):
    """No live chunk has that file id (never stored, or deleted)."""

    code = 1


class ChunkExists(SpeedyError):
    """A different chunk is already stored under that file id."""

    code = 2


class ChecksumMismatch(SpeedyError):
    """Stored bytes do not match their checksum: the replica is bad."""

    code = 3


class ReadOnly(SpeedyError):
    """The chunkserver (or group) takes no writes: below its free-space reserve,
    or set read-only by an admin."""

    code = 4


class NoSpace(SpeedyError):
    """The disk filled up during this write; nothing already stored was lost."""

    code = 5


class TooLarge(SpeedyError):
    """A body or frame is larger than the configured limit."""

    code = 6


class BadRequest(SpeedyError):
    """The request is malformed (bad frame, bad arguments)."""

    code = 7


class RangeNotSatisfiable(SpeedyError):
    """A byte range lies outside the stored chunk or file."""

    code = 8


class Busy(SpeedyError):
    """The server has too much in flight; retry later or elsewhere."""

    code = 9


class Timeout(SpeedyError):
    """A peer did not answer in time."""

    code = 10


class IntentExpired(Timeout):
    """
    Chunks written under an intent (see C{IGarbageTables.record_intents})
    were handed over too late: their intents had expired into the garbage
    table (their writer took longer than the collector's grace period), so
    the collector deletes them and no row may name them.  Nothing was
    stored; the client sends the bytes again.
    """

    error_code = "INTENT_EXPIRED"


class ConnectionFailed(SpeedyError):
    """A peer could not be reached, or the connection died mid-request."""

    code = 11


class Unauthenticated(ConnectionFailed):
    """A chunkserver connection failed the handshake (``protocol.md``,
    *Authentication*): the peer does not know the cluster secret, or
    spoke before proving it did.  The connection is closed."""

    code = 15


class Unavailable(SpeedyError):
    """A dependency (database, chunkmaster, every replica) cannot be reached.

    Callers answer 503 and retry later; service resumes on its own."""

    code = 12


class NoWritableGroup(Unavailable):
    """No replica group can take a write right now."""

    code = 13


class NotFound(SpeedyError):
    """A named thing (a server, a group, a file) does not exist."""

    code = 14


class ReferencesMissing(NotFound):
    """
    A record names things that are not there: a manifest's blobs not
    linked in its repository, or its child manifests not stored there.

    @ivar digests: the missing digests, each once, in the order named.
    """

    def __init__(self, digests):
        self.digests = tuple(dict.fromkeys(digests))
        super().__init__("not found: " + ", ".join(self.digests))


class SizeMismatch(BadRequest):
    """
    A record gives a size for a stored thing that differs from its stored
    size.

    @ivar digest: the thing's digest.
    @ivar given: the size the record gives.
    @ivar stored: the size stored.
    """

    def __init__(self, digest, given, stored):
        self.digest, self.given, self.stored = digest, given, stored
        super().__init__(f"{digest} has size {stored}, not {given}")


class Internal(SpeedyError):
    """A bug or an unexpected failure: logged, and answered as such."""

    code = 255


#: Wire error code -> exception class, for clients decoding error frames.
BY_CODE = {
    cls.code: cls
    for cls in (
        ChunkNotFound,
        ChunkExists,
        ChecksumMismatch,
        ReadOnly,
        NoSpace,
        TooLarge,
        BadRequest,
        RangeNotSatisfiable,
        Busy,
        Timeout,
        ConnectionFailed,
        Unauthenticated,
        Unavailable,
        NoWritableGroup,
        NotFound,
        Internal,
    )
}


def error_for_code(code, message=""):
    """
    Build the exception for a wire error code; unknown codes become
    L{Internal} so a newer peer never crashes an older one.
    """
    return BY_CODE.get(code, Internal)(message)
