"""
Tests for L{speedy.localcluster}: the command lines of the roles, the order
they start and stop in, health waiting (with a fake process reactor and a
scripted probe), the health checks themselves, the state file, and one real
C{up}/C{status}/C{down} run of C{tools/speedy-cluster}.
"""

import hashlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time

from treq.testing import StubTreq
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectionRefusedError, ProcessDone, ProcessExitedAlready, ProcessTerminated
from twisted.internet.interfaces import IReactorProcess
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from zope.interface import implementer
from zope.interface.verify import verifyObject

from speedy import localcluster
from speedy.localcluster import (
    ClusterError, ClusterPlan, Health, HealthProbe, LocalCluster, Options, Role, RoleFailed)
from speedy.test.processes import free_port

TOOL = os.path.join(os.path.dirname(__file__), os.pardir, os.pardir, "tools", "speedy-cluster")


def plan(var, **kwargs):
    """A default-shaped plan under C{var} with fixed secrets."""
    kwargs.setdefault("cluster_secret", "S")
    kwargs.setdefault("admin_token", "T")
    return ClusterPlan.build(var=var, **kwargs)


def option_after(args, name):
    return args[list(args).index(name) + 1]


class ClusterPlanTests(SynchronousTestCase):
    """The roles a plan lays out and their command lines (the daemons'
    command-line contract)."""

    def test_default_layout(self):
        """By default: chunkmaster on 8099, chunkservers on 8001-8003, one
        imageserver serving the registry on 127.0.0.1:5000, started in that
        order."""
        roles = plan("var").roles()
        self.assertEqual(
            [(r.name, r.plugin, r.address) for r in roles],
            [("chunkmaster", "speedy-chunkmaster", "127.0.0.1:8099"),
             ("chunkserver-1", "speedy-chunkserver", "127.0.0.1:8001"),
             ("chunkserver-2", "speedy-chunkserver", "127.0.0.1:8002"),
             ("chunkserver-3", "speedy-chunkserver", "127.0.0.1:8003"),
             ("imageserver-1", "speedy-imageserver", "127.0.0.1:5000")])
        self.assertEqual(plan("var").registries, ("127.0.0.1:5000",))

    def test_master_command_line(self):
        var = os.path.abspath("some-var")
        master = plan(var).roles()[0]
        self.assertEqual(master.args, (
            "--listen", "tcp:8099:interface=127.0.0.1", "--db", f"sqlite:{var}/metadata.sqlite",
            "--cluster-secret", "S", "--admin-token", "T", "--group-size", "3"))
        self.assertEqual(master.health_url, "http://127.0.0.1:8099/v1/health")
        self.assertFalse(master.needs_writable_group)

    def test_chunkserver_command_lines(self):
        """Chunkservers fill replica groups of three in order, each with its
        own data dir, and know the master and the secret."""
        var = os.path.abspath("v")
        servers = [r for r in plan(var, chunkservers=6, volume_size=1 << 28, cache_size=1 << 25,
                                   heartbeat_interval=0.5).roles() if r.plugin == "speedy-chunkserver"]
        self.assertEqual([option_after(r.args, "--group-id") for r in servers], ["1", "1", "1", "2", "2", "2"])
        self.assertEqual(servers[4].args, (
            "--data-dir", f"{var}/chunkserver-5", "--listen", "tcp:8005:interface=127.0.0.1",
            "--group-id", "2", "--master", "http://127.0.0.1:8099", "--cluster-secret", "S",
            "--volume-size", str(1 << 28), "--cache-size", str(1 << 25),
            "--heartbeat-interval", "0.5"))
        self.assertEqual([r.health_url for r in servers], [None] * 6)

    def test_imageserver_command_lines(self):
        """Every imageserver shares the one metadata file and waits for a
        writable group; extra imageservers take the ports after the
        registry's."""
        var = os.path.abspath("v")
        images = [r for r in plan(var, registry="127.0.0.1:6000", imageservers=2,
                                  chunk_size=4 << 20, read_window=1 << 16, cut_through=0).roles()
                  if r.plugin == "speedy-imageserver"]
        self.assertEqual(images[1].args, (
            "--listen", "tcp:6001:interface=127.0.0.1", "--master", "http://127.0.0.1:8099",
            "--cluster-secret", "S", "--db", f"sqlite:{var}/metadata.sqlite", "--chunk-size", str(4 << 20),
            "--read-window", str(1 << 16), "--cut-through", "0"))
        self.assertEqual([(r.health_url, r.needs_writable_group) for r in images],
                         [("http://127.0.0.1:6000/v1/health", True), ("http://127.0.0.1:6001/v1/health", True)])

    def test_imageserver_workers(self):
        """
        With workers, every registry port is served by that many
        imageservers, all listening on it with C{reuseport:} and started one
        after another; the registries stay one per port.
        """
        var = os.path.abspath("v")
        images = [r for r in plan(var, registry="127.0.0.1:6000", imageservers=2,
                                  imageserver_workers=3).roles() if r.plugin == "speedy-imageserver"]
        self.assertEqual(
            [(r.name, r.port, option_after(r.args, "--listen"), r.shares_port) for r in images],
            [(f"imageserver-{i}.{w}", 5999 + i, f"reuseport:{5999 + i}:interface=127.0.0.1", True)
             for i in (1, 2) for w in (1, 2, 3)])
        self.assertEqual([r.health_url for r in images[:3]], ["http://127.0.0.1:6000/v1/health"] * 3)
        self.assertEqual(plan(var, registry="127.0.0.1:6000", imageservers=2,
                              imageserver_workers=3).registries, ("127.0.0.1:6000", "127.0.0.1:6001"))
        self.assertFalse(any(r.shares_port for r in plan(var).roles()))

    def test_role_command(self):
        """A role runs as twistd in the foreground, logging to its file."""
        role = Role("chunkmaster", "speedy-chunkmaster", ("--listen", "tcp:1"), "127.0.0.1", 1)
        command = role.command("/venv/bin/python", "/var/logs/chunkmaster.log")
        self.assertEqual(command[:2], ["/venv/bin/python", "-c"])
        self.assertIn("twistd import run", command[2])
        self.assertEqual(command[3:], ["-n", "--pidfile=", "--logfile", "/var/logs/chunkmaster.log",
                                       "speedy-chunkmaster", "--listen", "tcp:1"])

    def test_exit_text(self):
        self.assertEqual([localcluster.exit_text(c) for c in (0, 3, -signal.SIGTERM, -signal.SIGKILL)],
                         ["exit code 0", "exit code 3", "SIGTERM", "SIGKILL"])

    def test_port_zero_picks_distinct_free_ports(self):
        roles = plan("v", registry="127.0.0.1:0", master_port=0, chunkserver_port=0, imageservers=2).roles()
        ports = [r.port for r in roles]
        self.assertEqual(len(set(ports)), 6)
        self.assertNotIn(0, ports)

    def test_impossible_layouts(self):
        for kwargs in ({"chunkservers": 4}, {"chunkservers": 2}, {"imageservers": 0},
                       {"imageserver_workers": 0},
                       {"registry": "5000"}, {"registry": "localhost:http"}):
            self.assertRaises(ClusterError, plan, "v", **kwargs)

    def test_command_line_options(self):
        options = Options()
        options.parseOptions(["up", "--var", "x", "--chunk-size", "4MiB", "--imageservers", "2"])
        self.assertEqual((options.subCommand, options.subOptions["var"]), ("up", "x"))
        self.assertEqual(options.subOptions["chunk-size"], 4 << 20)
        self.assertEqual(options.subOptions["registry"], "127.0.0.1:5000")
        self.assertEqual(options.subOptions["imageserver-workers"], localcluster.DEFAULT_IMAGESERVER_WORKERS)
        options = Options()
        options.parseOptions(["up", "--imageserver-workers", "3"])
        self.assertEqual(options.subOptions["imageserver-workers"], 3)
        options = Options()
        options.parseOptions(["status"])
        self.assertEqual(options.subOptions["var"], "var")


