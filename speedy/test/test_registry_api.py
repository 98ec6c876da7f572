"""
The registry API over HTTP: a L{RegistryAPI} behind a real loopback
L{StreamingSite}, on L{MemoryMetadataStore} and L{MemoryChunkedStorage},
driven by treq and, where the bytes on the wire matter (chunked encoding,
garbage, truncated bodies), by a raw socket.
"""

import hashlib
import json

import attrs
import treq.client
from treq.testing import StubTreq
from twisted.internet import reactor
from twisted.internet.defer import Deferred, fail
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.internet.task import Clock, deferLater
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.resource import Resource

from speedy.errors import NoWritableGroup, Unavailable
from speedy.metadata.memory import MemoryMetadataStore
from speedy.registry.api import RegistryAPI
from speedy.registry.digests import OneShotHash, ResumableHash
from speedy.registry.manifests import (
    DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, MAX_TAG_PARAMS, OCI_INDEX, OCI_MANIFEST)
from speedy.testing import MemoryChunkedStorage
from speedy.web.streaming import StreamingSite


def sha256(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def sha512(data):
    return "sha512:" + hashlib.sha512(data).hexdigest()


def descriptor(data, media_type="application/vnd.oci.image.layer.v1.tar+gzip", digest=sha256, **more):
    return dict({"mediaType": media_type, "digest": digest(data), "size": len(data)}, **more)


def image_manifest(config, layers, media_type=OCI_MANIFEST, **more):
    """@return: the bytes of an image manifest of C{config} and C{layers} (bytes)."""
    config_type = ("application/vnd.docker.container.image.v1+json" if media_type == DOCKER_MANIFEST
                   else "application/vnd.oci.image.config.v1+json")
    document = dict({
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": descriptor(config, config_type),
        "layers": [descriptor(layer) for layer in layers],
    }, **more)
    return json.dumps(document, indent=3).encode("utf-8")


class RawResponse:
    """What a raw socket received: the status and the rest."""

    def __init__(self, data):
        self.data = data
        head, _, self.body = data.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        self.status = int(lines[0].split()[1]) if lines and lines[0] else None
        self.headers = {}
        for line in lines[1:]:
            key, _, value = line.partition(b":")
            self.headers[key.strip().lower().decode()] = value.strip().decode()


class _RawClient(Protocol):
    def __init__(self, data, close_after_send):
        self._data = data
        self._close = close_after_send
        self.received = []
        self.done = Deferred()

    def connectionMade(self):
        self.transport.write(self._data)
        if self._close:
            self.transport.loseConnection()

    def dataReceived(self, data):
        self.received.append(data)

    def connectionLost(self, reason):
        self.done.callback(b"".join(self.received))


async def raw_exchange(port, data, close_after_send=False):
    """Send C{data} over a new connection; @return: every byte the server
    sent back until it closed the connection."""
    client = _RawClient(data, close_after_send)
    factory = ClientFactory.forProtocol(lambda: client)
    reactor.connectTCP("127.0.0.1", port, factory)
    return await client.done


class HeldCall:
    """
    The next call of one method of an object, held until the test lets it
    go on: how a test puts another request in the middle of this one.

    @ivar reached: a Deferred that fires when the call is made.
    """

    def __init__(self, test, target, name):
        self.reached = Deferred()
        self._released = Deferred()
        original = getattr(target, name)

        async def held(*args, **kwargs):
            if not self.reached.called:
                self.reached.callback(None)
                await self._released
            return await original(*args, **kwargs)

        test.patch(target, name, lambda *args, **kwargs: Deferred.fromCoroutine(held(*args, **kwargs)))

    def release(self):
        """Let the held call go on."""
        self._released.callback(None)


class _NoTLS(ProtocolWrapper):
    """Closes a connection that opens with a TLS handshake at once, as Go
    servers do: clients such as skopeo try HTTPS first and would otherwise
    wait 10 s for a handshake a plain HTTP server never answers."""

    _first = True

    def dataReceived(self, data):
        if self._first and data[:1] == b"\x16":
            self.transport.abortConnection()
            return
        self._first = False
        super().dataReceived(data)


class PlainHTTPFactory(WrappingFactory):
    protocol = _NoTLS


class RegistryTestCase(TestCase):
    """A registry on loopback, and helpers to talk to it."""

    chunk_size = 1000
    api_options = {}

    def setUp(self):
        self.metadata = MemoryMetadataStore(reactor)
        self.storage = MemoryChunkedStorage(chunk_size=self.chunk_size)
        self.api, self.port = self.serve()
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.http = treq.client.HTTPClient(Agent(reactor, pool=pool))
        self.addCleanup(pool.closeCachedConnections)

    def serve(self):
        """Start one more imageserver over the same metadata and storage.
        @return: its L{RegistryAPI} and port number."""
        api = RegistryAPI(self.metadata, self.storage, reactor, **self.api_options)
        root = Resource()
        root.putChild(b"v2", api.resource)
        factory = PlainHTTPFactory(StreamingSite(root, api.body_sink_for, reactor))
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(self._closed, factory)
        self.addCleanup(port.stopListening)
        return api, port.getHost().port

    async def _closed(self, factory):
        """Wait until the server side of every connection is closed."""
        while factory.protocols:
            await deferLater(reactor, 0.001, lambda: None)

    def url(self, path, port=None):
        return f"http://127.0.0.1:{port or self.port}{path}"

    async def request(self, method, path, data=None, headers=None, port=None, params=None):
        """@return: C{(response, body bytes)}."""
        response = await self.http.request(
            method, self.url(path, port), data=data, headers=headers, params=params)
        return response, await response.content()

    def header(self, response, name):
        values = response.headers.getRawHeaders(name)
        return values[0] if values else None

    def assertError(self, response, body, status, code):
        """The answer is C{status} with the spec's error body naming C{code}."""
        self.assertEqual(response.code, status, body)
        document = json.loads(body)
        self.assertIn(code, [e["code"] for e in document["errors"]])
        for error in document["errors"]:
            self.assertEqual(set(error), {"code", "message", "detail"})
        self.assertEqual(self.header(response, "Docker-Distribution-API-Version"), "registry/2.0")
        return document["errors"]

    async def push_blob(self, name, data, digest=sha256):
        """Monolithic POST; @return: the digest."""
        d = digest(data)
        response, body = await self.request(
            "POST", f"/v2/{name}/blobs/uploads/", data=data, params={"digest": d})
        self.assertEqual(response.code, 201, body)
        return d

    async def start_upload(self, name, port=None):
        """@return: the upload's location."""
        response, body = await self.request("POST", f"/v2/{name}/blobs/uploads/", port=port)
        self.assertEqual(response.code, 202, body)
        return self.header(response, "Location")

    async def put_manifest(self, name, reference, content, media_type=OCI_MANIFEST, params=None):
        return await self.request(
            "PUT", f"/v2/{name}/manifests/{reference}", data=content,
            headers={"Content-Type": media_type}, params=params)

    def live_chunks(self):
        """@return: the file ids of every chunk in storage and not handed
        to the chunk collector (recorded as garbage)."""
        garbage = self.successResultOf(self.metadata.list_garbage(limit=None))
        return set(self.storage.chunks) - {g.chunk.file_id for g in garbage}


class BaseTests(RegistryTestCase):

    async def test_version_check(self):
        """GET /v2/ answers 200 {} with the API version header."""
        response, body = await self.request("GET", "/v2/")
        self.assertEqual((response.code, json.loads(body)), (200, {}))
        self.assertEqual(self.header(response, "Docker-Distribution-API-Version"), "registry/2.0")

    async def test_unknown_endpoint(self):
        """A path that is no endpoint is a 404 with the error body."""
        response, body = await self.request("GET", "/v2/library/ubuntu/nothing/here")
        self.assertError(response, body, 404, "UNSUPPORTED")

    async def test_wrong_method(self):
        """A method an endpoint does not take is a 405 naming those it does."""
        response, body = await self.request("POST", "/v2/repo/tags/list")
        self.assertError(response, body, 405, "UNSUPPORTED")
        self.assertEqual(self.header(response, "Allow"), "GET, HEAD")

    async def test_invalid_names(self):
        """Names outside the spec's grammar or over 255 characters are 400 NAME_INVALID."""
        for name in ["UPPER/case", "a//b", "-dash", "a" * 256, "a/" * 127 + "bb"]:
            response, body = await self.request("GET", f"/v2/{name}/tags/list")
            self.assertError(response, body, 400, "NAME_INVALID")
        response, body = await self.request("GET", "/v2/" + "/".join(["a"] * 128) + "/tags/list")
        self.assertError(response, body, 404, "NAME_UNKNOWN")

    async def test_body_of_a_refused_request(self):
        """A body sent to a path that is refused, or to an endpoint that
        takes none, is dropped and the answer is the usual one."""
        response, body = await self.request("PATCH", "/v2/Bad/blobs/uploads/x", data=b"x" * 200_000)
        self.assertError(response, body, 400, "NAME_INVALID")
        response, body = await self.request("POST", "/v2/repo/blobs/uploads/", data=b"x" * 200_000)
        self.assertEqual(response.code, 202, body)
        self.assertEqual(self.live_chunks(), set())

    async def test_garbage_request(self):
        """Bytes that are not HTTP get a clean 400; the server keeps serving."""
        answer = RawResponse(await raw_exchange(self.port, b"\x00\xffGARBAGE\r\n\r\n"))
        self.assertEqual(answer.status, 400)
        response, _ = await self.request("GET", "/v2/")
        self.assertEqual(response.code, 200)

    async def test_metadata_down(self):
        """When the metadata store cannot be reached the answer is 503 with an error body."""
        self.patch(self.metadata, "blob_linked", lambda *a: fail(Unavailable("database down")))
        self.patch(self.metadata, "create_upload", lambda *a: fail(Unavailable("database down")))
        response, body = await self.request("HEAD", f"/v2/repo/blobs/{sha256(b'x')}")
        self.assertEqual(response.code, 503)
        response, body = await self.request("POST", "/v2/repo/blobs/uploads/")
        self.assertError(response, body, 503, "UNAVAILABLE")


class BlobPushTests(RegistryTestCase):

    async def test_monolithic_post(self):
        """A POST with ?digest= and the body stores the blob: 201 with its
        Location and digest; HEAD answers from metadata; GET gives it back."""
        data = bytes(range(256)) * 20
        d = sha256(data)
        response, body = await self.request(
            "POST", "/v2/library/ubuntu/blobs/uploads/", data=data, params={"digest": d})
        self.assertEqual(response.code, 201, body)
        self.assertEqual(self.header(response, "Location"), f"/v2/library/ubuntu/blobs/{d}")
        self.assertEqual(self.header(response, "Docker-Content-Digest"), d)
        blob = await self.metadata.get_blob(d)
        self.assertEqual([c.size for c in blob.chunks], [1000] * 5 + [120])
        response, body = await self.request("HEAD", f"/v2/library/ubuntu/blobs/{d}")
        self.assertEqual(response.code, 200)
        self.assertEqual(self.header(response, "Content-Length"), str(len(data)))
        self.assertEqual(self.header(response, "Docker-Content-Digest"), d)
        self.assertEqual(self.header(response, "Accept-Ranges"), "bytes")
        self.assertEqual(body, b"")
        response, body = await self.request("GET", f"/v2/library/ubuntu/blobs/{d}")
        self.assertEqual((response.code, body), (200, data))
        # the writer knew the body's length, so it could send chunks on early
        self.assertEqual(self.storage.writer_lengths, [len(data)])

    async def test_monolithic_post_under_intents(self):
        """A monolithic POST's chunks are written under intents, which the
        blob's row takes over: none is left once it is stored."""
        reasons = []
        record_intents = self.metadata.record_intents

        def recording(chunks, reason):
            reasons.extend(reason for _ in chunks)
            return record_intents(chunks, reason)
        self.patch(self.metadata, "record_intents", recording)
        d = await self.push_blob("library/app", b"m" * 2500)
        self.assertEqual(reasons, ["monolithic upload to library/app"] * 3)
        self.assertEqual(await self.metadata.list_intents(), [])
        blob = await self.metadata.get_blob(d)
        self.assertEqual(self.live_chunks(), {c.file_id for c in blob.chunks})

    async def test_monolithic_post_without_intents(self):
        """When the intents cannot be recorded (the database is away), a
        monolithic POST sends no chunk and answers 503 UNAVAILABLE, naming
        the cause."""
        self.patch(self.metadata, "record_intents", lambda chunks, reason: fail(
            Unavailable("metadata database unreachable: gone")))
        response, body = await self.request(
            "POST", "/v2/repo/blobs/uploads/", data=b"u" * 2500,
            params={"digest": sha256(b"u" * 2500)})
        [error] = self.assertError(response, body, 503, "UNAVAILABLE")
        self.assertIn("metadata database unreachable", error["detail"]["reason"])
        self.assertEqual(self.storage.chunks, {})
        self.assertIsNone(await self.metadata.get_blob(sha256(b"u" * 2500)))

    async def test_monolithic_post_slower_than_its_intents(self):
        """A monolithic POST whose intents expired before its commit is 503
        (the client pushes again), stores no blob and leaves no chunk."""
        put_blob = self.metadata.put_blob

        def expired_first(record, adopted=()):
            self.successResultOf(self.metadata.expire_intents(reactor.seconds() + 1))
            return put_blob(record, adopted)
        self.patch(self.metadata, "put_blob", expired_first)
        response, body = await self.request(
            "POST", "/v2/repo/blobs/uploads/", data=b"s" * 2500,
            params={"digest": sha256(b"s" * 2500)})
        [error] = self.assertError(response, body, 503, "UNAVAILABLE")
        self.assertIn("send the bytes again", error["detail"]["reason"])
        self.assertIsNone(await self.metadata.get_blob(sha256(b"s" * 2500)))
        self.assertEqual(self.storage.chunks, {})

    async def test_monolithic_digest_mismatch(self):
        """A body that does not match ?digest= is 400 DIGEST_INVALID and
        leaves nothing behind: no blob, no link, no chunk."""
        response, body = await self.request(
            "POST", "/v2/repo/blobs/uploads/", data=b"x" * 2500, params={"digest": sha256(b"y")})
        self.assertError(response, body, 400, "DIGEST_INVALID")
        self.assertIsNone(await self.metadata.get_blob(sha256(b"y")))
        self.assertIsNone(await self.metadata.get_blob(sha256(b"x" * 2500)))
        self.assertEqual(self.live_chunks(), set())

    async def test_bad_digests(self):
        """Malformed digests and unsupported algorithms are 400 DIGEST_INVALID, never a 500."""
        for bad in ["sha256:abc", "sha256:" + "A" * 64, "md5:" + "0" * 32, "nocolon",
                    "sha512:" + "0" * 64, "sha256:" + "0" * 63 + "g"]:
            response, body = await self.request(
                "POST", "/v2/repo/blobs/uploads/", data=b"data", params={"digest": bad})
            self.assertError(response, body, 400, "DIGEST_INVALID")
            response, body = await self.request("GET", f"/v2/repo/blobs/{bad}")
            self.assertError(response, body, 400, "DIGEST_INVALID")
            if bad != "nocolon":
                response, body = await self.request("GET", f"/v2/repo/manifests/{bad}")
                self.assertError(response, body, 400, "DIGEST_INVALID")
        self.assertEqual(self.live_chunks(), set())

    async def test_sha512_monolithic(self):
        """sha512 digests work like sha256 ones."""
        data = b"sha512 content" * 100
        d = await self.push_blob("repo", data, digest=sha512)
        response, body = await self.request("GET", f"/v2/repo/blobs/{d}")
        self.assertEqual((response.code, body), (200, data))

    async def test_post_then_put_whole_body(self):
        """POST, then one PUT carrying the whole blob (containerd)."""
        data = b"containerd" * 333
        location = await self.start_upload("repo")
        response, body = await self.request("PUT", location, data=data, params={"digest": sha256(data)})
        self.assertEqual(response.code, 201, body)
        self.assertEqual(self.header(response, "Docker-Content-Digest"), sha256(data))
        response, body = await self.request("GET", f"/v2/repo/blobs/{sha256(data)}")
        self.assertEqual(body, data)
        response, body = await self.request("GET", location)
        self.assertError(response, body, 404, "BLOB_UPLOAD_UNKNOWN")

    async def test_only_a_first_body_that_ends_the_session_hashes_one_shot(self):
        """A session's first body, when it is also its last (a PUT), is
        hashed with hashlib (its state is never saved); a PATCH, or a PUT
        after one, with the resumable hash."""
        location = await self.start_upload("repo")
        upload_id = location.rstrip("/").rsplit("/", 1)[1]
        kinds = []
        for final in (True, False):
            body = self.api.uploads.receive_chunk("repo", upload_id, final=final)
            await body._chain
            kinds.append(type(body._hash))
        self.assertEqual(kinds, [OneShotHash, ResumableHash])
        await self.request("PATCH", location, data=b"a" * 10)
        body = self.api.uploads.receive_chunk("repo", upload_id, final=True)
        await body._chain
        self.assertIs(type(body._hash), ResumableHash)

    async def chunked_push(self, name, pieces, digest=sha256, ports=None):
        """POST, one PATCH per piece with Content-Range, an empty PUT.
        @return: the final PUT's response and body."""
        ports = ports or [self.port]
        location = await self.start_upload(name, port=ports[0])
        offset = 0
        for i, piece in enumerate(pieces):
            response, body = await self.request(
                "PATCH", location, data=piece, port=ports[i % len(ports)],
                headers={"Content-Range": f"{offset}-{offset + len(piece) - 1}",
                         "Content-Type": "application/octet-stream"})
            self.assertEqual(response.code, 202, body)
            offset += len(piece)
            self.assertEqual(self.header(response, "Range"), f"0-{offset - 1}")
            self.assertEqual(self.header(response, "Location"), location)
            response, body = await self.request("GET", location, port=ports[-1])
            self.assertEqual(response.code, 204)
            self.assertEqual(self.header(response, "Range"), f"0-{offset - 1}")
            self.assertEqual(self.header(response, "Location"), location)
        return await self.request(
            "PUT", location, params={"digest": digest(b"".join(pieces))}, port=ports[-1])

    async def test_chunked_upload(self):
        """PATCHes with Content-Range then an empty PUT; each PATCH is
        written as its own chunks, the tail of each a short one."""
        pieces = [b"a" * 1500, b"b" * 700, b"c" * 1]
        response, body = await self.chunked_push("repo", pieces)
        self.assertEqual(response.code, 201, body)
        blob = await self.metadata.get_blob(sha256(b"".join(pieces)))
        self.assertEqual([c.size for c in blob.chunks], [1000, 500, 700, 1])
        response, body = await self.request("GET", f"/v2/repo/blobs/{blob.digest}")
        self.assertEqual(body, b"".join(pieces))
        self.assertEqual(self.storage.writer_lengths, [1500, 700, 1])

    async def test_chunked_upload_sha512(self):
        """A chunked upload completed with a sha512 digest."""
        pieces = [b"x" * 1200, b"y" * 10]
        response, body = await self.chunked_push("repo", pieces, digest=sha512)
        self.assertEqual(response.code, 201, body)
        self.assertEqual(self.header(response, "Docker-Content-Digest"), sha512(b"".join(pieces)))

    async def test_upload_continued_by_another_imageserver(self):
        """Any imageserver continues any upload: PATCHes alternate between
        two RegistryAPIs over the same metadata store and storage, and the
        second one completes it."""
        _, other_port = self.serve()
        pieces = [b"1" * 1100, b"2" * 900, b"3" * 1300]
        response, body = await self.chunked_push("repo", pieces, ports=[self.port, other_port])
        self.assertEqual(response.code, 201, body)
        response, body = await self.request(
            "GET", f"/v2/repo/blobs/{sha256(b''.join(pieces))}", port=other_port)
        self.assertEqual(body, b"".join(pieces))

    async def test_rehash_without_saved_state(self):
        """An upload whose hash state is lost (or unreadable) completes
        anyway: the stored chunks are hashed again."""
        location = await self.start_upload("repo")
        upload_id = location.rsplit("/", 1)[1]
        await self.request("PATCH", location, data=b"p" * 2100, headers={"Content-Range": "0-2099"})
        for state in [None, b"not a hash state"]:
            record = await self.metadata.get_upload(upload_id)
            await self.metadata.update_upload(attrs.evolve(record, hash_state=state), record.offset)
            response, body = await self.request(
                "PATCH", location, data=b"q" * 10,
                headers={"Content-Range": f"{record.offset}-{record.offset + 9}"})
            self.assertEqual(response.code, 202, body)
        data = b"p" * 2100 + b"q" * 20
        response, body = await self.request("PUT", location, params={"digest": sha256(data)})
        self.assertEqual(response.code, 201, body)

    async def test_out_of_order_and_repeated_chunks(self):
        """A PATCH that does not start where the upload stands (a gap, or a
        repeat) is 416 with the current Range; the upload is unchanged and
        goes on from there."""
        location = await self.start_upload("repo")
        response, body = await self.request(
            "PATCH", location, data=b"a" * 100, headers={"Content-Range": "0-99"})
        self.assertEqual(response.code, 202)
        chunks = self.live_chunks()
        for bad in ["0-99", "150-249", "50-149", "nonsense", "100-"]:
            response, body = await self.request(
                "PATCH", location, data=b"b" * 100, headers={"Content-Range": bad})
            self.assertEqual(response.code, 416, bad)
            self.assertEqual(self.header(response, "Range"), "0-99")
            self.assertEqual(self.header(response, "Location"), location)
        self.assertEqual(self.live_chunks(), chunks)
        response, body = await self.request(
            "PATCH", location, data=b"b" * 100, headers={"Content-Range": "100-199"})
        self.assertEqual(response.code, 202, body)
        response, body = await self.request(
            "PUT", location, params={"digest": sha256(b"a" * 100 + b"b" * 100)})
        self.assertEqual(response.code, 201, body)

    async def test_content_range_disagrees_with_length(self):
        """A Content-Range longer than the body sent is refused with 416."""
        location = await self.start_upload("repo")
        response, body = await self.request(
            "PATCH", location, data=b"a" * 10, headers={"Content-Range": "0-19"})
        self.assertEqual(response.code, 416, body)
        self.assertEqual(self.live_chunks(), set())

    async def test_patch_with_chunked_encoding(self):
        """A PATCH without Content-Range and without a length
        (Transfer-Encoding: chunked, as podman sends) streams in."""
        location = await self.start_upload("repo")
        pieces = [b"z" * 1500, b"w" * 600]
        chunked = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"
        answer = RawResponse(await raw_exchange(self.port, (
            f"PATCH {location} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            "Transfer-Encoding: chunked\r\nContent-Type: application/octet-stream\r\n\r\n"
        ).encode() + chunked))
        self.assertEqual(answer.status, 202, answer.data)
        self.assertEqual(answer.headers["range"], "0-2099")
        self.assertEqual(self.storage.writer_lengths, [None])  # no length to cut through with
        response, body = await self.request(
            "PUT", location, params={"digest": sha256(b"".join(pieces))})
        self.assertEqual(response.code, 201, body)

    async def test_whole_body_put_with_wrong_digest(self):
        """POST, then one PUT carrying the whole blob (hashed one-shot)
        under a digest it does not have: 400 DIGEST_INVALID, no blob, and
        none of its chunks left."""
        data = b"containerd" * 333
        location = await self.start_upload("repo")
        response, body = await self.request(
            "PUT", location, data=data, params={"digest": sha256(b"something else")})
        self.assertError(response, body, 400, "DIGEST_INVALID")
        self.assertIsNone(await self.metadata.get_blob(sha256(data)))
        self.assertEqual(self.storage.chunks, {})

    async def test_digest_mismatch_on_put(self):
        """A final PUT whose digest does not match is 400 DIGEST_INVALID:
        no blob is committed, the upload ends and its chunks are deleted."""
        location = await self.start_upload("repo")
        await self.request("PATCH", location, data=b"a" * 1500, headers={"Content-Range": "0-1499"})
        response, body = await self.request(
            "PUT", location, data=b"tail", params={"digest": sha256(b"something else")})
        self.assertError(response, body, 400, "DIGEST_INVALID")
        self.assertIsNone(await self.metadata.get_blob(sha256(b"a" * 1500 + b"tail")))
        self.assertEqual(self.live_chunks(), set())
        response, body = await self.request("GET", location)
        self.assertError(response, body, 404, "BLOB_UPLOAD_UNKNOWN")

    async def test_put_needs_a_valid_digest(self):
        """A final PUT without ?digest= or with a malformed one is 400 and
        the upload can still be completed."""
        location = await self.start_upload("repo")
        response, body = await self.request("PUT", location, data=b"data")
        self.assertError(response, body, 400, "DIGEST_INVALID")
        response, body = await self.request("PUT", location, data=b"data", params={"digest": "sha256:1"})
        self.assertError(response, body, 400, "DIGEST_INVALID")
        self.assertEqual(self.live_chunks(), set())
        response, body = await self.request("PUT", location, data=b"data", params={"digest": sha256(b"data")})
        self.assertEqual(response.code, 201, body)

    async def test_cancel_upload(self):
        """DELETE on the upload ends it (204) and deletes its chunks."""
        location = await self.start_upload("repo")
        await self.request("PATCH", location, data=b"a" * 1500)
        self.assertEqual(len(self.live_chunks()), 2)
        response, body = await self.request("DELETE", location)
        self.assertEqual(response.code, 204)
        self.assertEqual(self.live_chunks(), set())
        response, body = await self.request("DELETE", location)
        self.assertError(response, body, 404, "BLOB_UPLOAD_UNKNOWN")

    async def test_unknown_upload(self):
        """Every upload endpoint answers 404 BLOB_UPLOAD_UNKNOWN for an
        unknown session, or one of another repository; a PATCH body sent
        there is dropped."""
        other = await self.start_upload("other")
        upload_id = other.rsplit("/", 1)[1]
        for path in ["/v2/repo/blobs/uploads/nosuchupload", f"/v2/repo/blobs/uploads/{upload_id}",
                     "/v2/repo/blobs/uploads/bad%20id"]:
            for method, data in [("GET", None), ("PATCH", b"x" * 2000), ("DELETE", None),
                                 ("PUT", b"x")]:
                response, body = await self.request(
                    method, path, data=data, params={"digest": sha256(b"x")})
                self.assertError(response, body, 404, "BLOB_UPLOAD_UNKNOWN")
        self.assertEqual(self.live_chunks(), set())

    async def test_storage_failure(self):
        """A write that no replica group takes is 503 with an error body;
        the upload is unchanged and nothing is left in storage."""
        location = await self.start_upload("repo")
        await self.request("PATCH", location, data=b"a" * 1500)
        chunks = self.live_chunks()
        self.storage.write_failure = NoWritableGroup("no writable group")
        response, body = await self.request("PATCH", location, data=b"b" * 2500)
        self.assertError(response, body, 503, "UNAVAILABLE")
        self.assertEqual(self.live_chunks(), chunks)
        response, _ = await self.request("GET", location)
        self.assertEqual(self.header(response, "Range"), "0-1499")

    async def test_truncated_body(self):
        """A client that goes away mid-PATCH commits nothing: the upload
        stays where it was and the chunks written are deleted."""
        location = await self.start_upload("repo")
        await self.request("PATCH", location, data=b"a" * 1500)
        chunks = self.live_chunks()
        await raw_exchange(self.port, (
            f"PATCH {location} HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n"
        ).encode() + b"b" * 2500, close_after_send=True)
        while self.live_chunks() != chunks:
            await deferLater(reactor, 0.001, lambda: None)
        response, _ = await self.request("GET", location)
        self.assertEqual(self.header(response, "Range"), "0-1499")
        response, body = await self.request(
            "PUT", location, data=b"c", params={"digest": sha256(b"a" * 1500 + b"c")})
        self.assertEqual(response.code, 201, body)

    async def test_duplicate_blob_stored_once(self):
        """A blob pushed twice (in two repositories) is stored once; the
        second copy's chunks are deleted; both repositories link it."""
        data = b"shared" * 500
        await self.push_blob("one", data)
        chunks = self.live_chunks()
        await self.push_blob("two", data)
        self.assertEqual(self.live_chunks(), chunks)
        for name in ["one", "two"]:
            response, body = await self.request("GET", f"/v2/{name}/blobs/{sha256(data)}")
            self.assertEqual(body, data)


class UploadRaceTests(RegistryTestCase):
    """Requests about one upload or blob arriving at two imageservers at once."""

    def setUp(self):
        super().setUp()
        self.other, self.other_port = self.serve()

    async def test_put_while_another_imageserver_appends(self):
        """A PATCH that lands on another imageserver while the final PUT
        is closing the session: the PUT is 416 with the new Range, the
        PATCH's bytes are kept, and the session completes with them."""
        location = await self.start_upload("repo")
        await self.request("PATCH", location, data=b"a" * 1500, headers={"Content-Range": "0-1499"})
        held = HeldCall(self, self.metadata, "delete_upload")
        putting = Deferred.fromCoroutine(
            self.request("PUT", location, params={"digest": sha256(b"a" * 1500)}))
        await held.reached
        response, body = await self.request(
            "PATCH", location, data=b"b" * 700, port=self.other_port,
            headers={"Content-Range": "1500-2199"})
        self.assertEqual(response.code, 202, body)
        held.release()
        response, body = await putting
        self.assertError(response, body, 416, "RANGE_INVALID")
        self.assertEqual(self.header(response, "Range"), "0-2199")
        self.assertIsNone(await self.metadata.get_blob(sha256(b"a" * 1500)))
        response, body = await self.request(
            "PUT", location, params={"digest": sha256(b"a" * 1500 + b"b" * 700)})
        self.assertEqual(response.code, 201, body)
        response, body = await self.request("GET", f"/v2/repo/blobs/{sha256(b'a' * 1500 + b'b' * 700)}")
        self.assertEqual(body, b"a" * 1500 + b"b" * 700)

    async def test_put_while_another_imageserver_cancels(self):
        """A final PUT of a session cancelled meanwhile is 404, and leaves
        no chunk behind."""
        location = await self.start_upload("repo")
        await self.request("PATCH", location, data=b"a" * 1500)
        held = HeldCall(self, self.metadata, "delete_upload")
        putting = Deferred.fromCoroutine(
            self.request("PUT", location, params={"digest": sha256(b"a" * 1500)}))
        await held.reached
        response, body = await self.request("DELETE", location, port=self.other_port)
        self.assertEqual(response.code, 204, body)
        held.release()
        response, body = await putting
        self.assertError(response, body, 404, "BLOB_UPLOAD_UNKNOWN")
        self.assertIsNone(await self.metadata.get_blob(sha256(b"a" * 1500)))
        self.assertEqual(self.live_chunks(), set())

    async def test_commit_while_the_stored_copy_is_deleted(self):
        """An upload completing while the registry's only copy of its blob
        is deleted elsewhere: the commit stores the blob again from its own
        chunks, so the repository gets the blob and no chunk leaks."""
        data = b"shared" * 500
        d = await self.push_blob("one", data)
        held = HeldCall(self, self.metadata, "link_blob")
        pushing = Deferred.fromCoroutine(self.request(
            "POST", "/v2/two/blobs/uploads/", data=data, params={"digest": d}))
        await held.reached
        response, body = await self.request("DELETE", f"/v2/one/blobs/{d}", port=self.other_port)
        self.assertEqual(response.code, 202, body)
        held.release()
        response, body = await pushing
        self.assertEqual(response.code, 201, body)
        response, body = await self.request("GET", f"/v2/two/blobs/{d}")
        self.assertEqual(body, data)
        blob = await self.metadata.get_blob(d)
        self.assertEqual(self.live_chunks(), {c.file_id for c in blob.chunks})
        response, body = await self.request("GET", f"/v2/one/blobs/{d}")
        self.assertError(response, body, 404, "BLOB_UNKNOWN")

    async def test_manifest_put_while_its_blob_is_deleted(self):
        """A layer deleted (through another imageserver) while a manifest
        naming it is being stored: the manifest is refused with
        MANIFEST_BLOB_UNKNOWN naming the layer, and is not stored."""
        config, layer = b"{}", b"layer" * 10
        await self.push_blob("repo", config)
        d = await self.push_blob("repo", layer)
        held = HeldCall(self, self.metadata, "put_manifest")
        putting = Deferred.fromCoroutine(
            self.put_manifest("repo", "v1", image_manifest(config, [layer])))
        await held.reached
        response, body = await self.request("DELETE", f"/v2/repo/blobs/{d}", port=self.other_port)
        self.assertEqual(response.code, 202, body)
        held.release()
        response, body = await putting
        errors = self.assertError(response, body, 400, "MANIFEST_BLOB_UNKNOWN")
        self.assertEqual([e["detail"] for e in errors], [{"digest": d}])
        response, body = await self.request("GET", "/v2/repo/manifests/v1")
        self.assertError(response, body, 404, "MANIFEST_UNKNOWN")

    async def test_mount_while_the_blob_is_deleted(self):
        """A blob deleted (through another imageserver) between a mount's
        lookup and its link: the mount falls back to a plain upload (202),
        and nothing links the deleted blob."""
        d = await self.push_blob("source", b"layer" * 10)
        held = HeldCall(self, self.metadata, "link_blob")
        mounting = Deferred.fromCoroutine(self.request(
            "POST", "/v2/target/blobs/uploads/", params={"mount": d, "from": "source"}))
        await held.reached
        response, body = await self.request("DELETE", f"/v2/source/blobs/{d}", port=self.other_port)
        self.assertEqual(response.code, 202, body)
        held.release()
        response, body = await mounting
        self.assertEqual(response.code, 202, body)
        self.assertTrue(self.header(response, "Location").startswith("/v2/target/blobs/uploads/"))
        response, body = await self.request("HEAD", f"/v2/target/blobs/{d}")
        self.assertEqual(response.code, 404)
        self.assertIsNone(await self.metadata.get_blob(d))
        self.assertEqual(await self.metadata.list_repositories(), [])
        self.assertEqual(self.live_chunks(), set())

    async def test_delete_while_the_blob_is_mounted(self):
        """A mount that links the blob while a DELETE of its last link is
        under way keeps it: the blob and its chunks stay for the new
        repository."""
        data = b"layer" * 10
        d = await self.push_blob("source", data)
        held = HeldCall(self, self.metadata, "delete_blob_if_unlinked")
        deleting = Deferred.fromCoroutine(
            self.request("DELETE", f"/v2/source/blobs/{d}", port=self.other_port))
        await held.reached
        response, body = await self.request("POST", "/v2/target/blobs/uploads/", params={"mount": d})
        self.assertEqual(response.code, 201, body)
        held.release()
        response, body = await deleting
        self.assertEqual(response.code, 202, body)
        response, body = await self.request("GET", f"/v2/target/blobs/{d}")
        self.assertEqual(body, data)
        response, body = await self.request("HEAD", f"/v2/source/blobs/{d}")
        self.assertEqual(response.code, 404)


class BlobMountTests(RegistryTestCase):

    async def test_mount_from(self):
        """POST ?mount=&from= links a blob of another repository: 201."""
        d = await self.push_blob("source", b"layer" * 10)
        response, body = await self.request(
            "POST", "/v2/target/blobs/uploads/", params={"mount": d, "from": "source"})
        self.assertEqual(response.code, 201, body)
        self.assertEqual(self.header(response, "Location"), f"/v2/target/blobs/{d}")
        self.assertEqual(self.header(response, "Docker-Content-Digest"), d)
        response, body = await self.request("GET", f"/v2/target/blobs/{d}")
        self.assertEqual(body, b"layer" * 10)

    async def test_mount_without_from(self):
        """POST ?mount= without from mounts a blob the registry has."""
        d = await self.push_blob("source", b"layer" * 10, digest=sha512)
        response, body = await self.request("POST", "/v2/target/blobs/uploads/", params={"mount": d})
        self.assertEqual(response.code, 201, body)
        response, body = await self.request("HEAD", f"/v2/target/blobs/{d}")
        self.assertEqual(response.code, 200)

    async def test_mount_falls_back_to_upload(self):
        """An unknown blob, a blob not in `from`, or bad arguments give a
        plain upload session (202) instead."""
        d = await self.push_blob("source", b"layer")
        for params in [{"mount": sha256(b"unknown"), "from": "source"},
                       {"mount": d, "from": "elsewhere"},
                       {"mount": d, "from": "Bad Name"},
                       {"mount": "sha256:bad", "from": "source"}]:
            response, body = await self.request("POST", "/v2/target/blobs/uploads/", params=params)
            self.assertEqual(response.code, 202, params)
            self.assertTrue(self.header(response, "Location").startswith("/v2/target/blobs/uploads/"))
        response, body = await self.request("HEAD", f"/v2/target/blobs/{d}")
        self.assertEqual(response.code, 404)


class BlobPullTests(RegistryTestCase):

    async def test_not_linked_here(self):
        """A blob is visible only in repositories that link it."""
        d = await self.push_blob("one", b"private")
        response, body = await self.request("GET", f"/v2/two/blobs/{d}")
        self.assertError(response, body, 404, "BLOB_UNKNOWN")
        response, body = await self.request("HEAD", f"/v2/two/blobs/{d}")
        self.assertEqual((response.code, body), (404, b""))

    async def test_ranges(self):
        """Range requests get 206 with Content-Range; an unsatisfiable one a
        clean 416; several ranges or another unit the whole blob."""
        data = bytes(range(256)) * 10
        d = await self.push_blob("repo", data)
        for value, start, end in [("bytes=0-9", 0, 9), ("bytes=995-1010", 995, 1010),
                                  ("bytes=2500-", 2500, 2559), ("bytes=-5", 2555, 2559),
                                  ("bytes=100-99999", 100, 2559)]:
            response, body = await self.request("GET", f"/v2/repo/blobs/{d}", headers={"Range": value})
            self.assertEqual(response.code, 206, value)
            self.assertEqual(body, data[start:end + 1], value)
            self.assertEqual(self.header(response, "Content-Range"), f"bytes {start}-{end}/2560")
        for value in ["bytes=2560-", "bytes=9999-10000", "bytes=-0"]:
            response, body = await self.request("GET", f"/v2/repo/blobs/{d}", headers={"Range": value})
            self.assertError(response, body, 416, "RANGE_INVALID")
            self.assertEqual(self.header(response, "Content-Range"), "bytes */2560")
        for value in ["bytes=0-1,5-6", "items=0-5", "bytes=5-1"]:
            response, body = await self.request("GET", f"/v2/repo/blobs/{d}", headers={"Range": value})
            self.assertEqual((response.code, body), (200, data), value)

    async def test_empty_blob(self):
        """A zero-byte blob (oras pushes empty configs) can be pushed and pulled."""
        d = await self.push_blob("repo", b"")
        response, body = await self.request("GET", f"/v2/repo/blobs/{d}")
        self.assertEqual((response.code, body), (200, b""))

    async def test_large_blob_streams(self):
        """A blob much larger than the socket buffers streams out whole
        (the storage read honours the request's back-pressure)."""
        self.storage.chunk_size = 1 << 20
        data = hashlib.sha512(b"seed").digest() * (6 << 14)
        d = await self.push_blob("repo", data)
        response, body = await self.request("GET", f"/v2/repo/blobs/{d}")
        self.assertEqual(body, data)
        self.assertEqual(self.storage.reads_in_progress, 0)

    async def test_client_goes_away_mid_download(self):
        """A client that disconnects mid-download cancels the storage read."""
        self.storage.chunk_size = 1 << 20
        data = b"q" * (8 << 20)
        d = await self.push_blob("repo", data)
        client = _RawClient(f"GET /v2/repo/blobs/{d} HTTP/1.1\r\nHost: x\r\n\r\n".encode(), False)
        client.dataReceived = lambda data: client.transport.loseConnection()
        reactor.connectTCP("127.0.0.1", self.port, ClientFactory.forProtocol(lambda: client))
        await client.done
        while self.storage.reads_in_progress:
            await deferLater(reactor, 0.001, lambda: None)

    async def test_storage_fails_before_answer(self):
        """When no replica can serve the first bytes the answer is a 503."""
        d = await self.push_blob("repo", b"data" * 100)
        self.storage.read_failure = Unavailable("no replica")
        response, body = await self.request("GET", f"/v2/repo/blobs/{d}")
        self.assertError(response, body, 503, "UNAVAILABLE")

    async def test_storage_fails_mid_answer(self):
        """When storage fails after the answer began, the connection is
        closed short of Content-Length, so the client sees the failure."""
        data = b"data" * 1000
        d = await self.push_blob("repo", data)
        self.storage.read_failure = Unavailable("no replica")
        self.storage.read_failure_after = 1000
        answer = RawResponse(await raw_exchange(
            self.port, f"GET /v2/repo/blobs/{d} HTTP/1.1\r\nHost: x\r\n\r\n".encode()))
        self.assertEqual(answer.status, 200)
        self.assertEqual(answer.headers["content-length"], str(len(data)))
        self.assertEqual(answer.body, data[:1000])
        self.assertEqual(len(self.flushLoggedErrors(Unavailable)), 1)

    async def test_delete_blob(self):
        """DELETE unlinks a blob from one repository (202); once no
        repository links it, the blob and its chunks are gone."""
        data = b"to delete" * 300
        d = await self.push_blob("one", data)
        await self.push_blob("two", data)
        response, body = await self.request("DELETE", f"/v2/one/blobs/{d}")
        self.assertEqual(response.code, 202, body)
        response, _ = await self.request("HEAD", f"/v2/one/blobs/{d}")
        self.assertEqual(response.code, 404)
        response, body = await self.request("GET", f"/v2/two/blobs/{d}")
        self.assertEqual(body, data)
        response, body = await self.request("DELETE", f"/v2/one/blobs/{d}")
        self.assertError(response, body, 404, "BLOB_UNKNOWN")
        response, body = await self.request("DELETE", f"/v2/two/blobs/{d}")
        self.assertEqual(response.code, 202)
        self.assertIsNone(await self.metadata.get_blob(d))
        self.assertEqual(self.live_chunks(), set())


class ManifestTests(RegistryTestCase):

    async def push_image(self, name, media_type=OCI_MANIFEST, layers=(b"layer one", b"layer two"),
                         config=b'{"architecture":"amd64"}', **more):
        """Push the blobs of an image; @return: its manifest's bytes."""
        for blob in (config,) + tuple(layers):
            await self.push_blob(name, blob)
        return image_manifest(config, layers, media_type=media_type, **more)

    async def test_push_and_pull_by_tag_and_digest(self):
        """A manifest PUT by tag is 201 with its Location and digest, and
        served byte-exact with its media type, by tag and by digest."""
        for media_type in [OCI_MANIFEST, DOCKER_MANIFEST]:
            content = await self.push_image("library/app", media_type=media_type)
            d = sha256(content)
            response, body = await self.put_manifest("library/app", "v1", content, media_type)
            self.assertEqual(response.code, 201, body)
            self.assertEqual(self.header(response, "Location"), f"/v2/library/app/manifests/{d}")
            self.assertEqual(self.header(response, "Docker-Content-Digest"), d)
            for reference in ["v1", d]:
                response, body = await self.request("GET", f"/v2/library/app/manifests/{reference}")
                self.assertEqual((response.code, body), (200, content))
                self.assertEqual(self.header(response, "Content-Type"), media_type)
                self.assertEqual(self.header(response, "Docker-Content-Digest"), d)
                response, body = await self.request("HEAD", f"/v2/library/app/manifests/{reference}")
                self.assertEqual((response.code, body), (200, b""))
                self.assertEqual(self.header(response, "Content-Length"), str(len(content)))
                self.assertEqual(self.header(response, "Docker-Content-Digest"), d)

    async def test_media_type_from_content_type(self):
        """A manifest without mediaType is stored as the request's Content-Type."""
        content = json.loads(await self.push_image("repo"))
        del content["mediaType"]
        content = json.dumps(content).encode()
        response, body = await self.put_manifest("repo", "latest", content, OCI_MANIFEST + "; charset=utf-8")
        self.assertEqual(response.code, 201, body)
        response, body = await self.request("GET", "/v2/repo/manifests/latest")
        self.assertEqual(self.header(response, "Content-Type"), OCI_MANIFEST)

    async def test_missing_blobs(self):
        """Every config or layer missing from the repository is a
        MANIFEST_BLOB_UNKNOWN error naming its digest; nothing is stored.
        Blobs pushed to another repository do not count."""
        config, layer = b"{}", b"layer"
        await self.push_blob("other", config)
        await self.push_blob("other", layer)
        content = image_manifest(config, [layer, b"missing"])
        await self.push_blob("repo", layer)
        response, body = await self.put_manifest("repo", "v1", content)
        errors = self.assertError(response, body, 400, "MANIFEST_BLOB_UNKNOWN")
        self.assertEqual(sorted(e["detail"]["digest"] for e in errors),
                         sorted([sha256(config), sha256(b"missing")]))
        response, body = await self.request("GET", "/v2/repo/manifests/v1")
        self.assertError(response, body, 404, "MANIFEST_UNKNOWN")

    async def test_non_distributable_layer(self):
        """A layer with `urls` need not be in the registry."""
        config = b"{}"
        await self.push_blob("repo", config)
        document = json.loads(image_manifest(config, []))
        document["layers"].append(descriptor(
            b"foreign", "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
            urls=["https://example.com/layer"]))
        response, body = await self.put_manifest("repo", "v1", json.dumps(document).encode())
        self.assertEqual(response.code, 201, body)

    async def test_index_and_manifest_list(self):
        """An index (or Docker manifest list) needs its manifests in the repository."""
        image = await self.push_image("repo")
        for media_type, child_type in [(OCI_INDEX, OCI_MANIFEST),
                                       (DOCKER_MANIFEST_LIST, DOCKER_MANIFEST)]:
            index = json.dumps({"schemaVersion": 2, "mediaType": media_type, "manifests": [
                descriptor(image, child_type, platform={"architecture": "amd64", "os": "linux"})]}).encode()
            response, body = await self.put_manifest("repo", "multi", index, media_type)
            errors = self.assertError(response, body, 400, "MANIFEST_BLOB_UNKNOWN")
            self.assertEqual(errors[0]["detail"], {"digest": sha256(image)})
        await self.put_manifest("repo", sha256(image), image)
        for media_type, child_type in [(OCI_INDEX, OCI_MANIFEST),
                                       (DOCKER_MANIFEST_LIST, DOCKER_MANIFEST)]:
            index = json.dumps({"schemaVersion": 2, "mediaType": media_type, "manifests": [
                descriptor(image, child_type)]}).encode()
            response, body = await self.put_manifest("repo", "multi", index, media_type)
            self.assertEqual(response.code, 201, body)
            response, body = await self.request("GET", "/v2/repo/manifests/multi")
            self.assertEqual(self.header(response, "Content-Type"), media_type)

    async def test_descriptor_sizes(self):
        """A config, layer or child manifest whose descriptor gives another
        size than the stored one is 400 MANIFEST_INVALID naming it, and
        nothing is stored; layers with `urls` and the subject are not
        checked."""
        good = json.loads(await self.push_image("repo"))
        image = json.dumps(good).encode()
        await self.put_manifest("repo", sha256(image), image)
        layer = good["layers"][0]
        index = {"schemaVersion": 2, "mediaType": OCI_INDEX,
                 "manifests": [descriptor(image, OCI_MANIFEST, size=len(image) + 1)]}
        for case, wrong in [
                (dict(good, config=dict(good["config"], size=good["config"]["size"] + 1)),
                 good["config"]),
                (dict(good, layers=[layer, dict(layer, size=0)]), layer),
                (index, index["manifests"][0])]:
            response, body = await self.put_manifest(
                "repo", "bad", json.dumps(case).encode(), case["mediaType"])
            errors = self.assertError(response, body, 400, "MANIFEST_INVALID")
            self.assertEqual(errors[0]["detail"]["digest"], wrong["digest"])
        response, body = await self.request("GET", "/v2/repo/manifests/bad")
        self.assertError(response, body, 404, "MANIFEST_UNKNOWN")
        foreign = descriptor(b"foreign", "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
                             urls=["https://example.com/layer"])
        unchecked = dict(good, layers=good["layers"] + [dict(foreign, size=1)],
                         subject=descriptor(image, OCI_MANIFEST, size=1))
        response, body = await self.put_manifest("repo", "v1", json.dumps(unchecked).encode())
        self.assertEqual(response.code, 201, body)

    async def test_invalid_manifests(self):
        """Bodies that are no valid manifest are 400 MANIFEST_INVALID."""
        good = json.loads(await self.push_image("repo"))
        cases = [
            b"not json", b"[1, 2]", b"\xff\xfe",
            dict(good, schemaVersion=1),
            dict(good, mediaType="application/vnd.docker.distribution.manifest.v1+prettyjws"),
            dict(good, config="nope"),
            dict(good, config=dict(good["config"], digest="sha256:short")),
            dict(good, config=dict(good["config"], size=-1)),
            dict(good, config=dict(good["config"], mediaType="no media type")),
            dict(good, layers=None),
            dict(good, layers=[dict(good["layers"][0], urls="not a list")]),
            dict(good, annotations={"a": 1}),
            dict(good, subject={"digest": "sha256:bad"}),
            dict(good, artifactType="x" * 300 + "/y"),
        ]
        for case in cases:
            content = case if isinstance(case, bytes) else json.dumps(case).encode()
            response, body = await self.put_manifest("repo", "bad", content)
            self.assertError(response, body, 400, "MANIFEST_INVALID")
        response, body = await self.put_manifest(
            "repo", "bad", json.dumps(good).encode(), media_type=OCI_INDEX)
        self.assertError(response, body, 400, "MANIFEST_INVALID")
        response, body = await self.request("GET", "/v2/repo/tags/list")
        self.assertError(response, body, 404, "NAME_UNKNOWN")

    async def test_put_by_digest(self):
        """A PUT by digest must match the body (sha256 or sha512) and may
        carry several ?tag=."""
        content = await self.push_image("repo")
        response, body = await self.put_manifest("repo", sha256(b"other"), content)
        self.assertError(response, body, 400, "DIGEST_INVALID")
        response, body = await self.put_manifest("repo", sha512(content), content)
        self.assertEqual(response.code, 201, body)
        self.assertEqual(self.header(response, "Docker-Content-Digest"), sha512(content))
        response, body = await self.request("GET", f"/v2/repo/manifests/{sha512(content)}")
        self.assertEqual(body, content)
        response, body = await self.request(
            "PUT", f"/v2/repo/manifests/{sha256(content)}?tag=a&tag=b", data=content,
            headers={"Content-Type": OCI_MANIFEST})
        self.assertEqual(response.code, 201, body)
        response, body = await self.request("GET", "/v2/repo/tags/list")
        self.assertEqual(json.loads(body)["tags"], ["a", "b"])
        response, body = await self.request(
            "PUT", f"/v2/repo/manifests/{sha256(content)}?tag=bad:tag", data=content)
        self.assertError(response, body, 400, "TAG_INVALID")

    async def test_tag_params(self):
        """
        A PUT by digest with several ?tag= sets every tag, sha256 or sha512,
        and names each in OCI-Tag; a repeated tag counts once.  Tags the
        suite's dev mode pushes this way are then served by tag with the
        manifest's own (sha512) digest.
        """
        content = await self.push_image("repo")
        for digest in (sha256, sha512):
            tags = [f"{digest.__name__}-{n}" for n in range(12)]
            response, body = await self.put_manifest(
                "repo", digest(content), content, params=[("tag", t) for t in tags + tags[:1]])
            self.assertEqual(response.code, 201, body)
            self.assertEqual(self.header(response, "Docker-Content-Digest"), digest(content))
            accepted = [t.strip() for v in response.headers.getRawHeaders("OCI-Tag")
                        for t in v.split(",")]
            self.assertEqual(accepted, tags)
            for tag in tags:
                response, body = await self.request("GET", f"/v2/repo/manifests/{tag}")
                self.assertEqual((response.code, body), (200, content))
                self.assertEqual(self.header(response, "Docker-Content-Digest"), digest(content))
        response, body = await self.put_manifest("repo", sha256(content), content)
        self.assertEqual(response.code, 201, body)
        self.assertIsNone(self.header(response, "OCI-Tag"))

    async def test_too_many_tag_params(self):
        """
        Up to MAX_TAG_PARAMS tags of the longest kind are taken in one
        request; one more is 414 TAG_INVALID, and one bad tag among good
        ones is 400 TAG_INVALID: in both cases no tag is set.
        """
        content = await self.push_image("repo")
        tags = [f"{n:03d}" + "t" * 125 for n in range(MAX_TAG_PARAMS + 1)]
        for params, status in [(tags, 414), (tags[:3] + ["bad:tag"], 400)]:
            response, body = await self.put_manifest(
                "repo", sha256(content), content, params=[("tag", t) for t in params])
            self.assertError(response, body, status, "TAG_INVALID")
            response, body = await self.request("GET", "/v2/repo/tags/list")
            self.assertError(response, body, 404, "NAME_UNKNOWN")
        response, body = await self.put_manifest(
            "repo", sha256(content), content, params=[("tag", t) for t in tags[:-1]])
        self.assertEqual(response.code, 201, body)
        response, body = await self.request("GET", "/v2/repo/tags/list")
        self.assertEqual(json.loads(body)["tags"], tags[:-1])

    async def test_invalid_tag(self):
        """A tag outside the grammar is refused."""
        content = await self.push_image("repo")
        for tag in ["-leading", "." + "a", "a" * 129]:
            response, body = await self.put_manifest("repo", tag, content)
            self.assertError(response, body, 400, "TAG_INVALID")
        response, body = await self.put_manifest("repo", "_" + "a" * 127, content)
        self.assertEqual(response.code, 201, body)

    async def test_size_limit(self):
        """A manifest over the limit is 413 SIZE_INVALID; one at the limit is taken."""
        content = await self.push_image("repo")
        self.api.manifests.max_size = len(content)
        response, body = await self.put_manifest("repo", "v1", content + b" ")
        self.assertError(response, body, 413, "SIZE_INVALID")
        response, body = await self.put_manifest("repo", "v1", content)
        self.assertEqual(response.code, 201, body)

    async def test_default_limit_takes_4_mb(self):
        """The default limit takes a 4 MB manifest (a big index)."""
        content = await self.push_image("repo", annotations={"pad": "x" * 4_000_000})
        response, body = await self.put_manifest("repo", "big", content)
        self.assertEqual(response.code, 201, body)
        response, body = await self.request("GET", "/v2/repo/manifests/big")
        self.assertEqual(body, content)

    async def test_delete_tag_and_manifest(self):
        """DELETE of a tag removes the tag only; DELETE by digest removes
        the manifest and its tags; both 202, then 404."""
        content = await self.push_image("repo")
        d = sha256(content)
        await self.put_manifest("repo", "v1", content)
        await self.put_manifest("repo", "v2", content)
        response, body = await self.request("DELETE", "/v2/repo/manifests/v1")
        self.assertEqual(response.code, 202, body)
        response, body = await self.request("GET", "/v2/repo/manifests/v1")
        self.assertError(response, body, 404, "MANIFEST_UNKNOWN")
        response, body = await self.request("GET", f"/v2/repo/manifests/{d}")
        self.assertEqual(response.code, 200)
        response, body = await self.request("DELETE", f"/v2/repo/manifests/{d}")
        self.assertEqual(response.code, 202, body)
        for reference in ["v2", d]:
            response, body = await self.request("GET", f"/v2/repo/manifests/{reference}")
            self.assertError(response, body, 404, "MANIFEST_UNKNOWN")
            response, body = await self.request("DELETE", f"/v2/repo/manifests/{reference}")
            self.assertError(response, body, 404, "MANIFEST_UNKNOWN")


class ListingTests(RegistryTestCase):

    async def tag_all(self, name, tags):
        config = b"{}"
        await self.push_blob(name, config)
        content = image_manifest(config, [])
        for tag in tags:
            response, body = await self.put_manifest(name, tag, content)
            self.assertEqual(response.code, 201, body)

    async def test_tag_list_paging(self):
        """Tags come in lexical order, n at a time, `last` excluded, with a
        Link to the next page while there is one."""
        tags = ["b", "a", "C", "a1", "z", "10", "9"]
        await self.tag_all("lib/repo", tags)
        response, body = await self.request("GET", "/v2/lib/repo/tags/list")
        self.assertEqual(json.loads(body), {"name": "lib/repo", "tags": sorted(tags)})
        self.assertIsNone(self.header(response, "Link"))
        pages, path = [], "/v2/lib/repo/tags/list?n=3"
        while path:
            response, body = await self.request("GET", path)
            pages.append(json.loads(body)["tags"])
            link = self.header(response, "Link")
            path = link[1:link.index(">")] if link else None
            if link:
                self.assertTrue(link.endswith('>; rel="next"'), link)
        self.assertEqual(pages, [["10", "9", "C"], ["a", "a1", "b"], ["z"]])
        response, body = await self.request("GET", "/v2/lib/repo/tags/list?n=2&last=a1")
        self.assertEqual(json.loads(body)["tags"], ["b", "z"])
        response, body = await self.request("GET", "/v2/lib/repo/tags/list?n=0")
        self.assertEqual(json.loads(body)["tags"], [])
        for bad in ["-1", "x", "1e3"]:
            response, body = await self.request("GET", f"/v2/lib/repo/tags/list?n={bad}")
            self.assertError(response, body, 400, "PAGINATION_NUMBER_INVALID")

    async def test_unknown_repository(self):
        """Listing the tags of a repository without manifests is 404 NAME_UNKNOWN."""
        response, body = await self.request("GET", "/v2/nothing/here/tags/list")
        self.assertError(response, body, 404, "NAME_UNKNOWN")

    async def test_catalog_paging(self):
        """/v2/_catalog lists repositories in order, with n/last paging."""
        for name in ["b/x", "a", "c"]:
            await self.tag_all(name, ["t"])
        response, body = await self.request("GET", "/v2/_catalog")
        self.assertEqual(json.loads(body), {"repositories": ["a", "b/x", "c"]})
        response, body = await self.request("GET", "/v2/_catalog?n=2")
        self.assertEqual(json.loads(body), {"repositories": ["a", "b/x"]})
        self.assertEqual(self.header(response, "Link"), '</v2/_catalog?n=2&last=b%2Fx>; rel="next"')
        response, body = await self.request("GET", "/v2/_catalog?n=2&last=b/x")
        self.assertEqual(json.loads(body), {"repositories": ["c"]})
        self.assertIsNone(self.header(response, "Link"))


    async def test_deleted_repository_leaves_the_catalog(self):
        """Once every manifest of a repository is deleted it is gone from
        the catalog (as from the tag list), though its blobs stay linked
        until they are deleted too."""
        await self.tag_all("gone/soon", ["v1", "v2"])
        await self.tag_all("stays", ["v1"])
        response, body = await self.request("GET", "/v2/gone/soon/manifests/v1")
        digest = self.header(response, "Docker-Content-Digest")
        response, body = await self.request("DELETE", f"/v2/gone/soon/manifests/{digest}")
        self.assertEqual(response.code, 202, body)
        response, body = await self.request("GET", "/v2/_catalog")
        self.assertEqual(json.loads(body), {"repositories": ["stays"]})
        response, body = await self.request("GET", "/v2/gone/soon/tags/list")
        self.assertError(response, body, 404, "NAME_UNKNOWN")


class ReferrersTests(RegistryTestCase):

    async def push_subject(self):
        config = b"{}"
        await self.push_blob("repo", config)
        subject = image_manifest(config, [])
        await self.put_manifest("repo", "v1", subject)
        return subject, config

    async def push_referrer(self, subject, config, **more):
        content = image_manifest(config, [], subject=descriptor(subject, OCI_MANIFEST), **more)
        response, body = await self.put_manifest("repo", sha256(content), content)
        self.assertEqual(response.code, 201, body)
        self.assertEqual(self.header(response, "OCI-Subject"), sha256(subject))
        return content

    async def test_referrers(self):
        """The referrers of a manifest come as an image index: artifactType
        (or else the config's media type) and annotations copied."""
        subject, config = await self.push_subject()
        signature = await self.push_referrer(
            subject, config, artifactType="application/vnd.example.signature",
            annotations={"org.example.signed-by": "me"})
        sbom = await self.push_referrer(subject, config)
        response, body = await self.request("GET", f"/v2/repo/referrers/{sha256(subject)}")
        self.assertEqual(response.code, 200)
        self.assertEqual(self.header(response, "Content-Type"), OCI_INDEX)
        index = json.loads(body)
        self.assertEqual((index["schemaVersion"], index["mediaType"]), (2, OCI_INDEX))
        by_digest = {m["digest"]: m for m in index["manifests"]}
        self.assertEqual(by_digest[sha256(signature)], {
            "mediaType": OCI_MANIFEST, "digest": sha256(signature), "size": len(signature),
            "artifactType": "application/vnd.example.signature",
            "annotations": {"org.example.signed-by": "me"}})
        self.assertEqual(by_digest[sha256(sbom)]["artifactType"],
                         "application/vnd.oci.image.config.v1+json")
        response, body = await self.request(
            "GET", f"/v2/repo/referrers/{sha256(subject)}",
            params={"artifactType": "application/vnd.example.signature"})
        self.assertEqual(self.header(response, "OCI-Filters-Applied"), "artifactType")
        self.assertEqual([m["digest"] for m in json.loads(body)["manifests"]], [sha256(signature)])

    async def test_subject_may_be_missing(self):
        """A manifest whose subject is not (yet) in the registry is
        accepted, and listed once pushed."""
        config = b"{}"
        await self.push_blob("repo", config)
        referrer = await self.push_referrer(b"absent subject", config)
        response, body = await self.request("GET", f"/v2/repo/referrers/{sha256(b'absent subject')}")
        self.assertEqual([m["digest"] for m in json.loads(body)["manifests"]], [sha256(referrer)])

    async def test_no_referrers(self):
        """No referrers is an empty index, never a 404; a bad digest is 400."""
        subject, _ = await self.push_subject()
        response, body = await self.request("GET", f"/v2/repo/referrers/{sha256(b'nothing')}")
        self.assertEqual(response.code, 200)
        self.assertEqual(json.loads(body),
                         {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []})
        self.assertIsNone(self.header(response, "OCI-Filters-Applied"))
        response, body = await self.request("GET", "/v2/repo/referrers/sha256:nope")
        self.assertError(response, body, 400, "DIGEST_INVALID")


class PlainSiteTests(TestCase):
    """
    Under a plain C{Site} (here treq's C{StubTreq}), bodies arrive spooled in
    C{request.content} and go through the same sinks.
    """

    async def test_push_and_pull(self):
        clock = Clock()
        metadata = MemoryMetadataStore(clock)
        storage = MemoryChunkedStorage(chunk_size=100)
        api = RegistryAPI(metadata, storage, clock)
        root = Resource()
        root.putChild(b"v2", api.resource)
        stub = StubTreq(root)
        base = "http://registry.example/v2/repo"
        config, layer = b"{}", b"layer" * 50
        response = await stub.post(f"{base}/blobs/uploads/", data=config, params={"digest": sha256(config)})
        self.assertEqual(response.code, 201)
        response = await stub.post(f"{base}/blobs/uploads/")
        location = "http://registry.example" + response.headers.getRawHeaders("Location")[0]
        response = await stub.patch(location, data=layer[:120], headers={"Content-Range": "0-119"})
        self.assertEqual(response.code, 202)
        response = await stub.put(location, data=layer[120:], params={"digest": sha256(layer)})
        self.assertEqual(response.code, 201)
        content = image_manifest(config, [layer])
        response = await stub.put(f"{base}/manifests/v1", data=content,
                                  headers={"Content-Type": OCI_MANIFEST})
        self.assertEqual(response.code, 201)
        response = await stub.get(f"{base}/manifests/v1")
        self.assertEqual(await response.content(), content)
        response = await stub.get(f"{base}/blobs/{sha256(layer)}")
        self.assertEqual(await response.content(), layer)
