"""
The Docker Registry V1 API over HTTP: an imageserver's root (the file API,
the V2 registry and the V1 registry) behind a real loopback
L{StreamingSite}, on a L{FakeCluster} (replicated storage over fake
chunkservers, 1000-byte chunks, so every layer spans several) and its
L{MemoryMetadataStore}, driven by treq with the requests Docker 1.x sent.
"""

import hashlib
import json

from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.defer import fail
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, HTTPConnectionPool

from speedy import errors
from speedy.imageserver.root import ImageServerRoot
from speedy.metadata.memory import MemoryMetadataStore
from speedy.records import V1ImageRecord
from speedy.registry.api import RegistryAPI
from speedy.registry.v1.api import MAX_JSON_BODY, RegistryV1API, docker_version
from speedy.registry.v1.errors import V1Error
from speedy.registry.v1.names import parse_repository
from speedy.testing import FakeCluster, MemoryChunkedStorage
from speedy.test.util import connections_closed, watch_intents
from speedy.web.streaming import StreamingSite

G1 = ["10.0.0.1:8001", "10.0.0.2:8001", "10.0.0.3:8001"]

DOCKER_UA = "docker/1.9.1 go/go1.4.3 git-commit/a34a1d5 kernel/4.4.0 os/linux arch/amd64"


def image_id(n):
    return hashlib.sha256(b"image %d" % n).hexdigest()


def image_json(image, parent=None):
    document = {"id": image, "created": "2015-12-08T10:00:00Z", "container_config": {"Cmd": ["sh"]}}
    if parent is not None:
        document["parent"] = parent
    return json.dumps(document).encode("utf-8")


def payload_checksum(json_bytes, layer):
    """What Docker 0.10+ sends as X-Docker-Checksum-Payload."""
    return "sha256:" + hashlib.sha256(json_bytes + b"\n" + layer).hexdigest()


def layer_bytes(n, size):
    return (hashlib.sha256(b"layer %d" % n).digest() * (size // 32 + 1))[:size]


class NameTests(SynchronousTestCase):
    """Repository names as Docker 1.x checked them."""

    def test_names(self):
        self.assertEqual(parse_repository("busybox"), "library/busybox")
        self.assertEqual(parse_repository("team_a/web.app-1/"), "team_a/web.app-1")
        for bad in ("a/b/c", "x/app", "-team/app", "team-/app", "te--am/app", "Team/app",
                    "team/App", "a" * 64, "team/" + "a" * 251, ""):
            self.assertRaises(V1Error, parse_repository, bad)

    def test_docker_version(self):
        self.assertEqual(docker_version(DOCKER_UA), (1, 9))
        self.assertEqual(docker_version("docker/0.9.1 go/go1.2"), (0, 9))
        self.assertEqual(docker_version("docker/1.12.6-cs13"), (1, 12))
        self.assertIsNone(docker_version("python-requests/2.31"))
        self.assertIsNone(docker_version(None))


class LayerExpiryTests(SynchronousTestCase):
    """The layer of a push that never completed is deleted after a day;
    the image stays, to be pushed again."""

    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.metadata = MemoryMetadataStore(self.clock)
        self.storage = MemoryChunkedStorage(chunk_size=1000)
        self.v1 = RegistryV1API(self.metadata, self.storage, self.clock,
                                layer_expiry=3600, expiry_interval=60)

    def push(self, image, complete):
        document = image_json(image)
        self.successResultOf(self.metadata.put_v1_image(V1ImageRecord(image, document, None, (image,))))
        chunks = (self.storage.store(b"x" * 1000), self.storage.store(b"y" * 500))
        self.successResultOf(self.metadata.set_v1_layer(image, document, 1500, chunks, "sha256:x"))
        if complete:
            self.successResultOf(self.metadata.complete_v1_image(image, "sha256:x"))
        return chunks

    def test_abandoned_layer_expires(self):
        self.v1.start()
        self.addCleanup(self.v1.stop)
        abandoned = self.push(image_id(1), complete=False)
        kept = self.push(image_id(2), complete=True)
        self.clock.advance(1800)
        recent = self.push(image_id(3), complete=False)
        self.clock.advance(1860)
        self.assertEqual(set(self.storage.chunks), {c.file_id for c in kept + recent})
        self.assertFalse({c.file_id for c in abandoned} & set(self.storage.chunks))
        image = self.successResultOf(self.metadata.get_v1_image(image_id(1)))
        self.assertEqual((image.complete, image.size, image.chunks), (False, None, ()))
        self.assertEqual(
            [(g.chunk, g.reason) for g in self.successResultOf(self.metadata.list_garbage())],
            [(c, f"v1-image {image_id(1)}: abandoned push expired") for c in abandoned],
            "recorded when the layer was cleared: a crash before the delete leaks nothing")
        self.clock.advance(1800)
        self.assertEqual(set(self.storage.chunks), {c.file_id for c in kept})
        self.assertEqual(self.successResultOf(self.v1.images.expire()), 0)

    def test_stop(self):
        self.v1.start()
        self.v1.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])