# --- health probes ------------------------------------------------------------------


class JSONResource(Resource):
    isLeaf = True

    def __init__(self, body, code=200):
        super().__init__()
        self.body = body
        self.code = code

    def render_GET(self, request):
        request.setResponseCode(self.code)
        return self.body


class HealthProbeTests(SynchronousTestCase):
    """What counts as healthy, and that a bad answer is only "unhealthy"."""

    master = Role("chunkmaster", "speedy-chunkmaster", (), "127.0.0.1", 8099,
                  health_url="http://127.0.0.1:8099/v1/health")
    image = Role("imageserver-1", "speedy-imageserver", (), "127.0.0.1", 5000,
                 health_url="http://127.0.0.1:5000/v1/health", needs_writable_group=True)

    def check(self, role, body, code=200):
        clock = MemoryReactorClock()
        stub = StubTreq(JSONResource(body, code))
        d = HealthProbe(clock, stub).check(role)
        stub.flush()
        self.assertEqual(clock.getDelayedCalls(), [])
        return self.successResultOf(d)

    def test_master_ok(self):
        self.assertEqual(self.check(self.master, b'{"ok": true}'), Health(True))

    def test_imageserver_needs_a_writable_group(self):
        health = self.check(self.image, b'{"ok": true, "writable_groups": 0}')
        self.assertFalse(health.healthy)
        self.assertIn("writable", health.detail)
        self.assertTrue(self.check(self.image, b'{"ok": true, "writable_groups": 2}').healthy)

    def test_bad_answers_are_unhealthy(self):
        for body, code in ((b'{"ok": true}', 503), (b"\x00\xffgarbage", 200), (b"[1, 2]", 200),
                           (b'{"ok": "yes"}', 200), (b'{"ok": true, "writable_groups": "1"}', 200)):
            self.assertFalse(self.check(self.image, body, code).healthy, (body, code))

    def test_http_timeout(self):
        """A health URL that never answers is unhealthy once the timeout
        passes, and leaves no timer behind."""
        clock = MemoryReactorClock()

        class Silent:
            """An HTTP client whose requests never get an answer: treq
            cancels them at their timeout."""

            def get(self, url, reactor, timeout):
                pending = Deferred()
                reactor.callLater(timeout, pending.cancel)
                return pending

        d = HealthProbe(clock, Silent(), timeout=2).check(self.master)
        self.assertNoResult(d)
        clock.advance(2)
        health = self.successResultOf(d)
        self.assertFalse(health.healthy)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_worker_must_listen_itself(self):
        """
        A worker sharing its port is unhealthy while its own process does
        not listen on it, whatever the port answers (another worker may be
        answering), and the port is not even asked; once it listens, the
        port's health answer counts.
        """
        worker = Role("imageserver-1.2", "speedy-imageserver", (), "127.0.0.1", free_port(),
                      health_url="http://127.0.0.1:5000/v1/health", needs_writable_group=True,
                      shares_port=True)
        stub = StubTreq(JSONResource(b'{"ok": true, "writable_groups": 1}'))
        health = self.successResultOf(HealthProbe(MemoryReactorClock(), stub).check(worker, os.getpid()))
        self.assertFalse(health.healthy)
        self.assertIn(f"does not listen on port {worker.port}", health.detail)
        with socket.socket() as listening:
            listening.bind(("127.0.0.1", worker.port))
            listening.listen()
            d = HealthProbe(MemoryReactorClock(), stub).check(worker, os.getpid())
            stub.flush()
            self.assertEqual(self.successResultOf(d), Health(True))

    def test_listening_ports(self):
        """C{listening_ports} finds a process's listening TCP sockets, and
        nothing for a process that is gone."""
        with socket.socket() as listening, socket.socket() as bound:
            listening.bind(("127.0.0.1", 0))
            listening.listen()
            bound.bind(("127.0.0.1", 0))
            ports = localcluster.listening_ports(os.getpid())
            self.assertIn(listening.getsockname()[1], ports)
            self.assertNotIn(bound.getsockname()[1], ports)
        child = subprocess.Popen([sys.executable, "-c", ""])
        child.wait()
        self.assertEqual(localcluster.listening_ports(child.pid), set())

    def test_port_open(self):
        """A role without a health URL is healthy once its port accepts a
        connection, which the probe then closes."""
        reactor = MemoryReactorClock()
        role = Role("chunkserver-1", "speedy-chunkserver", (), "127.0.0.1", 8001)
        d = HealthProbe(reactor, None).check(role)
        host, port, factory, _, _ = reactor.tcpClients[0]
        self.assertEqual((host, port), ("127.0.0.1", 8001))
        transport = StringTransport()
        factory.buildProtocol(None).makeConnection(transport)
        self.assertEqual(self.successResultOf(d), Health(True))
        self.assertTrue(transport.disconnecting)

    def test_port_refused(self):
        reactor = MemoryReactorClock()
        role = Role("chunkserver-1", "speedy-chunkserver", (), "127.0.0.1", 8001)
        d = HealthProbe(reactor, None).check(role)
        factory = reactor.tcpClients[0][2]
        factory.clientConnectionFailed(None, Failure(ConnectionRefusedError()))
        health = self.successResultOf(d)
        self.assertFalse(health.healthy)
        self.assertIn("8001", health.detail)


