# -*- test-case-name: speedy.test.test_testing -*-
"""
L{FakeChunkClient}: chunkservers in memory behind the
L{speedy.interfaces.IChunkClient} an imageserver talks to them through,
with failure injection (a server down, slow, corrupt or partial) and
requests that can be held in flight.
"""

from collections import Counter

from twisted.internet.defer import Deferred, fail, succeed
from zope.interface import implementer

from speedy import errors
from speedy.crc import crc32c
from speedy.interfaces import IChunkClient
from speedy.records import ChunkInfo
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
