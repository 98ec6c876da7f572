# -*- test-case-name: speedy.test.test_health -*-
"""
Who is in the cluster and where each member's health checks answer, as the
chunkmaster knows it: C{GET /v1/admin/members}, what C{speedy-admin health}
probes.

    {"chunkservers": [{"server_id", "group_id", "address", "state", "lost",
                       "heartbeat_age", "health"}],
     "imageservers": [{"name", "address", "seen_ago", "health"}]}

C{health} is the base URL (C{http://host:port}) of the member's C{/healthz}
and C{/readyz}, or null: a chunkserver sends it with each heartbeat when it
has a C{--metrics} listener (its wire port speaks no HTTP), an imageserver
with each poll of the cluster view (its C{--metrics} listener, else its
registry listener).  Chunkservers come from the cluster (every registered
one, DOWN ones too), imageservers from those that polled the view in the
last five minutes (L{speedy.monitoring.dashboard.Peers}).  Both are kept in
memory only: a chunkmaster that just started knows a chunkserver's health
URL from its first heartbeat on.
"""


class Members:
    """
    The chunkmaster's list of members and their health URLs.

    @param clock: provides C{seconds()}.
    @param cluster: the L{speedy.chunkmaster.cluster.Cluster}.
    @param peers: the L{speedy.monitoring.dashboard.Peers}, or None.
    """

    def __init__(self, clock, cluster, peers=None):
        self._clock = clock
        self._cluster = cluster
        self._peers = peers
        self._health = {}  # server_id -> base URL

    def heard(self, report):
        """Note where the chunkserver of a heartbeat (a
        L{speedy.chunkmaster.messages.Heartbeat}) says its health checks
        answer."""
        if report.health is None:
            self._health.pop(report.server_id, None)
        else:
            self._health[report.server_id] = report.health

    def listing(self):
        """@return: the JSON-ready members (the module docstring)."""
        now = self._clock.seconds()
        chunkservers, known = [], set()
        for group in self._cluster.view()["groups"]:
            for server in group["servers"]:
                known.add(server["server_id"])
                chunkservers.append({
                    "server_id": server["server_id"], "group_id": group["group_id"],
                    "address": server["address"], "state": server["state"],
                    "lost": server["lost"],
                    "heartbeat_age": (round(now - server["last_heartbeat"], 1)
                                      if server["last_heartbeat"] else None),
                    "health": self._health.get(server["server_id"]),
                })
        for server_id in set(self._health) - known:  # removed by an operator
            del self._health[server_id]
        imageservers = [] if self._peers is None else [
            {"name": peer["name"], "address": peer["address"], "seen_ago": peer["seen_ago"],
             "health": peer["health"]} for peer in self._peers.seen()]
        return {"chunkservers": chunkservers, "imageservers": imageservers}
