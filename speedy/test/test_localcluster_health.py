"""
Tests for L{speedy.localcluster.health}: what counts as a healthy role (its
health URL's answer, its port accepting connections, a worker listening on
its shared port itself), and that a bad answer is only "unhealthy".
"""

import os
import socket
import subprocess
import sys

from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource

from speedy import localcluster
from speedy.localcluster import Health, HealthProbe, Role
from speedy.test.processes import free_port


class JSONResource(Resource):
    isLeaf = True

    def __init__(self, body, code=200):
        super().__init__()
        self.body = body
        self.code = code

    def render_GET(self, request):
        request.setResponseCode(self.code)
        return self.body


class HealthProbeTests(SynchronousTestCase):
    """What counts as healthy, and that a bad answer is only "unhealthy"."""

    master = Role("chunkmaster", "speedy-chunkmaster", (), "127.0.0.1", 8099,
                  health_url="http://127.0.0.1:8099/v1/health")
    image = Role("imageserver-1", "speedy-imageserver", (), "127.0.0.1", 5000,
                 health_url="http://127.0.0.1:5000/v1/health", needs_writable_group=True)

    def check(self, role, body, code=200):
        clock = MemoryReactorClock()
        stub = StubTreq(JSONResource(body, code))
        d = HealthProbe(clock, stub).check(role)
        stub.flush()
        self.assertEqual(clock.getDelayedCalls(), [])
        return self.successResultOf(d)

    def test_master_ok(self):
        self.assertEqual(self.check(self.master, b'{"ok": true}'), Health(True))

    def test_imageserver_needs_a_writable_group(self):
        health = self.check(self.image, b'{"ok": true, "writable_groups": 0}')
        self.assertFalse(health.healthy)
        self.assertIn("writable", health.detail)
        self.assertTrue(self.check(self.image, b'{"ok": true, "writable_groups": 2}').healthy)

    def test_readyz(self):
        """A /readyz answer: ready is what counts, and an imageserver's
        cluster_view check must count a writable group; a 503 says which
        check fails."""
        ready = b'{"ready": true, "checks": {"cluster_view": {"ok": true, "writable_groups": %d}}}'
        self.assertEqual(self.check(self.image, ready % 1), Health(True))
        health = self.check(self.image, ready % 0)
        self.assertFalse(health.healthy)
        self.assertIn("writable_groups=0", health.detail)
        health = self.check(self.image, b'{"ready": false, "checks": {"cluster_view": '
                                         b'{"ok": false, "detail": "no view yet"}}}', 503)
        self.assertFalse(health.healthy)
        self.assertIn("503 (cluster_view: no view yet)", health.detail)
        self.assertEqual(self.check(self.master, b'{"ready": true, "checks": {}}'), Health(True))

    def test_bad_answers_are_unhealthy(self):
        for body, code in ((b'{"ok": true}', 503), (b"\x00\xffgarbage", 200), (b"[1, 2]", 200),
                           (b'{"ok": "yes"}', 200), (b'{"ok": true, "writable_groups": "1"}', 200)):
            self.assertFalse(self.check(self.image, body, code).healthy, (body, code))

    def test_http_timeout(self):
        """A health URL that never answers is unhealthy once the timeout
        passes, and leaves no timer behind."""
        clock = MemoryReactorClock()

        class Silent:
            """An HTTP client whose requests never get an answer: treq
            cancels them at their timeout."""

            def get(self, url, reactor, timeout):
                pending = Deferred()
                reactor.callLater(timeout, pending.cancel)
                return pending

        d = HealthProbe(clock, Silent(), timeout=2).check(self.master)
        self.assertNoResult(d)
        clock.advance(2)
        health = self.successResultOf(d)
        self.assertFalse(health.healthy)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_worker_must_listen_itself(self):
        """
        A worker sharing its port is unhealthy while its own process does
        not listen on it, whatever the port answers (another worker may be
        answering), and the port is not even asked; once it listens, the
        port's health answer counts.
        """
        worker = Role("imageserver-1.2", "speedy-imageserver", (), "127.0.0.1", free_port(),
                      health_url="http://127.0.0.1:5000/v1/health", needs_writable_group=True,
                      shares_port=True)
        stub = StubTreq(JSONResource(b'{"ok": true, "writable_groups": 1}'))
        health = self.successResultOf(HealthProbe(MemoryReactorClock(), stub).check(worker, os.getpid()))
        self.assertFalse(health.healthy)
        self.assertIn(f"does not listen on port {worker.port}", health.detail)
        with socket.socket() as listening:
            listening.bind(("127.0.0.1", worker.port))
            listening.listen()
            d = HealthProbe(MemoryReactorClock(), stub).check(worker, os.getpid())
            stub.flush()
            self.assertEqual(self.successResultOf(d), Health(True))

    def test_listening_ports(self):
        """C{listening_ports} finds a process's listening TCP sockets, and
        nothing for a process that is gone."""
        with socket.socket() as listening, socket.socket() as bound:
            listening.bind(("127.0.0.1", 0))
            listening.listen()
            bound.bind(("127.0.0.1", 0))
            ports = localcluster.listening_ports(os.getpid())
            self.assertIn(listening.getsockname()[1], ports)
            self.assertNotIn(bound.getsockname()[1], ports)
        child = subprocess.Popen([sys.executable, "-c", ""])
        child.wait()
        self.assertEqual(localcluster.listening_ports(child.pid), set())

    def test_port_open(self):
        """A role without a health URL is healthy once its port accepts a
        connection, which the probe then closes."""
        reactor = MemoryReactorClock()
        role = Role("chunkserver-1", "speedy-chunkserver", (), "127.0.0.1", 8001)
        d = HealthProbe(reactor, None).check(role)
        host, port, factory, _, _ = reactor.tcpClients[0]
        self.assertEqual((host, port), ("127.0.0.1", 8001))
        transport = StringTransport()
        factory.buildProtocol(None).makeConnection(transport)
        self.assertEqual(self.successResultOf(d), Health(True))
        self.assertTrue(transport.disconnecting)

    def test_port_refused(self):
        reactor = MemoryReactorClock()
        role = Role("chunkserver-1", "speedy-chunkserver", (), "127.0.0.1", 8001)
        d = HealthProbe(reactor, None).check(role)
        factory = reactor.tcpClients[0][2]
        factory.clientConnectionFailed(None, Failure(ConnectionRefusedError()))
        health = self.successResultOf(d)
        self.assertFalse(health.healthy)
        self.assertIn("8001", health.detail)

