# -*- test-case-name: speedy.test.test_localcluster_recorded -*-
"""
What C{status} and C{down} do from another process, through the state
file: find the recorded processes, report their health, stop them.
"""

import os
import signal

from twisted.internet.task import deferLater

from speedy.localcluster.health import Health
from speedy.localcluster.state import read_state, role_from_state, state_path


def process_matches(pid, marker):
    """
    @return: True if process C{pid} is alive (not a zombie) and, where
        C{/proc} tells, its command line contains C{marker}; so a pid reused
        by another program after a crash is never signalled.
    """
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    proc = f"/proc/{pid}"
    if not os.path.isdir(proc):
        return True
    try:
        with open(f"{proc}/stat", "rb") as f:
            if f.read().rsplit(b")", 1)[1].split()[0] == b"Z":
                return False
        with open(f"{proc}/cmdline", "rb") as f:
            return marker.encode("utf-8") in f.read()
    except (OSError, IndexError):
        return False


async def _wait_gone(reactor, pid, marker, timeout, interval=0.1):
    deadline = reactor.seconds() + timeout
    while process_matches(pid, marker):
        if reactor.seconds() >= deadline:
            return False
        await deferLater(reactor, interval, lambda: None)
    return True


async def stop_recorded(reactor, var, out, grace=10.0):
    """
    Stop the cluster recorded under C{var}: ask its supervisor (SIGTERM),
    which stops the roles in order; if the supervisor is gone (it was
    killed), stop the roles it left, last started first.

    @return: the number of processes that had to be stopped (0: nothing ran).
    """
    state = read_state(var)
    if state is None:
        out(f"no cluster recorded under {os.path.abspath(var)}")
        return 0
    stopped = 0
    supervisor = state["supervisor_pid"]
    if process_matches(supervisor, "speedy"):
        os.kill(supervisor, signal.SIGTERM)
        stopped += 1
        timeout = grace * (len(state["roles"]) + 1)
        if not await _wait_gone(reactor, supervisor, "speedy", timeout):
            out(f"supervisor {supervisor} still runs after {timeout:g}s: killing it")
            os.kill(supervisor, signal.SIGKILL)
    for entry in reversed(state["roles"]):
        pid, marker = int(entry["pid"]), entry["plugin"]
        if process_matches(pid, marker):
            os.kill(pid, signal.SIGTERM)
            stopped += 1
            if not await _wait_gone(reactor, pid, marker, grace):
                os.kill(pid, signal.SIGKILL)
            out(f"{entry['name']} stopped")
    try:
        os.remove(state_path(var))
    except FileNotFoundError:
        pass
    out("cluster stopped")
    return stopped


async def report_status(var, probe, out):
    """
    Show each recorded role's pid, whether it runs, and its health.

    @return: 0 when every role runs and is healthy, 1 when one is not, 3
        when no cluster is recorded.
    """
    state = read_state(var)
    if state is None:
        out(f"no cluster recorded under {os.path.abspath(var)}")
        return 3
    supervisor = state["supervisor_pid"]
    supervised = process_matches(supervisor, "speedy")
    out(f"supervisor  pid {supervisor}  {'running' if supervised else 'GONE'}")
    code = 0 if supervised else 1
    for entry in state["roles"]:
        role = role_from_state(entry)
        if process_matches(int(entry["pid"]), entry["plugin"]):
            health = await probe.check(role, int(entry["pid"]))
            detail = "healthy" if health.healthy else f"UNHEALTHY: {health.detail}"
        else:
            health, detail = Health(False), "NOT RUNNING"
        code = code if health.healthy else 1
        out(f"{role.name:<16} pid {entry['pid']:<7} {role.address:<21} {detail}  log {entry['log']}")
    if state.get("ready"):
        for address in state["registries"]:
            out(f"registry at {state.get('registry_scheme', 'http')}://{address}/v2/")
    else:
        out("cluster is still starting")
    return code
