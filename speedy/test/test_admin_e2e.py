"""
End-to-end test of C{speedy-admin} against a real local cluster (the one
L{speedy.test.test_registry_clients} starts with C{tools/speedy-cluster
up}), run as the operator runs it: a process, reading the cluster's
address and admin token from its state file.
"""

import json
import os
import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase

from speedy.test import test_registry_clients


def speedy_admin(*argv, env=None):
    """@return: the finished C{python -m speedy.admin ARGV} process."""
    return subprocess.run([sys.executable, "-m", "speedy.admin"] + list(argv),
                          capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, **(env or {})))


class AdminCommandTests(SynchronousTestCase):

    def setUp(self):
        self.cluster = test_registry_clients.SpeedyRegistryClientTests.cluster.get()

    def test_status(self):
        """C{speedy-admin --var DIR status --json} lists the local cluster's
        three chunkservers, all RW, in one writable group; the table form
        names them too."""
        done = speedy_admin("--var", self.cluster.var, "--json", "status")
        self.assertEqual(done.returncode, 0, done.stderr)
        status = json.loads(done.stdout)
        self.assertEqual([(s["group_id"], s["state"]) for s in status["servers"]],
                         [(1, "RW")] * 3)
        self.assertEqual(status["writable_groups"], 1)
        table = speedy_admin("--var", self.cluster.var, "status")
        self.assertEqual(table.returncode, 0, table.stderr)
        for server in status["servers"]:
            self.assertIn(server["address"], table.stdout)

    def test_wrong_token(self):
        """A wrong token from the environment is refused: exit code 3."""
        done = speedy_admin("--var", self.cluster.var, "status",
                            env={"SPEEDY_ADMIN_TOKEN": "not-the-token"})
        self.assertEqual(done.returncode, 3)
        self.assertIn("401", done.stderr)
