# -*- test-case-name: speedy.test.test_localcluster_health -*-
"""
How the supervisor tells a role is healthy: its HTTP health URL, or its
port accepting connections, and the ports a process listens on.
"""

import json
import os

from attrs import frozen
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol


def listening_ports(pid):
    """
    @return: the set of TCP ports process C{pid} listens on, read from
        C{/proc} (its sockets' inodes, found in its network namespace's
        C{tcp} and C{tcp6} tables in the LISTEN state); empty when it is
        gone or C{/proc} does not tell.
    """
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return set()
    inodes = set()
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue  # closed meanwhile
        if target.startswith("socket:["):
            inodes.add(target[len("socket:["):-1])
    ports = set()
    for table in ("tcp", "tcp6"):
        try:
            with open(f"/proc/{pid}/net/{table}") as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            # sl local_address rem_address st ... inode: st 0A is LISTEN
            fields = row.split()
            if len(fields) > 9 and fields[3] == "0A" and fields[9] in inodes:
                ports.add(int(fields[1].rpartition(":")[2], 16))
    return ports


@frozen
class Health:
    """What a health check found: C{healthy}, and in C{detail} why not."""

    healthy: bool
    detail: str = "ok"


def judge_health(url, code, body, needs_writable_group=False):
    """
    @return: the L{Health} that answer C{code} with C{body} (bytes) of
        C{url} tells: 200 with a JSON object whose C{ready} (a C{/readyz})
        or C{ok} (an older C{/v1/health}) is true, and, with
        C{needs_writable_group}, whose C{cluster_view} check (or top-level
        C{writable_groups}) counts a writable group.
    """
    try:
        health = json.loads(body)
    except ValueError:
        health = None
    checks = health.get("checks") if isinstance(health, dict) else None
    checks = checks if isinstance(checks, dict) else {}
    if code != 200:
        failing = "; ".join(f"{name}: {check.get('detail')}"
                            for name, check in sorted(checks.items())
                            if isinstance(check, dict) and not check.get("ok"))
        return Health(False, f"{url} answered {code}"
                             + (f" ({failing})" if failing else ""))
    if not isinstance(health, dict):
        return Health(False, f"{url} answered something that is not a "
                             "JSON object")
    if health.get("ready", health.get("ok")) is not True:
        return Health(False, f"{url} answered {body[:200]!r}")
    if needs_writable_group:
        view = checks.get("cluster_view")
        writable = (view.get("writable_groups") if isinstance(view, dict)
                    else health.get("writable_groups"))
        if not isinstance(writable, int) or isinstance(writable, bool) or writable < 1:
            return Health(False, f"no writable replica group yet (writable_groups={writable!r})")
    return Health(True)


class HealthProbe:
    """
    Checks roles the way C{up} and C{status} need: an HTTP health URL (a
    role's C{/readyz}) must answer 200 with a JSON object whose C{ready}
    is true (and, for an imageserver, whose C{cluster_view} check counts
    C{writable_groups} >= 1; C{ok} and a top-level C{writable_groups} for
    the C{/v1/health} URLs of state files written before); a role without
    one must accept a TCP connection on its port.  A role that shares its
    port with others must in addition be seen listening on it, as only
    then does the answer on that port tell anything about it (the kernel
    picks which of them answers); each worker's own C{--metrics} listener
    answers for that worker alone.
    """

    def __init__(self, reactor, http_client, timeout=2.0):
        """
        @param http_client: a C{treq.client.HTTPClient} (or C{StubTreq}).
        @param timeout: seconds allowed for each check.
        """
        self._reactor = reactor
        self._http = http_client
        self._timeout = timeout

    def check(self, role, pid=None):
        """
        @param pid: the role's process, for a role that C{shares_port}.
        @return: a Deferred firing with a L{Health}; it never fails.
        """
        if role.shares_port and pid is not None and role.port not in listening_ports(pid):
            return succeed(Health(False, f"pid {pid} does not listen on port {role.port} yet"))
        if role.health_url is None:
            return self._check_port(role)
        return Deferred.fromCoroutine(self._check_http(role))

    def _check_port(self, role):
        endpoint = TCP4ClientEndpoint(self._reactor, role.host, role.port, timeout=self._timeout)
        d = connectProtocol(endpoint, Protocol())

        def connected(protocol):
            protocol.transport.loseConnection()
            return Health(True)

        return d.addCallbacks(connected, lambda f: Health(False, f"port {role.port}: {f.getErrorMessage()}"))

    async def _check_http(self, role):
        try:
            response = await self._http.get(role.health_url, reactor=self._reactor, timeout=self._timeout)
            body = await response.content()
        except Exception as e:
            return Health(False, f"{role.health_url}: {e.__class__.__name__}: {e}")
        return judge_health(role.health_url, response.code, body, role.needs_writable_group)
