"""
Registry authentication and authorization end to end: a local cluster
started by C{tools/speedy-cluster up --htpasswd --access}, real skopeo
pushing and pulling with credentials, and every kind of request against
every kind of caller over HTTP.
"""

import base64
import json
import os
import subprocess
import urllib.error
import urllib.request

import bcrypt
from twisted.trial.unittest import SynchronousTestCase

from speedy.test.util import require_tool
from speedy.test.test_registry_clients import (
    SharedFixture, SkopeoMixin, SpeedyLocalCluster, _started)

USERS = {"alice": "alice-password-1", "bob": "bob-password-2", "ops": "ops-password-3"}

POLICY = """
[[allow]]
users = ["anonymous"]
repositories = ["public/*"]
actions = ["pull"]

[[allow]]
users = ["*"]
repositories = ["${user}/*"]
actions = ["pull", "push", "delete"]

[[allow]]
users = ["bob"]
repositories = ["alice/*"]
actions = ["pull"]

[[allow]]
users = ["ops"]
actions = ["admin"]
"""


def _users_and_rules(workdir):
    """Write the htpasswd file of L{USERS} and the rules of L{POLICY}.
    @return: their paths."""
    users = os.path.join(workdir, "users")
    with open(users, "w") as f:
        for user, password in USERS.items():
            f.write(f"{user}:{bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=6)).decode()}\n")
    access = os.path.join(workdir, "access.toml")
    with open(access, "w") as f:
        f.write(POLICY)
    return users, access


def _cluster(workdir):
    users, access = _users_and_rules(workdir)
    return _started(SpeedyLocalCluster(workdir, ["--htpasswd", users, "--access", access]))


CLUSTER = SharedFixture(_cluster)


def creds(user):
    return f"{user}:{USERS[user]}"


def call(method, url, user=None, password=None, body=None, headers=()):
    """@return: (status, parsed JSON body or None)."""
    request = urllib.request.Request(url, method=method, data=body, headers=dict(headers))
    if user is not None:
        token = base64.b64encode(f"{user}:{USERS.get(user, '') if password is None else password}"
                                 .encode()).decode()
        request.add_header("Authorization", "Basic " + token)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            status, data = response.status, response.read()
    except urllib.error.HTTPError as e:
        status, data = e.code, e.read()
    try:
        return status, json.loads(data) if data else None
    except ValueError:
        return status, None


