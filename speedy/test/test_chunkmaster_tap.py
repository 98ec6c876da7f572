"""
Tests for L{speedy.chunkmaster.tap} and L{speedy.chunkmaster.service}: the twistd plugin, its options and config
file, and a service that loads the cluster before it listens.
"""

import os
from io import StringIO
from pathlib import Path

from twisted.application.service import IServiceMaker
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.testing import MemoryReactorClock
from twisted.plugin import getPlugins
from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.server import Site
from twisted.web.test.requesthelper import DummyRequest
from zope.interface.verify import verifyObject

import speedy
from speedy.chunkmaster import tap
from speedy.chunkmaster.collector import ChunkCollector
from speedy.chunkmaster.api import build_api
from speedy.chunkmaster.cluster import Cluster
from speedy.chunkmaster.messages import Heartbeat
from speedy.chunkmaster.service import ChunkmasterService
from speedy.test.util import TEST_SECRET, with_secrets
from speedy.testing import OutageStore


def parse(*args):
    options = tap.Options()
    options.parseOptions(list(args))
    return options


class PluginTests(SynchronousTestCase):
    def test_plugin(self):
        """twistd finds speedy-chunkmaster, served by this module."""
        [maker] = [p for p in getPlugins(IServiceMaker) if p.tapname == "speedy-chunkmaster"]
        verifyObject(IServiceMaker, maker)
        self.assertIs(maker.options, tap.Options)


class OptionsTests(SynchronousTestCase):
    def setUp(self):
        with_secrets(self)

    def write_config(self, text):
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_defaults(self):
        options = parse()
        self.assertEqual(
            {o.name: options[o.name] for o in tap.Options.options},
            {"listen": "tcp:8099:interface=127.0.0.1", "db": "sqlite:meta.db",
             "cluster-secret": TEST_SECRET,
             "admin-token": None, "heartbeat-timeout": 15.0, "group-size": 3,
             "file-id-range": 100000, "reserve": 16 << 20, "lost-after": 3600.0,
             "repair-rate": 64 << 20, "repair-parallelism": 2, "repair-interval": 5.0, "chunk-tls-ca": None,
             "metrics": None,
             "transfer-rate": 32 << 20, "transfer-parallelism": 2,
             "transfer-delete-delay": 600.0, "transfer-interval": 5.0, "transfer-batch": 32,
             "gc-grace": 3600.0, "gc-period": 60.0, "gc-parallelism": 8,
             "gc-sweep-grace": 3600.0, "gc-delete": frozenset(), "gc-sweep-rate": 1000,
             "header-timeout": 10.0, "idle-timeout": 60.0, "max-request-line": 64 << 10,
             "max-header-size": 64 << 10, "max-connections-per-client": 0, "max-connections": 0,
             "log-format": "text"})

    def test_config_file(self):
        """The [chunkmaster] section sets options; the command line wins."""
        token = self.write_config("an-admin-token-from-a-file\n")
        os.chmod(token, 0o600)
        path = self.write_config(
            f"[chunkmaster]\nadmin_token_file = {token}\nheartbeat_timeout = 4.5\n"
            "group_size = 2\nfile_id_range = 50\nreserve = 1GiB\n")
        options = parse("--config", path, "--group-size", "3")
        self.assertEqual(
            (options["admin-token"], options["cluster-secret"], options["heartbeat-timeout"],
             options["group-size"], options["file-id-range"], options["reserve"]),
            ("an-admin-token-from-a-file", TEST_SECRET, 4.5, 3, 50, 1 << 30))

    def test_sample_config(self):
        """The sample etc/chunkmaster.ini parses."""
        sample = Path(speedy.__file__).parent.parent / "etc" / "chunkmaster.ini"
        self.assertEqual(parse("--config", str(sample))["heartbeat-timeout"], 15.0)
        self.assertEqual(parse("--config", str(sample))["gc-delete"], frozenset())

    def test_gc_sweep(self):
        """The sweep's options reach the collector's sweep."""
        reactor = MemoryReactorClock()
        service = tap.makeService(parse(
            "--db", "memory:", "--gc-delete", "untagged", "--gc-sweep-grace", "2m",
            "--gc-sweep-rate", "50"), reactor=reactor)
        [collector] = [s for s in service._background if isinstance(s, ChunkCollector)]
        self.assertEqual(collector.status()["sweep"],
                         {"grace": 120.0, "untagged": True, "orphans": False, "rate": 50})

    def test_bad_config(self):
        """A missing file, a missing section, an unknown key or garbage is a usage error."""
        for text in ("[other]\nx = 1\n", "[chunkmaster]\nheartbeat_timout = 3\n", "\x00garbage ["):
            self.assertRaises(UsageError, parse, "--config", self.write_config(text))
        self.assertRaises(UsageError, parse, "--config", self.mktemp())

    def test_bad_numbers(self):
        for args in (["--heartbeat-timeout", "0"], ["--heartbeat-timeout", "nan"],
                     ["--heartbeat-timeout", "inf"], ["--group-size", "0"],
                     ["--group-size", "2.5"], ["--group-size", "4"], ["--file-id-range", "-1"],
                     ["--reserve", "lots"], ["--gc-grace", "10s"], ["--gc-grace", "soon"],
                     ["--gc-delete", "everything"], ["--gc-sweep-grace", "0"],
                     ["--gc-period", "-1"], ["--gc-parallelism", "0"]):
            self.assertRaises(UsageError, parse, *args)


