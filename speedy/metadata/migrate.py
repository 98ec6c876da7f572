# -*- test-case-name: speedy.test.test_metadata_tool -*-
"""
Apply the metadata store's pending schema migrations by hand, and print the
schema version before and after.

    speedy-migrate --db sqlite:///var/lib/speedy/meta.db
    speedy-migrate --db mysql://speedy:secret@db.example:3306/speedy

Daemons apply migrations themselves when they start; this is for doing it
ahead of an upgrade, or for checking a database's version.  It is the
C{speedy-migrate} console script (and C{tools/speedy-migrate} in a checkout).
"""

import sys

from twisted.internet.defer import Deferred
from twisted.internet.task import react
from twisted.python import usage

from speedy.config import DaemonOptions
from speedy.errors import SpeedyError
from speedy.metadata import open_store
from speedy.metadata.sql import SQLMetadataStore


class Options(usage.Options):
    synopsis = "--db URL [--to VERSION]"
    longdesc = "Apply pending metadata schema migrations; print the version before and after."
    optParameters = [
        ["db", None, None, "metadata database URL: sqlite:PATH or mysql://user:pw@host:port/db"],
        ["to", None, None, "stop at this schema version (default: the latest)", int],
    ]

    opt_version = DaemonOptions.opt_version

    def postOptions(self):
        if not self["db"]:
            raise usage.UsageError("--db is required")


async def migrate(reactor, options):
    """
    Migrate the database C{options} names.

    @return: None; raises L{SystemExit} with a message on failure.
    """
    try:
        store = open_store(options["db"], reactor)
    except ValueError as e:
        raise SystemExit(f"speedy-migrate: {e}")
    if not isinstance(store, SQLMetadataStore):
        raise SystemExit("speedy-migrate: only database stores have a schema")
    try:
        before, after = await store.migrate(options["to"])
    except SpeedyError as e:
        raise SystemExit(f"speedy-migrate: {e}")
    finally:
        await store.close()
    print(f"schema version before: {before}")
    print(f"schema version after: {after}")


def run(reactor, *argv):
    """Parse C{argv} and migrate.  @return: a Deferred of the outcome."""
    options = Options()
    try:
        options.parseOptions(argv)
    except usage.UsageError as e:
        raise SystemExit(f"speedy-migrate: {e}\n{options}")
    return Deferred.fromCoroutine(migrate(reactor, options))


def main(argv=None):
    """The C{speedy-migrate} console script (C{sys.argv} by default)."""
    react(run, sys.argv[1:] if argv is None else argv)
