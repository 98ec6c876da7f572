"""
Real clients with credentials over TLS: a local cluster started with
C{speedy-cluster up --tls --htpasswd} (HTTP Basic) and one with C{--tls
--htpasswd --auth token} (bearer tokens from the token service it makes
for itself), and podman and skopeo logging in, pushing and pulling while
trusting the throwaway CA (C{--cert-dir}), never C{--tls-verify=false}.
"""

import os

from twisted.trial.unittest import SynchronousTestCase

from speedy.test.test_auth_e2e import USERS, _users_and_rules, creds, run_podman
from speedy.test.test_registry_clients import (
    SharedFixture, SkopeoMixin, SpeedyLocalCluster, _started)
from speedy.test.util import require_tool


def _tls_cluster(auth):
    def make(workdir):
        users, access = _users_and_rules(workdir)
        return _started(SpeedyLocalCluster(
            workdir, ["--tls", "--htpasswd", users, "--access", access, "--auth", auth]))
    return make


BASIC_TLS = SharedFixture(_tls_cluster("htpasswd"))
TOKEN_TLS = SharedFixture(_tls_cluster("token"))


class _ClientsOverTLS(SkopeoMixin):
    """podman and skopeo against C{cluster}, trusting its CA."""

    def setUp(self):
        SkopeoMixin.setUp(self)
        self.podman_path = require_tool("podman")
        self.ca_dir = os.path.join(self.registry.var, "tls", "ca")
        self.auth_file = os.path.join(self.tmp, "auth.json")

    podman = run_podman

    def test_skopeo_and_podman(self):
        """skopeo pushes with --dest-creds, podman logs in, pulls, pushes to
        the user's own repository and is denied another's; skopeo pulls
        with the auth file podman wrote; a wrong password and a client that
        does not trust the CA are refused."""
        reference = f"{self.first}/alice/tls:small"
        self.skopeo("copy", "--dest-cert-dir", self.ca_dir, "--preserve-digests",
                    "--dest-creds", creds("alice"), f"oci:{self.layout.path}:small",
                    f"docker://{reference}")
        self.podman("login", "--cert-dir", self.ca_dir, "-u", "bob", "-p", USERS["bob"],
                    self.first)
        self.podman("pull", "--cert-dir", self.ca_dir, reference)
        self.podman("tag", reference, f"{self.first}/bob/mine:v1", f"{self.first}/alice/not-bobs:v1")
        self.podman("push", "--cert-dir", self.ca_dir, f"{self.first}/bob/mine:v1")
        refused = self.podman("push", "--cert-dir", self.ca_dir,
                              f"{self.first}/alice/not-bobs:v1", check=False)
        self.assertNotEqual(refused.returncode, 0)
        self.skopeo("copy", "--src-cert-dir", self.ca_dir, "--authfile", self.auth_file,
                    f"docker://{self.first}/bob/mine:v1",
                    f"oci:{os.path.join(self.tmp, 'mine')}:v1")
        target = os.path.join(self.tmp, "copy")
        self.skopeo("copy", "--src-cert-dir", self.ca_dir, "--preserve-digests",
                    "--src-creds", creds("bob"), f"docker://{reference}", f"oci:{target}:small")
        self.assertSameImage(target, "small")
        wrong = self.podman("login", "--cert-dir", self.ca_dir, "-u", "bob", "-p", "wrong",
                            self.first, check=False)
        self.assertNotEqual(wrong.returncode, 0)
        untrusting = self.podman("login", "-u", "bob", "-p", USERS["bob"], self.first,
                                 check=False)
        self.assertNotEqual(untrusting.returncode, 0)
        self.assertIn(b"certificate", untrusting.stderr)


class BasicOverTLSTests(_ClientsOverTLS, SynchronousTestCase):
    cluster = BASIC_TLS


class TokenOverTLSTests(_ClientsOverTLS, SynchronousTestCase):
    """The token flow: the realm is the first imageserver's https /token,
    with the key pair and configuration C{up --auth token} made."""

    cluster = TOKEN_TLS

    def test_token_files_private(self):
        secrets = os.path.join(self.registry.var, "secrets")
        for name in ("token.key", "token.toml"):
            self.assertEqual(os.stat(os.path.join(secrets, name)).st_mode & 0o077, 0)
