"""
Tests for L{speedy.imageserver.tap}: the twistd plugin, its options and the
service it builds.
"""

import os

from twisted.application.service import IServiceMaker
from twisted.internet.ssl import KeyPair
from twisted.internet.testing import MemoryReactorClock
from twisted.plugin import getPlugins
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from speedy.imageserver import tap
from speedy.test.util import TEST_SECRET, with_secrets

ETC = os.path.join(os.path.dirname(__file__), "..", "..", "etc", "imageserver.ini")


class OptionsTests(SynchronousTestCase):
    def setUp(self):
        with_secrets(self)

    def parse(self, *args):
        options = tap.Options()
        options.parseOptions(list(args))
        return options

    def test_plugin(self):
        [maker] = [p for p in getPlugins(IServiceMaker) if p.tapname == "speedy-imageserver"]
        verifyObject(IServiceMaker, maker)
        self.assertIs(maker.options, tap.Options)

    def test_defaults(self):
        options = self.parse()
        self.assertEqual(options["listen"], "tcp:5000:interface=127.0.0.1")
        self.assertEqual(options["chunk-size"], 16 << 20)
        self.assertEqual(options["parallelism"], 4)
        self.assertEqual(options["read-window"], 0)
        self.assertEqual(options["fill-slots"], 8)
        self.assertEqual(options["cut-through"], 8)

    def test_storage_options(self):
        """--read-window takes a size, 0 included, and --fill-slots and
        --cut-through a count, 0 for none; they reach the storage."""
        self.assertEqual(self.parse("--read-window", "64KiB")["read-window"], 64 << 10)
        self.assertEqual(self.parse("--read-window", "0")["read-window"], 0)
        storage = self.storage_of("--read-window", "128KiB")
        self.assertEqual(storage.read_window, 128 << 10)
        self.assertEqual(storage.fill_gate.slots, 8)
        self.assertIsNone(self.storage_of("--fill-slots", "0").fill_gate)
        self.assertEqual(storage.cut_through, 8)
        self.assertEqual(self.storage_of("--cut-through", "0").cut_through, 0)

    def test_replication(self):
        """--replication reaches the storage: chain by default, fanout
        when chunkservers are reached over TLS (chains are forwarded over
        plain TCP), and chain with TLS is refused."""
        self.assertEqual(self.storage_of().replication, "chain")
        self.assertEqual(self.storage_of("--replication", "fanout").replication, "fanout")
        self.assertRaises(usage.UsageError, self.parse, "--replication", "star")
        ca = self.mktemp()
        with open(ca, "wb") as f:
            f.write(KeyPair.generate(size=2048).selfSignedCert(1, CN="ca").dumpPEM())
        self.assertEqual(self.parse("--chunk-tls-ca", ca)["replication"], "fanout")
        self.assertRaises(usage.UsageError, self.parse, "--chunk-tls-ca", ca,
                          "--replication", "chain")

    def test_zero_copy(self):
        """--zero-copy (zero_copy in a config file) reaches the storage:
        auto by default, off to copy downloads through Python; another
        value is a UsageError."""
        self.assertEqual(self.parse()["zero-copy"], "auto")
        self.assertTrue(self.storage_of().zero_copy)
        self.assertFalse(self.storage_of("--zero-copy", "off").zero_copy)
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("[imageserver]\nzero_copy = off\n")
        self.assertFalse(self.storage_of("--config", path).zero_copy)
        self.assertTrue(self.storage_of("--config", ETC).zero_copy)
        self.assertRaises(usage.UsageError, self.parse, "--zero-copy", "yes")

    def test_request_metrics(self):
        """--request-metrics on (the default) hands the site the HTTP request
        metrics; off leaves each request unmeasured; another value is a
        UsageError."""
        self.assertIsNotNone(self.site_of().http_metrics)
        self.assertIsNone(self.site_of("--request-metrics", "off").http_metrics)
        self.assertRaises(usage.UsageError, self.parse, "--request-metrics", "sometimes")

    def site_of(self, *args):
        """@return: the HTTP site of the service built from C{args}."""
        reactor = MemoryReactorClock()
        service = tap.makeService(self.parse("--db", "memory:", *args), reactor=reactor)
        service.startService()
        self.addCleanup(service.stopService)
        [(_, site, _, _)] = reactor.tcpServers
        return site

    def storage_of(self, *args):
        """@return: the storage of the service built from C{args}."""
        service = tap.makeService(self.parse("--db", "memory:", *args), reactor=MemoryReactorClock())
        [storage] = [c for c in service.services[0]._closables if hasattr(c, "read_window")]
        return storage

    def test_command_line_wins_over_config(self):
        """The sample config parses; the command line overrides it."""
        options = self.parse("--config", ETC, "--chunk-size", "1MiB")
        self.assertEqual(options["chunk-size"], 1 << 20)
        self.assertEqual(options["cluster-secret"], TEST_SECRET)
        self.assertEqual(options["file-id-batch"], 1000)

    def test_bad_values(self):
        for args in (["--chunk-size", "lots"], ["--chunk-size", "0"], ["--parallelism", "-1"],
                     ["--master", "127.0.0.1:8099"], ["--config", "/nonexistent.ini"],
                     ["--read-window", "-1"], ["--read-window", "wide"], ["--read-window", "1GiB"],
                     ["--fill-slots", "-1"], ["--fill-slots", "many"],
                     ["--cut-through", "-1"], ["--cut-through", "all"]):
            self.assertRaises(usage.UsageError, self.parse, *args)

    def test_config_unknown_key(self):
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("[imageserver]\nchunk_sise = 1MiB\n")
        self.assertRaises(usage.UsageError, self.parse, "--config", path)


class ServiceTests(SynchronousTestCase):
    def setUp(self):
        with_secrets(self)

    def test_make_service(self):
        """
        The service listens where told, polls the master once started,
        and stops cleanly.
        """
        reactor = MemoryReactorClock()
        options = tap.Options()
        options.parseOptions(["--listen", "tcp:5123:interface=127.0.0.1", "--db", "memory:"])
        service = tap.makeService(options, reactor=reactor)
        service.startService()
        self.assertEqual([(port, interface) for port, _, _, interface in reactor.tcpServers],
                         [(5123, "127.0.0.1")])
        self.assertEqual([(host, port) for host, port, *_ in reactor.tcpClients],
                         [("127.0.0.1", 8099)])
        self.successResultOf(service.stopService())
