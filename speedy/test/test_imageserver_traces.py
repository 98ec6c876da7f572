"""
Which trace (C{protocol.md}, I{Traces}) each chunkserver request the
imageserver makes carries: the id of the client's HTTP request it serves
(C{X-Request-Id}), for pushes (monolithic, chunked, the file API, a chunk
retried on another group, chunks cut through, a writer admitted by the
fill gate) and pulls (fetches started as earlier ones arrive, failover to
another replica), whatever context the work is started from: a body's
bytes arrive from the connection, chunks are acknowledged from a
chunkserver's answer, and a fill gate admits a writer from another
writer's call.

The storage path runs on fakes (L{FakeCluster}); the fake chunk client
records the request id current when each request is made, which is what
the real client sends as the trace (L{speedy.test.test_chunk_client}).
The HTTP tests run over a loopback L{StreamingSite}, as the imageserver
serves.
"""

import hashlib

from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, HTTPConnectionPool

from speedy.imageserver.reader import FileReader
from speedy.imageserver.root import ImageServerRoot
from speedy.logs import request_id, run_for
from speedy.registry.api import RegistryAPI
from speedy.testing import DOWN, FakeCluster
from speedy.web.streaming import StreamingSite

G1 = ["10.0.0.1:8001", "10.0.0.2:8001", "10.0.0.3:8001"]
G2 = ["10.0.0.4:8001", "10.0.0.5:8001", "10.0.0.6:8001"]

#: 5 chunks of 1000 bytes and one of 120.
BLOB = bytes(range(256)) * 20


