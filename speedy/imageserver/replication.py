# -*- test-case-name: speedy.test.test_imageserver_replication -*-
"""
The imageserver's storage path (L{IChunkedStorage}): streams cut into
chunks, each chunk written to every member of one replica group at once and
counted as stored only when all of them acknowledged it durable.  A chunk
that some member failed is retried on another group under a new file id,
and the copies of the failed attempt are deleted best-effort and recorded
as garbage: never "two of three is enough".

When a stream's length is known (a request's C{Content-Length}), its
chunks are cut through: each chunk's PUTs start with its first byte and
carry its bytes on as they arrive (L{GrowingChunk}), instead of waiting
for the whole chunk; a retry on another group sends the bytes kept.
"""

import random
from collections import Counter, deque

from twisted.internet.defer import Deferred, DeferredList, fail, succeed
from twisted.internet.interfaces import IReactorFDSet
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from speedy import errors
from speedy.crc import crc32c as crc32c_of
from speedy.imageserver.fillgate import FillGate
from speedy.imageserver.placement import choose_group, preferred_replica
from speedy.imageserver.reader import FileReader, ReplicaReader
from speedy.imageserver.splicereader import SpliceFileReader
from speedy.interfaces import IChunkedStorage, IChunkedWriter
from speedy.logs import request_id, run_for
from speedy.records import ChunkRef
from speedy.wire.growing import GrowingChunk
from speedy.wire.producers import frozen_pieces
from speedy.zerocopy.relay import splice_transport
from speedy.zerocopy.sources import SourcePool

log = Logger()

DEFAULT_CHUNK_SIZE = 16 << 20

#: How a chunk's bytes reach the members of its group.
REPLICATION_MODES = ("fanout", "chain")

#: Seconds a group with an unreachable member is avoided at most, when the
#: cluster view does not change meanwhile.
AVOID_FOR = 30.0


def _log_failure(failure, what):
    log.failure("{what} failed", failure, what=what)