# --- the supervisor with fake processes ------------------------------------------


class FakeProcess:
    """A spawned process that ends when told, or on a signal as its reactor
    says."""

    def __init__(self, reactor, protocol, pid, name):
        self.reactor = reactor
        self.protocol = protocol
        self.pid = pid
        self.name = name
        self.ended = False

    def signalProcess(self, name):
        if self.ended:
            raise ProcessExitedAlready()
        self.reactor.signals.append((self.name, name))
        if name == "KILL":
            self.end(signal=9)
        elif self.name not in self.reactor.ignore_term:
            self.reactor.callLater(self.reactor.term_delay, self.end)

    def end(self, code=0, signal=None):
        if self.ended:
            return
        self.ended = True
        if code == 0 and signal is None:
            self.protocol.processEnded(Failure(ProcessDone(0)))
        else:
            self.protocol.processEnded(Failure(ProcessTerminated(code if signal is None else None, signal)))


@implementer(IReactorProcess)
class FakeProcessReactor(MemoryReactorClock):
    """A memory reactor and clock that also spawns L{FakeProcess}es."""

    def __init__(self):
        super().__init__()
        self.spawned = {}
        self.signals = []
        self.ignore_term = set()
        self.term_delay = 1.0

    def spawnProcess(self, processProtocol, executable, args=(), env={}, path=None,
                     uid=None, gid=None, usePTY=False, childFDs=None):
        log = args[list(args).index("--logfile") + 1]
        name = os.path.basename(log)[: -len(".log")]
        process = FakeProcess(self, processProtocol, 1000 + len(self.spawned), name)
        self.spawned[name] = process
        processProtocol.makeConnection(process)
        return process


