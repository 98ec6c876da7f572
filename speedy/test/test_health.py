"""
Tests for C{speedy-admin health} (L{speedy.admin.health}) and what it reads:
the chunkmaster's C{/v1/admin/members} (L{speedy.monitoring.members}), the
health URLs chunkservers send with heartbeats and imageservers with their
polls, and each member's real C{/healthz} and C{/readyz} routes, served
through L{treq.testing.StubTreq} by host.
"""

import io
import json

from treq.testing import StubTreq
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from speedy.admin import cli
from speedy.admin.health import run as health_run
from speedy.chunkmaster.api import build_api
from speedy.chunkmaster.cluster import Cluster
from speedy.chunkmaster.messages import BadRequest, health_url, parse_heartbeat
from speedy.metadata.memory import MemoryMetadataStore
from speedy.monitoring.dashboard import Peers
from speedy.monitoring.endpoints import Monitoring, daemon_registry
from speedy.monitoring.members import Members
from speedy.test.test_chunkmaster_api import GiB, heartbeat
from speedy.web.json import answer_json_error
from speedy.web.rest import Router

ADMIN = "admin-sekrit"
SECRET = "cluster-sekrit"
MASTER = "http://master:8099"


class RoutedHTTP:
    """
    A treq-like client that sends each request to the L{StubTreq} of its
    URL's C{scheme://host:port}; a URL of no known host is refused, as a
    dead process's port is.
    """

    def __init__(self):
        self.hosts = {}

    def request(self, method, url, **kwargs):
        scheme, _, rest = url.partition("://")
        base = f"{scheme}://{rest.partition('/')[0]}"
        if base not in self.hosts:
            return fail(ConnectionRefusedError(f"nothing listens at {base}"))
        kwargs.pop("timeout", None)
        return self.hosts[base].request(method, url, **kwargs)


class Member:
    """The real monitoring routes of one daemon, with one readiness check
    the test turns on and off."""

    def __init__(self, name, detail="fine"):
        self.ok, self.detail = True, detail
        self.http = StubTreq(Monitoring(
            daemon_registry(), {name: lambda: (self.ok, self.detail)}
        ).add_routes(Router(answer_json_error)).resource)


