"""
End-to-end tests of the Docker Registry V1 API on a real Speedy cluster
(the one L{speedy.test.test_registry_clients} starts: a chunkmaster, three
chunkservers, two imageservers on one SQLite file, 4 MiB chunks), with:

  - a replay of the requests Docker 1.x made for C{docker push} and
    C{docker pull} (L{Docker1Client}), its layers sent with chunked
    transfer encoding as Docker sent them, each request of a push or pull
    going to the other imageserver than the one before, a three-image
    chain whose two lower layers are larger than a chunk;
  - PyPI C{docker-registry-client}, a real V1 client: ping, image JSON
    PUT, tags, ancestry, search, deletes.
"""

import hashlib
import io
import json
import random
import tarfile

from twisted.trial.unittest import SynchronousTestCase

from speedy.test import test_registry_clients as clients
from speedy.test.test_registry_clients import CHUNK_SIZE, RegistryClient
from speedy.test.util import skip_or_fail

DOCKER_UA = "docker/1.9.1 go/go1.4.3 git-commit/a34a1d5 kernel/4.4.0 os/linux arch/amd64"

#: Sizes of the files in the layers of the chain pushed: the first two
#: layers span several chunks.
LAYER_FILES = [2 * CHUNK_SIZE + 12345, CHUNK_SIZE + 1, 200_000]


def make_layer(size, seed):
    """@return: an uncompressed tar (a valid Docker layer) holding one file
    of C{size} random bytes."""
    content = random.Random(seed).randbytes(size)
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        info = tarfile.TarInfo(f"data/file-{seed}")
        info.size = size
        tar.addfile(info, io.BytesIO(content))
    return out.getvalue()


def make_chain(seed):
    """@return: C{[(image id, JSON bytes, layer bytes)]}, base first."""
    chain, parent = [], None
    for i, size in enumerate(LAYER_FILES):
        image = hashlib.sha256(b"v1 image %d %d" % (seed, i)).hexdigest()
        document = {"id": image, "created": "2015-12-08T10:00:00.000000000Z",
                    "container_config": {"Cmd": ["/bin/sh", "-c", f"#(nop) ADD file-{i}"]},
                    "docker_version": "1.9.1", "architecture": "amd64", "os": "linux"}
        if parent is not None:
            document["parent"] = parent
        chain.append((image, json.dumps(document).encode("utf-8"), make_layer(size, seed * 10 + i)))
        parent = image
    return chain


def pieces(data, size=256 << 10):
    """The body of a request sent with chunked transfer encoding."""
    for start in range(0, len(data), size):
        yield data[start:start + size]


