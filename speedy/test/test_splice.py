"""
Tests for L{speedy.zerocopy} (pipes, sources, spliceget, relay) and L{speedy.imageserver.splicereader}:
downloads relayed with C{os.splice} from real chunkserver protocol servers
(over L{MemoryChunkStore}s) on loopback, through a real C{twisted.web}
site, to a raw HTTP client, on the global reactor.
"""

import itertools
import os
import socket
from random import Random

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site
from twisted.web.test.requesthelper import DummyRequest
from zope.interface import alsoProvides

from speedy import errors
from speedy.chunkserver.protocol import ChunkServerFactory
from speedy.imageserver.reader import FileReader
from speedy.imageserver.replication import ReplicatedStorage
from speedy.imageserver.splicereader import SpliceFileReader
from speedy.metadata.memory import MemoryMetadataStore
from speedy.records import ChunkRef
from speedy.crc import crc32c
from speedy.testing import MemoryChunkStore, StaticClusterView, make_view
from speedy.wire.client import ChunkClient
from speedy.wire.frames import (
    FLAG_RESPONSE, GET_REQUEST, GET_RESPONSE, HEADER_SIZE, OP_GET, Header)
from speedy.zerocopy.pipes import PIPE_SIZE, Pipe, PipePool
from speedy.zerocopy.relay import SpliceRelay, can_splice, splice_transport
from speedy.zerocopy.sources import _SourceSocket

GROUP = 1
MiB = 1 << 20


def open_fds():
    return len(os.listdir("/proc/self/fd"))


def first_in_view(servers, file_id):
    """Every chunk's preferred replica is its group's first member: reads
    try the servers in view order."""
    return servers[0]


class OrderedRandom(Random):
    """Random numbers that only grow: replicas tie-broken in view order."""

    def __init__(self):
        super().__init__(0)
        self._next = itertools.count()

    def random(self):
        return next(self._next)


