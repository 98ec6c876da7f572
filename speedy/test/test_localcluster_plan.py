"""
Tests for L{speedy.localcluster.plan}: the roles a local cluster runs, in
which order, and the command line of each (the daemons' command-line
contract).
"""

import os
import socket

from twisted.trial.unittest import SynchronousTestCase

from speedy.localcluster import ClusterError, ClusterPlan, Role


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
            "--cluster-secret-file", f"{var}/secrets/cluster-secret",
            "--admin-token-file", f"{var}/secrets/admin-token", "--group-size", "3"))
        self.assertEqual(master.health_url, "http://127.0.0.1:8099/readyz")
        self.assertFalse(master.needs_writable_group)

    def test_chunkserver_command_lines(self):
        """Chunkservers fill replica groups of three in order, each with its
        own data dir, and know the master and the secret."""
        var = os.path.abspath("v")
        servers = [r for r in plan(var, chunkservers=6, volume_size=1 << 28, cache_size=1 << 25,
                                   heartbeat_interval=0.5, scrub_rate=1 << 23, scrub_period="1s").roles()
                   if r.plugin == "speedy-chunkserver"]
        self.assertEqual([option_after(r.args, "--group-id") for r in servers], ["1", "1", "1", "2", "2", "2"])
        self.assertEqual(servers[4].args, (
            "--data-dir", f"{var}/chunkserver-5", "--listen", "tcp:8005:interface=127.0.0.1",
            "--group-id", "2", "--master", "http://127.0.0.1:8099",
            "--cluster-secret-file", f"{var}/secrets/cluster-secret",
            "--volume-size", str(1 << 28), "--cache-size", str(1 << 25),
            "--heartbeat-interval", "0.5", "--scrub-rate", str(1 << 23), "--scrub-period", "1s"))
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
            "--cluster-secret-file", f"{var}/secrets/cluster-secret",
            "--db", f"sqlite:{var}/metadata.sqlite", "--chunk-size", str(4 << 20),
            "--read-window", str(1 << 16), "--cut-through", "0"))
        self.assertEqual([(r.health_url, r.needs_writable_group) for r in images],
                         [("http://127.0.0.1:6000/readyz", True), ("http://127.0.0.1:6001/readyz", True)])

    def test_secrets_in_files(self):
        """The secrets are written where the roles read them, readable by
        this user only, and appear on no command line."""
        var = os.path.abspath(self.mktemp())
        cluster = ClusterPlan.build(var=var)
        cluster.write_secrets()
        for name, value in [("cluster-secret", cluster.cluster_secret),
                            ("admin-token", cluster.admin_token)]:
            path = cluster.secret_file(name)
            self.assertEqual(os.stat(path).st_mode & 0o777, 0o600)
            with open(path) as f:
                self.assertEqual(f.read().strip(), value)
        self.assertEqual(os.stat(os.path.dirname(path)).st_mode & 0o777, 0o700)
        for role in cluster.roles():
            for secret in (cluster.cluster_secret, cluster.admin_token):
                self.assertNotIn(secret, " ".join(role.args))
        self.assertGreaterEqual(len(cluster.cluster_secret), 16)

    def test_database(self):
        """With a database URL (C{--db}), the chunkmaster and every
        imageserver share it instead of the SQLite file under the var
        directory; chunkservers never see it."""
        url = "mysql://root@127.0.0.1:3306/speedy"
        roles = plan(os.path.abspath("v"), db=url, imageservers=2).roles()
        self.assertEqual(
            [(r.name, option_after(r.args, "--db") if "--db" in r.args else None) for r in roles],
            [("chunkmaster", url), ("chunkserver-1", None), ("chunkserver-2", None),
             ("chunkserver-3", None), ("imageserver-1", url), ("imageserver-2", url)])

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
        self.assertEqual([r.health_url for r in images[:3]], ["http://127.0.0.1:6000/readyz"] * 3)
        self.assertEqual(plan(var, registry="127.0.0.1:6000", imageservers=2,
                              imageserver_workers=3).registries, ("127.0.0.1:6000", "127.0.0.1:6001"))
        self.assertFalse(any(r.shares_port for r in plan(var).roles()))

    def test_metrics_listeners(self):
        """
        With a metrics port, every chunkserver and every imageserver worker
        gets a --metrics listener of its own, chunkservers first, and is
        waited for by that listener's /readyz: a worker's answers for that
        worker alone, not for whichever shares the registry port.
        """
        roles = plan(os.path.abspath("v"), imageserver_workers=2, metrics_port=9200).roles()
        self.assertEqual(
            [(r.name, r.metrics_port, option_after(r.args, "--metrics") if "--metrics" in r.args
              else None, r.health_url) for r in roles],
            [("chunkmaster", None, None, "http://127.0.0.1:8099/readyz")]
            + [(f"chunkserver-{n}", 9199 + n, f"tcp:{9199 + n}:interface=127.0.0.1",
                f"http://127.0.0.1:{9199 + n}/readyz") for n in (1, 2, 3)]
            + [(f"imageserver-1.{w}", 9202 + w, f"tcp:{9202 + w}:interface=127.0.0.1",
                f"http://127.0.0.1:{9202 + w}/readyz") for w in (1, 2)])
        free = [r.metrics_port for r in plan("v", imageserver_workers=2, metrics_port=0).roles()
                if r.metrics_port is not None]
        self.assertEqual(len(set(free)), 5)

    def test_role_command(self):
        """A role runs as twistd in the foreground, logging to its file."""
        role = Role("chunkmaster", "speedy-chunkmaster", ("--listen", "tcp:1"), "127.0.0.1", 1)
        command = role.command("/venv/bin/python", "/var/logs/chunkmaster.log")
        self.assertEqual(command[:2], ["/venv/bin/python", "-c"])
        self.assertIn("twistd import run", command[2])
        self.assertEqual(command[3:], ["-n", "--pidfile=", "--logfile", "/var/logs/chunkmaster.log",
                                       "speedy-chunkmaster", "--listen", "tcp:1"])

    def test_port_zero_picks_distinct_free_ports(self):
        roles = plan("v", registry="127.0.0.1:0", master_port=0, chunkserver_port=0, imageservers=2).roles()
        ports = [r.port for r in roles]
        self.assertEqual(len(set(ports)), 6)
        self.assertNotIn(0, ports)

    def test_free_ports_never_repeat_within_a_plan(self):
        """The kernel may hand the same free port out twice (nothing holds
        it between picks): the plan takes each port once, metrics ports
        included."""
        from speedy.localcluster import plan as plan_module
        handed = iter([41000, 41000, 41001, 41001, 41002] + list(range(41002, 41100)))
        self.patch(plan_module, "pick_free_port", lambda host="127.0.0.1": next(handed))
        cluster = plan("v", registry="127.0.0.1:0", master_port=0, chunkserver_port=0,
                       imageservers=2, imageserver_workers=2, metrics_port=0)
        ports = [cluster.master_port, *cluster.chunkserver_ports, *cluster.imageserver_ports,
                 *cluster.chunkserver_metrics_ports, *cluster.imageserver_metrics_ports]
        self.assertEqual(len(ports), 1 + 3 + 2 + 3 + 4)
        self.assertEqual(len(set(ports)), len(ports))

    def test_free_ports_are_picked_below_the_ephemeral_range(self):
        """A picked port is free and outside the range the kernel gives
        outgoing connections their local ports from, where any connection
        on the machine could take it before its role binds it."""
        from speedy.localcluster.plan import FIRST_PICKED_PORT, ephemeral_ports, pick_free_port
        low, _ = ephemeral_ports()
        for _ in range(20):
            port = pick_free_port()
            self.assertTrue(FIRST_PICKED_PORT <= port < low, port)
            with socket.socket() as s:
                s.bind(("127.0.0.1", port))

    def test_a_bound_port_is_not_picked(self):
        """A port something is bound to is skipped for the next one offered."""
        from speedy.localcluster.plan import pick_free_port
        directory = self.mktemp()
        free = pick_free_port(directory=self.mktemp())
        with socket.socket() as held:
            held.bind(("127.0.0.1", 0))
            taken = held.getsockname()[1]
            offers = iter([taken, free])
            rng = type("Rng", (), {"randrange": lambda self, a, b: next(offers)})()
            self.assertEqual(pick_free_port(rng=rng, directory=directory), free)

    def test_a_port_picked_elsewhere_is_not_picked_again(self):
        """Pickers in other processes skip a port picked a moment ago (its
        role may not have bound it yet), until it is PICKED_FOR old."""
        from speedy.localcluster.plan import PICKED_FOR, pick_free_port
        directory = self.mktemp()
        first = pick_free_port(directory=directory, clock=lambda: 1000.0)
        second = pick_free_port(directory=self.mktemp())
        offers = iter([first, second])
        rng = type("Rng", (), {"randrange": lambda self, a, b: next(offers)})()
        os.utime(os.path.join(directory, str(first)), (1000.0, 1000.0))
        self.assertEqual(pick_free_port(rng=rng, directory=directory, clock=lambda: 1001.0),
                         second)
        offers = iter([first])
        self.assertEqual(pick_free_port(rng=rng, directory=directory,
                                        clock=lambda: 1000.0 + PICKED_FOR + 1), first)

    def test_ephemeral_range_from_the_kernel(self):
        from speedy.localcluster.plan import EPHEMERAL_PORTS, ephemeral_ports
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("40000\t50000\n")
        self.assertEqual(ephemeral_ports(path), (40000, 50000))
        self.assertEqual(ephemeral_ports(path + ".missing"), EPHEMERAL_PORTS)

    def test_impossible_layouts(self):
        for kwargs in ({"chunkservers": 4}, {"chunkservers": 2}, {"imageservers": 0},
                       {"imageserver_workers": 0},
                       {"registry": "5000"}, {"registry": "localhost:http"}):
            self.assertRaises(ClusterError, plan, "v", **kwargs)