class AuthEndToEndTests(SkopeoMixin, SynchronousTestCase):

    cluster = CLUSTER

    def test_push_and_pull_with_credentials(self):
        """alice pushes to her repository with skopeo --dest-creds; bob may
        pull it but not push there; without credentials nothing gets in;
        ops's push to public/ is pulled by anyone."""
        self.copy_in("small", f"{self.first}/alice/small:small", "--dest-creds", creds("alice"))
        self.assertSameImage(
            self.copy_out(f"{self.second}/alice/small:small", "small", "--src-creds", creds("bob")),
            "small")
        for flags in (["--dest-creds", creds("bob")], [],
                      ["--dest-creds", "alice:not-her-password"]):
            with self.assertRaises(self.failureException):
                self.copy_in("small", f"{self.first}/alice/intruded:small", *flags)
        with self.assertRaises(self.failureException):
            self.copy_out(f"{self.first}/alice/small:small", "anonymous")
        self.copy_in("small", f"{self.first}/public/small:small", "--dest-creds", creds("ops"))
        self.assertSameImage(self.copy_out(f"{self.first}/public/small:small", "small"), "small")
        status, tags = call("GET", f"http://{self.first}/v2/alice/intruded/tags/list", "ops")
        self.assertEqual(status, 404, "a refused push left a repository behind")

    def test_catalog_lists_what_the_caller_may_pull(self):
        self.copy_in("small", f"{self.first}/alice/listed:small", "--dest-creds", creds("alice"))
        self.copy_in("small", f"{self.first}/ops/hidden:small", "--dest-creds", creds("ops"))
        url = f"http://{self.first}/v2/_catalog"
        seen = {user: set(call("GET", url, user)[1]["repositories"])
                for user in ("alice", "bob", "ops")}
        self.assertIn("alice/listed", seen["alice"] & seen["bob"] & seen["ops"])
        self.assertIn("ops/hidden", seen["ops"])
        self.assertNotIn("ops/hidden", seen["alice"] | seen["bob"])
        self.assertTrue(all(n.startswith("public/") for n in call("GET", url)[1]["repositories"]))

    def test_matrix(self):
        """Every kind of endpoint against every kind of caller: the status
        each gets, and the spec's error code in each refusal."""
        self.copy_in("small", f"{self.first}/alice/matrix:small", "--dest-creds", creds("alice"))
        base = f"http://{self.first}"
        endpoints = [
            ("GET", "/v2/"), ("GET", "/v2/alice/matrix/tags/list"),
            ("HEAD", "/v2/alice/matrix/manifests/small"),
            ("POST", "/v2/alice/matrix/blobs/uploads/"),
            ("DELETE", "/v2/alice/matrix/manifests/sha256:" + "0" * 64),
            ("GET", "/v1/files/"), ("POST", "/v1/chunks"),
            # a chunk no blob has: the admin may delete it, and harms nothing
            ("DELETE", "/v1/chunks/1/987654321"),
            ("GET", "/v1/health"),
        ]
        callers = {
            "anonymous": (None, None), "wrong password": ("alice", "wrong"),
            "unknown user": ("mallory", "x"), "read-only (bob)": ("bob", None),
            "push user (alice)": ("alice", None), "admin (ops)": ("ops", None),
        }
        refused_401 = ["anonymous", "wrong password", "unknown user"]
        for name, (user, password) in callers.items():
            for (method, path) in endpoints:
                status, body = call(method, base + path, user, password,
                                    body=b"x" if method == "POST" else None)
                if path == "/v1/health" or (name == "anonymous" and "/public/" in path):
                    self.assertEqual(status, 200, (name, path))
                elif name in refused_401:
                    self.assertEqual(status, 401, (name, method, path))
                elif name == "read-only (bob)" and (method in ("POST", "DELETE")
                                                     or path.startswith("/v1/")):
                    self.assertEqual(status, 403, (name, method, path))
                elif name == "push user (alice)" and path.startswith("/v1/"):
                    self.assertEqual(status, 403, (name, method, path))
                else:
                    self.assertNotIn(status, (401, 403), (name, method, path))
                if status in (401, 403) and path.startswith("/v2/") and method != "HEAD":
                    self.assertEqual(body["errors"][0]["code"],
                                     "UNAUTHORIZED" if status == 401 else "DENIED")

    def test_registry_v1(self):
        """The V1 API takes the same users and rules: anonymous callers are
        refused, a read-only user may read but not write, the owner may."""
        base = f"http://{self.first}/v1/repositories/alice/v1app"
        self.assertEqual(call("GET", base + "/tags")[0], 401)
        self.assertEqual(call("PUT", base + "/", "bob", body=b"[]",
                              headers={"Content-Type": "application/json"})[0], 403)
        self.assertNotIn(call("GET", base + "/tags", "bob")[0], (401, 403))
        self.assertNotIn(call("PUT", base + "/", "alice", body=b"[]",
                              headers={"Content-Type": "application/json"})[0], (401, 403))
        self.assertEqual(call("GET", f"http://{self.first}/v1/_ping")[0], 200)

    def test_bad_authorization_headers(self):
        """Huge, malformed or foreign Authorization headers get a clean 401,
        and the imageserver goes on serving."""
        url = f"http://{self.first}/v2/alice/x/tags/list"
        for header in ("Basic " + "A" * 6000, "Basic !!!", "Bearer a.b.c", "Basic",
                       "Basic " + base64.b64encode(b"no colon").decode()):
            status, body = call("GET", url, headers={"Authorization": header})
            self.assertEqual(status, 401, header[:20])
        self.assertEqual(call("GET", f"http://{self.first}/v2/", "alice")[0], 200)

    def test_skopeo_login_file(self):
        """skopeo login stores the credentials, later copies use them."""
        auth = os.path.join(self.tmp, "auth.json")
        self.skopeo("login", "--tls-verify=false", "--authfile", auth, "-u", "alice",
                    "-p", USERS["alice"], self.first)
        self.copy_in("small", f"{self.first}/alice/logged-in:small", "--authfile", auth)
        with self.assertRaises(self.failureException):
            self.skopeo("login", "--tls-verify=false", "--authfile", auth, "-u", "alice",
                        "-p", "wrong", self.first)


def run_podman(case, *args, check=True):
    """
    Run C{case.podman_path} with C{args}, its storage, runtime files and
    auth file (C{auth.json}) under C{case.tmp}; a failure fails C{case}
    unless C{check} is false.  @return: the C{CompletedProcess}.
    """
    env = dict(os.environ, HOME=case.tmp, XDG_RUNTIME_DIR=case.tmp, TMPDIR=case.tmp,
               REGISTRY_AUTH_FILE=os.path.join(case.tmp, "auth.json"))
    done = subprocess.run(
        [case.podman_path, "--root", os.path.join(case.tmp, "root"),
         "--runroot", os.path.join(case.tmp, "run"), "--storage-driver", "vfs", *args],
        env=env, capture_output=True, timeout=300)
    if check and done.returncode != 0:
        case.fail(f"podman {' '.join(args)} failed ({done.returncode}):\n"
                  f"{done.stderr.decode('utf-8', 'replace')}")
    return done


