# -*- test-case-name: speedy.test.test_dashboard -*-
"""
The chunkmaster's live dashboard: C{/dashboard}, one page of static HTML,
CSS and JavaScript (in C{speedy/monitoring/dashboard/}, no build step) that
reads C{/dashboard/data} every few seconds and draws the cluster.

    GET /dashboard              the page
    GET /dashboard/<asset>      dashboard.css, dashboard.js
    GET /dashboard/data         the JSON the page draws:

    {"version", "time",
     "totals": {"capacity", "used", "free", "garbage", "chunks",
                "servers": {state: n}, "groups", "groups_writable"},
     "groups": [{"group_id", "writable", "read_only", "degraded",
                 "servers": [{"server_id", "address", "state", "lost",
                              "rebuilding", "read_only", "capacity", "used",
                              "free", "garbage", "fill", "chunks",
                              "heartbeat_age"}]}],
     "rates": [{"time", "read_bytes", "written_bytes", "reads", "writes"}],
                 per second, oldest first, one every L{ClusterHistory} interval
     "counters": {"heartbeats", "checksum_errors", "scrub_damaged",
                  "repaired", "repair_failed", ...},
     "imageservers": [{"name", "address", "seen_ago", "counters", "health"}],
     "gc": {"running", "runs", "chunks_freed", "bytes_freed", "pending_chunks",
            "pending_bytes", "last_duration", "current", ...} or null,
     "transfers": {"chunks_moved", "bytes_moved", "active", "rate",
                   "chunks_left", "failures", ...} or null}

The imageservers' counters (L{IMAGESERVER_REPORTED}: read failovers, bad
replicas, write retries...) come with their polls of the cluster view, as
of their last poll (a long-poll: at most about 20 seconds old); the
dashboard's C{counters} sums them over the imageservers seen as
C{imageserver_<name>}.  GC and transfer progress come from
L{speedy.monitoring.progress.WorkProgress}.

Everything comes from what the chunkmaster already has: the heartbeats'
load counters (summed over the servers and sampled by L{ClusterHistory}),
the cluster's states, the repair service, and the imageservers that poll
the cluster view (L{Peers}).  No Prometheus server is needed.

Every open page polls, so C{/dashboard/data} is rendered once for all its
readers (L{speedy.web.rendered.RenderedJSON}): again when the cluster
view's version changes (a server registered, went DOWN, a group set
read-only: the next answer shows it), otherwise at most once every
C{max_age} seconds (1 s, half the page's period), so the load counters,
heartbeat ages, rates and progress are at most that old.  Answers carry a
weak C{ETag} (a matching C{If-None-Match} is a 304) and are gzipped for
clients that accept it (browsers do), compressed once per rendering.
"""

import os

from twisted.application.service import Service
from twisted.internet.task import LoopingCall

from speedy.chunkmaster.messages import health_url
from speedy.records import DOWN, DRAINING, INIT, RO, RW
from speedy.web.json import json_answer
from speedy.web.rendered import RenderedJSON
from speedy.web.rest import Answer

ASSETS = os.path.join(os.path.dirname(__file__), "dashboard")

_TYPES = {"html": b"text/html; charset=utf-8", "css": b"text/css; charset=utf-8",
          "js": b"text/javascript; charset=utf-8"}

#: heartbeat load counters summed into the rates
_RATED = (("read_bytes", "bytes_read"), ("written_bytes", "bytes_written"),
          ("reads", "reads"), ("writes", "writes"))

#: heartbeat load counters summed into the dashboard's counters
_SUMMED = ("checksum_errors", "damaged_records", "sync_errors", "nospace_errors",
           "scrub_damaged", "scrub_chunks", "compactions", "bytes_compacted_away",
           "cache_hits", "cache_misses")


#: the imageserver counters reported with each poll of the cluster view
IMAGESERVER_REPORTED = ("read_failovers", "bad_replicas", "reads_failed",
                        "chunk_write_retries", "chunk_writes_failed")


def reported_counters(counters):
    """@return: the L{IMAGESERVER_REPORTED} of an imageserver's replication
    C{counters}."""
    return {name: counters.get(name, 0) for name in IMAGESERVER_REPORTED}


def _text(header):
    return None if header is None else header.decode("utf-8", "replace")


