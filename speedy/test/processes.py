"""
Real daemons as processes on loopback, for end-to-end tests.

    cs = Daemon("speedy-chunkserver", ["--data-dir", d, "--listen", f"tcp:{port}:interface=127.0.0.1"],
                port=port, workdir=tmp)
    cs.start()            # returns once the port accepts connections
    ...
    cs.kill()             # SIGKILL, like a crash
    cs.stop()             # SIGTERM, then SIGKILL after a grace period

Tests register C{self.addCleanup(daemon.stop)}.  On a start failure the
daemon's log is in the exception message.  Every daemon gets the cluster
secret L{TEST_SECRET} in its environment (secrets are never given on
command lines), unless C{env} names another.
"""

import os
import signal
import socket
import subprocess
import sys
import time

from speedy.localcluster.plan import pick_free_port
from speedy.test.util import TEST_SECRET

TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


def free_port():
    """A TCP port on 127.0.0.1 that nothing is bound to right now, outside
    the kernel's ephemeral range (L{pick_free_port})."""
    return pick_free_port("127.0.0.1")


def wait_for_port(port, host="127.0.0.1", timeout=30.0, process=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            return False
        try:
            socket.create_connection((host, port), timeout=0.5).close()
            return True
        except OSError:
            time.sleep(0.05)
    return False


class Daemon:
    """One twistd plugin run in the foreground as a child process."""

    def __init__(self, plugin, args, port, workdir, name=None, env=None):
        self.plugin = plugin
        self.args = list(args)
        self.port = port
        self.workdir = workdir
        self.name = name or f"{plugin}-{port}"
        self.env = dict(os.environ, SPEEDY_CLUSTER_SECRET=TEST_SECRET, **(env or {}))
        self.process = None
        self.log_path = os.path.join(workdir, self.name + ".log")

    def command(self):
        return TWISTD + ["-n", "--pidfile=", "--logfile", self.log_path, self.plugin] + self.args

    def start(self, timeout=30.0):
        os.makedirs(self.workdir, exist_ok=True)
        self.process = subprocess.Popen(
            self.command(), cwd=self.workdir, env=self.env,
            stdout=subprocess.DEVNULL, stderr=open(self.log_path + ".stderr", "ab"))
        if not wait_for_port(self.port, timeout=timeout, process=self.process):
            self.stop()
            raise RuntimeError(f"{self.name} did not start listening on {self.port}:\n{self.log()}")
        return self

    def log(self):
        text = []
        for path in (self.log_path, self.log_path + ".stderr"):
            if os.path.exists(path):
                with open(path, errors="replace") as f:
                    text.append(f.read()[-8000:])
        return "\n".join(text)

    @property
    def running(self):
        return self.process is not None and self.process.poll() is None

    def kill(self):
        """Crash it: SIGKILL, no clean shutdown."""
        if self.running:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self, grace=10.0):
        """Stop it cleanly (SIGTERM), killing it if it takes too long."""
        if self.running:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(grace)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.process.returncode if self.process else None
