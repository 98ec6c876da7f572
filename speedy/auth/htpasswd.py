# -*- test-case-name: speedy.test.test_auth -*-
"""
Users and passwords from an htpasswd file of bcrypt entries (the format
C{htpasswd -B} writes, as Distribution requires), checked through
C{twisted.cred}: L{HtpasswdChecker} is an C{ICredentialsChecker} of
C{IUsernamePassword}, L{users_portal} the portal whose avatars are user
names.

bcrypt costs a quarter of a second per check by design, so a check runs
in a thread and a check that passed is remembered (L{VerifiedCache}) for a
while: a client sends its credentials with every request, and the second
request of a user costs a dictionary lookup.  The cache keeps only a MAC
of the user and password (keyed BLAKE2b, under a key made at start: never
the password; a few times cheaper than OpenSSL 3's HMAC-SHA256, paid on
every request), forgets an entry after C{ttl} seconds, holds at most
C{size} entries, and is emptied when the file changes (looked at once a
second at most).  Failed checks are not remembered:
a wrong password costs a bcrypt check every time, which is the point of
bcrypt.
"""

import hashlib
import os
from collections import OrderedDict

import bcrypt
from twisted.cred import credentials, error
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.portal import IRealm, Portal
from twisted.internet.defer import fail, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from zope.interface import Interface, implementer

log = Logger()

#: Seconds a verified password is remembered.
VERIFIED_TTL = 300.0
#: The most verified passwords remembered.
VERIFIED_SIZE = 10_000
#: Seconds between looks at whether the file changed.
RELOAD_INTERVAL = 1.0


class HtpasswdError(ValueError):
    """The htpasswd file cannot be used."""


def read_htpasswd(path):
    """
    @return: {user: bcrypt hash (bytes)} of the file at C{path}; lines of
        other hash kinds are skipped with a warning.
    @raise HtpasswdError: it cannot be read, or holds no bcrypt entry.
    """
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise HtpasswdError(f"{path}: {e}")
    users = {}
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, hashed = line.partition(":")
        if not sep or not user:
            raise HtpasswdError(f"{path}:{number}: not a user:hash line")
        if not hashed.startswith(("$2y$", "$2b$", "$2a$")):
            log.warn("{path}:{number}: {user} is skipped: not a bcrypt entry (htpasswd -B)",
                     path=path, number=number, user=user)
            continue
        users[user] = hashed.encode("ascii")
    if not users:
        raise HtpasswdError(f"{path}: no bcrypt entry (make them with htpasswd -B)")
    return users


class VerifiedCache:
    """Passwords that passed their check lately (see the module docstring)."""

    def __init__(self, clock, ttl=VERIFIED_TTL, size=VERIFIED_SIZE):
        self._clock = clock
        self._ttl = ttl
        self._size = size
        self._key = os.urandom(32)
        self._entries = OrderedDict()  # MAC -> expiry

    def _mac(self, user, password):
        """@return: the keyed BLAKE2b of the user and password (the user's
        length first, so that no other pair gives the same message)."""
        return hashlib.blake2b(len(user).to_bytes(4, "big") + user + password, key=self._key,
                               digest_size=32).digest()

    def __contains__(self, user_password):
        mac = self._mac(*user_password)
        expiry = self._entries.get(mac)
        if expiry is None:
            return False
        if expiry < self._clock.seconds():
            del self._entries[mac]
            return False
        return True

    def add(self, user, password):
        self._entries[self._mac(user, password)] = self._clock.seconds() + self._ttl
        while len(self._entries) > self._size:
            self._entries.popitem(last=False)

    def clear(self):
        self._entries.clear()


@implementer(ICredentialsChecker)
class HtpasswdChecker:
    """
    Checks C{IUsernamePassword} credentials against the htpasswd file at
    C{path}, read again when it changes (its size or modification time).

    @param threadpool: where bcrypt runs (the reactor's by default).
    """

    credentialInterfaces = (credentials.IUsernamePassword,)

    def __init__(self, path, clock, reactor=None, threadpool=None):
        self.path = path
        self._clock = clock
        if reactor is None:
            from twisted.internet import reactor
        self._reactor = reactor
        self._threadpool = threadpool
        self.verified = VerifiedCache(clock)
        self._stamp = None
        self._looked = None  # when the file was last looked at
        self._users = {}
        self._load()

    def _load(self):
        """Read the file again if it changed (looking at most once every
        L{RELOAD_INTERVAL} seconds).  @raise HtpasswdError: at start only;
        later a broken file is logged and the last good one kept."""
        now = self._clock.seconds()
        if self._looked is not None and now - self._looked < RELOAD_INTERVAL:
            return
        self._looked = now
        try:
            info = os.stat(self.path)
        except OSError as e:
            if self._stamp is None:
                raise HtpasswdError(f"{self.path}: {e}")
            return
        stamp = (info.st_mtime_ns, info.st_size, info.st_ino)
        if stamp == self._stamp:
            return
        try:
            users = read_htpasswd(self.path)
        except HtpasswdError:
            if self._stamp is None:
                raise
            log.failure("keeping the users read before", path=self.path)
            return
        self._users, self._stamp = users, stamp
        self.verified.clear()

    def known(self, username, password):
        """@return: True if C{username}'s C{password} passed its check
        lately (no bcrypt, no thread); False if it must be checked."""
        self._load()
        return (username, password) in self.verified

    def requestAvatarId(self, creds):
        """@return: a Deferred firing with the user name, or failing with
        C{UnauthorizedLogin}."""
        username, password = creds.username, creds.password
        if isinstance(username, str):
            username = username.encode("utf-8")
        if isinstance(password, str):
            password = password.encode("utf-8")
        if self.known(username, password):
            return succeed(username.decode("utf-8"))
        hashed = self._users.get(username.decode("utf-8", "replace"))
        if hashed is None:
            # As slow as a wrong password, so that names cannot be probed.
            hashed, username = _DECOY, None
        pool = self._threadpool or self._reactor.getThreadPool()
        d = deferToThreadPool(self._reactor, pool, bcrypt.checkpw, password, hashed)

        def checked(ok):
            if not ok or username is None:
                return fail(error.UnauthorizedLogin("unknown user or wrong password"))
            self.verified.add(username, password)
            return username.decode("utf-8")
        return d.addCallback(checked)


_DECOY = bcrypt.hashpw(b"decoy", bcrypt.gensalt(rounds=10))


class IUserName(Interface):
    """The avatar of a logged-in user: its name (a C{str})."""


@implementer(IRealm)
class _UserNames:
    """The avatar of a user is its name."""

    def requestAvatar(self, avatar_id, mind, *interfaces):
        return interfaces[0], avatar_id, lambda: None


def users_portal(checker):
    """@return: the C{Portal} logging users in with C{checker}; its avatars
    are user names (L{IUserName})."""
    return Portal(_UserNames(), [checker])