def _parse_counters(header):
    """@return: the L{IMAGESERVER_REPORTED} counters in the header
    C{name=value,...} (bytes); unknown names and bad values are left out."""
    counters = {}
    for item in header.decode("ascii", "replace").split(",")[:len(IMAGESERVER_REPORTED) * 2]:
        name, _, value = item.strip().partition("=")
        if name in IMAGESERVER_REPORTED and value.isdigit() and len(value) < 20:
            counters[name] = int(value)
    return counters


def _load_totals(servers):
    totals = {}
    for server in servers:
        for name, value in (server.load or {}).items():
            totals[name] = totals.get(name, 0) + value
    return totals


class ClusterHistory(Service):
    """
    Samples the cluster's summed heartbeat counters every C{interval}
    seconds and keeps the rates of the last C{keep} intervals.

    @param clock: an L{IReactorTime}.
    @param cluster: the L{speedy.chunkmaster.cluster.Cluster}.
    """

    def __init__(self, clock, cluster, interval=5.0, keep=120):
        self._clock = clock
        self._cluster = cluster
        self.interval = interval
        self.keep = keep
        self.rates = []
        self._last = None  # (time, totals)
        self._loop = None

    def startService(self):
        super().startService()
        self._loop = LoopingCall(self.sample)
        self._loop.clock = self._clock
        self._loop.start(self.interval, now=True)

    def stopService(self):
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None

    def sample(self):
        """Take one sample now (the timer calls this)."""
        now = self._clock.seconds()
        totals = _load_totals(self._cluster.servers())
        if self._last is not None:
            then, before = self._last
            elapsed = now - then
            if elapsed > 0:
                rate = {"time": now}
                for name, key in _RATED:
                    # A restarted server's counters start again from 0.
                    rate[name] = max(0.0, (totals.get(key, 0) - before.get(key, 0)) / elapsed)
                self.rates.append(rate)
                del self.rates[:-self.keep]
        self._last = (now, totals)


class Peers:
    """
    The imageservers that poll the cluster view, by the name they give in
    C{X-Speedy-Imageserver} (their address otherwise), with where their
    health checks answer (C{X-Speedy-Imageserver-Health}, a base URL, or
    None), forgotten after C{forget_after} seconds of silence.
    """

    def __init__(self, clock, forget_after=300.0, most=1000):
        self._clock = clock
        self.forget_after = forget_after
        self.most = most
        self._seen = {}  # name -> (address, time, counters)
        self._health = {}  # name -> base URL of its /healthz and /readyz

    def saw(self, request):
        """Note the caller of C{request}."""
        host = getattr(request.getClientAddress(), "host", "?")
        name = request.getHeader(b"x-speedy-imageserver")
        name = name.decode("utf-8", "replace")[:200] if name else host
        if name not in self._seen and len(self._seen) >= self.most:
            self._expire()
            if len(self._seen) >= self.most:
                return
        header = request.getHeader(b"x-speedy-imageserver-counters")
        counters = _parse_counters(header) if header else {}
        if not counters and name in self._seen:
            counters = self._seen[name][2]
        self._seen[name] = (host, self._clock.seconds(), counters)
        self._health[name] = health_url(_text(request.getHeader(b"x-speedy-imageserver-health")))

    def _expire(self):
        now = self._clock.seconds()
        for name in [n for n, (_, t, _) in self._seen.items() if now - t > self.forget_after]:
            del self._seen[name]
            self._health.pop(name, None)

    def seen(self):
        """@return: C{[{"name", "address", "seen_ago", "counters", "health"}]},
        by name."""
        self._expire()
        now = self._clock.seconds()
        return [{"name": name, "address": address, "seen_ago": round(now - t, 1),
                 "counters": dict(counters), "health": self._health.get(name)}
                for name, (address, t, counters) in sorted(self._seen.items())]


