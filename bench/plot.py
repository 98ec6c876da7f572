# -*- test-case-name: bench._test_loadgen -*-
"""
PNG plots of benchmark results: for each operation, throughput against
concurrency and p99 latency against concurrency, one line per target
(median over rounds where a phase was repeated).

    python bench/plot.py results.jsonl [more.jsonl ...] --out DIR

reads the JSON lines that C{loadgen.py}, C{calibrate.py}, C{race.py} and
C{testbed.py} write, and prints the path of every PNG it wrote.
"""

import argparse
import json
import os
import sys

from _stats import median


def _series(rows, op, key):
    """@return: {target: ([concurrency], [median of key])} for C{op}."""
    by_target = {}
    for row in rows:
        if row.get("op") == op and row.get(key) is not None:
            by_target.setdefault(row["target"], {}).setdefault(row["concurrency"], []).append(row[key])
    return {target: (sorted(levels), [median(levels[c]) for c in sorted(levels)])
            for target, levels in by_target.items()}


def plot_rows(rows, out):
    """
    Write C{<op>.png} into C{out} for every operation in C{rows}: throughput
    (MiB/s for bulk transfers, req/s for the others) and p99 against
    concurrency.

    @return: the paths written.
    """
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot

    os.makedirs(out, exist_ok=True)
    paths = []
    for op in sorted({row["op"] for row in rows}):
        bulk = any(row.get("size", 0) >= 1 << 20 for row in rows if row["op"] == op)
        rate_key, rate_label = ("MiB_s", "MiB/s") if bulk else ("req_s", "requests/s")
        figure, (rate_axes, p99_axes) = pyplot.subplots(1, 2, figsize=(10, 4))
        for axes, key, label in ((rate_axes, rate_key, rate_label), (p99_axes, "p99_ms", "p99 latency, ms")):
            for target, (levels, values) in sorted(_series(rows, op, key).items()):
                axes.plot(levels, values, marker="o", label=target)
            axes.set_xlabel("concurrency")
            axes.set_ylabel(label)
            axes.set_ylim(bottom=0)
            axes.grid(True, alpha=0.3)
            axes.legend()
        figure.suptitle(op)
        figure.tight_layout()
        path = os.path.join(out, f"{op}.png")
        figure.savefig(path, dpi=100)
        pyplot.close(figure)
        paths.append(path)
    return paths


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("jsonl", nargs="+")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    rows = []
    for name in args.jsonl:
        with open(name) as f:
            rows.extend(json.loads(line) for line in f if line.strip())
    for path in plot_rows(rows, args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
