"""
End to end: the real C{twistd speedy-chunkserver} process with the real
chunk store on loopback, driven by L{ChunkClient}.
"""

import os
import socket
from importlib.util import find_spec

from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.trial.unittest import SkipTest, TestCase

from speedy.errors import (
    BadRequest, ChunkExists, ChunkNotFound, ConnectionFailed, Unauthenticated, Unavailable)
from speedy.test.processes import TEST_SECRET, Daemon, free_port
from speedy.test.test_chunkserver_protocol import error_code, parse_frames
from speedy.wire.client import ChunkClient
from speedy.wire.frames import (
    FILE_ID, FLAG_ERROR, FLAG_RESPONSE, OP_AUTH, OP_DELETE, OP_PING, frame)
from speedy.wire.handshake import NONCE_SIZE, client_proof, new_nonce

STORE_MISSING = None if find_spec("speedy.chunkserver.store") else (
    "speedy.chunkserver.store (the real ChunkStore the daemon runs) has not landed yet")


class ChunkserverProcessTests(TestCase):

    def setUp(self):
        if STORE_MISSING:
            raise SkipTest(STORE_MISSING)
        self.workdir = os.path.abspath(self.mktemp())
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.daemon = Daemon(
            "speedy-chunkserver",
            ["--data-dir", os.path.join(self.workdir, "data"),
             "--listen", f"tcp:{self.port}:interface=127.0.0.1",
             "--group-id", "1", "--volume-size", "64MiB", "--reserve", "0",
             "--cache-size", "32MiB"],
            port=self.port, workdir=self.workdir)
        self.daemon.start()
        self.addCleanup(self.daemon.stop)
        self.client = ChunkClient(reactor, connect_timeout=2.0, request_timeout=10.0,
                                  secret=TEST_SECRET)
        self.addCleanup(self.client.close)

    async def ready(self, attempts=100):
        """Wait until the daemon answers STATUS (its store is open)."""
        for _ in range(attempts):
            try:
                return await self.client.status(self.address)
            except (ConnectionFailed, Unavailable):
                await deferLater(reactor, 0.05)
        self.fail(f"chunkserver never became ready:\n{self.daemon.log()}")

    def garbage(self, data, secret=TEST_SECRET):
        """
        Send C{data} on a raw socket, after the handshake with C{secret}
        (none with None).

        @return: the first frame that comes back and whether the server
            then closed the connection.
        """
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
            if secret is not None:
                nonce = new_nonce()
                s.sendall(frame(OP_AUTH, 1, nonce))
                answer = b""
                while not parse_frames(answer)[0]:
                    answer += s.recv(65536)
                [(header, challenge)] = parse_frames(answer)[0]
                s.sendall(frame(OP_AUTH, 0, client_proof(secret, nonce, challenge[:NONCE_SIZE])))
            s.sendall(data)
            answer = b""
            while not parse_frames(answer)[0]:
                answer += s.recv(65536)
            s.settimeout(0.5)
            try:
                closed = s.recv(65536) == b""
            except TimeoutError:
                closed = False
        return parse_frames(answer)[0][0], closed

    async def test_requests(self):
        """Every request works against the real daemon, a 16 MiB chunk
        round-trips byte for byte, and garbage on another connection harms
        nothing."""
        await self.ready()
        big = os.urandom(1 << 20) * 15 + os.urandom(1 << 20)
        info = await self.client.put(self.address, 1, big)
        self.assertEqual(info.size, 16 << 20)
        self.assertTrue(await self.client.get(self.address, 1) == big, "16 MiB chunk differs")
        self.assertEqual(await self.client.get(self.address, 1, 1000, 5000), big[1000:6000])
        self.assertEqual(await self.client.stat(self.address, 1), info)
        self.assertEqual(await self.client.put(self.address, 1, big), info)  # a retry
        with self.assertRaises(ChunkExists):
            await self.client.put(self.address, 1, b"other bytes")
        await self.client.put(self.address, 2, b"small")
        self.assertEqual(await self.client.list(self.address), [1, 2])
        status = await self.client.status(self.address)
        self.assertEqual(status["chunks"], 2)
        self.assertIsInstance(await self.client.ping(self.address), float)

        (header, body), closed = self.garbage(os.urandom(3) + b"\x00" * 64)
        self.assertEqual(header.flags, FLAG_RESPONSE | FLAG_ERROR)
        self.assertEqual(error_code(body), BadRequest.code)
        self.assertTrue(closed)
        (header, body), closed = self.garbage(frame(77, 5, b"body of nothing") + frame(OP_PING, 6)[:10])
        self.assertEqual((header.request_id, error_code(body)), (5, BadRequest.code))
        self.assertFalse(closed)

        # Without the cluster secret, nothing gets in: not a DELETE, not a
        # handshake with a guessed secret (random bytes are not even frames).
        for data, secret in [(frame(OP_DELETE, 1, FILE_ID.pack(1)), None),
                             (frame(OP_DELETE, 1, FILE_ID.pack(1)), "a guessed secret, long enough")]:
            (header, body), closed = self.garbage(data, secret)
            self.assertEqual(error_code(body), Unauthenticated.code)
            self.assertTrue(closed)
        (header, body), closed = self.garbage(b"\x00" * 4096, None)
        self.assertEqual(error_code(body), BadRequest.code)
        self.assertTrue(closed)
        # Random bytes first are a failed handshake too: three, each logged
        # with the peer and the reason.
        self.assertEqual((await self.client.status(self.address))["wire"]["handshake_failures"], 3)
        with open(self.daemon.log_path, errors="replace") as f:
            log = f.read()
        self.assertEqual(log.count("refused connection from"), 3, log)
        self.assertIn("not a frame of this protocol (bad magic", log)
        self.assertIn("DELETE before the handshake", log)
        self.assertIn("wrong proof", log)
        self.assertEqual(await self.client.stat(self.address, 1), info)

        await self.client.delete(self.address, 2)
        with self.assertRaises(ChunkNotFound):
            await self.client.get(self.address, 2)
        self.assertEqual(await self.client.get(self.address, 1, 0, 10), big[:10])
        self.assertTrue(self.daemon.running)

    async def test_crash_keeps_data(self):
        """kill -9 and a restart on the same data directory lose nothing
        that was acknowledged, and the same client reconnects."""
        await self.ready()
        chunks = {i: os.urandom(100_000 + i) for i in range(1, 6)}
        for file_id, data in chunks.items():
            await self.client.put(self.address, file_id, data)
        await self.client.delete(self.address, 3)
        self.daemon.kill()
        self.daemon.start()
        await deferLater(reactor, 0.3)  # the client sees its connections drop
        await self.ready()
        self.assertEqual(await self.client.list(self.address), [1, 2, 4, 5])
        for file_id in (1, 2, 4, 5):
            self.assertEqual(await self.client.get(self.address, file_id), chunks[file_id])