class V1TestCase(TestCase):
    """An imageserver's root on loopback, and helpers to push V1 images."""

    def setUp(self):
        self.cluster = FakeCluster({1: G1}, chunk_size=1000, parallelism=2)
        storage, metadata = self.cluster.storage, self.cluster.metadata
        self.v1 = RegistryV1API(metadata, storage, self.cluster.clock)
        self.root = ImageServerRoot(storage, metadata, self.cluster.clock,
                                    RegistryAPI(metadata, storage, self.cluster.clock), self.v1)
        site = StreamingSite(self.root.resource, self.root.body_sink_for, reactor=reactor)
        port = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.addCleanup(connections_closed, site)
        self.host = f"127.0.0.1:{port.getHost().port}"
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(pool.closeCachedConnections)
        self.http = HTTPClient(Agent(reactor, pool=pool))

    async def call(self, method, path, data=None, headers=None):
        """@return: C{(response, body bytes)}."""
        headers = dict({"User-Agent": DOCKER_UA}, **(headers or {}))
        if isinstance(data, str):
            data = data.encode("utf-8")
        response = await self.http.request(method, f"http://{self.host}{path}", data=data,
                                           headers=headers)
        return response, await response.content()

    def header(self, response, name):
        values = response.headers.getRawHeaders(name)
        return values[0] if values else None

    def assertOK(self, response, body, status=200):
        self.assertEqual(response.code, status, body)
        self.assertEqual(self.header(response, "X-Docker-Registry-Version"), "0.9.1")

    def assertV1Error(self, response, body, status, message):
        """The answer is C{status} with docker-registry's body."""
        self.assertEqual(response.code, status, body)
        self.assertEqual(json.loads(body), {"error": message})
        self.assertEqual(self.header(response, "Content-Type"), "application/json")
        self.assertEqual(self.header(response, "X-Docker-Registry-Version"), "0.9.1")

    def stored_chunks(self):
        """@return: the file ids of the chunks on the first chunkserver."""
        return set(self.cluster.client.server(G1[0]).chunks)

    async def push_image(self, image, layer, parent=None, checksum=None):
        """PUT an image's JSON, layer and checksum; @return: its JSON."""
        document = image_json(image, parent)
        response, body = await self.call("PUT", f"/v1/images/{image}/json", document)
        self.assertOK(response, body)
        response, body = await self.call("PUT", f"/v1/images/{image}/layer", layer)
        self.assertOK(response, body)
        response, body = await self.call(
            "PUT", f"/v1/images/{image}/checksum",
            headers={"X-Docker-Checksum-Payload": checksum or payload_checksum(document, layer),
                     "X-Docker-Checksum": "tarsum+sha256:" + "0" * 64})
        self.assertOK(response, body)
        return document


