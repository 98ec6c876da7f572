"""
The authorization matrix end to end: every HTTP endpoint of a real
cluster (registry reads, writes, deletes and catalog, the V1 registry, the
file API, the chunk API, the chunkmaster's admin API) against every kind of
caller (anonymous, wrong password, unknown user, expired token, token for
another repository or action, forged signature, C{alg: none}, read-only
user, push user, admin), each cell asserted; then real clients with
credentials (oras-py with HTTP Basic).  The clusters are the shared ones
of L{speedy.test.test_auth_e2e}: one with HTTP Basic users, one with
bearer tokens from the embedded token service.
"""

import base64
import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from speedy.test.test_auth_e2e import CLUSTER, TOKEN_CLUSTER, USERS
from speedy.test.test_registry_clients import SkopeoMixin

#: (method, path, the token scope a client asks for it, the kind of access it needs)
ENDPOINTS = [
    ("GET", "/v2/", None, "login"),
    ("GET", "/v2/alice/matrix/tags/list", "repository:alice/matrix:pull", "pull"),
    ("HEAD", "/v2/alice/matrix/manifests/small", "repository:alice/matrix:pull", "pull"),
    ("GET", "/v2/alice/matrix/manifests/small", "repository:alice/matrix:pull", "pull"),
    ("POST", "/v2/alice/matrix/blobs/uploads/", "repository:alice/matrix:pull,push", "push"),
    ("PUT", "/v2/alice/matrix/manifests/bad", "repository:alice/matrix:pull,push", "push"),
    ("DELETE", "/v2/alice/matrix/manifests/sha256:" + "0" * 64,
     "repository:alice/matrix:delete", "delete"),
    ("DELETE", "/v2/alice/matrix/blobs/sha256:" + "0" * 64,
     "repository:alice/matrix:delete", "delete"),
    ("GET", "/v2/_catalog", "registry:catalog:*", "catalog"),
    ("GET", "/v1/repositories/alice/matrix/tags", "repository:alice/matrix:pull", "pull"),
    ("DELETE", "/v1/repositories/alice/matrix/tags/none", "repository:alice/matrix:delete",
     "delete"),
    ("GET", "/v1/files/", "registry:admin:*", "admin"),
    ("PUT", "/v1/files/matrix-probe", "registry:admin:*", "admin"),
    ("POST", "/v1/chunks", "registry:admin:*", "admin"),
    # a chunk no blob has: the admin may delete it, and harms nothing
    ("DELETE", "/v1/chunks/1/987654321", "registry:admin:*", "admin"),
    ("GET", "/metrics", "registry:admin:*", "admin"),
    ("GET", "/v1/health", None, "public"),
]

#: What each user of test_auth_e2e.POLICY may reach.
USER_ACCESS = {
    "read-only user (bob)": {"login", "public", "pull", "catalog"},
    "push user (alice)": {"login", "public", "pull", "push", "delete", "catalog"},
    "admin (ops)": {"login", "public", "pull", "push", "delete", "catalog", "admin"},
}
USER_OF = {"read-only user (bob)": "bob", "push user (alice)": "alice", "admin (ops)": "ops"}


def request(method, url, headers=(), body=None):
    """@return: (status, headers, parsed JSON body or None)."""
    if body is None and method in ("POST", "PUT", "PATCH"):
        body = b"x"
    r = urllib.request.Request(url, method=method, data=body, headers=dict(headers))
    try:
        with urllib.request.urlopen(r, timeout=30) as response:
            status, got, data = response.status, response.headers, response.read()
    except urllib.error.HTTPError as e:
        status, got, data = e.code, e.headers, e.read()
    try:
        return status, got, json.loads(data) if data else None
    except ValueError:
        return status, got, None


def basic(user, password=None):
    value = f"{user}:{USERS.get(user, '') if password is None else password}"
    return {"Authorization": "Basic " + base64.b64encode(value.encode()).decode()}


def bearer(token):
    return {"Authorization": "Bearer " + token}


