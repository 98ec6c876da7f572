# -*- test-case-name: speedy.test.test_health -*-
"""
C{speedy-admin health}: is every member of the cluster alive and ready?

It asks the chunkmaster for its members (C{GET /v1/admin/members}:
chunkservers and the imageservers seen, with where their health checks
answer) and probes each, and the chunkmaster itself, at once:

    role          alive                            ready
    chunkmaster   /healthz answers 200             /readyz answers 200
    chunkserver   /healthz of its --metrics        /readyz answers 200, and the
                  listener; without one, its       chunkmaster has it RW, RO or
                  wire port accepts a connection   DRAINING (not INIT, DOWN, lost)
    imageserver   /healthz answers 200             /readyz answers 200 (it holds a
                                                   cluster view)

An imageserver without a C{--metrics} listener is probed on its registry
listener, which, shared by several workers, answers for whichever the
kernel picks: give each worker its own.  Exit code 1 when a member is not
ready (the table says which and why), 3 when the chunkmaster cannot be
asked.
"""

from attrs import asdict, frozen
from twisted.internet.defer import Deferred, DeferredSemaphore, gatherResults
from twisted.internet.endpoints import HostnameEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.python import usage

from speedy.admin.client import AdminError
from speedy.admin.output import table

#: The chunkmaster's server states in which a chunkserver serves.
SERVING = frozenset(["RW", "RO", "DRAINING"])

#: Members probed at once.
PARALLEL_PROBES = 32


class HealthOptions(usage.Options):
    synopsis = "[--probe-timeout SECONDS]"
    longdesc = ("Probe /healthz and /readyz of the chunkmaster, every chunkserver and every "
                "imageserver seen; exit code 1 if any is not ready.")
    optParameters = [["probe-timeout", None, 3.0, "seconds each probe may take", float]]


@frozen
class MemberHealth:
    """What the probes of one member found."""

    role: str
    name: str
    address: str | None
    alive: bool
    ready: bool
    detail: str


async def _http_checks(client, base, timeout):
    """
    @return: C{(alive, ready, detail)} of C{base}'s C{/healthz} and
        C{/readyz}.
    """
    try:
        status, answer = await client.probe(base + "/healthz", timeout)
    except AdminError as e:
        return False, False, f"/healthz: {e}"
    if status != 200 or not isinstance(answer, dict) or answer.get("alive") is not True:
        return False, False, f"/healthz answered {status}"
    try:
        status, answer = await client.probe(base + "/readyz", timeout)
    except AdminError as e:
        return True, False, f"/readyz: {e}"
    checks = answer.get("checks", {}) if isinstance(answer, dict) else {}
    if not isinstance(checks, dict):
        checks = {}
    ready = status == 200 and isinstance(answer, dict) and answer.get("ready") is True
    failing = [f"{name}: {check.get('detail')}" for name, check in sorted(checks.items())
               if isinstance(check, dict) and not check.get("ok")]
    if ready:
        detail = "; ".join(str(check.get("detail")) for _, check in sorted(checks.items())
                           if isinstance(check, dict)) or "ready"
    else:
        detail = "not ready: " + ("; ".join(failing) or f"/readyz answered {status}")
    return True, ready, detail


async def _port_open(reactor, address, timeout):
    """@return: C{(alive, detail)}: whether C{host:port} accepts a TCP connection."""
    host, _, port = address.rpartition(":")
    try:
        protocol = await connectProtocol(
            HostnameEndpoint(reactor, host.strip("[]").encode("idna"), int(port),
                             timeout=timeout), Protocol())
    except Exception as e:
        return False, f"port {port}: {e.__class__.__name__}"
    protocol.transport.loseConnection()
    return True, f"port {port} accepts connections (no --metrics listener to ask)"


async def _chunkmaster(client, timeout):
    base = client.target.master.rstrip("/")
    alive, ready, detail = await _http_checks(client, base, timeout)
    return MemberHealth("chunkmaster", "chunkmaster", base.partition("://")[2], alive, ready,
                        detail)


async def _chunkserver(client, server, timeout, connect):
    state = server["state"] + (" lost" if server.get("lost") else "")
    age = server.get("heartbeat_age")
    where = f"group {server['group_id']}, {state}" + (
        f" (heartbeat {age:g}s ago)" if age is not None else " (no heartbeat yet)")
    if server.get("health"):
        alive, ready, detail = await _http_checks(client, server["health"], timeout)
    else:
        alive, detail = await connect(server["address"], timeout)
        ready = alive
    serving = server["state"] in SERVING and not server.get("lost")
    return MemberHealth("chunkserver", server["server_id"], server["address"], alive,
                        ready and serving, f"{where}; {detail}")


async def _imageserver(client, peer, timeout):
    if not peer.get("health"):
        return MemberHealth("imageserver", peer["name"], None, False, False,
                            f"seen {peer['seen_ago']:g}s ago; it did not say where its "
                            "health checks answer")
    alive, ready, detail = await _http_checks(client, peer["health"], timeout)
    return MemberHealth("imageserver", peer["name"], peer["health"].partition("://")[2],
                        alive, ready, detail)


async def probe_all(client, timeout, connect):
    """
    @param connect: C{async connect(address, timeout)} returning C{(alive,
        detail)} for a chunkserver without a health URL.
    @return: a list of L{MemberHealth}: the chunkmaster, the chunkservers
        by group, the imageservers by name.
    @raise AdminError: the chunkmaster did not list its members.
    """
    members = await client.get("/v1/admin/members")
    limit = DeferredSemaphore(PARALLEL_PROBES)

    def limited(coroutine_function, *args):
        return limit.run(lambda: Deferred.fromCoroutine(coroutine_function(*args)))

    servers = sorted(members["chunkservers"], key=lambda s: (s["group_id"], s["server_id"]))
    probes = [limited(_chunkmaster, client, timeout)]
    probes += [limited(_chunkserver, client, s, timeout, connect) for s in servers]
    probes += [limited(_imageserver, client, p, timeout) for p in members["imageservers"]]
    return await gatherResults(probes, consumeErrors=True)


def render(report):
    """@return: the lines an operator reads on a terminal."""
    lines = table(["ROLE", "NAME", "ADDRESS", "ALIVE", "READY", "DETAIL"],
                  [[m["role"], m["name"], m["address"], "yes" if m["alive"] else "NO",
                    "yes" if m["ready"] else "NO", m["detail"]] for m in report["members"]])
    lines.append("")
    not_ready = [m["name"] for m in report["members"] if not m["ready"]]
    lines.append(f"{len(report['members'])} members, {len(report['members']) - len(not_ready)} "
                 "ready" + (f"; NOT READY: {', '.join(not_ready)}" if not_ready else ""))
    return lines


async def run(client, options, context, connect=None):
    """
    Probe every member and show what was found.

    @param connect: see L{probe_all}; by default a TCP connection through
        C{context.reactor}.
    @return: the exit code: 0 when every member is ready, else 1.
    """
    if connect is None:
        def connect(address, timeout):
            return _port_open(context.reactor, address, timeout)
    found = await probe_all(client, options["probe-timeout"], connect)
    report = {"ready": all(m.ready for m in found), "members": [asdict(m) for m in found]}
    context.show(report, render)
    return 0 if report["ready"] else 1