class ScriptedProbe:
    """Healthy are the roles named in C{healthy}; every check is counted."""

    def __init__(self):
        self.healthy = set()
        self.checks = []
        self.pids = []

    def check(self, role, pid=None):
        self.checks.append(role.name)
        self.pids.append(pid)
        if role.name in self.healthy:
            return succeed(Health(True))
        return succeed(Health(False, f"{role.name} says not yet"))


ROLES = ["chunkmaster", "chunkserver-1", "chunkserver-2", "chunkserver-3", "imageserver-1"]


class LocalClusterTests(SynchronousTestCase):
    """Start order, health waiting, failures while starting, stop order."""

    def setUp(self):
        self.reactor = FakeProcessReactor()
        self.probe = ScriptedProbe()
        self.lines = []
        self.plan = plan(self.mktemp())
        self.cluster = LocalCluster(self.reactor, self.plan, self.probe, self.lines.append,
                                    python="/venv/bin/python", start_timeout=30, poll_interval=0.5,
                                    stop_grace=5)

    def test_fake_reactor_is_a_process_reactor(self):
        verifyObject(IReactorProcess, self.reactor)

    def test_starts_each_role_once_the_previous_is_healthy(self):
        d = self.cluster.up()
        self.assertEqual(list(self.reactor.spawned), ["chunkmaster"])
        self.reactor.advance(0.5)
        self.reactor.advance(0.5)
        self.assertEqual(list(self.reactor.spawned), ["chunkmaster"])
        self.assertEqual(self.probe.checks, ["chunkmaster"] * 3)
        for i, name in enumerate(ROLES):
            self.assertEqual(list(self.reactor.spawned), ROLES[: i + 1])
            self.assertNoResult(d)
            self.probe.healthy.add(name)
            self.reactor.advance(0.5)
        self.assertIsNone(self.successResultOf(d))
        self.assertIn("registry at http://127.0.0.1:5000/v2/", self.lines)

    def test_state_file_records_every_role(self):
        self.probe.healthy.update(ROLES)
        self.successResultOf(self.cluster.up())
        state = localcluster.read_state(self.plan.var)
        self.assertTrue(state["ready"])
        self.assertEqual(state["supervisor_pid"], os.getpid())
        self.assertEqual(state["registries"], ["127.0.0.1:5000"])
        self.assertEqual([(r["name"], r["pid"], r["address"]) for r in state["roles"]],
                         [(name, self.reactor.spawned[name].pid, role.address)
                          for name, role in zip(ROLES, self.plan.roles())])
        self.assertEqual(localcluster.role_from_state(state["roles"][4]).health_url,
                         "http://127.0.0.1:5000/v1/health")

    def test_workers_are_checked_each_by_its_own_pid(self):
        """
        Workers start one at a time, each checked with its own process id
        (so the probe can see it listen), and the state file says they
        share their port, for C{status}.
        """
        cluster = LocalCluster(self.reactor, plan(self.mktemp(), imageserver_workers=2), self.probe,
                               self.lines.append, python="/venv/bin/python", poll_interval=0.5)
        workers = ["imageserver-1.1", "imageserver-1.2"]
        self.probe.healthy.update(ROLES[:-1] + workers[:1])
        d = cluster.up()
        self.reactor.advance(0.5)
        self.assertNoResult(d)
        self.assertEqual(self.probe.checks[-2:], ["imageserver-1.2"] * 2)
        self.assertEqual(self.probe.pids[-1], self.reactor.spawned["imageserver-1.2"].pid)
        self.probe.healthy.add(workers[1])
        self.reactor.advance(0.5)
        self.successResultOf(d)
        state = localcluster.read_state(cluster.plan.var)
        self.assertEqual([(r["name"], r["address"], r["shares_port"]) for r in state["roles"][-2:]],
                         [(w, "127.0.0.1:5000", True) for w in workers])
        self.assertTrue(localcluster.role_from_state(state["roles"][-1]).shares_port)
        self.assertEqual(self.lines[-1], "registry at http://127.0.0.1:5000/v2/")

    def test_state_file_says_not_ready_while_starting(self):
        d = self.cluster.up()
        state = localcluster.read_state(self.plan.var)
        self.assertFalse(state["ready"])
        self.assertEqual([r["name"] for r in state["roles"]], ["chunkmaster"])
        self.probe.healthy.update(ROLES)
        self.reactor.advance(0.5)
        self.successResultOf(d)

    def test_role_exiting_while_starting(self):
        """
        A role that dies while starting fails C{up} with its log's tail, and
        the roles already started are stopped, the last started first.
        """
        self.probe.healthy.update(ROLES[:2])
        d = self.cluster.up()
        self.assertEqual(list(self.reactor.spawned), ROLES[:3])
        with open(os.path.join(self.plan.var, "logs", "chunkserver-2.log"), "w") as f:
            f.write("Traceback: bad volume superblock\n")
        self.reactor.spawned["chunkserver-2"].end(code=1)
        self.reactor.advance(0.5)
        self.assertNoResult(d)  # stopping the others
        self.reactor.advance(1)
        self.reactor.advance(1)
        failure = self.failureResultOf(d, RoleFailed)
        self.assertIn("chunkserver-2 ended (exit code 1) while starting", str(failure.value))
        self.assertIn("bad volume superblock", str(failure.value))
        self.assertEqual(self.reactor.signals, [("chunkserver-1", "TERM"), ("chunkmaster", "TERM")])
        self.assertIsNone(localcluster.read_state(self.plan.var))
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_role_never_healthy(self):
        """A role still unhealthy after the start timeout fails C{up} with
        the last thing its probe said."""
        self.probe.healthy.add("chunkmaster")
        d = self.cluster.up()
        self.reactor.pump([0.5] * 60 + [1, 1])
        failure = self.failureResultOf(d, RoleFailed)
        self.assertIn("chunkserver-1 was not healthy after 30s (chunkserver-1 says not yet)", str(failure.value))
        self.assertEqual(self.reactor.signals, [("chunkserver-1", "TERM"), ("chunkmaster", "TERM")])

    def test_role_dying_once_up_is_reported(self):
        self.probe.healthy.update(ROLES)
        self.successResultOf(self.cluster.up())
        self.reactor.spawned["chunkserver-2"].end(code=70)
        self.assertEqual(self.lines[-1], "chunkserver-2 ended (exit code 70); its log is "
                         + os.path.join(self.plan.var, "logs", "chunkserver-2.log"))
        d = self.cluster.down()
        self.reactor.pump([1] * 4)
        self.successResultOf(d)
        self.assertNotIn(("chunkserver-2", "TERM"), self.reactor.signals)
        self.assertFalse([line for line in self.lines if "; its log is" in line and "70" not in line])

    def test_down_stops_in_reverse_order_one_at_a_time(self):
        self.probe.healthy.update(ROLES)
        self.successResultOf(self.cluster.up())
        d = self.cluster.down()
        for i, name in enumerate(reversed(ROLES)):
            self.assertEqual([n for n, _ in self.reactor.signals], list(reversed(ROLES))[: i + 1])
            self.assertNoResult(d)
            self.reactor.advance(1)
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual({s for _, s in self.reactor.signals}, {"TERM"})
        self.assertIsNone(localcluster.read_state(self.plan.var))

    def test_down_kills_a_role_that_ignores_sigterm(self):
        self.probe.healthy.update(ROLES)
        self.successResultOf(self.cluster.up())
        self.reactor.ignore_term.add("chunkserver-2")
        d = self.cluster.down()
        self.reactor.pump([1, 1, 5, 1, 1])
        self.assertIsNone(self.successResultOf(d))
        self.assertIn(("chunkserver-2", "KILL"), self.reactor.signals)
        self.assertEqual(self.reactor.signals[-1], ("chunkmaster", "TERM"))
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_down_twice_while_stopping(self):
        """A second stop (Ctrl-C twice) while the first still runs fails
        nothing: both finish once every role has exited."""
        self.probe.healthy.update(ROLES)
        self.successResultOf(self.cluster.up())
        first, second = self.cluster.down(), self.cluster.down()
        self.reactor.pump([1] * 6)
        self.successResultOf(first)
        self.successResultOf(second)
        self.assertTrue(all(p.ended for p in self.reactor.spawned.values()))


