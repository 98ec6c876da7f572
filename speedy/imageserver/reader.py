# -*- test-case-name: speedy.test.test_imageserver_reader -*-
"""
Reading chunks back: L{ReplicaReader} fetches one chunk (or a range of it)
from its preferred replica (the one keeping it in memory) or, when that
one is busy, the least-loaded, and fails over to the next on an error, a
timeout or damaged bytes, reporting the bad replicas it meets, or streams
it, resuming from the next replica where one broke off; L{FileReader}
streams a byte range of a file into a consumer in order as the bytes
arrive, while it fetches the next chunks ahead.
"""

import random
from collections import Counter, OrderedDict, deque

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from zope.interface import implementer

from speedy import errors
from speedy.imageserver.placement import preferred_replica
from speedy.logs import request_id, run_for
from speedy.records import DOWN, BadReplica

log = Logger()

#: Errors by which a replica says it is bad itself.
_BAD_REPLICA = (errors.ChunkNotFound, errors.ChecksumMismatch)

#: Seconds a replica found bad for a chunk is read last for that chunk
#: (until the chunkmaster has repaired it, most likely), and how many such
#: replicas are remembered at most.
BAD_FOR = 600.0
MAX_KNOWN_BAD = 10_000

#: How many more reads in flight from here a chunk's preferred replica may
#: have than the least busy member of its group and still be read first.
AFFINITY_SLACK = 4

#: The most bytes handed to a consumer in one C{write}, so that a pause takes
#: effect within a chunk.  As large as the chunk client's reads
#: (L{speedy.wire.frames.RECEIVE_SIZE}), so the pieces it fetched are
#: written as they are, without a copy.
WRITE_PIECE = 1 << 20


