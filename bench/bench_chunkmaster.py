"""
Benchmark of the chunkmaster, by hand:

    .venv/bin/python bench/bench_chunkmaster.py [--servers 1000] [--seconds 10]
        [--interval 3] [--connections 16] [--db sqlite|URL]

It starts a real chunkmaster (twistd, on a free loopback port, over a fresh
SQLite file unless --db names another store) and measures, each from a
separate load-generator process over keep-alive connections:

  1. file-id allocations per second (POST /v1/file-ids, --connections
     clients back to back; every one a committed store transaction);
  2. heartbeats per second from --servers simulated chunkservers, each on
     its own connection, back to back (the most the master handles);
  3. the same servers heartbeating every --interval seconds, as in
     production: answered heartbeats per second and the master's CPU.

The chunkmaster's CPU comes from /proc/<pid>/stat over each window.  The
load generator speaks raw HTTP/1.1 with pre-encoded requests, so it costs
far less CPU per request than the master.
"""

import argparse
import json
import os
import sys
import tempfile

from twisted.internet import defer, protocol, task
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _procstat import cpu_during_child  # noqa: E402

from speedy.test.processes import TEST_SECRET, Daemon, free_port  # noqa: E402

SECRET = TEST_SECRET  # Daemon gives it every daemon it starts


# --- load generator (a process of its own) -----------------------------------


class KeepAliveClient(protocol.Protocol):
    """
    One HTTP/1.1 keep-alive connection sending one request at a time.
    C{request()} fires with the status code once the whole answer arrived.
    """

    def __init__(self):
        self._buffer = b""
        self._waiting = None
        self._need = None
        self._status = None

    def request(self, raw):
        self._waiting = defer.Deferred()
        self.transport.write(raw)
        return self._waiting

    def dataReceived(self, data):
        self._buffer += data
        while self._waiting is not None:
            if self._need is None:
                head, sep, rest = self._buffer.partition(b"\r\n\r\n")
                if not sep:
                    return
                lines = head.split(b"\r\n")
                self._status = int(lines[0].split()[1])
                length = [int(line.split(b":", 1)[1]) for line in lines[1:]
                          if line.lower().startswith(b"content-length:")]
                self._need, self._buffer = (length[0] if length else 0), rest
            if len(self._buffer) < self._need:
                return
            self._buffer = self._buffer[self._need:]
            self._need = None
            waiting, self._waiting = self._waiting, None
            waiting.callback(self._status)


def post(port, path, body):
    data = json.dumps(body).encode()
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Authorization: Bearer {SECRET}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\n\r\n").encode() + data


def heartbeat(port, n, beat):
    return post(port, "/v1/heartbeat", {
        "server_id": f"bench-{n}", "group_id": n // 3, "address": f"10.{n >> 8 & 255}.{n & 255}.1:8000",
        "capacity": 4 << 40, "used": (1 << 40) + beat, "free": (3 << 40) - beat,
        "read_only": False, "load": {"reads": beat, "writes": beat // 2}})


async def run_load(reactor, mode, port, clients, seconds, interval):
    """
    Print C{{"start"}} when the measured window opens and, at its end, the
    number of requests answered per status.
    """
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
    connections = []
    for _ in range(clients):
        connections.append(await connectProtocol(endpoint, KeepAliveClient()))
    if mode == "file-ids":
        request = post(port, "/v1/file-ids", {"count": 100})
        def make(n, beat):
            return request
    else:
        make = lambda n, beat: heartbeat(port, n, beat)  # noqa: E731
        # register every server before measuring
        await defer.gatherResults([c.request(make(n, 0)) for n, c in enumerate(connections)])
    statuses = {}
    window = {"open": False}

    async def client(n, connection):
        beat = 1
        if interval:
            await task.deferLater(reactor, interval * n / clients)
        while window["open"]:
            sent = reactor.seconds()
            status = await connection.request(make(n, beat))
            statuses[status] = statuses.get(status, 0) + 1
            beat += 1
            if interval:
                await task.deferLater(reactor, max(0.0, sent + interval - reactor.seconds()))

    if interval:  # one paced round before measuring, so every client is in step
        window["open"] = True
        running = [defer.Deferred.fromCoroutine(client(n, c)) for n, c in enumerate(connections)]
        await task.deferLater(reactor, interval)
        statuses.clear()
    else:
        window["open"] = True
        running = [defer.Deferred.fromCoroutine(client(n, c)) for n, c in enumerate(connections)]
    print(json.dumps({"start": True}), flush=True)
    started = reactor.seconds()
    await task.deferLater(reactor, seconds)
    counted, elapsed = dict(statuses), reactor.seconds() - started
    window["open"] = False
    await defer.gatherResults(running)
    for connection in connections:
        connection.transport.loseConnection()
    print(json.dumps({"answered": counted, "seconds": elapsed}), flush=True)


def loadgen_main(argv):
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["file-ids", "heartbeats"])
    parser.add_argument("port", type=int)
    parser.add_argument("clients", type=int)
    parser.add_argument("seconds", type=float)
    parser.add_argument("interval", type=float)
    args = parser.parse_args(argv)
    task.react(lambda reactor: defer.Deferred.fromCoroutine(run_load(
        reactor, args.mode, args.port, args.clients, args.seconds, args.interval)))


# --- the benchmark ------------------------------------------------------------


def measure(master, mode, port, clients, seconds, interval=0.0):
    """@return: (answers per second by status, the master's CPU percent)."""
    result, cpu = cpu_during_child(master.process.pid, [
        sys.executable, os.path.abspath(__file__), "--loadgen", mode, str(port), str(clients),
        str(seconds), str(interval)])
    rates = {status: count / result["seconds"] for status, count in result["answered"].items()}
    return rates, cpu


def main():
    if sys.argv[1:2] == ["--loadgen"]:
        return loadgen_main(sys.argv[2:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--servers", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--interval", type=float, default=3.0)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--db", default="sqlite", help="sqlite (a fresh file) or a store URL")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        port = free_port()
        db = "sqlite:meta.db" if args.db == "sqlite" else args.db
        master = Daemon(
            "speedy-chunkmaster",
            ["--listen", f"tcp:{port}:interface=127.0.0.1", "--db", db,
             "--heartbeat-timeout", str(max(15.0, 3 * args.interval)), "--group-size", "3"],
            port=port, workdir=workdir, name="chunkmaster")
        master.start()
        try:
            print(f"chunkmaster over {db}, {args.seconds:g} s windows")
            rates, cpu = measure(master, "file-ids", port, args.connections, args.seconds)
            print(f"file-id allocations: {rates.get('200', 0):8.0f}/s  "
                  f"({args.connections} connections, 100 ids each)  master CPU {cpu:5.1f}%")
            rates, cpu = measure(master, "heartbeats", port, args.servers, args.seconds)
            print(f"heartbeats, flat out: {rates.get('200', 0):7.0f}/s  "
                  f"({args.servers} servers)  master CPU {cpu:5.1f}%")
            rates, cpu = measure(master, "heartbeats", port, args.servers, args.seconds, args.interval)
            print(f"heartbeats, every {args.interval:g} s: {rates.get('200', 0):5.0f}/s  "
                  f"({args.servers} servers)  master CPU {cpu:5.1f}%")
            other = {k: v for k, v in rates.items() if k != "200"}
            if other:
                print(f"non-200 answers per second: {other}")
        finally:
            master.stop()


if __name__ == "__main__":
    main()
