# -*- test-case-name: speedy.test.test_metadata_open -*-
"""
The metadata store: cluster and registry metadata behind
L{speedy.interfaces.IMetadataStore}, the union of each role's tables
(L{speedy.interfaces.IClusterTables}, L{speedy.interfaces.IFileTables} and
the others).

    store = open_store("sqlite:///var/lib/speedy/meta.db", reactor)
    await store.start()   # connects and applies pending migrations

Implementations: L{speedy.metadata.memory} (tests),
L{speedy.metadata.sqlite} and L{speedy.metadata.mysql}, both on
L{speedy.metadata.sql}; tables and migrations in L{speedy.metadata.schema}.
"""

from urllib.parse import urlsplit

__all__ = ["open_store"]

URL_FORMS = (
    "memory:, sqlite:///absolute/path.db, sqlite:relative/path.db or "
    "mysql://user:password@host:3306/database")


def open_store(url, reactor):
    """
    @param url: C{memory:}, C{sqlite:///absolute/path.db},
        C{sqlite:relative/path.db} or C{mysql://user:password@host:port/db}.
    @param reactor: runs the database threads, and stamps times.
    @return: an unstarted L{speedy.interfaces.IMetadataStore}.
    @raise ValueError: C{url} is none of these.
    """
    parts = urlsplit(url)
    if parts.scheme == "memory" and url == "memory:":
        from speedy.metadata.memory import MemoryMetadataStore

        return MemoryMetadataStore(reactor)
    if parts.scheme == "sqlite" and not parts.netloc and parts.path and not parts.query:
        from speedy.metadata.sqlite import sqlite_store

        return sqlite_store(parts.path, reactor)
    if parts.scheme == "mysql":
        from speedy.metadata.mysql import mysql_store

        return mysql_store(url, reactor)
    raise ValueError(f"unknown metadata store URL {url!r}: use {URL_FORMS}")
