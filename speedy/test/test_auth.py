"""
Tests for L{speedy.auth}: the htpasswd checker and its cache, the access
rules, what each request asks for, and the gate in front of the routes.
"""

import base64
import os
import subprocess

import bcrypt
from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin
import json

from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs
from twisted.python.threadpool import ThreadPool
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest

from speedy.auth.access import AccessError, AccessPolicy
from speedy.auth.gate import Gate, Refused, basic_credentials
from speedy.auth.htpasswd import (
    HtpasswdChecker, HtpasswdError, VerifiedCache, read_htpasswd, users_portal)
from speedy.auth.scopes import Scope, scope_of
from speedy.test.util import require_tool
from speedy.web.rest import Discard


class SyncPool(ThreadPool):
    """Runs what it is given at once, on this thread."""

    def callInThreadWithCallback(self, onResult, func, *args, **kw):
        try:
            result = func(*args, **kw)
        except Exception as e:
            onResult(False, e)
        else:
            onResult(True, result)


class HeldPool(ThreadPool):
    """Holds what it is given until L{run_all}: bcrypt still running."""

    def __init__(self):
        super().__init__()
        self.held = []

    def callInThreadWithCallback(self, onResult, func, *args, **kw):
        self.held.append((onResult, func, args, kw))

    def run_all(self):
        held, self.held = self.held, []
        for onResult, func, args, kw in held:
            SyncPool.callInThreadWithCallback(self, onResult, func, *args, **kw)


class FakeReactor(Clock):
    def callFromThread(self, f, *args, **kw):
        f(*args, **kw)


def entry(user, password):
    """An htpasswd line as C{htpasswd -B} writes it (cost 4, for speed)."""
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()
    return f"{user}:{hashed.replace('$2b$', '$2y$', 1)}\n"


class HtpasswdTests(SynchronousTestCase):

    def setUp(self):
        self.path = self.mktemp()
        self.write(entry("alice", "alice-password") + entry("bob", "bob-password"))
        self.clock = FakeReactor()
        self.checker = HtpasswdChecker(self.path, self.clock, self.clock, threadpool=SyncPool())
        self.checks = 0
        real = bcrypt.checkpw

        def counted(*args):
            self.checks += 1
            return real(*args)
        self.patch(bcrypt, "checkpw", counted)

    def write(self, text):
        with open(self.path, "w") as f:
            f.write(text)

    def login(self, user, password):
        return self.checker.requestAvatarId(UsernamePassword(user.encode(), password.encode()))

    def test_right_and_wrong(self):
        self.assertEqual(self.successResultOf(self.login("alice", "alice-password")), "alice")
        for user, password in [("alice", "bob-password"), ("carol", "alice-password"),
                               ("alice", "")]:
            self.failureResultOf(self.login(user, password), UnauthorizedLogin)

    def test_unknown_user_costs_a_check(self):
        """An unknown name is checked against a decoy hash: as slow as a
        wrong password, so names cannot be told by timing."""
        self.failureResultOf(self.login("carol", "x"), UnauthorizedLogin)
        self.assertEqual(self.checks, 1)

    def test_verified_cached_for_a_while(self):
        """A password that passed is not checked again until the entry
        expires; a wrong one is checked every time."""
        for _ in range(3):
            self.successResultOf(self.login("alice", "alice-password"))
        self.assertEqual(self.checks, 1)
        self.assertTrue(self.checker.known(b"alice", b"alice-password"))
        self.assertFalse(self.checker.known(b"alice", b"other"))
        for _ in range(2):
            self.failureResultOf(self.login("alice", "other"), UnauthorizedLogin)
        self.assertEqual(self.checks, 3)
        self.clock.advance(301)
        self.assertFalse(self.checker.known(b"alice", b"alice-password"))
        self.successResultOf(self.login("alice", "alice-password"))
        self.assertEqual(self.checks, 4)

    def test_verified_pairs_stay_apart(self):
        """The cache's MAC tells apart pairs whose user and password run
        together the same way."""
        cache = VerifiedCache(self.clock)
        cache.add(b"alice", b"x\0y")
        self.assertIn((b"alice", b"x\0y"), cache)
        for other in [(b"alice\0x", b"y"), (b"alicex", b"\0y"), (b"alice", b"x\0y ")]:
            self.assertNotIn(other, cache)

    def test_file_changes(self):
        """A changed file is read again within a second and forgets what was
        verified: a removed user, or a changed password, is refused."""
        self.successResultOf(self.login("alice", "alice-password"))
        self.write(entry("bob", "bob-password") + "# alice left\n")
        os.utime(self.path, ns=(0, 10**9))
        self.clock.advance(1)
        self.failureResultOf(self.login("alice", "alice-password"), UnauthorizedLogin)
        self.assertEqual(self.successResultOf(self.login("bob", "bob-password")), "bob")

    def test_broken_file_later_keeps_the_last_good(self):
        self.write("garbage without a colon\n")
        os.utime(self.path, ns=(0, 2 * 10**9))
        self.clock.advance(1)
        self.assertEqual(self.successResultOf(self.login("bob", "bob-password")), "bob")
        self.flushLoggedErrors(HtpasswdError)

    def test_bad_files(self):
        for text in ["", "no colon here\n", "md5:$apr1$abc$def\n"]:
            self.write(text)
            self.assertRaises(HtpasswdError, read_htpasswd, self.path)
        self.assertRaises(HtpasswdError, read_htpasswd, self.mktemp())

    def test_htpasswd_tool(self):
        """Entries of the real C{htpasswd -B} are taken."""
        tool = require_tool("htpasswd")
        subprocess.run([tool, "-Bbc", self.path, "dave", "dave-password"], check=True,
                       capture_output=True)
        checker = HtpasswdChecker(self.path, self.clock, self.clock, threadpool=SyncPool())
        self.assertEqual(self.successResultOf(checker.requestAvatarId(
            UsernamePassword(b"dave", b"dave-password"))), "dave")

    def test_portal(self):
        portal = users_portal(self.checker)
        from speedy.auth.htpasswd import IUserName
        _, name, _ = self.successResultOf(portal.login(
            UsernamePassword(b"bob", b"bob-password"), None, IUserName))
        self.assertEqual(name, "bob")


