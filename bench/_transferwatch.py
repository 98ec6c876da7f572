# -*- test-case-name: bench._test_loadgen -*-
"""
Watch a chunkmaster's transfers: one C{GET /v1/admin/transfers} every
C{--interval} seconds, each answer written as a JSON line with the wall
clock time it came back (C{t}), until killed.  testbed.py runs it in the
chunkmaster's network namespace and reads back how many chunk bytes the
transfers copied between two instants (L{copied_between}): the in-memory
C{counters.bytes} of the transfer service grows with every chunk copied,
where a transfer's own C{bytes_done} grows only when a batch is switched.

    python bench/_transferwatch.py http://MASTER TOKEN_FILE OUT.jsonl [--interval 1]
"""

import argparse
import bisect
import json
import sys
import time
import urllib.request


def poll(master, token, timeout=10.0):
    """@return: the chunkmaster's C{/v1/admin/transfers} answer."""
    request = urllib.request.Request(f"{master}/v1/admin/transfers",
                                     headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def read_samples(path):
    """@return: the watcher's samples in C{path}, oldest first (a line cut
    short by the watcher's end is skipped)."""
    samples = []
    with open(path) as lines:
        for line in lines:
            try:
                samples.append(json.loads(line))
            except ValueError:
                continue
    return samples


def copied_at(samples, when):
    """@return: C{counters.bytes} as of wall clock time C{when}: the last
    sample at or before it (0 before the first)."""
    times = [s["t"] for s in samples]
    at = bisect.bisect_right(times, when)
    return samples[at - 1]["counters"]["bytes"] if at else 0


def copied_between(samples, start, end):
    """@return: the chunk bytes the transfers copied from C{start} to C{end}
    (wall clock times), to the watcher's interval at each end."""
    return copied_at(samples, end) - copied_at(samples, start)


def transfer_at(samples, transfer_id, when):
    """@return: transfer C{transfer_id}'s row as of C{when}, or None."""
    times = [s["t"] for s in samples]
    at = bisect.bisect_right(times, when)
    for sample in reversed(samples[:at]):
        for row in sample["transfers"]:
            if row["transfer_id"] == transfer_id:
                return row
    return None


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("master")
    parser.add_argument("token_file")
    parser.add_argument("out")
    parser.add_argument("--interval", type=float, default=1.0)
    args = parser.parse_args(argv)
    with open(args.token_file) as f:
        token = f.read().strip()
    with open(args.out, "a") as out:
        while True:
            try:
                answer = poll(args.master, token)
            except (OSError, ValueError) as e:
                print(f"transferwatch: {e}", file=sys.stderr)
            else:
                answer["t"] = round(time.time(), 3)
                out.write(json.dumps(answer) + "\n")
                out.flush()
            time.sleep(args.interval)


if __name__ == "__main__":
    sys.exit(main())
