# -*- test-case-name: bench._test_loadgen -*-
"""
Summaries of one measured phase, and the two ways they are printed: one JSON
object per line (for machines and L{plot}) and a markdown table (for people).
"""

import json
import math
import statistics

MiB = 1 << 20


def percentile(values, fraction):
    """
    @return: the nearest-rank C{fraction} percentile (0 < fraction <= 1) of
        C{values}, or None when there are none.
    """
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(1, math.ceil(len(ordered) * fraction)) - 1]


def histogram_percentile(histogram, fraction):
    """
    @param histogram: C{{value: count}}.
    @return: the nearest-rank C{fraction} percentile (0 < fraction <= 1) of
        the values the histogram counts, as L{percentile} of them would be,
        or None when it counts none.
    """
    total = sum(histogram.values())
    if not total:
        return None
    rank = max(1, math.ceil(total * fraction))
    seen = 0
    for value in sorted(histogram):
        seen += histogram[value]
        if seen >= rank:
            return value


def summarize(samples, *, wall, cpu_seconds):
    """
    Reduce the per-request samples of one phase to its figures.

    @param samples: (latency seconds, payload bytes, error or None) tuples.
    @param wall: seconds from the start signal to the last answer.
    @param cpu_seconds: CPU time the load generator's workers used meanwhile.
    @return: a JSON-ready dict: requests, ok, errors, error_kinds, wall_s,
        MiB_s and req_s (successful requests only), p50_ms, p99_ms, max_ms
        (latencies of successful requests), loadgen_cpu_s and loadgen_cores.
    """
    good = [(latency, size) for latency, size, error in samples if error is None]
    kinds = {}
    for _, _, error in samples:
        if error is not None:
            kinds[error] = kinds.get(error, 0) + 1
    latencies = [latency for latency, _ in good]
    wall = max(wall, 1e-9)

    def ms(value):
        return None if value is None else round(value * 1000, 3)

    return {
        "requests": len(samples),
        "ok": len(good),
        "errors": len(samples) - len(good),
        "error_kinds": kinds,
        "wall_s": round(wall, 4),
        "MiB_s": round(sum(size for _, size in good) / MiB / wall, 2),
        "req_s": round(len(good) / wall, 1),
        "p50_ms": ms(percentile(latencies, 0.50)),
        "p99_ms": ms(percentile(latencies, 0.99)),
        "max_ms": ms(max(latencies) if latencies else None),
        "loadgen_cpu_s": round(cpu_seconds, 3),
        "loadgen_cores": round(cpu_seconds / wall, 2),
    }


def human_size(n):
    """@return: C{n} bytes as people write it: "16 MiB", "2.2 KiB", "0 B"."""
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n} B"


def median(values):
    """@return: the median of the numbers among C{values} (None ignored), or None."""
    numbers = [v for v in values if v is not None]
    return statistics.median(numbers) if numbers else None


def json_line(record):
    """@return: C{record} as one line of JSON with sorted keys."""
    return json.dumps(record, sort_keys=True)


def markdown_table(rows, columns):
    """
    @param rows: dicts.
    @param columns: (header, key) pairs; a missing or None value prints "-".
    @return: a GitHub markdown table as one string.
    """

    def cell(value):
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:.2f}"
        if isinstance(value, dict):
            return ", ".join(f"{k}: {v}" for k, v in value.items()) or "-"
        return str(value)

    lines = [
        "| " + " | ".join(header for header, _ in columns) + " |",
        "|" + "|".join("---" for _ in columns) + "|",
    ]
    for row in rows:
        lines.append("| " + " | ".join(cell(row.get(key)) for _, key in columns) + " |")
    return "\n".join(lines)