class ReplicaReader:
    """
    Fetches chunk bytes from any replica of their group.

    @param client: the L{IChunkClient} replicas are read with.
    @param view: the L{IClusterView} whose groups name the replicas.
    @param metadata: where bad replicas are recorded: an
        L{speedy.interfaces.IRepairTables}.
    @param clock: an L{IReactorTime}, for the times in those records.
    @param counters: a L{Counter} where reads count their failovers,
        failures and bad replicas (the storage's, shared).
    @param preferred: C{preferred(servers, file_id)} picks the member of a
        group that keeps chunk C{file_id} in memory (see L{by_load}).
    @param rng: a L{random.Random} that breaks ties between replicas.
    """

    def __init__(self, client, view, metadata, clock, counters, preferred=preferred_replica,
                 rng=None):
        self._client = client
        self.timings = getattr(client, "timings", None)  # its RequestTimings
        self._view = view
        self._metadata = metadata
        self._clock = clock
        self.counters = counters
        self._preferred = preferred
        self._rng = rng or random.Random()
        self.reading = Counter()  # reads in flight from here, by address
        self._known_bad = OrderedDict()  # (server_id, file_id) -> until when

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
        client = self._client
        return Deferred.fromCoroutine(self._ask(
            group_id, file_id,
            lambda address: client.get(address, file_id, offset, length),
            lambda data: _check(len(data), length), known))

    def stream(self, group_id, file_id, offset, length, sink, expect=None):
        """
        Stream C{length} bytes at C{offset} of a chunk that is known to
        exist into C{sink} (a callable given each piece of bytes, in order)
        as they arrive, from its replicas least-loaded first.

        A replica that fails before sending a byte is skipped as L{fetch}
        skips it.  One that fails after some bytes went to C{sink} is
        resumed from: the rest of the range is asked of the next replica,
        so C{sink} sees every byte once and in order.  The chunkserver
        checks its record's CRC32C before it answers, so damage is mostly
        found before a byte moved; but the client's check of a whole chunk
        against that CRC32C can only come at its end, once its bytes went
        to C{sink}.  They cannot be taken back, so the stream then fails
        with L{ChecksumMismatch} (the replica is reported bad) and the
        caller must break off what it sent: its client sees a truncated
        body, never a wrong one.

        @param expect: the (size, CRC32C) the metadata store recorded for
            the chunk when it was written: a replica holding other bytes
            under its id (replaced, or a chunkserver that lies) is a bad
            replica, and none of its bytes reach C{sink}.
        @return: a Deferred firing with None once every byte went to
            C{sink}; failing with L{Unavailable} when no replica could
            serve the rest, or with L{ChecksumMismatch} as above.
            Cancelling it cancels the request in flight; C{sink} is not
            called afterwards.
        """
        return Deferred.fromCoroutine(
            self._stream(group_id, file_id, offset, length, sink, expect))

    def stat(self, group_id, file_id, known=False):
        """
        @return: a Deferred firing with the L{ChunkInfo} of a chunk from the
            first replica that has it; failing as L{fetch} does.
        """
        client = self._client
        return Deferred.fromCoroutine(self._ask(
            group_id, file_id, lambda address: client.stat(address, file_id),
            lambda info: None, known))

    def by_load(self, group_id, file_id=None):
        """
        @param file_id: the chunk to be read, if any: its preferred replica
            (C{preferred}'s choice, the one keeping it in memory) comes first
            unless it is down or has more than C{AFFINITY_SLACK} reads in
            flight from here beyond the least busy member's.
        @return: the servers of a group: first those not down, not being
            rebuilt and not found bad for this chunk lately, then the least
            busy reading from here, ties in random order.
        @raise Unavailable: the group is not in the cluster view.
        """
        view = self._view.current
        group = None if view is None else view.groups.get(group_id)
        if group is None:
            raise errors.Unavailable(f"group {group_id} is not in the cluster view")
        keeper = None if file_id is None else self._preferred(group.servers, file_id)
        now = self._clock.seconds()

        def key(server):
            load = self.reading[server.address]
            if server is keeper:
                load -= AFFINITY_SLACK
            last = (server.state == DOWN or server.rebuilding
                    or self._known_bad.get((server.server_id, file_id), 0) > now)
            return last, load, server is not keeper, self._rng.random()

        return sorted(group.servers, key=key)

    async def _stream(self, group_id, file_id, offset, length, sink, expect):
        reached = 0  # bytes of the range that went to sink

        def forward(piece):
            nonlocal reached
            reached += len(piece)
            sink(piece)

        reasons = []
        for server in self.by_load(group_id, file_id):
            self.reading[server.address] += 1
            try:
                await self._client.get_stream(
                    server.address, file_id, offset + reached, length - reached, forward,
                    expect=expect)
            except CancelledError:
                raise
            except Exception as e:
                reasons.append(self.failed(server, group_id, file_id, e, at=(reached, length)))
                if reached and isinstance(e, errors.ChecksumMismatch):
                    self.counters["reads_failed"] += 1
                    raise errors.ChecksumMismatch(
                        f"chunk {group_id}/{file_id} from {server.address} failed its CRC32C "
                        f"check after its {reached} bytes were passed on")
                continue
            finally:
                self.reading[server.address] -= 1
            return
        self.counters["reads_failed"] += 1
        raise errors.Unavailable(
            f"no replica of chunk {group_id}/{file_id} could serve bytes {offset + reached}-"
            f"{offset + length} ({'; '.join(reasons)})")

    async def _ask(self, group_id, file_id, request, check, known):
        """
        Send C{request(address)} to each replica of the chunk's group in
        turn, least-loaded first, until one answers something C{check}
        finds nothing wrong with (it returns the problem, or None).
        """
        servers = self.by_load(group_id, file_id)
        reasons = []
        missing = 0
        for server in servers:
            self.reading[server.address] += 1
            try:
                answer = await request(server.address)
            except CancelledError:
                raise
            except Exception as e:
                missing += isinstance(e, errors.ChunkNotFound)
                reasons.append(self.failed(server, group_id, file_id, e, known=known))
                continue
            finally:
                self.reading[server.address] -= 1
            problem = check(answer)
            if problem is None:
                return answer
            self.report_bad(server, group_id, file_id, problem)
            reasons.append(f"{server.address}: {problem}")
        if not known and missing == len(servers):
            raise errors.ChunkNotFound(f"no replica has chunk {group_id}/{file_id}")
        self.counters["reads_failed"] += 1
        raise errors.Unavailable(
            f"no replica of chunk {group_id}/{file_id} could serve it ({'; '.join(reasons)})")

    @staticmethod
    def is_bad_replica(error):
        """@return: whether C{error} says the replica itself is bad (it
            lacks the chunk, or its record failed its check), rather than
            that reaching it failed."""
        return isinstance(error, _BAD_REPLICA)

    def failed(self, server, group_id, file_id, error, known=True, at=None):
        """
        Account for a replica that failed a read of a chunk with C{error}:
        one without a chunk that is C{known} to exist, or whose record
        failed its check, is reported bad; any other failure is logged (at
        byte C{at[0]} of C{at[1]} of a streamed range, when given) and
        counted as a failover to the next replica.

        @return: the reason, for the message of the L{Unavailable} raised
            when no replica could serve the read.
        """
        for kind in _BAD_REPLICA:
            if isinstance(error, kind):
                if known or kind is errors.ChecksumMismatch:
                    self.report_bad(server, group_id, file_id, f"{kind.__name__}: {error}")
                return f"{server.address}: {kind.__name__}"
        where = "" if at is None else f" at byte {at[0]} of {at[1]}"
        log.info("reading chunk {file_id} from {address} failed{where}, going on from the "
                 "next replica: {why!r}", file_id=file_id, address=server.address,
                 where=where, why=error)
        self.counters["read_failovers"] += 1
        return f"{server.address}: {type(error).__name__}"

    def report_bad(self, server, group_id, file_id, reason):
        self.counters["bad_replicas"] += 1
        log.warn("bad replica of chunk {group_id}/{file_id} on {server_id} ({address}): {reason}",
                 group_id=group_id, file_id=file_id, server_id=server.server_id,
                 address=server.address, reason=reason)
        now = self._clock.seconds()
        self._known_bad[server.server_id, file_id] = now + BAD_FOR
        self._known_bad.move_to_end((server.server_id, file_id))
        while len(self._known_bad) > MAX_KNOWN_BAD:
            self._known_bad.popitem(last=False)
        record = BadReplica(server.server_id, group_id, file_id, reason, now)
        self._metadata.record_bad_replica(record).addErrback(
            lambda f: log.failure("recording a bad replica failed", f))


