"""
End-to-end: a chunkmaster and an imageserver as real processes on loopback,
with short header and idle timeouts and a small per-client connection
limit, against clients that are slow, greedy or malformed.  Every bad
request gets its 4xx, and both daemons go on serving.
"""

import json
import os
import shutil
import socket
import tempfile
import time

from twisted.trial.unittest import SynchronousTestCase

from speedy.test.processes import Daemon, free_port

LIMITS = ["--header-timeout", "1", "--idle-timeout", "2", "--max-connections-per-client", "4"]


def answer(sock, timeout=5.0):
    """@return: what the server sends until it closes C{sock} (or
    C{timeout} passes)."""
    sock.settimeout(timeout)
    data = b""
    try:
        while True:
            piece = sock.recv(65536)
            if not piece:
                break
            data += piece
    except (socket.timeout, ConnectionResetError):
        pass
    sock.close()
    return data


class HTTPLimitsEndToEndTests(SynchronousTestCase):

    def setUp(self):
        self.workdir = tempfile.mkdtemp(prefix="speedy-http-limits-e2e-")
        self.addCleanup(shutil.rmtree, self.workdir, ignore_errors=True)
        db = "sqlite:" + os.path.join(self.workdir, "meta.db")
        master_port, image_port = free_port(), free_port()
        self.master = self._start("speedy-chunkmaster", master_port, ["--db", db] + LIMITS)
        self.imageserver = self._start("speedy-imageserver", image_port, [
            "--master", f"http://127.0.0.1:{master_port}", "--db", db] + LIMITS)

    def _start(self, plugin, port, args):
        daemon = Daemon(plugin, ["--listen", f"tcp:{port}:interface=127.0.0.1"] + args,
                        port=port, workdir=self.workdir)
        self.addCleanup(daemon.stop)
        return daemon.start()

    def connect(self, daemon):
        sock = socket.create_connection(("127.0.0.1", daemon.port), timeout=5)
        self.addCleanup(sock.close)
        return sock

    def request(self, daemon, data):
        sock = self.connect(daemon)
        sock.sendall(data)
        return answer(sock)

    def assertServing(self):
        """Both daemons still answer an ordinary request."""
        for daemon, path in ((self.master, b"/v1/cluster"), (self.imageserver, b"/v2/")):
            reply = self.request(daemon, b"GET " + path + b" HTTP/1.1\r\nHost: t\r\n"
                                 b"Connection: close\r\n\r\n")
            self.assertRegex(reply.split(b"\r\n")[0], rb"HTTP/1.1 [24]0\d ", daemon.log())

    def test_unfinished_headers_time_out(self):
        """Connections that never finish their headers are answered 408 and
        closed after the header timeout (1 s), on both daemons."""
        for daemon in (self.master, self.imageserver):
            socks = [self.connect(daemon) for _ in range(3)]
            for sock in socks:
                sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\nX-Slow: ")
            started = time.monotonic()
            replies = [answer(sock) for sock in socks]
            self.assertLess(time.monotonic() - started, 4.5)
            for reply in replies:
                self.assertTrue(reply.startswith(b"HTTP/1.1 408 "), reply)
        self.assertServing()

    def test_idle_connection_closed(self):
        sock = self.connect(self.imageserver)
        sock.sendall(b"GET /v2/ HTTP/1.1\r\nHost: t\r\n\r\n")
        started = time.monotonic()
        reply = answer(sock, timeout=6)
        self.assertIn(b"HTTP/1.1 200 ", reply)
        self.assertLess(time.monotonic() - started, 5)

    def test_per_client_limit(self):
        """A fifth connection from one address is answered 429; once one
        closes, a new one is served; another address is not counted."""
        time.sleep(0.3)  # the server has seen the start's probe connection close
        held = [self.connect(self.imageserver) for _ in range(4)]
        time.sleep(0.2)
        reply = answer(self.connect(self.imageserver))
        self.assertTrue(reply.startswith(b"HTTP/1.1 429 "), reply)
        held.pop().close()
        time.sleep(0.2)
        other = socket.create_connection(("127.0.0.1", self.imageserver.port),
                                         source_address=("127.0.0.2", 0))
        self.addCleanup(other.close)
        other.sendall(b"GET /v2/ HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        self.assertIn(b" 200 ", answer(other))
        for sock in held:
            sock.close()
        time.sleep(0.2)
        self.assertServing()

    def test_malformed_requests(self):
        """414 for a 100 KB URL, 431 for a 100 KB header, 400 without
        Host, 413 for a manifest declaring 5 MiB before any of it is sent,
        400 MANIFEST_INVALID for JSON nested 100,000 deep."""
        server = self.imageserver
        reply = self.request(server, b"GET /v2/" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: t\r\n\r\n")
        self.assertTrue(reply.startswith(b"HTTP/1.1 414 "), reply[:200])
        reply = self.request(server, b"GET /v2/ HTTP/1.1\r\nHost: t\r\nX-Big: "
                             + b"b" * 100_000 + b"\r\n\r\n")
        self.assertTrue(reply.startswith(b"HTTP/1.1 431 "), reply[:200])
        reply = self.request(server, b"GET /v2/ HTTP/1.1\r\n\r\n")
        self.assertTrue(reply.startswith(b"HTTP/1.1 400 "), reply[:200])
        reply = self.request(self.master, b"GET /v1/cluster HTTP/1.1\r\n\r\n")
        self.assertTrue(reply.startswith(b"HTTP/1.1 400 "), reply[:200])

        sock = self.connect(server)
        sock.sendall(b"PUT /v2/a/manifests/t HTTP/1.1\r\nHost: t\r\n"
                     b"Content-Type: application/vnd.oci.image.manifest.v1+json\r\n"
                     b"Content-Length: %d\r\n\r\n" % (5 << 20))
        reply = answer(sock, timeout=3)
        self.assertTrue(reply.startswith(b"HTTP/1.1 413 "), reply[:200])
        self.assertIn(b"SIZE_INVALID", reply)

        nested = b"[" * 100_000 + b"]" * 100_000
        reply = self.request(server, b"PUT /v2/a/manifests/t HTTP/1.1\r\nHost: t\r\n"
                             b"Content-Type: application/vnd.oci.image.manifest.v1+json\r\n"
                             b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(nested)
                             + nested)
        self.assertTrue(reply.startswith(b"HTTP/1.1 400 "), reply[:300])
        body = json.loads(reply.split(b"\r\n\r\n", 1)[1])
        self.assertEqual(body["errors"][0]["code"], "MANIFEST_INVALID")
        self.assertServing()
