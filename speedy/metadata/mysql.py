# -*- test-case-name: speedy.test.test_metadata -*-
"""
The metadata store in MySQL or MariaDB, through PyMySQL.

InnoDB tables, utf8mb4, names in C{VARBINARY} columns (exact, byte-wise)
and bytes in C{LONGBLOB}s (see L{speedy.metadata.schema}).  Each
connection runs in strict mode at C{REPEATABLE READ}; transactions that
read before they write lock what they read (C{SELECT ... FOR UPDATE}, or
C{LOCK IN SHARE MODE} where several may go on side by side: links of one
blob), so two chunkmasters or imageservers on one database never
interleave.  The
pool reconnects (C{cp_reconnect}); while the server is unreachable calls
fail with L{speedy.errors.Unavailable}.
"""

from urllib.parse import parse_qs, unquote, urlsplit

import attrs
import pymysql
from pymysql.constants import CLIENT
from twisted.enterprise import adbapi

from speedy.errors import Unavailable
from speedy.metadata import schema
from speedy.metadata.sql import SQLMetadataStore

#: Server error numbers that mean "unreachable or overloaded", not a bug:
#: too many connections, shutdown in progress, lock wait timeout, query
#: interrupted, read-only server, connection killed, access denied.
#: Every client-side error (2000-2999: can't connect, server gone, lost
#: connection, ...) means the same.
_UNAVAILABLE_ERRORS = {1040, 1044, 1045, 1053, 1205, 1290, 1317, 1836, 1927}

#: The error number of a transaction InnoDB aborted to break a deadlock.
_DEADLOCK = 1213

#: Seconds a migrating process waits for another one to finish.
SCHEMA_LOCK_TIMEOUT = 60


def _configure(connection):
    """Set up each new connection: strict mode, isolation, lock waits."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SET SESSION sql_mode = 'STRICT_ALL_TABLES,NO_ZERO_DATE,NO_ENGINE_SUBSTITUTION'")
        cursor.execute("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        cursor.execute("SET SESSION innodb_lock_wait_timeout = 10")
    connection.commit()


def _error_number(error):
    return error.args[0] if error.args and isinstance(error.args[0], int) else 0


def parse_url(url):
    """
    @param url: C{mysql://user:password@host:port/database[?tls=off]}; the
        user defaults to root, the port to 3306.  TLS is used when the
        server offers it, unless C{tls=off} (saves a TLS handshake per
        connection on loopback).
    @return: PyMySQL C{connect()} keyword arguments.
    @raise ValueError: the URL names no host or no database, or has an
        unknown option.
    """
    parts = urlsplit(url)
    database = unquote(parts.path.lstrip("/"))
    if parts.scheme != "mysql" or not parts.hostname or not database or "/" in database:
        raise ValueError(
            f"bad MySQL URL {url!r}: expected mysql://user:password@host:port/database")
    options = parse_qs(parts.query, keep_blank_values=True)
    if set(options) - {"tls"} or options.get("tls", ["on"]) not in (["on"], ["off"]):
        raise ValueError(f"bad MySQL URL {url!r}: the only option is tls=on or tls=off")
    return dict(
        host=parts.hostname,
        port=parts.port or 3306,
        user=unquote(parts.username or "root"),
        password=unquote(parts.password or ""),
        database=database,
        ssl_disabled=options.get("tls") == ["off"],
    )


def _without_password(kwargs):
    """@return: C{user@host:port/database}, for reprs and logs."""
    return f"{kwargs['user']}@{kwargs['host']}:{kwargs['port']}/{kwargs['database']}"


@attrs.frozen
class MySQLDialect:
    """
    What is particular to MySQL/MariaDB.

    @ivar connect_kwargs: PyMySQL C{connect()} arguments (L{parse_url}).
    @ivar pool_size: the most connections (and threads) the pool opens.
    """

    connect_kwargs: dict = attrs.field(repr=_without_password)
    pool_size: int = 5

    migrations = schema.MYSQL_MIGRATIONS
    table_options = " ENGINE=InnoDB"
    for_update = " FOR UPDATE"
    for_share = " LOCK IN SHARE MODE"

    def connection_pool(self, reactor):
        """@return: a new reconnecting adbapi pool."""
        return adbapi.ConnectionPool(
            "pymysql", charset="utf8mb4", client_flag=CLIENT.FOUND_ROWS,
            connect_timeout=5, read_timeout=60, write_timeout=60,
            cp_min=1, cp_max=self.pool_size, cp_reconnect=True, cp_openfun=_configure,
            cp_reactor=reactor, **self.connect_kwargs)

    def placeholders(self, sql):
        """@return: C{sql} with PyMySQL's C{%s} for each C{?} placeholder."""
        return sql.replace("?", "%s")

    def begin(self, db, write):
        """Nothing to do: InnoDB starts the transaction at the first statement."""

    def lock_schema(self, db):
        """
        Take the server-wide lock of this database's schema.

        @raise Unavailable: another process held it for too long.
        """
        (locked,) = db.one(
            "SELECT GET_LOCK(CONCAT('speedy-schema:', DATABASE()), ?)", SCHEMA_LOCK_TIMEOUT)
        if locked != 1:
            raise Unavailable("another process is migrating the metadata schema")

    def unlock_schema(self, db):
        """
        Commit, then release the schema lock: released first, the next
        process to take it could read the version before the last step's
        update is committed and run that step again.  (MySQL commits each
        DDL statement anyway, so what committing here covers is the last
        version update, and on a failure the steps already applied.)
        """
        db.execute("COMMIT")
        db.one("SELECT RELEASE_LOCK(CONCAT('speedy-schema:', DATABASE()))")

    def upsert(self, table, columns, keys):
        """
        @return: an C{INSERT} of C{columns} (a comma-separated string) into
            C{table} that replaces the other columns of a row with the same
            C{keys} (C{table} must have no other unique key that could clash).
        """
        names = [name.strip() for name in columns.split(",")]
        updates = ", ".join(f"{name} = VALUES({name})" for name in names if name not in keys)
        return (f"INSERT INTO {table} ({columns}) VALUES ({', '.join('?' * len(names))})"
                f" ON DUPLICATE KEY UPDATE {updates}")

    def insert_new(self, table, columns, keys):
        """@return: an C{INSERT} that leaves a row with the same C{keys} alone."""
        names = columns.split(",")
        return (f"INSERT INTO {table} ({columns}) VALUES ({', '.join('?' * len(names))})"
                f" ON DUPLICATE KEY UPDATE {keys[0]} = {keys[0]}")

    def is_unavailable(self, error):
        """@return: True if C{error} means the server cannot be used right now."""
        if isinstance(error, (adbapi.ConnectionLost, pymysql.err.InterfaceError)):
            return True
        if isinstance(error, pymysql.err.OperationalError):
            number = _error_number(error)
            return number in _UNAVAILABLE_ERRORS or 2000 <= number < 3000
        return False

    def is_conflict(self, error):
        """@return: True if InnoDB aborted the transaction to break a deadlock."""
        return (isinstance(error, pymysql.err.OperationalError)
                and _error_number(error) == _DEADLOCK)


def mysql_store(url, reactor, clock=None, pool_size=5):
    """
    @param url: C{mysql://user:password@host:port/database}.
    @return: an unstarted L{SQLMetadataStore} on that database.
    """
    return SQLMetadataStore(MySQLDialect(parse_url(url), pool_size), reactor, clock)
