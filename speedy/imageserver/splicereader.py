# -*- test-case-name: speedy.test.test_splice -*-
"""
L{SpliceFileReader}: the zero-copy download path.  A byte range of a file
goes from chunkserver sockets through a pipe into the HTTP client's socket
with C{os.splice} (L{speedy.zerocopy.relay}), never entering Python memory.
"""

from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger

from speedy import errors
from speedy.imageserver.reader import segments, written as _written
from speedy.zerocopy.relay import SpliceRelay

log = Logger()


class SpliceFileReader:
    """
    Streams a byte range of a file into a C{twisted.web} request that
    L{speedy.zerocopy.relay.splice_transport} accepts, with the contract of
    L{speedy.imageserver.reader.FileReader}.

    For each of the file's segments in order it picks a replica
    least-loaded first (L{ReplicaReader}'s ordering, its C{reading} counts
    and its bad-replica reports), reads the GET answer's header and relays
    the segment's bytes.  A replica that fails before a byte of its answer
    moved is skipped (one without the chunk, or whose record failed its
    check, is reported bad); one that fails after some bytes went into the
    pipe is resumed from: the rest of the range is asked of the next
    replica at the byte reached, so the client sees every byte once, in
    order.  When no replica can serve the rest, the read fails and the
    caller must break off the response: its client sees a truncated body,
    never a wrong one.

    Read-ahead without memory: the GETs of the next C{read_ahead} segments
    are sent early, each on its own socket, and not read until their turn;
    their bytes wait in kernel socket buffers and TCP windows.  That hides
    the per-chunk request latency.

    The bytes pass without a CRC32C check here: the chunkserver checks its
    record's CRC32C before it answers (a damaged record is answered with
    C{CHECKSUM_MISMATCH} and no data, and the next replica is read), and
    the registry client checks the blob's digest.

    @param replicas: a L{ReplicaReader}.
    @param sources: a L{speedy.zerocopy.sources.SourcePool}.
    """

    def __init__(self, replicas, sources, chunks, offset, length, request, read_ahead=4):
        self._replicas = replicas
        self._sources = sources
        self._segments = segments(chunks, offset, length)
        self._request = request
        self._read_ahead = max(1, read_ahead)
        self._prefetched = {}  # segment index -> (servers in order, SpliceGet)
        self._relay = None
        self._current = None  # the Deferred being waited for
        self._gone = None  # the ConnectionLost, once the client went away

    def start(self):
        """
        @return: a Deferred firing with None once every byte went into the
            client's socket (the producer is unregistered first), failing
            with L{Unavailable} when a segment could not be fetched, or
            with L{ConnectionLost} when the request stopped the producer
            (the client went away).  Cancelling it stops every fetch.
        """
        return Deferred.fromCoroutine(self._run())

    async def _run(self):
        if not self._segments:
            return None
        self._relay = relay = SpliceRelay(self._request, self._sources.pipes, self._client_gone)
        try:
            for index in range(len(self._segments)):
                self._prefetch(index + 1)
                await self._relay_segment(index)
            await self._wait(relay.drained())
        finally:
            prefetched, self._prefetched = self._prefetched, {}
            for servers, get in prefetched.values():
                self._replicas.reading[get.address] -= 1
                get.close()
            relay.close()
        return None

    def _client_gone(self, error):
        self._gone = error
        if self._current is not None and not self._current.called:
            self._current.cancel()

    async def _wait(self, d):
        """Await C{d}; if the client goes away meanwhile, raise its
        L{ConnectionLost}."""
        self._current = d
        try:
            return await d
        except CancelledError:
            if self._gone is not None:
                raise self._gone
            raise
        finally:
            self._current = None

    def _prefetch(self, first):
        """Send the GETs of the C{read_ahead} segments from C{first} on."""
        for index in range(first, min(first + self._read_ahead, len(self._segments))):
            if index in self._prefetched:
                continue
            chunk, offset, length = self._segments[index]
            try:
                servers = self._replicas.by_load(chunk.group_id, chunk.file_id)
            except errors.Unavailable:
                continue  # the segment fails at its turn
            address = servers[0].address
            self._replicas.reading[address] += 1
            self._prefetched[index] = (
                servers, self._sources.get(address, chunk.file_id, offset, length,
                                           _written(chunk)))

    async def _relay_segment(self, index):
        chunk, offset, length = self._segments[index]
        replicas = self._replicas
        servers, get = self._prefetched.pop(index, (None, None))
        if servers is None:
            servers = replicas.by_load(chunk.group_id, chunk.file_id)
        reached = 0  # bytes of the segment that went into the pipe
        reasons = []
        for server in servers:
            if get is None:
                get = self._sources.get(server.address, chunk.file_id,
                                        offset + reached, length - reached, _written(chunk))
                replicas.reading[server.address] += 1
            try:
                await self._wait(get.head())
                if not self._relay.started:
                    # The response's head goes out with the first byte a
                    # replica will send: until then a failure can still be
                    # answered with an error status.
                    self._relay.start()
                await self._wait(self._relay.pump(get, length - reached))
            except CancelledError:
                raise
            except Exception as e:
                if self._gone is not None and not replicas.is_bad_replica(e):
                    raise self._gone
                if replicas.timings is not None:
                    # Not through the chunk client: count its failure here.
                    replicas.timings.failed(server.address, "get", e)
                reasons.append(replicas.failed(server, chunk.group_id, chunk.file_id, e,
                                               at=(reached + get.moved, length)))
                continue
            finally:
                reached += get.moved
                get.close()
                replicas.reading[server.address] -= 1
                get = None
            return
        replicas.counters["reads_failed"] += 1
        raise errors.Unavailable(
            f"no replica of chunk {chunk.group_id}/{chunk.file_id} could serve bytes "
            f"{offset + reached}-{offset + length} ({'; '.join(reasons)})")
