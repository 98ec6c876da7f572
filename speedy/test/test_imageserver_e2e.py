"""
End-to-end: a chunkmaster, two groups of three chunkservers and two
imageservers as real processes on loopback.  A file written through one
imageserver is read through the other; a chunkserver killed during an
upload or a download costs nothing; a damaged replica is read around and
reported.

Starting a cluster is most of the cost, so each test starts one and runs a
few scenarios on it.
"""

import glob
import hashlib
import io
import json
import os
import shutil
import tempfile
import time
import urllib.request

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.internet.protocol import Protocol
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, FileBodyProducer, HTTPConnectionPool
from twisted.web.http_headers import Headers
from twisted.web.iweb import IBodyProducer, UNKNOWN_LENGTH
from zope.interface import implementer

from speedy.chunkserver.tap import server_id as chunkserver_id
from speedy.chunkserver.volume import HEADER_SIZE, RecordHeader
from speedy.imageserver.clusterview import ServerView
from speedy.imageserver.placement import preferred_replica
from speedy.metadata import open_store
from speedy.errors import ChunkNotFound
from speedy.test.processes import Daemon, free_port
from speedy.test.util import TEST_SECRET
from speedy.wire.client import ChunkClient

MiB = 1 << 20


class Cluster:
    """The processes, started once for the module."""

    def __init__(self, imageserver_args=()):
        self.workdir = tempfile.mkdtemp(prefix="speedy-imageserver-e2e-")
        self.db = "sqlite:" + os.path.join(self.workdir, "meta.db")
        self.daemons = []
        master_port = free_port()
        self.master_url = f"http://127.0.0.1:{master_port}"
        self._start("speedy-chunkmaster", master_port, "master", [
            "--db", self.db, "--heartbeat-timeout", "3",
            # Damage stays recorded for these tests to see; repairs are
            # test_selfheal_e2e's.
            "--repair-parallelism", "0"])
        self.chunkservers = []
        for i in range(6):
            port = free_port()
            self.chunkservers.append(self._start("speedy-chunkserver", port, f"cs{i}", [
                "--data-dir", os.path.join(self.workdir, f"cs{i}"), "--group-id", str(i // 3 + 1),
                "--master", self.master_url,
                "--volume-size", "64MiB", "--reserve", "1MiB", "--heartbeat-interval", "0.5",
                "--cache-size", "32MiB"]))
        self.imageservers = []
        self.imageserver_daemons = []
        for i in range(2):
            port = free_port()
            self.imageserver_daemons.append(self._start("speedy-imageserver", port, f"is{i}", [
                "--master", self.master_url, "--db", self.db,
                "--chunk-size", "1MiB", "--request-timeout", "5", *imageserver_args]))
            self.imageservers.append(f"http://127.0.0.1:{port}")
        self.wait_writable(2)

    def _start(self, plugin, port, name, args):
        daemon = Daemon(plugin, ["--listen", f"tcp:{port}:interface=127.0.0.1"] + args,
                        port=port, workdir=self.workdir, name=name)
        self.daemons.append(daemon)
        try:
            daemon.start()
        except Exception:
            self.stop()
            raise
        return daemon

    def wait_writable(self, groups, timeout=60.0):
        """Block until every imageserver sees C{groups} writable groups."""
        deadline = time.monotonic() + timeout
        for base in self.imageservers:
            while True:
                try:
                    with urllib.request.urlopen(base + "/v1/health", timeout=2) as r:
                        if json.loads(r.read())["writable_groups"] >= groups:
                            break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{base} never saw {groups} writable groups:\n"
                                       + self.daemons[-1].log())
                time.sleep(0.1)

    def stop(self):
        for daemon in reversed(self.daemons):
            daemon.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)


@implementer(IBodyProducer)
class SteppedBody:
    """A request body written in 1 MiB pieces, one per reactor turn, calling
    C{at_piece(n)} before piece n."""

    length = UNKNOWN_LENGTH

    def __init__(self, data, at_piece=lambda n: None):
        self._data = data
        self._at_piece = at_piece
        self._paused = False
        self._call = None

    def startProducing(self, consumer):
        self._consumer = consumer
        self._done = Deferred()
        self._n = 0
        self._next()
        return self._done

    def _next(self):
        self._call = None
        if self._paused:
            return
        if self._n * MiB >= len(self._data):
            self._done.callback(None)
            return
        self._at_piece(self._n)
        self._consumer.write(self._data[self._n * MiB:(self._n + 1) * MiB])
        self._n += 1
        self._call = reactor.callLater(0, self._next)

    def pauseProducing(self):
        self._paused = True

    def resumeProducing(self):
        self._paused = False
        if self._call is None:
            self._next()

    def stopProducing(self):
        if self._call is not None:
            self._call.cancel()
            self._call = None


class Collect(Protocol):
    """Collects a response body, calling C{at_bytes(received)} as it grows."""

    def __init__(self, at_bytes=lambda n: None):
        self.pieces = []
        self.received = 0
        self.at_bytes = at_bytes
        self.done = Deferred()

    def dataReceived(self, data):
        self.pieces.append(data)
        self.received += len(data)
        self.at_bytes(self.received)

    def connectionLost(self, reason):
        self.done.callback(b"".join(self.pieces))


