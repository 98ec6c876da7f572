# -*- test-case-name: speedy.test.test_admin -*-
"""
Where C{speedy-admin} finds the chunkmaster and its admin token.

In order: C{--master URL}, else the local cluster's state file under
C{--var DIR} (what C{speedy-cluster up} wrote); the token from
C{--token-file PATH}, else C{$SPEEDY_ADMIN_TOKEN}, else the state file.
The token never comes from the command line, where C{ps} shows it.
"""

import os

from attrs import frozen

TOKEN_ENVIRONMENT = "SPEEDY_ADMIN_TOKEN"


class TargetError(Exception):
    """No chunkmaster or no admin token could be found."""


@frozen
class Target:
    """A chunkmaster's URL and the admin token to present to it."""

    master: str
    token: str = ""


def find_target(master=None, token_file=None, var=None, environ=os.environ, read_state=None):
    """
    @param read_state: C{read_state(var)} returning a local cluster's state
        dict or None (L{speedy.localcluster.read_state} by default).
    @return: the L{Target} the options and environment name.
    @raise TargetError: there is no master URL or no token.
    """
    state = None
    if var is not None and (master is None or (token_file is None
                                               and not environ.get(TOKEN_ENVIRONMENT))):
        if read_state is None:
            from speedy.localcluster import read_state
        try:
            state = read_state(var)
        except Exception as e:
            raise TargetError(str(e))
        if state is None:
            raise TargetError(f"no local cluster state under {var} (is 'speedy-cluster up' running?)")
    if master is None and state is not None:
        master = _master_from_state(state)
    if master is None:
        raise TargetError("say where the chunkmaster is: --master URL, or --var DIR of a local cluster")
    if token_file is not None:
        try:
            with open(token_file, encoding="utf-8") as f:
                token = f.read().strip()
        except OSError as e:
            raise TargetError(f"cannot read the admin token file: {e}")
    elif environ.get(TOKEN_ENVIRONMENT):
        token = environ[TOKEN_ENVIRONMENT].strip()
    elif state is not None and state.get("admin_token"):
        token = state["admin_token"]
    else:
        raise TargetError(f"no admin token: --token-file PATH, ${TOKEN_ENVIRONMENT}, or --var DIR")
    if not token:
        raise TargetError("the admin token is empty")
    return Target(master, token)


def _master_from_state(state):
    for role in state.get("roles", ()):
        if role.get("plugin") == "speedy-chunkmaster":
            scheme = "https" if str(role.get("health_url", "")).startswith("https:") else "http"
            return f"{scheme}://{role['address']}"
    raise TargetError("the local cluster's state file names no chunkmaster")
