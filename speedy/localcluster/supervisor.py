# -*- test-case-name: speedy.test.test_localcluster_supervisor -*-
"""
The supervisor that C{up} runs: starts the roles in order, each once the
one before is healthy, watches them, and stops them in reverse order
(L{LocalCluster}).
"""

import os
import signal
import sys

from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone, ProcessExitedAlready
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import deferLater
from twisted.logger import Logger

from speedy.localcluster.health import Health
from speedy.localcluster.plan import RoleFailed
from speedy.localcluster.state import _write_state, state_path

_log = Logger()


class RoleProcess(ProcessProtocol):
    """A started role's process and, once it ended, its exit code (or the
    negative number of the signal that killed it)."""

    def __init__(self, role):
        self.role = role
        self.exit_code = None
        self._waiting = []

    @property
    def running(self):
        return self.exit_code is None

    @property
    def pid(self):
        return self.transport.pid

    def processEnded(self, reason):
        if reason.check(ProcessDone):
            self.exit_code = 0
        else:
            status = reason.value
            self.exit_code = status.exitCode if status.exitCode is not None else -(status.signal or 0)
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(self.exit_code)

    def when_ended(self):
        """@return: a Deferred firing with the exit code once the process
        has ended (at once if it has)."""
        d = Deferred()
        if self.running:
            self._waiting.append(d)
        else:
            d.callback(self.exit_code)
        return d


def exit_text(exit_code):
    """@return: how a process ended, for people: C{"exit code 1"}, or
    C{"SIGTERM"} when a signal ended it (twistd re-raises the signal that
    stopped it, so a clean stop reads C{"SIGTERM"})."""
    if exit_code >= 0:
        return f"exit code {exit_code}"
    try:
        return signal.Signals(-exit_code).name
    except ValueError:
        return f"signal {-exit_code}"


def _log_tail(path, limit=4000):
    text = []
    for name in (path, path[: -len(".log")] + ".stderr"):
        try:
            with open(name, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - limit))
                text.append(f"--- {name}\n" + f.read().decode("utf-8", "replace"))
        except FileNotFoundError:
            pass
    return "\n".join(text) or "(no log)"


def _signal(process, name):
    try:
        process.transport.signalProcess(name)
    except ProcessExitedAlready:
        pass  # its processEnded is on the way


