"""
Tests for the imageserver's REST APIs (L{speedy.imageserver.fileapi},
L{speedy.imageserver.chunkapi}, L{speedy.imageserver.root}) over a real
loopback L{StreamingSite}, with the storage path on fakes.
"""

import hashlib
import json

import google_crc32c
from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.defer import Deferred, fail
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.internet.task import deferLater
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, HTTPConnectionPool, ResponseFailed
from twisted.web.resource import Resource

from speedy import errors
from speedy.imageserver.clusterview import ClusterView
from speedy.imageserver.fileapi import byte_range
from speedy.imageserver.root import ImageServerRoot
from speedy.logs import request_id
from speedy.test.util import watch_intents
from speedy.testing import DOWN, FakeCluster
from speedy.web.streaming import StreamingSite

G1 = ["10.0.0.1:8001", "10.0.0.2:8001", "10.0.0.3:8001"]
G2 = ["10.0.0.4:8001", "10.0.0.5:8001", "10.0.0.6:8001"]


class ByteRangeTests(SynchronousTestCase):
    def test_ranges(self):
        self.assertIsNone(byte_range(None, 10))
        self.assertEqual(byte_range(b"bytes=2-5", 10), (2, 4))
        self.assertEqual(byte_range(b"bytes=2-", 10), (2, 8))
        self.assertEqual(byte_range(b"bytes=-3", 10), (7, 3))
        self.assertEqual(byte_range(b"bytes=-30", 10), (0, 10))
        self.assertEqual(byte_range(b"bytes=8-100", 10), (8, 2))
        self.assertIsNone(byte_range(b"bytes=1-2,4-5", 10))
        self.assertIsNone(byte_range(b"lines=1-2", 10))
        for bad in (b"bytes=10-", b"bytes=5-2", b"bytes=-0"):
            with self.assertRaises(errors.RangeNotSatisfiable):
                byte_range(bad, 10)


