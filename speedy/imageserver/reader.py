# -*- test-case-name: speedy.test.test_imageserver_reader -*-
"""
Reading chunks back: L{ReplicaReader} fetches one chunk (or a range of it)
from the least-loaded replica and fails over to the next on an error, a
timeout or damaged bytes, reporting the bad replicas it meets;
L{FileReader} streams a byte range of a file into a consumer in order while
it fetches the next chunks ahead.
"""

from collections import Counter, deque

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from zope.interface import implementer

from speedy import errors
from speedy.records import DOWN, BadReplica

log = Logger()

#: The most bytes handed to a consumer in one C{write}, so that a pause takes
#: effect within a chunk.  As large as the chunk client's reads
#: (L{speedy.wire.connection.RECEIVE_SIZE}), so the pieces it fetched are
#: written as they are, without a copy.
WRITE_PIECE = 1 << 20


class ReplicaReader:
    """
    Fetches chunk bytes from any replica of their group.

    @param storage: gives C{client}, C{view}, C{metadata}, C{clock}, C{rng}
        and C{counters} (a L{ReplicatedStorage}).
    """

    def __init__(self, storage):
        self._storage = storage
        self.reading = Counter()  # reads in flight from here, by address

    def fetch(self, group_id, file_id, offset=0, length=None, known=True):
        """
        Fetch C{length} bytes at C{offset} of a chunk (the rest of it when
        C{length} is None), trying its replicas least-loaded first.

        Damaged bytes fail the read with L{ChecksumMismatch}: the chunkserver
        checks its record's CRC32C on every read and the L{IChunkClient}
        checks a whole chunk again on arrival; that CRC32C is the one the
        writer compared with its own when the put was acknowledged.  So the
        bytes are not hashed a third time here (it cost a quarter of a
        download's CPU).

        @param known: the chunk is known to exist (it is in the metadata),
            so a replica without it is reported bad.  Otherwise a chunk no
            replica has fails with L{ChunkNotFound}, and nothing is reported.
        @return: a Deferred firing with the bytes; failing with
            L{Unavailable} when no replica could serve them.  Cancelling it
            cancels the request in flight.
        """
        client = self._storage.client
        return Deferred.fromCoroutine(self._ask(
            group_id, file_id,
            lambda address: client.get(address, file_id, offset, length),
            lambda data: _check(len(data), length), known))

    def fetch_pieces(self, group_id, file_id, offset=0, length=None, known=True):
        """
        Like L{fetch}, for a caller that passes the bytes on in pieces: the
        client's C{get_pieces} spares joining them (a copy of the chunk).

        @return: a Deferred firing with a list of bytes-like pieces, the
            bytes in order; failing as L{fetch} does.
        """
        client = self._storage.client
        return Deferred.fromCoroutine(self._ask(
            group_id, file_id,
            lambda address: client.get_pieces(address, file_id, offset, length),
            lambda pieces: _check(sum(map(len, pieces)), length), known))

    def stat(self, group_id, file_id, known=False):
        """
        @return: a Deferred firing with the L{ChunkInfo} of a chunk from the
            first replica that has it; failing as L{fetch} does.
        """
        client = self._storage.client
        return Deferred.fromCoroutine(self._ask(
            group_id, file_id, lambda address: client.stat(address, file_id),
            lambda info: None, known))

    async def _ask(self, group_id, file_id, request, check, known):
        """
        Send C{request(address)} to each replica of the chunk's group in
        turn, least-loaded first, until one answers something C{check}
        finds nothing wrong with (it returns the problem, or None).
        """
        storage = self._storage
        view = storage.view.current
        group = None if view is None else view.groups.get(group_id)
        if group is None:
            raise errors.Unavailable(f"group {group_id} is not in the cluster view")
        servers = sorted(
            group.servers,
            key=lambda s: (s.state == DOWN, self.reading[s.address], storage.rng.random()))
        reasons = []
        missing = 0
        for server in servers:
            self.reading[server.address] += 1
            try:
                answer = await request(server.address)
            except CancelledError:
                raise
            except errors.ChunkNotFound as e:
                missing += 1
                if known:
                    self._bad(server, group_id, file_id, f"ChunkNotFound: {e}")
                reasons.append(f"{server.address}: ChunkNotFound")
                continue
            except errors.ChecksumMismatch as e:
                self._bad(server, group_id, file_id, f"ChecksumMismatch: {e}")
                reasons.append(f"{server.address}: ChecksumMismatch")
                continue
            except Exception as e:
                log.info("reading chunk {file_id} from {address} failed, trying the next "
                         "replica: {why!r}", file_id=file_id, address=server.address, why=e)
                storage.counters["read_failovers"] += 1
                reasons.append(f"{server.address}: {type(e).__name__}")
                continue
            finally:
                self.reading[server.address] -= 1
            problem = check(answer)
            if problem is None:
                return answer
            self._bad(server, group_id, file_id, problem)
            reasons.append(f"{server.address}: {problem}")
        if not known and missing == len(servers):
            raise errors.ChunkNotFound(f"no replica has chunk {group_id}/{file_id}")
        storage.counters["reads_failed"] += 1
        raise errors.Unavailable(
            f"no replica of chunk {group_id}/{file_id} could serve it ({'; '.join(reasons)})")

    def _bad(self, server, group_id, file_id, reason):
        storage = self._storage
        storage.counters["bad_replicas"] += 1
        log.warn("bad replica of chunk {group_id}/{file_id} on {server_id} ({address}): {reason}",
                 group_id=group_id, file_id=file_id, server_id=server.server_id,
                 address=server.address, reason=reason)
        record = BadReplica(server.server_id, group_id, file_id, reason, storage.clock.seconds())
        storage.metadata.record_bad_replica(record).addErrback(
            lambda f: log.failure("recording a bad replica failed", f))


