"""
Benchmark one chunkserver process on loopback, driven by ChunkClient.

    .venv/bin/python bench/bench_chunkserver.py [--sync always] [--small-ops 20000]

Measures 16 MiB PUT and GET throughput (MiB/s) at concurrency 1 and 16,
4 KiB PUT and GET operations per second at concurrency 16, and 16 MiB GET
with sendfile against GET through read() (the daemon restarted with
SPEEDY_NO_SENDFILE=1).  Client and server share the machine's cores.
"""

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from twisted.internet import defer, task  # noqa: E402

from speedy.errors import ConnectionFailed, Unavailable  # noqa: E402
from speedy.test.processes import Daemon, free_port  # noqa: E402
from speedy.wire.client import ChunkClient  # noqa: E402

MiB = 1 << 20


def cpu_seconds(pid):
    """@return: user+system CPU seconds process C{pid} has used so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_daemon(workdir, sync, env=None):
    port = free_port()
    daemon = Daemon(
        "speedy-chunkserver",
        ["--data-dir", os.path.join(workdir, "data"),
         "--listen", f"tcp:{port}:interface=127.0.0.1", "--group-id", "1",
         "--volume-size", "1GiB", "--reserve", "0", "--sync", sync],
        port=port, workdir=workdir, env=env)
    return daemon.start(), f"127.0.0.1:{port}"


async def wait_ready(reactor, client, address):
    for _ in range(200):
        try:
            return await client.status(address)
        except (ConnectionFailed, Unavailable):
            await task.deferLater(reactor, 0.05)
    raise RuntimeError("chunkserver never became ready")


async def run_concurrently(concurrency, count, operation):
    """Run C{operation(i)} for i in range(count), C{concurrency} at a time.
    @return: elapsed seconds."""
    queue = iter(range(count))

    async def worker():
        for i in queue:
            await operation(i)

    started = time.perf_counter()
    await defer.gatherResults([defer.Deferred.fromCoroutine(worker()) for _ in range(concurrency)],
                              consumeErrors=True)
    return time.perf_counter() - started


async def big_chunks(daemon, client, address, concurrency, count, first_id, data, label):
    elapsed = await run_concurrently(
        concurrency, count, lambda i: client.put(address, first_id + i, data))
    put = count * len(data) / MiB / elapsed
    cpu = cpu_seconds(daemon.process.pid)
    elapsed = await run_concurrently(
        concurrency, count, lambda i: client.get(address, first_id + i))
    cpu = cpu_seconds(daemon.process.pid) - cpu
    get = count * len(data) / MiB / elapsed
    print(f"{label:<44} c={concurrency:<3} PUT {put:7.1f} MiB/s   GET {get:7.1f} MiB/s"
          f"   server CPU {cpu * 1000 / count:5.1f} ms per GET", flush=True)


async def small_chunks(daemon, client, address, concurrency, count, first_id):
    data = os.urandom(4096)
    cpu = cpu_seconds(daemon.process.pid)
    elapsed = await run_concurrently(
        concurrency, count, lambda i: client.put(address, first_id + i, data))
    put, put_cpu = count / elapsed, cpu_seconds(daemon.process.pid) - cpu
    cpu = cpu_seconds(daemon.process.pid)
    elapsed = await run_concurrently(
        concurrency, count, lambda i: client.get(address, first_id + i))
    get, get_cpu = count / elapsed, cpu_seconds(daemon.process.pid) - cpu
    print(f"{'4 KiB chunks':<44} c={concurrency:<3} PUT {put:7.0f} ops/s    GET {get:7.0f} ops/s"
          f"   server CPU {put_cpu * 1e6 / count:4.0f} us per PUT, {get_cpu * 1e6 / count:4.0f} us per GET",
          flush=True)


async def session(reactor, workdir, sync, env, body):
    daemon, address = start_daemon(workdir, sync, env)
    client = ChunkClient(reactor, request_timeout=120.0, max_connections_per_server=16)
    try:
        await wait_ready(reactor, client, address)
        return await body(daemon, client, address)
    finally:
        await client.close()
        daemon.stop()


def main(reactor, args):
    async def run():
        data = os.urandom(16 * MiB)
        print(f"chunkserver benchmark: sync={args.sync}, {os.cpu_count()} cores, loopback")

        async def everything(daemon, client, address):
            label = "16 MiB chunks (sendfile)"
            await big_chunks(daemon, client, address, 1, args.big, 1_000_000, data, label)
            await big_chunks(daemon, client, address, 16, args.big * 2, 2_000_000, data, label)
            await small_chunks(daemon, client, address, 16, args.small_ops, 3_000_000)

        async def without_sendfile(daemon, client, address):
            label = "16 MiB chunks (read, SPEEDY_NO_SENDFILE=1)"
            await big_chunks(daemon, client, address, 1, args.big, 1_000_000, data, label)
            await big_chunks(daemon, client, address, 16, args.big * 2, 2_000_000, data, label)

        with tempfile.TemporaryDirectory(prefix="speedy-bench-") as workdir:
            await session(reactor, os.path.join(workdir, "a"), args.sync, None, everything)
            await session(reactor, os.path.join(workdir, "b"), args.sync,
                          {"SPEEDY_NO_SENDFILE": "1"}, without_sendfile)

    return defer.Deferred.fromCoroutine(run())


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--sync", default="always", choices=["always", "batch", "none"])
    parser.add_argument("--big", type=int, default=16, help="16 MiB chunks per run at c=1 (twice at c=16)")
    parser.add_argument("--small-ops", type=int, default=20000, help="4 KiB PUTs (then GETs) at c=16")
    arguments = parser.parse_args()
    task.react(main, (arguments,))
