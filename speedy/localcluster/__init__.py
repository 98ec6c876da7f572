# -*- test-case-name: speedy.test.test_localcluster -*-
"""
A whole Speedy cluster on one machine, for development and end-to-end tests:
what C{make run} and C{tools/speedy-cluster} run.

C{up} starts the roles in dependency order, each only once the one before
is healthy:

    1. the chunkmaster         healthy: C{GET /readyz} answers 200 C{{"ready": true}}
                               (it has loaded the cluster from its database)
    2. every chunkserver       healthy: C{GET /readyz} of its own C{--metrics}
                               listener answers 200 (its store is open); with
                               C{--metrics-port none}, its wire port accepts
                               connections
    3. every imageserver       healthy: C{GET /readyz} of its own C{--metrics}
    worker                     listener answers 200 and its C{cluster_view}
                               check counts C{writable_groups} >= 1; and it
                               listens on its shared registry port itself

then prints the registry address and runs until Ctrl-C or SIGTERM, when it
stops the roles in reverse order (SIGTERM, then SIGKILL after a grace
period).  If a role exits or stays unhealthy while starting, the roles
already started are stopped and C{up} fails with the tail of that role's log.

Everything lives under the var directory (C{./var} by default)::

    cluster.json          the state file: supervisor pid, each role's pid,
                          address, health URL and log (read by status/down)
    metadata.sqlite       the metadata store every role shares
    chunkserver-N/        each chunkserver's data dir
    logs/ROLE.log         each role's twistd log (ROLE.stderr beside it)

With C{--imageserver-workers N} above 1, each registry port is served by N
imageserver processes (C{imageserver-1.1}, C{imageserver-1.2}, ...) that all
listen on it with the C{reuseport:} endpoint (L{speedy.endpoints}): the
kernel spreads the clients' connections over them, so a registry uses up to
N cores.  Clients see one registry; any worker continues any upload, since
upload sessions live in the metadata store.  Linux only.  Each worker (and
each chunkserver) has a C{--metrics} listener of its own (C{/metrics},
C{/healthz}, C{/readyz} of that process alone; ports from C{--metrics-port},
recorded in the state file), and a worker names itself to the chunkmaster
as C{host:port pid N} (the dashboard, C{speedy-admin health}).

Each role runs as C{python -c "...; twistd.run()" -n --pidfile= --logfile
LOG PLUGIN ...} in a process group of its own, so a Ctrl-C in the terminal
reaches only the supervisor, which then stops the roles in order.

The parts, one module each: C{plan} (roles, ports, command lines),
C{health} (health checks), C{state} (the state file), C{supervisor} (the
process that runs the roles), C{recorded} (C{status} and C{down} from
another process), C{cli} (the command line).  This package re-exports
what other code uses.
"""

from speedy.localcluster.cli import Options, UpOptions, main, samples_directory
from speedy.localcluster.health import Health, HealthProbe, listening_ports
from speedy.localcluster.plan import (
    DEFAULT_IMAGESERVER_WORKERS, METADATA_FILE, STATE_FILE, ClusterError, ClusterPlan, Role,
    RoleFailed, pick_free_port)
from speedy.localcluster.recorded import process_matches, report_status, stop_recorded
from speedy.localcluster.state import read_state, role_from_state, state_path
from speedy.localcluster.supervisor import LocalCluster, RoleProcess, exit_text

__all__ = [
    "DEFAULT_IMAGESERVER_WORKERS", "METADATA_FILE", "STATE_FILE", "ClusterError", "ClusterPlan",
    "Health", "HealthProbe", "LocalCluster", "Options", "Role", "RoleFailed", "RoleProcess",
    "UpOptions", "exit_text", "listening_ports", "main", "pick_free_port", "process_matches",
    "read_state", "report_status", "role_from_state", "samples_directory", "state_path",
    "stop_recorded"]
