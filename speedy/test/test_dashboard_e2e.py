"""
The dashboard in a real browser: a chunkmaster, three chunkservers and an
imageserver on loopback, and headless Chromium (Debian C{chromium}; .ci/run
installs it) opening C{/dashboard}.  The page's own JavaScript fetches the
data and draws it; the test reads the DOM Chromium ends with, kills a
chunkserver, and sees it turn DOWN on the page.  A screenshot is saved.
"""

import os
import re
import subprocess
import time
from urllib.error import HTTPError
from urllib.request import urlopen

from twisted.trial.unittest import SynchronousTestCase

from speedy.test.processes import Daemon, free_port
from speedy.test.util import require_tool

PATIENCE = 60.0


def read_json(url):
    import json
    try:
        with urlopen(url, timeout=10) as response:
            return json.loads(response.read())
    except HTTPError as e:
        return {"error": e.code}


def server_states(dom):
    """@return: C{{server_id: state}} of the server rows of the page's DOM."""
    rows = re.findall(r'<tr data-server="([^"]+)" class="server">(.*?)</tr>', dom, re.S)
    return {server: re.search(r'class="badge state state-(\w+)"', row).group(1)
            for server, row in rows}


class DashboardInChromiumTests(SynchronousTestCase):

    def setUp(self):
        self.chromium = require_tool("chromium")
        self.workdir = os.path.abspath(self.mktemp())
        os.makedirs(self.workdir)
        port = free_port()
        self.master_url = f"http://127.0.0.1:{port}"
        db = "sqlite:" + os.path.join(self.workdir, "meta.db")
        self.start(Daemon(
            "speedy-chunkmaster",
            ["--listen", f"tcp:{port}:interface=127.0.0.1", "--db", db,
             "--heartbeat-timeout", "2"],
            port=port, workdir=self.workdir, name="chunkmaster"))
        self.chunkservers = {}
        for n in (1, 2, 3):
            cs_port = free_port()
            self.chunkservers[f"cs{n}"] = self.start(Daemon(
                "speedy-chunkserver",
                ["--data-dir", os.path.join(self.workdir, f"cs{n}"),
                 "--listen", f"tcp:{cs_port}:interface=127.0.0.1", "--group-id", "1",
                 "--server-id", f"cs{n}", "--master", self.master_url,
                 "--heartbeat-interval", "0.5", "--volume-size", "16MiB",
                 "--cache-size", "0", "--reserve", "0"],
                port=cs_port, workdir=self.workdir, name=f"cs{n}"))
        image_port = free_port()
        self.start(Daemon(
            "speedy-imageserver",
            ["--listen", f"tcp:{image_port}:interface=127.0.0.1", "--master", self.master_url,
             "--db", db],
            port=image_port, workdir=self.workdir, name="imageserver"))
        self.wait_for("a writable group and the imageserver polling", lambda: (
            read_json(self.master_url + "/dashboard/data").get("totals", {})
            .get("groups_writable") == 1
            and read_json(self.master_url + "/dashboard/data")["imageservers"]))

    def start(self, daemon):
        self.addCleanup(daemon.stop)
        return daemon.start()

    def wait_for(self, what, predicate, patience=PATIENCE):
        deadline = time.monotonic() + patience
        while not predicate():
            if time.monotonic() > deadline:
                self.fail(f"waited {patience:.0f}s in vain for {what}")
            time.sleep(0.2)

    def browse(self, *flags):
        """@return: what headless Chromium prints after letting the page
        run (its fetches and timers) for a few seconds of virtual time."""
        done = subprocess.run(
            [self.chromium, "--headless", "--no-sandbox", "--disable-gpu",
             "--disable-dev-shm-usage", "--no-first-run",
             f"--user-data-dir={os.path.join(self.workdir, 'chromium-profile')}",
             "--virtual-time-budget=4000", *flags, self.master_url + "/dashboard"],
            capture_output=True, text=True, timeout=120)
        self.assertEqual(done.returncode, 0, done.stderr[-2000:])
        return done.stdout

    def test_page_shows_the_cluster_and_a_server_going_down(self):
        dom = self.browse("--dump-dom")
        self.assertIn('data-loaded="yes"', dom)
        self.assertEqual(server_states(dom), {"cs1": "RW", "cs2": "RW", "cs3": "RW"})
        self.assertRegex(dom, r'id="card-groups".*?1 / 1')
        self.assertIn('class="imageserver"', dom)
        # Garbage collection and transfers (idle), and the imageserver's
        # failovers as it reported them with its poll.
        self.assertRegex(dom, r'id="gc".*data-row="state"><td>state</td><td>(idle|running)<')
        self.assertRegex(dom, r'id="gc".*data-row="rounds"')
        self.assertRegex(dom, r'id="transfers".*data-row="active"><td>active</td><td>0<')
        self.assertRegex(dom, r'class="imageserver">.*?<td class="failovers">0<')
        self.assertIn('data-counter="imageserver_read_failovers"', dom)
        self.assertNotIn('class="group degraded', dom)

        screenshot = os.path.join(self.workdir, "dashboard.png")
        self.browse(f"--screenshot={screenshot}", "--window-size=1280,1000",
                    "--hide-scrollbars")
        with open(screenshot, "rb") as f:
            self.assertEqual(f.read(8), b"\x89PNG\r\n\x1a\n")

        self.chunkservers["cs2"].kill()
        self.wait_for("cs2 DOWN", lambda: any(
            s["server_id"] == "cs2" and s["state"] == "DOWN"
            for g in read_json(self.master_url + "/dashboard/data")["groups"]
            for s in g["servers"]))
        dom = self.browse("--dump-dom")
        self.assertEqual(server_states(dom), {"cs1": "RW", "cs2": "DOWN", "cs3": "RW"})
        self.assertIn('class="group degraded', dom)
        self.assertRegex(dom, r'id="card-down".*?>1<')
