"""
File API throughput of one imageserver, by hand (not part of the tests).

Starts a chunkmaster, one or two groups of three chunkservers and one
imageserver as processes on loopback (in a temp dir), then measures PUT and
GET MiB/s of C{/v1/files} for each file size and concurrency, and the
imageserver's peak RSS.  Every GET is checked against what was PUT.

    python bench/bench_fileapi.py [--groups 1,2] [--sizes 16MiB,1GiB]
        [--concurrency 1,10] [--bytes 1GiB] [--chunk-size 16MiB]
        [--rss-upload 5GiB] [--profile OUT.svg] [--sync always]

C{--bytes} is the volume each (size, concurrency) phase moves (at least one
file per client); C{--rss-upload} streams one upload of that size and
reports the imageserver's peak RSS (VmHWM) before and after;
C{--profile OUT.svg} records the imageserver with py-spy during the first
PUT and GET phases into OUT-put.svg and OUT-get.svg (flame graphs; any
other extension gives collapsed stacks).
Output: one JSON line per phase.
"""

import argparse
import hashlib
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from speedy.test.processes import Daemon, free_port  # noqa: E402
from speedy.units import parse_size  # noqa: E402

MiB = 1 << 20
PIECE = MiB


def start_cluster(workdir, groups, chunk_size, sync):
    daemons = []

    def start(plugin, name, args):
        port = free_port()
        daemon = Daemon(plugin, ["--listen", f"tcp:{port}:interface=127.0.0.1"] + args,
                        port=port, workdir=workdir, name=name)
        daemons.append(daemon)
        daemon.start()
        return port

    db = "sqlite:" + os.path.join(workdir, "meta.db")
    master = f"http://127.0.0.1:{start('speedy-chunkmaster', 'master', ['--db', db])}"
    for i in range(3 * groups):
        start("speedy-chunkserver", f"cs{i}", [
            "--data-dir", os.path.join(workdir, f"cs{i}"), "--group-id", str(i // 3 + 1),
            "--master", master, "--reserve", "64MiB", "--heartbeat-interval", "0.5",
            "--sync", sync])
    port = start("speedy-imageserver", "imageserver", [
        "--master", master, "--db", db, "--chunk-size", str(chunk_size)])
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(base + "/v1/health") as r:
                if json.loads(r.read())["writable_groups"] >= groups:
                    return daemons, port
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError("the imageserver never saw the groups writable")


def payload(size, seed):
    """A reproducible body of C{size} bytes, built from one 1 MiB block."""
    block = hashlib.shake_256(str(seed).encode()).digest(PIECE)
    return block, size


def pieces(block, size):
    sent = 0
    while sent < size:
        n = min(PIECE, size - sent)
        yield block[:n]
        sent += n


def put(port, path, block, size):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    conn.putrequest("PUT", "/v1/files/" + path)
    conn.putheader("Content-Length", str(size))
    conn.endheaders()
    for piece in pieces(block, size):
        conn.send(piece)
    response = conn.getresponse()
    body = response.read()
    conn.close()
    if response.status != 201:
        raise RuntimeError(f"PUT {path}: {response.status} {body[:200]!r}")


def get(port, path, block, size):
    """GET a file and check it against the cyclic body L{pieces} sent."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    conn.request("GET", "/v1/files/" + path)
    response = conn.getresponse()
    received = 0
    while True:
        data = response.read(PIECE)
        if not data:
            break
        start = received % PIECE
        expected = block[start:start + len(data)]
        if len(expected) < len(data):
            expected += block[:len(data) - len(expected)]
        if data != expected:
            raise RuntimeError(f"GET {path}: wrong bytes at {received}")
        received += len(data)
    conn.close()
    if response.status != 200 or received != size:
        raise RuntimeError(f"GET {path}: {response.status}, {received} of {size} bytes")


def phase(kind, port, files, concurrency):
    """Run C{kind} (put or get) over C{files} with C{concurrency} threads.
    @return: elapsed seconds."""
    queue = list(files)
    lock = threading.Lock()
    errors = []

    def worker():
        while True:
            with lock:
                if not queue or errors:
                    return
                path, block, size = queue.pop()
            try:
                kind(port, path, block, size)
            except Exception as e:
                errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return time.perf_counter() - started


def py_spy(pid, out, name):
    """Start recording C{pid}; C{name} goes into the output's file name."""
    root, ext = os.path.splitext(out)
    process = subprocess.Popen(
        [os.path.join(os.path.dirname(sys.executable), "py-spy"), "record", "--nonblocking",
         "-p", str(pid), "-o", f"{root}-{name.lower()}{ext}",
         "--format", "flamegraph" if ext == ".svg" else "raw"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1)  # let it attach
    return process


def cpu_seconds(pid):
    """@return: the user + system CPU seconds C{pid} has used."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmHWM", "VmRSS")):
                yield line.split(":")[0], int(line.split()[1]) * 1024


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--groups", default="1,2")
    parser.add_argument("--sizes", default="16MiB,1GiB")
    parser.add_argument("--concurrency", default="1,10")
    parser.add_argument("--bytes", default="1GiB")
    parser.add_argument("--chunk-size", default="16MiB")
    parser.add_argument("--rss-upload", default="0")
    parser.add_argument("--profile", default=None)
    parser.add_argument("--sync", default="always")
    args = parser.parse_args(argv)
    chunk_size = parse_size(args.chunk_size)
    for groups in [int(g) for g in args.groups.split(",")]:
        workdir = tempfile.mkdtemp(prefix="speedy-bench-")
        daemons, port = start_cluster(workdir, groups, chunk_size, args.sync)
        imageserver = daemons[-1].process.pid
        profiled = False
        try:
            for size in [parse_size(s) for s in args.sizes.split(",")]:
                for concurrency in [int(c) for c in args.concurrency.split(",")]:
                    count = max(concurrency, parse_size(args.bytes) // size)
                    files = [(f"b/{groups}/{size}/{concurrency}/{i}", *payload(size, i))
                             for i in range(count)]
                    for name, kind in (("PUT", put), ("GET", get)):
                        profiler = None
                        if args.profile and not profiled:
                            profiler = py_spy(imageserver, args.profile, name)
                        cpu = cpu_seconds(imageserver)
                        elapsed = phase(kind, port, files, concurrency)
                        cpu = cpu_seconds(imageserver) - cpu
                        if profiler is not None:
                            profiler.send_signal(signal.SIGINT)
                            profiler.wait(60)
                        print(json.dumps({
                            "groups": groups, "op": name, "file_size": size,
                            "concurrency": concurrency, "files": count,
                            "seconds": round(elapsed, 3),
                            "MiB_per_s": round(count * size / MiB / elapsed, 1),
                            "imageserver_cpu_s_per_GiB": round(cpu / (count * size / (1 << 30)), 2)}),
                            flush=True)
                    profiled = profiled or bool(args.profile)
            rss_upload = parse_size(args.rss_upload)
            if rss_upload:
                before = dict(peak_rss(imageserver))
                block, _ = payload(MiB, "rss")
                elapsed = phase(put, port, [("rss/big", block, rss_upload)], 1)
                after = dict(peak_rss(imageserver))
                print(json.dumps({
                    "groups": groups, "op": "PUT-rss", "file_size": rss_upload,
                    "seconds": round(elapsed, 3),
                    "MiB_per_s": round(rss_upload / MiB / elapsed, 1),
                    "peak_rss_MiB_before": round(before["VmHWM"] / MiB, 1),
                    "peak_rss_MiB_after": round(after["VmHWM"] / MiB, 1)}), flush=True)
        finally:
            for daemon in reversed(daemons):
                daemon.stop()
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main(sys.argv[1:])