class _MatrixMixin(SkopeoMixin):
    """Runs L{ENDPOINTS} x callers against C{self.first}."""

    def setUp(self):
        super().setUp()
        with open(os.path.join(self.registry.var, "cluster.json")) as f:
            state = json.load(f)
        self.master, self.admin_token = state["master"], state["admin_token"]
        if not hasattr(self, "pushed"):
            self.copy_in("small", f"{self.first}/alice/matrix:small",
                         "--dest-creds", f"alice:{USERS['alice']}")

    def check(self, callers, allowed, refusal):
        """
        @param callers: name -> (scope -> headers).
        @param allowed: name -> the kinds of L{ENDPOINTS} it may reach.
        @param refusal: name -> (status, the error of the challenge or None)
            of its refusals.
        """
        base = f"http://{self.first}"
        cells = 0
        for name, headers_for in callers.items():
            for method, path, scope, kind in ENDPOINTS:
                status, headers, body = request(method, base + path, headers_for(scope))
                cell = (name, method, path, status)
                cells += 1
                if kind in allowed[name]:
                    self.assertNotIn(status, (401, 403), cell)
                    continue
                wanted_status, error = refusal[name]
                self.assertEqual(status, wanted_status, cell)
                if path.startswith("/v2/") and method != "HEAD":
                    self.assertEqual(body["errors"][0]["code"],
                                     "UNAUTHORIZED" if status == 401 else "DENIED", cell)
                elif path.startswith(("/v1/files", "/v1/chunks")) and status == 403:
                    self.assertIn("DENIED", json.dumps(body), cell)
                if status == 401:
                    challenge = headers["WWW-Authenticate"]
                    self.assertIsNotNone(challenge, cell)
                    if error is not None:
                        self.assertIn(f'error="{error}"', challenge, cell)
            # the chunkmaster's admin API takes its admin token, and nothing
            # a registry caller holds
            status, _, _ = request("GET", self.master + "/v1/admin/cluster",
                                   headers_for("registry:admin:*"))
            self.assertEqual(status, 401, (name, "chunkmaster admin API"))
            cells += 1
        self.assertEqual(request("GET", self.master + "/v1/admin/cluster",
                                 bearer(self.admin_token))[0], 200)
        self.assertEqual(cells, len(callers) * (len(ENDPOINTS) + 1))
        # The refused requests changed nothing: alice's repository still
        # has its one tag.
        status, _, body = request("GET", base + "/v2/alice/matrix/tags/list",
                                  self.headers_of("alice", "repository:alice/matrix:pull"))
        self.assertEqual((status, body["tags"]), (200, ["small"]))


class BasicMatrixTests(_MatrixMixin, SynchronousTestCase):
    """HTTP Basic users (C{--auth htpasswd:}): strangers 401, users the
    rules do not allow 403."""

    cluster = CLUSTER

    def headers_of(self, user, scope):
        return basic(user)

    def test_matrix(self):
        callers = {
            "anonymous": lambda scope: {},
            "wrong password": lambda scope: basic("alice", "wrong"),
            "unknown user": lambda scope: basic("mallory", "x"),
            "a bearer token": lambda scope: bearer("a.b.c"),
            **{name: (lambda user: lambda scope: basic(user))(user)
               for name, user in USER_OF.items()},
        }
        allowed = dict(USER_ACCESS)
        refusal = {}
        for name in ("anonymous", "wrong password", "unknown user", "a bearer token"):
            allowed[name] = {"public"}
            refusal[name] = (401, None)
        allowed["anonymous"] = {"public", "catalog"}  # the rules let it pull public/*
        for name in USER_OF:
            refusal[name] = (403, None)
        self.check(callers, allowed, refusal)


