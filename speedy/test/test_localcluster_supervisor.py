"""
Tests for L{speedy.localcluster.supervisor}: the order roles start and stop
in, waiting for each to be healthy, failures while starting, and the state
file it keeps (with a fake process reactor and a scripted probe).
"""

import os
import signal

from twisted.internet.defer import succeed
from twisted.internet.error import ProcessDone, ProcessExitedAlready, ProcessTerminated
from twisted.internet.interfaces import IReactorProcess
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from speedy import localcluster
from speedy.localcluster import Health, LocalCluster, RoleFailed
from speedy.test.test_localcluster_plan import plan


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

    def test_exit_text(self):
        """How a role ended reads as an exit code, or the signal's name."""
        self.assertEqual([localcluster.exit_text(c) for c in (0, 3, -signal.SIGTERM, -signal.SIGKILL)],
                         ["exit code 0", "exit code 3", "SIGTERM", "SIGKILL"])


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
                         "http://127.0.0.1:5000/readyz")

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

