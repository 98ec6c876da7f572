# -*- test-case-name: speedy.test.test_admin -*-
"""
The self-healing subcommands of C{speedy-admin}:

    fsck [--repair] [--verify]        check every chunk list against the groups
    repair [--run] [--wait]           the repair queue and the rebuilds
    replace-server [--wait] OLD NEW NEW_HOST:PORT
                                      put a new server in a lost one's place
"""

from twisted.internet.task import deferLater
from twisted.python import usage

from speedy.admin.output import ProgressBar, human_duration, human_size, table

#: Seconds between polls while waiting for work on the chunkmaster.
POLL = 1.0


class FsckOptions(usage.Options):
    synopsis = "[--repair] [--verify]"
    longdesc = ("Compare every chunk list in the metadata store with what each member of each "
                "group holds: missing, damaged, under-replicated, lost and orphaned chunks.  "
                "Exit code 1 when something is wrong.")
    optFlags = [
        ["repair", None, "queue what is missing or damaged for repair"],
        ["verify", None, "read every copy back from its disk (slow) instead of comparing "
                         "the chunkservers' indexes"],
    ]


async def fsck(client, options, context):
    await client.post("/v1/admin/fsck", {"repair": bool(options["repair"]),
                                         "verify": bool(options["verify"])})
    state = await _wait_for_fsck(client, context)
    context.show(state, _render_fsck)
    if state["state"] != "done":
        return 1
    return 0 if state["report"]["clean"] else 1


async def _wait_for_fsck(client, context):
    bar = None
    while True:
        state = await client.get("/v1/admin/fsck")
        progress = state.get("progress") or {}
        if state["state"] != "running":
            if bar is not None:
                bar.finish()
            return state
        if bar is None and progress.get("chunks"):
            bar = ProgressBar(context.err, progress["chunks"], "fsck ")
        if bar is not None:
            bar.update(progress.get("chunks_done", 0),
                       f"group {progress.get('groups_done', 0)}/{progress.get('groups', 0)}")
        await deferLater(context.reactor, POLL, lambda: None)


def _render_fsck(state):
    if state["state"] != "done":
        return [f"fsck {state['state']}: {state.get('error', '')}"]
    report = state["report"]
    lines = table(["FINDING", "COUNT"], [[kind.replace("_", "-"), report[kind]["count"]]
                                        for kind in ("missing", "damaged", "under_replicated",
                                                     "lost", "orphaned", "unreachable")])
    for kind in ("lost", "damaged", "missing", "orphaned", "unreachable"):
        items = report[kind]["items"]
        if items:
            lines.append("")
            lines.append(f"{kind} (first {len(items)} of {report[kind]['count']}):")
            lines += ["  " + ", ".join(f"{k}={v}" for k, v in item.items()) for item in items[:20]]
    lines.append("")
    checked = report["progress"]["chunks_done"]
    verdict = "clean" if report["clean"] else "problems found"
    lines.append(f"{checked} chunks checked in {report['progress']['groups']} groups: {verdict}"
                 + (f"; {report['repairs_queued']} repairs queued" if report["repairs_queued"]
                    else ""))
    return lines


class RepairOptions(usage.Options):
    synopsis = "[--run] [--wait]"
    longdesc = ("Show the repair queue (replicas found bad or missing), what was repaired, and "
                "the group rebuilds under way.  --run works the queue now; --wait waits until "
                "the queue is empty and no rebuild runs.")
    optFlags = [["run", None, "work the queue now"],
                ["wait", None, "wait until nothing is left to repair"]]


async def repair(client, options, context):
    status = await client.post("/v1/admin/repairs") if options["run"] else \
        await client.get("/v1/admin/repairs")
    if options["wait"]:
        status = await _wait_for_repairs(client, context, status)
    context.show(status, _render_repairs)
    return 0 if not status["queued"] and not _rebuilding(status) else 1


def _rebuilding(status):
    return [r for r in status["rebuilds"] if r["state"] != "done"]


async def _wait_for_repairs(client, context, status):
    bar = None
    while status["queued"] or _rebuilding(status):
        rebuilds = _rebuilding(status)
        if rebuilds:
            total = sum(r["chunks_total"] for r in rebuilds)
            done = sum(r["chunks_done"] for r in rebuilds)
            rate = sum(r["rate"] for r in rebuilds)
            if bar is None:
                bar = ProgressBar(context.err, total, "rebuild ")
            bar.total = total
            bar.update(done, f"{human_size(rate)}/s")
        await deferLater(context.reactor, POLL, lambda: None)
        status = await client.get("/v1/admin/repairs")
    if bar is not None:
        bar.finish()
    return status


def _render_repairs(status):
    counters = status["counters"]
    lines = [f"queued: {status['queued']}, repairing now: {status['repairing']}",
             f"since start: {counters['repaired']} repaired, {counters['found_good']} found good, "
             f"{counters['gone']} gone, {counters['failed']} failed tries, "
             f"{human_size(counters['bytes'])} copied"]
    if status.get("lost"):
        lines.append("lost servers (replace them): " + ", ".join(status["lost"]))
    if status["rebuilds"]:
        lines.append("")
        lines += table(
            ["SERVER", "GROUP", "STATE", "CHUNKS", "COPIED", "RATE", "ETA"],
            [[r["server_id"], r["group_id"], r["state"],
              f"{r['chunks_done']}/{r['chunks_total']}", human_size(r["bytes_done"]),
              f"{human_size(r['rate'])}/s", human_duration(r["eta"])]
             for r in status["rebuilds"]])
    return lines


class ReplaceOptions(usage.Options):
    synopsis = "[--wait] OLD_SERVER_ID NEW_SERVER_ID NEW_HOST:PORT"
    longdesc = ("Put a new chunkserver in the place of a lost (or leaving) member of a group.  "
                "The old one is removed for good; the new one is filled from the other members "
                "while the group keeps serving reads, and the group takes writes again once "
                "it holds every chunk.  Start the new chunkserver with the group's --group-id, "
                "NEW_SERVER_ID as --server-id and listening at NEW_HOST:PORT.")
    optFlags = [["wait", None, "wait until the new server is rebuilt, with a progress bar"]]

    def parseOptions(self, options=None):
        # Flags may come after the arguments too (it takes no option values).
        options = list(options or ())
        super().parseOptions([a for a in options if a.startswith("-")]
                             + [a for a in options if not a.startswith("-")])

    def parseArgs(self, old, new, address):
        self["old"], self["new"], self["address"] = old, new, address


async def replace_server(client, options, context):
    server = await client.post(f"/v1/admin/servers/{options['old']}/replace",
                               {"server_id": options["new"], "address": options["address"]})
    context.out(f"{server['server_id']} replaces {options['old']} in group "
                f"{server['group_id']}; rebuilding")
    if not options["wait"]:
        return 0
    status = await _wait_for_repairs(client, context, await client.get("/v1/admin/repairs"))
    context.show(status, _render_repairs)
    return 0