class PushPullTests(V1TestCase):
    """The request sequences of C{docker push} and C{docker pull} (1.x)."""

    async def test_ping(self):
        response, body = await self.call("GET", "/v1/_ping")
        self.assertOK(response, body)
        self.assertEqual(json.loads(body), {})
        self.assertEqual(self.header(response, "X-Docker-Registry-Standalone"), "true")

    async def test_push_then_pull(self):
        """Two images, each layer over several chunks, pushed as Docker 1.x
        pushed them and pulled back byte for byte."""
        base, top = image_id(1), image_id(2)
        layers = {base: layer_bytes(1, 3500), top: layer_bytes(2, 2100)}
        response, body = await self.call(
            "PUT", "/v1/repositories/team/app/", json.dumps([{"id": base}, {"id": top}]),
            {"X-Docker-Token": "true"})
        self.assertOK(response, body)
        self.assertEqual(self.header(response, "X-Docker-Endpoints"), self.host)
        self.assertTrue(self.header(response, "X-Docker-Token").startswith("Token signature="))
        for image, parent in ((base, None), (top, base)):
            response, body = await self.call("GET", f"/v1/images/{image}/json")
            self.assertV1Error(response, body, 404, "Image not found")
            await self.push_image(image, layers[image], parent)
        response, body = await self.call("PUT", "/v1/repositories/team/app/tags/latest",
                                         json.dumps(top))
        self.assertOK(response, body)
        checksums = [{"id": i, "checksum": "tarsum+sha256:" + "1" * 64} for i in (base, top)]
        response, body = await self.call("PUT", "/v1/repositories/team/app/images",
                                         json.dumps(checksums), {"X-Docker-Token": "true"})
        self.assertOK(response, body, 204)

        response, body = await self.call("GET", "/v1/repositories/team/app/images",
                                         headers={"X-Docker-Token": "true"})
        self.assertOK(response, body)
        self.assertEqual(json.loads(body), checksums)
        self.assertEqual(self.header(response, "X-Docker-Endpoints"), self.host)
        response, body = await self.call("GET", "/v1/repositories/team/app/tags")
        self.assertEqual(json.loads(body), {"latest": top})
        response, body = await self.call("GET", "/v1/repositories/team/app/tags/latest")
        self.assertEqual(json.loads(body), top)
        response, body = await self.call("GET", f"/v1/images/{top}/ancestry")
        self.assertEqual(json.loads(body), [top, base])
        for image, parent in ((base, None), (top, base)):
            response, body = await self.call("GET", f"/v1/images/{image}/json")
            self.assertOK(response, body)
            self.assertEqual(body, image_json(image, parent))
            self.assertEqual(self.header(response, "X-Docker-Size"), str(len(layers[image])))
            self.assertEqual(self.header(response, "X-Docker-Checksum-Payload"),
                             payload_checksum(body, layers[image]))
            response, body = await self.call("GET", f"/v1/images/{image}/layer")
            self.assertEqual((response.code, body), (200, layers[image]))
            self.assertEqual(self.header(response, "Accept-Ranges"), "bytes")
        response, body = await self.call("GET", f"/v1/images/{base}/layer",
                                         headers={"Range": "bytes=1500-"})
        self.assertEqual((response.code, body), (206, layers[base][1500:]))
        self.assertEqual(self.header(response, "Content-Range"), "bytes 1500-3499/3500")
        response, body = await self.call("GET", f"/v1/images/{base}/layer",
                                         headers={"Range": "bytes=9999-"})
        self.assertEqual(response.code, 416)
        response, body = await self.call("HEAD", f"/v1/images/{base}/layer")
        self.assertEqual((response.code, self.header(response, "Content-Length")), (200, "3500"))

    async def test_library_namespace(self):
        """A name without a namespace is in library/."""
        image = image_id(1)
        await self.push_image(image, b"layer")
        response, body = await self.call("PUT", "/v1/repositories/busybox/tags/1.0",
                                         json.dumps(image))
        self.assertOK(response, body)
        response, body = await self.call("GET", "/v1/repositories/library/busybox/tags")
        self.assertEqual(json.loads(body), {"1.0": image})

    async def test_empty_layer(self):
        image = image_id(1)
        await self.push_image(image, b"")
        response, body = await self.call("GET", f"/v1/images/{image}/layer")
        self.assertEqual((response.code, body), (200, b""))

    async def test_index_merges(self):
        """Index PUTs merge: a checksum once given stays."""
        a, b = image_id(1), image_id(2)
        await self.call("PUT", "/v1/repositories/team/app", json.dumps([{"id": a}]))
        await self.call("PUT", "/v1/repositories/team/app/images",
                        json.dumps([{"id": a, "checksum": "x:1"}]))
        await self.call("PUT", "/v1/repositories/team/app/", json.dumps([{"id": a}, {"id": b}]))
        response, body = await self.call("GET", "/v1/repositories/team/app/images")
        self.assertEqual(json.loads(body), [{"id": a, "checksum": "x:1"}, {"id": b}])

    async def test_retried_push_replaces_layer(self):
        """An image whose push did not complete can be pushed again: its
        first layer's chunks are deleted."""
        image = image_id(1)
        document = image_json(image)
        await self.call("PUT", f"/v1/images/{image}/json", document)
        await self.call("PUT", f"/v1/images/{image}/layer", layer_bytes(1, 2500))
        first = self.stored_chunks()
        self.assertEqual(len(first), 3)
        await self.push_image(image, layer_bytes(2, 1500))
        self.assertEqual(len(self.stored_chunks()), 2)
        self.assertFalse(first & self.stored_chunks())
        response, body = await self.call("GET", f"/v1/images/{image}/layer")
        self.assertEqual(body, layer_bytes(2, 1500))

    async def test_tag_json_and_deletes(self):
        image = image_id(1)
        await self.push_image(image, b"layer")
        await self.call("PUT", "/v1/repositories/team/app/tags/latest", json.dumps(image))
        await self.call("PUT", "/v1/repositories/team/app/tags/old", json.dumps(image))
        response, body = await self.call("GET", "/v1/repositories/team/app/tags/latest/json")
        properties = json.loads(body)
        self.assertEqual((properties["docker_version"], properties["os"], properties["arch"]),
                         ("1.9.1", "linux", "amd64"))
        response, body = await self.call("GET", "/v1/repositories/team/app/json")
        self.assertEqual(json.loads(body), properties)
        response, body = await self.call("GET", "/v1/repositories/team/app/tags/none/json")
        self.assertEqual(json.loads(body)["docker_version"], None)
        response, body = await self.call("DELETE", "/v1/repositories/team/app/tags/old")
        self.assertOK(response, body)
        response, body = await self.call("DELETE", "/v1/repositories/team/app/tags/old")
        self.assertV1Error(response, body, 404, "Tag not found: old")
        response, body = await self.call("GET", "/v1/repositories/team/app/tags/old")
        self.assertV1Error(response, body, 404, "Tag not found")
        response, body = await self.call("DELETE", "/v1/repositories/team/app/images")
        self.assertOK(response, body, 204)
        response, body = await self.call("DELETE", "/v1/repositories/team/app/")
        self.assertOK(response, body)
        for method, path in (("GET", "tags"), ("DELETE", "tags"), ("GET", "images")):
            response, body = await self.call(method, f"/v1/repositories/team/app/{path}")
            self.assertEqual(response.code, 404, body)
        response, body = await self.call("GET", f"/v1/images/{image}/json")
        self.assertOK(response, body)

    async def test_search(self):
        for name in ("team/busybox", "library/busy-app", "team/web"):
            await self.call("PUT", f"/v1/repositories/{name}/", b"[]")
        response, body = await self.call("GET", "/v1/search?q=Busy")
        self.assertOK(response, body)
        self.assertEqual(json.loads(body), {"query": "Busy", "num_results": 2, "results": [
            {"name": "library/busy-app", "description": ""},
            {"name": "team/busybox", "description": ""}]})
        response, body = await self.call("GET", "/v1/search")
        self.assertEqual(json.loads(body)["num_results"], 3)

    async def test_beside_v2_and_files(self):
        """V1 repositories are apart from V2 ones; the file API and the V2
        registry answer as before."""
        image = image_id(1)
        await self.push_image(image, b"layer")
        await self.call("PUT", "/v1/repositories/library/app/tags/latest", json.dumps(image))
        response, body = await self.call("GET", "/v2/_catalog")
        self.assertEqual(json.loads(body), {"repositories": []})
        response, body = await self.call("GET", "/v2/library/app/tags/list")
        self.assertEqual(response.code, 404)
        response, body = await self.call("PUT", "/v1/files/a/b", b"data")
        self.assertEqual(response.code, 201, body)
        response, body = await self.call("GET", "/v1/files/a/b")
        self.assertEqual(body, b"data")
        response, body = await self.call("GET", "/v1/health")
        self.assertEqual(response.code, 200)
        response, body = await self.call("GET", "/v1/nothing")
        self.assertEqual(json.loads(body)["error"]["code"], "NOT_FOUND")