class MakeServiceTests(SynchronousTestCase):
    def setUp(self):
        with_secrets(self)

    def test_listens(self):
        """
        The service opens the store, and then listens where --listen says,
        with the API behind it; stopping it stops listening.
        """
        reactor = MemoryReactorClock()
        service = tap.makeService(
            parse("--db", "memory:", "--listen", "tcp:8123:interface=127.0.0.1"), reactor=reactor)
        service.startService()
        [(port, factory, _, interface)] = reactor.tcpServers
        self.assertEqual((port, interface), (8123, "127.0.0.1"))
        self.assertIsInstance(factory, Site)
        self.successResultOf(service.stopService())
        self.assertEqual(reactor.getDelayedCalls(), [])


class ServiceTests(SynchronousTestCase):
    def setUp(self):
        with_secrets(self)
        self.reactor = MemoryReactorClock()
        self.store = OutageStore(self.reactor)
        self.cluster = Cluster(self.store, self.reactor)
        self.service = ChunkmasterService(
            self.reactor, self.store, self.cluster,
            TCP4ServerEndpoint(self.reactor, 8099, interface="127.0.0.1"),
            Site(build_api(self.cluster, self.store)), retry_interval=5)

    def test_store_down_at_start(self):
        """
        With the database down at start, the service retries, and listens
        only once it has loaded the cluster.
        """
        self.store.down = True
        self.service.startService()
        self.reactor.pump([5, 5])
        self.assertEqual(self.reactor.tcpServers, [])
        self.assertEqual(self.store.calls, ["start"] * 3)
        self.store.down = False
        self.reactor.advance(5)
        self.assertEqual(len(self.reactor.tcpServers), 1)
        self.assertEqual(self.store.calls[-3:], ["start", "list_groups", "list_servers"])
        self.successResultOf(self.service.stopService())

    def test_stop_while_retrying(self):
        """Stopping while the store is still down never listens and leaves no timer."""
        self.store.down = True
        self.service.startService()
        self.successResultOf(self.service.stopService())
        self.reactor.advance(60)
        self.assertEqual((self.reactor.tcpServers, self.reactor.getDelayedCalls()), ([], []))

    def test_stop_cancels_timers(self):
        """Stopping cancels the cluster's timers."""
        self.service.startService()
        self.successResultOf(Deferred.fromCoroutine(self.cluster.heartbeat(Heartbeat(
            "s1", 1, "h:1", 10, 0, 10 << 30, False, {}))))
        self.assertNotEqual(self.reactor.getDelayedCalls(), [])
        self.successResultOf(self.service.stopService())
        self.assertEqual(self.reactor.getDelayedCalls(), [])


class AccessLogTests(SynchronousTestCase):
    """Routine heartbeats and view polls stay out of the access log; their
    failures and everything else go in."""

    def setUp(self):
        with_secrets(self)

    def logged(self, path, code):
        site = tap.ChunkmasterSite(build_api(None, None), reactor=MemoryReactorClock())
        site._logFile = StringIO()
        request = DummyRequest(path.lstrip(b"/").split(b"/"))
        request.path, request.uri, request.code = path, path, code
        request.sentLength = 0
        site.log(request)
        return site._logFile.getvalue()

    def test_routine_success_is_not_logged(self):
        self.assertEqual(self.logged(b"/v1/heartbeat", 200), "")
        self.assertEqual(self.logged(b"/v1/cluster", 304), "")

    def test_failures_and_other_calls_are_logged(self):
        self.assertIn("/v1/heartbeat", self.logged(b"/v1/heartbeat", 401))
        self.assertIn("/v1/file-ids", self.logged(b"/v1/file-ids", 200))