POLICY = """
[[allow]]
users = ["anonymous"]
repositories = ["public/*"]
actions = ["pull"]

[[allow]]
users = ["*"]
repositories = ["shared/*", "${user}/*"]
actions = ["pull", "push"]

[[allow]]
users = ["bob"]
repositories = ["alice/*"]
actions = ["pull"]

[[allow]]
users = ["ops"]
actions = ["admin"]
"""


class AccessTests(SynchronousTestCase):

    def policy(self, text=POLICY):
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(text)
        return AccessPolicy.load(path)

    def test_rules(self):
        policy = self.policy()
        cases = [
            (None, "pull", "public/x", True), (None, "pull", "shared/x", False),
            (None, "push", "public/x", False),
            ("alice", "push", "alice/app", True), ("alice", "push", "alice/deep/app", True),
            ("alice", "push", "bob/app", False), ("alice", "delete", "alice/app", False),
            ("bob", "pull", "alice/app", True), ("bob", "push", "alice/app", False),
            ("bob", "push", "shared/x", True), ("bob", "pull", "public/x", False),
            ("ops", "delete", "anything/at/all", True), ("ops", "admin", None, True),
            ("alice", "admin", None, False),
        ]
        for user, action, repository, allowed in cases:
            self.assertEqual(policy.allows(user, action, repository), allowed,
                             (user, action, repository))
        self.assertEqual([n for n in ["alice/a", "bob/b", "shared/s"] if policy.may_pull("bob")(n)],
                         ["alice/a", "bob/b", "shared/s"])
        self.assertEqual([n for n in ["alice/a", "public/p"] if policy.may_pull(None)(n)],
                         ["public/p"])

    def test_default(self):
        policy = AccessPolicy.default()
        self.assertTrue(policy.allows("anyone", "delete", "x/y"))
        self.assertFalse(policy.allows(None, "pull", "x/y"))
        self.assertFalse(policy.allows("anyone", "admin"))

    def test_bad_files(self):
        for text in ["[[allow]]\nusers = 'alice'\n", "[[allow]]\nactions = ['fly']\nusers=['a']\n",
                     "[[deny]]\nusers = ['a']\n", "[[allow]]\nusers=['a']\nactions=['pull']\nx=1\n",
                     "not toml ["]:
            self.assertRaises(AccessError, self.policy, text)
        self.assertRaises(AccessError, AccessPolicy.load, self.mktemp())


