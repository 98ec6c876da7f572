"""
The registry's grammar and small parts: names, tags, digests, routes,
byte ranges, resumable hashes and the error body.
"""

import hashlib
import json

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from speedy.metadata.memory import MemoryMetadataStore
from speedy.registry.api import RegistryAPI, registry_error
from speedy.registry.blobs import parse_range
from speedy.registry.digests import SLICE, ResumableHash, digest_of
from speedy.registry.errors import BLOB_UNKNOWN, RegistryError
from speedy.registry.names import check_name, is_name, is_tag, parse_digest
from speedy.testing import MemoryChunkedStorage

SHA256 = "sha256:" + "a" * 64
SHA512 = "sha512:" + "0" * 128


class NameTests(SynchronousTestCase):

    def test_names(self):
        """Names follow the spec's component grammar, up to 255 characters."""
        for good in ["a", "library/ubuntu", "a.b_c__d--e/f-g", "0/1/2", "x" * 255]:
            self.assertTrue(is_name(good), good)
        for bad in ["", "A", "a/", "/a", "a//b", "a..b", "a___b", "_a", "a-", "a b", "é",
                    "x" * 256, "a\n"]:
            self.assertFalse(is_name(bad), bad)
        self.assertEqual(self.assertRaises(RegistryError, check_name, "Bad").code.name, "NAME_INVALID")

    def test_tags(self):
        """Tags are [a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}."""
        for good in ["latest", "v1.2.3-rc_1", "_", "A" * 128]:
            self.assertTrue(is_tag(good), good)
        for bad in ["", ".a", "-a", "a:b", "a/b", "A" * 129, "a\n"]:
            self.assertFalse(is_tag(bad), bad)

    def test_digests(self):
        """sha256 and sha512 digests of the right length, lowercase hex."""
        self.assertEqual(parse_digest(SHA256), ("sha256", "a" * 64))
        self.assertEqual(parse_digest(SHA512), ("sha512", "0" * 128))
        for bad in ["", "sha256", "sha256:", "sha256:" + "A" * 64, "sha256:" + "a" * 65,
                    "sha512:" + "a" * 64, "md5:" + "a" * 32, ":" + "a" * 64, SHA256 + "\n", None, 7]:
            error = self.assertRaises(RegistryError, parse_digest, bad)
            self.assertEqual((error.status, error.code.name), (400, "DIGEST_INVALID"))


def Route(kind, name=None, argument=None):
    """@return: what L{RouteTests.route_for} says of a path's endpoint."""
    return kind, name, argument


class RouteTests(SynchronousTestCase):

    def setUp(self):
        clock = Clock()
        self.router = RegistryAPI(MemoryMetadataStore(clock), MemoryChunkedStorage(), clock).router

    def route_for(self, path):
        """@return: the kind of endpoint C{path} goes to, its repository name
        and its other argument (reference, digest or upload id)."""
        route, params = self.router.resolve(path)
        name = params.pop("name", None)
        [argument] = list(params.values()) or [None]
        return Route(route.name, name, argument)

    def test_routes(self):
        """Paths below /v2 map to endpoints; names may hold slashes and
        endpoint words."""
        for path, route in [
            (b"/v2/", Route("base")),
            (b"/v2", Route("base")),
            (b"/v2/_catalog", Route("catalog")),
            (b"/v2/a/b/tags/list", Route("tags", "a/b")),
            (b"/v2/a/manifests/latest", Route("manifest", "a", "latest")),
            (b"/v2/a/blobs/uploads/", Route("uploads", "a")),
            (b"/v2/a/blobs/uploads/abc-1", Route("upload", "a", "abc-1")),
            (f"/v2/a/blobs/{SHA256}".encode(), Route("blob", "a", SHA256)),
            (f"/v2/a/blobs/{SHA256.replace(':', '%3A')}".encode(), Route("blob", "a", SHA256)),
            (f"/v2/a/referrers/{SHA512}".encode(), Route("referrers", "a", SHA512)),
            (b"/v2/blobs/manifests/tags/list", Route("tags", "blobs/manifests")),
            (f"/v2/x/blobs/blobs/{SHA256}".encode(), Route("blob", "x/blobs", SHA256)),
        ]:
            self.assertEqual(self.route_for(path), route, path)

    def test_bad_routes(self):
        """No endpoint is a 404; a bad name 400; a bad digest 400; a bad upload id 404."""
        for path, status, code in [
            (b"/v2/a/nothing", 404, "UNSUPPORTED"),
            (b"/v2/a/blobs/", 404, "UNSUPPORTED"),
            (b"/v2/A/tags/list", 400, "NAME_INVALID"),
            (b"/v2/a/blobs/sha256:zz", 400, "DIGEST_INVALID"),
            (b"/v2/a/referrers/latest", 400, "DIGEST_INVALID"),
            (b"/v2/a/blobs/uploads/a%20b", 404, "BLOB_UPLOAD_UNKNOWN"),
            (b"/v2/a/blobs/uploads/\xff", 404, "BLOB_UPLOAD_UNKNOWN"),
        ]:
            error = registry_error(self.assertRaises(Exception, self.route_for, path))
            self.assertEqual((error.status, error.code.name), (status, code), path)