class ErrorTests(V1TestCase):
    """The errors docker-registry gave, and nothing half-stored."""

    async def test_layer_before_json(self):
        image = image_id(1)
        response, body = await self.call("PUT", f"/v1/images/{image}/layer", layer_bytes(1, 2500))
        self.assertV1Error(response, body, 404, "Image not found")
        self.assertEqual(self.stored_chunks(), set())
        self.assertIsNone(await self.cluster.metadata.get_v1_image(image))

    async def test_checksum_mismatch(self):
        """A wrong checksum deletes the layer; the image stays unfinished
        and can be pushed again."""
        image = image_id(1)
        document = image_json(image)
        await self.call("PUT", f"/v1/images/{image}/json", document)
        await self.call("PUT", f"/v1/images/{image}/layer", layer_bytes(1, 2500))
        self.assertEqual(len(self.stored_chunks()), 3)
        wrong = payload_checksum(document, layer_bytes(2, 2500))
        response, body = await self.call("PUT", f"/v1/images/{image}/checksum",
                                         headers={"X-Docker-Checksum-Payload": wrong})
        self.assertV1Error(response, body, 400, "Checksum mismatch")
        self.assertEqual(self.stored_chunks(), set())
        for part in ("json", "layer", "ancestry"):
            response, body = await self.call("GET", f"/v1/images/{image}/{part}")
            self.assertV1Error(response, body, 400, "Image is being uploaded, retry later")
        response, body = await self.call(
            "PUT", f"/v1/images/{image}/checksum",
            headers={"X-Docker-Checksum-Payload": payload_checksum(document, layer_bytes(1, 2500))})
        self.assertV1Error(response, body, 400, "Image layer not found: PUT the layer before its checksum")
        await self.push_image(image, layer_bytes(1, 2500))
        response, body = await self.call("GET", f"/v1/images/{image}/layer")
        self.assertEqual(body, layer_bytes(1, 2500))

    async def test_checksum_header(self):
        image = image_id(1)
        await self.call("PUT", f"/v1/images/{image}/json", image_json(image))
        response, body = await self.call("PUT", f"/v1/images/{image}/checksum",
                                         headers={"X-Docker-Checksum": "tarsum+sha256:" + "0" * 64})
        self.assertV1Error(response, body, 412, (
            "X-Docker-Checksum-Payload not set.  If you are using the Docker daemon, "
            "you should upgrade to version 0.10 or later"))
        response, body = await self.call("PUT", f"/v1/images/{image}/checksum",
                                         headers={"X-Docker-Checksum-Payload": ""})
        self.assertV1Error(response, body, 400, "Missing Image's checksum")
        response, body = await self.call("PUT", f"/v1/images/{image_id(2)}/checksum",
                                         headers={"X-Docker-Checksum-Payload": "sha256:0"})
        self.assertV1Error(response, body, 404, "Image not found")

    async def test_missing_parent(self):
        image = image_id(2)
        response, body = await self.call("PUT", f"/v1/images/{image}/json",
                                         image_json(image, parent=image_id(1)))
        self.assertV1Error(response, body, 400, "Image depends on a non existing parent")
        self.assertIsNone(await self.cluster.metadata.get_v1_image(image))
        response, body = await self.call("PUT", f"/v1/images/{image}/json",
                                         image_json(image, parent="not an id"))
        self.assertV1Error(response, body, 400, "Image depends on a non existing parent")

    async def test_parent_loop(self):
        """An unfinished image pushed again may not become its own ancestor."""
        a, b = image_id(1), image_id(2)
        await self.call("PUT", f"/v1/images/{a}/json", image_json(a))
        await self.call("PUT", f"/v1/images/{b}/json", image_json(b, parent=a))
        response, body = await self.call("PUT", f"/v1/images/{a}/json", image_json(a, parent=b))
        self.assertV1Error(response, body, 400, "Image depends on itself through its parent")

    async def test_complete_image_kept(self):
        image = image_id(1)
        document = await self.push_image(image, layer_bytes(1, 1200))
        chunks = self.stored_chunks()
        response, body = await self.call("PUT", f"/v1/images/{image}/json", document)
        self.assertV1Error(response, body, 409, "Image already exists")
        response, body = await self.call("PUT", f"/v1/images/{image}/layer", b"other")
        self.assertV1Error(response, body, 409, "Image already exists")
        response, body = await self.call("PUT", f"/v1/images/{image}/checksum",
                                         headers={"X-Docker-Checksum-Payload": "sha256:0"})
        self.assertV1Error(response, body, 409, "Cannot set this image checksum")
        self.assertEqual(self.stored_chunks(), chunks)

    async def test_bad_image_json(self):
        image = image_id(1)
        for document, message in [
                (b"not json", "Invalid JSON"), (b"[1]", "Invalid JSON"), (b"{}", "Invalid JSON"),
                (b'{"parent": null}', "Missing key `id' in JSON"),
                (json.dumps({"id": image_id(2)}).encode(), "JSON data contains invalid id")]:
            response, body = await self.call("PUT", f"/v1/images/{image}/json", document)
            self.assertV1Error(response, body, 400, message)
        self.assertIsNone(await self.cluster.metadata.get_v1_image(image))

    async def test_deeply_nested_json(self):
        """JSON nested past Python's recursion limit is bad JSON (400),
        never a 500."""
        image = image_id(1)
        deep = b"[" * 100_000 + b"]" * 100_000
        response, body = await self.call("PUT", f"/v1/images/{image}/json", deep)
        self.assertV1Error(response, body, 400, "Invalid JSON")
        response, body = await self.call("PUT", "/v1/repositories/team/app/", deep)
        self.assertV1Error(response, body, 400, "Error Decoding JSON")
        response, body = await self.call("PUT", "/v1/repositories/team/app/tags/latest", deep)
        self.assertV1Error(response, body, 400, "Invalid data")

    async def test_bad_ids_and_names(self):
        response, body = await self.call("GET", "/v1/images/XYZ/json")
        self.assertV1Error(response, body, 404, "Invalid image ID")
        response, body = await self.call("GET", "/v1/repositories/a/b/c/tags")
        self.assertEqual(response.code, 400)
        self.assertIn("Invalid repository name", json.loads(body)["error"])
        response, body = await self.call("GET", "/v1/repositories/Team/app/tags")
        self.assertIn("Invalid namespace name", json.loads(body)["error"])
        response, body = await self.call("PUT", "/v1/repositories/team/app/tags/bad:tag",
                                         json.dumps(image_id(1)))
        self.assertV1Error(response, body, 400, "Invalid tag name (must match ^[\\w][\\w.-]{0,127}$)")
        response, body = await self.call("GET", "/v1/repositories/team/app/tags")
        self.assertV1Error(response, body, 404, "Repository not found")
        response, body = await self.call("POST", "/v1/repositories/team/app/tags")
        self.assertEqual(response.code, 405)
        self.assertEqual(self.header(response, "Allow"), "GET, HEAD, DELETE")

    async def test_bad_tags_and_index(self):
        for data in (b"", b"not json", json.dumps(["a"]).encode()):
            response, body = await self.call("PUT", "/v1/repositories/team/app/tags/latest", data)
            self.assertV1Error(response, body, 400, "Invalid data")
        response, body = await self.call("PUT", "/v1/repositories/team/app/tags/latest",
                                         json.dumps(image_id(1)))
        self.assertV1Error(response, body, 404, "Image not found")
        response, body = await self.call("PUT", "/v1/repositories/team/app/", b"{")
        self.assertV1Error(response, body, 400, "Error Decoding JSON")
        for data in ({"id": image_id(1)}, [{"name": "x"}], [{"id": "short"}]):
            response, body = await self.call("PUT", "/v1/repositories/team/app/images",
                                             json.dumps(data))
            self.assertV1Error(response, body, 400, "Invalid data")
        self.assertIsNone(await self.cluster.metadata.get_v1_repository("team/app"))

    async def test_old_docker_refused(self):
        image = image_id(1)
        await self.call("PUT", f"/v1/images/{image}/json", image_json(image))
        response, body = await self.call("PUT", f"/v1/images/{image}/layer", b"layer",
                                         {"User-Agent": "docker/0.9.1 go/go1.2"})
        self.assertV1Error(response, body, 412,
                           "This endpoint does not support Docker daemons older than 0.10")
        self.assertEqual(self.stored_chunks(), set())

    async def test_json_too_large(self):
        image = image_id(1)
        response, body = await self.call("PUT", f"/v1/images/{image}/json",
                                         b" " * (MAX_JSON_BODY + 1))
        self.assertEqual(response.code, 413, body)
        self.assertIn("error", json.loads(body))


