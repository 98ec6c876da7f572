"""
Tests for L{speedy.localcluster.tokens} and C{speedy-cluster up --auth}:
the token service a local cluster makes for itself.
"""

import os
import stat

from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from speedy.auth.tokens import TokenConfig
from speedy.localcluster.cli import UpOptions
from speedy.localcluster.tokens import ISSUER, SERVICE, write_token_service


class WriteTokenServiceTests(SynchronousTestCase):

    def test_key_and_configuration(self):
        """A signing key, its public key and a configuration the
        imageservers load, every file 0600 in a 0700 directory; the
        configuration names the realm, the users and the rules."""
        base = os.path.abspath(self.mktemp())
        os.makedirs(base)
        users, rules = os.path.join(base, "users"), os.path.join(base, 'rules "x".toml')
        directory = os.path.join(base, "secrets")
        path = write_token_service(directory, "https://127.0.0.1:5000/token", users, rules)
        self.assertEqual(stat.S_IMODE(os.stat(directory).st_mode), 0o700)
        for name in ("token.key", "token.pub", "token.toml"):
            self.assertEqual(stat.S_IMODE(os.stat(os.path.join(directory, name)).st_mode), 0o600)
        config = TokenConfig.load(path)
        self.assertEqual((config.realm, config.service, config.issuer, config.htpasswd,
                          config.access),
                         ("https://127.0.0.1:5000/token", SERVICE, ISSUER, users, rules))
        self.assertEqual(config.private_key.public_key().public_numbers(),
                         config.public_key.public_numbers())

    def test_new_key_each_time(self):
        directory = self.mktemp()
        keys = [TokenConfig.load(write_token_service(directory, "http://h/token", "u"))
                .public_key.public_numbers() for _ in range(2)]
        self.assertNotEqual(keys[0], keys[1])
        self.assertIsNone(TokenConfig.load(os.path.join(directory, "token.toml")).access)


class AuthOptionTests(SynchronousTestCase):

    def parse(self, *args):
        options = UpOptions()
        options.parseOptions(list(args))
        return options["auth"]

    def test_defaults(self):
        self.assertEqual(self.parse(), "none")
        self.assertEqual(self.parse("--htpasswd", "u"), "htpasswd")
        self.assertEqual(self.parse("--htpasswd", "u", "--auth", "token"), "token")

    def test_refused(self):
        for args in (["--auth", "token"], ["--auth", "htpasswd"], ["--auth", "ldap"],
                     ["--auth", "none", "--htpasswd", "u"],
                     ["--auth", "token", "--htpasswd", "u", "--auth-token", "t.toml"]):
            with self.assertRaises(usage.UsageError, msg=args):
                self.parse(*args)