class LocalCluster:
    """
    Starts the roles of a L{ClusterPlan} in order, waits for each to be
    healthy, records them in the state file, and stops them in reverse.
    """

    def __init__(self, reactor, plan, probe, out, python=sys.executable,
                 start_timeout=60.0, poll_interval=0.2, stop_grace=10.0):
        """
        @param reactor: an C{IReactorProcess} and C{IReactorTime}.
        @param probe: a L{HealthProbe}, or anything with its C{check}.
        @param out: called with each line to show the user.
        """
        self._reactor = reactor
        self.plan = plan
        self._probe = probe
        self._out = out
        self._python = python
        self._start_timeout = start_timeout
        self._poll_interval = poll_interval
        self._stop_grace = stop_grace
        self._ready = False
        self._stopping = False
        self.processes = []

    def _log_path(self, role):
        return os.path.join(self.plan.var, "logs", role.name + ".log")

    def up(self):
        """
        Start every role in order.  On a failure, the roles already started
        are stopped before the Deferred fails.

        @return: a Deferred firing with None once every role is healthy, or
            failing with L{RoleFailed}.
        """
        return Deferred.fromCoroutine(self._up())

    async def _up(self):
        os.makedirs(os.path.join(self.plan.var, "logs"), exist_ok=True)
        self.plan.write_secrets()
        try:
            for role in self.plan.roles():
                process = self._spawn(role)
                self._record(ready=False)
                await self._wait_healthy(process)
                metrics = ("" if role.metrics_port is None
                           else f" (metrics, /readyz on port {role.metrics_port})")
                self._out(f"{role.name} is up: pid {process.pid}, {role.address}{metrics}")
        except Exception:
            await self._stop_all()
            raise
        self._ready = True
        self._record(ready=True)
        for address in self.plan.registries:
            self._out(f"registry at {self.plan.registry_scheme}://{address}/v2/")
        if self.plan.tls is not None:
            for line in self.plan.tls.instructions(self.plan.registries):
                self._out(line)

    def _spawn(self, role):
        process = RoleProcess(role)
        log_path = self._log_path(role)
        stderr = log_path[: -len(".log")] + ".stderr"
        workdir = os.path.join(self.plan.var, "logs")
        argv = role.command(self._python, log_path)
        # What twistd prints before its log opens (an import error, a bad
        # option) goes straight to a file: the child inherits its descriptor.
        try:
            with open(stderr, "ab") as err:
                self._reactor.spawnProcess(
                    process, self._python, argv, env=dict(os.environ), path=workdir,
                    childFDs={0: "w", 1: err.fileno(), 2: err.fileno()})
        except OSError as e:
            raise RoleFailed(f"{role.name} could not be started: {e}")
        self.processes.append(process)
        process.when_ended().addCallback(self._ended, process).addErrback(
            lambda f: _log.failure("reporting the end of {name}", f, name=role.name))
        return process

    def _ended(self, exit_code, process):
        # A role that dies once the cluster is up is reported, not restarted:
        # 'status' then shows it NOT RUNNING.
        if self._ready and not self._stopping:
            self._out(f"{process.role.name} ended ({exit_text(exit_code)}); "
                      f"its log is {self._log_path(process.role)}")

    async def _wait_healthy(self, process):
        role = process.role
        deadline = self._reactor.seconds() + self._start_timeout
        health = Health(False, "not checked yet")
        while True:
            if not process.running:
                raise RoleFailed(f"{role.name} ended ({exit_text(process.exit_code)}) while starting:\n"
                                 f"{_log_tail(self._log_path(role))}")
            if self._reactor.seconds() >= deadline:
                raise RoleFailed(f"{role.name} was not healthy after {self._start_timeout:g}s "
                                 f"({health.detail}):\n{_log_tail(self._log_path(role))}")
            health = await self._probe.check(role, process.pid)
            if health.healthy:
                return
            await deferLater(self._reactor, self._poll_interval, lambda: None)

    def down(self):
        """
        Stop every started role, the last started first, and remove the
        state file.

        @return: a Deferred firing with None once all have exited.
        """
        return Deferred.fromCoroutine(self._stop_all())

    async def _stop_all(self):
        self._stopping = True
        for process in reversed(self.processes):
            if process.running:
                await self._stop(process)
                self._out(f"{process.role.name} stopped ({exit_text(process.exit_code)})")
        try:
            os.remove(state_path(self.plan.var))
        except FileNotFoundError:
            pass

    async def _stop(self, process):
        _signal(process, "TERM")
        timer = self._reactor.callLater(self._stop_grace, self._kill, process)
        await process.when_ended()
        if timer.active():
            timer.cancel()

    def _kill(self, process):
        if process.running:
            self._out(f"{process.role.name} ignored SIGTERM for {self._stop_grace:g}s: killing it")
            _signal(process, "KILL")

    def _record(self, ready):
        _write_state(self.plan.var, {
            "supervisor_pid": os.getpid(),
            "ready": ready,
            "registries": list(self.plan.registries),
            "registry_scheme": self.plan.registry_scheme,
            "tls_ca": None if self.plan.tls is None else self.plan.tls.ca_certificate,
            "master": self.plan.master_url,
            "admin_token": self.plan.admin_token,
            "roles": [
                {"name": p.role.name, "plugin": p.role.plugin, "pid": p.pid,
                 "address": p.role.address, "health_url": p.role.health_url,
                 "needs_writable_group": p.role.needs_writable_group,
                 "shares_port": p.role.shares_port, "metrics_port": p.role.metrics_port,
                 "log": self._log_path(p.role)}
                for p in self.processes
            ],
        })
