"""
Choosing a metadata store by URL: L{speedy.metadata.open_store}.
"""

import os

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from speedy.interfaces import IMetadataStore
from speedy.metadata import open_store
from speedy.metadata.memory import MemoryMetadataStore
from speedy.metadata.mysql import parse_url
from speedy.metadata.sql import SQLMetadataStore


class OpenStoreTests(SynchronousTestCase):
    """Each URL form gives the matching store, unstarted."""

    def setUp(self):
        self.clock = Clock()

    def test_memory(self):
        store = open_store("memory:", self.clock)
        self.assertIsInstance(store, MemoryMetadataStore)
        self.assertTrue(verifyObject(IMetadataStore, store))

    def test_sqlite_absolute(self):
        store = open_store("sqlite:///var/lib/speedy/meta.db", self.clock)
        self.assertIsInstance(store, SQLMetadataStore)
        self.assertTrue(verifyObject(IMetadataStore, store))
        self.assertEqual(store.dialect.path, "/var/lib/speedy/meta.db")

    def test_sqlite_relative(self):
        store = open_store("sqlite:var/meta.db", self.clock)
        self.assertEqual(store.dialect.path, os.path.join("var", "meta.db"))

    def test_mysql(self):
        store = open_store("mysql://speedy:s%40cret@db.example:3307/meta", self.clock)
        self.assertIsInstance(store, SQLMetadataStore)
        self.assertTrue(verifyObject(IMetadataStore, store))
        self.assertNotIn("s@cret", repr(store))
        self.assertEqual(store.dialect.connect_kwargs, dict(
            host="db.example", port=3307, user="speedy", password="s@cret", database="meta",
            ssl_disabled=False))

    def test_bad_urls(self):
        for url in ("", "memory:x", "sqlite:", "sqlite://host/path.db", "sqlite:///a.db?x=1",
                    "postgres://h/db", "/var/lib/meta.db", "mysql://", "mysql://host",
                    "mysql://host/db/extra", "mysql://host/db?tls=maybe", "mysql://host/db?x=1"):
            with self.assertRaises(ValueError, msg=url) as raised:
                open_store(url, self.clock)
            self.assertIn(repr(url), str(raised.exception))


class ParseMySQLURLTests(SynchronousTestCase):
    def test_defaults(self):
        self.assertEqual(parse_url("mysql://127.0.0.1/test"), dict(
            host="127.0.0.1", port=3306, user="root", password="", database="test",
            ssl_disabled=False))

    def test_tls_off(self):
        self.assertTrue(parse_url("mysql://root@127.0.0.1:3306/test?tls=off")["ssl_disabled"])
        self.assertFalse(parse_url("mysql://root@127.0.0.1:3306/test?tls=on")["ssl_disabled"])
