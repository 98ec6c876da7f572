"""
What the imageserver's own process spends on a small request (HEAD blob,
GET manifest), with and without credentials and request metrics: the
imageserver's HTTP stack as C{makeService} builds it (the streaming site,
the auth gate, the registry over a real SQLite store through adbapi), in
this process on the real reactor, loaded over loopback by a child process
(plain sockets, HTTP/1.1 keep-alive, C{--concurrency} connections).

It reports, per request, the CPU time of this process's threads (the
reactor thread and the adbapi thread apart, from /proc), and the requests
per second: the CPU figures are those to compare on a shared machine,
where req/s follows the load.  C{--profile} runs cProfile on the reactor
thread and prints the functions whose time per request differs most from
the first variant's.

  python bench/bench_smallreq.py --variants open,basic,token,metrics-off
  python bench/bench_smallreq.py --op manifest --requests 20000 --rounds 3
"""

import argparse
import base64
import cProfile
import hashlib
import json
import os
import pstats
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

USER, PASSWORD = b"bench", b"bench-password"
REPOSITORY = "bench/small"
MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
_TICK = os.sysconf("SC_CLK_TCK")

#: name -> (auth: none, basic or token; request metrics on)
VARIANTS = {"open": ("none", True), "basic": ("basic", True), "token": ("token", True),
            "metrics-off": ("none", False), "basic-metrics-off": ("basic", False),
            # no auth, but the requests carry Basic credentials all the same
            # (what parsing the header costs)
            "open-header": ("header", True)}


CLIENT = r"""
import selectors, socket, sys, time
port, count, concurrency, request = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), \
    sys.argv[4].encode().decode("unicode_escape").encode("latin-1")
head = request.startswith(b"HEAD")
selector = selectors.DefaultSelector()
sent = done = 0
bad = 0
started = time.monotonic()
for _ in range(concurrency):
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.setblocking(False)
    state = [bytearray()]
    selector.register(s, selectors.EVENT_READ, state)
    if sent < count:
        s.sendall(request); sent += 1
while done < count:
    for key, _ in selector.select():
        s, state = key.fileobj, key.data
        data = s.recv(65536)
        if not data:
            raise SystemExit("server closed a connection")
        buf = state[0]
        buf += data
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                break
            header = bytes(buf[:end])
            length = 0
            if not head:
                for line in header.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
            if len(buf) < end + 4 + length:
                break
            if not header.startswith(b"HTTP/1.1 200"):
                bad += 1
            del buf[:end + 4 + length]
            done += 1
            if sent < count:
                s.sendall(request); sent += 1
print(done, bad, time.monotonic() - started)
"""


def thread_cpu():
    """@return: {thread id: (name, CPU seconds)} of this process's threads."""
    found = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                text = f.read()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2:].split()
        found[tid] = (int(fields[11]) + int(fields[12])) / _TICK
    return found


