# -*- test-case-name: bench._test_loadgen -*-
"""
The race: Speedy against CNCF Distribution (Debian's C{docker-registry},
filesystem storage), same machine, same load generator, same workload.

Both sides start fresh in a temp dir: C{docker-registry serve} and a local
Speedy cluster (C{tools/speedy-cluster up --var DIR} on free ports, with
C{--imageserver-workers} imageserver processes sharing the registry port).  Each
round runs the registry workload (L{loadgen.registry_suite}: push C{--count}
fresh blobs, pull them verified, HEAD blob and GET manifest C{--requests}
times) at every concurrency on Distribution, then on Speedy, with the same
payloads (A B A B ...).  It prints every phase as a JSON line, then the
medians over the rounds, the Speedy/Distribution ratios, each side's CPU
seconds and peak RSS over the whole race, two ways (the sum of each
process's own peak, and the largest sum of their RSS sampled every half
second; L{_procstat}), and each process's peak RSS.

    python bench/race.py [--count 100] [--size 16MiB] [--concurrency 10,50]
                         [--requests 2000] [--rounds 2] [--imageserver-workers N]
                         [--replication fanout|chain] [--up-arg=--cache-size=512MiB ...]
                         [--congestion ALGORITHM] [--out DIR]

Both sides' sockets use the kernel's default TCP congestion control, which
the report names: the figures depend on it (L{_sysctl}).  C{--congestion}
(root) makes another algorithm the default for the whole race, both sides
alike, and puts the old one back afterwards.

The defaults are the issue-5 workload and finish in a few minutes; C{make
bench} runs them.  Results (C{race.jsonl}, C{race.md}, PNGs) go to C{--out},
by default C{bench/results/race-<time>/}.  When the Speedy cluster cannot
start, the race says why, measures Distribution alone and exits 1.
"""

import argparse
import contextlib
import os
import signal
import sys
import tempfile
import time

import _sysctl
from _dataset import Dataset
from _servers import ServerProcess, distribution, free_port
from _stats import human_size, json_line, markdown_table, median
from loadgen import TABLE_COLUMNS, add_small_engine_options, registry_suite, small_engine
from plot import plot_rows

from speedy.localcluster import DEFAULT_IMAGESERVER_WORKERS, read_state
from speedy.units import parse_size

#: Seconds between samples of each side's processes' RSS.
SAMPLE_INTERVAL = 0.5

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPEEDY_CLUSTER = os.path.join(ROOT, "tools", "speedy-cluster")

#: (label, op, summary key) of every figure compared.
FIGURES = [
    ("push MiB/s", "push", "MiB_s"), ("push p99 ms", "push", "p99_ms"),
    ("pull MiB/s", "pull", "MiB_s"), ("pull p99 ms", "pull", "p99_ms"),
    ("HEAD blob req/s", "head", "req_s"), ("HEAD blob p50 ms", "head", "p50_ms"),
    ("HEAD blob p99 ms", "head", "p99_ms"),
    ("GET manifest req/s", "manifest", "req_s"), ("GET manifest p50 ms", "manifest", "p50_ms"),
    ("GET manifest p99 ms", "manifest", "p99_ms"),
    ("server CPU s (push)", "push", "server_cpu_s"), ("server CPU s (pull)", "pull", "server_cpu_s"),
]


def speedy_cluster(workdir, port, workers=DEFAULT_IMAGESERVER_WORKERS, scrub_period=None,
                   replication=None, extra=()):
    """
    @return: an unstarted L{ServerProcess} running C{tools/speedy-cluster
        up} with its var dir in C{workdir}, C{workers} imageservers sharing
        the registry C{port} and every other role on a free port, ready once
        C{up} says every role is healthy (the first imageserver answering
        on the port is not enough: a load generator that connected before
        the last worker listened would never reach it).
    @param scrub_period: the chunkservers' C{--scrub-period} (C{1s}: their
        scrubbers check without pause, at their default rate), or None.
    @param extra: more arguments of C{up}.
    """
    var = os.path.join(workdir, "var")
    argv = [sys.executable, SPEEDY_CLUSTER, "up", "--var", var, "--registry", f"127.0.0.1:{port}",
            "--master-port", "0", "--chunkserver-port", "0", "--imageserver-workers", str(workers)]
    if scrub_period is not None:
        argv += ["--scrub-period", scrub_period]
    if replication is not None:
        argv += ["--replication", replication]
    argv += list(extra)
    return ServerProcess("speedy-cluster", argv, "127.0.0.1", port, workdir,
                         ready=lambda: bool((read_state(var) or {}).get("ready")))


