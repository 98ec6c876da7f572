"""
The mark and sweep of the registry's tables on SQLite, alone (a
micro-benchmark; not part of the tests): C{--blobs} blobs linked in 50
repositories, half of them referenced by manifests of 50 layers, all older
than the grace period.  Reports, as one JSON line: the dry run's time, the
sweep's time and rate (unpaced: C{--gc-sweep-rate 0}), and the time of a
round that finds nothing (what every idle round costs).

    python bench/bench_sweep.py [--blobs 200000] [--db /tmp/sweep.db]
"""

import argparse
import json
import os
import sys
import time

from twisted.internet import defer, task

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from speedy.chunkmaster.sweep import MetadataSweep  # noqa: E402
from speedy.metadata.sqlite import sqlite_store  # noqa: E402


def fill(db, blobs):
    for n in range(blobs):
        digest = "sha256:%064x" % n
        db.execute("INSERT INTO blobs (digest, size, chunks, created) VALUES (?, ?, ?, ?)",
                   digest, 1000, b"[[1,%d,1000,0]]" % (n + 1), 1.0)
        db.execute("INSERT INTO blob_links (repository, digest, linked) VALUES (?, ?, ?)",
                   "r%d" % (n % 50), digest, 1.0)
    for m in range(blobs // 100):
        refs = ["sha256:%064x" % n for n in range(m * 100, m * 100 + 50)]
        digest = "sha256:%064x" % (10**9 + m)
        db.execute("INSERT INTO manifests (repository, digest, media_type, content, created,"
                   " annotations, refs) VALUES (?, ?, ?, ?, ?, ?, ?)",
                   "r0", digest, "x", b"{}", 1.0, b"{}", json.dumps(refs).encode())
        for ref in refs:
            db.execute("INSERT INTO manifest_refs (digest, repository, manifest) VALUES (?, ?, ?)",
                       ref, "r0", digest)


async def main(reactor, args):
    if os.path.exists(args.db):
        os.remove(args.db)
    store = sqlite_store(args.db, reactor)
    await store.start()
    try:
        await store._write(fill, args.blobs)
        sweep = MetadataSweep(store, reactor, grace=10, rate=0)
        started = time.monotonic()
        dry = await sweep.dry_run()
        dry_s = time.monotonic() - started
        started = time.monotonic()
        swept = await sweep.sweep()
        sweep_s = time.monotonic() - started
        started = time.monotonic()
        await sweep.sweep()
        idle_s = time.monotonic() - started
    finally:
        await store.close()
        os.remove(args.db)
    print(json.dumps({"blobs": args.blobs, "garbage": dry.blobs, "dry_run_s": round(dry_s, 2),
                      "swept": swept.blobs, "sweep_s": round(sweep_s, 2),
                      "blobs_per_s": round(swept.blobs / sweep_s), "idle_round_s": round(idle_s, 2)}))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--blobs", type=int, default=200_000)
    parser.add_argument("--db", default="/tmp/speedy-bench-sweep.db")
    args = parser.parse_args()
    task.react(lambda reactor: defer.Deferred.fromCoroutine(main(reactor, args)))
