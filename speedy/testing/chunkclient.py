# -*- test-case-name: speedy.test.test_testing -*-
"""
L{FakeChunkClient}: chunkservers in memory behind the
L{speedy.interfaces.IChunkClient} an imageserver talks to them through,
with failure injection (a server down, slow, corrupt or partial) and
requests that can be held in flight.  Like the real client, a request
carries the request id current when it is made (L{speedy.logs.request_id})
as its trace; the fake records it in C{traces}.

L{ChunkClientTestsMixin} is the contract: it runs against
L{FakeChunkClient}, and against the real L{speedy.wire.client.ChunkClient}
talking to real chunkserver protocols (over L{MemoryChunkStore}s) through
in-memory connections, in L{speedy.test.test_testing}.
"""

import os
from collections import Counter

from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from zope.interface import implementer
from zope.interface.verify import verifyObject

from speedy import errors
from speedy.crc import crc32c
from speedy.interfaces import IChunkClient
from speedy.logs import request_id
from speedy.records import ChunkInfo
from speedy.wire.growing import GrowingChunk
from speedy.wire.timings import RequestTimings

#: Failure modes of a L{FakeChunkServer}.
#: down: every request fails with ConnectionFailed.
#: slow: requests never answer; the client's timeout fails them with Timeout.
#: corrupt: reads fail with ChecksumMismatch, as they do for a chunk whose
#:     stored bytes no longer match the CRC32C they were stored with.
#: partial: puts store the chunk but the acknowledgement is lost
#:     (ConnectionFailed); reads answer only the first half of the bytes
#:     (streamed reads then fail with ConnectionFailed).
DOWN, SLOW, CORRUPT, PARTIAL = "down", "slow", "corrupt", "partial"

#: The trace of a request is the request id current when it is made
#: (_CURRENT), unless it was recorded already (_RECORDED).
_CURRENT, _RECORDED = object(), object()


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
        self.garbage = 0  # bytes deleted and not yet compacted away
        self.mode = None