def sha256(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def carried(client, *operations):
    """@return: the traces the fake C{client}'s requests of C{operations}
    carried since the last call, as a sorted list of distinct values (None
    for none); the record is then cleared."""
    traces = {trace for operation, _, _, trace in client.traces if operation in operations}
    client.traces.clear()
    return sorted(traces, key=str)


class HTTPTraceTests(TestCase):
    """An imageserver's file API and registry on loopback, on fakes, each
    chunk sent by the imageserver to every member of its group."""

    replication = "fanout"

    def setUp(self):
        self.cluster = FakeCluster({1: G1, 2: G2}, chunk_size=1000, parallelism=2,
                                   replication=self.replication)
        self.storage = self.cluster.storage
        self.client = self.cluster.client
        registry = RegistryAPI(self.cluster.metadata, self.storage, reactor)
        root = ImageServerRoot(self.storage, self.cluster.metadata, self.cluster.clock,
                               registry)
        site = StreamingSite(root.resource, root.body_sink_for, reactor=reactor)
        port = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(pool.closeCachedConnections)
        self.http = HTTPClient(Agent(reactor, pool=pool))
        self.base = f"http://127.0.0.1:{port.getHost().port}"

    async def call(self, method, path, rid, data=None, headers=None, params=None,
                   expect=None):
        """Make a request with C{X-Request-Id: rid}.
        @return: (response, body)."""
        headers = dict(headers or {}, **{"X-Request-Id": rid})
        response = await self.http.request(method, self.base + path, data=data,
                                           headers=headers, params=params)
        body = await response.content()
        if expect is not None:
            self.assertEqual(response.code, expect, body)
        self.assertEqual(response.headers.getRawHeaders(b"x-request-id"), [rid.encode()])
        return response, body

    async def held_gets(self, *args, **kwargs):
        """Make a request (as L{call}) while the chunkservers' GETs are
        held, letting them go from here (outside any request) until it is
        answered: the fetches after the first then start from the answers
        of those before, as they do when chunkservers answer over the
        network."""
        self.client.hold = {"get"}
        answered = Deferred.fromCoroutine(self.call(*args, **kwargs))
        while not answered.called:
            await deferLater(reactor, 0.001, lambda: None)
            self.client.release()
        self.client.hold = set()
        return await answered

    async def push(self, data, rid, name="r"):
        """A monolithic POST of C{data} as a blob of C{name}."""
        await self.call("POST", f"/v2/{name}/blobs/uploads/", rid, data=data,
                        params={"digest": sha256(data)}, expect=201)

    async def test_monolithic_post(self):
        """Every chunk of a blob pushed in one POST is stored with the
        POST's id, those queued behind the first too."""
        await self.push(BLOB, "mono-post")
        self.assertEqual(carried(self.client, "put"), ["mono-post"])
        self.assertEqual(self.storage.counters["chunks_written"], 6)

    async def test_monolithic_put(self):
        """A session opened by one request and completed by a PUT carrying
        the whole blob: its chunks carry the PUT's id."""
        response, _ = await self.call("POST", "/v2/r/blobs/uploads/", "open", expect=202)
        location = response.headers.getRawHeaders(b"location")[0].decode()
        await self.call("PUT", location, "mono-put", data=BLOB,
                        params={"digest": sha256(BLOB)}, expect=201)
        self.assertEqual(carried(self.client, "put", "delete"), ["mono-put"])

    async def test_chunked_patches_and_final_put(self):
        """Each PATCH's chunks, and the final PUT's, carry that request's
        id."""
        response, _ = await self.call("POST", "/v2/r/blobs/uploads/", "open", expect=202)
        location = response.headers.getRawHeaders(b"location")[0].decode()
        parts = [BLOB[:2500], BLOB[2500:4000], BLOB[4000:]]
        start = 0
        for i, part in enumerate(parts[:2]):
            headers = {"Content-Range": f"{start}-{start + len(part) - 1}",
                       "Content-Type": "application/octet-stream"}
            await self.call("PATCH", location, f"patch-{i}", data=part, headers=headers,
                            expect=202)
            self.assertEqual(carried(self.client, "put", "get", "delete"), [f"patch-{i}"])
            start += len(part)
        await self.call("PUT", location, "last-put", data=parts[2],
                        params={"digest": sha256(BLOB)}, expect=201)
        self.assertEqual(carried(self.client, "put", "get", "delete"), ["last-put"])
        response, body = await self.call("GET", f"/v2/r/blobs/{sha256(BLOB)}", "pull",
                                         expect=200)
        self.assertEqual(body, BLOB)

    async def test_file_api(self):
        """A file's PUT stores its chunks with its id; a GET of it fetches
        every chunk with the GET's id, those fetched as earlier ones
        arrived too."""
        data = BLOB * 2  # 11 chunks
        await self.call("PUT", "/v1/files/a/f", "file-put", data=data, expect=201)
        self.assertEqual(carried(self.client, "put"), ["file-put"])
        _, body = await self.held_gets("GET", "/v1/files/a/f", "file-get", expect=200)
        self.assertEqual(body, data)
        self.assertEqual(carried(self.client, "get"), ["file-get"])

    async def test_retried_on_another_group(self):
        """A chunk a member of its group failed is tried again elsewhere,
        and the copies of the failed try deleted, all with the push's id."""
        self.client.server(G1[1]).mode = DOWN
        await self.push(BLOB, "retried")
        self.assertGreater(self.storage.counters["chunk_write_retries"], 0)
        self.assertEqual(carried(self.client, "put", "delete"), ["retried"])

    async def test_cut_through_retried(self):
        """Chunks sent on as they arrive (the body's length is known), and
        one of them stored whole on another group after a member failed,
        carry the push's id."""
        self.storage.cut_through = 4
        self.client.server(G1[1]).mode = DOWN
        await self.push(BLOB, "cut")
        self.assertGreater(self.storage.counters["chunks_cut_through"], 0)
        self.assertGreater(self.storage.counters["chunk_write_retries"], 0)
        self.assertEqual(carried(self.client, "put", "delete"), ["cut"])

    async def test_blob_get_failover(self):
        """A blob pulled while replicas are down is fetched from the others,
        each try with the pull's id."""
        await self.push(BLOB, "push")
        carried(self.client)
        for address in (G1[0], G1[1], G2[0], G2[1]):
            self.client.server(address).mode = DOWN
        _, body = await self.held_gets("GET", f"/v2/r/blobs/{sha256(BLOB)}", "pull",
                                       expect=200)
        self.assertEqual(body, BLOB)
        self.assertGreater(self.storage.counters["read_failovers"], 0)
        self.assertEqual(carried(self.client, "get"), ["pull"])


class ChainHTTPTraceTests(HTTPTraceTests):
    """The same, each chunk sent along a chain of its group's members."""

    replication = "chain"


class WriterTraceTests(SynchronousTestCase):
    """
    L{ReplicatedWriter} stores every chunk under the request id current
    when it was made, whatever context its calls come from.
    """

    def setUp(self):
        self.cluster = FakeCluster({1: G1, 2: G2}, chunk_size=8, parallelism=2)
        self.storage = self.cluster.storage
        self.client = self.cluster.client

    def test_chunks_started_by_acknowledgements(self):
        """Chunks queued behind others start as those are acknowledged, from
        the chunkserver's answer (here: the test, outside any request)."""
        self.client.hold = {"put"}
        writer = run_for("push-1", self.storage.writer)
        run_for("push-1", writer.write, b"x" * 40)
        finished = run_for("push-1", writer.finish)
        while self.client.held:
            self.client.release()
        self.assertEqual(len(self.successResultOf(finished)), 5)
        self.assertEqual(carried(self.client, "put"), ["push-1"])

    def test_admitted_in_another_writers_context(self):
        """A writer waiting for the fill gate is admitted by another one
        giving its pass back, in that one's request: its chunks still carry
        its own id, and those of a writer made for no request carry none."""
        cluster = FakeCluster({1: G1}, chunk_size=8, fill_slots=1)
        client = cluster.client
        first = run_for("first", cluster.storage.writer)
        waiting = run_for("waiting", cluster.storage.writer)
        untraced = run_for(None, cluster.storage.writer)
        self.successResultOf(run_for("first", first.write, b"a" * 4))
        wrote = run_for("waiting", waiting.write, b"b" * 8)
        wrote_untraced = untraced.write(b"c" * 8)
        self.assertNoResult(wrote)
        run_for("first", first.finish)  # gives the pass back: "waiting" goes on
        self.successResultOf(wrote)
        self.successResultOf(run_for("waiting", waiting.finish))
        self.successResultOf(wrote_untraced)
        self.successResultOf(untraced.finish())
        by_trace = {}
        for operation, _, file_id, trace in client.traces:
            by_trace.setdefault(trace, set()).add(file_id)
        self.assertEqual(sorted(by_trace, key=str), [None, "first", "waiting"])
        self.assertEqual([len(ids) for ids in by_trace.values()], [1, 1, 1])

    def test_abort_deletes(self):
        """The chunks of an aborted stream are deleted with its id, though
        the abort comes from the connection's loss."""
        writer = run_for("gone", self.storage.writer)
        self.successResultOf(run_for("gone", writer.write, b"x" * 16))
        carried(self.client)
        self.successResultOf(writer.abort())
        self.assertEqual(carried(self.client, "delete"), ["gone"])

    def test_no_request(self):
        """A writer made for no request stores its chunks with no trace,
        whatever request is current where its calls come from."""
        writer = self.storage.writer()
        self.assertIsNone(request_id.get())
        run_for("other", writer.write, b"x" * 24)
        self.successResultOf(run_for("other", writer.finish))
        self.assertEqual(carried(self.client, "put"), [None])


class ReaderTraceTests(SynchronousTestCase):
    """L{FileReader} fetches every chunk under the request id current when
    it was made."""

    def test_fetches_started_by_arrivals(self):
        """Fetches after the first start as earlier chunks arrive (from the
        chunkserver's answer: here the test, outside any request), and
        carry the id of the request the reader was made for."""
        cluster = FakeCluster({1: G1, 2: G2}, chunk_size=8, parallelism=2)
        writer = cluster.storage.writer()
        self.successResultOf(writer.write(b"y" * 48))
        chunks = self.successResultOf(writer.finish())
        cluster.client.traces.clear()
        cluster.client.hold = {"get"}
        consumer = StringTransport()
        reader = run_for("pull-1", FileReader, cluster.storage.replicas, chunks, 0, 48,
                         consumer, read_ahead=1)
        done = run_for("pull-1", reader.start)
        while cluster.client.held:
            cluster.client.release()
        self.successResultOf(done)
        self.assertEqual(consumer.value(), b"y" * 48)
        self.assertEqual(carried(cluster.client, "get"), ["pull-1"])
