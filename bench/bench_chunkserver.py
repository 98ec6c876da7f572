"""
Benchmark one chunkserver process on loopback, driven by ChunkClient.

    .venv/bin/python bench/bench_chunkserver.py [--sync always] [--small-ops 20000]
        [--procs 2] [--small-only] [--server-path DIR] [--trace]

Measures 16 MiB PUT and GET throughput (MiB/s) at concurrency 1 and 16,
4 KiB PUT and GET operations per second at concurrency 16, and 16 MiB GET
with sendfile against GET through read() (the daemon restarted with
--zero-copy off).  Client and server share the machine's cores.

One Python client process tops out below what the chunkserver can answer
on 4 KiB chunks, so the small-chunk phase runs in --procs client processes
(this script again, with --client), the concurrency split between them;
ops/s is all their operations over the time from the first one's start to
the last one's end.  --server-path runs the daemon from another checkout
(e.g. C{git archive HEAD | tar -x -C DIR}), to compare before and after a
change with the same client.  --trace makes every 4 KiB request carry a
16-character trace (protocol.md, *Traces*), as an imageserver's do.
"""

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from twisted.internet import defer, task  # noqa: E402
from twisted.internet.utils import getProcessOutputAndValue  # noqa: E402

from bench.bench_store import concurrently  # noqa: E402
from speedy.errors import ConnectionFailed, Unavailable  # noqa: E402
from speedy.test.processes import TEST_SECRET, Daemon, free_port  # noqa: E402
from speedy.wire.client import ChunkClient  # noqa: E402

MiB = 1 << 20


def cpu_seconds(pid):
    """@return: user+system CPU seconds process C{pid} has used so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_daemon(workdir, sync, extra_args=(), server_path=None):
    port = free_port()
    daemon = Daemon(
        "speedy-chunkserver",
        ["--data-dir", os.path.join(workdir, "data"),
         "--listen", f"tcp:{port}:interface=127.0.0.1", "--group-id", "1",
         "--volume-size", "1GiB", "--reserve", "0", "--sync", sync, *extra_args],
        port=port, workdir=workdir)
    if server_path is not None:
        daemon.env["PYTHONPATH"] = server_path
    return daemon.start(), f"127.0.0.1:{port}"


async def wait_ready(reactor, client, address):
    for _ in range(200):
        try:
            return await client.status(address)
        except (ConnectionFailed, Unavailable):
            await task.deferLater(reactor, 0.05)
    raise RuntimeError("chunkserver never became ready")


async def big_chunks(daemon, client, address, concurrency, count, first_id, data, label):
    elapsed = await concurrently(
        count, concurrency, lambda i: client.put(address, first_id + i, data))
    put = count * len(data) / MiB / elapsed
    cpu = cpu_seconds(daemon.process.pid)
    elapsed = await concurrently(
        count, concurrency, lambda i: client.get(address, first_id + i))
    cpu = cpu_seconds(daemon.process.pid) - cpu
    get = count * len(data) / MiB / elapsed
    print(f"{label:<44} c={concurrency:<3} PUT {put:7.1f} MiB/s   GET {get:7.1f} MiB/s"
          f"   server CPU {cpu * 1000 / count:5.1f} ms per GET", flush=True)


async def client_process(reactor, args):
    """
    The --client side: C{args.count} 4 KiB C{args.op}s from id
    C{args.first_id} on, C{args.concurrency} at a time.

    @return: a dict of the operations done and their first start and last
        end (wall-clock seconds, comparable across processes).
    """
    data = os.urandom(4096)
    client = ChunkClient(reactor, request_timeout=120.0, max_connections_per_server=16,
                         secret=TEST_SECRET)
    try:
        await wait_ready(reactor, client, args.client)
        if args.op == "put":
            operation = lambda i: client.put(args.client, args.first_id + i, data)  # noqa: E731
        else:
            operation = lambda i: client.get(args.client, args.first_id + i)  # noqa: E731
        if args.trace:
            from speedy.logs import request_id
            request_id.set(new_request_id_like())
        start = time.time()
        await concurrently(args.count, args.concurrency, operation)
        return {"ops": args.count, "start": start, "end": time.time()}
    finally:
        await client.close()


def new_request_id_like():
    """@return: an id of the imageserver's kind (16 hex digits)."""
    return os.urandom(8).hex()