class ChunkOwnershipTests(V1TestCase):
    """At every step of a V1 push some row owns a layer's chunks (an
    intent, the image, or the garbage table), so an imageserver killed at
    any point leaves them to the chunk collector."""

    def all_stored_chunks(self):
        """@return: the file ids of every chunk some fake chunkserver holds."""
        return {file_id for server in self.cluster.client.servers.values()
                for file_id in server.chunks}

    def garbage(self):
        """@return: the garbage table's C{(file id, reason)}s."""
        return [(g.chunk.file_id, g.reason)
                for g in self.successResultOf(self.cluster.metadata.list_garbage())]

    async def test_layer_chunks_recorded_as_intents_first(self):
        """Each chunk of a layer PUT is recorded as an intent before any of
        its bytes reaches a chunkserver; the image's row takes them over
        and their intents go in the transaction that records the layer."""
        metadata = self.cluster.metadata
        seen = watch_intents(metadata, self.all_stored_chunks)
        image = image_id(1)
        await self.push_image(image, layer_bytes(1, 2500))
        stored = await metadata.get_v1_image(image)
        self.assertEqual(len(stored.chunks), 3)
        self.assertEqual(seen, [(c.file_id, False, f"v1 layer of {image}") for c in stored.chunks])
        self.assertEqual(await metadata.list_intents(), [])
        self.assertEqual(self.garbage(), [])

    async def test_no_layer_chunk_without_its_intent(self):
        """When an intent cannot be recorded (the database is away), its
        chunk is not sent: the PUT is 503 and no chunkserver holds a byte."""
        image = image_id(1)
        await self.call("PUT", f"/v1/images/{image}/json", image_json(image))
        self.cluster.metadata.record_intents = lambda chunks, reason: fail(
            errors.Unavailable("metadata database unreachable: gone"))
        response, body = await self.call("PUT", f"/v1/images/{image}/layer", layer_bytes(1, 2500))
        self.assertEqual(response.code, 503, body)
        self.assertIn("metadata database unreachable", json.loads(body)["error"])
        self.assertEqual(self.all_stored_chunks(), set())
        self.assertIsNone((await self.cluster.metadata.get_v1_image(image)).size)

    async def test_layer_slower_than_its_intents(self):
        """A layer whose intents expired before its row was written (the
        collector may delete its chunks) is not recorded: 503, the image
        keeps the layer it had, and the new chunks are deleted."""
        metadata = self.cluster.metadata
        image = image_id(1)
        document = image_json(image)
        await self.call("PUT", f"/v1/images/{image}/json", document)
        await self.call("PUT", f"/v1/images/{image}/layer", layer_bytes(1, 1500))
        old = await metadata.get_v1_image(image)
        set_v1_layer = metadata.set_v1_layer

        def expired_first(*args, **kwargs):
            self.successResultOf(metadata.expire_intents(self.cluster.clock.seconds() + 1))
            return set_v1_layer(*args, **kwargs)
        metadata.set_v1_layer = expired_first
        response, body = await self.call("PUT", f"/v1/images/{image}/layer", layer_bytes(2, 2500))
        self.assertEqual(response.code, 503, body)
        self.assertIn("had expired", json.loads(body)["error"])
        self.assertEqual(await metadata.get_v1_image(image), old)
        self.assertEqual(self.all_stored_chunks(), {c.file_id for c in old.chunks})
        self.assertEqual(len(self.garbage()), 3, "the expired intents")

    async def test_replaced_layers_are_garbage(self):
        """A layer PUT again, a JSON PUT again and a checksum mismatch each
        record the layer they drop as garbage along with the row's change
        (an imageserver killed before it deletes the chunks leaks none);
        the chunks are deleted at once as well."""
        image = image_id(1)
        document = image_json(image)
        await self.call("PUT", f"/v1/images/{image}/json", document)
        await self.call("PUT", f"/v1/images/{image}/layer", layer_bytes(1, 2500))
        first = (await self.cluster.metadata.get_v1_image(image)).chunks
        await self.call("PUT", f"/v1/images/{image}/layer", layer_bytes(2, 1500))
        second = (await self.cluster.metadata.get_v1_image(image)).chunks
        self.assertEqual(self.garbage(),
                         [(c.file_id, f"v1-image {image}: layer replaced") for c in first])
        await self.call("PUT", f"/v1/images/{image}/json", document)
        self.assertEqual(self.garbage()[3:],
                         [(c.file_id, f"v1-image {image} pushed again") for c in second])
        await self.call("PUT", f"/v1/images/{image}/layer", layer_bytes(3, 1500))
        third = (await self.cluster.metadata.get_v1_image(image)).chunks
        response, body = await self.call(
            "PUT", f"/v1/images/{image}/checksum",
            headers={"X-Docker-Checksum-Payload": payload_checksum(document, b"other")})
        self.assertV1Error(response, body, 400, "Checksum mismatch")
        self.assertEqual(self.garbage()[5:],
                         [(c.file_id, f"v1-image {image}: checksum mismatch") for c in third])
        self.assertEqual(self.all_stored_chunks(), set())
        self.assertEqual(await self.cluster.metadata.list_intents(), [])
