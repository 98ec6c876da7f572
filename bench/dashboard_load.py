"""
What the dashboard costs a chunkmaster with a large cluster, by hand:

    flock /work/bench.lock .venv/bin/python bench/dashboard_load.py \
        [--servers 1000] [--interval 5] [--connections 10] [--seconds 10]
        [--dashboards 10] [--refresh 2] [--cpu-seconds 30] [--gzip]

It starts a real chunkmaster (twistd, on a free loopback port, over a fresh
SQLite file) and, in a separate process, C{--servers} simulated chunkservers
sending real heartbeats over HTTP every C{--interval} seconds (the
chunkservers' default is 5 s; L{bench_chunkmaster}'s load generator), so
the dashboard draws 1,000 servers in 334 groups with their load counters.
Then, each from a load-generator process of its own over keep-alive
connections (asking for gzip, as browsers do, with C{--gzip}):

  1. flat out: C{--connections} clients GET C{/dashboard/data} back to back
     for C{--seconds}: answers a second, p50 and p99 latency;
  2. the chunkmaster's CPU with the heartbeats alone over C{--cpu-seconds};
  3. the same with C{--dashboards} pages open, each fetching
     C{/dashboard/data} every C{--refresh} seconds (the page's own period,
     2 s): the difference with 2. is what the dashboards cost, in percent
     of one core.

The chunkmaster's CPU comes from /proc/<pid>/stat over each window.  Prints
one JSON line of every figure at the end (and the 1-minute load average:
figures from a busy machine are low for that reason).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from twisted.internet import defer, task
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _procstat import ProcessTree, cpu_during_child  # noqa: E402
from bench_chunkmaster import KeepAliveClient  # noqa: E402

from speedy.test.processes import Daemon, free_port  # noqa: E402

HEARTBEATS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bench_chunkmaster.py")


# --- dashboard load generator (a process of its own) -------------------------


def dashboard_request(port, gzip=False):
    return (f"GET /dashboard/data HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            "Accept: application/json\r\n"
            + ("Accept-Encoding: gzip, deflate, br\r\n" if gzip else "") + "\r\n").encode()


async def run_dashboards(reactor, port, clients, seconds, refresh, gzip=False):
    """
    C{clients} connections GET C{/dashboard/data}, back to back (C{refresh}
    0) or each every C{refresh} seconds, spread over the period.  Prints
    C{{"start": true}} when the window opens and, at its end, the answers
    per status and every latency in milliseconds.
    """
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
    connections = [await connectProtocol(endpoint, KeepAliveClient()) for _ in range(clients)]
    request = dashboard_request(port, gzip)
    statuses, latencies = {}, []
    window = {"open": True}

    async def client(n, connection):
        if refresh:
            await task.deferLater(reactor, refresh * n / clients)
        while window["open"]:
            sent = time.perf_counter()
            status = await connection.request(request)
            latencies.append(1000 * (time.perf_counter() - sent))
            statuses[status] = statuses.get(status, 0) + 1
            if refresh:
                await task.deferLater(reactor, max(0.0, refresh - (time.perf_counter() - sent)))

    print(json.dumps({"start": True}), flush=True)
    started = reactor.seconds()
    running = [defer.Deferred.fromCoroutine(client(n, c)) for n, c in enumerate(connections)]
    await task.deferLater(reactor, seconds)
    counted, measured, elapsed = dict(statuses), list(latencies), reactor.seconds() - started
    window["open"] = False
    await defer.gatherResults(running)
    for connection in connections:
        connection.transport.loseConnection()
    print(json.dumps({"answered": counted, "seconds": elapsed, "latencies_ms": measured}),
          flush=True)


def loadgen_main(argv):
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("clients", type=int)
    parser.add_argument("seconds", type=float)
    parser.add_argument("refresh", type=float)
    parser.add_argument("--gzip", action="store_true")
    args = parser.parse_args(argv)
    task.react(lambda reactor: defer.Deferred.fromCoroutine(run_dashboards(
        reactor, args.port, args.clients, args.seconds, args.refresh, args.gzip)))


# --- the benchmark ------------------------------------------------------------


def percentile(values, fraction):
    """@return: the nearest-rank percentile of C{values}, or None."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, int(-(-fraction * len(ordered) // 1)) - 1))]


