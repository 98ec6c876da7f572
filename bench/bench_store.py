"""
The chunkserver storage engine measured directly, without the network:

  - index memory per chunk at --chunks ids (tracemalloc), ids handed out
    the way the chunkmaster does (ranges of 5,000, eight writers interleaved);
  - restart time at --chunks stored chunks: from the checkpoint after a clean
    close, after a crash with a journal tail behind the checkpoint, and with
    no checkpoint at all (full scan);
  - put/get operations per second of 4 KiB chunks and MiB/s of 16 MiB
    chunks through L{ChunkStore} on the real reactor and its thread pool,
    for each sync policy, with --concurrency requests in flight;
  - how long the reactor thread is held: the longest gap of a 1 ms timer
    while 16 MiB chunks are written and verified, and the cost of one
    64 KiB page-cache pwrite on the reactor thread;
  - "GET verify": the reactor thread's CPU time per GET of a cached record
    of each size, checked inline against handed to the thread pool (16 in
    flight): where the two cross is where INLINE_VERIFY_LIMIT belongs.

    .venv/bin/python bench/bench_store.py [--chunks 1000000] [--dir DIR]
        [--verify-only]

The data directory (a temporary one under --dir, default the system's) is
removed at the end.  Figures go to stdout, one per line.
"""

import argparse
import os
import shutil
import sys
import tempfile
import time
import tracemalloc

from twisted.internet import task
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.internet.task import Clock, LoopingCall
from twisted.internet.threads import deferToThreadPool

from speedy.chunkserver.disk import Disk
from speedy.chunkserver.needle_index import NeedleIndex
from speedy.chunkserver.store import ChunkStore
from speedy.chunkserver.volume import (
    COMPLETE, HEADER_SIZE, RecordHeader, check_record, crc32c, read_record)

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30


def figure(name, value, unit=""):
    print(f"{name:<58} {value:>14,.2f} {unit}", flush=True)


def interleaved_ids(count, width=5000, writers=8):
    """@return: ids as imageservers use them: each of C{writers} takes a
    range of C{width} from the master and uses it in order, interleaved."""
    for block in range(0, count, width * writers):
        for n in range(width):
            for w in range(writers):
                file_id = block + w * width + n
                if file_id < count:
                    yield file_id


def index_memory(count):
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    index = NeedleIndex()
    for file_id in interleaved_ids(count):
        index.set(file_id, 1 + file_id % 3, 4096 + 8 * file_id, 16 * MiB, file_id)
    built = tracemalloc.get_traced_memory()[0] - before
    runs = index.runs()
    del index
    before = tracemalloc.get_traced_memory()[0]
    loaded = NeedleIndex.from_runs(runs)
    from_checkpoint = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    figure(f"index bytes/chunk at {count:,} chunks, built by puts", built / count, "B")
    figure(f"index bytes/chunk at {count:,} chunks, loaded from checkpoint",
           from_checkpoint / count, "B")
    del loaded

    index = NeedleIndex()
    ids = list(interleaved_ids(count))
    started = time.perf_counter()
    for file_id in ids:
        index.set(file_id, 1, 4096 + 8 * file_id, 4096, 0)
    elapsed = time.perf_counter() - started
    figure("index inserts/s", count / elapsed, "ops/s")
    started = time.perf_counter()
    for file_id in ids:
        index.get(file_id)
    figure("index lookups/s", count / (time.perf_counter() - started), "ops/s")


class CrashableDisk(Disk):
    """Closes every descriptor at once, like a killed process."""

    def __init__(self):
        self.fds = set()

    def open(self, path, create=False):
        fd = super().open(path, create)
        self.fds.add(fd)
        return fd

    def close(self, fd):
        self.fds.discard(fd)
        super().close(fd)

    def crash(self):
        for fd in list(self.fds):
            self.close(fd)


def inline(f, *args):
    """Run the store's "thread" work inline: the restart figures are for
    one thread doing nothing else."""
    return maybeDeferred(f, *args)


