# -*- test-case-name: speedy.test.test_localcluster -*-
"""
A whole Speedy cluster on one machine, for development and end-to-end tests:
what C{make run} and C{tools/speedy-cluster} run.

C{up} starts the roles in dependency order, each only once the one before
is healthy:

    1. the chunkmaster         healthy: C{GET /v1/health} answers C{{"ok": true}}
    2. every chunkserver       healthy: its wire-protocol port accepts connections
    3. every imageserver       healthy: C{GET /v1/health} answers C{{"ok": true}}
                               with C{writable_groups} >= 1 (a worker sharing
                               its port: and it listens on that port)

then prints the registry address and runs until Ctrl-C or SIGTERM, when it
stops the roles in reverse order (SIGTERM, then SIGKILL after a grace
period).  If a role exits or stays unhealthy while starting, the roles
already started are stopped and C{up} fails with the tail of that role's log.

Everything lives under the var directory (C{./var} by default)::

    cluster.json          the state file: supervisor pid, each role's pid,
                          address, health URL and log (read by status/down)
    metadata.sqlite       the metadata store every role shares
    chunkserver-N/        each chunkserver's data dir
    logs/ROLE.log         each role's twistd log (ROLE.stderr beside it)

With C{--imageserver-workers N} above 1, each registry port is served by N
imageserver processes (C{imageserver-1.1}, C{imageserver-1.2}, ...) that all
listen on it with the C{reuseport:} endpoint (L{speedy.endpoints}): the
kernel spreads the clients' connections over them, so a registry uses up to
N cores.  Clients see one registry; any worker continues any upload, since
upload sessions live in the metadata store.  Linux only.

Each role runs as C{python -c "...; twistd.run()" -n --pidfile= --logfile
LOG PLUGIN ...} in a process group of its own, so a Ctrl-C in the terminal
reaches only the supervisor, which then stops the roles in order.
"""

import json
import os
import secrets
import signal
import socket
import sys

from attrs import field, frozen
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ProcessDone, ProcessExitedAlready
from twisted.internet.protocol import ProcessProtocol, Protocol
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.filepath import FilePath

from speedy.units import parse_size

#: What each role's process runs: twistd, in a process group of its own.
TWISTD_IN_OWN_GROUP = "import os; os.setpgid(0, 0); from twisted.scripts.twistd import run; run()"

_log = Logger()

STATE_FILE = "cluster.json"
METADATA_FILE = "metadata.sqlite"

#: Imageserver processes per registry port that C{up} starts unless told:
#: measured on a 2-core machine (see docs/quickstart.md).
DEFAULT_IMAGESERVER_WORKERS = 2


class ClusterError(Exception):
    """The cluster could not be started, stopped or read."""


class RoleFailed(ClusterError):
    """A role exited or stayed unhealthy while the cluster was starting."""


def _address(host, port):
    return f"{host}:{port}"