class EndToEndTests(TestCase):
    imageserver_args = ()

    def setUp(self):
        self.cluster = Cluster(self.imageserver_args)
        self.addCleanup(self.cluster.stop)
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(pool.closeCachedConnections)
        self.agent = Agent(reactor, pool=pool)

    async def put(self, base, path, data, at_piece=lambda n: None):
        response = await self.agent.request(
            b"PUT", f"{base}/v1/files/{path}".encode(), None, SteppedBody(data, at_piece))
        body = Collect()
        response.deliverBody(body)
        return response.code, await body.done

    async def get(self, base, path, at_bytes=lambda n: None, headers=None):
        response = await self.agent.request(b"GET", f"{base}/v1/files/{path}".encode(), headers)
        body = Collect(at_bytes)
        response.deliverBody(body)
        return response.code, await body.done

    async def test_write_here_read_there_and_damage(self):
        """
        A file written through one imageserver reads back through the other;
        then a damaged replica is read around and reported.
        """
        await self.write_here_read_there()
        await self.damaged_replica()
        last_file_id = await self.failed_read_traced()
        await self.chunked_push_traced(last_file_id)

    async def test_chunkservers_killed(self):
        """Chunkservers die during an upload and during a download; neither
        notices."""
        await self.killed_mid_upload()
        await self.killed_mid_download()

    async def write_here_read_there(self):
        data = os.urandom(5 * MiB + 12345)
        a, b = self.cluster.imageservers
        code, answer = await self.put(a, "e2e/one", data)
        self.assertEqual(code, 201, answer)
        self.assertEqual(json.loads(answer)["sha256"], hashlib.sha256(data).hexdigest())
        code, body = await self.get(b, "e2e/one")
        self.assertEqual(code, 200)
        self.assertTrue(body == data, "the file read back differs")

    async def killed_mid_upload(self):
        """
        A member of group 1 dies while a 12 MiB upload is under way: the
        upload still succeeds (its chunks go to group 2) and reads back.
        """
        data = os.urandom(12 * MiB)
        a, b = self.cluster.imageservers
        victim = self.cluster.chunkservers[0]

        def at_piece(n):
            if n == 4:
                victim.kill()

        code, answer = await self.put(a, "e2e/kill-up", data, at_piece)
        self.assertEqual(code, 201, answer)
        self.assertFalse(victim.running)
        self.assertIn("not stored on all of group 1", self.cluster.imageserver_daemons[0].log(),
                      "no chunk met the dead server")
        code, body = await self.get(b, "e2e/kill-up")
        self.assertTrue(code == 200 and body == data, "the file read back differs")

    async def killed_mid_download(self):
        """
        A member of group 2 dies while a file on it is being downloaded:
        the download completes from the other replicas.
        """
        self.cluster.wait_writable(1)
        data = os.urandom(10 * MiB)
        a, b = self.cluster.imageservers
        code, _ = await self.put(a, "e2e/kill-down", data)
        self.assertEqual(code, 201)
        victim = self.cluster.chunkservers[3]

        def at_bytes(n):
            if n >= 2 * MiB and victim.running:
                victim.kill()

        code, body = await self.get(b, "e2e/kill-down", at_bytes)
        self.assertFalse(victim.running)
        self.assertTrue(code == 200 and body == data, "the file read back differs")

    async def damaged_replica(self):
        """
        A byte flipped in two of the three replicas of a chunk, the one its
        reads go to first among them: every read is still correct (from the
        third), and the damage is recorded for repair.
        """
        marker = b"speedy-e2e-marker!" * 64
        data = (marker + os.urandom(100)) * 100
        a, b = self.cluster.imageservers
        code, _ = await self.put(a, "e2e/damaged", data)
        self.assertEqual(code, 201)
        replicas = {}  # server id -> the volume file holding the chunk
        file_id = None
        for i, daemon in enumerate(self.cluster.chunkservers):
            data_dir = os.path.join(self.cluster.workdir, f"cs{i}")
            for path in glob.glob(os.path.join(data_dir, "volume-*")):
                header = _header_before(path, marker)
                if header is not None:
                    replicas[chunkserver_id(data_dir)] = path
                    file_id = header.file_id
        self.assertEqual(len(replicas), 3)
        keeper = preferred_replica(
            [ServerView(sid, "", "RW") for sid in sorted(replicas)], file_id).server_id
        other = min(sid for sid in replicas if sid != keeper)
        for sid in (keeper, other):
            self.assertTrue(_flip_after(replicas[sid], marker))
        for _ in range(10):
            code, body = await self.get(b, "e2e/damaged")
            self.assertTrue(code == 200 and body == data, "a damaged read got through")
        store = open_store(self.cluster.db, reactor)
        await store.start()
        try:
            bad = await store.list_bad_replicas()
        finally:
            await store.close()
        self.assertTrue(bad, "no bad replica was recorded")


    async def failed_read_traced(self):
        """
        A read that fails (its chunk deleted from every replica behind the
        imageserver's back) is traced across daemons: the request id the
        client sent comes back in the error body, and the chunkservers'
        log lines about the chunk carry it.
        """
        marker = b"speedy-e2e-traced!" * 64
        data = marker + os.urandom(1000)
        a, b = self.cluster.imageservers
        code, _ = await self.put(a, "e2e/traced", data)
        self.assertEqual(code, 201)
        file_id = None
        for i in range(len(self.cluster.chunkservers)):
            for path in glob.glob(os.path.join(self.cluster.workdir, f"cs{i}", "volume-*")):
                header = _header_before(path, marker)
                if header is not None:
                    file_id = header.file_id
        self.assertIsNotNone(file_id)
        client = ChunkClient(reactor, secret=TEST_SECRET)
        try:
            for daemon in self.cluster.chunkservers:
                try:
                    await client.delete(f"127.0.0.1:{daemon.port}", file_id)
                except ChunkNotFound:
                    pass
        finally:
            await client.close()
        rid = "e2e-failed-pull-" + os.urandom(4).hex()
        code, body = await self.get(b, "e2e/traced",
                                    headers=Headers({b"x-request-id": [rid.encode()]}))
        self.assertGreaterEqual(code, 400, body)
        self.assertEqual(json.loads(body)["request_id"], rid)
        await self.assert_a_chunkserver_logged(rid)
        return file_id

    async def chunked_push_traced(self, last_file_id):
        """
        A blob pushed as a PATCH and a final PUT is traced across daemons
        too: the PATCH's first chunk, whose file id (the next the first
        imageserver hands out, after C{last_file_id}) was taken behind its
        back on every chunkserver, is refused by one, which logs the
        refusal with the PATCH's request id; the chunk is stored elsewhere
        and the blob reads back.  The PATCH's body reaches its chunks from
        the connection and from acknowledgements, outside its handler.
        """
        a, b = self.cluster.imageservers
        client = ChunkClient(reactor, secret=TEST_SECRET)
        try:
            for daemon in self.cluster.chunkservers:
                await client.put(f"127.0.0.1:{daemon.port}", last_file_id + 1, b"planted")
        finally:
            await client.close()
        rid = "e2e-chunked-push-" + os.urandom(4).hex()
        data = os.urandom(2 * MiB + 12345)
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        code, headers, _ = await self.call(a, b"POST", "/v2/e2e/pushed/blobs/uploads/")
        self.assertEqual(code, 202)
        location = headers.getRawHeaders(b"location")[0].decode()
        patch = data[:2 * MiB]
        code, _, body = await self.call(a, b"PATCH", location, patch, {
            b"x-request-id": [rid.encode()],
            b"content-range": [f"0-{len(patch) - 1}".encode()],
            b"content-type": [b"application/octet-stream"]})
        self.assertEqual(code, 202, body)
        code, _, body = await self.call(a, b"PUT", f"{location}?digest={digest}",
                                        data[len(patch):])
        self.assertEqual(code, 201, body)
        code, _, body = await self.call(b, b"GET", f"/v2/e2e/pushed/blobs/{digest}")
        self.assertTrue(code == 200 and body == data, "the blob read back differs")
        await self.assert_a_chunkserver_logged(rid)

    async def assert_a_chunkserver_logged(self, rid):
        """Some chunkserver's log names request C{rid} within 10 s."""
        needle = f"(request {rid})"
        deadline = time.monotonic() + 10
        while True:
            traced = [d.name for d in self.cluster.chunkservers
                      if needle in open(d.log_path, errors="replace").read()]
            if traced or time.monotonic() > deadline:
                break
            await deferLater(reactor, 0.1)
        self.assertTrue(traced, f"no chunkserver logged {needle}")

    async def call(self, base, method, path, data=None, headers=None):
        """@return: the status, headers and body of a request with a body
        of known length (or none)."""
        body = None if data is None else FileBodyProducer(io.BytesIO(data))
        response = await self.agent.request(method, f"{base}{path}".encode(),
                                            Headers(headers or {}), body)
        collected = Collect()
        response.deliverBody(collected)
        return response.code, response.headers, await collected.done


def _header_before(path, marker):
    """@return: the L{RecordHeader} of the record whose data starts with the
    first C{marker} in the volume file at C{path}, or None."""
    with open(path, "rb") as f:
        content = f.read()
    at = content.find(marker)
    if at < HEADER_SIZE:
        return None
    return RecordHeader.unpack(content[at - HEADER_SIZE:at])


def _flip_after(path, marker):
    """Flip the byte after the first C{marker} in the file at C{path}.
    @return: True if the marker was found."""
    with open(path, "r+b") as f:
        content = f.read()
        at = content.find(marker)
        if at < 0:
            return False
        f.seek(at + len(marker))
        byte = content[at + len(marker)]
        f.write(bytes([byte ^ 0xFF]))
    return True