def restart(count, directory):
    path = os.path.join(directory, "restart")
    disk = CrashableDisk()

    def open_store():
        return ChunkStore.open(Clock(), path, volume_size=GiB, sync="none",
                               reserve=0, run_in_thread=inline, disk=disk)

    store = open_store()
    data = b"x" * 64
    started = time.perf_counter()
    for file_id in interleaved_ids(count):
        write = store.put(file_id, len(data))
        write.write(data)
        write.finish()
    figure(f"fill: {count:,} puts of 64 B, sync=none, no threads",
           count / (time.perf_counter() - started), "ops/s")
    store.close()
    started = time.perf_counter()
    store = open_store()
    figure(f"restart at {count:,} chunks from checkpoint",
           time.perf_counter() - started, "s")
    assert store.status()["chunks"] == count

    journal = 20_000
    for file_id in range(count, count + journal):
        write = store.put(file_id, len(data))
        write.write(data)
        write.finish()
    for file_id in range(0, 2 * journal, 2):
        store.delete(file_id)
    disk.crash()
    started = time.perf_counter()
    store = open_store()
    figure(f"restart after crash, {journal:,} puts + {journal:,} deletes in journal",
           time.perf_counter() - started, "s")
    assert store.status()["chunks"] == count
    store.close()
    os.unlink(os.path.join(path, "index.ckpt"))
    started = time.perf_counter()
    store = open_store()
    figure(f"restart at {count:,} chunks with no checkpoint (full scan)",
           time.perf_counter() - started, "s")
    store.close()
    shutil.rmtree(path)


async def concurrently(total, concurrency, operation):
    """Run C{operation(n)} for n in range(total), C{concurrency} at a time.
    @return: elapsed seconds."""
    numbers = iter(range(total))

    async def worker():
        for n in numbers:
            await operation(n)

    started = time.perf_counter()
    await DeferredList([Deferred.fromCoroutine(worker()) for _ in range(concurrency)],
                       fireOnOneErrback=True, consumeErrors=True)
    return time.perf_counter() - started


def put_operation(store, data, piece=64 * KiB, first_id=0, reactor=None):
    """@return: an operation storing C{data} in pieces; with C{reactor}, one
    piece per reactor turn, the way they arrive from a socket."""
    view = memoryview(data)

    async def put(n):
        write = store.put(first_id + n, len(data))
        for start in range(0, len(data), piece):
            write.write(view[start:start + piece])
            if reactor is not None:
                await task.deferLater(reactor, 0, lambda: None)
        await write.finish()

    return put


def get_operation(store, first_id=0, modulo=None):
    async def get(n):
        chunk = await store.get(first_id + (n % modulo if modulo else n))
        chunk.release()

    return get


async def throughput(reactor, directory, concurrency):
    reactor.suggestThreadPoolSize(concurrency)
    for sync in ("always", "batch", "none"):
        path = tempfile.mkdtemp(dir=directory)
        store = ChunkStore.open(reactor, path, volume_size=GiB, sync=sync, reserve=0)
        small, big = os.urandom(4 * KiB), os.urandom(16 * MiB)
        count = 20_000 if sync != "always" else 5_000
        elapsed = await concurrently(count, concurrency, put_operation(store, small))
        figure(f"put 4 KiB, sync={sync}, {concurrency} in flight", count / elapsed, "ops/s")
        if sync == "always":
            status = store.status()["counters"]
            figure("  fdatasync rounds per 4 KiB put (group commit)",
                   status["sync_rounds"] / status["writes"], "")
        elapsed = await concurrently(count, concurrency, get_operation(store))
        figure(f"get 4 KiB (CRC-verified), {concurrency} in flight", count / elapsed, "ops/s")
        count = 64
        elapsed = await concurrently(
            count, min(concurrency, 8), put_operation(store, big, first_id=10**9))
        figure(f"put 16 MiB, sync={sync}", count * 16 / elapsed, "MiB/s")
        elapsed = await concurrently(
            count, min(concurrency, 8), get_operation(store, first_id=10**9))
        figure("get 16 MiB (CRC-verified)", count * 16 / elapsed, "MiB/s")
        await store.close()
        shutil.rmtree(path)