@implementer(IChunkedStorage)
class ReplicatedStorage:
    """
    L{IChunkedStorage} over replica groups.

    @param client: an L{IChunkClient}.
    @param view: an L{IClusterView}.
    @param file_ids: a L{FileIdRange}.
    @param metadata: where garbage and bad replicas are recorded: an
        L{speedy.interfaces.IGarbageTables} and
        L{speedy.interfaces.IRepairTables} (a metadata store is both).
    @param clock: an L{IReactorTime}, for the times in those records.
    @param chunk_size: the size streams are cut at.
    @param parallelism: chunks in flight per writer, and chunks fetched
        ahead per reader.
    @param tries: groups a chunk is tried on before the write fails.
    @param preferred: C{preferred(servers, file_id)} picks the member of a
        group that keeps chunk C{file_id} in memory (its put carries
        C{keep}) and is read from first (L{ReplicaReader.by_load}).
    @param read_window: the receive buffer of each socket spliced reads
        come in on, or 0 for the kernel's sizing (L{SourcePool}).
    @param fill_slots: writers that take client bytes into a chunk at once
        (L{FillGate}), or 0 for no limit.
    @param upload_backlog: bytes of whole chunks of writers, not yet
        stored, above which no writer starts a new chunk (the L{FillGate}'s
        C{backlog}), or 0 for no limit.
    @param cut_through: chunks sent on while they arrive, at once (each
        holds a connection to every member of its group to itself); more
        wait to be whole, as does every chunk with 0.  No chunk is cut
        through while a whole one is being stored: a chunk that arrives
        later must not overtake chunks queued for the link.
    @param zero_copy: splice reads into plain-TCP responses where they
        can be (L{speedy.zerocopy}); False copies every read through Python.
    @param replication: C{"fanout"}: a chunk's bytes go from here to every
        member of its group; C{"chain"}: they go to one member, which
        forwards them to the next as they arrive, and so on
        (L{chain_order}; CHAIN_PUT in C{protocol.md}).  Either way a chunk
        is stored once every member acknowledged it durable.
    """

    def __init__(self, client, view, file_ids, metadata, clock,
                 chunk_size=DEFAULT_CHUNK_SIZE, parallelism=4, tries=3, rng=None,
                 preferred=preferred_replica, read_window=0, fill_slots=0,
                 cut_through=0, zero_copy=True, replication="fanout", upload_backlog=0):
        if replication not in REPLICATION_MODES:
            raise ValueError(f"replication is one of {REPLICATION_MODES}, not {replication!r}")
        self.replication = replication
        self.client = client
        self.view = view
        self.file_ids = file_ids
        self.metadata = metadata
        self.clock = clock
        self.chunk_size = chunk_size
        self.parallelism = parallelism
        self.tries = tries
        self.rng = rng or random.Random()
        self.preferred = preferred
        self.read_window = read_window
        #: admission of chunk fills, or None
        self.fill_gate = None
        if fill_slots or upload_backlog:
            self.fill_gate = FillGate(clock, fill_slots or 1 << 30, backlog=upload_backlog)
        self.cut_through = cut_through
        self.zero_copy = zero_copy
        #: chunks being cut through now
        self.cutting = 0
        #: whole chunks being stored now (store_chunk, and retries)
        self.storing_whole = 0
        #: writes in flight from here, by group id (a placement tie-breaker)
        self.pending = Counter()
        #: group id -> (the view version in which a member of it could not
        #: be reached, when): no chunk goes there until the view changes or
        #: AVOID_FOR seconds have passed (the view may not change while the
        #: chunkmaster is away)
        self.unreachable = {}
        #: counts for status pages and tests
        self.counters = Counter()
        self.replicas = ReplicaReader(client, view, metadata, clock, self.counters,
                                      preferred=preferred, rng=self.rng)
        self._splice_sources = None

    # IChunkedStorage

    def writer(self, length=None, record_intent=None):
        return ReplicatedWriter(self, length, record_intent)

    def read(self, chunks, offset, length, consumer):
        """
        See L{IChunkedStorage.read}.  A C{twisted.web} request on plain TCP
        gets the bytes spliced from chunkserver sockets into its socket
        (L{SpliceFileReader}); any other consumer (TLS, HTTP/2, a hashing
        consumer, C{zero_copy} off) gets them through Python
        (L{FileReader}).
        """
        try:
            if self.reader_type(consumer) is SpliceFileReader:
                reader = SpliceFileReader(self.replicas, self.splice_sources(), chunks, offset,
                                          length, consumer, read_ahead=self.parallelism)
                self.counters["reads_spliced"] += 1
            else:
                reader = FileReader(self.replicas, chunks, offset, length, consumer,
                                    read_ahead=self.parallelism)
                self.counters["reads_copied"] += 1
        except errors.RangeNotSatisfiable as e:
            return fail(e)
        return reader.start()

    def reader_type(self, consumer):
        """@return: the reader class L{read} uses for C{consumer}: splicing
        needs a consumer L{splice_transport} accepts, a reactor with file
        descriptors as the clock, zero copy on, and plain TCP to the
        chunkservers (bytes of TLS cannot be spliced)."""
        if (self.zero_copy and IReactorFDSet.providedBy(self.clock)
                and getattr(self.client, "tls", None) is None
                and splice_transport(consumer) is not None):
            return SpliceFileReader
        return FileReader

    def splice_sources(self):
        """@return: the L{SourcePool} of spliced reads (made on first use,
        with the chunk client's timeouts and cluster secret, and the read
        window)."""
        if self._splice_sources is None:
            self._splice_sources = SourcePool(
                self.clock,
                connect_timeout=self.client.connect_timeout,
                request_timeout=self.client.request_timeout,
                receive_buffer=self.read_window,
                secret=getattr(self.client, "secret", None))
        return self._splice_sources

    def close(self):
        """
        Close the idle sockets and pipes of spliced reads (reads in flight
        close theirs when they end).

        @return: a Deferred firing when done.
        """
        if self._splice_sources is not None:
            self._splice_sources.close()
        return succeed(None)

    def delete(self, chunks):
        return Deferred.fromCoroutine(self._delete(tuple(chunks)))

    async def _delete(self, chunks):
        results = await DeferredList(
            [Deferred.fromCoroutine(self._delete_one(c)) for c in chunks], consumeErrors=True)
        undeleted = [chunk for chunk, (ok, deleted) in zip(chunks, results)
                     if not (ok and deleted)]
        if undeleted:
            await self.record_garbage(undeleted, "delete failed on a member")

    def delete_replicas(self, chunk):
        """
        Delete C{chunk} from every member of its group, recording nothing
        (the chunk collector's delete: the chunk is already garbage).

        @return: a Deferred firing with True if every member deleted it
            (or never had it), False if some member could not be reached,
            failed, or the group is not in the cluster view.
        """
        return Deferred.fromCoroutine(self._delete_one(chunk))

    async def _delete_one(self, chunk):
        """@return: True if every member of the chunk's group deleted it (or
        never had it)."""
        group = self._group(chunk.group_id)
        if group is None:
            return False
        results = await DeferredList(
            [self.client.delete(s.address, chunk.file_id) for s in group.servers],
            consumeErrors=True)
        return all(ok or r.check(errors.ChunkNotFound) for ok, r in results)

    # the chunk-level path, shared by writers and the chunk API

    def store_chunk(self, data, crc32c=None, record_intent=None):
        """
        Store one chunk on every member of a group, retrying on other
        groups.

        @param data: the chunk: bytes-like, or a list or tuple of bytes-like
            pieces (handed to L{IChunkClient.put} as they are, never joined;
            pieces other than C{bytes} are copied first, so the caller may
            reuse them).
        @param record_intent: None, or called with each try's L{ChunkRef}
            before its bytes go out (see L{IChunkedStorage.writer}).
        @return: a Deferred firing with its L{ChunkRef}; failing with
            L{NoWritableGroup} when no group can take it, with
            L{Unavailable} when every group tried failed.
        """
        pieces = frozen_pieces(data)
        if crc32c is None:
            crc32c = 0
            for piece in pieces:
                crc32c = crc32c_of(piece, crc32c)
        return Deferred.fromCoroutine(
            self._store_chunk(pieces, crc32c, record_intent=record_intent))

    def can_cut_through(self):
        """@return: True if one more chunk may be cut through now: fewer
        than C{cut_through} are, and no whole chunk waits for the link."""
        return self.cutting < self.cut_through and not self.storing_whole

    def store_growing(self, chunk, record_intent=None):
        """
        Store a L{GrowingChunk} as it fills: its PUTs go to every member of
        a group at once and send its bytes as they are added.  If a member
        fails, the chunk is stored whole elsewhere once complete, as
        L{store_chunk} does.

        @return: a Deferred firing with its L{ChunkRef}; failing with the
            chunk's own failure when it was never completed (nothing of it
            is stored), else as L{store_chunk}'s.
        """
        return Deferred.fromCoroutine(self._store_growing(chunk, record_intent))

    async def _store_growing(self, chunk, record_intent):
        self.cutting += 1
        try:
            group = choose_group(self.view.current, chunk.length, self.pending, self.rng,
                                 exclude=self._avoided())
            file_id = await self.file_ids.next()
            if record_intent is not None:
                await record_intent(ChunkRef(group.group_id, file_id, chunk.length, 0))
            results = await self._put_all(group, file_id, chunk)
        finally:
            self.cutting -= 1
        if chunk.failure is not None:
            chunk.failure.raiseException()  # never whole: no member stored it
        ref = ChunkRef(group.group_id, file_id, chunk.length, chunk.crc32c)
        failed = _failures(results, ref)
        if not failed:
            self.counters["chunks_written"] += 1
            self.counters["chunks_cut_through"] += 1
            return ref
        reasons = [self._retrying(ref, group, failed, results)]
        pieces = await chunk.whole()
        return await self._store_chunk(pieces, chunk.crc32c, [group.group_id], reasons,
                                       record_intent)

    async def _put_all(self, group, file_id, data):
        """Put C{data} on every member of C{group} at once.
        @return: a list of (server, (ok, result)), one per member."""
        self.pending[group.group_id] += 1
        keeper = self.preferred(group.servers, file_id)
        if self.replication == "chain":
            try:
                return await self._put_chain(group, file_id, data, keeper)
            finally:
                self.pending[group.group_id] -= 1
        try:
            results = await DeferredList(
                [self.client.put(s.address, file_id, data, keep=s is keeper)
                 for s in group.servers],
                consumeErrors=True)
        finally:
            self.pending[group.group_id] -= 1
        return list(zip(group.servers, results))

    async def _put_chain(self, group, file_id, data, keeper):
        """Put C{data} along the chain of C{group}'s members in
        L{chain_order}.
        @return: as L{_put_all}: every member with its acknowledgement, or
            the chain's head with the chain's failure (whose message names
            the member that failed)."""
        order = chain_order(group.servers, file_id)
        keep_mask = sum(1 << i for i, s in enumerate(order) if s is keeper)
        self.counters["chain_puts"] += 1
        try:
            infos = await self.client.chain_put(order[0].address, file_id, data,
                                                [s.address for s in order[1:]], keep_mask)
        except Exception:
            return [(order[0], (False, Failure()))]
        return [(server, (True, info)) for server, info in zip(order, infos)]

    def _avoided(self):
        """@return: the groups not to write to: those with a member found
        unreachable in the current view (older marks are dropped)."""
        view = self.view.current
        version = None if view is None else view.version
        now = self.clock.seconds()
        for group_id, (seen, when) in list(self.unreachable.items()):
            if seen != version or now - when >= AVOID_FOR:
                del self.unreachable[group_id]
        return list(self.unreachable)

    def _retrying(self, ref, group, failed, results):
        """Log and count a failed attempt, discard its copies, and avoid
        the group until the view changes if a member could not be reached.
        @return: the reason, for the final error."""
        view = self.view.current
        if view is not None and any(not ok and result.check(errors.ConnectionFailed)
                                    for _, (ok, result) in results):
            self.unreachable[group.group_id] = (view.version, self.clock.seconds())
            self.counters["groups_avoided"] += 1
        why = "; ".join(f"{s.server_id} ({s.address}): {p}" for s, p in failed)
        log.warn("chunk {file_id} not stored on all of group {group_id}, "
                 "retrying elsewhere: {why}",
                 file_id=ref.file_id, group_id=group.group_id, why=why)
        self.counters["chunk_write_retries"] += 1
        self.discard(ref, "partial write: " + why).addErrback(
            _log_failure, "discarding a partial write")
        return f"group {group.group_id}: {why}"

    async def _store_chunk(self, pieces, crc32c, tried=(), reasons=(), record_intent=None):
        self.storing_whole += 1
        try:
            return await self._store_whole(pieces, crc32c, tried, reasons, record_intent)
        finally:
            self.storing_whole -= 1

    async def _store_whole(self, pieces, crc32c, tried, reasons, record_intent):
        size = sum(len(piece) for piece in pieces)
        tried = list(tried)
        reasons = list(reasons)
        for _ in range(self.tries - len(tried)):
            try:
                group = choose_group(self.view.current, size, self.pending,
                                     self.rng, exclude=tried + self._avoided())
            except errors.NoWritableGroup:
                if not tried:
                    raise
                break
            tried.append(group.group_id)
            file_id = await self.file_ids.next()
            ref = ChunkRef(group.group_id, file_id, size, crc32c)
            if record_intent is not None:
                await record_intent(ref)
            results = await self._put_all(group, file_id, pieces)
            failed = _failures(results, ref)
            if not failed:
                self.counters["chunks_written"] += 1
                return ref
            reasons.append(self._retrying(ref, group, failed, results))
        self.counters["chunk_writes_failed"] += 1
        raise errors.Unavailable(
            f"a chunk of {size} bytes could not be stored on all members of any "
            f"group: {' | '.join(reasons)}")

    def discard(self, ref, reason):
        """
        Record C{ref} as garbage, then delete its copies best-effort.

        @return: a Deferred firing when both were tried.
        """
        return Deferred.fromCoroutine(self._discard(ref, reason))

    async def _discard(self, ref, reason):
        await self.record_garbage([ref], reason)
        await self._delete_one(ref)

    def record_garbage(self, chunks, reason):
        """Record C{chunks} as garbage; a failure is logged, not raised.
        @return: a Deferred firing with None."""
        self.counters["garbage_recorded"] += len(chunks)
        d = self.metadata.record_garbage(tuple(chunks), reason)
        d.addErrback(_log_failure, f"recording {len(chunks)} garbage chunks ({reason})")
        return d.addCallback(lambda _: None)

    def _group(self, group_id):
        view = self.view.current
        return None if view is None else view.groups.get(group_id)


