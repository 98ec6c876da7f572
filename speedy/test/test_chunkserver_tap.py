"""
Tests for L{speedy.chunkserver.tap}: the twistd plugin, its options and the
service tree it builds.
"""

import os

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IServiceMaker
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.testing import MemoryReactor
from twisted.plugin import getPlugins
from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from speedy.chunkserver.protocol import ChunkServerFactory
from speedy.chunkserver.tap import (
    ChunkStoreService, Options, advertised_address, makeService, server_id)
from speedy.errors import Unavailable
from speedy.test.util import TEST_SECRET, with_secrets
from speedy.testing import MemoryChunkStore


class PluginTests(SynchronousTestCase):

    def test_plugin(self):
        """twistd finds speedy-chunkserver, and it is a proper IServiceMaker."""
        makers = {m.tapname: m for m in getPlugins(IServiceMaker)}
        maker = makers["speedy-chunkserver"]
        verifyObject(IServiceMaker, maker)
        self.assertIsInstance(maker.options(), Options)


class OptionsTests(SynchronousTestCase):
    def setUp(self):
        with_secrets(self)

    def parse(self, *args):
        options = Options()
        options.parseOptions(["--data-dir", self.mktemp(), "--group-id", "1", *args])
        return options

    def test_defaults(self):
        options = self.parse()
        self.assertEqual(options["listen"], "tcp:8000:interface=127.0.0.1")
        self.assertEqual(options["cluster-secret"], TEST_SECRET)
        self.assertEqual(options["volume-size"], 2 << 30)
        self.assertEqual(options["sync"], "always")
        self.assertEqual(options["compact-threshold"], 0.3)
        self.assertEqual(options["heartbeat-interval"], 5.0)
        self.assertEqual(options["advertise"], "127.0.0.1:8000")
        self.assertEqual(options["group-id"], 1)
        self.assertIsNone(options["master"])

    def test_values(self):
        options = self.parse("--volume-size", "64MiB", "--reserve", "10GB", "--sync", "batch",
                             "--listen", "tcp:9001:interface=10.1.2.3")
        self.assertEqual((options["volume-size"], options["reserve"]), (64 << 20, 10 * 1000**3))
        self.assertEqual(options["advertise"], "10.1.2.3:9001")
        self.assertEqual(self.parse("--reserve", "0.05")["reserve"], 0.05)

    def test_bad_values(self):
        """Every bad value is a UsageError that names the option."""
        for args, name in [
            (["--sync", "sometimes"], "--sync"),
            (["--volume-size", "lots"], "--volume-size"),
            (["--volume-size", "1k"], "--volume-size"),
            (["--compact-threshold", "2"], "--compact-threshold"),
            (["--compact-threshold", "0"], "--compact-threshold"),
            (["--reserve", "-1"], "--reserve"),
            (["--compact-threshold", "x"], "--compact-threshold"),
            (["--heartbeat-interval", "0"], "--heartbeat-interval"),
            (["--listen", "nonsense:1"], "--listen"),
            (["--master", "ftp://x"], "--master"),
            (["--advertise", "nohost"], "--advertise"),
        ]:
            e = self.assertRaises(UsageError, self.parse, *args)
            self.assertIn(name, str(e))

    def test_required(self):
        self.assertRaises(UsageError, Options().parseOptions, ["--group-id", "1"])
        self.assertRaises(UsageError, Options().parseOptions, ["--data-dir", "d"])
        self.assertRaises(UsageError, Options().parseOptions,
                          ["--data-dir", "d", "--group-id", "0"])

    def test_unix_needs_advertise(self):
        e = self.assertRaises(UsageError, self.parse, "--listen", "unix:/tmp/cs.sock")
        self.assertIn("--advertise", str(e))
        self.assertEqual(self.parse("--listen", "unix:/tmp/cs.sock", "--advertise", "h:1")["advertise"],
                         "h:1")

    def test_config_file(self):
        """A --config file fills what the command line leaves out."""
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("[chunkserver]\nsync = none\nvolume-size = 128MiB\ngroup-id = 3\n")
        options = Options()
        options.parseOptions(["--config", path, "--data-dir", "d", "--sync", "batch"])
        self.assertEqual((options["sync"], options["volume-size"], options["group-id"]),
                         ("batch", 128 << 20, 3))

    def test_bad_config_file(self):
        path = self.mktemp()
        for text in ["[chunkserver]\ncolour = blue\n", "[other]\n", "not ini at all"]:
            with open(path, "w") as f:
                f.write(text)
            self.assertRaises(UsageError, Options().parseOptions,
                              ["--config", path, "--data-dir", "d", "--group-id", "1"])
        self.assertRaises(UsageError, Options().parseOptions,
                          ["--config", path + ".missing", "--data-dir", "d", "--group-id", "1"])

    def test_sample_config(self):
        """etc/chunkserver.ini parses."""
        sample = os.path.join(os.path.dirname(__file__), "..", "..", "etc", "chunkserver.ini")
        options = Options()
        options.parseOptions(["--config", sample])
        self.assertEqual(options["group-id"], 1)

    def test_advertised_address(self):
        self.assertEqual(advertised_address("tcp:8000"), "127.0.0.1:8000")
        self.assertEqual(advertised_address("tcp:port=8001:interface=0.0.0.0"), "127.0.0.1:8001")
        self.assertEqual(advertised_address("tcp:8002:interface=192.0.2.7"), "192.0.2.7:8002")
        self.assertIsNone(advertised_address("unix:/x"))