def build(variant, workdir, reactor, store_url=None):
    """@return: (the site, the store, the headers its requests carry) of
    C{variant}, set up as C{speedy.imageserver.tap.makeService} does."""
    import bcrypt
    import jwt

    from speedy.auth.access import AccessPolicy
    from speedy.auth.gate import Gate, TokenGate
    from speedy.auth.htpasswd import HtpasswdChecker, users_portal
    from speedy.auth.tokens import TokenConfig, TokenVerifier
    from speedy.imageserver.root import ImageServerRoot
    from speedy.imageserver.tap import ImageServerSite
    from speedy.metadata import open_store
    from speedy.monitoring.http import HTTPMetrics, imageserver_route
    from speedy.registry.api import RegistryAPI
    from speedy.imageserver.tap import Options
    from speedy.web.limits import limits_from_options

    auth, metrics_on = VARIANTS[variant]
    store = open_store(store_url or "sqlite:" + os.path.join(workdir, f"{variant}.db"), reactor)

    class Storage:  # HEAD blob and GET manifest never read chunks
        view = None

    registry = RegistryAPI(store, Storage(), reactor)
    root = ImageServerRoot(Storage(), store, reactor, registry)
    http_metrics = HTTPMetrics(imageserver_route, "speedy_imageserver_http")
    resource, body_sink_for = root.resource, root.body_sink_for
    headers = b""
    if auth == "header":
        headers = b"Authorization: Basic " + base64.b64encode(USER + b":" + PASSWORD) + b"\r\n"
    if auth == "basic":
        path = os.path.join(workdir, "users")
        with open(path, "wb") as f:
            f.write(USER + b":" + bcrypt.hashpw(PASSWORD, bcrypt.gensalt(rounds=4)) + b"\n")
        checker = HtpasswdChecker(path, reactor, reactor)
        checker.verified.add(USER, PASSWORD)  # as after a first bcrypt check
        gate = Gate(resource, body_sink_for, users_portal(checker), checker,
                    AccessPolicy.default())
        resource, body_sink_for = gate.resource, gate.body_sink_for
        headers = b"Authorization: Basic " + base64.b64encode(USER + b":" + PASSWORD) + b"\r\n"
    elif auth == "token":
        from speedy.localcluster.tokens import write_token_service

        users = os.path.join(workdir, "users")
        with open(users, "wb") as f:
            f.write(USER + b":" + bcrypt.hashpw(PASSWORD, bcrypt.gensalt(rounds=4)) + b"\n")
        config = TokenConfig.load(write_token_service(
            os.path.join(workdir, "secrets"), "http://127.0.0.1/token", users))
        gate = TokenGate(resource, body_sink_for, TokenVerifier(config), config, reactor)
        resource, body_sink_for = gate.resource, gate.body_sink_for
        now = int(time.time())
        token = jwt.encode({"iss": config.issuer, "sub": USER.decode(), "aud": config.service,
                            "iat": now, "nbf": now - 5, "exp": now + 3600,
                            "access": [{"type": "repository", "name": REPOSITORY,
                                        "actions": ["pull"]}]},
                           config.private_key, algorithm="ES256")
        headers = b"Authorization: Bearer " + token.encode() + b"\r\n"
    options = Options()
    os.environ.setdefault("SPEEDY_CLUSTER_SECRET", "bench-only-not-a-secret")
    options.parseOptions([])  # the daemon's default limits
    site = ImageServerSite(resource, body_sink_for, reactor=reactor,
                           limits=limits_from_options(options))
    site.http_metrics = http_metrics if metrics_on else None
    return site, store, headers


def fill(store):
    """@return: a Deferred of L{_fill}."""
    from twisted.internet.defer import Deferred

    return Deferred.fromCoroutine(_fill(store))


async def _fill(store):
    """Store one blob and a manifest referring to it: @return: the blob's digest."""
    from speedy.records import BlobRecord, ManifestRecord

    await store.start()
    blob = b"x" * 1000
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    await store.put_blob(BlobRecord(digest, len(blob), ()))
    await store.link_blob(REPOSITORY, digest)
    content = json.dumps({"schemaVersion": 2, "mediaType": MEDIA_TYPE,
                          "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                     "digest": digest, "size": len(blob)},
                          "layers": []}).encode()
    manifest = "sha256:" + hashlib.sha256(content).hexdigest()
    await store.put_manifest(ManifestRecord(REPOSITORY, manifest, MEDIA_TYPE, content,
                                            references=(digest,)), tags=["v1"],
                             required_blobs=[(digest, len(blob))])
    return digest