class Download(Resource):
    """GET /?offset=O&length=L streams bytes O..O+L of C{chunks} with
    C{storage.read}, as the registry does; a failure after the answer
    began breaks the connection off."""

    isLeaf = True

    def __init__(self, storage, chunks):
        super().__init__()
        self.storage = storage
        self.chunks = chunks
        self.requests = []
        self.reads = []
        self.results = []
        self.small_send_buffer = False

    def render_GET(self, request):
        offset = int(request.args[b"offset"][0])
        length = int(request.args[b"length"][0])
        if self.small_send_buffer:
            request.channel.transport.getHandle().setsockopt(
                socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
        request.setHeader(b"content-length", b"%d" % (length,))
        self.requests.append(request)
        self.results.append(self.storage.reader_type(request))
        reading = self.storage.read(self.chunks, offset, length, request)
        outcome = Deferred()
        self.reads.append(outcome)
        request.notifyFinish().addErrback(lambda _: reading.cancel())

        def done(_):
            request.finish()

        def failed(reason):
            if not request._disconnected:
                request.loseConnection()
            return reason
        reading.addCallbacks(done, failed)
        reading.addBoth(lambda result: outcome.errback(result) if isinstance(result, Failure)
                        else outcome.callback(result))
        return NOT_DONE_YET


class RawClient(Protocol):
    """Sends one GET (Connection: close) and keeps every byte answered;
    aborts after C{stop_after} body bytes, reads with a small receive
    buffer when C{small}."""

    def __init__(self, path, stop_after=None, small=False):
        self.path = path
        self.stop_after = stop_after
        self.small = small
        self.data = bytearray()
        self.done = Deferred()

    def connectionMade(self):
        if self.small:
            self.transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        self.transport.write(b"GET %s HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
                             % (self.path,))

    def dataReceived(self, data):
        self.data += data
        if self.stop_after is not None and len(self.body()) >= self.stop_after:
            self.stop_after = None
            self.transport.abortConnection()

    def connectionLost(self, reason):
        self.done.callback(self)

    def head(self):
        head, _, _ = bytes(self.data).partition(b"\r\n\r\n")
        return head

    def body(self):
        _, sep, body = bytes(self.data).partition(b"\r\n\r\n")
        return body if sep else b""

    def content_length(self):
        for line in self.head().split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                return int(value)
        return None


class TruncatingServer(Protocol):
    """Answers a GET with the header, the prefix and only C{cut} bytes of
    the range from C{store}, then hangs up (a chunkserver dying
    mid-body); with C{cut} None, never answers (a wedged one)."""

    def __init__(self, store, cut):
        self.store = store
        self.cut = cut
        self.buffer = b""

    def dataReceived(self, data):
        self.buffer += data
        if len(self.buffer) < HEADER_SIZE + GET_REQUEST.size or self.cut is None:
            return
        header = Header.unpack(self.buffer[:HEADER_SIZE])
        file_id, offset, length = GET_REQUEST.unpack(self.buffer[HEADER_SIZE:HEADER_SIZE + 24])
        content = self.store.contents(file_id)
        body = (GET_RESPONSE.pack(len(content), crc32c(content), offset)
                + content[offset:offset + length])
        self.transport.write(Header(OP_GET, header.request_id, len(body),
                                    FLAG_RESPONSE).pack() + body[:GET_RESPONSE.size + self.cut])
        self.transport.loseConnection()


class SpliceDownloadTests(TestCase):
    """Downloads through L{ReplicatedStorage.read} on the splice path."""

    timeout = 60

    def setUp(self):
        self.addCleanup(self.connections_closed)
        self.stores = []
        self.factories = []
        self.addresses = []
        for _ in range(3):
            store = MemoryChunkStore()
            factory = ChunkServerFactory(reactor, store)
            factory.protocols = []
            factory.buildProtocol = lambda addr, f=factory, build=factory.buildProtocol: (
                f.protocols.append(build(addr)) or f.protocols[-1])
            port = reactor.listenTCP(0, factory, interface="127.0.0.1")
            self.addCleanup(port.stopListening)
            self.stores.append(store)
            self.factories.append(factory)
            self.addresses.append(f"127.0.0.1:{port.getHost().port}")
        self.client = ChunkClient(reactor, connect_timeout=2.0, request_timeout=5.0)
        self.addCleanup(self.client.close)
        self.metadata = MemoryMetadataStore(reactor)
        self.storage = self.make_storage(self.addresses)
        self.chunks = []
        self.content = b""

    def make_storage(self, addresses, parallelism=2, read_window=0):
        storage = ReplicatedStorage(
            self.client, StaticClusterView(make_view({GROUP: addresses})), None,
            self.metadata, reactor, parallelism=parallelism, rng=OrderedRandom(),
            preferred=first_in_view, read_window=read_window)
        self.addCleanup(storage.close)
        return storage

    def add_chunks(self, sizes, on=(0, 1, 2)):
        """Store chunks of random bytes of C{sizes} on the servers C{on}."""
        for size in sizes:
            data = os.urandom(size)
            file_id = len(self.chunks) + 100
            info = None
            for index in on:
                info = self.stores[index].add(file_id, data)
            self.chunks.append(ChunkRef(GROUP, file_id, size, info.crc32c))
            self.content += data

    def serve(self, storage=None):
        self.resource = Download(storage or self.storage, self.chunks)
        site = Site(self.resource)
        site.noisy = False
        port = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.http_port = port.getHost().port

    @inlineCallbacks
    def download(self, offset, length, **kwargs):
        client = RawClient(b"/?offset=%d&length=%d" % (offset, length), **kwargs)
        factory = ClientFactory.forProtocol(lambda: client)
        factory.noisy = False
        reactor.connectTCP("127.0.0.1", self.http_port, factory)
        yield client.done
        return client

    @inlineCallbacks
    def settle(self, condition, seconds=5.0):
        """Spin the reactor until C{condition()} holds."""
        for _ in range(int(seconds / 0.02)):
            if condition():
                return
            yield deferLater(reactor, 0.02, lambda: None)
        self.assertTrue(condition(), "condition never held")

    def connections_closed(self):
        """Wait until every connection the test made is closed."""
        from twisted.internet import tcp
        return self.settle(lambda: not [
            s for s in reactor.getReaders() + reactor.getWriters()
            if isinstance(s, (tcp.Connection, _SourceSocket))])

    def open_server_connections(self):
        return sum(f.counters["open_connections"] for f in self.factories)

    def sources(self):
        return self.storage.splice_sources()

    def pooled_sockets(self):
        """@return: the idle sockets of the storage's source pool (at least one)."""
        sockets = [source.sock for idle in self.sources()._idle.values() for source, _ in idle]
        self.assertTrue(sockets)
        return sockets

    def assert_spliced(self):
        self.assertEqual(self.resource.results[-1], SpliceFileReader)
        self.assertEqual(self.client._pools, {}, "the chunk client fetched bytes into Python")

    # --- bytes -------------------------------------------------------------

    @inlineCallbacks
    def test_whole_file(self):
        """A file of several chunks arrives byte for byte, spliced."""
        self.add_chunks([3 * MiB + 17, 2 * MiB, MiB + 123, 4096])
        self.serve()
        client = yield self.download(0, len(self.content))
        self.assert_spliced()
        self.assertEqual(client.content_length(), len(self.content))
        self.assertTrue(client.body() == self.content, "bytes differ")
        yield self.resource.reads[0]
        self.assertEqual(self.storage.counters["reads_spliced"], 1)
        self.assertEqual(self.storage.counters["read_failovers"], 0)

    @inlineCallbacks
    def test_ranges(self):
        """Ranges starting and ending mid-chunk, within one chunk or
        across several, arrive byte for byte; the sockets are reused."""
        self.add_chunks([MiB + 1, 700_000, 2 * MiB + 5])
        self.serve()
        total = len(self.content)
        for offset, length in [(1, total - 2), (MiB - 10, 20), (MiB + 1, 700_000),
                               (500, 3 * MiB), (total - 1, 1), (123_456, 7)]:
            client = yield self.download(offset, length)
            self.assertTrue(client.body() == self.content[offset:offset + length],
                            f"bytes {offset}+{length} differ")
        self.assert_spliced()
        self.assertGreater(self.sources().counters["reuses"], 0)

    @inlineCallbacks
    def test_empty_range(self):
        """A 0-length read writes nothing and succeeds."""
        self.add_chunks([1000])
        self.serve()
        client = yield self.download(0, 0)
        self.assertIn(b" 200 ", client.head())
        self.assertEqual(client.body(), b"")
        yield self.resource.reads[0]

    @inlineCallbacks
    def test_chunk_larger_than_pipe(self):
        """One chunk several times the pipe's size goes through it."""
        self.add_chunks([5 * PIPE_SIZE + 3])
        self.serve()
        client = yield self.download(0, len(self.content))
        self.assertTrue(client.body() == self.content, "bytes differ")
        pipe = self.sources().pipes.take()
        self.assertLess(pipe.size, len(self.content))
        self.sources().pipes.give_back(pipe)
        self.assert_spliced()

    # --- replicas ----------------------------------------------------------

    @inlineCallbacks
    def test_chunk_not_found(self):
        """A replica without the chunk is reported bad; the next serves it."""
        self.add_chunks([2 * MiB], on=(1, 2))
        self.serve()
        client = yield self.download(0, len(self.content))
        self.assertTrue(client.body() == self.content, "bytes differ")
        [bad] = (yield self.metadata.list_bad_replicas())
        self.assertEqual(bad.server_id, f"cs-{self.addresses[0]}")
        self.assertIn("ChunkNotFound", bad.reason)
        # The error frame was read whole: that socket went back to the pool.
        self.assertEqual(self.sources().idle(self.addresses[0]), 1)

    @inlineCallbacks
    def test_replica_down(self):
        """A replica that refuses connections is failed over from."""
        self.add_chunks([MiB, MiB], on=(1, 2))
        dead = socket.socket()
        dead.bind(("127.0.0.1", 0))
        address = "127.0.0.1:%d" % dead.getsockname()[1]
        dead.close()
        storage = self.make_storage([address] + self.addresses[1:])
        self.serve(storage)
        client = yield self.download(0, len(self.content))
        self.assertTrue(client.body() == self.content, "bytes differ")
        self.assertGreaterEqual(storage.counters["read_failovers"], 1)
        self.assertEqual(storage.counters["reads_failed"], 0)

    def truncating(self, cut, count=1):
        """@return: addresses of C{count} servers that break off GET answers
        after C{cut} bytes (never answer: C{cut} None), serving the chunks of
        the first store."""
        addresses = []
        for _ in range(count):
            factory = Factory.forProtocol(lambda: TruncatingServer(self.stores[0], cut))
            factory.noisy = False
            port = reactor.listenTCP(0, factory, interface="127.0.0.1")
            self.addCleanup(port.stopListening)
            addresses.append(f"127.0.0.1:{port.getHost().port}")
        return addresses

    @inlineCallbacks
    def test_replica_dies_mid_body(self):
        """A replica that hangs up after 1.5 MiB of a chunk: the rest comes
        from the next replica, at the byte reached."""
        self.add_chunks([4 * MiB])
        storage = self.make_storage(self.truncating(3 * MiB // 2) + self.addresses[1:])
        self.serve(storage)
        client = yield self.download(100, len(self.content) - 200)
        self.assertTrue(client.body() == self.content[100:-100], "bytes differ")
        self.assertGreaterEqual(storage.counters["read_failovers"], 1)
        self.assertEqual(storage.counters["reads_failed"], 0)

    @inlineCallbacks
    def test_every_replica_fails(self):
        """When no replica can serve the rest, the response is cut short:
        the client gets a prefix of the right bytes, never wrong ones."""
        self.add_chunks([3 * MiB])
        storage = self.make_storage(self.truncating(MiB // 2, count=3))
        self.serve(storage)
        client = yield self.download(0, len(self.content))
        body = client.body()
        self.assertEqual(client.content_length(), len(self.content))
        self.assertLess(len(body), len(self.content))
        self.assertTrue(body == self.content[:len(body)], "a wrong byte went out")
        yield self.assertFailure(self.resource.reads[0], errors.Unavailable)
        self.assertEqual(storage.counters["reads_failed"], 1)
        self.flushLoggedErrors()

    @inlineCallbacks
    def test_first_chunk_unavailable_before_the_head(self):
        """When no replica can serve the first chunk, the read fails before
        the response's head went out, so the caller can still answer an
        error status (the registry answers 503) instead of a 200 with a
        cut-short body."""
        self.add_chunks([2 * MiB, MiB])
        for store in self.stores:
            store.delete(self.chunks[0].file_id)
        self.serve()
        yield self.assert_refused_before_the_head()

    @inlineCallbacks
    def assert_refused_before_the_head(self):
        """Download the whole file: the read fails before the response's
        head went out, and the client gets no byte."""
        client = yield self.download(0, len(self.content))
        yield self.assertFailure(self.resource.reads[0], errors.Unavailable)
        self.assertFalse(self.resource.requests[0].startedWriting)
        self.assertEqual(bytes(client.data), b"")
        self.flushLoggedErrors()

    def replace_chunk(self, index, stores):
        """Put other bytes of the same length under chunk C{index}'s id in
        C{stores}, as a compromised or confused chunkserver might."""
        chunk = self.chunks[index]
        other = os.urandom(chunk.size)
        for store in stores:
            store.delete(chunk.file_id)
            store.add(chunk.file_id, other)
        return other

    @inlineCallbacks
    def test_replaced_chunk_on_one_replica(self):
        """A replica whose chunk is not the one written (same id, same
        length, other bytes) is passed over: the bytes come from another,
        and none of its own went out; it is recorded bad, for repair."""
        self.add_chunks([2 * MiB, MiB])
        other = self.replace_chunk(0, self.stores[:1])
        self.serve()
        client = yield self.download(0, len(self.content))
        self.assertTrue(client.body() == self.content, "bytes differ")
        self.assertNotIn(other[:4096], client.body())
        yield self.resource.reads[0]
        self.assertEqual(self.storage.counters["bad_replicas"], 1)
        bad = yield self.metadata.list_bad_replicas()
        self.assertEqual([b.file_id for b in bad], [self.chunks[0].file_id])

    @inlineCallbacks
    def test_replaced_chunk_everywhere(self):
        """When every replica holds other bytes under the chunk's id, the
        download fails before its head: never the wrong bytes under the
        blob's digest."""
        self.add_chunks([2 * MiB, MiB])
        self.replace_chunk(0, self.stores)
        self.serve()
        yield self.assert_refused_before_the_head()

    @inlineCallbacks
    def test_stalled_replica_times_out(self):
        """A replica that never answers fails once nothing moved for the
        request timeout; the next one serves the chunk."""
        self.add_chunks([MiB])
        storage = self.make_storage(self.truncating(None) + self.addresses[1:])
        storage.client.request_timeout = 0.3
        self.serve(storage)
        client = yield self.download(0, len(self.content))
        self.assertTrue(client.body() == self.content, "bytes differ")
        self.assertEqual(storage.counters["read_failovers"], 1)

    # --- the client --------------------------------------------------------

    @inlineCallbacks
    def test_slow_client(self):
        """A client that stops reading: the pipe fills, the relay stops
        reading the chunkserver's socket and nothing is held in Python;
        once it reads again the download completes byte for byte."""
        self.add_chunks([6 * MiB] * 4)
        storage = self.make_storage(self.addresses, parallelism=1)
        self.serve(storage)
        self.resource.small_send_buffer = True
        client = RawClient(b"/?offset=0&length=%d" % (len(self.content),), small=True)
        factory = ClientFactory.forProtocol(lambda: client)
        factory.noisy = False
        connected = Deferred()
        client_made = client.connectionMade

        def made():
            client_made()
            client.transport.pauseProducing()
            connected.callback(None)
        client.connectionMade = made
        reactor.connectTCP("127.0.0.1", self.http_port, factory)
        yield connected
        yield self.settle(lambda: self.resource.requests)
        request = self.resource.requests[0]
        relay = request.producer
        self.assertIsInstance(relay, SpliceRelay)
        # Wait until nothing moves any more.
        last = -1
        while relay.sent != last:
            last = relay.sent
            yield deferLater(reactor, 0.2, lambda: None)
        self.assertLess(relay.sent, len(self.content))
        readers = [r for r in reactor.getReaders() if isinstance(r, _SourceSocket)]
        self.assertEqual(readers, [], "the relay still reads a chunkserver")
        self.assertTrue(relay._pipe_full or relay._pipe.held >= relay._pipe.size)
        transport = request.channel.transport
        self.assertEqual(transport._tempDataLen, 0)
        self.assertEqual(len(transport.dataBuffer) - transport.offset, 0)
        self.assertEqual(self.client._pools, {})
        client.transport.resumeProducing()
        yield client.done
        self.assertTrue(client.body() == self.content, "bytes differ")
        yield self.resource.reads[0]

    @inlineCallbacks
    def test_client_gone_mid_body(self):
        """A client that hangs up mid-body: the read fails with
        ConnectionLost, every socket and pipe is closed or pooled (no fd
        leaks), and the chunkservers serve the next download."""
        self.add_chunks([4 * MiB, 4 * MiB, 4 * MiB])
        self.serve()
        sources = self.sources()
        yield deferLater(reactor, 0, lambda: None)  # the reactor runs: its fds are open
        before = open_fds()
        client = yield self.download(0, len(self.content), stop_after=MiB, small=True)
        self.assertLess(len(client.body()), len(self.content))
        yield self.assertFailure(self.resource.reads[0], ConnectionLost)
        yield self.settle(lambda: self.open_server_connections() == sources.idle())
        self.flushLoggedErrors(ConnectionLost)
        self.assertEqual(open_fds(), before + 2 * sources.idle() + 2 * sources.pipes.idle)
        client = yield self.download(0, len(self.content))
        self.assertTrue(client.body() == self.content, "bytes differ")
        yield self.storage.close()  # as the imageserver does when it stops
        yield self.settle(lambda: self.open_server_connections() == 0)
        self.assertEqual(open_fds(), before)

    @inlineCallbacks
    def test_no_fd_leaks(self):
        """After downloads that succeed, fail over and fail, closing the
        pool leaves as many fds open as before."""
        self.add_chunks([2 * MiB, MiB])
        storage = self.make_storage(self.truncating(MiB // 2) + self.addresses[1:2])
        self.serve(storage)
        yield deferLater(reactor, 0, lambda: None)  # the reactor runs: its fds are open
        before = open_fds()
        client = yield self.download(0, len(self.content))
        self.assertTrue(client.body() == self.content, "bytes differ")
        self.stores[1].delete(self.chunks[1].file_id)
        yield self.download(0, len(self.content))
        yield self.assertFailure(self.resource.reads[1], errors.Unavailable)
        storage.splice_sources().close()
        yield self.settle(lambda: self.open_server_connections() == 0)
        self.assertEqual(open_fds(), before)
        self.flushLoggedErrors()

    @inlineCallbacks
    def test_stale_idle_socket_dropped(self):
        """A pooled socket the chunkserver closed while it was idle is
        dropped, not used."""
        self.add_chunks([MiB])
        self.serve()
        yield self.download(0, len(self.content))
        self.assertGreater(self.sources().idle(), 0)
        for factory in self.factories:
            for protocol in factory.protocols:
                protocol.transport.loseConnection()
        yield self.settle(lambda: self.open_server_connections() == 0)
        client = yield self.download(0, len(self.content))
        self.assertTrue(client.body() == self.content, "bytes differ")
        self.assertGreater(self.sources().counters["dropped_idle"], 0)
        self.assertEqual(self.storage.counters["read_failovers"], 0)

    @inlineCallbacks
    def test_read_window(self):
        """
        With a read window, every socket to a chunkserver has that receive
        buffer (Linux doubles what it is given, for its bookkeeping), and
        chunks many times its size still arrive whole; without one, the
        kernel's sizing is left alone.
        """
        window = 16 * 1024
        self.add_chunks([3 * MiB, MiB])
        self.storage = self.make_storage(self.addresses, read_window=window)
        self.serve()
        client = yield self.download(0, len(self.content))
        self.assertTrue(client.body() == self.content, "bytes differ")
        self.assert_spliced()
        sockets = self.pooled_sockets()
        for sock in sockets:
            self.assertIn(sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF), (window, 2 * window))

        self.storage = self.make_storage(self.addresses)
        self.serve()
        yield self.download(0, len(self.content))
        sockets = self.pooled_sockets()
        for sock in sockets:
            self.assertGreater(sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF), 2 * window)

    # --- the choice --------------------------------------------------------

    @inlineCallbacks
    def test_zero_copy_off(self):
        """With zero copy off (C{--zero-copy off}) reads take the copying
        path (and it still works)."""
        self.patch(self.storage, "zero_copy", False)
        self.add_chunks([2 * MiB, 1000])
        self.serve()
        client = yield self.download(0, len(self.content))
        self.assertTrue(client.body() == self.content, "bytes differ")
        self.assertEqual(self.resource.results, [FileReader])
        self.assertEqual(self.storage.counters["reads_copied"], 1)
        self.assertEqual(self.storage.counters["reads_spliced"], 0)

    @inlineCallbacks
    def test_tls_takes_old_path(self):
        """A request over TLS is served by FileReader."""
        from twisted.internet import ssl
        from twisted.internet.endpoints import SSL4ClientEndpoint, SSL4ServerEndpoint
        from twisted.test import __file__ as twisted_test
        self.add_chunks([MiB])
        self.resource = Download(self.storage, self.chunks)
        pem = os.path.join(os.path.dirname(twisted_test), "server.pem")
        with open(pem, "rb") as f:
            cert = ssl.PrivateCertificate.loadPEM(f.read())
        port = yield SSL4ServerEndpoint(reactor, 0, cert.options(), interface="127.0.0.1").listen(
            Site(self.resource))
        self.addCleanup(port.stopListening)
        client = RawClient(b"/?offset=0&length=%d" % (len(self.content),))
        yield SSL4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port,
                                 ssl.CertificateOptions()).connect(
            Factory.forProtocol(lambda: client))
        yield client.done
        self.assertTrue(client.body() == self.content, "bytes differ")
        self.assertEqual(self.resource.results, [FileReader])


class ChoiceTests(SynchronousTestCase):
    """What may be spliced into."""

    def test_not_a_web_request(self):
        self.assertIsNone(splice_transport(object()))
        self.assertIsNone(splice_transport(DummyRequest([b""])))

    def test_ssl_transport(self):
        """A transport providing ISSLTransport never passes can_splice."""
        from twisted.internet import tcp
        transport = tcp.Connection.__new__(tcp.Connection)
        transport.dataBuffer, transport.offset, transport._tempDataLen = b"", 0, 0
        transport.producer, transport.producerPaused, transport.streamingProducer = (
            object(), False, True)
        alsoProvides(transport, ISSLTransport)
        self.assertFalse(can_splice(transport))

    def test_fake_clock_takes_old_path(self):
        """Storage whose clock has no file descriptors (tests' Clock) copies."""
        from speedy.testing import FakeCluster
        cluster = FakeCluster({GROUP: ["a:1", "b:1", "c:1"]})
        self.assertIs(cluster.storage.reader_type(DummyRequest([b""])), FileReader)


class PipeTests(SynchronousTestCase):

    def test_size_and_reuse(self):
        """Pipes are sized up to a MiB, and only empty ones are kept."""
        before = open_fds()
        pool = PipePool()
        pipe = pool.take()
        self.assertGreaterEqual(pipe.size, 64 * 1024)
        self.assertLessEqual(pipe.size, PIPE_SIZE)
        pool.give_back(pipe)
        self.assertIs(pool.take(), pipe)
        pipe.held = 10
        pool.give_back(pipe)
        self.assertEqual(pool.idle, 0)
        self.assertEqual(pipe.r, -1)
        pool.close()
        self.assertEqual(open_fds(), before)

    def test_fallback_size(self):
        """Asking for more than the kernel allows falls back to less."""
        pipe = Pipe(1 << 30)
        self.addCleanup(pipe.close)
        self.assertGreater(pipe.size, 0)