class PodmanAuthTests(SkopeoMixin, SynchronousTestCase):
    """podman logs in, pulls and pushes (a chunked PATCH, no length) with
    the users of the cluster above."""

    cluster = CLUSTER

    podman = run_podman

    def test_login_pull_push(self):
        self.podman_path = require_tool("podman")
        self.copy_in("small", f"{self.first}/alice/for-podman:small", "--dest-creds", creds("alice"))
        for registry in (self.first, self.second):  # credentials are kept per host:port
            self.podman("login", "--tls-verify=false", "-u", "bob", "-p", USERS["bob"], registry)
        self.podman("pull", "--tls-verify=false", f"{self.first}/alice/for-podman:small")
        self.podman("tag", f"{self.first}/alice/for-podman:small", f"{self.second}/bob/mine:v1",
                    f"{self.second}/alice/not-bobs:v1")
        self.podman("push", "--tls-verify=false", f"{self.second}/bob/mine:v1")
        refused = self.podman("push", "--tls-verify=false", f"{self.second}/alice/not-bobs:v1",
                              check=False)
        self.assertNotEqual(refused.returncode, 0)
        self.assertIn(b"denied", refused.stderr.lower())
        self.assertEqual(call("GET", f"http://{self.first}/v2/bob/mine/tags/list", "bob"),
                         (200, {"name": "bob/mine", "tags": ["v1"]}))
        wrong = self.podman("login", "--tls-verify=false", "-u", "bob", "-p", "wrong",
                            self.first, check=False)
        self.assertNotEqual(wrong.returncode, 0)


def _two_free_ports():
    """@return: a port P such that P and P + 1 are free (the second
    imageserver of a local cluster takes the port after the first's)."""
    import socket
    from speedy.test.processes import free_port
    while True:
        port = free_port()
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port


def _token_cluster(workdir):
    """A cluster whose imageservers take bearer tokens from the embedded
    token service of the first one."""
    from speedy.test.test_auth_tokens import pem_pair
    _, private, public = pem_pair(workdir)
    users, access = _users_and_rules(workdir)
    port = _two_free_ports()
    config = os.path.join(workdir, "token.toml")
    with open(config, "w") as f:
        f.write(f'realm = "http://127.0.0.1:{port}/token"\nservice = "speedy-e2e"\n'
                f'issuer = "speedy-e2e-issuer"\npublic_key = "{public}"\n\n[token_service]\n'
                f'private_key = "{private}"\nhtpasswd = "{users}"\naccess = "{access}"\n')
    return _started(SpeedyLocalCluster(workdir, ["--registry", f"127.0.0.1:{port}",
                                                 "--auth-token", config]))


TOKEN_CLUSTER = SharedFixture(_token_cluster)


class TokenAuthEndToEndTests(SkopeoMixin, SynchronousTestCase):
    """Docker's token flow with real clients: the registry answers 401 with
    a Bearer challenge, the client gets a token from the embedded service
    with the user's password, and pushes or pulls with it."""

    cluster = TOKEN_CLUSTER

    def test_skopeo(self):
        self.copy_in("small", f"{self.first}/alice/tok:small", "--dest-creds", creds("alice"))
        self.assertSameImage(
            self.copy_out(f"{self.second}/alice/tok:small", "small", "--src-creds", creds("bob")),
            "small")
        for flags in (["--dest-creds", creds("bob")], [],
                      ["--dest-creds", "alice:not-her-password"]):
            with self.assertRaises(self.failureException):
                self.copy_in("small", f"{self.first}/alice/tok-intruded:small", *flags)
        self.copy_in("small", f"{self.first}/public/tok:small", "--dest-creds", creds("ops"))
        self.assertSameImage(self.copy_out(f"{self.first}/public/tok:small", "small"), "small")

    def test_no_token_no_entry(self):
        """Without a token every registry call is 401 with the challenge;
        a forged or garbage token is 401 too."""
        status, body = call("GET", f"http://{self.first}/v2/alice/tok/tags/list")
        self.assertEqual((status, body["errors"][0]["code"]), (401, "UNAUTHORIZED"))
        for header in ("Bearer garbage", "Bearer " + "A" * 100, "Basic YWxpY2U6eA=="):
            self.assertEqual(call("GET", f"http://{self.first}/v2/alice/tok/tags/list",
                                  headers={"Authorization": header})[0], 401)

    def test_podman(self):
        podman = PodmanAuthTests("test_login_pull_push")
        podman.tmp, podman.podman_path = self.tmp, require_tool("podman")
        self.copy_in("small", f"{self.first}/alice/tok-podman:small", "--dest-creds", creds("alice"))
        podman.podman("login", "--tls-verify=false", "-u", "alice", "-p", USERS["alice"],
                      self.first)
        podman.podman("pull", "--tls-verify=false", f"{self.first}/alice/tok-podman:small")
        podman.podman("tag", f"{self.first}/alice/tok-podman:small",
                      f"{self.first}/alice/tok-pushed:v1")
        podman.podman("push", "--tls-verify=false", f"{self.first}/alice/tok-pushed:v1")
        self.copy_out(f"{self.first}/alice/tok-pushed:v1", "pushed", "--src-creds", creds("alice"))