class ScopeTests(SynchronousTestCase):

    def test_scopes(self):
        cases = [
            ("GET", "/v1/health", Scope("public")),
            ("GET", "/v2/", Scope("login", "v2")),
            ("GET", "/v2/_catalog?n=10", Scope("any", "v2")),
            ("HEAD", "/v2/a/b/manifests/latest", Scope("repository", "v2", "a/b", "pull")),
            ("GET", "/v2/a/blobs/x/blobs/sha256:00", Scope("repository", "v2", "a/blobs/x", "pull")),
            ("PUT", "/v2/a/manifests/v1", Scope("repository", "v2", "a", "push")),
            ("PATCH", "/v2/a/blobs/uploads/123", Scope("repository", "v2", "a", "push")),
            ("DELETE", "/v2/a/blobs/sha256:00", Scope("repository", "v2", "a", "delete")),
            ("GET", "/v2/a/tags/list", Scope("repository", "v2", "a", "pull")),
            ("POST", "/v2/a/blobs/uploads/?mount=sha256:00&from=b/c",
             Scope("repository", "v2", "a", "push", "b/c")),
            ("GET", "/v1/files/x", Scope("admin")), ("POST", "/v1/chunks", Scope("admin")),
            ("DELETE", "/v1/chunks/1/1", Scope("admin")), ("GET", "/metrics", Scope("admin")),
            ("PUT", "/v1/repositories/ns/app/", Scope("repository", "v1", "ns/app", "push")),
            ("GET", "/v1/repositories/busybox/tags", Scope("repository", "v1", "library/busybox",
                                                           "pull")),
            ("PUT", "/v1/images/abc/json", Scope("somewhere", "v1", action="push")),
        ]
        for method, uri, scope in cases:
            self.assertEqual(scope_of(method, uri.encode()), scope, (method, uri))


def basic(user, password):
    return b"Basic " + base64.b64encode(f"{user}:{password}".encode())


