# -*- test-case-name: speedy.test.test_admin -*-
"""
C{speedy-admin status}: the cluster at a glance: every server with its
group, state, capacity and fill; every group with its writability.
"""

from twisted.python import usage

from speedy.admin.output import human_size, table


class StatusOptions(usage.Options):
    synopsis = "[--json]"
    longdesc = "Show every chunkserver and replica group, their state and fill."


def fill_percent(server):
    """@return: how full a server is, in percent of its capacity, or None."""
    capacity = server.get("capacity") or 0
    if capacity <= 0:
        return None
    return 100.0 * (capacity - (server.get("free") or 0)) / capacity


def group_state(group):
    """@return: one word for a group: writable, read-only, rebuilding,
    degraded or down."""
    states = [s.get("state") for s in group.get("servers", ())]
    if states and all(state == "DOWN" for state in states):
        return "down"
    if any(s.get("rebuilding") for s in group.get("servers", ())):
        return "rebuilding"
    if any(state != "RW" and state != "RO" for state in states):
        return "degraded"
    if group.get("writable"):
        return "writable"
    return "read-only"


def summarize(view):
    """@return: the JSON-ready status of a cluster view."""
    groups = []
    for group in view.get("groups", ()):
        servers = group.get("servers", ())
        groups.append({
            "group_id": group["group_id"],
            "state": group_state(group),
            "writable": bool(group.get("writable")),
            "read_only": bool(group.get("read_only")),
            "servers_up": sum(1 for s in servers if s.get("state") in ("RW", "RO")),
            "servers": len(servers),
            "capacity": sum(s.get("capacity") or 0 for s in servers),
            "free": min((s.get("free") or 0 for s in servers), default=0),
        })
    return {
        "version": view.get("version"),
        "groups": groups,
        "servers": [dict(server, group_id=group["group_id"], fill=fill_percent(server))
                    for group in view.get("groups", ()) for server in group.get("servers", ())],
        "writable_groups": sum(1 for g in groups if g["writable"]),
    }


def render(status):
    """@return: the lines an operator reads on a terminal."""
    lines = table(
        ["SERVER", "GROUP", "ADDRESS", "STATE", "CAPACITY", "FREE", "FILL"],
        [[s["server_id"], s["group_id"], s["address"], s["state"], human_size(s.get("capacity")),
          human_size(s.get("free")), "-" if s["fill"] is None else f"{s['fill']:.1f}%"]
         for s in status["servers"]])
    lines.append("")
    lines += table(
        ["GROUP", "STATE", "UP", "CAPACITY", "FREE"],
        [[g["group_id"], g["state"], f"{g['servers_up']}/{g['servers']}",
          human_size(g["capacity"]), human_size(g["free"])] for g in status["groups"]])
    lines.append("")
    lines.append(f"{len(status['servers'])} servers, {len(status['groups'])} groups, "
                 f"{status['writable_groups']} writable (cluster view {status['version']})")
    lost = [s["server_id"] for s in status["servers"] if s.get("lost")]
    rebuilding = [f"{r['server_id']} ({r['chunks_done']}/{r['chunks_total']})"
                  for r in status.get("rebuilds", ())]
    lines.append(f"repairs queued: {status.get('repairs_queued', 0)}"
                 + (f"; rebuilding: {', '.join(rebuilding)}" if rebuilding else "")
                 + (f"; LOST, replace them: {', '.join(lost)}" if lost else ""))
    return lines


async def run(client, options, context):
    """Print the status; @return: the exit code (0)."""
    status = summarize(await client.get("/v1/admin/cluster"))
    repairs = await client.get("/v1/admin/repairs")
    status["repairs_queued"] = repairs["queued"]
    status["rebuilds"] = [r for r in repairs["rebuilds"] if r["state"] != "done"]
    context.show(status, render)
    return 0