def in_memory(args, names):
    """
    The pure-Python cost of a request: every variant's site over the
    in-memory metadata store (no thread), fed keep-alive requests through a
    C{StringTransport}, timed with C{time.process_time}; alternately, in
    blocks of C{--requests}.
    """
    from twisted.internet.address import IPv4Address
    from twisted.internet.testing import MemoryReactorClock, StringTransport

    workdir = tempfile.mkdtemp(prefix="speedy-smallreq-")
    sides = {}
    try:
        for name in names:
            clock = MemoryReactorClock()  # one each: its timers are a sorted list
            site, store, headers = build(name, workdir, clock, store_url="memory:")
            digest = fill(store)
            digest.addErrback(lambda f: f.raiseException())
            digest = digest.result
            path = (f"/v2/{REPOSITORY}/blobs/{digest}" if args.op == "head" else
                    f"/v2/{REPOSITORY}/manifests/v1")
            method = "HEAD" if args.op == "head" else "GET"
            request = (f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                       f"Accept: {MEDIA_TYPE}\r\n").encode() + headers + b"\r\n"
            address = IPv4Address("TCP", "127.0.0.1", 40000)
            channel = site.buildProtocol(address)
            transport = StringTransport(peerAddress=address,
                                        hostAddress=IPv4Address("TCP", "127.0.0.1", 5000))
            channel.callLater = clock.callLater
            channel.makeConnection(transport)
            sides[name] = (channel, transport, request)
            one(channel, transport, request)  # bcrypt once, then cached
            if not transport.value().startswith(b"HTTP/1.1 200"):
                raise SystemExit(f"{name}: {transport.value()[:300]!r}")
    finally:
        subprocess.run(["rm", "-rf", workdir])
    times = {name: [] for name in names}
    profiles = {}
    for round_number in range(1, args.rounds + 1):
        for name in (names if round_number % 2 else names[::-1]):
            channel, transport, request = sides[name]
            profiler = profiles.setdefault(name, cProfile.Profile(time.thread_time)) if args.profile else None
            started = time.process_time()
            if profiler:
                profiler.enable()
            for _ in range(args.requests):
                one(channel, transport, request)
            if profiler:
                profiler.disable()
            times[name].append((time.process_time() - started) / args.requests * 1e6)
            if not transport.value().startswith(b"HTTP/1.1 200"):
                raise SystemExit(f"{name}: {transport.value()[:300]!r}")
    print(f"in memory, {args.op}: us of CPU per request, min and median over {args.rounds} "
          f"blocks of {args.requests} (load average {os.getloadavg()[0]:.1f})")
    base = None
    for name in names:
        values = sorted(times[name])
        low, middle = values[0], values[len(values) // 2]
        base = base or low
        print(f"{name:18s} min {low:7.2f} ({low - base:+6.2f})  median {middle:7.2f}")
    if args.profile:
        compare_profiles(profiles, names, args.requests * args.rounds)


def one(channel, transport, request):
    """One request on a kept-alive in-memory connection."""
    transport.clear()
    channel.dataReceived(request)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", default="open,basic,token,metrics-off",
                        help=f"comma-separated, the first the baseline: {', '.join(VARIANTS)}")
    parser.add_argument("--op", choices=("head", "manifest"), default="head")
    parser.add_argument("--requests", type=int, default=10000)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--in-memory", action="store_true",
                        help="no sockets, no threads: the in-memory store, one connection fed "
                             "directly (see in_memory)")
    parser.add_argument("--profile", action="store_true",
                        help="cProfile the reactor thread (its figures then include cProfile's cost)")
    args = parser.parse_args(argv)
    names = args.variants.split(",")
    if args.in_memory:
        return in_memory(args, names)

    from twisted.internet import reactor
    from twisted.internet.defer import Deferred
    from twisted.internet.threads import deferToThread

    workdir = tempfile.mkdtemp(prefix="speedy-smallreq-")
    rows, profiles = [], {}

    async def run():
        listening = {}
        for name in names:
            site, store, headers = build(name, workdir, reactor)
            digest = await fill(store)
            port = reactor.listenTCP(0, site, interface="127.0.0.1")
            path = (f"/v2/{REPOSITORY}/blobs/{digest}" if args.op == "head" else
                    f"/v2/{REPOSITORY}/manifests/v1")
            method = "HEAD" if args.op == "head" else "GET"
            request = (f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                       f"Accept: {MEDIA_TYPE}\r\n").encode() + headers + b"\r\n"
            listening[name] = (port, store, request)
            # a first request: bcrypt checks the password once (then cached)
            await load(port.getHost().port, 1, 1, request)
        for round_number in range(1, args.rounds + 1):
            for name in (names if round_number % 2 else names[::-1]):
                port, store, request = listening[name]
                profiler = profiles.setdefault(name, cProfile.Profile(time.thread_time)) if args.profile else None
                before, cpu_before, started = thread_cpu(), os.times(), time.monotonic()
                if profiler:
                    profiler.enable()
                done, bad, _ = await load(port.getHost().port, args.requests, args.concurrency,
                                          request)
                if profiler:
                    profiler.disable()
                wall = time.monotonic() - started
                after, cpu_after = thread_cpu(), os.times()
                main_tid = str(os.getpid())
                per_request = {tid: (after[tid] - before.get(tid, 0.0)) / done * 1e6
                               for tid in after}
                row = {"variant": name, "round": round_number, "op": args.op, "ok": done - bad,
                       "errors": bad, "req_s": round(done / wall),
                       "cpu_us": round((cpu_after.user + cpu_after.system - cpu_before.user
                                        - cpu_before.system) / done * 1e6, 1),
                       "reactor_us": round(per_request.pop(main_tid, 0.0), 1),
                       "other_threads_us": round(sum(per_request.values()), 1),
                       "threads": len(after), "loadavg": round(os.getloadavg()[0], 1)}
                print(json.dumps(row), flush=True)
                rows.append(row)
        for port, store, _ in listening.values():
            await port.stopListening()
            await store.close()

    def load(port, count, concurrency, request):
        """Run the client in a child process (a thread waits for it)."""
        def child():
            out = subprocess.run(
                [sys.executable, "-c", CLIENT, str(port), str(count), str(concurrency),
                 request.decode("latin-1").encode("unicode_escape").decode("ascii")],
                capture_output=True, text=True, check=True).stdout.split()
            return int(out[0]), int(out[1]), float(out[2])
        return deferToThread(child)

    outcome = []
    reactor.callWhenRunning(
        lambda: Deferred.fromCoroutine(run()).addBoth(outcome.append).addBoth(
            lambda _: reactor.stop()))
    reactor.run()
    subprocess.run(["rm", "-rf", workdir])
    if outcome and hasattr(outcome[0], "raiseException"):
        outcome[0].raiseException()

    def median(values):
        values = sorted(values)
        return values[len(values) // 2] if values else None

    print(f"\n{args.op}, {args.requests} requests x {args.rounds} rounds, concurrency "
          f"{args.concurrency}; medians (us of CPU per request)")
    base = None
    for name in names:
        mine = [r for r in rows if r["variant"] == name]
        figures = {key: median([r[key] for r in mine])
                   for key in ("req_s", "cpu_us", "reactor_us", "other_threads_us")}
        base = base or figures
        print(f"{name:18s} req/s {figures['req_s']:6d} ({figures['req_s'] / base['req_s']:.2f}x)"
              f"  cpu {figures['cpu_us']:6.1f} ({figures['cpu_us'] - base['cpu_us']:+6.1f})"
              f"  reactor {figures['reactor_us']:6.1f}  other threads "
              f"{figures['other_threads_us']:6.1f}")
    if args.profile:
        compare_profiles(profiles, names, args.requests * args.rounds)
    return 1 if any(r["errors"] for r in rows) else 0


def compare_profiles(profiles, names, requests):
    """Print the functions whose own and cumulative time per request differ
    most from the first variant's."""
    def table(profile):
        stats = pstats.Stats(profile).stats
        return {f"{os.path.basename(path)}:{line}({func})": (calls / requests, tt / requests * 1e6,
                                                           ct / requests * 1e6)
                for (path, line, func), (cc, calls, tt, ct, _) in stats.items()}
    base = table(profiles[names[0]])
    for name in names[1:]:
        other = table(profiles[name])
        print(f"\n{name} - {names[0]}: calls/req, own us/req, cumulative us/req (differences)")
        keys = set(base) | set(other)
        zero = (0.0, 0.0, 0.0)

        def diff(key):
            return tuple(o - b for o, b in zip(other.get(key, zero), base.get(key, zero)))
        for key in sorted(keys, key=lambda k: -abs(diff(k)[1]))[:25]:
            calls, own, cumulative = diff(key)
            print(f"  {calls:+7.2f} {own:+8.2f} {cumulative:+8.2f}  {key}")


if __name__ == "__main__":
    sys.exit(main())