class Docker1Client:
    """
    What Docker 1.x sent to a V1 registry for C{docker push} and
    C{docker pull} (its C{registry/session.go}), request by request, over
    the given registries in turn (each request to the next one).
    """

    def __init__(self, addresses):
        self.clients = [RegistryClient(a) for a in addresses]
        self.sent = 0
        self.log = []

    def request(self, method, path, body=None, headers=None):
        client = self.clients[self.sent % len(self.clients)]
        self.sent += 1
        headers = dict({"User-Agent": DOCKER_UA}, **(headers or {}))
        # An iterable body goes with Transfer-Encoding: chunked (http.client
        # adds the header and the framing), as Docker sent layers.
        response = client.request(method, path, body, headers)
        self.log.append((method, path, response.status))
        return response

    def expect(self, response, *statuses):
        assert response.status in statuses, (self.log[-1], response.body[:500])
        return response

    def push(self, repository, tag, chain):
        """Push C{chain} (base first) as C{repository:tag}.
        @return: the number of images skipped as already pushed."""
        self.expect(self.request("GET", "/v1/_ping"), 200)
        index = json.dumps([{"id": image} for image, _, _ in chain])
        answer = self.expect(self.request(
            "PUT", f"/v1/repositories/{repository}/", index,
            {"Content-Type": "application/json", "X-Docker-Token": "true"}), 200, 201)
        assert answer.header("X-Docker-Endpoints"), answer.headers
        token = answer.header("X-Docker-Token")
        auth = {"Authorization": token}
        skipped, checksums = 0, []
        for image, document, layer in chain:
            if self.request("GET", f"/v1/images/{image}/json", headers=auth).status == 200:
                skipped += 1
                continue
            answer = self.request("PUT", f"/v1/images/{image}/json", document,
                                  dict(auth, **{"Content-Type": "application/json"}))
            if answer.status != 200 and json.loads(answer.body)["error"] == "Image already exists":
                skipped += 1
                continue
            self.expect(answer, 200)
            self.expect(self.request("PUT", f"/v1/images/{image}/layer", pieces(layer), auth), 200)
            payload = "sha256:" + hashlib.sha256(document + b"\n" + layer).hexdigest()
            tarsum = "tarsum+sha256:" + hashlib.sha256(layer).hexdigest()  # not checked
            self.expect(self.request("PUT", f"/v1/images/{image}/checksum", headers=dict(
                auth, **{"X-Docker-Checksum": tarsum, "X-Docker-Checksum-Payload": payload})), 200)
            checksums.append({"id": image, "checksum": tarsum})
        self.expect(self.request("PUT", f"/v1/repositories/{repository}/tags/{tag}",
                                 json.dumps(chain[-1][0]), auth), 200, 201)
        self.expect(self.request(
            "PUT", f"/v1/repositories/{repository}/images", json.dumps(checksums),
            {"Content-Type": "application/json", "X-Docker-Token": "true"}), 204)
        return skipped

    def pull(self, repository, tag, resume_at=None):
        """
        Pull C{repository:tag}; with C{resume_at}, each layer is fetched
        in two parts, the second with C{Range: bytes=<resume_at>-} as
        Docker resumed a broken download.

        @return: C{[(image id, JSON bytes, layer bytes)]}, base first.
        """
        answer = self.expect(self.request("GET", f"/v1/repositories/{repository}/images",
                                          headers={"X-Docker-Token": "true"}), 200)
        listed = {entry["id"] for entry in json.loads(answer.body)}
        auth = {"Authorization": answer.header("X-Docker-Token")}
        tags = json.loads(self.expect(self.request(
            "GET", f"/v1/repositories/{repository}/tags", headers=auth), 200).body)
        top = json.loads(self.expect(self.request(
            "GET", f"/v1/repositories/{repository}/tags/{tag}", headers=auth), 200).body)
        assert tags[tag] == top and top in listed, (tags, top, listed)
        ancestry = json.loads(self.expect(self.request(
            "GET", f"/v1/images/{top}/ancestry", headers=auth), 200).body)
        pulled = []
        for image in reversed(ancestry):
            answer = self.expect(self.request("GET", f"/v1/images/{image}/json", headers=auth), 200)
            document, size = answer.body, int(answer.header("X-Docker-Size"))
            answer = self.expect(self.request("GET", f"/v1/images/{image}/layer", headers=auth), 200)
            assert answer.header("Accept-Ranges") == "bytes"
            layer = answer.body
            if resume_at is not None and size > resume_at:
                answer = self.expect(self.request(
                    "GET", f"/v1/images/{image}/layer",
                    headers=dict(auth, Range=f"bytes={resume_at}-")), 206)
                layer = layer[:resume_at] + answer.body
            assert len(layer) == size, (image, len(layer), size)
            pulled.append((image, document, layer))
        return pulled


