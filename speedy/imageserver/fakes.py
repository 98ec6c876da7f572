# -*- test-case-name: speedy.test.test_imageserver_clusterview -*-
"""
In-memory stand-ins for what the imageserver talks to, for unit tests:
chunkservers behind a L{FakeChunkClient} (with failure injection), a
L{FakeMaster} and a L{StaticClusterView}.  The metadata store's fake is
L{speedy.metadata.memory.MemoryMetadataStore}.
"""

from collections import Counter
from random import Random

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from zope.interface import implementer

from speedy import errors
from speedy.crc import crc32c
from speedy.imageserver.clusterview import ClusterView, GroupView, IClusterView, ServerView
from speedy.imageserver.fileids import FileIdRange
from speedy.imageserver.master import IMasterClient
from speedy.imageserver.replication import ReplicatedStorage
from speedy.interfaces import IChunkClient
from speedy.metadata.memory import MemoryMetadataStore
from speedy.records import RW, ChunkInfo
from speedy.wire.growing import GrowingChunk

#: Failure modes of a L{FakeChunkServer}.
#: down: every request fails with ConnectionFailed.
#: slow: requests never answer; the client's timeout fails them with Timeout.
#: corrupt: reads fail with ChecksumMismatch, as they do for a chunk whose
#:     stored bytes no longer match the CRC32C they were stored with.
#: partial: puts store the chunk but the acknowledgement is lost
#:     (ConnectionFailed); reads answer only the first half of the bytes
#:     (streamed reads then fail with ConnectionFailed).
DOWN, SLOW, CORRUPT, PARTIAL = "down", "slow", "corrupt", "partial"


class FakeChunkServer:
    """
    One chunkserver's chunks (file id -> bytes, which tests may damage), the
    CRC32C each had when it was stored, and its failure mode.
    """

    def __init__(self, address):
        self.address = address
        self.chunks = {}
        self.crcs = {}
        self.kept = set()  # file ids put with keep=True
        self.mode = None


@implementer(IChunkClient)
class FakeChunkClient:
    """
    L{IChunkClient} over in-memory chunkservers, one per address (created on
    first use).  Operations named in C{hold} (e.g. C{{"put"}}) wait until
    L{release}, so tests can watch requests in flight.
    """

    connect_timeout = 5.0

    def __init__(self, clock, request_timeout=30.0):
        self._clock = clock
        self.request_timeout = request_timeout
        self.servers = {}
        self.calls = Counter()  # (operation, address) -> count
        self.hold = set()
        self.held = []  # (operation, address, file_id, go)
        self.growing_puts = []  # addresses of puts of GrowingChunks not yet whole
        self.in_flight = 0
        self.max_in_flight = 0

    def server(self, address):
        """@return: the L{FakeChunkServer} at C{address}."""
        if address not in self.servers:
            self.servers[address] = FakeChunkServer(address)
        return self.servers[address]

    def release(self, reverse=False):
        """Let the held requests go ahead, in the order they came (or the
        reverse)."""
        held, self.held = self.held, []
        for _, _, _, go in reversed(held) if reverse else held:
            go()

    def _answer(self, address, operation, file_id, compute):
        self.calls[operation, address] += 1
        if operation not in self.hold:
            return self._respond(address, compute)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        entry = []

        def go():
            self.in_flight -= 1
            self._respond(address, compute).chainDeferred(d)

        def cancel(d):
            self.in_flight -= 1
            self.held.remove(entry[0])

        d = Deferred(cancel)
        entry.append((operation, address, file_id, go))
        self.held.append(entry[0])
        return d

    def _respond(self, address, compute):
        server = self.server(address)
        if server.mode == DOWN:
            return fail(errors.ConnectionFailed(f"{address} is down"))
        if server.mode == SLOW:
            d = Deferred()
            call = self._clock.callLater(
                self.request_timeout, lambda: d.errback(errors.Timeout(f"{address} timed out")))
            d.addBoth(lambda r: (call.active() and call.cancel(), r)[1])
            return d
        try:
            return succeed(compute(server))
        except Exception as e:
            return fail(e)

    def put(self, address, file_id, data, keep=False):
        """Store C{data} (bytes-like, or a list or tuple of bytes-like
        pieces), read when the put is carried out (a held one on release),
        as a connection reads a body only as it sends it; a kept put's id
        goes in the server's C{kept}.  A L{GrowingChunk} is put once it is
        whole (the put fails as its connection would if it fails first);
        its address is in C{growing_puts} meanwhile."""
        if isinstance(data, GrowingChunk):
            if self.server(address).mode == DOWN:
                return fail(errors.ConnectionFailed(f"{address} is down"))
            self.growing_puts.append(address)

            def whole(pieces):
                self.growing_puts.remove(address)
                return self.put(address, file_id, pieces, keep)

            def abandoned(failure):
                self.growing_puts.remove(address)
                raise errors.ConnectionFailed(
                    f"connection to {address} aborted: {failure.getErrorMessage()}")
            return data.whole().addCallbacks(whole, abandoned)

        def store(server):
            chunk = b"".join(data) if isinstance(data, (list, tuple)) else bytes(data)
            existing = server.chunks.get(file_id)
            if existing is not None and existing != chunk:
                raise errors.ChunkExists(f"{file_id} on {address}")
            server.chunks[file_id] = chunk
            server.crcs[file_id] = crc32c(chunk)
            if keep:
                server.kept.add(file_id)
            if server.mode == PARTIAL:
                raise errors.ConnectionFailed(f"{address} dropped the acknowledgement")
            return ChunkInfo(file_id, len(chunk), server.crcs[file_id])

        return self._answer(address, "put", file_id, store)

    def get(self, address, file_id, offset=0, length=None):
        def read(server):
            data = _stored(server, file_id)
            if server.mode == CORRUPT or crc32c(data) != server.crcs[file_id]:
                raise errors.ChecksumMismatch(f"{file_id} on {address}")
            end = len(data) if length is None else offset + length
            if offset > len(data) or end > len(data):
                raise errors.RangeNotSatisfiable(f"{offset}+{length} of {len(data)}")
            if server.mode == PARTIAL:
                end = offset + (end - offset) // 2
            return data[offset:end]

        return self._answer(address, "get", file_id, read)

    def get_pieces(self, address, file_id, offset=0, length=None):
        return self.get(address, file_id, offset, length).addCallback(lambda data: [bytes(data)])

    def get_stream(self, address, file_id, offset, length, sink):
        """Answer as L{get} does, handing the bytes to C{sink} as one piece;
        a partial server hands over the first half, then its connection is
        lost."""

        def stream(data):
            sink(bytes(data))
            if len(data) < length:
                raise errors.ConnectionFailed(f"{address} went away mid-answer")

        return self.get(address, file_id, offset, length).addCallback(stream)

    def stat(self, address, file_id):
        def info(server):
            data = _stored(server, file_id)
            return ChunkInfo(file_id, len(data), crc32c(data))

        return self._answer(address, "stat", file_id, info)

    def delete(self, address, file_id):
        def remove(server):
            _stored(server, file_id)
            del server.chunks[file_id], server.crcs[file_id]

        return self._answer(address, "delete", file_id, remove)

    def ping(self, address):
        return self._answer(address, "ping", None, lambda server: 0.0)

    def status(self, address):
        return self._answer(address, "status", None, lambda server: {"chunks": len(server.chunks)})

    def list(self, address):
        return self._answer(address, "list", None, lambda server: sorted(server.chunks))

    def compact(self, address, volume_id=None):
        return self._answer(address, "compact", None, lambda server: 0)

    def close(self):
        return succeed(None)


