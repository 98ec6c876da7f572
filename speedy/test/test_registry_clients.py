"""
End-to-end tests of the registry with real clients: skopeo copies images
(one layer over 100 MiB, a multi-platform index) in and out byte for byte,
inspects, lists tags and deletes; a small HTTP client pushes artifacts with a
C{subject} and finds them through the referrers API; a chunked upload starts
on one imageserver and finishes on another; bad input is refused cleanly.

The same test bodies (L{RegistryClientTestsMixin}) run against:

  - L{SpeedyRegistryClientTests}: a Speedy cluster started by
    C{tools/speedy-cluster up} (L{speedy.localcluster}), two imageservers on
    one SQLite metadata file, 4 MiB chunks so layers span many chunks;
  - L{DistributionRegistryClientTests}: two Debian C{docker-registry}
    (CNCF Distribution 2.8) processes on one storage directory and one
    upload secret, kept permanently as the reference that proves the harness
    and the tests themselves; it skips what Distribution 2.8 lacks.

Each test class starts its registry once per test process, on first use, and
stops it when the process exits (trial has no C{setUpClass}).
"""

import atexit
import hashlib
import http.client
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from urllib.parse import urlsplit

from twisted.trial.unittest import SynchronousTestCase

from speedy import localcluster
from speedy.test.e2e_images import (
    OCI_EMPTY, OCI_INDEX, OCI_LAYER_GZIP, OCI_MANIFEST, ImageLayout, canonical_json, layout_blobs,
    layout_tags, sha256_digest)
from speedy.test.processes import free_port
from speedy.test.util import require_tool

TOOL = os.path.join(os.path.dirname(__file__), os.pardir, os.pardir, "tools", "speedy-cluster")

#: The layer over 100 MiB the big-image test pushes, and the registry chunk
#: size that makes it span many chunks.
BIG_LAYER = 101 * (1 << 20) + 4321
CHUNK_SIZE = 4 << 20


# --- a small registry HTTP client ---------------------------------------------


class Response:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers
        self.body = body

    def header(self, name):
        return self.headers.get(name.lower())

    def json(self):
        return json.loads(self.body)


class RegistryClient:
    """Plain HTTP requests to one registry (C{host:port}), one connection
    each, so a dead server can never wedge the next test."""

    def __init__(self, address):
        self.address = address

    def request(self, method, path, body=None, headers=None):
        """@return: a L{Response}; redirects are not followed."""
        host, port = self.address.rsplit(":", 1)
        connection = http.client.HTTPConnection(host, int(port), timeout=60)
        try:
            connection.request(method, path, body=body, headers=headers or {})
            response = connection.getresponse()
            return Response(response.status, {k.lower(): v for k, v in response.getheaders()},
                            response.read())
        finally:
            connection.close()

    def push_blob(self, repository, data):
        """Upload C{data} in one POST + PUT.  @return: its digest."""
        started = self.request("POST", f"/v2/{repository}/blobs/uploads/")
        assert started.status == 202, (started.status, started.body)
        digest = sha256_digest(data)
        done = self.request("PUT", with_query(started.header("Location"), digest=digest), data,
                            {"Content-Type": "application/octet-stream"})
        assert done.status == 201, (done.status, done.body)
        return digest

    def mount_blob(self, repository, digest, source):
        """Link blob C{digest} of repository C{source} into C{repository}
        without uploading it (a cross-repository mount)."""
        mounted = self.request("POST", f"/v2/{repository}/blobs/uploads/?mount={digest}&from={source}")
        assert mounted.status == 201, (mounted.status, mounted.body)

    def push_manifest(self, repository, reference, content, media_type):
        """@return: the L{Response} to the manifest PUT."""
        return self.request("PUT", f"/v2/{repository}/manifests/{reference}", content,
                            {"Content-Type": media_type})


def location_path(location):
    """@return: the path and query of an upload C{Location}, which may be an
    absolute URL or a path, to send to any server of the cluster."""
    parts = urlsplit(location)
    return parts.path + (f"?{parts.query}" if parts.query else "")


def with_query(location, **params):
    """@return: L{location_path} of C{location} with C{params} added to its
    query."""
    path = location_path(location)
    query = "&".join(f"{k}={v}" for k, v in params.items())
    return path + ("&" if "?" in path else "?") + query