class WorkstationDefaultsTests(SynchronousTestCase):
    """C{speedy-cluster up} sizes chunkserver memory for a workstation and
    passes the replication mode on."""

    def test_up_defaults(self):
        from speedy.localcluster.cli import UpOptions
        from speedy.localcluster.plan import (
            LOCAL_CACHE_SIZE, LOCAL_FILL_SLOTS, LOCAL_STAGED_READ_LIMIT, LOCAL_UPLOAD_BACKLOG)
        options = UpOptions()
        options.parseOptions([])
        self.assertEqual((options["cache-size"], options["staged-read-limit"]),
                         (LOCAL_CACHE_SIZE, LOCAL_STAGED_READ_LIMIT))
        self.assertLessEqual(LOCAL_CACHE_SIZE, 64 << 20)
        self.assertEqual((options["fill-slots"], options["upload-backlog"]),
                         (LOCAL_FILL_SLOTS, LOCAL_UPLOAD_BACKLOG))
        self.assertGreater(LOCAL_UPLOAD_BACKLOG, 0)
        self.assertIsNone(options["replication"])

    def test_replication_refused_unless_known(self):
        from twisted.python import usage
        from speedy.localcluster.cli import UpOptions
        self.assertRaises(usage.UsageError, UpOptions().parseOptions, ["--replication", "star"])
        self.assertRaises(usage.UsageError, UpOptions().parseOptions,
                          ["--request-metrics", "sometimes"])

    def test_passed_on(self):
        roles = plan(os.path.abspath("v"), replication="chain", staged_read_limit=1 << 24,
                     request_metrics="off", fill_slots=3, upload_backlog=1 << 25).roles()
        for role in roles:
            if role.plugin == "speedy-imageserver":
                self.assertEqual(option_after(role.args, "--replication"), "chain")
                self.assertEqual(option_after(role.args, "--request-metrics"), "off")
                self.assertEqual(option_after(role.args, "--fill-slots"), "3")
                self.assertEqual(option_after(role.args, "--upload-backlog"), str(1 << 25))
            if role.plugin == "speedy-chunkserver":
                self.assertEqual(option_after(role.args, "--staged-read-limit"), str(1 << 24))