def _check(size, length):
    """@return: what is wrong with C{size} fetched bytes, or None."""
    if length is not None and size != length:
        return f"answered {size} bytes, not {length}"
    return None


def _writes(pieces):
    """
    @return: an iterator over the bytes to write for C{pieces}: each bytes
        piece of at most L{WRITE_PIECE} as it is, anything larger or not
        bytes cut into copies of at most L{WRITE_PIECE}.
    """
    for piece in pieces:
        if isinstance(piece, bytes) and len(piece) <= WRITE_PIECE:
            yield piece
            continue
        view = memoryview(piece).cast("B")
        for start in range(0, len(view), WRITE_PIECE):
            yield bytes(view[start:start + WRITE_PIECE])


def segments(chunks, offset, length):
    """
    @return: a list of (chunk, offset within it, length) covering bytes
        C{offset} to C{offset + length} of the file made of C{chunks}.
    @raise RangeNotSatisfiable: the range lies outside the file.
    """
    total = sum(c.size for c in chunks)
    if offset < 0 or length < 0 or offset + length > total:
        raise errors.RangeNotSatisfiable(
            f"bytes {offset}-{offset + length} of a {total}-byte file")
    out = []
    start = 0
    for chunk in chunks:
        end = start + chunk.size
        if length and end > offset and start < offset + length:
            first = max(offset, start) - start
            last = min(offset + length, end) - start
            out.append((chunk, first, last - first))
        start = end
    return out


class _Fetch:
    """One chunk segment being fetched ahead."""

    def __init__(self, deferred):
        self.deferred = deferred
        self.done = False
        self.result = None  # the bytes, or a Failure


@implementer(IPushProducer)
class FileReader:
    """
    Streams a byte range of a file into an C{IConsumer}: registers as its
    push producer, keeps up to C{read_ahead} chunk fetches going beyond the
    chunk being written (so it holds at most C{read_ahead + 1} chunks), and writes
    the chunks in order in pieces of at most L{WRITE_PIECE} bytes while the
    consumer is not paused.
    """

    def __init__(self, replicas, chunks, offset, length, consumer, read_ahead=4):
        self._replicas = replicas
        self._segments = deque(segments(chunks, offset, length))
        self._consumer = consumer
        self._read_ahead = max(1, read_ahead)
        self._fetches = deque()
        self._current = None  # iterator over the bytes of the chunk being written
        self._paused = False
        self._done = None

    def start(self):
        """
        @return: a Deferred firing with None once every byte was written
            (the consumer is unregistered first), failing with
            L{Unavailable} when a chunk could not be fetched, or with
            L{ConnectionLost} when the consumer stopped the producer.
            Cancelling it stops every fetch.
        """
        self._done = done = Deferred(lambda _: self._stop())
        self._consumer.registerProducer(self, True)
        self._fill()
        self._advance()
        return done

    # IPushProducer

    def pauseProducing(self):
        self._paused = True

    def resumeProducing(self):
        self._paused = False
        self._advance()

    def stopProducing(self):
        if self._done is not None and not self._done.called:
            done = self._done
            self._stop()
            done.errback(ConnectionLost("the consumer stopped reading"))

    # the pipeline

    def _fill(self):
        while self._segments and len(self._fetches) < self._read_ahead:
            chunk, offset, length = self._segments.popleft()
            whole = offset == 0 and length == chunk.size
            d = self._replicas.fetch_pieces(
                chunk.group_id, chunk.file_id, offset, None if whole else length)
            fetch = _Fetch(d)
            d.addBoth(self._fetched, fetch)
            self._fetches.append(fetch)

    def _fetched(self, result, fetch):
        fetch.done = True
        fetch.result = result
        if self._fetches and self._fetches[0] is fetch:
            self._advance()

    def _advance(self):
        while not self._paused and self._done is not None and not self._done.called:
            if self._current is not None:
                piece = next(self._current, None)
                if piece is None:
                    self._current = None
                else:
                    self._consumer.write(piece)
                continue
            if not self._fetches:
                self._finish()
                return
            head = self._fetches[0]
            if not head.done:
                return
            self._fetches.popleft()
            if not isinstance(head.result, list):
                failure, head.result = head.result, None
                done = self._done
                self._stop()
                done.errback(failure)
                return
            self._current, head.result = _writes(head.result), None
            self._fill()

    def _finish(self):
        done, self._done = self._done, None
        self._consumer.unregisterProducer()
        done.callback(None)

    def _stop(self):
        """Cancel every fetch, drop what is held and unregister."""
        self._segments.clear()
        fetches, self._fetches = self._fetches, deque()
        for fetch in fetches:
            if not fetch.done:
                fetch.deferred.cancel()
        self._current = None
        self._consumer.unregisterProducer()