class Dashboard:
    """
    The handlers of C{/dashboard}.

    @param cluster: the L{speedy.chunkmaster.cluster.Cluster}.
    @param history: a L{ClusterHistory}.
    @param peers: a L{Peers}.
    @param repairs: the L{speedy.chunkmaster.repair.RepairService}, or None.
    @param progress: a L{speedy.monitoring.progress.WorkProgress}, or None.
    @param max_age: seconds one rendering of C{/dashboard/data} is served
        for at most while the cluster view's version stays the same: no
        longer than the page's period (2 s).
    @ivar rendered: the L{RenderedJSON} of C{/dashboard/data}.
    """

    STATES = (INIT, RW, RO, DOWN, DRAINING)

    def __init__(self, clock, cluster, history, peers, repairs=None, progress=None,
                 max_age=1.0):
        self.rendered = RenderedJSON(clock, self._render, version=lambda: cluster.version,
                                     max_age=max_age)
        self._progress = progress
        self._clock = clock
        self._cluster = cluster
        self._history = history
        self._peers = peers
        self._repairs = repairs
        self._assets = {}

    def add_routes(self, router):
        router.route("GET", "/dashboard", self.page)
        router.route("GET", "/dashboard/", self.page)
        router.route("GET", "/dashboard/data", self.data)
        router.route("GET", "/dashboard/{asset}", self.asset)
        return router

    def _file(self, name):
        body = self._assets.get(name)
        if body is None:
            with open(os.path.join(ASSETS, name), "rb") as f:
                body = self._assets[name] = f.read()
        return body

    async def page(self, request):
        return Answer(200, self._file("index.html"), {b"cache-control": b"no-cache"},
                      content_type=_TYPES["html"])

    async def asset(self, request, asset):
        kind = asset.rpartition(".")[2]
        if asset not in ("dashboard.css", "dashboard.js"):
            return json_answer(404, {"error": {"code": "NOT_FOUND",
                                               "message": f"no dashboard asset {asset!r}"}})
        return Answer(200, self._file(asset), {b"cache-control": b"no-cache"},
                      content_type=_TYPES[kind])

    async def data(self, request):
        # no-cache, not no-store: a client may keep an answer and ask again
        # with If-None-Match.
        return await self.rendered.answer(request, {b"cache-control": b"no-cache"})

    async def _render(self):
        if self._progress is not None:
            await self._progress.refresh()
        return self.snapshot()

    def snapshot(self):
        """@return: the JSON-ready state the page draws (module docstring)."""
        cluster = self._cluster
        now = self._clock.seconds()
        view = cluster.view()
        by_state = dict.fromkeys(self.STATES, 0)
        groups, garbage, chunks = [], 0, 0
        for group in view["groups"]:
            servers = []
            for s in group["servers"]:
                record = cluster.server(s["server_id"])
                load = (record.load if record is not None else None) or {}
                by_state[s["state"]] = by_state.get(s["state"], 0) + 1
                server_garbage = load.get("garbage", 0)
                garbage += server_garbage
                chunks += load.get("chunks", 0)
                servers.append({
                    "server_id": s["server_id"], "address": s["address"], "state": s["state"],
                    "lost": s["lost"], "rebuilding": s["rebuilding"],
                    "read_only": s["read_only"], "capacity": s["capacity"], "used": s["used"],
                    "free": s["free"], "garbage": server_garbage,
                    "fill": s["used"] / s["capacity"] if s["capacity"] else 0.0,
                    "chunks": load.get("chunks", 0),
                    "heartbeat_age": (round(now - s["last_heartbeat"], 1)
                                      if s["last_heartbeat"] else None),
                })
            degraded = (not group["writable"] or len(servers) < cluster.group_size
                        or any(s["state"] != RW or s["rebuilding"] for s in servers))
            groups.append({"group_id": group["group_id"], "writable": group["writable"],
                           "read_only": group["read_only"], "degraded": degraded,
                           "servers": servers})
        all_servers = [s for g in groups for s in g["servers"]]
        counters = {name: value for name, value in
                    _load_totals(cluster.servers()).items() if name in _SUMMED}
        counters["heartbeats"] = getattr(cluster, "heartbeats", 0)
        if self._repairs is not None:
            status = self._repairs.status()
            for name, value in status["counters"].items():
                counters["repair_" + name] = value
            counters["repair_queued"] = status["queued"] or 0
            counters["repairing"] = status["repairing"]
            counters["rebuilds"] = len(status["rebuilds"])
        imageservers = self._peers.seen()
        for name in IMAGESERVER_REPORTED:
            counters["imageserver_" + name] = sum(
                i["counters"].get(name, 0) for i in imageservers)
        progress = self._progress
        return {
            "version": view["version"],
            "time": now,
            "totals": {
                "capacity": sum(s["capacity"] for s in all_servers),
                "used": sum(s["used"] for s in all_servers),
                "free": sum(s["free"] for s in all_servers),
                "garbage": garbage, "chunks": chunks, "servers": by_state,
                "groups": len(groups), "groups_writable": sum(g["writable"] for g in groups),
            },
            "groups": groups,
            "rates": list(self._history.rates),
            "counters": counters,
            "imageservers": imageservers,
            "gc": None if progress is None else progress.gc(),
            "transfers": None if progress is None else progress.transfers(),
        }