def written(chunk):
    """@return: the (size, CRC32C) the metadata recorded for the
    L{ChunkRef} C{chunk} when it was written, or None if it has none."""
    if getattr(chunk, "crc32c", None) is None:
        return None
    return chunk.size, chunk.crc32c


def _check(size, length):
    """@return: what is wrong with C{size} fetched bytes, or None."""
    if length is not None and size != length:
        return f"answered {size} bytes, not {length}"
    return None


def _writes(piece):
    """
    @return: the bytes to write for C{piece}: itself if it is bytes of at
        most L{WRITE_PIECE}, else copies of at most L{WRITE_PIECE} of it.
    """
    if isinstance(piece, bytes) and len(piece) <= WRITE_PIECE:
        return [piece]
    view = memoryview(piece).cast("B")
    return [bytes(view[start:start + WRITE_PIECE]) for start in range(0, len(view), WRITE_PIECE)]


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
    """
    One chunk segment being streamed in: its C{pieces} not yet written,
    whether any C{started} arriving, and once C{done}, its C{failure} (a
    Failure, or None on success).
    """

    def __init__(self):
        self.deferred = None
        self.pieces = deque()
        self.started = False
        self.done = False
        self.failure = None


@implementer(IPushProducer)
class FileReader:
    """
    Streams a byte range of a file into an C{IConsumer}: registers as its
    push producer, keeps up to C{read_ahead} chunk fetches going beyond the
    chunk being written (so it holds at most C{read_ahead + 1} chunks), and
    writes the bytes of the chunks in order, in pieces of at most
    L{WRITE_PIECE} bytes, as they arrive and while the consumer is not
    paused.

    A chunk that fails after some of its bytes were written fails the
    whole read (see L{ReplicaReader.stream}): the caller must then break
    off the response, which its client sees truncated.

    The reader serves the request whose id (L{speedy.logs.request_id}) is
    current when it is made: each chunk's fetch (and its failover to other
    replicas) runs under it, so its GETs carry the request's trace, though
    most fetches start from a fetch's bytes arriving or the consumer
    resuming, outside the request's handler.
    """

    def __init__(self, replicas, chunks, offset, length, consumer, read_ahead=4):
        self._replicas = replicas
        self._request_id = request_id.get()
        self._segments = deque(segments(chunks, offset, length))
        self._consumer = consumer
        self._read_ahead = max(1, read_ahead)
        self._fetches = deque()
        self._paused = False
        self._done = None

    def start(self):
        """
        @return: a Deferred firing with None once every byte was written
            (the consumer is unregistered first), failing with
            L{Unavailable} when a chunk could not be fetched (or
            L{ChecksumMismatch}, see above), or with L{ConnectionLost}
            when the consumer stopped the producer.  Cancelling it stops
            every fetch.
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
        """Start fetches until C{read_ahead} are going beyond the chunk
        being written (the first, once its bytes started arriving)."""
        while self._segments:
            writing = bool(self._fetches) and self._fetches[0].started
            if len(self._fetches) >= self._read_ahead + writing:
                return
            chunk, offset, length = self._segments.popleft()
            fetch = _Fetch()
            self._fetches.append(fetch)
            fetch.deferred = run_for(
                self._request_id, self._replicas.stream, chunk.group_id, chunk.file_id,
                offset, length,
                lambda piece, fetch=fetch: self._arrived(fetch, piece), written(chunk))
            fetch.deferred.addBoth(self._fetched, fetch)

    def _is_head(self, fetch):
        return bool(self._fetches) and self._fetches[0] is fetch

    def _arrived(self, fetch, piece):
        first, fetch.started = not fetch.started, True
        fetch.pieces.extend(_writes(piece))
        if self._is_head(fetch):
            if first:
                self._fill()
            self._advance()

    def _fetched(self, result, fetch):
        fetch.done = True
        fetch.failure = result
        if self._is_head(fetch):
            self._advance()

    def _advance(self):
        while not self._paused and self._done is not None and not self._done.called:
            if not self._fetches:
                self._finish()
                return
            head = self._fetches[0]
            if head.pieces:
                self._consumer.write(head.pieces.popleft())
                continue
            if not head.done:
                return
            self._fetches.popleft()
            if head.failure is not None:
                done = self._done
                self._stop()
                done.errback(head.failure)
                return
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
            # A fetch stopped from its own first piece has no Deferred yet.
            if not fetch.done and fetch.deferred is not None:
                fetch.deferred.cancel()
        self._consumer.unregisterProducer()