async def in_processes(reactor, address, op, procs, concurrency, count, first_id, trace=False):
    """
    Run C{count} 4 KiB C{op}s in C{procs} client processes.

    @return: operations per second over all of them.
    """
    share = count // procs
    runs = [
        getProcessOutputAndValue(sys.executable, [
            os.path.abspath(__file__), "--client", address, "--op", op,
            "--first-id", str(first_id + n * share), "--count", str(share),
            "--concurrency", str(max(1, concurrency // procs))] + (["--trace"] if trace else []),
            env=os.environ)
        for n in range(procs)]
    results = []
    for out, err, code in await defer.gatherResults(runs, consumeErrors=True):
        if code != 0:
            raise RuntimeError(f"client process failed ({code}):\n{err.decode(errors='replace')}")
        results.append(json.loads(out.decode().strip().splitlines()[-1]))
    elapsed = max(r["end"] for r in results) - min(r["start"] for r in results)
    return sum(r["ops"] for r in results) / elapsed


async def small_chunks(reactor, daemon, address, concurrency, count, first_id, procs, trace=False):
    cpu = cpu_seconds(daemon.process.pid)
    put = await in_processes(reactor, address, "put", procs, concurrency, count, first_id, trace)
    put_cpu = cpu_seconds(daemon.process.pid) - cpu
    cpu = cpu_seconds(daemon.process.pid)
    get = await in_processes(reactor, address, "get", procs, concurrency, count, first_id, trace)
    get_cpu = cpu_seconds(daemon.process.pid) - cpu
    label = f"4 KiB chunks, {procs} client process(es)" + (", traced" if trace else "")
    print(f"{label:<44} c={concurrency:<3}"
          f" PUT {put:7.0f} ops/s    GET {get:7.0f} ops/s"
          f"   server CPU {put_cpu * 1e6 / count:4.0f} us per PUT, {get_cpu * 1e6 / count:4.0f} us per GET",
          flush=True)


async def session(reactor, workdir, sync, extra_args, server_path, body):
    daemon, address = start_daemon(workdir, sync, extra_args, server_path)
    client = ChunkClient(reactor, request_timeout=120.0, max_connections_per_server=16,
                         secret=TEST_SECRET)
    try:
        await wait_ready(reactor, client, address)
        return await body(daemon, client, address)
    finally:
        await client.close()
        daemon.stop()


def main(reactor, args):
    if args.client:
        async def report():
            print(json.dumps(await client_process(reactor, args)), flush=True)
        return defer.Deferred.fromCoroutine(report())

    async def run():
        data = os.urandom(16 * MiB)
        print(f"chunkserver benchmark: sync={args.sync}, {os.cpu_count()} cores, loopback"
              + (f", server from {args.server_path}" if args.server_path else ""))

        async def everything(daemon, client, address):
            label = "16 MiB chunks (staged send or sendfile)"
            if not args.small_only:
                await big_chunks(daemon, client, address, 1, args.big, 1_000_000, data, label)
                await big_chunks(daemon, client, address, 16, args.big * 2, 2_000_000, data, label)
            await small_chunks(reactor, daemon, address, 16, args.small_ops, 3_000_000, args.procs,
                               args.trace)

        async def without_sendfile(daemon, client, address):
            label = "16 MiB chunks (read, --zero-copy off)"
            await big_chunks(daemon, client, address, 1, args.big, 1_000_000, data, label)
            await big_chunks(daemon, client, address, 16, args.big * 2, 2_000_000, data, label)

        with tempfile.TemporaryDirectory(prefix="speedy-bench-") as workdir:
            await session(reactor, os.path.join(workdir, "a"), args.sync, (),
                          args.server_path, everything)
            if not args.small_only:
                await session(reactor, os.path.join(workdir, "b"), args.sync,
                              ["--zero-copy", "off"], args.server_path, without_sendfile)

    return defer.Deferred.fromCoroutine(run())


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--sync", default="always", choices=["always", "batch", "none"])
    parser.add_argument("--big", type=int, default=16, help="16 MiB chunks per run at c=1 (twice at c=16)")
    parser.add_argument("--small-ops", type=int, default=20000, help="4 KiB PUTs (then GETs) at c=16")
    parser.add_argument("--procs", type=int, default=1, help="client processes for the 4 KiB phase")
    parser.add_argument("--small-only", action="store_true", help="run only the 4 KiB phase")
    parser.add_argument("--server-path", help="run the daemon from this checkout instead")
    parser.add_argument("--trace", action="store_true",
                        help="4 KiB requests carry a trace, as an imageserver's do")
    # The client processes of --procs: this script again, with these.
    parser.add_argument("--client", metavar="ADDRESS", help=argparse.SUPPRESS)
    parser.add_argument("--op", choices=["put", "get"], help=argparse.SUPPRESS)
    parser.add_argument("--first-id", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--concurrency", type=int, help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    task.react(main, (arguments,))