class HealthCommandTests(SynchronousTestCase):
    """
    A chunkmaster with one group of three chunkservers (cs1 and cs2 with a
    --metrics listener, cs3 without) and two imageserver workers, each with
    its own health listener.
    """

    def setUp(self):
        self.clock = Clock()
        store = MemoryMetadataStore(self.clock)
        self.successResultOf(store.start())
        self.cluster = Cluster(store, self.clock, heartbeat_timeout=15, group_size=3,
                               reserve=GiB, publish_interval=5)
        self.addCleanup(self.cluster.stop)
        peers = Peers(self.clock)
        self.http = RoutedHTTP()
        self.http.hosts[MASTER] = self.api = StubTreq(build_api(
            self.cluster, store, cluster_secret=SECRET, admin_token=ADMIN,
            monitoring=Monitoring(daemon_registry(), {"cluster": lambda: (True, "view 3")}),
            peers=peers, members=Members(self.clock, self.cluster, peers)))
        self.members = {}
        for n in (1, 2):
            self.members[f"cs{n}"] = self.serve(f"http://10.0.0.{n}:9100", Member("store"))
        for n in (1, 2):
            self.members[f"w{n}"] = self.serve(f"http://10.0.1.1:910{n}", Member("cluster_view"))
        self.open_ports = {"10.0.0.3:8000"}
        self.clock.advance(100)
        self.beat_all()
        for n in (1, 2):
            self.poll(f"10.0.1.1:5000 pid {n}", f"http://10.0.1.1:910{n}")

    def serve(self, base, member):
        self.http.hosts[base] = member.http
        return member

    def beat(self, n, **changes):
        extra = {"address": f"10.0.0.{n}:8000"}
        if n != 3:
            extra["health"] = f"http://10.0.0.{n}:9100"
        extra.update(changes)
        response = self.successResultOf(self.api.post(
            MASTER + "/v1/heartbeat", json=heartbeat(f"cs{n}", 1, **extra),
            headers={b"authorization": [b"Bearer " + SECRET.encode()]}))
        self.assertEqual(response.code, 200, self.successResultOf(response.content()))

    def beat_all(self, but=()):
        for n in (1, 2, 3):
            if f"cs{n}" not in but:
                self.beat(n)

    def poll(self, name, health):
        headers = {b"authorization": [b"Bearer " + SECRET.encode()],
                   b"x-speedy-imageserver": [name.encode()]}
        if health is not None:
            headers[b"x-speedy-imageserver-health"] = [health.encode()]
        response = self.successResultOf(self.api.get(MASTER + "/v1/cluster", headers=headers))
        self.assertEqual(response.code, 200)

    def connect(self, address, timeout):
        if address in self.open_ports:
            return succeed((True, "port 8000 accepts connections"))
        return succeed((False, "port 8000: ConnectionRefusedError"))

    def health(self, *argv):
        """@return: C{(exit code, stdout lines, stderr text)} of one run."""
        lines, err = [], io.StringIO()
        commands = {name: run for name, _, run, _ in cli.COMMANDS}
        self.assertIs(commands["health"], health_run)
        self.patch(cli, "COMMANDS", [
            (name, options, (lambda c, o, x: health_run(c, o, x, connect=self.connect))
             if name == "health" else run, text)
            for name, options, run, text in cli.COMMANDS])
        code = self.successResultOf(Deferred.fromCoroutine(cli.run(
            self.clock, ["--master", MASTER] + list(argv), out=lines.append, err=err,
            environ={"SPEEDY_ADMIN_TOKEN": ADMIN}, http=self.http)))
        return code, lines, err.getvalue()

    def rows(self, lines):
        return {line.split()[1]: line.split() for line in lines[1:]
                if line.split() and line.split()[0] in ("chunkmaster", "chunkserver",
                                                         "imageserver")}

    def test_all_ready(self):
        """Every member alive and ready: a row each, exit code 0."""
        code, lines, err = self.health("health")
        self.assertEqual((code, err), (0, ""))
        self.assertEqual(lines[0].split(), ["ROLE", "NAME", "ADDRESS", "ALIVE", "READY", "DETAIL"])
        rows = self.rows(lines)
        names = [line.split()[1] for line in lines[1:-2]]
        self.assertEqual(names, ["chunkmaster", "cs1", "cs2", "cs3", "10.0.1.1:5000",
                                 "10.0.1.1:5000"])
        for line in lines[1:-2]:
            self.assertRegex(line, r" yes +yes ")
        self.assertIn("master:8099", lines[1])
        self.assertIn("10.0.0.1:8000", rows["cs1"])
        self.assertIn("port 8000 accepts connections", " ".join(rows["cs3"]))
        self.assertIn("pid 2", lines[-3])
        self.assertIn("10.0.1.1:9102", lines[-3])
        self.assertEqual(lines[-1], "6 members, 6 ready")

    def test_json(self):
        """--json: C{ready} and every member's facts, for scripts."""
        code, lines, err = self.health("--json", "health")
        report = json.loads("\n".join(lines))
        self.assertEqual((code, report["ready"]), (0, True), report)
        self.assertEqual([(m["role"], m["name"]) for m in report["members"]], [
            ("chunkmaster", "chunkmaster"), ("chunkserver", "cs1"), ("chunkserver", "cs2"),
            ("chunkserver", "cs3"), ("imageserver", "10.0.1.1:5000 pid 1"),
            ("imageserver", "10.0.1.1:5000 pid 2")])
        self.assertEqual(report["members"][1], {
            "role": "chunkserver", "name": "cs1", "address": "10.0.0.1:8000", "alive": True,
            "ready": True, "detail": "group 1, RW (heartbeat 0s ago); fine"})

    def test_a_dead_chunkserver(self):
        """A chunkserver killed: its listener refuses, the chunkmaster marks
        it DOWN; health exits 1 and names it."""
        del self.http.hosts["http://10.0.0.2:9100"]
        for _ in range(20):
            self.clock.advance(1)
            self.beat_all(but=("cs2",))
        code, lines, err = self.health("health")
        self.assertEqual(code, 1)
        row = self.rows(lines)["cs2"]
        self.assertEqual(row[3:5], ["NO", "NO"])
        self.assertIn("DOWN", " ".join(row))
        self.assertEqual(lines[-1], "6 members, 5 ready; NOT READY: cs2")

    def test_a_down_chunkserver_that_answers(self):
        """A chunkserver whose own /readyz is fine but that the chunkmaster
        has DOWN (its heartbeats do not arrive) is not ready."""
        for _ in range(20):
            self.clock.advance(1)
            self.beat_all(but=("cs1",))
        code, lines, err = self.health("--json", "health")
        [cs1] = [m for m in json.loads("\n".join(lines))["members"] if m["name"] == "cs1"]
        self.assertEqual((code, cs1["alive"], cs1["ready"]), (1, True, False))
        self.assertIn("DOWN", cs1["detail"])

    def test_chunkserver_without_metrics_listener(self):
        """Without a health URL a chunkserver's wire port is tried: closed,
        it is neither alive nor ready."""
        self.open_ports.clear()
        code, lines, err = self.health("--json", "health")
        [cs3] = [m for m in json.loads("\n".join(lines))["members"] if m["name"] == "cs3"]
        self.assertEqual((code, cs3["alive"], cs3["ready"]), (1, False, False))
        self.assertIn("ConnectionRefusedError", cs3["detail"])

    def test_imageserver_not_ready(self):
        """An imageserver worker alive but without a cluster view: not
        ready, the failing check named."""
        member = self.members["w2"]
        member.ok, member.detail = False, "no cluster view from the chunkmaster yet"
        code, lines, err = self.health("--json", "health")
        report = json.loads("\n".join(lines))
        [w2] = [m for m in report["members"] if m["name"] == "10.0.1.1:5000 pid 2"]
        self.assertEqual((code, report["ready"], w2["alive"], w2["ready"]),
                         (1, False, True, False))
        self.assertEqual(w2["detail"],
                         "not ready: cluster_view: no cluster view from the chunkmaster yet")

    def test_imageserver_without_health_url(self):
        """An imageserver that did not say where its checks answer cannot be
        called ready."""
        self.poll("10.0.1.9:5000 pid 9", None)
        code, lines, err = self.health("health")
        self.assertEqual(code, 1)
        self.assertIn("NOT READY: 10.0.1.9:5000 pid 9", lines[-1])

    def test_chunkmaster_unreachable(self):
        """No chunkmaster: exit code 3 and why, as every subcommand."""
        del self.http.hosts[MASTER]
        code, lines, err = self.health("health")
        self.assertEqual((code, lines), (cli.EXIT_UNREACHABLE, []))
        self.assertIn("/v1/admin/members", err)

    def test_members_need_the_admin_token(self):
        """/v1/admin/members is an admin call."""
        response = self.successResultOf(self.api.get(
            MASTER + "/v1/admin/members",
            headers={b"authorization": [b"Bearer " + SECRET.encode()]}))
        self.assertEqual(response.code, 401)


