# -*- test-case-name: speedy.test.test_localcluster_recorded -*-
"""
The state file (C{VAR/cluster.json}): what C{up} records of the roles it
started, for C{status}, C{down} and C{speedy-admin --var}.
"""

import json
import os


from speedy.localcluster.plan import STATE_FILE, ClusterError, Role


def state_path(var):
    return os.path.join(os.path.abspath(var), STATE_FILE)


def read_state(var):
    """
    @return: the state file of the cluster under C{var} as a dict, or None
        when there is none.
    @raise ClusterError: the file is there but is not a cluster state.
    """
    try:
        with open(state_path(var), "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        return None
    try:
        state = json.loads(raw)
        if not isinstance(state, dict) or not isinstance(state.get("roles"), list):
            raise ValueError("no roles")
        for role in state["roles"]:
            int(role["pid"]), str(role["name"]), str(role["plugin"])
        int(state["supervisor_pid"])
    except (ValueError, TypeError, KeyError) as e:
        raise ClusterError(f"{state_path(var)} is not a cluster state file ({e}); remove it")
    return state


def _write_state(var, state):
    """Write the state file, readable by this user only: it holds the
    admin token."""
    path = state_path(var)
    descriptor = os.open(path + ".new", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as f:
        f.write(json.dumps(state, indent=2).encode("utf-8"))
    os.replace(path + ".new", path)


def role_from_state(entry):
    """@return: the L{Role} a state file entry describes (for health checks)."""
    host, _, port = entry["address"].rpartition(":")
    return Role(entry["name"], entry["plugin"], (), host, int(port), entry.get("health_url"),
                bool(entry.get("needs_writable_group")), bool(entry.get("shares_port")))
