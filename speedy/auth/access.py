# -*- test-case-name: speedy.test.test_auth -*-
"""
Who may do what: an access-control file of allow rules, in TOML.

    [[allow]]
    users = ["anonymous"]            # no credentials
    repositories = ["public/*"]
    actions = ["pull"]

    [[allow]]
    users = ["*"]                    # every user of the htpasswd file
    repositories = ["library/*", "${user}/*"]
    actions = ["pull", "push"]

    [[allow]]
    users = ["ops"]
    actions = ["admin"]              # everything: every repository, the
                                     # catalog of all, the file and chunk APIs

Actions are C{pull}, C{push}, C{delete} and C{admin}.  A repository pattern
is a shell pattern over the whole name (C{*} also crosses slashes);
C{${user}} stands for the caller's name.  Rules only allow: a request is
allowed when some rule allows it.  Without a file, every user of the
htpasswd file may pull, push and delete everywhere, and nobody else
anything; the file and chunk APIs need C{admin}.
"""

import fnmatch
import functools
import tomllib

from attrs import frozen

ACTIONS = ("pull", "push", "delete", "admin")
#: Who has no credentials.
ANONYMOUS = "anonymous"
#: In C{users}: every user who logged in.
ANY_USER = "*"


class AccessError(ValueError):
    """The access-control file cannot be used."""


@frozen
class Rule:
    users: tuple
    repositories: tuple
    actions: tuple

    def covers(self, user):
        if user is None:
            return ANONYMOUS in self.users
        return ANY_USER in self.users or user in self.users

    def allows(self, user, action, repository):
        if not self.covers(user):
            return False
        if "admin" in self.actions:
            return True
        if action not in self.actions or repository is None:
            return False
        return any(fnmatch.fnmatchcase(repository, pattern.replace("${user}", user or ""))
                   for pattern in self.repositories)


class AccessPolicy:
    """The allow rules (see the module docstring)."""

    def __init__(self, rules):
        self.rules = tuple(rules)
        self.allows = functools.lru_cache(maxsize=4096)(self._allows)

    @classmethod
    def default(cls):
        """Every logged-in user may pull, push and delete everywhere."""
        return cls([Rule((ANY_USER,), ("*",), ("pull", "push", "delete"))])

    @classmethod
    def load(cls, path):
        """@return: the policy of the TOML file at C{path}.
        @raise AccessError: it is unreadable or malformed."""
        try:
            with open(path, "rb") as f:
                document = tomllib.load(f)
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise AccessError(f"{path}: {e}")
        unknown = set(document) - {"allow"}
        if unknown:
            raise AccessError(f"{path}: unknown tables {sorted(unknown)} (only [[allow]])")
        rules = []
        for number, entry in enumerate(document.get("allow", []), 1):
            where = f"{path}: [[allow]] number {number}"
            if not isinstance(entry, dict) or set(entry) - {"users", "repositories", "actions"}:
                raise AccessError(f"{where}: only users, repositories and actions")
            fields = {}
            for key in ("users", "repositories", "actions"):
                value = entry.get(key, [] if key == "repositories" else None)
                if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                    raise AccessError(f"{where}: {key} must be a list of strings")
                fields[key] = tuple(value)
            bad = set(fields["actions"]) - set(ACTIONS)
            if bad:
                raise AccessError(f"{where}: unknown actions {sorted(bad)} (known: {ACTIONS})")
            rules.append(Rule(**fields))
        return cls(rules)

    def _allows(self, user, action, repository=None):
        """@return: whether C{user} (None: anonymous) may do C{action} to
        C{repository} (None: not about a repository, e.g. the file API).
        (As C{allows}, which remembers the last answers.)"""
        return any(rule.allows(user, action, repository) for rule in self.rules)

    def may_pull(self, user):
        """@return: a predicate on repository names: what C{user} may pull
        (for the catalog)."""
        return lambda repository: self.allows(user, "pull", repository)

    def is_admin(self, user):
        return any(rule.covers(user) and "admin" in rule.actions for rule in self.rules)
