"""
Benchmark of file-id range allocation in the metadata store, by hand:

    .venv/bin/python bench/bench_fileids.py [--seconds 5] [--count 100]
        [--mysql mysql://root@127.0.0.1:3306/test] [--no-mysql]

For SQLite (a fresh file in a temporary directory) and for MariaDB (a fresh
database created next to the one --mysql names, dropped afterwards), it
measures C{allocate_file_ids(count)} calls per second, each one a committed
(durable) transaction, with one caller awaiting each call before the next
and with 10 callers at once.  Every range handed out is checked to be
disjoint from all others.  Prints a markdown table.
"""

import argparse
import os
import sys
import tempfile
import time
from urllib.parse import urlsplit, urlunsplit

import pymysql
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import react

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from speedy.metadata.mysql import mysql_store, parse_url  # noqa: E402
from speedy.metadata.sqlite import sqlite_store  # noqa: E402

CALLERS = (1, 10)


async def allocations_per_second(reactor, store, callers, seconds, count):
    """
    Run C{callers} loops of allocations for C{seconds}.

    @return: (allocations per second, list of the ranges handed out).
    """
    ranges = []
    deadline = reactor.seconds() + seconds

    async def caller():
        while reactor.seconds() < deadline:
            ranges.append(await store.allocate_file_ids(count))

    started = time.perf_counter()
    await gatherResults([Deferred.fromCoroutine(caller()) for _ in range(callers)])
    return len(ranges) / (time.perf_counter() - started), ranges


def check_disjoint(ranges):
    """@raise AssertionError: two of C{ranges} share an id."""
    ordered = sorted(ranges)
    for (_, end), (start, _) in zip(ordered, ordered[1:]):
        if start < end:
            raise AssertionError(f"file id ranges overlap: ..{end} and {start}..")


async def run_backend(reactor, name, make_store, options, rows):
    ranges = []
    for callers in CALLERS:
        store = make_store(pool_size=callers)
        await store.start()
        try:
            rate, handed_out = await allocations_per_second(
                reactor, store, callers, options.seconds, options.count)
        finally:
            await store.close()
        ranges.extend(handed_out)
        rows.append((name, callers, rate, rate * options.count))
    check_disjoint(ranges)


class MySQLBenchDatabase:
    """A database of its own on the server the URL names, dropped at the end."""

    def __init__(self, url):
        self.server = parse_url(url)
        self.name = f"speedy_bench_{os.getpid()}"
        self.url = urlunsplit(urlsplit(url)._replace(path="/" + self.name, query="tls=off"))

    def _execute(self, statement):
        kwargs = dict(self.server, ssl_disabled=True)
        connection = pymysql.connect(**kwargs)
        try:
            connection.cursor().execute(statement)
        finally:
            connection.close()

    def create(self):
        self._execute(f"CREATE DATABASE {self.name} CHARACTER SET utf8mb4")

    def drop(self):
        self._execute(f"DROP DATABASE IF EXISTS {self.name}")


async def main(reactor, options):
    rows = []
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "meta.db")
        await run_backend(
            reactor, "SQLite (WAL, synchronous=FULL)",
            lambda pool_size: sqlite_store(path, reactor), options, rows)
    if not options.no_mysql:
        database = MySQLBenchDatabase(options.mysql)
        database.create()
        try:
            await run_backend(
                reactor, "MariaDB (InnoDB)",
                lambda pool_size: mysql_store(database.url, reactor, pool_size=pool_size),
                options, rows)
        finally:
            database.drop()
    print(f"allocate_file_ids({options.count}), {options.seconds:g} s per row\n")
    print("| store | callers | allocations/s | ids/s |")
    print("|---|---:|---:|---:|")
    for name, callers, rate, ids in rows:
        print(f"| {name} | {callers} | {rate:,.0f} | {ids:,.0f} |")


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="duration of each row")
    parser.add_argument("--count", type=int, default=100, help="ids per allocation")
    parser.add_argument("--mysql", default="mysql://root@127.0.0.1:3306/test",
                        help="a MariaDB URL; the benchmark creates its own database there")
    parser.add_argument("--no-mysql", action="store_true", help="measure SQLite only")
    return parser.parse_args(argv)


if __name__ == "__main__":
    react(lambda reactor: Deferred.fromCoroutine(main(reactor, parse_args(sys.argv[1:]))))
