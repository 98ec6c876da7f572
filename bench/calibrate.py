# -*- test-case-name: bench._test_loadgen -*-
"""
The load generator's ceiling: the same lanes, payloads and verification as a
real run, against nginx (C{sendfile on}, run unprivileged with its own config
in a temp dir), which costs the server almost nothing.  Whatever the load
generator reaches here is the most it can measure on this machine.

    python bench/calibrate.py [--count 100] [--size 16MiB] [--concurrency 10,50]

Phases, at each concurrency: C{put} (PUT /v1/files/..., read and discarded
by nginx), C{get} (the same fresh files served from disk, sha256-verified)
and C{small-get} (a manifest-sized file fetched C{--requests} times by the
Python lanes: their request-rate ceiling).  When C{wrk} is installed,
C{small-get-wrk} fetches it for C{--wrk-seconds} with wrk, every body
compared: the ceiling of the engine L{loadgen} uses for GET manifest.
Prints JSON lines and a markdown table; C{--plot DIR} writes PNGs.
"""

import argparse
import os
import shutil
import sys
import tempfile

from _dataset import Dataset, Item, sha256_digest
from _servers import free_port, nginx
from _stats import json_line
from _wrk import available as wrk_available
from _wrk import wrk_phase
from loadgen import TABLE_COLUMNS, measure_server, report, run_phase, tag

from speedy.units import parse_size

CALIBRATION_COLUMNS = TABLE_COLUMNS + [("nginx cpu s", "server_cpu_s")]


def write_files(www, dataset, prefix):
    """
    Store every payload of C{dataset} under C{www/v1/files/prefix/}.

    @return: the L{Item}s, named by their path under C{/v1/files/}.
    """
    directory = os.path.join(www, "v1", "files", prefix)
    os.makedirs(directory, exist_ok=True)
    items = []
    for index in range(dataset.count):
        payload = dataset.payload(index)
        name = f"{prefix}/{index:06d}"
        with open(os.path.join(www, "v1", "files", name), "wb") as f:
            f.write(payload)
        items.append(Item(index=index, name=name, size=len(payload), digest=sha256_digest(payload)))
    return items


def write_small_file(www, size):
    """
    Store a fresh text file of C{size} bytes (hex digits: wrk compares
    bodies as Lua strings) as C{/v1/files/small}.

    @return: (its L{Item}, its text).
    """
    text = os.urandom(size // 2 + 1).hex()[:size]
    with open(os.path.join(www, "v1", "files", "small"), "w") as f:
        f.write(text)
    return Item(index=0, name="small", size=size, digest=sha256_digest(text.encode())), text


def calibrate(workdir, *, count, size, concurrency_levels, requests, small_size, processes=None,
              wrk_seconds=5.0):
    """
    Run the calibration phases against a fresh nginx in C{workdir}.

    @return: the list of phase summaries, each with C{server_cpu_s}, the
        CPU seconds nginx used in that phase.
    """
    server = nginx(workdir, free_port()).start()
    www = os.path.join(workdir, "www")
    rows = []
    try:
        def measured(op, op_size, phase):
            summary = tag(measure_server(server.tree, phase), "nginx", "files", op_size)
            summary["op"] = op
            rows.append(summary)
            print(json_line(summary), flush=True)

        small, text = write_small_file(www, small_size)
        for concurrency in concurrency_levels:
            dataset = Dataset(count=count, size=size)
            measured("put", size, lambda: run_phase(
                server.url, "put", range(count), concurrency, dataset=dataset,
                run_prefix=f"sink/{dataset.run_id}", processes=processes)[0])
            items = write_files(www, dataset, dataset.run_id)
            measured("get", size, lambda: run_phase(
                server.url, "get", items, concurrency, processes=processes)[0])
            measured("small-get", small_size, lambda: run_phase(
                server.url, "get", [small] * requests, concurrency, processes=processes)[0])
            if wrk_available():
                measured("small-get-wrk", small_size, lambda: dict(wrk_phase(
                    server.url, ["/v1/files/small"], concurrency, expect_body=text,
                    seconds=wrk_seconds), concurrency=concurrency, processes=1))
            shutil.rmtree(os.path.join(www, "v1", "files", dataset.run_id))
    finally:
        server.stop()
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--size", type=parse_size, default="16MiB")
    parser.add_argument("--concurrency", default="10,50")
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--small-size", type=parse_size, default="2KiB")
    parser.add_argument("--processes", type=int, default=None)
    parser.add_argument("--wrk-seconds", type=float, default=5.0)
    parser.add_argument("--jsonl", help="append the JSON lines to this file too")
    parser.add_argument("--plot", metavar="DIR", help="write throughput and p99 PNGs here")
    args = parser.parse_args(argv)
    if shutil.which("nginx") is None and not os.path.exists("/usr/sbin/nginx"):
        print("nginx is not installed (Debian package nginx-light)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="speedy-calibrate-") as workdir:
        rows = calibrate(workdir, count=args.count, size=args.size,
                         concurrency_levels=[int(c) for c in args.concurrency.split(",")],
                         requests=args.requests, small_size=args.small_size,
                         processes=args.processes, wrk_seconds=args.wrk_seconds)
    return report(rows, CALIBRATION_COLUMNS, args.jsonl, args.plot)


if __name__ == "__main__":
    sys.exit(main())