async def reactor_stalls(reactor, directory):
    """The reactor thread's longest pause while 16 MiB chunks go in and out."""
    path = tempfile.mkdtemp(dir=directory)
    store = ChunkStore.open(reactor, path, volume_size=GiB, sync="always", reserve=0)
    gaps = []
    last = [time.perf_counter()]

    def tick():
        now = time.perf_counter()
        gaps.append(now - last[0])
        last[0] = now

    big = os.urandom(16 * MiB)
    ticker = LoopingCall(tick)
    ticker.clock = reactor
    ticker.start(0.001)
    await task.deferLater(reactor, 3, lambda: None)
    figure("longest reactor pause idle for 3 s (the machine's noise)",
           max(gaps) * 1000, "ms")
    gaps.clear()
    await concurrently(16, 4, put_operation(store, big, reactor=reactor))
    figure("longest reactor pause while putting 16 MiB x4 (64 KiB pieces)",
           max(gaps) * 1000, "ms")
    gaps.clear()
    await concurrently(64, 4, get_operation(store, modulo=16))
    figure("longest reactor pause while verifying 16 MiB gets x4", max(gaps) * 1000, "ms")
    ticker.stop()

    write = store.put(99, 16 * MiB)
    piece = big[:64 * KiB]
    started = time.perf_counter()
    for _ in range(256):
        write.write(piece)
    figure("reactor-thread cost of one 64 KiB piece (copy, CRC32C, queue)",
           (time.perf_counter() - started) / 256 * 1e6, "us")
    await write.finish()
    await store.close()
    shutil.rmtree(path)


async def verify_crossover(reactor, directory):
    """GET verify: reactor-thread CPU per cached record, inline or in a thread."""
    disk = Disk()
    path = os.path.join(directory, "verify")
    fd = disk.open(path, create=True)
    pool = reactor.getThreadPool()
    try:
        for size in (4 * KiB, 16 * KiB, 64 * KiB, 128 * KiB, 256 * KiB, 1 * MiB):
            data = os.urandom(size)
            crc = crc32c(data)
            disk.pwrite(fd, RecordHeader(COMPLETE, 1, 1, size, crc).pack() + data, 0)
            rounds = max(20, 2 * MiB // size)
            started = time.thread_time()
            for _ in range(rounds * 16):
                raw = disk.pread_cached(fd, HEADER_SIZE + size, 0)
                assert raw is not None and check_record(raw, 1, size, crc)
            inline = (time.thread_time() - started) / (rounds * 16)
            started = time.thread_time()
            for _ in range(rounds):
                await DeferredList([
                    deferToThreadPool(reactor, pool, read_record, disk, fd, 0, 1, size, crc)
                    for _ in range(16)], fireOnOneErrback=True, consumeErrors=True)
            threaded = (time.thread_time() - started) / (rounds * 16)
            figure(f"GET verify {size // KiB:>4} KiB inline: reactor CPU per GET",
                   inline * 1e6, "us")
            figure(f"GET verify {size // KiB:>4} KiB via a thread: reactor CPU per GET",
                   threaded * 1e6, "us")
    finally:
        disk.close(fd)
        os.unlink(path)


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chunks", type=int, default=1_000_000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--dir", default=None)
    parser.add_argument("--skip-restart", action="store_true")
    parser.add_argument("--verify-only", action="store_true",
                        help="measure only the GET verify crossover")
    args = parser.parse_args(argv)
    directory = tempfile.mkdtemp(prefix="bench-store-", dir=args.dir)
    try:
        if not args.verify_only:
            index_memory(args.chunks)
            if not args.skip_restart:
                restart(args.chunks, directory)

        async def measure(reactor):
            await verify_crossover(reactor, directory)
            if not args.verify_only:
                await throughput(reactor, directory, args.concurrency)
                await reactor_stalls(reactor, directory)

        task.react(lambda reactor: Deferred.fromCoroutine(measure(reactor)))
    finally:
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main(sys.argv[1:])