class ServiceTests(SynchronousTestCase):

    def options(self, *args):
        options = Options()
        options.parseOptions(["--data-dir", self.data_dir, "--group-id", "2",
                              "--listen", "tcp:8123:interface=127.0.0.1", *args])
        return options

    def setUp(self):
        with_secrets(self)
        self.data_dir = self.mktemp()

    def test_listens(self):
        reactor = MemoryReactor()
        service = makeService(self.options(), reactor=reactor)
        listeners = [s for s in service if isinstance(s, StreamServerEndpointService)]
        self.assertEqual(len(listeners), 1)
        service.privilegedStartService()
        [(port, factory, backlog, interface)] = reactor.tcpServers
        self.assertEqual((port, interface), (8123, "127.0.0.1"))
        self.assertIsInstance(factory, ChunkServerFactory)

    def test_server_id_persisted(self):
        """The server id is made once and kept in DATA_DIR/server-id."""
        first = self.options()
        makeService(first, reactor=MemoryReactor())
        second = self.options()
        makeService(second, reactor=MemoryReactor())
        self.assertEqual(first["server-id"], second["server-id"])
        with open(os.path.join(self.data_dir, "server-id")) as f:
            self.assertEqual(f.read().strip(), first["server-id"])
        self.assertEqual(self.options("--server-id", "mine")["server-id"], "mine")
        self.assertEqual(server_id(self.data_dir), first["server-id"])

    def test_zero_copy(self):
        """--zero-copy (zero_copy in a config file) reaches the protocol's
        factory: auto by default, off to copy through Python; another
        value is a UsageError."""
        def factory_of(options):
            service = makeService(options, reactor=MemoryReactor())
            [listener] = [s for s in service if isinstance(s, StreamServerEndpointService)]
            return listener.factory

        self.assertEqual(self.options()["zero-copy"], "auto")
        self.assertTrue(factory_of(self.options()).zero_copy)
        self.assertFalse(factory_of(self.options("--zero-copy", "off")).zero_copy)
        config = self.mktemp()
        with open(config, "w") as f:
            f.write("[chunkserver]\nzero_copy = off\n")
        self.assertFalse(factory_of(self.options("--config", config)).zero_copy)
        e = self.assertRaises(UsageError, self.options, "--zero-copy", "on")
        self.assertIn("--zero-copy", str(e))

    def test_heartbeat_only_with_master(self):
        from speedy.chunkserver.heartbeat import HeartbeatService
        plain = makeService(self.options(), reactor=MemoryReactor())
        self.assertFalse([s for s in plain if isinstance(s, HeartbeatService)])
        beating = makeService(self.options("--master", "http://127.0.0.1:8099"),
                              reactor=MemoryReactor())
        self.assertEqual(len([s for s in beating if isinstance(s, HeartbeatService)]), 1)


class StoreServiceTests(SynchronousTestCase):
    def setUp(self):
        with_secrets(self)

    def test_open_and_close(self):
        """The store is served once open, and closed on stop."""
        store = MemoryChunkStore()
        closed = []
        store.close = lambda: closed.append(True) or succeed(None)
        factory = ChunkServerFactory(MemoryReactor())
        opening = Deferred()
        service = ChunkStoreService(MemoryReactor(), lambda: opening, factory)
        service.startService()
        self.assertIsNone(factory.store)
        self.assertRaises(Unavailable, service.status)
        self.assertTrue(service.read_only)
        opening.callback(store)
        self.assertIs(factory.store, store)
        self.assertEqual(service.status()["chunks"], 0)
        self.assertFalse(service.read_only)
        self.successResultOf(service.stopService())
        self.assertEqual(closed, [True])
        self.assertIsNone(factory.store)

    def test_stop_while_opening(self):
        opening = Deferred()
        reactor = MemoryReactor()
        service = ChunkStoreService(reactor, lambda: opening, ChunkServerFactory(reactor))
        service.startService()
        service.stopService()
        self.assertTrue(opening.called)
        self.assertFalse(reactor.hasStopped)

    def test_open_fails(self):
        """A store that cannot open stops the daemon, with the reason logged."""
        reactor = MemoryReactor()
        service = ChunkStoreService(reactor, lambda: fail(OSError("disk on fire")),
                                    ChunkServerFactory(reactor))
        service.startService()
        self.assertTrue(reactor.hasStopped)
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)