class GateTests(SynchronousTestCase):
    """The gate on L{DummyRequest}s, the resource behind it a recorder."""

    def setUp(self):
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(entry("alice", "alice-password") + entry("bob", "bob-password"))
        clock = FakeReactor()
        self.checker = HtpasswdChecker(path, clock, clock, threadpool=SyncPool())
        policy_path = self.mktemp()
        with open(policy_path, "w") as f:
            f.write(POLICY)
        self.served = []
        self.sinks = []
        from twisted.web.resource import Resource

        outer = self

        class Recorder(Resource):
            isLeaf = True

            def render(self, request):
                outer.served.append((request.method, request.uri, request.speedy_user))
                return b"ok"

        self.route_sink = "the route's sink"

        def sink_for(request):
            self.sinks.append(request.uri)
            return self.route_sink

        self.clock = clock
        self.gate = Gate(Recorder(), sink_for, users_portal(self.checker), self.checker,
                         AccessPolicy.load(policy_path), clock=clock)

    def request(self, method, uri, authorization=None):
        request = DummyRequest(uri.lstrip("/").split("/"))
        request.method = method.encode()
        request.uri = uri.encode()
        request.path = uri.split("?")[0].encode()
        if authorization is not None:
            request.requestHeaders.setRawHeaders(b"authorization", [authorization])
        return request

    def render(self, method, uri, authorization=None):
        request = self.request(method, uri, authorization)
        self.gate.resource.render(request)
        self.assertTrue(request.finished)
        return request

    def test_matrix(self):
        """Every kind of request against every kind of caller."""
        callers = {
            "anonymous": None, "wrong password": basic("alice", "bob-password"),
            "unknown user": basic("mallory", "x"), "malformed": b"Basic !!!not base64",
            "other scheme": b"Bearer abc.def.ghi", "huge": b"Basic " + b"A" * 100_000,
            "bob": basic("bob", "bob-password"), "alice": basic("alice", "alice-password"),
        }
        requests = [("GET", "/v2/"), ("GET", "/v2/public/app/manifests/1"),
                    ("GET", "/v2/alice/app/manifests/1"), ("PUT", "/v2/alice/app/manifests/1"),
                    ("DELETE", "/v2/alice/app/manifests/1"), ("GET", "/v1/files/x"),
                    ("GET", "/v1/health")]
        expected = {
            "anonymous": [401, 200, 401, 401, 401, 401, 200],
            "bob": [200, 403, 200, 403, 403, 403, 200],
            "alice": [200, 403, 200, 200, 403, 403, 200],
        }
        for name in ("wrong password", "unknown user", "malformed", "other scheme", "huge"):
            expected[name] = [401, 401, 401, 401, 401, 401, 200]
        for name, authorization in callers.items():
            got = [self.render(method, uri, authorization).responseCode or 200
                   for method, uri in requests]
            self.assertEqual(got, expected[name], name)

    def test_refusal_bodies(self):
        request = self.render("GET", "/v2/alice/app/tags/list")
        self.assertEqual(request.responseCode, 401)
        self.assertEqual(request.responseHeaders.getRawHeaders(b"www-authenticate"),
                         [b'Basic realm="speedy"'])
        self.assertIn(b'"UNAUTHORIZED"', b"".join(request.written))
        request = self.render("GET", "/v1/files/x", basic("alice", "alice-password"))
        self.assertEqual(request.responseCode, 403)
        self.assertIn(b'{"error": {"code": "DENIED"', b"".join(request.written))
        self.assertEqual(self.served, [])

    def refusal_events(self, events):
        return [e for e in events if e.get("log_format", "").startswith("refused {method}")]

    def test_refusals_logged(self):
        """
        Every refusal is answered with the request's id (in C{X-Request-Id}
        and the body) and logged with it, the peer, the user when known and
        the reason: bad input (a malformed, huge or foreign Authorization,
        a garbage token) and wrong passwords as warnings, the challenge of
        a request without credentials as info.  Nothing was served.
        """
        cases = [
            (None, 401, LogLevel.info, None, "authentication required"),
            (basic("alice", "bob-password"), 401, LogLevel.warn, "alice", "wrong password"),
            (basic("mallory", "x"), 401, LogLevel.warn, "mallory", "wrong password"),
            (b"Basic !!!not base64", 401, LogLevel.warn, None, "malformed"),
            (b"Basic " + b"A" * 100_000, 401, LogLevel.warn, None, "too long"),
            (b"Bearer eyJhbGciOiJub25lIn0.garbage.", 401, LogLevel.warn, None, "only Basic"),
            (b"\x00\xff\xfe garbage", 401, LogLevel.warn, None, "only Basic"),
            (basic("bob", "bob-password"), 403, LogLevel.warn, "bob", "denied"),
        ]
        for authorization, status, level, user, reason in cases:
            with capturedLogs() as events:
                request = self.render("PUT", "/v2/alice/app/manifests/1", authorization)
            self.assertEqual(request.responseCode, status, reason)
            rid = request.responseHeaders.getRawHeaders(b"x-request-id")[0].decode()
            self.assertEqual(json.loads(b"".join(request.written))["request_id"], rid)
            [event] = self.refusal_events(events)
            self.assertEqual((event["request_id"], event["status"], event["log_level"],
                              event["user"]), (rid, status, level, user), reason)
            self.assertIn(reason, event["reason"])
            self.assertEqual(event["path"], "/v2/alice/app/manifests/1")
            self.assertIn(f"(request {rid})", event["log_format"].format(**event))
        self.assertEqual(self.served, [])
        self.assertEqual(self.render("GET", "/v2/alice/app/manifests/1",
                                     basic("alice", "alice-password")).responseCode, None)
        self.assertEqual(len(self.served), 1)

    def test_client_request_id_kept(self):
        """A sane X-Request-Id of the client is the refusal's id."""
        request = self.request("GET", "/v2/alice/app/tags/list")
        request.requestHeaders.setRawHeaders(b"x-request-id", [b"client-42"])
        with capturedLogs() as events:
            self.gate.resource.render(request)
        self.assertEqual(json.loads(b"".join(request.written))["request_id"], "client-42")
        [event] = self.refusal_events(events)
        self.assertEqual(event["request_id"], "client-42")

    def test_refusal_flood_rate_limited(self):
        """A flood of garbage credentials: each refused, but at most the
        budget's lines per interval logged, the next saying how many were
        held back; challenges have their own budget, so the flood does
        not hide them."""
        budget = self.gate.refusals["refused"]
        with capturedLogs() as events:
            for i in range(200):
                self.assertEqual(self.render("GET", "/v2/alice/app/tags/list",
                                             b"Basic !!" + b"%d" % i).responseCode, 401)
            self.render("GET", "/v2/alice/app/tags/list")
        logged = self.refusal_events(events)
        self.assertEqual(len(logged), budget.burst + 1)
        self.assertEqual(logged[-1]["log_level"], LogLevel.info)
        self.clock.advance(budget.interval)
        with capturedLogs() as events:
            self.render("GET", "/v2/alice/app/tags/list", b"Basic !!")
        [event] = self.refusal_events(events)
        self.assertEqual(event["held_back"], 200 - budget.burst)

    def test_body_sinks(self):
        """Known credentials are decided as the headers arrive: allowed,
        the body goes to its route's sink; refused, it is dropped.  Others
        are spooled, to go to the route once they passed."""
        alice = basic("alice", "alice-password")
        request = self.request("PUT", "/v2/alice/app/manifests/1", alice)
        self.assertIsNone(self.gate.body_sink_for(request))
        self.assertFalse(request.body_sink_chosen)
        self.render("GET", "/v2/", alice)  # now alice is known
        request = self.request("PUT", "/v2/alice/app/manifests/1", alice)
        self.assertEqual(self.gate.body_sink_for(request), "the route's sink")
        for authorization in (None, b"garbage"):
            request = self.request("PUT", "/v2/alice/app/manifests/1", authorization)
            self.assertIsInstance(self.gate.body_sink_for(request), Discard)
        # Credentials not checked yet: a small body is spooled while they
        # are checked.
        request = self.request("PUT", "/v2/bob/app/manifests/1", basic("bob", "bob-password"))
        self.assertIsNone(self.gate.body_sink_for(request))
        self.assertIsInstance(self.gate.body_sink_for(
            self.request("PUT", "/v2/bob/app/manifests/1", alice)), Discard)
        self.assertEqual(self.sinks, ["/v2/alice/app/manifests/1".encode()])

    def test_large_body_waits_for_its_check(self):
        """
        A large body whose credentials this worker has not seen (another
        worker on the same port checked them) is held, not refused: its
        first piece waits for bcrypt, then the whole body goes to its
        route's sink.  Refused credentials drop it, and nothing reaches a
        route.
        """
        received = []

        class RouteSink:
            def write(self, data):
                received.append(data)

        self.route_sink = RouteSink()
        pool = HeldPool()
        self.checker._threadpool = pool
        alice = basic("alice", "alice-password")
        request = self.request("PATCH", "/v2/alice/app/blobs/uploads/u1", alice)
        request.requestHeaders.setRawHeaders(b"content-length", [b"%d" % (64 << 20)])
        request.body_sink = sink = self.gate.body_sink_for(request)
        self.assertIsNone(getattr(sink, "refusal", None))
        first = sink.write(b"first piece")
        self.assertNoResult(first)  # the socket is not read meanwhile
        self.assertEqual((received, self.sinks), ([], []))
        pool.run_all()
        self.successResultOf(first)
        self.assertIs(request.body_sink, self.route_sink)
        self.assertEqual(received, [b"first piece"])
        self.assertEqual(self.sinks, [b"/v2/alice/app/blobs/uploads/u1"])

        wrong = self.request("PATCH", "/v2/alice/app/blobs/uploads/u2",
                             basic("alice", "not-her-password"))
        wrong.requestHeaders.setRawHeaders(b"content-length", [b"%d" % (64 << 20)])
        wrong.body_sink = sink = self.gate.body_sink_for(wrong)
        written = sink.write(b"x" * 100)
        pool.run_all()
        self.failureResultOf(written, Refused)
        self.assertIsInstance(wrong.body_sink, Discard)
        self.gate.resource.render(wrong)
        pool.run_all()
        self.assertEqual(wrong.responseCode, 401)
        self.assertEqual(received, [b"first piece"])
        self.assertEqual(self.served, [])

    def test_basic_credentials(self):
        self.assertEqual(basic_credentials(self.request("GET", "/", basic("a", "p:q"))),
                         (b"a", b"p:q"))
        self.assertIsNone(basic_credentials(self.request("GET", "/")))
        self.assertIsNone(basic_credentials(self.request("GET", "/", basic("", ""))))
        for bad in (b"Basic " + base64.b64encode(b"no-colon"), b"Basic " + base64.b64encode(b":p")):
            self.assertRaises(Refused, basic_credentials, self.request("GET", "/", bad))