def http_ok(address, path="/v2/"):
    """@return: True if C{GET path} on C{address} answers 200."""
    try:
        return RegistryClient(address).request("GET", path).status == 200
    except OSError:
        return False


# --- the registries under test --------------------------------------------------


class DistributionRegistries:
    """
    Two CNCF Distribution 2.8 (Debian C{docker-registry}) processes sharing
    one filesystem storage directory and one HTTP secret, so an upload
    started on one can be finished on the other.
    """

    supports_referrers = False
    rejects_out_of_order_patch = False

    def __init__(self, workdir, count=2):
        self.workdir = workdir
        self.count = count
        self.processes = []
        self.registries = []

    def start(self):
        binary = require_tool("docker-registry")
        storage = os.path.join(self.workdir, "storage")
        secret = os.urandom(16).hex()
        for i in range(self.count):
            address = f"127.0.0.1:{free_port()}"
            config = os.path.join(self.workdir, f"registry-{i}.yml")
            with open(config, "w") as f:
                json.dump({  # JSON is YAML
                    "version": 0.1,
                    "log": {"level": "warn", "accesslog": {"disabled": True}},
                    "storage": {"filesystem": {"rootdirectory": storage},
                                "delete": {"enabled": True},
                                "maintenance": {"uploadpurging": {"enabled": False}}},
                    "http": {"addr": address, "secret": secret},
                }, f)
            log = open(os.path.join(self.workdir, f"registry-{i}.log"), "ab")
            process = subprocess.Popen([binary, "serve", config], stdout=log, stderr=log,
                                       stdin=subprocess.DEVNULL)
            log.close()
            self.processes.append(process)
            self._wait_ready(process, address, log.name)
            self.registries.append(address)

    def _wait_ready(self, process, address, log, timeout=30.0):
        deadline = time.monotonic() + timeout
        while not http_ok(address):
            if process.poll() is not None or time.monotonic() > deadline:
                with open(log, errors="replace") as f:
                    raise RuntimeError(f"docker-registry on {address} did not start:\n{f.read()[-4000:]}")
            time.sleep(0.05)

    def stop(self):
        for process in reversed(self.processes):
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