class V1EndToEndTests(SynchronousTestCase):
    """The V1 API on a real cluster, with a replay of Docker 1.x and with
    C{docker-registry-client}."""

    def setUp(self):
        self.registry = clients.SpeedyRegistryClientTests.cluster.get()
        self.first, self.second = self.registry.registries[:2]

    def test_docker_push_pull_replay(self):
        """Docker 1.x's push and pull, alternating between the two
        imageservers request by request: the chain comes back byte for
        byte, also resumed with Range; a second push skips every image."""
        chain = make_chain(seed=1)
        docker = Docker1Client([self.first, self.second])
        self.assertEqual(docker.push("e2e/replay", "v1", chain), 0)
        self.assertEqual(docker.pull("e2e/replay", "v1"), chain)
        other = Docker1Client([self.second, self.first])
        self.assertEqual(other.pull("e2e/replay", "v1", resume_at=CHUNK_SIZE + 17), chain)
        self.assertEqual(other.push("e2e/replay", "v2", chain), len(chain))
        self.assertEqual(other.pull("e2e/replay", "v2"), chain)

    def test_interrupted_push_is_not_served(self):
        """A push that broke off before its checksum leaves an unfinished
        image: never served, completed by the push tried again."""
        chain = make_chain(seed=2)[:1]
        image, document, layer = chain[0]
        docker = Docker1Client([self.first, self.second])
        docker.expect(docker.request("PUT", f"/v1/images/{image}/json", document), 200)
        docker.expect(docker.request("PUT", f"/v1/images/{image}/layer", pieces(layer)), 200)
        wrong = "sha256:" + hashlib.sha256(b"not the layer").hexdigest()
        answer = docker.request("PUT", f"/v1/images/{image}/checksum",
                                headers={"X-Docker-Checksum-Payload": wrong})
        self.assertEqual((answer.status, answer.json()), (400, {"error": "Checksum mismatch"}))
        for address in (self.first, self.second):
            answer = RegistryClient(address).request("GET", f"/v1/images/{image}/layer")
            self.assertEqual((answer.status, answer.json()),
                             (400, {"error": "Image is being uploaded, retry later"}))
        self.assertEqual(docker.push("e2e/interrupted", "latest", chain), 0)
        self.assertEqual(docker.pull("e2e/interrupted", "latest"), chain)

    def test_docker_registry_client(self):
        """PyPI docker-registry-client, speaking V1: ping, image JSON, tags,
        ancestry, tag JSON, search, untag and repository delete."""
        try:
            import requests
            from docker_registry_client import DockerRegistryClient
            from docker_registry_client._BaseClient import BaseClientV1
        except ImportError as e:
            skip_or_fail(f"PyPI docker-registry-client is not installed ({e}): make install")
        url = f"http://{self.first}"
        base = BaseClientV1(url, api_timeout=60)
        self.assertEqual(base.check_status(), {})
        chain = make_chain(seed=3)
        Docker1Client([self.second]).push("e2e/drc", "latest", chain)
        top = chain[-1][0]
        client = DockerRegistryClient(url, api_version=1, api_timeout=60)
        self.assertIn("e2e/drc", client.repositories())
        self.assertIn("e2e", client.namespaces())
        repository = client.repository("e2e/drc")
        self.assertEqual(repository.tags(), ["latest"])
        image = repository.image("latest")
        self.assertEqual(image.image_id, top)
        self.assertEqual(image.ancestry(), [i for i, _, _ in reversed(chain)])
        self.assertEqual(image.get_json(), json.loads(chain[-1][1]))
        self.assertEqual(image.get_data("parent"), chain[-2][0])
        self.assertEqual(repository.data("latest")["docker_version"], "1.9.1")
        # A new image whose JSON the client PUTs (its put_image_layer), with
        # an empty layer sent through the client's own request path, tagged
        # by the client.
        extra = hashlib.sha256(b"drc extra").hexdigest()
        base.put_image_layer(extra, {"id": extra, "parent": top})
        answer = base._http_response(BaseClientV1.IMAGE_LAYER, requests.put, image_id=extra)
        self.assertEqual(answer.status_code, 200)
        document = json.dumps({"id": extra, "parent": top}).encode()
        payload = "sha256:" + hashlib.sha256(document + b"\n").hexdigest()
        answer = RegistryClient(self.second).request(
            "PUT", f"/v1/images/{extra}/checksum", headers={"X-Docker-Checksum-Payload": payload})
        self.assertEqual(answer.status, 200, answer.body)
        repository.tag("extra", extra)
        self.assertEqual(base.get_image_id("e2e", "drc", "extra"), extra)
        self.assertEqual(base.get_image_ancestry(extra), [extra] + [i for i, _, _ in reversed(chain)])
        repository.untag("extra")
        self.assertEqual(base.get_repository_tags("e2e", "drc"), {"latest": top})
        base.delete_repository("e2e", "drc")
        with self.assertRaises(requests.HTTPError) as caught:
            base.get_repository_tags("e2e", "drc")
        self.assertEqual(caught.exception.response.status_code, 404)
        self.assertEqual(caught.exception.response.json(), {"error": "Repository not found"})
        # A client left to choose finds /v2/ first: both APIs are served.
        self.assertEqual(DockerRegistryClient(url, api_timeout=60).api_version, 2)