class RangeTests(SynchronousTestCase):

    def test_ranges(self):
        """Single byte ranges; the rest is the whole blob or 416."""
        self.assertIsNone(parse_range(None, 10))
        self.assertEqual(parse_range("bytes=0-0", 10), (0, 1))
        self.assertEqual(parse_range("bytes=3-", 10), (3, 7))
        self.assertEqual(parse_range("bytes=8-100", 10), (8, 2))
        self.assertEqual(parse_range("bytes=-3", 10), (7, 3))
        self.assertEqual(parse_range("bytes=-30", 10), (0, 10))
        for ignored in ["bytes=1-2,4-5", "lines=1-2", "bytes=5-1", "bytes=-", "nonsense"]:
            self.assertIsNone(parse_range(ignored, 10), ignored)
        for unsatisfiable, size in [("bytes=10-", 10), ("bytes=10-20", 10), ("bytes=-0", 10),
                                    ("bytes=0-", 0), ("bytes=-1", 0)]:
            self.assertRaises(ValueError, parse_range, unsatisfiable, size)


class HashTests(SynchronousTestCase):

    def test_resume(self):
        """A hash saved mid-stream and restored gives the digest of the whole."""
        for algorithm in ["sha256", "sha512"]:
            first = ResumableHash(algorithm)
            first.update(b"a" * 1000)
            second = ResumableHash(algorithm, first.state())
            second.update(memoryview(b"b" * (SLICE + 10)))
            data = b"a" * 1000 + b"b" * (SLICE + 10)
            self.assertEqual(second.digest(), f"{algorithm}:" + hashlib.new(algorithm, data).hexdigest())
            self.assertEqual(second.digest(), digest_of(algorithm, data))

    def test_bad_state(self):
        """An unusable state or algorithm is a ValueError."""
        self.assertRaises(ValueError, ResumableHash, "sha256", b"garbage")
        self.assertRaises(ValueError, ResumableHash, "md5")
        self.assertRaises(ValueError, digest_of, "md5", b"")


class ErrorBodyTests(SynchronousTestCase):

    def test_body(self):
        """Errors answer the spec's body: code, message, detail for each."""
        error = RegistryError(BLOB_UNKNOWN, detail={"digest": SHA256},
                              more=[RegistryError(BLOB_UNKNOWN)])
        self.assertEqual(error.status, 404)
        self.assertEqual(json.loads(error.body()), {"errors": [
            {"code": "BLOB_UNKNOWN", "message": "blob unknown to registry", "detail": {"digest": SHA256}},
            {"code": "BLOB_UNKNOWN", "message": "blob unknown to registry", "detail": {}},
        ]})