class TokenMatrixTests(_MatrixMixin, SynchronousTestCase):
    """Bearer tokens (C{--auth token:}): every refusal is 401 with the
    Bearer challenge (so that clients ask the token service again);
    C{invalid token} for bad ones, C{insufficient_scope} for good tokens
    that do not grant the request."""

    cluster = TOKEN_CLUSTER

    def setUp(self):
        super().setUp()
        with open(os.path.join(os.path.dirname(self.registry.var), "token.key"), "rb") as f:
            self.key = serialization.load_pem_private_key(f.read(), None)

    def token_of(self, user, scope, password=None):
        """@return: (status, token) from the embedded token service."""
        query = [("service", "speedy-e2e")] + ([("scope", scope)] if scope else [])
        status, _, body = request(
            "GET", f"http://{self.first}/token?{urllib.parse.urlencode(query)}",
            basic(user, password) if user else {})
        return status, (body or {}).get("token")

    def headers_of(self, user, scope):
        status, token = self.token_of(user, scope)
        self.assertEqual(status, 200)
        return bearer(token)

    def forge(self, access, key=None, algorithm="ES256", **changes):
        now = int(time.time())
        claims = {"iss": "speedy-e2e-issuer", "aud": "speedy-e2e", "sub": "alice", "iat": now,
                  "exp": now + 300, "access": access}
        claims.update(changes)
        if algorithm == "none":
            def part(value):
                return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()
            return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}."
        return jwt.encode(claims, key or self.key, algorithm=algorithm)

    def refused_login(self, user, password, scope):
        """A client with wrong credentials: the token service refuses it a
        token (asserted), so it is left with its Basic credentials."""
        self.assertEqual(self.token_of(user, scope, password)[0], 401)
        return basic(user, password)

    def test_matrix(self):
        other_key = ec.generate_private_key(ec.SECP256R1())

        def wanted(scope):
            if scope is None:
                return []
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            return [{"type": kind, "name": name, "actions": actions.split(",")}]

        def other_action(scope):
            if scope is None or not scope.startswith("repository:"):
                return [{"type": "repository", "name": "alice/matrix", "actions": ["pull"]}]
            name, _, actions = scope[len("repository:"):].rpartition(":")
            others = [a for a in ("pull", "push", "delete") if a not in actions.split(",")]
            return [{"type": "repository", "name": name, "actions": others}]

        callers = {
            "anonymous": lambda scope: {},
            "wrong password": lambda scope: self.refused_login("alice", "wrong", scope),
            "unknown user": lambda scope: self.refused_login("mallory", "x", scope),
            "expired token": lambda scope: bearer(self.forge(
                wanted(scope), exp=int(time.time()) - 3600, iat=int(time.time()) - 3900)),
            "token for another repository": lambda scope: bearer(self.forge(
                [{"type": "repository", "name": "bob/other", "actions": ["*"]}])),
            "token for another action": lambda scope: bearer(self.forge(other_action(scope))),
            "forged signature": lambda scope: bearer(self.forge(wanted(scope), other_key)),
            "alg none": lambda scope: bearer(self.forge(wanted(scope), algorithm="none")),
            **{name: (lambda user: lambda scope: self.headers_of(user, scope))(user)
               for name, user in USER_OF.items()},
        }
        allowed = dict(USER_ACCESS)
        refusal = {name: (401, "insufficient_scope") for name in USER_OF}
        for name in ("anonymous", "wrong password", "unknown user", "expired token",
                     "forged signature", "alg none"):
            allowed[name] = {"public"}
            refusal[name] = (401, None)
        for name in ("token for another repository", "token for another action"):
            # a good token: /v2/ and the (filtered) catalog let it in
            allowed[name] = {"public", "login", "catalog"}
            refusal[name] = (401, "insufficient_scope")
        self.check(callers, allowed, refusal)

    def test_bad_input(self):
        """Huge, malformed and garbage tokens get a clean 401; the token
        service takes bad queries; the imageserver goes on serving."""
        url = f"http://{self.first}/v2/alice/matrix/tags/list"
        for header in ("Bearer " + "A" * 12000, "Bearer !!!", "Bearer a.b.c", "Bearer",
                       "Bearer " + "e30." * 3, "Basic " + "A" * 6000, "Negotiate abc",
                       "Bearer " + self.forge([])[:-5] + "AAAAA"):
            status, _, body = request("GET", url, {"Authorization": header})
            self.assertEqual((status, body["errors"][0]["code"]), (401, "UNAUTHORIZED"),
                             header[:20])
        for query in ("scope=" + "x" * 5000, "scope=::::", "scope=repository:a:" + "p," * 500,
                      "service=other", "scope=%ff%fe"):
            status, _, _ = request("GET", f"http://{self.first}/token?{query}")
            self.assertIn(status, (200, 400), query[:20])
        status, _, body = request("GET", url, self.headers_of(
            "alice", "repository:alice/matrix:pull"))
        self.assertEqual((status, body["tags"]), (200, ["small"]))


class OrasTests(SkopeoMixin, SynchronousTestCase):
    """oras-py with HTTP Basic: alice pushes an artifact and bob pulls it
    back; bob's push to her repository and a wrong password are refused
    and leave nothing."""

    cluster = CLUSTER

    def oras(self, user, password):
        try:
            from oras.client import OrasClient
        except ImportError:
            if os.environ.get("CI") == "true":
                raise
            raise SkipTest("oras-py is not installed (pip install oras)")
        client = OrasClient(hostname=self.first, insecure=True, auth_backend="basic")
        client.auth.set_basic_auth(user, password)
        return client

    def test_push_pull(self):
        artifact = os.path.join(self.tmp, "artifact.txt")
        with open(artifact, "wb") as f:
            f.write(os.urandom(50_000))
        target = f"{self.first}/alice/oras-artifact:v1"
        cwd = os.getcwd()
        os.chdir(self.tmp)  # oras names files by their path relative to here
        self.addCleanup(os.chdir, cwd)
        response = self.oras("alice", USERS["alice"]).push(target, files=["artifact.txt"])
        self.assertIn(response.status_code, (200, 201))
        pulled = self.oras("bob", USERS["bob"]).pull(target, outdir=os.path.join(self.tmp, "out"))
        with open(pulled[0], "rb") as f, open(artifact, "rb") as g:
            self.assertEqual(f.read(), g.read())
        for user, password in (("bob", USERS["bob"]), ("alice", "wrong")):
            with self.assertRaises(Exception):
                response = self.oras(user, password).push(
                    f"{self.first}/alice/oras-intruded:v1", files=["artifact.txt"])
                if response.status_code >= 400:
                    raise ValueError(response.status_code)
        status, _, _ = request("GET", f"http://{self.first}/v2/alice/oras-intruded/tags/list",
                               basic("ops"))
        self.assertEqual(status, 404)
