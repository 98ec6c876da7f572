# -*- test-case-name: speedy.test.test_metadata -*-
"""
The metadata store in one SQLite file: Speedy's embedded default.

One connection (C{cp_max=1}) in WAL mode with C{synchronous=FULL}, so a
commit is durable when it returns.  Every writing transaction starts with
C{BEGIN IMMEDIATE}: it takes the database's write lock before its first
read, so read-then-write transactions (allocating file ids, say) stay
atomic even when several processes share the file.  A reader sees one
snapshot for its whole transaction (C{BEGIN}).
"""

import sqlite3

import attrs
from twisted.enterprise import adbapi

from speedy.metadata import schema
from speedy.metadata.sql import SQLMetadataStore

#: Result codes (the low byte of C{sqlite_errorcode}) that mean the file
#: cannot be used right now, rather than a bug in a statement.
_UNAVAILABLE_CODES = {
    sqlite3.SQLITE_PERM,
    sqlite3.SQLITE_BUSY,
    sqlite3.SQLITE_LOCKED,
    sqlite3.SQLITE_NOMEM,
    sqlite3.SQLITE_READONLY,
    sqlite3.SQLITE_IOERR,
    sqlite3.SQLITE_FULL,
    sqlite3.SQLITE_CANTOPEN,
    sqlite3.SQLITE_PROTOCOL,
}


def _configure(connection):
    """Set up each new connection: WAL, and durable commits."""
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=FULL")


@attrs.frozen
class SQLiteDialect:
    """
    What is particular to SQLite.

    @ivar path: the database file.
    @ivar busy_timeout: seconds to wait for another process's write lock
        before a call fails with L{speedy.errors.Unavailable}.
    """

    path: str
    busy_timeout: float = 5.0

    migrations = schema.SQLITE_MIGRATIONS
    table_options = ""
    for_update = ""
    for_share = ""

    def connection_pool(self, reactor):
        """@return: a new adbapi pool of one connection to the file."""
        return adbapi.ConnectionPool(
            "sqlite3", self.path, check_same_thread=False, timeout=self.busy_timeout,
            cp_max=1, cp_openfun=_configure, cp_reactor=reactor)

    def placeholders(self, sql):
        """@return: C{sql}, whose C{?} placeholders sqlite3 takes as they are."""
        return sql

    def begin(self, db, write):
        """Start the interaction's transaction."""
        db.execute("BEGIN IMMEDIATE" if write else "BEGIN")

    def lock_schema(self, db):
        """Nothing to do: the migration's C{BEGIN IMMEDIATE} holds the lock."""

    def unlock_schema(self, db):
        """Nothing to do: the migration's commit releases the lock."""

    def upsert(self, table, columns, keys):
        """
        @return: an C{INSERT} of C{columns} (a comma-separated string) into
            C{table} that replaces the other columns of a row with the same
            C{keys}.
        """
        names = [name.strip() for name in columns.split(",")]
        updates = ", ".join(f"{name} = excluded.{name}" for name in names if name not in keys)
        return (f"INSERT INTO {table} ({columns}) VALUES ({', '.join('?' * len(names))})"
                f" ON CONFLICT ({', '.join(keys)}) DO UPDATE SET {updates}")

    def insert_new(self, table, columns, keys):
        """@return: an C{INSERT} that leaves a row with the same C{keys} alone."""
        names = columns.split(",")
        return (f"INSERT INTO {table} ({columns}) VALUES ({', '.join('?' * len(names))})"
                f" ON CONFLICT ({', '.join(keys)}) DO NOTHING")

    def is_unavailable(self, error):
        """@return: True if C{error} means the file cannot be used right now."""
        if isinstance(error, adbapi.ConnectionLost):
            return True
        code = getattr(error, "sqlite_errorcode", None)
        return (isinstance(error, sqlite3.DatabaseError) and code is not None
                and code & 0xFF in _UNAVAILABLE_CODES)

    def is_conflict(self, error):
        """@return: False: SQLite serialises writers instead of aborting one."""
        return False


def sqlite_store(path, reactor, clock=None, busy_timeout=5.0):
    """
    @param path: the database file, created if missing.
    @return: an unstarted L{SQLMetadataStore} on it.
    """
    return SQLMetadataStore(SQLiteDialect(path, busy_timeout), reactor, clock)