@implementer(IChunkClient)
class FakeChunkClient:
    """
    L{IChunkClient} over in-memory chunkservers, one per address (created on
    first use).  Operations named in C{hold} (e.g. C{{"put"}}) wait until
    L{release}, so tests can watch requests in flight.

    @ivar traces: (operation, address, file_id, trace) of every request,
        in the order made, C{trace} being the request id current when it
        was made (None for none), which the real client sends along; each
        member of a chain is recorded as a C{put} with the chain's trace,
        which the real chunkservers pass along the chain.
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
        self.chains = []  # the members of each chain_put, in chain order
        self.traces = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.timings = RequestTimings()

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

    def _answer(self, address, operation, file_id, compute, trace=_CURRENT):
        if trace is not _RECORDED:
            self.traces.append((operation, address, file_id,
                                request_id.get() if trace is _CURRENT else trace))
        started = self._clock.seconds()
        return self._held(address, operation, file_id, compute).addBoth(
            lambda result: self.timings.settled(
                result, address, operation, self._clock.seconds() - started))

    def _held(self, address, operation, file_id, compute):
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
        return self._put(address, file_id, data, keep, request_id.get())

    def _put(self, address, file_id, data, keep, trace):
        if isinstance(data, GrowingChunk):
            # It goes out (with its trace) now, its bytes as they come.
            self.traces.append(("put", address, file_id, trace))
            if self.server(address).mode == DOWN:
                return fail(errors.ConnectionFailed(f"{address} is down"))
            self.growing_puts.append(address)

            def whole(pieces):  # called from whoever completed the chunk
                self.growing_puts.remove(address)
                return self._put(address, file_id, pieces, keep, _RECORDED)

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

        return self._answer(address, "put", file_id, store, trace)

    def chain_put(self, address, file_id, data, route=(), keep_mask=0):
        """Put C{data} on C{address}, then on each member of C{route} in
        turn (as L{put}, holds and modes included); the chain is recorded
        in C{chains}.  The first member that fails fails the chain, its
        error prefixed with its address; the members after it get nothing."""
        chain = [address, *route]
        self.chains.append(tuple(chain))

        async def along():
            infos = []
            for i, member in enumerate(chain):
                try:
                    infos.append(await self.put(member, file_id, data,
                                                keep=bool(keep_mask >> i & 1)))
                except errors.SpeedyError as e:
                    raise type(e)(f"{member}: {e}")
            return infos

        return Deferred.fromCoroutine(along())

    def get(self, address, file_id, offset=0, length=None):
        def read(server):
            data = _stored(server, file_id)
            if server.mode == CORRUPT:
                raise errors.ChecksumMismatch(f"{file_id} on {address}")
            _drop_if_damaged(server, file_id)
            end = len(data) if length is None else offset + length
            if offset > len(data) or end > len(data):
                raise errors.RangeNotSatisfiable(f"{offset}+{length} of {len(data)}")
            if server.mode == PARTIAL:
                end = offset + (end - offset) // 2
            return data[offset:end]

        return self._answer(address, "get", file_id, read)

    def get_pieces(self, address, file_id, offset=0, length=None):
        return self.get(address, file_id, offset, length).addCallback(lambda data: [bytes(data)])

    def get_stream(self, address, file_id, offset, length, sink, expect=None):
        """Answer as L{get} does, handing the bytes to C{sink} as one piece;
        a partial server hands over the first half, then its connection is
        lost.  A chunk not as C{expect} says fails L{ChecksumMismatch}
        before any byte goes to C{sink}."""

        def stream(data):
            if expect is not None:
                held = self.server(address).chunks.get(file_id, b"")
                if (len(held), crc32c(held)) != tuple(expect):
                    raise errors.ChecksumMismatch(f"{file_id} on {address} is not as written")
            sink(bytes(data))
            if len(data) < length:
                raise errors.ConnectionFailed(f"{address} went away mid-answer")

        return self.get(address, file_id, offset, length).addCallback(stream)

    def stat(self, address, file_id):
        """Answer from the "index": the size and the CRC32C the chunk had
        when it was stored, whatever its bytes are now (as STAT does)."""
        def info(server):
            data = _stored(server, file_id)
            return ChunkInfo(file_id, len(data), server.crcs[file_id])

        return self._answer(address, "stat", file_id, info)

    def verify(self, address, file_id):
        def check(server):
            data = _stored(server, file_id)
            _drop_if_damaged(server, file_id)
            return ChunkInfo(file_id, len(data), server.crcs[file_id])

        return self._answer(address, "verify", file_id, check)

    def delete(self, address, file_id):
        def remove(server):
            server.garbage += len(_stored(server, file_id))
            del server.chunks[file_id], server.crcs[file_id]

        return self._answer(address, "delete", file_id, remove)

    def ping(self, address):
        return self._answer(address, "ping", None, lambda server: 0.0)

    def status(self, address):
        return self._answer(address, "status", None, lambda server: {"chunks": len(server.chunks)})

    def list(self, address):
        return self._answer(address, "list", None, lambda server: sorted(server.chunks))

    def compact(self, address, volume_id=None):
        def compact(server):
            freed, server.garbage = server.garbage, 0
            return freed

        return self._answer(address, "compact", None, compact)

    def close(self):
        return succeed(None)


def _drop_if_damaged(server, file_id):
    """
    @raise ChecksumMismatch: the chunk's bytes no longer match the CRC32C
        they were stored with; it is dropped, as a real chunkserver drops a
        damaged chunk for repair.
    """
    if crc32c(server.chunks[file_id]) != server.crcs[file_id]:
        server.garbage += len(server.chunks.pop(file_id))
        del server.crcs[file_id]
        raise errors.ChecksumMismatch(f"{file_id} on {server.address} is damaged")


def _stored(server, file_id):
    try:
        return server.chunks[file_id]
    except KeyError:
        raise errors.ChunkNotFound(f"{file_id} on {server.address}")


class ChunkClientTestsMixin:
    """
    The L{IChunkClient} contract the imageserver's storage path relies on,
    for a C{SynchronousTestCase} on a fake clock.

    Mix into a test case that provides:

      - C{clock}: the clock the client's timeouts run on;
      - C{make_client()}: @return: a new L{IChunkClient} on C{clock}, with
        an empty chunkserver at each of L{addresses};
      - C{settle()}: let every request go as far as it can without the
        clock moving (connect, send, answer);
      - C{damage(address, file_id)}: spoil the stored bytes of a chunk
        behind the chunkserver's back, so that reading it fails its
        checksum;
      - C{take_down(address)}: the chunkserver goes away (its connections
        drop, new ones are refused);
      - C{stall(address)}: the chunkserver, connected, answers nothing more.
    """

    addresses = ("127.0.0.1:8001", "127.0.0.1:8002")

    def setUp(self):
        super().setUp()
        self.client = self.make_client()
        self.address = self.addresses[0]

    def answer(self, d):
        """@return: the result C{d} fires with once requests settled."""
        self.settle()
        return self.successResultOf(d)

    def fails(self, d, *types):
        """@return: the exception C{d} fails with once requests settled."""
        self.settle()
        return self.failureResultOf(d, *types).value

    def put(self, file_id, data, address=None):
        return self.answer(self.client.put(address or self.address, file_id, data))

    def stream(self, file_id, offset, length, address=None):
        """@return: (the Deferred of a get_stream, the list its sink fills)."""
        pieces = []
        d = self.client.get_stream(address or self.address, file_id, offset, length, pieces.append)
        return d, pieces

    def test_interface(self):
        verifyObject(IChunkClient, self.client)
        self.assertGreater(self.client.connect_timeout, 0)
        self.assertGreater(self.client.request_timeout, 0)

    def test_round_trip(self):
        """A stored chunk reads back whole or in ranges, its ChunkInfo
        carries its CRC32C, and once deleted it is gone."""
        data = os.urandom(100_000)
        info = self.put(42, data)
        self.assertEqual(info, ChunkInfo(42, len(data), crc32c(data)))
        self.assertEqual(self.answer(self.client.get(self.address, 42)), data)
        self.assertEqual(self.answer(self.client.get(self.address, 42, 10, 20)), data[10:30])
        self.assertEqual(self.answer(self.client.get(self.address, 42, 99_990)), data[99_990:])
        self.assertEqual(self.answer(self.client.get(self.address, 42, len(data))), b"")
        self.assertEqual(self.answer(self.client.stat(self.address, 42)), info)
        self.assertIsNone(self.answer(self.client.delete(self.address, 42)))
        self.fails(self.client.stat(self.address, 42), errors.ChunkNotFound)
        self.fails(self.client.get(self.address, 42), errors.ChunkNotFound)

    def test_put_pieces(self):
        """A chunk given as a list or tuple of bytes-like pieces is stored
        as the pieces joined."""
        pieces = [os.urandom(3000), bytearray(os.urandom(5)), memoryview(os.urandom(700))]
        chunk = b"".join(pieces)
        self.assertEqual(self.put(9, pieces), ChunkInfo(9, len(chunk), crc32c(chunk)))
        self.assertEqual(self.put(10, tuple(pieces)), ChunkInfo(10, len(chunk), crc32c(chunk)))
        self.assertEqual(self.answer(self.client.get(self.address, 9)), chunk)
        self.assertEqual(self.answer(self.client.get(self.address, 10)), chunk)

    def test_get_pieces(self):
        """get_pieces answers bytes pieces that join up to the range."""
        data = os.urandom(200_000)
        self.put(1, data)
        for offset, length, wanted in [(0, None, data), (1000, 5000, data[1000:6000])]:
            pieces = self.answer(self.client.get_pieces(self.address, 1, offset, length))
            self.assertTrue(all(isinstance(piece, bytes) for piece in pieces))
            self.assertEqual(b"".join(pieces), wanted)

    def test_get_stream(self):
        """get_stream hands a whole chunk or a range to its sink, in order,
        and fires with None."""
        data = os.urandom(200_000)
        self.put(1, data)
        for offset, length in [(0, len(data)), (1000, 150_000)]:
            d, pieces = self.stream(1, offset, length)
            self.assertIsNone(self.answer(d))
            self.assertEqual(b"".join(pieces), data[offset:offset + length])

    def test_get_stream_expecting_the_written_chunk(self):
        """A stream told the size and CRC32C the chunk was written with
        gets its bytes when the server holds that chunk; a server holding
        other bytes under the id (the same length, replaced) fails it with
        ChecksumMismatch before a byte reaches the sink, for a range too,
        and the client goes on serving."""
        written, other = os.urandom(100_000), os.urandom(100_000)
        self.put(1, written)
        self.put(2, other)
        expect = (len(written), crc32c(written))
        pieces = []
        d = self.client.get_stream(self.address, 1, 0, len(written), pieces.append, expect=expect)
        self.assertIsNone(self.answer(d))
        self.assertEqual(b"".join(pieces), written)
        for offset, length in [(0, len(other)), (10, 500)]:
            pieces = []
            d = self.client.get_stream(self.address, 2, offset, length, pieces.append,
                                       expect=expect)
            self.fails(d, errors.ChecksumMismatch)
            self.assertEqual(pieces, [])
        self.assertEqual(self.answer(self.client.get(self.address, 2, 10, 5)), other[10:15])

    def test_missing(self):
        """Every request about a chunk the server lacks fails with
        ChunkNotFound; a stream's sink gets nothing."""
        for request in (self.client.get, self.client.get_pieces, self.client.stat,
                        self.client.delete):
            self.fails(request(self.address, 5), errors.ChunkNotFound)
        d, pieces = self.stream(5, 0, 10)
        self.fails(d, errors.ChunkNotFound)
        self.assertEqual(pieces, [])

    def test_range_outside(self):
        """A range past the chunk's end fails with RangeNotSatisfiable."""
        self.put(5, b"abc")
        for offset, length in [(2, 5), (4, None), (4, 0)]:
            self.fails(self.client.get(self.address, 5, offset, length),
                       errors.RangeNotSatisfiable)
        d, pieces = self.stream(5, 1, 3)
        self.fails(d, errors.RangeNotSatisfiable)
        self.assertEqual(pieces, [])

    def test_put_again(self):
        """Putting the same bytes again is an idempotent retry; other
        bytes under that id fail with ChunkExists and change nothing."""
        info = self.put(3, b"same")
        self.assertEqual(self.put(3, [b"sa", b"me"]), info)
        self.fails(self.client.put(self.address, 3, b"diff"), errors.ChunkExists)
        self.assertEqual(self.answer(self.client.get(self.address, 3)), b"same")

    def test_keep(self):
        """A put with keep stores the chunk as any put does."""
        data = os.urandom(5000)
        info = self.answer(self.client.put(self.address, 4, data, keep=True))
        self.assertEqual(info, ChunkInfo(4, len(data), crc32c(data)))
        self.assertEqual(self.answer(self.client.get(self.address, 4)), data)

    def test_damaged(self):
        """A chunk whose stored bytes were spoiled fails a read, whole or a
        range, however asked, with ChecksumMismatch, and is gone after (the
        server dropped it for repair); the server's other chunks read."""
        self.put(7, b"y" * 1000)
        reads = [lambda: self.client.get(self.address, 6),
                 lambda: self.client.get(self.address, 6, 0, 10),
                 lambda: self.client.get_pieces(self.address, 6),
                 lambda: self.stream(6, 0, 1000)[0]]
        for read in reads:
            self.put(6, b"x" * 1000)
            self.damage(self.address, 6)
            self.fails(read(), errors.ChecksumMismatch)
            self.fails(self.client.get(self.address, 6), errors.ChunkNotFound)
        self.assertEqual(self.answer(self.client.get(self.address, 7)), b"y" * 1000)

    def test_verify(self):
        """VERIFY answers a good chunk's info; a damaged chunk fails it and
        is gone after; a missing one is not found."""
        self.put(6, b"x" * 1000)
        self.put(7, b"y" * 1000)
        info = self.answer(self.client.verify(self.address, 7))
        self.assertEqual((info.file_id, info.size, info.crc32c), (7, 1000, crc32c(b"y" * 1000)))
        self.damage(self.address, 6)
        self.fails(self.client.verify(self.address, 6), errors.ChecksumMismatch)
        self.fails(self.client.verify(self.address, 6), errors.ChunkNotFound)
        self.assertEqual(self.answer(self.client.get(self.address, 7)), b"y" * 1000)

    def test_servers_apart(self):
        """Each address is its own chunkserver."""
        other = self.addresses[1]
        self.put(1, b"here")
        self.put(1, b"there", address=other)
        self.put(2, b"two", address=other)
        self.assertEqual(self.answer(self.client.get(self.address, 1)), b"here")
        self.assertEqual(self.answer(self.client.get(other, 1)), b"there")
        self.assertEqual(self.answer(self.client.list(self.address)), [1])
        self.assertEqual(self.answer(self.client.list(other)), [1, 2])

    def test_list_status_ping_compact(self):
        """list names the stored ids in order, status counts them, ping
        measures a time, and compact frees what was deleted."""
        for file_id in (3, 1, 2):
            self.put(file_id, b"x" * 100 * file_id)
        self.assertEqual(self.answer(self.client.list(self.address)), [1, 2, 3])
        self.assertEqual(self.answer(self.client.status(self.address))["chunks"], 3)
        rtt = self.answer(self.client.ping(self.address))
        self.assertIsInstance(rtt, float)
        self.assertGreaterEqual(rtt, 0)
        self.answer(self.client.delete(self.address, 3))
        self.assertEqual(self.answer(self.client.compact(self.address)), 300)
        self.assertEqual(self.answer(self.client.compact(self.address)), 0)
        self.assertEqual(self.answer(self.client.list(self.address)), [1, 2])

    def test_unreachable(self):
        """A chunkserver gone: its requests fail with ConnectionFailed, and
        the others' requests go on."""
        self.put(1, b"x")
        self.put(1, b"y", address=self.addresses[1])
        self.take_down(self.address)
        self.fails(self.client.get(self.address, 1), errors.ConnectionFailed)
        self.fails(self.client.put(self.address, 2, b"z"), errors.ConnectionFailed)
        self.fails(self.client.ping(self.address), errors.ConnectionFailed)
        self.assertEqual(self.answer(self.client.get(self.addresses[1], 1)), b"y")

    def test_stalled(self):
        """A chunkserver that stops answering: its requests fail with
        Timeout once request_timeout passed, not before."""
        self.put(1, b"x")
        self.stall(self.address)
        d = self.client.get(self.address, 1)
        self.settle()
        self.clock.advance(self.client.request_timeout * 0.9)
        self.assertNoResult(d)
        self.clock.advance(self.client.request_timeout * 0.1)
        self.failureResultOf(d, errors.Timeout)

    def test_cancel(self):
        """A request cancelled while it waits for its answer fails with
        CancelledError, and its timeout is gone with it."""
        self.put(1, b"x")
        self.stall(self.address)
        d = self.client.get(self.address, 1)
        self.settle()
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.clock.advance(self.client.request_timeout)

    def test_timings(self):
        """Every answered request's duration is kept by chunkserver and
        operation, and every failed one counted by its error's class: a
        slow member, a missing chunk and a dead member each show on their
        own address.  A cancelled request is not the chunkserver's fault
        and is not counted."""
        other = self.addresses[1]
        self.put(1, b"x")
        self.put(1, b"x", address=other)
        self.answer(self.client.get(self.address, 1))
        self.fails(self.client.get(self.address, 7), errors.ChunkNotFound)
        self.stall(other)
        slow = self.client.get(other, 1)
        self.settle()
        self.clock.advance(self.client.request_timeout)
        self.failureResultOf(slow, errors.Timeout)
        cancelled = self.client.stat(other, 1)
        self.settle()
        cancelled.cancel()
        self.failureResultOf(cancelled, CancelledError)
        timings = self.client.timings
        self.assertEqual(timings.durations[self.address, "put"].count, 1)
        self.assertEqual(timings.durations[self.address, "get"].count, 1)
        self.assertEqual(timings.durations[other, "put"].count, 1)
        self.assertNotIn((other, "get"), timings.durations)
        self.assertEqual(dict(timings.errors), {
            (self.address, "get", "ChunkNotFound"): 1,
            (other, "get", "Timeout"): 1,
        })

    def test_close(self):
        """close() fires once the connections are closed."""
        self.put(1, b"x")
        self.assertIsNone(self.answer(self.client.close()))