# --- the state file and recorded processes -------------------------------------------


class RecordedProcessTests(SynchronousTestCase):
    """What C{status} and C{down} read: the state file and live pids."""

    def setUp(self):
        self.var = self.mktemp()
        os.makedirs(self.var)

    def spawn_sleeper(self, marker):
        """@return: a child process whose command line carries C{marker}."""
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", marker])
        self.addCleanup(lambda: (child.poll() is None and child.kill(), child.wait()))
        # Right after exec, /proc/PID/cmdline may still read empty.
        while not self.cmdline(child.pid):
            time.sleep(0.001)
        return child

    def cmdline(self, pid):
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()

    def state_letter(self, pid):
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]

    def write_state(self, state):
        with open(localcluster.state_path(self.var), "w") as f:
            json.dump(state, f)

    def test_no_state(self):
        self.assertIsNone(localcluster.read_state(self.var))

    def test_garbage_state_is_a_clean_error(self):
        for garbage in ("\x00\x01 not json", "[]", '{"roles": [{"name": "x"}], "supervisor_pid": 1}',
                        '{"roles": [], "supervisor_pid": "me"}'):
            with open(localcluster.state_path(self.var), "w") as f:
                f.write(garbage)
            e = self.assertRaises(ClusterError, localcluster.read_state, self.var)
            self.assertIn("is not a cluster state file", str(e))

    def test_process_matches(self):
        """A live process matches only its own marker; a dead one (even a
        zombie not yet reaped) matches nothing."""
        child = self.spawn_sleeper("speedy-chunkserver")
        self.assertTrue(localcluster.process_matches(child.pid, "speedy-chunkserver"))
        self.assertFalse(localcluster.process_matches(child.pid, "speedy-imageserver"))
        child.kill()
        while self.state_letter(child.pid) != "Z":
            time.sleep(0.01)
        self.assertFalse(localcluster.process_matches(child.pid, "speedy-chunkserver"))
        child.wait()
        self.assertFalse(localcluster.process_matches(child.pid, "speedy-chunkserver"))

    def state_with(self, *children):
        return {
            "supervisor_pid": children[0].pid, "ready": True, "registries": ["127.0.0.1:5000"],
            "roles": [{"name": f"role-{i}", "plugin": "speedy-chunkserver", "pid": c.pid,
                       "address": f"127.0.0.1:{8001 + i}", "health_url": None,
                       "needs_writable_group": False, "log": "x.log"}
                      for i, c in enumerate(children[1:])],
        }

    def test_status(self):
        """C{status} shows each role running and healthy, or what is wrong,
        and answers 0 only when everything is."""
        supervisor = self.spawn_sleeper("speedy-cluster up")
        alive, dead = self.spawn_sleeper("speedy-chunkserver"), self.spawn_sleeper("speedy-chunkserver")
        dead.kill()
        dead.wait()
        self.write_state(self.state_with(supervisor, alive))
        probe, lines = ScriptedProbe(), []
        probe.healthy.add("role-0")
        code = self.successResultOf(Deferred.fromCoroutine(
            localcluster.report_status(self.var, probe, lines.append)))
        self.assertEqual(code, 0)
        self.assertIn("healthy", lines[1])
        self.assertIn("registry at http://127.0.0.1:5000/v2/", lines)

        self.write_state(self.state_with(supervisor, alive, dead))
        probe.healthy.clear()
        lines = []
        code = self.successResultOf(Deferred.fromCoroutine(
            localcluster.report_status(self.var, probe, lines.append)))
        self.assertEqual(code, 1)
        self.assertIn("UNHEALTHY: role-0 says not yet", lines[1])
        self.assertIn("NOT RUNNING", lines[2])

    def test_status_without_cluster(self):
        lines = []
        code = self.successResultOf(Deferred.fromCoroutine(
            localcluster.report_status(self.var, ScriptedProbe(), lines.append)))
        self.assertEqual(code, 3)

    def test_down_after_the_supervisor_was_killed(self):
        """
        With its supervisor gone (SIGKILLed), C{down} stops the roles it
        left behind, the last started first, and removes the state file;
        pids that now belong to other programs are left alone.
        """
        gone = self.spawn_sleeper("speedy-cluster up")
        gone.kill()
        gone.wait()
        first, second = self.spawn_sleeper("speedy-chunkserver"), self.spawn_sleeper("speedy-chunkserver")
        stranger = self.spawn_sleeper("not-ours")
        state = self.state_with(gone, first, second, stranger)
        self.write_state(state)
        clock = MemoryReactorClock()
        lines = []
        d = Deferred.fromCoroutine(localcluster.stop_recorded(clock, self.var, lines.append, grace=5))
        for _ in range(500):
            if d.called:
                break
            clock.advance(0.1)
            time.sleep(0.01)
        self.assertEqual(self.successResultOf(d), 2)
        self.assertEqual(lines, ["role-1 stopped", "role-0 stopped", "cluster stopped"])
        self.assertEqual((first.wait(), second.wait()), (-signal.SIGTERM, -signal.SIGTERM))
        self.assertIsNone(stranger.poll())
        self.assertIsNone(localcluster.read_state(self.var))