def pick_free_port(host="127.0.0.1"):
    """@return: a TCP port on C{host} that nothing listens on right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@frozen
class Role:
    """
    One daemon of the cluster: its twistd plugin and arguments, where it
    listens, and how to tell it is healthy (an HTTP health URL, or None to
    wait for its port to accept connections).  A role that C{shares_port}
    with others (an imageserver worker) must also be seen listening on it.
    """

    name: str
    plugin: str
    args: tuple
    host: str
    port: int
    health_url: str | None = None
    needs_writable_group: bool = False
    shares_port: bool = False

    @property
    def address(self):
        return _address(self.host, self.port)

    def command(self, python, log_path):
        """@return: the argv that runs this role in the foreground, logging
        to C{log_path}."""
        return [python, "-c", TWISTD_IN_OWN_GROUP, "-n", "--pidfile=", "--logfile", log_path,
                self.plugin, *self.args]


@frozen
class ClusterPlan:
    """
    The shape of a local cluster: ports, sizes and the var directory.  Use
    L{ClusterPlan.build} to make one from command-line style arguments.
    """

    var: str
    host: str
    master_port: int
    chunkserver_ports: tuple
    imageserver_ports: tuple
    group_size: int = 3
    imageserver_workers: int = 1
    chunk_size: int | None = None
    volume_size: int | None = None
    cache_size: int | None = None
    read_window: int | None = None
    cut_through: int | None = None
    heartbeat_interval: float | None = None
    cluster_secret: str = field(factory=lambda: secrets.token_urlsafe(24), repr=False)
    admin_token: str = field(factory=lambda: secrets.token_urlsafe(24), repr=False)

    @classmethod
    def build(cls, var="var", registry="127.0.0.1:5000", master_port=8099, chunkserver_port=8001,
              chunkservers=3, imageservers=1, group_size=3, imageserver_workers=1, **options):
        """
        Lay out a cluster: imageservers on the registry port and the ones
        after it, C{imageserver_workers} processes sharing each of those
        ports, chunkservers on C{chunkserver_port} and the ones after it.
        A port of 0 gives every role of that kind a free port of its own.

        @param options: C{chunk_size}, C{volume_size}, C{cache_size}, C{read_window},
            C{cut_through}, C{heartbeat_interval}, C{cluster_secret}, C{admin_token}.
        @raise ClusterError: on counts that cannot make a cluster.
        @return: a L{ClusterPlan}.
        """
        host, _, port = registry.rpartition(":")
        if not host or not port.isdigit():
            raise ClusterError(f"registry address must be HOST:PORT, not {registry!r}")
        if imageservers < 1:
            raise ClusterError("a cluster needs at least one imageserver")
        if imageserver_workers < 1:
            raise ClusterError("an imageserver needs at least one worker")
        if group_size < 1 or chunkservers < group_size or chunkservers % group_size:
            raise ClusterError(
                f"{chunkservers} chunkservers cannot form replica groups of {group_size}: "
                f"use a positive multiple of {group_size}")

        def ports(first, count):
            if first == 0:
                return tuple(pick_free_port(host) for _ in range(count))
            return tuple(range(first, first + count))

        return cls(
            var=os.path.abspath(var), host=host,
            master_port=ports(int(master_port), 1)[0],
            chunkserver_ports=ports(int(chunkserver_port), chunkservers),
            imageserver_ports=ports(int(port), imageservers),
            group_size=group_size, imageserver_workers=imageserver_workers, **options)

    @property
    def master_url(self):
        return f"http://{self.host}:{self.master_port}"

    @property
    def registries(self):
        """@return: the C{host:port} of every imageserver's registry."""
        return tuple(_address(self.host, p) for p in self.imageserver_ports)

    def _listen(self, port, shared=False):
        return f"{'reuseport' if shared else 'tcp'}:{port}:interface={self.host}"

    def roles(self):
        """@return: every L{Role} of the cluster, in the order they start."""
        db = "sqlite:" + os.path.join(self.var, METADATA_FILE)
        master = Role(
            "chunkmaster", "speedy-chunkmaster",
            ("--listen", self._listen(self.master_port), "--db", db,
             "--cluster-secret", self.cluster_secret, "--admin-token", self.admin_token,
             "--group-size", str(self.group_size)),
            self.host, self.master_port, health_url=f"{self.master_url}/v1/health")
        chunkservers = []
        for i, port in enumerate(self.chunkserver_ports):
            args = ["--data-dir", os.path.join(self.var, f"chunkserver-{i + 1}"),
                    "--listen", self._listen(port), "--group-id", str(i // self.group_size + 1),
                    "--master", self.master_url, "--cluster-secret", self.cluster_secret]
            if self.volume_size is not None:
                args += ["--volume-size", str(self.volume_size)]
            if self.cache_size is not None:
                args += ["--cache-size", str(self.cache_size)]
            if self.heartbeat_interval is not None:
                args += ["--heartbeat-interval", f"{self.heartbeat_interval:g}"]
            chunkservers.append(Role(f"chunkserver-{i + 1}", "speedy-chunkserver", tuple(args),
                                     self.host, port))
        shared = self.imageserver_workers > 1
        imageservers = []
        for i, port in enumerate(self.imageserver_ports):
            args = ["--listen", self._listen(port, shared), "--master", self.master_url,
                    "--cluster-secret", self.cluster_secret, "--db", db]
            if self.chunk_size is not None:
                args += ["--chunk-size", str(self.chunk_size)]
            if self.read_window is not None:
                args += ["--read-window", str(self.read_window)]
            if self.cut_through is not None:
                args += ["--cut-through", str(self.cut_through)]
            for w in range(self.imageserver_workers):
                imageservers.append(Role(
                    f"imageserver-{i + 1}.{w + 1}" if shared else f"imageserver-{i + 1}",
                    "speedy-imageserver", tuple(args), self.host, port,
                    health_url=f"http://{self.host}:{port}/v1/health", needs_writable_group=True,
                    shares_port=shared))
        return (master, *chunkservers, *imageservers)


# --- health -----------------------------------------------------------------


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


class HealthProbe:
    """
    Checks roles the way C{up} and C{status} need: an HTTP health URL must
    answer 200 with a JSON object whose C{ok} is true (and, for an
    imageserver, C{writable_groups} >= 1); a role without one must accept a
    TCP connection on its port.  A role that shares its port with others
    must in addition be seen listening on it, as only then does the
    answer on that port tell anything about it (the kernel picks which of
    them answers).
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
        if response.code != 200:
            return Health(False, f"{role.health_url} answered {response.code}")
        try:
            health = json.loads(body)
        except ValueError:
            return Health(False, f"{role.health_url} answered something that is not JSON")
        if not isinstance(health, dict) or health.get("ok") is not True:
            return Health(False, f"{role.health_url} answered {body[:200]!r}")
        if role.needs_writable_group:
            writable = health.get("writable_groups")
            if not isinstance(writable, int) or writable < 1:
                return Health(False, f"no writable replica group yet (writable_groups={writable!r})")
        return Health(True)


# --- the state file -----------------------------------------------------------


def state_path(var):
    return os.path.join(os.path.abspath(var), STATE_FILE)


def read_state(var):
    """
    @return: the state file of the cluster under C{var} as a dict, or None
        when there is none.
    @raise ClusterError: the file is there but is not a cluster state.
    """
    try:
        with open(state_path(var), "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        return None
    try:
        state = json.loads(raw)
        if not isinstance(state, dict) or not isinstance(state.get("roles"), list):
            raise ValueError("no roles")
        for role in state["roles"]:
            int(role["pid"]), str(role["name"]), str(role["plugin"])
        int(state["supervisor_pid"])
    except (ValueError, TypeError, KeyError) as e:
        raise ClusterError(f"{state_path(var)} is not a cluster state file ({e}); remove it")
    return state


def _write_state(var, state):
    FilePath(state_path(var)).setContent(json.dumps(state, indent=2).encode("utf-8"))


def role_from_state(entry):
    """@return: the L{Role} a state file entry describes (for health checks)."""
    host, _, port = entry["address"].rpartition(":")
    return Role(entry["name"], entry["plugin"], (), host, int(port), entry.get("health_url"),
                bool(entry.get("needs_writable_group")), bool(entry.get("shares_port")))


# --- processes ------------------------------------------------------------------


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
        try:
            for role in self.plan.roles():
                process = self._spawn(role)
                self._record(ready=False)
                await self._wait_healthy(process)
                self._out(f"{role.name} is up: pid {process.pid}, {role.address}")
        except Exception:
            await self._stop_all()
            raise
        self._ready = True
        self._record(ready=True)
        for address in self.plan.registries:
            self._out(f"registry at http://{address}/v2/")

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
            "master": self.plan.master_url,
            "admin_token": self.plan.admin_token,
            "roles": [
                {"name": p.role.name, "plugin": p.role.plugin, "pid": p.pid,
                 "address": p.role.address, "health_url": p.role.health_url,
                 "needs_writable_group": p.role.needs_writable_group,
                 "shares_port": p.role.shares_port, "log": self._log_path(p.role)}
                for p in self.processes
            ],
        })


# --- processes found through the state file ------------------------------------


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
            out(f"registry at http://{address}/v2/")
    else:
        out("cluster is still starting")
    return code


# --- command line -----------------------------------------------------------------


class _ClusterOptions(usage.Options):
    optParameters = [["var", None, "var", "directory of the cluster's data, logs and state file"]]


class UpOptions(_ClusterOptions):
    synopsis = "[options]"
    longdesc = ("Start a local cluster and run it in the foreground (in its own terminal, or in the "
                "background with '&' and stopped with 'down'); Ctrl-C or SIGTERM stops every role in "
                "reverse order.  A port of 0 picks free ports.")
    optParameters = [
        ["registry", None, "127.0.0.1:5000", "HOST:PORT of the first imageserver's registry; "
                                              "more imageservers take the following ports"],
        ["chunkservers", None, 3, "number of chunkservers", int],
        ["imageservers", None, 1, "number of imageservers", int],
        ["imageserver-workers", None, DEFAULT_IMAGESERVER_WORKERS,
         "imageserver processes sharing each registry port (SO_REUSEPORT; Linux)", int],
        ["group-size", None, 3, "chunkservers per replica group", int],
        ["master-port", None, 8099, "chunkmaster port", int],
        ["chunkserver-port", None, 8001, "first chunkserver port", int],
        ["chunk-size", None, None, "imageserver chunk size (e.g. 4MiB)", parse_size],
        ["volume-size", None, "256MiB", "size of each chunkserver volume file (preallocated)", parse_size],
        ["cache-size", None, None, "memory cache of each chunkserver, reserved at its start "
         "(default: the chunkserver's, 512MiB)", parse_size],
        ["heartbeat-interval", None, 1.0, "chunkserver heartbeat interval, seconds", float],
        ["start-timeout", None, 60.0, "seconds each role has to become healthy", float],
    ]


class Options(usage.Options):
    synopsis = "up|down|status [--var DIR] [options]"
    longdesc = "Start, inspect and stop a Speedy cluster on this machine (what make run runs)."
    subCommands = [
        ["up", None, UpOptions, "start a local cluster and run it until Ctrl-C"],
        ["down", None, _ClusterOptions, "stop the cluster recorded under --var"],
        ["status", None, _ClusterOptions, "show each role's pid and health"],
    ]

    def postOptions(self):
        if self.subCommand is None:
            raise usage.UsageError("say up, down or status")


def _say(line):
    print(line, flush=True)


def _http_client(reactor):
    from treq.client import HTTPClient
    from twisted.web.client import Agent, HTTPConnectionPool

    return HTTPClient(Agent(reactor, connectTimeout=2, pool=HTTPConnectionPool(reactor, persistent=False)))


async def _run_up(reactor, var, options):
    plan = ClusterPlan.build(
        var=var, registry=options["registry"], master_port=options["master-port"],
        chunkserver_port=options["chunkserver-port"], chunkservers=options["chunkservers"],
        imageservers=options["imageservers"], imageserver_workers=options["imageserver-workers"],
        group_size=options["group-size"],
        chunk_size=options["chunk-size"], volume_size=parse_size(options["volume-size"]),
        cache_size=options["cache-size"],
        heartbeat_interval=options["heartbeat-interval"])
    existing = read_state(var)
    if existing is not None and (
            process_matches(existing["supervisor_pid"], "speedy")
            or any(process_matches(r["pid"], r["plugin"]) for r in existing["roles"])):
        raise ClusterError(f"a cluster already runs under {plan.var}: 'down' it first")
    cluster = LocalCluster(reactor, plan, HealthProbe(reactor, _http_client(reactor)), _say,
                           start_timeout=options["start-timeout"])
    stopped = Deferred()

    def shutting_down():
        # Before the reactor stops (Ctrl-C, SIGTERM): stop the roles in order.
        d = cluster.down()
        d.addCallback(lambda _: stopped.callback(None))
        return d

    reactor.addSystemEventTrigger("before", "shutdown", shutting_down)
    await cluster.up()
    _say("Ctrl-C (or 'speedy-cluster down') stops the cluster")
    await stopped


def main(argv, reactor=None):
    """Run the C{speedy-cluster} command line; exits the process."""
    from twisted.internet import task

    options = Options()
    try:
        options.parseOptions(argv)
    except usage.UsageError as e:
        print(f"{options}\nspeedy-cluster: {e}", file=sys.stderr)
        sys.exit(2)
    command, var = options.subCommand, options.subOptions["var"]

    async def run(reactor):
        try:
            if command == "up":
                await _run_up(reactor, var, options.subOptions)
                return 0
            if command == "down":
                await stop_recorded(reactor, var, _say)
                return 0
            return await report_status(var, HealthProbe(reactor, _http_client(reactor)), _say)
        except ClusterError as e:
            print(f"speedy-cluster: {e}", file=sys.stderr)
            return 1

    def react_main(reactor):
        return Deferred.fromCoroutine(run(reactor)).addCallback(_exit_with)

    task.react(react_main, [], _reactor=reactor)


def _exit_with(code):
    if code:
        raise SystemExit(code)