def _stored(server, file_id):
    try:
        return server.chunks[file_id]
    except KeyError:
        raise errors.ChunkNotFound(f"{file_id} on {server.address}")


def make_view(groups, version=1, free=1 << 40, writable=True):
    """
    Build a L{ClusterView}: C{groups} maps a group id to its member
    addresses; every server is RW with C{free} bytes, server ids are
    C{"cs-<address>"}.
    """
    return ClusterView(
        version=version,
        groups={
            group_id: GroupView(
                group_id=group_id,
                writable=writable,
                servers=tuple(ServerView(f"cs-{a}", a, RW, free=free) for a in addresses),
            )
            for group_id, addresses in groups.items()
        },
    )


@implementer(IClusterView)
class StaticClusterView:
    """An L{IClusterView} that holds whatever view the test sets."""

    def __init__(self, current=None):
        self.current = current


@implementer(IMasterClient)
class FakeMaster:
    """
    L{IMasterClient} in memory: serves C{view} (long-polls wait on the
    clock for L{publish}), hands out consecutive file ids, and fails every
    call with L{Unavailable} while C{down}.
    """

    def __init__(self, clock, view=None, first_id=1):
        self._clock = clock
        self.view = view
        self.next_id = first_id
        self.down = False
        self.allocations = []
        self._polls = []

    def publish(self, view):
        """Make C{view} current and answer the waiting long-polls."""
        self.view = view
        polls, self._polls = self._polls, []
        for d, call in polls:
            call.cancel()
            d.callback(view)

    def cluster(self, etag=None, wait=None):
        if self.down:
            return fail(errors.Unavailable("the chunkmaster is down"))
        if self.view is None:
            return fail(errors.Unavailable("the chunkmaster has no view yet"))
        if etag is None or self.view.version != etag:
            return succeed(self.view)
        d = Deferred(lambda d: self._forget(d))
        call = self._clock.callLater(wait or 0, self._expire, d)
        self._polls.append((d, call))
        return d

    def _expire(self, d):
        self._polls = [(p, c) for p, c in self._polls if p is not d]
        d.callback(None)

    def _forget(self, d):
        for p, c in self._polls:
            if p is d:
                c.cancel()
        self._polls = [(p, c) for p, c in self._polls if p is not d]

    def allocate_file_ids(self, count):
        if self.down:
            return fail(errors.Unavailable("the chunkmaster is down"))
        start = self.next_id
        self.next_id += count
        self.allocations.append((start, self.next_id))
        return succeed((start, self.next_id))

    def close(self):
        return succeed(None)


class FakeCluster:
    """
    A L{ReplicatedStorage} wired to fakes on one L{Clock}: C{client},
    C{master}, C{view} (a L{StaticClusterView}), C{file_ids} and C{metadata}
    (a L{MemoryMetadataStore}).  C{groups} maps a group id to its member
    addresses.
    """

    def __init__(self, groups, chunk_size=8, parallelism=2, tries=3, seed=0, id_batch=100,
                 fill_slots=0, cut_through=0):
        self.clock = Clock()
        self.client = FakeChunkClient(self.clock)
        self.view = StaticClusterView(make_view(groups))
        self.master = FakeMaster(self.clock, self.view.current)
        self.file_ids = FileIdRange(self.master, batch=id_batch, low_water=id_batch // 4)
        self.metadata = MemoryMetadataStore(self.clock)
        self.storage = ReplicatedStorage(
            self.client, self.view, self.file_ids, self.metadata, self.clock,
            chunk_size=chunk_size, parallelism=parallelism, tries=tries, rng=Random(seed),
            fill_slots=fill_slots, cut_through=cut_through)

    def copies(self, ref):
        """@return: {address: bytes} of the copies of C{ref} on its group's members."""
        group = self.view.current.groups[ref.group_id]
        return {s.address: self.client.server(s.address).chunks.get(ref.file_id)
                for s in group.servers}