class APITests(TestCase):
    def setUp(self):
        self.cluster = FakeCluster({1: G1, 2: G2}, chunk_size=1000, parallelism=2)
        self.root = ImageServerRoot(self.cluster.storage, self.cluster.metadata,
                                    self.cluster.clock)
        site = StreamingSite(self.root.resource, self.root.body_sink_for, reactor=reactor)
        self.port = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(pool.closeCachedConnections)
        self.http = HTTPClient(Agent(reactor, pool=pool))
        self.base = f"http://127.0.0.1:{self.port.getHost().port}"

    async def call(self, method, path, data=None, headers=None):
        response = await self.http.request(method, self.base + path, data=data,
                                           headers=headers)
        return response, await response.content()

    async def put(self, path, data, headers=None):
        return await self.call("PUT", "/v1/files/" + path, data, headers)

    def error_code(self, body):
        return json.loads(body)["error"]["code"]

    async def test_put_get_roundtrip(self):
        """A file of several chunks comes back byte-exact, with its length
        and sha256."""
        data = bytes(range(256)) * 17  # 4352 bytes: 5 chunks
        response, body = await self.put("a/b/c.bin", data)
        self.assertEqual(response.code, 201, body)
        answer = json.loads(body)
        self.assertEqual(answer, {"path": "a/b/c.bin", "size": len(data),
                                  "sha256": hashlib.sha256(data).hexdigest(), "chunks": 5})
        response, body = await self.call("GET", "/v1/files/a/b/c.bin")
        self.assertEqual((response.code, body), (200, data))
        self.assertEqual(response.headers.getRawHeaders(b"x-content-sha256"),
                         [hashlib.sha256(data).hexdigest().encode()])
        response, body = await self.call("HEAD", "/v1/files/a/b/c.bin")
        self.assertEqual(response.code, 200)
        self.assertEqual(response.headers.getRawHeaders(b"content-length"), [b"4352"])

    async def test_put_cut_through(self):
        """A PUT with a Content-Length has its chunks sent on to the
        replicas as they arrive, and stores them whole."""
        self.cluster.storage.cut_through = 4
        data = bytes(range(256)) * 10  # 3 chunks
        response, body = await self.put("cut", data)
        self.assertEqual(response.code, 201, body)
        self.assertEqual(self.cluster.storage.counters["chunks_cut_through"], 3)
        response, body = await self.call("GET", "/v1/files/cut")
        self.assertEqual(body, data)

    async def test_ranges(self):
        data = bytes(range(256)) * 10
        await self.put("r", data)
        response, body = await self.call("GET", "/v1/files/r", headers={"range": "bytes=990-2010"})
        self.assertEqual((response.code, body), (206, data[990:2011]))
        self.assertEqual(response.headers.getRawHeaders(b"content-range"),
                         [b"bytes 990-2010/2560"])
        response, body = await self.call("GET", "/v1/files/r", headers={"range": "bytes=5000-"})
        self.assertEqual(response.code, 416)
        self.assertEqual(response.headers.getRawHeaders(b"content-range"), [b"bytes */2560"])

    async def test_replace_and_delete_record_garbage(self):
        await self.put("f", b"old" * 500)
        first = self.cluster.metadata._files["f"].chunks
        await self.put("f", b"new")
        response, body = await self.call("GET", "/v1/files/f")
        self.assertEqual(body, b"new")
        response, _ = await self.call("DELETE", "/v1/files/f")
        self.assertEqual(response.code, 204)
        response, body = await self.call("GET", "/v1/files/f")
        self.assertEqual((response.code, self.error_code(body)), (404, "FILE_NOT_FOUND"))
        response, body = await self.call("DELETE", "/v1/files/f")
        self.assertEqual(response.code, 404)
        garbage = {g.chunk for g in
                   self.successResultOf(self.cluster.metadata.list_garbage())}
        self.assertTrue(set(first) < garbage)
        self.assertEqual(len(garbage), len(first) + 1)

    async def test_listing(self):
        for name in ("d/a", "d/b", "d/sub/c", "e/x"):
            await self.put(name, b"x")
        response, body = await self.call("GET", "/v1/files/d/?list")
        self.assertEqual(json.loads(body), {"paths": ["d/a", "d/b", "d/sub/c"], "next": None})
        response, body = await self.call("GET", "/v1/files/d/?list&limit=2")
        self.assertEqual(json.loads(body), {"paths": ["d/a", "d/b"], "next": "d/b"})
        response, body = await self.call("GET", "/v1/files/d/?list&limit=2&after=d/b")
        self.assertEqual(json.loads(body)["paths"], ["d/sub/c"])
        response, body = await self.call("GET", "/v1/files/d/?list&limit=zero")
        self.assertEqual(response.code, 400)

    async def test_bad_input_is_4xx(self):
        """Bad paths, a wrong sha256 and unknown files are 4xx with JSON
        errors; a wrong-digest upload leaves no chunk behind."""
        for path in ("a//b", "a/../b", "%ff", "x/", "x" * 1025):
            response, body = await self.put(path, b"data")
            self.assertEqual(response.code, 400, (path, body))
            self.assertEqual(self.error_code(body), "BAD_REQUEST")
        self.assertEqual(self.cluster.storage.counters["chunks_written"], 0)
        response, body = await self.put("h", b"data", headers={"x-content-sha256": "00" * 32})
        self.assertEqual(response.code, 400)
        for server in self.cluster.client.servers.values():
            self.assertEqual(server.chunks, {})
        self.assertEqual(self.cluster.metadata._files, {})
        response, body = await self.call("GET", "/v1/files/nothing")
        self.assertEqual(response.code, 404)

    async def test_no_writable_group_is_503(self):
        self.cluster.view.current = ClusterView(7, {})
        response, body = await self.put("n", b"x" * 5000)
        self.assertEqual((response.code, self.error_code(body)), (503, "NO_WRITABLE_GROUP"))
        self.assertEqual(self.cluster.metadata._files, {})

    async def test_failed_write_leaves_nothing(self):
        """
        When every group fails a chunk, the PUT answers 503, the chunks
        already stored are deleted, and no file is recorded.
        """
        self.cluster.client.server(G1[0]).mode = DOWN
        self.cluster.client.server(G2[0]).mode = DOWN
        response, body = await self.put("x", b"y" * 5000)
        self.assertEqual(response.code, 503)
        self.assertEqual(self.cluster.metadata._files, {})
        for server in self.cluster.client.servers.values():
            self.assertEqual(server.chunks, {})

    async def test_metadata_down_is_503(self):
        self.cluster.metadata.put_file = lambda record, adopted=(): fail(
            errors.Unavailable("the database is down"))
        response, body = await self.put("m", b"z" * 1500)
        self.assertEqual(response.code, 503)
        self.assertEqual(self.cluster.storage.counters["chunks_written"], 2)
        for server in self.cluster.client.servers.values():
            self.assertEqual(server.chunks, {}, "the uncommitted chunks are deleted")

    def stored_file_ids(self):
        """@return: the file ids of every chunk some fake chunkserver holds."""
        return {file_id for server in self.cluster.client.servers.values()
                for file_id in server.chunks}

    async def test_chunks_recorded_as_intents_first(self):
        """Each chunk of a PUT is recorded as an intent before any of its
        bytes reaches a chunkserver (an imageserver killed mid-body leaves
        them to the collector); the file's row takes them over, and their
        intents go in the transaction that writes it."""
        metadata = self.cluster.metadata
        seen = watch_intents(metadata, self.stored_file_ids)
        response, body = await self.put("i/f", b"i" * 2500)
        self.assertEqual(response.code, 201, body)
        stored = self.successResultOf(metadata.get_file("i/f"))
        self.assertEqual(seen, [(c.file_id, False, "file 'i/f'") for c in stored.chunks])
        self.assertEqual(self.successResultOf(metadata.list_intents()), [])
        self.assertEqual(self.successResultOf(metadata.list_garbage()), [])

    async def test_no_chunk_without_its_intent(self):
        """When an intent cannot be recorded (the database is away), its
        chunk is not sent: the PUT is 503 and no chunkserver holds a byte."""
        self.cluster.metadata.record_intents = lambda chunks, reason: fail(
            errors.Unavailable("metadata database unreachable: gone"))
        response, body = await self.put("n/f", b"n" * 2500)
        self.assertEqual((response.code, self.error_code(body)), (503, "UNAVAILABLE"))
        self.assertIn("metadata database unreachable", json.loads(body)["error"]["message"])
        self.assertEqual(self.stored_file_ids(), set())
        self.assertEqual(self.cluster.metadata._files, {})

    async def test_put_slower_than_its_intents(self):
        """A PUT whose intents expired before its row was written (the
        collector may delete its chunks) stores nothing: 504
        INTENT_EXPIRED, the file it would replace is kept, and its chunks
        are deleted."""
        metadata = self.cluster.metadata
        await self.put("s/f", b"old")
        old = self.successResultOf(metadata.get_file("s/f"))
        put_file = metadata.put_file

        def expired_first(record, adopted=()):
            self.successResultOf(metadata.expire_intents(self.cluster.clock.seconds() + 1))
            return put_file(record, adopted)
        metadata.put_file = expired_first
        response, body = await self.put("s/f", b"s" * 2500)
        self.assertEqual((response.code, self.error_code(body)), (504, "INTENT_EXPIRED"), body)
        self.assertIn("send the bytes again", json.loads(body)["error"]["message"])
        self.assertEqual(self.successResultOf(metadata.get_file("s/f")), old)
        self.assertEqual(self.stored_file_ids(), {c.file_id for c in old.chunks})
        self.assertEqual(len(self.successResultOf(metadata.list_garbage())), 3)

    async def test_truncated_upload(self):
        """A client that sends less than its Content-Length and leaves: no
        file, and the chunks written are deleted."""
        port = self.port.getHost().port
        done = Deferred()

        class Truncating(Protocol):
            def connectionMade(self):
                self.transport.write(b"PUT /v1/files/t HTTP/1.1\r\nHost: x\r\n"
                                     b"Content-Length: 100000\r\n\r\n" + b"q" * 2500)
                self.transport.loseConnection()

            def connectionLost(self, reason):
                done.callback(None)

        reactor.connectTCP("127.0.0.1", port, ClientFactory.forProtocol(Truncating))
        await done
        for _ in range(200):  # the server may see the close a little later
            if self.cluster.storage.counters["chunks_written"] == 2 and not any(
                    s.chunks for s in self.cluster.client.servers.values()):
                break
            await deferLater(reactor, 0.01, lambda: None)
        self.assertEqual(self.cluster.storage.counters["chunks_written"], 2)
        for server in self.cluster.client.servers.values():
            self.assertEqual(server.chunks, {})
        self.assertEqual(self.cluster.metadata._files, {})

    async def test_download_abandoned(self):
        """A client that leaves mid-download cancels the chunk fetches."""
        await self.put("big", b"d" * 5000)
        self.cluster.client.hold = {"get"}
        done = Deferred()

        class Leaving(Protocol):
            def connectionMade(self):
                self.transport.write(b"GET /v1/files/big HTTP/1.1\r\nHost: x\r\n\r\n")

            def connectionLost(self, reason):
                done.callback(None)

        connector = reactor.connectTCP(
            "127.0.0.1", self.port.getHost().port, ClientFactory.forProtocol(Leaving))
        for _ in range(200):
            if self.cluster.client.held:
                break
            await deferLater(reactor, 0.01, lambda: None)
        self.assertEqual(len(self.cluster.client.held), 2, "parallelism=2 fetches in flight")
        connector.disconnect()
        await done
        for _ in range(200):  # the server may see the close a little later
            if not self.cluster.client.held:
                break
            await deferLater(reactor, 0.01, lambda: None)
        self.assertEqual(self.cluster.client.held, [])

    async def test_garbage_body_chunked(self):
        """A malformed chunked body is a 400, not a crash."""
        port = self.port.getHost().port
        received = []
        done = Deferred()

        class Garbage(Protocol):
            def connectionMade(self):
                self.transport.write(b"PUT /v1/files/g HTTP/1.1\r\nHost: x\r\n"
                                     b"Transfer-Encoding: chunked\r\n\r\nzz\r\nnonsense\r\n")

            def dataReceived(self, data):
                received.append(data)

            def connectionLost(self, reason):
                done.callback(None)

        reactor.connectTCP("127.0.0.1", port, ClientFactory.forProtocol(Garbage))
        await done
        self.assertTrue(b"".join(received).startswith(b"HTTP/1.1 400"))
        response, _ = await self.call("GET", "/v1/health")
        self.assertEqual(response.code, 200)

    async def test_chunk_api(self):
        data = b"c" * 700
        response, body = await self.call("POST", "/v1/chunks", data)
        self.assertEqual(response.code, 201, body)
        ref = json.loads(body)
        self.assertEqual((ref["size"], ref["crc32c"]), (700, google_crc32c.value(data)))
        where = f"/v1/chunks/{ref['group_id']}/{ref['file_id']}"
        self.assertEqual(response.headers.getRawHeaders(b"location"), [where.encode()])
        response, body = await self.call("GET", where)
        self.assertEqual((response.code, body), (200, data))
        response, body = await self.call("HEAD", where)
        self.assertEqual(response.headers.getRawHeaders(b"x-chunk-crc32c"),
                         [str(google_crc32c.value(data)).encode()])
        response, _ = await self.call("DELETE", where)
        self.assertEqual(response.code, 204)
        response, body = await self.call("GET", where)
        self.assertEqual(response.code, 404)
        self.assertEqual(self.successResultOf(self.cluster.metadata.list_bad_replicas()), [])

    async def test_chunk_get_of_a_bytearray(self):
        """The real chunk client answers a bytearray: a GET of the chunk
        still answers its bytes (it once crashed after a 200, leaving the
        client waiting for a body)."""
        data = b"k" * 700
        response, body = await self.call("POST", "/v1/chunks", data)
        ref = json.loads(body)
        real_get = self.cluster.client.get
        self.patch(self.cluster.client, "get",
                   lambda *args, **kwargs: real_get(*args, **kwargs).addCallback(bytearray))
        response, body = await self.call("GET", f"/v1/chunks/{ref['group_id']}/{ref['file_id']}")
        self.assertEqual((response.code, body), (200, data))

    async def test_bug_mid_download_closes_the_connection(self):
        """A failure after a download's head went out closes the connection
        (the client sees the body cut short), logged once; the server goes
        on serving."""
        await self.put("f", b"f" * 3000)

        def read(chunks, offset, length, consumer):
            consumer.write(b"f" * 100)
            return fail(ValueError("a bug in the read path"))

        self.patch(self.cluster.storage, "read", read)
        response = await self.http.get(self.base + "/v1/files/f")
        self.assertEqual(response.code, 200)
        with self.assertRaises(ResponseFailed):
            await response.content()
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)
        response, _ = await self.call("GET", "/v1/health")
        self.assertEqual(response.code, 200)

    async def test_chunk_api_bad_input(self):
        response, body = await self.call("POST", "/v1/chunks", b"x" * 1001)
        self.assertEqual((response.code, self.error_code(body)), (413, "TOO_LARGE"))
        response, body = await self.call("POST", "/v1/chunks", b"")
        self.assertEqual(response.code, 400)
        for path in ("/v1/chunks/1", "/v1/chunks/a/b", "/v1/chunks/1/2/3",
                     f"/v1/chunks/1/{2**64 + 5}", f"/v1/chunks/1/{2**63}", "/v1/chunks/0/5",
                     "/v1/chunks/1/" + "9" * 500):
            for method in ("GET", "DELETE", "HEAD"):
                response, body = await self.call(method, path)
                self.assertEqual(response.code, 400, (method, path))
        response, body = await self.call("GET", "/v1/chunks/99/1")
        self.assertEqual(response.code, 503)

    async def test_json_404_and_405(self):
        """Unknown paths and methods get JSON errors, not HTML pages."""
        for method, path, status, code in [
                ("GET", "/nothing", 404, "NOT_FOUND"), ("GET", "/v1/nothing/x", 404, "NOT_FOUND"),
                ("POST", "/v1/files/a", 405, "METHOD_NOT_ALLOWED"),
                ("PUT", "/v1/chunks/1/2", 405, "METHOD_NOT_ALLOWED"),
                ("DELETE", "/v1/health", 405, "METHOD_NOT_ALLOWED")]:
            response, body = await self.call(method, path, b"")
            self.assertEqual((response.code, self.error_code(body)), (status, code), path)
        response, body = await self.call("HEAD", "/v1/health")
        self.assertEqual(response.code, 200)

    async def test_health(self):
        response, body = await self.call("GET", "/v1/health")
        self.assertEqual(json.loads(body), {"ok": True, "writable_groups": 2, "view_version": 1})
        self.cluster.view.current = None
        response, body = await self.call("GET", "/v1/health")
        self.assertEqual(response.code, 503)
        self.assertFalse(json.loads(body)["ok"])