def master_cpu(master, seconds):
    """@return: the master's CPU over the next C{seconds}, in percent of a core."""
    tree = ProcessTree(master.process.pid)
    tree.sample()
    cpu_start, wall_start = tree.cpu_seconds(), time.monotonic()
    time.sleep(seconds)
    tree.sample()
    return 100 * (tree.cpu_seconds() - cpu_start) / (time.monotonic() - wall_start)


def dashboards(master, port, clients, seconds, refresh, gzip=False):
    """@return: (the load generator's result, the master's CPU percent over it)."""
    return cpu_during_child(master.process.pid, [
        sys.executable, os.path.abspath(__file__), "--loadgen", str(port), str(clients),
        str(seconds), str(refresh)] + (["--gzip"] if gzip else []))

def main():
    if sys.argv[1:2] == ["--loadgen"]:
        return loadgen_main(sys.argv[2:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--servers", type=int, default=1000)
    parser.add_argument("--interval", type=float, default=5.0,
                        help="seconds between a simulated chunkserver's heartbeats")
    parser.add_argument("--connections", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=10.0, help="the flat-out window")
    parser.add_argument("--dashboards", type=int, default=10)
    parser.add_argument("--refresh", type=float, default=2.0)
    parser.add_argument("--cpu-seconds", type=float, default=30.0)
    parser.add_argument("--gzip", action="store_true",
                        help="the dashboards ask for gzip (Accept-Encoding), as browsers do")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        port = free_port()
        master = Daemon(
            "speedy-chunkmaster",
            ["--listen", f"tcp:{port}:interface=127.0.0.1", "--db", "sqlite:meta.db",
             "--heartbeat-timeout", str(max(15.0, 3 * args.interval)), "--group-size", "3"],
            port=port, workdir=workdir, name="chunkmaster")
        master.start()
        heartbeats = None
        try:
            beating = 3 * args.interval + 2 * args.seconds + 2 * args.cpu_seconds + 60
            heartbeats = subprocess.Popen(
                [sys.executable, HEARTBEATS, "--loadgen", "heartbeats", str(port),
                 str(args.servers), str(beating), str(args.interval)],
                stdout=subprocess.PIPE, text=True)
            assert json.loads(heartbeats.stdout.readline()) == {"start": True}
            time.sleep(args.interval)  # every server registered and beating in step
            result, cpu = dashboards(master, port, args.connections, args.seconds, 0, args.gzip)
            answered = result["answered"].get("200", 0)
            latencies = result["latencies_ms"]
            flat = {"answers_s": round(answered / result["seconds"], 1),
                    "p50_ms": round(percentile(latencies, 0.5), 1),
                    "p99_ms": round(percentile(latencies, 0.99), 1),
                    "errors": sum(v for k, v in result["answered"].items() if k != "200"),
                    "master_cpu_percent": round(cpu, 1)}
            print(f"/dashboard/data flat out, {args.connections} connections, "
                  f"{args.servers} servers: {flat['answers_s']}/s, p50 {flat['p50_ms']} ms, "
                  f"p99 {flat['p99_ms']} ms, master CPU {cpu:.1f}%", flush=True)
            idle = master_cpu(master, args.cpu_seconds)
            print(f"heartbeats alone ({args.servers} every {args.interval:g} s): "
                  f"master CPU {idle:.1f}%", flush=True)
            result, busy = dashboards(master, port, args.dashboards, args.cpu_seconds,
                                      args.refresh, args.gzip)
            print(f"with {args.dashboards} dashboards every {args.refresh:g} s: master CPU "
                  f"{busy:.1f}% (the dashboards: {busy - idle:.1f}% of a core; "
                  f"p99 {percentile(result['latencies_ms'], 0.99):.1f} ms)", flush=True)
            print(json.dumps({
                "servers": args.servers, "heartbeat_interval": args.interval,
                "gzip": args.gzip,
                "flat_out": dict(flat, connections=args.connections),
                "heartbeats_cpu_percent": round(idle, 1),
                "dashboards": args.dashboards, "refresh": args.refresh,
                "with_dashboards_cpu_percent": round(busy, 1),
                "dashboards_cpu_percent": round(busy - idle, 1),
                "dashboards_p99_ms": round(percentile(result["latencies_ms"], 0.99), 1),
                "loadavg": os.getloadavg()[0]}), flush=True)
        finally:
            if heartbeats is not None:
                heartbeats.kill()
                heartbeats.wait()
            master.stop()


if __name__ == "__main__":
    main()