def compare(rows, sides, concurrency_levels):
    """
    @return: one dict per (figure, concurrency): the median of each side
        over the rounds and C{ratio} = Speedy / Distribution.
    """
    table = []
    for label, op, key in FIGURES:
        for concurrency in concurrency_levels:
            entry = {"figure": label, "concurrency": concurrency}
            for side in sides:
                entry[side] = median(row.get(key) for row in rows if row["target"] == side
                                     and row["op"] == op and row["concurrency"] == concurrency)
            a, b = entry.get("distribution"), entry.get("speedy")
            entry["ratio"] = round(b / a, 2) if a and b is not None else None
            table.append(entry)
    return table


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=100, help="blobs pushed per concurrency and round")
    parser.add_argument("--size", type=parse_size, default="16MiB")
    parser.add_argument("--concurrency", default="10,50")
    add_small_engine_options(parser, requests=2000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--upload", choices=("monolithic", "chunked"), default="monolithic")
    parser.add_argument("--processes", type=int, default=None, help="load generator processes")
    parser.add_argument("--imageserver-workers", type=int, default=DEFAULT_IMAGESERVER_WORKERS,
                        help="Speedy imageserver processes sharing the registry port")
    parser.add_argument("--scrub-period", default=None,
                        help="Speedy's chunkservers start a scrub pass this often (1s: scrubbing "
                             "all along, to measure what the scrubber costs)")
    parser.add_argument("--replication", choices=("fanout", "chain"), default=None,
                        help="Speedy's imageservers replicate chunks this way (default: theirs)")
    parser.add_argument("--up-arg", action="append", default=[],
                        help="one more argument of Speedy's speedy-cluster up (repeatable), "
                             "e.g. --up-arg=--cache-size=512MiB")
    parser.add_argument("--congestion", default=None,
                        help="TCP congestion control for the race, both sides (root; default: "
                             "the kernel's, left as it is)")
    parser.add_argument("--out", default=os.path.join(ROOT, "bench", "results",
                                                      time.strftime("race-%Y%m%d-%H%M%S")))
    args = parser.parse_args(argv)
    levels = [int(c) for c in args.concurrency.split(",")]
    engine = small_engine(args.small_engine)
    os.makedirs(args.out, exist_ok=True)
    signal.signal(signal.SIGTERM, _raise_interrupt)

    with contextlib.ExitStack() as stack:
        try:
            congestion = stack.enter_context(_sysctl.congestion_control(args.congestion))
        except (ValueError, PermissionError) as e:
            parser.error(str(e))
        return race(args, levels, engine, congestion)


def race(args, levels, engine, congestion):
    """
    Run the race of C{args} and report it.

    @param congestion: the TCP congestion control both sides' sockets use.
    @return: the exit status.
    """
    rows, servers, missing = [], {}, None
    stack = contextlib.ExitStack()
    with tempfile.TemporaryDirectory(prefix="speedy-race-") as workdir:
        try:
            for name in ("distribution", "speedy"):
                os.makedirs(os.path.join(workdir, name))
            servers["distribution"] = distribution(os.path.join(workdir, "distribution"),
                                                   free_port()).start()
            try:
                servers["speedy"] = speedy_cluster(os.path.join(workdir, "speedy"), free_port(),
                                                   args.imageserver_workers,
                                                   args.scrub_period, args.replication,
                                                   args.up_arg).start(timeout=120)
            except (RuntimeError, OSError) as e:
                missing = f"the Speedy cluster did not start: {e}"
                print(f"race: {missing}\nrace: measuring Distribution alone", file=sys.stderr)
            for server in servers.values():
                stack.callback(server.tree.sample_every(SAMPLE_INTERVAL))
            with open(os.path.join(args.out, "race.jsonl"), "w") as jsonl:
                for round_number in range(1, args.rounds + 1):
                    for concurrency in levels:
                        dataset = Dataset(count=args.count, size=args.size)
                        for name, server in servers.items():
                            for row in registry_suite(
                                    server.url, label=name, count=args.count, size=args.size,
                                    concurrency=concurrency, ops=("pull", "head", "manifest"),
                                    requests=args.requests, upload=args.upload,
                                    processes=args.processes, dataset=dataset, server=server.tree,
                                    small_engine=engine, small_seconds=args.small_seconds):
                                row["round"] = round_number
                                row["congestion"] = congestion
                                print(json_line(row), flush=True)
                                jsonl.write(json_line(row) + "\n")
                                rows.append(row)
        finally:
            stack.close()  # the samplers: stopped, with a last sample
            for server in servers.values():
                server.tree.sample()
            resources = [{"side": name, "cpu_s": round(server.tree.cpu_seconds(), 1),
                          "peak_rss": human_size(server.tree.peak_rss()),
                          "peak_rss_sampled": human_size(server.tree.peak_rss_sampled()),
                          "processes": server.tree.process_count()}
                         for name, server in servers.items()]
            processes = [{"side": name, "process": process, "peak_rss": human_size(rss)}
                         for name, server in servers.items()
                         for process, rss in sorted(server.tree.peak_rss_by_name().items())]
            for server in reversed(list(servers.values())):
                server.stop()

    sides = list(servers)
    report = "\n\n".join([
        f"# Race: {args.count} blobs of {human_size(args.size)}, concurrency {args.concurrency}, "
        f"{args.requests} HEAD requests, GET manifest for "
        + (f"{args.small_seconds:g} s (wrk)" if engine == "wrk" else f"{args.requests} requests")
        + f"; medians of {args.rounds} rounds; Speedy with {args.imageserver_workers} imageserver "
        f"worker(s) on its registry port; TCP congestion control {congestion or 'unknown'}",
        markdown_table(compare(rows, sides, levels),
                       [("figure", "figure"), ("conc", "concurrency")]
                       + [(side, side) for side in sides] + [("speedy/distribution", "ratio")]),
        markdown_table(resources, [("side", "side"), ("CPU s (whole race)", "cpu_s"),
                                   ("peak RSS (sum of peaks)", "peak_rss"),
                                   ("peak RSS (sampled sum)", "peak_rss_sampled"),
                                   ("processes", "processes")]),
        markdown_table(processes, [("side", "side"), ("process", "process"),
                                   ("peak RSS", "peak_rss")]),
        markdown_table(rows, TABLE_COLUMNS + [("round", "round"), ("server cores", "server_cores")]),
    ] + ([f"Speedy not measured: {missing}"] if missing else []))
    print("\n" + report)
    with open(os.path.join(args.out, "race.md"), "w") as f:
        f.write(report + "\n")
    try:
        for path in plot_rows(rows, args.out):
            print(f"wrote {path}")
    except ImportError as e:
        print(f"no plots ({e}); pip install -e '.[bench]'", file=sys.stderr)
    return 1 if missing or any(row["errors"] for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