class RegistryMountTests(SynchronousTestCase):
    """The registry is mounted at /v2 and gets the bodies of /v2 requests."""

    def test_dispatch(self):
        class Registry:
            resource = Resource()
            sink = object()
            chosen_for = None

            def body_sink_for(self, request):
                self.chosen_for = request_id.get()
                return self.sink

        class Request:
            def __init__(self, method, path, rid=None):
                self.method, self.path = method, path
                self.headers = {b"x-request-id": rid}

            def getHeader(self, name):
                return self.headers.get(name)

            def setHeader(self, name, value):
                self.headers[name.lower()] = value

        cluster = FakeCluster({1: G1})
        registry = Registry()
        root = ImageServerRoot(cluster.storage, cluster.metadata, cluster.clock, registry)
        self.assertIs(root.resource.children[b"v2"], registry.resource)
        patch = Request(b"PATCH", b"/v2/a/blobs/uploads/x", b"patch-1")
        self.assertIs(root.body_sink_for(patch), registry.sink)
        # chosen under the request's id, which the answer will carry
        self.assertEqual(registry.chosen_for, "patch-1")
        self.assertEqual(patch.headers[b"x-request-id"], b"patch-1")
        self.assertIsNone(request_id.get())
        self.assertIsNot(root.body_sink_for(Request(b"PUT", b"/v1/files/a")), None)
        self.assertIsNot(root.body_sink_for(Request(b"POST", b"/v1/chunks")), None)
        self.assertIsNone(root.body_sink_for(Request(b"POST", b"/v2x")))
        self.assertIsNone(root.body_sink_for(Request(b"GET", b"/v1/files/a")))
        unmounted = ImageServerRoot(cluster.storage, cluster.metadata, cluster.clock)
        self.assertNotIn(b"v2", unmounted.resource.children)
        self.assertIsNone(unmounted.body_sink_for(Request(b"PATCH", b"/v2/a/blobs/uploads/x")))