def chain_order(servers, file_id):
    """
    @return: the members of a group in the order a chain PUT of chunk
        C{file_id} passes them: rotated by the file id, so each member is
        first, middle and last for as many chunks as the others.
    """
    servers = sorted(servers, key=lambda s: str(s.server_id))
    if not servers:
        return servers
    turn = file_id % len(servers)
    return servers[turn:] + servers[:turn]


def _failures(results, ref):
    """@return: (server, why) for each member whose put (C{results} of
    L{ReplicatedStorage._put_all}) did not store C{ref}."""
    problems = [(server, _put_problem(ok, result, ref)) for server, (ok, result) in results]
    return [(server, problem) for server, problem in problems if problem is not None]


def _put_problem(ok, result, ref):
    """@return: why one member's put did not store C{ref}, or None."""
    if not ok:
        return result.getErrorMessage() or result.type.__name__
    if result.size != ref.size or result.crc32c != ref.crc32c:
        return f"acknowledged size {result.size} crc32c {result.crc32c:#x}, not {ref.size} {ref.crc32c:#x}"
    return None


@implementer(IChunkedWriter)
class ReplicatedWriter:
    """
    One stream cut into chunks of C{storage.chunk_size}; at most
    C{storage.parallelism} chunks are being stored at once, and C{write}
    makes its caller wait while a full chunk is queued behind them.  So a
    writer holds at most about C{chunk_size * (parallelism + 2)} bytes.

    With a C{storage.fill_gate}, a write that finds the writer without a
    L{Pass} waits for one first; the pass goes back when the chunk being
    filled is sealed (a write that straddles chunks is taken whole), when
    the stream ends, or when the gate's hold time runs out (a slow client's
    pass stops taking a slot, see L{speedy.imageserver.fillgate}).

    Given the stream's C{length}, a chunk that starts while fewer than
    C{parallelism} are in flight, nothing is queued and the storage has
    room (L{ReplicatedStorage.can_cut_through}) is cut through: its PUTs
    start with its first byte (L{ReplicatedStorage.store_growing}).  A
    stream that then carries more bytes than C{length}, or ends short of
    it, fails.

    The writer serves the request whose id (L{speedy.logs.request_id}) is
    current when it is made: each chunk is stored under that id
    (L{run_for}), so its PUTs, its retries on other groups, the deletes of
    its failed tries and of an aborted stream carry the request's trace,
    whatever context C{write}, C{finish} or C{abort} are called in.  They
    are called from a connection's bytes, from a fill gate's admission
    (another writer's context) or from a chunk's acknowledgement, and a
    coroutine keeps the context it was started in: the id is set once per
    chunk, never looked up per piece.
    """

    def __init__(self, storage, length=None, record_intent=None):
        self._storage = storage
        self._request_id = request_id.get()
        self._chunk_size = storage.chunk_size
        self._length = length
        self._record_intent = record_intent
        self._growing = None  # the GrowingChunk being filled, when cut through
        self._pieces = []  # of bytes: the chunk being filled
        self._filled = 0
        self._refs = []  # ChunkRef or None (in flight / queued), by position
        self._queued = deque()  # (position, pieces) sealed, not yet sent
        self._in_flight = {}  # position -> Deferred
        self._room = []  # Deferreds of write() calls waiting for room
        self._finished = None  # the Deferred finish() returned
        self._failure = None
        self._closed = False
        self._pass = None  # the FillGate Pass held, if any
        self._entering = None  # the Deferred of a FillGate.enter waited for
        self._held = {}  # position -> bytes of a sealed chunk held in the gate's backlog
        self.bytes_written = 0

    def write(self, data):
        if self._failure is not None:
            return fail(self._failure)
        if self._closed:
            return fail(errors.BadRequest("write after finish or abort"))
        if self._length is not None and self.bytes_written + len(data) > self._length:
            return fail(errors.BadRequest(f"the stream carries more than the "
                                          f"{self._length} bytes it declared"))
        gate = self._storage.fill_gate
        if gate is not None and data and (self._pass is None or not self._pass.valid):
            self._entering = gate.enter()
            return self._entering.addCallback(self._admitted, data)
        if self._pass is not None:
            self._pass.touch(len(data))
        if type(data) is not bytes:
            data = bytes(data)  # a chunk's pieces must not change once handed on
        self.bytes_written += len(data)
        if len(data) <= self._chunk_size - self._filled:
            self._add(data)
        else:  # it straddles chunks: only then are pieces of it copied
            view = memoryview(data)
            while view and self._failure is None:
                piece = view[: self._chunk_size - self._filled]
                view = view[len(piece):]
                self._add(bytes(piece))
        if self._failure is not None:
            return fail(self._failure)
        self._pump()
        if not self._queued:
            return succeed(None)
        d = Deferred()
        self._room.append(d)
        return d

    def _admitted(self, granted, data):
        self._entering = None
        self._pass = granted
        if self._failure is not None:  # a chunk failed meanwhile: write() says so
            self._give_back_pass()
        return self.write(data)

    def _give_back_pass(self):
        if self._pass is not None:
            granted, self._pass = self._pass, None
            granted.leave()

    def _leave_gate(self):
        """Give back the fill pass, and the place in the gate's queue."""
        if self._entering is not None:
            entering, self._entering = self._entering, None
            entering.cancel()
        self._give_back_pass()

    def finish(self):
        if self._closed:
            return fail(errors.BadRequest("finish after finish or abort"))
        self._closed = True
        self._leave_gate()
        if self._failure is not None:
            return fail(self._failure)
        if self._length is not None and self.bytes_written != self._length:
            short = errors.BadRequest(f"the stream ended after {self.bytes_written} "
                                      f"of the {self._length} bytes it declared")
            self._stop(Failure(short))
            return fail(short)
        if self._filled:
            self._seal()
        self._finished = finished = Deferred()
        self._pump()
        return finished

    def abort(self):
        self._closed = True
        self._leave_gate()
        if self._failure is None:
            self._failure = Failure(errors.BadRequest("the write was aborted"))
        self._drop_queued()
        self._pieces = []
        self._fail_growing(self._failure)
        self._wake(self._failure)
        if self._finished is not None:
            finished, self._finished = self._finished, None
            finished.errback(self._failure)
        return run_for(self._request_id, Deferred.fromCoroutine, self._abort())

    async def _abort(self):
        await DeferredList(list(self._in_flight.values()), consumeErrors=True)
        stored = [ref for ref in self._refs if ref is not None]
        if stored:
            await self._storage.delete(stored)

    def _add(self, piece):
        if not piece:
            return
        if self._failure is not None:  # a chunk failed, maybe during this write: drop the rest
            return
        if self._filled == 0:
            self._begin()
            if self._failure is not None:
                return
        self._filled += len(piece)
        if self._growing is None:
            self._pieces.append(piece)
            if self._filled == self._chunk_size:
                self._seal()
        else:
            growing = self._growing
            growing.add(piece)  # may fail the chunk at once (every member refused it)
            if self._growing is growing and growing.complete:
                self._seal()

    def _begin(self):
        """A chunk starts: cut it through if the stream's length is known
        and there is room for one more chunk in flight."""
        storage = self._storage
        if (self._length is None or self._queued or self._failure is not None
                or len(self._in_flight) >= storage.parallelism
                or not storage.can_cut_through()):
            return
        position = len(self._refs)
        self._refs.append(None)
        self._growing = GrowingChunk(
            min(self._chunk_size, self._length - position * self._chunk_size))
        self._send(position, run_for(self._request_id, storage.store_growing, self._growing,
                                     self._record_intent))

    def _send(self, position, stored):
        self._in_flight[position] = stored
        stored.addCallbacks(self._stored, self._failed, (position,), None, (position,))
        stored.addErrback(_log_failure, "a chunk write's bookkeeping")

    def _fail_growing(self, failure):
        if self._growing is not None:
            growing, self._growing = self._growing, None
            growing.fail(failure)

    def _seal(self):
        """Queue the chunk filled so far, as the pieces it arrived in (a
        chunk cut through is on its way already), hold its bytes in the
        gate's backlog, and give back the fill pass."""
        filled, self._filled = self._filled, 0
        if self._growing is None:
            pieces, self._pieces = tuple(self._pieces), []
            self._refs.append(None)
            self._queued.append((len(self._refs) - 1, pieces))
        position = len(self._refs) - 1
        # A chunk cut through may be stored (or failed) already: nothing to hold.
        waiting = self._growing is None or position in self._in_flight
        self._growing = None
        gate = self._storage.fill_gate
        if gate is not None and waiting:
            self._held[position] = filled
            gate.hold(filled)
        self._give_back_pass()

    def _unhold(self, position):
        """The chunk at C{position} is stored, failed or dropped: its bytes
        leave the gate's backlog."""
        size = self._held.pop(position, 0)
        if size:
            self._storage.fill_gate.release(size)

    def _drop_queued(self):
        for position, _ in self._queued:
            self._unhold(position)
        self._queued.clear()

    def _pump(self):
        """Start queued chunks while fewer than C{parallelism} are in flight;
        wake waiting writers when the queue empties; fire C{finish} when all
        is stored."""
        while self._queued and len(self._in_flight) < self._storage.parallelism:
            position, pieces = self._queued.popleft()
            self._send(position, run_for(self._request_id, self._storage.store_chunk,
                                         pieces, record_intent=self._record_intent))
        if not self._queued:
            self._wake(None)
        if self._finished is not None and not self._in_flight and self._failure is None:
            finished, self._finished = self._finished, None
            finished.callback(tuple(self._refs))

    def _stored(self, ref, position):
        del self._in_flight[position]
        self._unhold(position)
        self._refs[position] = ref
        if self._failure is None:
            self._pump()

    def _failed(self, failure, position):
        del self._in_flight[position]
        self._unhold(position)
        if self._failure is not None:
            return
        self._stop(failure)

    def _stop(self, failure):
        """Fail the stream: nothing more is taken or sent."""
        self._failure = failure
        self._drop_queued()
        self._give_back_pass()
        self._fail_growing(failure)
        self._wake(failure)
        if self._finished is not None:
            finished, self._finished = self._finished, None
            finished.errback(failure)

    def _wake(self, failure):
        room, self._room = self._room, []
        for d in room:
            if failure is None:
                d.callback(None)
            else:
                d.errback(failure)