# --- one real run --------------------------------------------------------------------


WORKER_ROLES = ROLES[:-1] + ["imageserver-1.1", "imageserver-1.2"]


def registry_request(address, method, path, body=b"", headers=()):
    """@return: (status, headers, body) of one request on a connection of
    its own (so the kernel picks a worker for each)."""
    host, port = address.rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        connection.request(method, path, body, dict(headers))
        response = connection.getresponse()
        return response.status, response.headers, response.read()
    finally:
        connection.close()


class RealClusterTests(SynchronousTestCase):
    """C{tools/speedy-cluster up}, C{status} and C{down} with the real
    daemons, on free ports, two imageserver workers sharing the registry
    port."""

    def run_tool(self, *args):
        return subprocess.run([sys.executable, TOOL, *args], capture_output=True, timeout=120,
                              stdin=subprocess.DEVNULL)

    def stop_anyway(self, up, var):
        """After a failure: stop whatever the cluster left running."""
        if up.poll() is None:
            up.send_signal(signal.SIGTERM)
            up.wait(60)
        self.run_tool("down", "--var", var)
        up.stdout.close()

    def test_up_status_down(self):
        var = os.path.abspath(self.mktemp())
        registry = f"127.0.0.1:{free_port()}"
        up = subprocess.Popen(
            [sys.executable, TOOL, "up", "--var", var, "--registry", registry, "--master-port", "0",
             "--chunkserver-port", "0", "--volume-size", "64MiB", "--cache-size", "16MiB",
             "--heartbeat-interval", "0.5",
             "--imageserver-workers", "2"],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.addCleanup(self.stop_anyway, up, var)
        deadline = time.monotonic() + 90
        while True:
            state = localcluster.read_state(var)
            if state is not None and state["ready"]:
                break
            if up.poll() is not None or time.monotonic() > deadline:
                up.kill()
                self.fail("up did not get the cluster ready:\n" + up.communicate()[0].decode("utf-8", "replace"))
            time.sleep(0.1)
        self.assertEqual(state["registries"], [registry])

        status = self.run_tool("status", "--var", var)
        self.assertEqual(status.returncode, 0, status.stdout + status.stderr)
        report = status.stdout.decode()
        for name in WORKER_ROLES:
            self.assertRegex(report, f"{name} .* healthy")
        workers = state["roles"][-2:]
        self.assertEqual({w["address"] for w in workers}, {registry})
        for worker in workers:
            self.assertIn(int(registry.rsplit(":", 1)[1]), localcluster.listening_ports(worker["pid"]))

        self.upload_across_workers(registry, [w["log"] for w in workers])

        down = self.run_tool("down", "--var", var)
        self.assertEqual(down.returncode, 0, down.stdout + down.stderr)
        self.assertEqual(up.wait(30), 0)
        output = up.stdout.read().decode()
        self.assertIn(f"registry at http://{registry}/v2/", output)
        stopped = [line.split()[0] for line in output.splitlines() if line.endswith(" stopped (SIGTERM)")]
        self.assertEqual(stopped, list(reversed(WORKER_ROLES)))
        for role in state["roles"]:
            self.assertFalse(localcluster.process_matches(role["pid"], role["plugin"]), role["name"])
        self.assertIsNone(localcluster.read_state(var))

    def upload_across_workers(self, registry, logs):
        """
        A chunked upload whose requests each open a connection of their own
        lands on both workers (24 pieces all on one of two would happen once
        in 2**23 runs) and still comes back whole.
        """
        pieces = [os.urandom(10_000 + i) for i in range(24)]
        data = b"".join(pieces)
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        status, headers, body = registry_request(registry, "POST", "/v2/e2e/workers/blobs/uploads/")
        self.assertEqual(status, 202, body)
        location = headers["Location"]
        for piece in pieces:
            status, headers, body = registry_request(
                registry, "PATCH", location, piece, {"Content-Type": "application/octet-stream"})
            self.assertEqual(status, 202, body)
            location = headers["Location"]
        separator = "&" if "?" in location else "?"
        status, _, body = registry_request(registry, "PUT", f"{location}{separator}digest={digest}")
        self.assertEqual(status, 201, body)
        patches_seen = []
        for log in logs:
            with open(log, errors="replace") as f:
                patches_seen.append(f.read().count('"PATCH /v2/e2e/workers/blobs/uploads/'))
        self.assertEqual(sum(patches_seen), len(pieces))
        self.assertNotIn(0, patches_seen)
        status, _, body = registry_request(registry, "GET", f"/v2/e2e/workers/blobs/{digest}")
        self.assertEqual((status, body), (200, data))