class HealthURLTests(SynchronousTestCase):
    """The health URLs members announce, and where they come from."""

    def test_heartbeat_field(self):
        """A heartbeat may carry C{health}: a base URL; anything else is refused."""
        self.assertIsNone(parse_heartbeat(heartbeat()).health)
        self.assertEqual(parse_heartbeat(heartbeat(health="http://10.0.0.1:9100")).health,
                         "http://10.0.0.1:9100")
        for bad in ["10.0.0.1:9100", "ftp://h:1", "http://h:1/x", "http://h", 7,
                    "http://" + "h" * 300 + ":1"]:
            self.assertRaises(BadRequest, parse_heartbeat, heartbeat(health=bad))
        self.assertIsNone(health_url("http://h:1/readyz"))
        self.assertEqual(health_url("https://[::1]:9100"), "https://[::1]:9100")

    def test_chunkserver_health_base(self):
        """A chunkserver announces its --metrics listener's address; a
        wildcard interface stands for its advertised host."""
        from speedy.chunkserver.tap import health_base
        self.assertIsNone(health_base(None, "10.0.0.5:8000"))
        self.assertEqual(health_base("tcp:9100:interface=10.0.0.7", "10.0.0.5:8000"),
                         "http://10.0.0.7:9100")
        self.assertEqual(health_base("tcp:9100", "10.0.0.5:8000"), "http://10.0.0.5:9100")
        self.assertEqual(health_base("tcp:9100:interface=0.0.0.0", None),
                         "http://127.0.0.1:9100")

    def test_imageserver_names(self):
        """Each imageserver worker names itself C{host:port pid N} (the
        shared registry address and its process) and announces its own
        --metrics listener, else its registry listener."""
        from speedy.imageserver.tap import health_base, worker_name
        self.assertEqual(worker_name("reuseport:5000:interface=127.0.0.1", pid=42),
                         "127.0.0.1:5000 pid 42")
        self.assertEqual(worker_name(
            "reuseport:5000:interface=10.0.0.1:privateKey=k.pem:certKey=c.pem", pid=7),
            "10.0.0.1:5000 pid 7")
        self.assertEqual(worker_name("unix:/tmp/s", pid=1), "unix:/tmp/s pid 1")
        self.assertEqual(health_base({"metrics": "tcp:9101:interface=127.0.0.1",
                                      "listen": "reuseport:5000:interface=127.0.0.1"}),
                         "http://127.0.0.1:9101")
        self.assertEqual(health_base({"metrics": None, "listen": "ssl:443:interface=10.0.0.1:"
                                      "privateKey=k.pem:certKey=c.pem"}),
                         "https://10.0.0.1:443")
        self.assertIsNone(health_base({"metrics": None, "listen": "unix:/tmp/s"}))

    def test_peers_keep_valid_health_urls(self):
        """The chunkmaster keeps an imageserver's health URL only if it is one."""
        from twisted.web.test.requesthelper import DummyRequest
        peers = Peers(Clock())
        for name, header in [("a", b"http://10.0.0.1:9101"), ("b", b"javascript:alert(1)")]:
            request = DummyRequest([b""])
            request.requestHeaders.setRawHeaders(b"x-speedy-imageserver", [name.encode()])
            request.requestHeaders.setRawHeaders(b"x-speedy-imageserver-health", [header])
            peers.saw(request)
        self.assertEqual({p["name"]: p["health"] for p in peers.seen()},
                         {"a": "http://10.0.0.1:9101", "b": None})
