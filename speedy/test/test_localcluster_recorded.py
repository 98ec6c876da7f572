"""
Tests for L{speedy.localcluster.state} and L{speedy.localcluster.recorded}:
the state file, and what C{status} and C{down} do from another process with
the pids it records.
"""

import json
import os
import signal
import subprocess
import sys
import time

from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from speedy import localcluster
from speedy.localcluster import ClusterError
from speedy.test.test_localcluster_supervisor import ScriptedProbe


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