class SpeedyLocalCluster:
    """
    A Speedy cluster run by C{tools/speedy-cluster up} (the supervisor of
    L{speedy.localcluster}) on free ports: a chunkmaster, one replica group
    of three chunkservers and two imageservers on one SQLite file.
    """

    supports_referrers = True
    rejects_out_of_order_patch = True

    def __init__(self, workdir, extra_args=()):
        self.var = os.path.join(workdir, "var")
        self.extra_args = list(extra_args)
        self.supervisor = None
        self.registries = []

    def start(self, timeout=120.0):
        self.supervisor = subprocess.Popen(
            [sys.executable, TOOL, "up", "--var", self.var, "--registry", "127.0.0.1:0",
             "--master-port", "0", "--chunkserver-port", "0", "--imageservers", "2",
             "--chunk-size", str(CHUNK_SIZE), "--volume-size", "256MiB", "--cache-size", "32MiB",
             "--heartbeat-interval", "0.5", "--start-timeout", "60", *self.extra_args],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while True:
            state = localcluster.read_state(self.var)
            if state is not None and state["ready"]:
                self.registries = state["registries"]
                return
            if self.supervisor.poll() is not None or time.monotonic() > deadline:
                self.stop()
                output = self.supervisor.stdout.read().decode("utf-8", "replace")
                raise RuntimeError(f"the Speedy cluster did not start:\n{output[-8000:]}")
            time.sleep(0.1)

    def stop(self):
        if self.supervisor is not None and self.supervisor.poll() is None:
            self.supervisor.send_signal(signal.SIGTERM)
            try:
                self.supervisor.wait(60)
            except subprocess.TimeoutExpired:
                subprocess.run([sys.executable, TOOL, "down", "--var", self.var], timeout=60)
                self.supervisor.kill()
                self.supervisor.wait()


class SharedFixture:
    """
    Something expensive (a cluster, a set of image layouts) made once per
    test process on first use, and torn down when the process exits.  A
    failure (or a skip) to make it is remembered and raised in every test
    that asks, rather than retried.
    """

    def __init__(self, make):
        """@param make: called with a fresh temporary directory; returns the
        fixture."""
        self._make = make
        self._value = None
        self._error = None

    def get(self):
        """@return: the fixture, made on the first call."""
        if self._error is not None:
            raise self._error
        if self._value is None:
            workdir = tempfile.mkdtemp(prefix="speedy-e2e-")
            atexit.register(shutil.rmtree, workdir, True)
            try:
                self._value = self._make(workdir)
            except Exception as e:  # SkipTest too
                self._error = e
                raise
        return self._value


def _started(fixture):
    atexit.register(fixture.stop)
    fixture.start()
    return fixture


def _layouts(workdir):
    """The source image layouts every test class copies from."""
    layout = ImageLayout(os.path.join(workdir, "source"))
    big = layout.add_image([300_000, BIG_LAYER, 2 << 20], seed=1)
    small = layout.add_image([40_000, 70_000], seed=2)
    arm = layout.add_image([50_000], seed=3, platform={"os": "linux", "architecture": "arm64"})
    layout.tag(big, "big")
    layout.tag(small, "small")
    layout.tag(layout.add_index([small, arm]), "multi")
    return layout


LAYOUTS = SharedFixture(_layouts)


# --- the tests -------------------------------------------------------------------


class SkopeoMixin:
    """Copying images with skopeo to and from C{self.registry.registries}
    (two C{host:port} of one registry: two imageservers of a cluster, or
    two Distributions on one storage), and comparing them with the source."""

    #: a L{SharedFixture} of an object with C{registries},
    #: C{supports_referrers} and C{rejects_out_of_order_patch}.
    cluster = None

    def setUp(self):
        self.skopeo_path = require_tool("skopeo")
        self.layout = LAYOUTS.get()
        self.registry = self.cluster.get()
        self.first, self.second = self.registry.registries[:2]
        self.tmp = tempfile.mkdtemp(prefix="speedy-e2e-test-")
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.policy = os.path.join(self.tmp, "policy.json")
        with open(self.policy, "w") as f:
            json.dump({"default": [{"type": "insecureAcceptAnything"}]}, f)

    def skopeo(self, *args):
        """Run skopeo with a private policy, home and temp dir.
        @return: its stdout; fail the test with its stderr if it fails."""
        env = dict(os.environ, HOME=self.tmp, XDG_RUNTIME_DIR=self.tmp, TMPDIR=self.tmp)
        done = subprocess.run([self.skopeo_path, "--policy", self.policy, "--tmpdir", self.tmp, *args],
                              env=env, capture_output=True, timeout=300)
        if done.returncode != 0:
            self.fail(f"skopeo {' '.join(args)} failed ({done.returncode}):\n"
                      f"{done.stderr.decode('utf-8', 'replace')}")
        return done.stdout

    def copy_in(self, tag, reference, *flags):
        self.skopeo("copy", "--dest-tls-verify=false", "--preserve-digests", *flags,
                    f"oci:{self.layout.path}:{tag}", f"docker://{reference}")

    def copy_out(self, reference, tag, *flags):
        """@return: the path of a new layout holding the copy."""
        target = os.path.join(self.tmp, "copy-" + tag)
        self.skopeo("copy", "--src-tls-verify=false", "--preserve-digests", *flags,
                    f"docker://{reference}", f"oci:{target}:{tag}")
        return target

    def assertSameImage(self, target, tag):
        """The copy at C{target} names the source's manifest digest under
        C{tag}, holds the same bytes for every blob it holds, and holds
        every blob the source tag reaches."""
        wanted = layout_tags(self.layout.path)[tag]
        self.assertEqual(layout_tags(target), {tag: wanted})
        copied = layout_blobs(target)
        for digest, content in copied.items():
            self.assertEqual(content, digest, f"blob {digest} came back with different bytes")
        self.assertEqual(set(copied), self._reachable(wanted))

    def _reachable(self, digest):
        """@return: the digests of C{digest} and every blob it references in
        the source layout."""
        with open(self.layout.blob_path(digest), "rb") as f:
            manifest = json.load(f)
        found = {digest}
        for child in manifest.get("manifests", []):
            found |= self._reachable(child["digest"])
        for blob in [manifest.get("config")] + manifest.get("layers", []):
            if blob is not None:
                found.add(blob["digest"])
        return found


class RegistryClientTestsMixin(SkopeoMixin):
    """Real-client tests against a registry (see L{SkopeoMixin})."""

    def test_copy_big_image_in_and_out(self):
        """
        An image with a layer over 100 MiB goes into the registry through
        one imageserver and comes back out of another byte-identical, and
        C{skopeo inspect --raw} gets the manifest byte-exact.
        """
        self.copy_in("big", f"{self.first}/e2e/big:v1")
        target = self.copy_out(f"{self.second}/e2e/big:v1", "big")
        self.assertSameImage(target, "big")
        raw = self.skopeo("inspect", "--tls-verify=false", "--raw", f"docker://{self.first}/e2e/big:v1")
        self.assertEqual(sha256_digest(raw), layout_tags(self.layout.path)["big"])
        self.assertEqual(raw, self.source_manifest("big"))

    def source_manifest(self, tag):
        """@return: the bytes of the manifest C{tag} names in the source
        layout."""
        with open(self.layout.blob_path(layout_tags(self.layout.path)[tag]), "rb") as f:
            return f.read()

    def test_copy_multi_platform_index(self):
        """
        A multi-platform index and all its images go in and come back out
        with the same digests; the raw index is served byte-exact.
        """
        self.copy_in("multi", f"{self.first}/e2e/multi:v1", "--all")
        target = self.copy_out(f"{self.second}/e2e/multi:v1", "multi", "--all")
        self.assertSameImage(target, "multi")
        raw = RegistryClient(self.first).request("GET", "/v2/e2e/multi/manifests/v1", headers={"Accept": OCI_INDEX})
        self.assertEqual((raw.status, raw.header("Content-Type")), (200, OCI_INDEX))
        self.assertEqual(raw.body, self.source_manifest("multi"))

    def test_list_tags(self):
        """C{skopeo list-tags} lists every tag pushed, in lexical order."""
        self.copy_in("small", f"{self.first}/e2e/tags:v2")
        client = RegistryClient(self.second)
        for tag in ("latest", "v1"):
            self.assertEqual(client.push_manifest("e2e/tags", tag, self.source_manifest("small"), OCI_MANIFEST).status,
                             201)
        listed = json.loads(self.skopeo("list-tags", "--tls-verify=false", f"docker://{self.second}/e2e/tags"))
        self.assertEqual(listed["Tags"], ["latest", "v1", "v2"])

    def test_delete(self):
        """
        After C{skopeo delete}, the manifest is gone (404 by digest and by
        tag), and the same image mounted into another repository still pulls
        whole.
        """
        self.copy_in("small", f"{self.first}/e2e/doomed:v1")
        digest = layout_tags(self.layout.path)["small"]
        client = RegistryClient(self.first)
        blobs = self._reachable(digest) - {digest}
        for blob in blobs:
            client.mount_blob("e2e/kept", blob, "e2e/doomed")
        self.assertEqual(client.push_manifest("e2e/kept", "v1", self.source_manifest("small"), OCI_MANIFEST).status, 201)

        self.skopeo("delete", "--tls-verify=false", f"docker://{self.second}/e2e/doomed:v1")
        accept = {"Accept": OCI_MANIFEST}
        self.assertEqual(client.request("GET", f"/v2/e2e/doomed/manifests/{digest}", headers=accept).status, 404)
        self.assertEqual(client.request("GET", "/v2/e2e/doomed/manifests/v1", headers=accept).status, 404)
        kept = RegistryClient(self.second)
        self.assertEqual(kept.request("GET", "/v2/e2e/kept/manifests/v1", headers=accept).body,
                         self.source_manifest("small"))
        for blob in blobs:
            with open(self.layout.blob_path(blob), "rb") as f:
                self.assertEqual(kept.request("GET", f"/v2/e2e/kept/blobs/{blob}").body, f.read())

    def test_referrers_with_artifact_type_filter(self):
        """
        Artifacts pushed with a C{subject} are listed by
        C{GET /v2/<name>/referrers/<digest>}, with their artifactType and
        annotations, and the C{artifactType} filter keeps only the matching
        ones.
        """
        client = RegistryClient(self.first)
        repository = "e2e/referred"
        config = client.push_blob(repository, b'{"architecture":"amd64","os":"linux"}')
        layer = client.push_blob(repository, b"a layer")
        image = canonical_json({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": 37},
            "layers": [{"mediaType": OCI_LAYER_GZIP, "digest": layer, "size": 7}],
        })
        self.assertEqual(client.push_manifest(repository, "v1", image, OCI_MANIFEST).status, 201)
        subject = {"mediaType": OCI_MANIFEST, "digest": sha256_digest(image), "size": len(image)}
        empty = client.push_blob(repository, b"{}")
        artifacts = {}
        for kind, payload in (("sbom", b'{"packages":[]}'), ("signature", b"signed")):
            blob = client.push_blob(repository, payload)
            artifact_type = f"application/vnd.example.{kind}.v1"
            manifest = canonical_json({
                "schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": artifact_type,
                "config": {"mediaType": OCI_EMPTY, "digest": empty, "size": 2},
                "layers": [{"mediaType": "application/octet-stream", "digest": blob, "size": len(payload)}],
                "subject": subject,
                "annotations": {"org.example.kind": kind},
            })
            digest = sha256_digest(manifest)
            pushed = client.push_manifest(repository, digest, manifest, OCI_MANIFEST)
            self.assertEqual(pushed.status, 201, pushed.body)
            artifacts[digest] = (artifact_type, kind)
        listed = RegistryClient(self.second).request("GET", f"/v2/{repository}/referrers/{subject['digest']}")
        if not self.registry.supports_referrers:
            # The reference has no referrers API (Distribution 2.8): the
            # artifacts above pushed, and the listing is simply not there.
            self.assertEqual(listed.status, 404)
            return
        self.assertEqual(listed.status, 200, listed.body)
        index = listed.json()
        self.assertEqual(index["mediaType"], OCI_INDEX)
        self.assertEqual(
            {d["digest"]: (d["artifactType"], d["annotations"]["org.example.kind"]) for d in index["manifests"]},
            artifacts)

        filtered = client.request(
            "GET", f"/v2/{repository}/referrers/{subject['digest']}?artifactType=application/vnd.example.sbom.v1")
        self.assertEqual(filtered.status, 200, filtered.body)
        self.assertEqual(filtered.header("OCI-Filters-Applied"), "artifactType")
        self.assertEqual([(d["artifactType"], d["annotations"]["org.example.kind"])
                          for d in filtered.json()["manifests"]],
                         [("application/vnd.example.sbom.v1", "sbom")])

    def test_chunked_upload_across_imageservers(self):
        """
        A blob upload started with POST on one server continues with a
        streamed PATCH on the other, a PATCH with C{Content-Range} on the
        first, and is finished with a PUT carrying the last bytes on the
        second; both then serve the blob byte-identical.
        """
        data = random.Random(7).randbytes(2 * CHUNK_SIZE + 123_457)
        parts = [data[:CHUNK_SIZE + 1000], data[CHUNK_SIZE + 1000:2 * CHUNK_SIZE + 5], data[2 * CHUNK_SIZE + 5:]]
        first, second = RegistryClient(self.first), RegistryClient(self.second)
        repository = "e2e/chunked"

        started = first.request("POST", f"/v2/{repository}/blobs/uploads/")
        self.assertEqual(started.status, 202, started.body)
        patched = second.request("PATCH", location_path(started.header("Location")), parts[0],
                                 {"Content-Type": "application/octet-stream"})
        self.assertEqual(patched.status, 202, patched.body)
        self.assertEqual(patched.header("Range"), f"0-{len(parts[0]) - 1}")
        end = len(parts[0]) + len(parts[1])
        patched = first.request("PATCH", location_path(patched.header("Location")), parts[1],
                                {"Content-Type": "application/octet-stream",
                                 "Content-Range": f"{len(parts[0])}-{end - 1}"})
        self.assertEqual(patched.status, 202, patched.body)
        self.assertEqual(patched.header("Range"), f"0-{end - 1}")
        status = second.request("GET", location_path(patched.header("Location")))
        self.assertEqual((status.status, status.header("Range")), (204, f"0-{end - 1}"))
        digest = sha256_digest(data)
        done = second.request("PUT", with_query(status.header("Location"), digest=digest), parts[2],
                              {"Content-Type": "application/octet-stream"})
        self.assertEqual(done.status, 201, done.body)
        self.assertEqual(done.header("Docker-Content-Digest"), digest)

        for client in (first, second):
            pulled = client.request("GET", f"/v2/{repository}/blobs/{digest}")
            self.assertEqual(pulled.status, 200)
            self.assertEqual(len(pulled.body), len(data))
            self.assertEqual(hashlib.sha256(pulled.body).hexdigest(), hashlib.sha256(data).hexdigest())

    def test_bad_input_is_refused_and_loses_nothing(self):
        """
        Garbage bytes get an error or a closed connection, a PUT whose bytes
        do not match its digest is refused with DIGEST_INVALID, a body cut
        short by a dying client is never stored, an out-of-order PATCH gets
        416 (where the registry checks it), and the registry keeps serving:
        the same upload done right then works.
        """
        host, port = self.first.rsplit(":", 1)
        noise = random.Random(9).randbytes(4000) + b"\r\n\r\n"
        for garbage_bytes in [b"\x16\x03\x01\x00\xff" + noise, b"GARBAGE " + noise]:
            with socket.create_connection((host, int(port)), timeout=30) as garbage:
                try:
                    garbage.sendall(garbage_bytes)
                    garbage.shutdown(socket.SHUT_WR)
                    answer = garbage.recv(1 << 16)
                except OSError:
                    answer = b""  # the server hung up on it: as good as an error
            self.assertNotRegex(answer[:12], rb"^HTTP/1\.[01] 2")

        client = RegistryClient(self.first)
        repository = "e2e/bad"
        data = random.Random(8).randbytes(300_000)
        digest = sha256_digest(data)

        started = client.request("POST", f"/v2/{repository}/blobs/uploads/")
        wrong = client.request("PUT", with_query(started.header("Location"), digest=sha256_digest(b"other")),
                               data, {"Content-Type": "application/octet-stream"})
        self.assertEqual(wrong.status, 400)
        self.assertIn("DIGEST_INVALID", [e["code"] for e in wrong.json()["errors"]])
        self.assertEqual(client.request("HEAD", f"/v2/{repository}/blobs/{sha256_digest(b'other')}").status, 404)

        started = client.request("POST", f"/v2/{repository}/blobs/uploads/")
        self.send_truncated_put(with_query(started.header("Location"), digest=digest), data)
        self.assertEqual(client.request("HEAD", f"/v2/{repository}/blobs/{digest}").status, 404)

        if self.registry.rejects_out_of_order_patch:
            started = client.request("POST", f"/v2/{repository}/blobs/uploads/")
            skipped = client.request("PATCH", location_path(started.header("Location")), data[1000:2000],
                                     {"Content-Type": "application/octet-stream",
                                      "Content-Range": "1000-1999"})
            self.assertEqual(skipped.status, 416)

        self.assertEqual(client.push_blob(repository, data), digest)
        pulled = RegistryClient(self.second).request("GET", f"/v2/{repository}/blobs/{digest}")
        self.assertEqual(pulled.body, data)

    def send_truncated_put(self, path, data):
        """PUT announcing all of C{data} but sending half, then hang up."""
        host, port = self.first.rsplit(":", 1)
        connection = http.client.HTTPConnection(host, int(port), timeout=30)
        try:
            connection.putrequest("PUT", path)
            connection.putheader("Content-Type", "application/octet-stream")
            connection.putheader("Content-Length", str(len(data)))
            connection.endheaders()
            connection.send(data[: len(data) // 2])
        finally:
            connection.close()
        self.assertTrue(http_ok(self.first), "the registry stopped answering after a client hung up")


class SpeedyRegistryClientTests(RegistryClientTestsMixin, SynchronousTestCase):
    """The real-client tests against a Speedy local cluster."""

    cluster = SharedFixture(lambda workdir: _started(SpeedyLocalCluster(workdir)))


class DistributionRegistryClientTests(RegistryClientTestsMixin, SynchronousTestCase):
    """The same tests against CNCF Distribution 2.8, the reference."""

    cluster = SharedFixture(lambda workdir: _started(DistributionRegistries(workdir)))
