# -*- test-case-name: speedy.test.test_admin -*-
"""
C{speedy-admin gc}: the garbage collector on the chunkmaster (the mark and
sweep of the registry's tables, then the chunk collector).

    gc              run a round now and wait for it (a progress bar on a terminal)
    gc --dry-run    what a round would delete now: manifests, blobs, chunks and bytes
    gc --status     the collector's settings, the last round and the totals
"""

from twisted.internet.task import deferLater
from twisted.python import usage

from speedy.admin.output import ProgressBar, human_duration, human_size, table

#: Seconds between polls while a round runs.
POLL = 0.5


class GCOptions(usage.Options):
    synopsis = "[--dry-run | --status]"
    longdesc = ("Delete the blobs no manifest references (and, under the chunkmaster's "
                "--gc-delete policies, the manifests nothing keeps) from the metadata store, "
                "then, from every member of their groups, the chunks recorded as garbage "
                "(collected or deleted blobs, deleted files, failed writes) longer than the "
                "grace period ago, and wait until done.  The chunkmaster also does it every "
                "--gc-period.")
    optFlags = [
        ["dry-run", "n", "show what would be deleted now, and delete nothing"],
        ["status", "s", "show the last round, the totals and the settings"],
    ]

    def postOptions(self):
        if self["dry-run"] and self["status"]:
            raise usage.UsageError("--dry-run and --status do not go together")


async def run(client, options, context):
    if options["status"]:
        context.show(await client.get("/v1/admin/gc"), render_status)
        return 0
    if options["dry-run"]:
        context.show(await client.post("/v1/admin/gc", {"dry_run": True}), render_dry_run)
        return 0
    status = await client.post("/v1/admin/gc", {"dry_run": False})
    status = await _wait(client, context, status)
    context.show(status, render_status)
    return 0


async def _wait(client, context, status):
    """Poll until no round runs; draw the chunks deleted so far."""
    bar = None
    while status["running"]:
        current = status["current"] or {}
        if bar is None and current.get("chunks_due"):
            bar = ProgressBar(context.err, current["chunks_due"], "gc ")
        if bar is not None:
            bar.update(current.get("chunks_deleted", 0) + current.get("chunks_kept", 0),
                   f"{human_size(current.get('bytes_deleted', 0))} deleted")
        await deferLater(context.reactor, POLL, lambda: None)
        status = await client.get("/v1/admin/gc")
    if bar is not None:
        bar.finish()
    return status


def render_dry_run(run):
    """@return: the lines of a dry run."""
    rows = []
    sweep = run.get("sweep")
    if sweep is not None:
        rows.append(["blobs no manifest references: " + str(sweep["blobs"]),
                     sweep["blob_chunks"], human_size(sweep["blob_bytes"])])
    rows += [
        ["garbage chunks due (would be deleted)", run["chunks_deleted"],
         human_size(run["bytes_deleted"])],
        ["garbage chunks in the grace period", run["chunks_waiting"],
         human_size(run["bytes_waiting"])],
    ]
    lines = table(["WOULD BE FREED", "CHUNKS", "BYTES"], rows)
    if sweep is not None and sweep["manifests"]:
        lines.append(f"and {sweep['manifests']} manifests (the policies); the blobs above "
                     "count those only they reference")
    return lines


def render_status(status):
    """@return: the lines of the collector's status."""
    lines = [f"grace {human_duration(status['grace'])}, a round every "
             + (human_duration(status["period"]) if status["period"] else "- (off)")
             + (", a round is running" if status["running"] else "")]
    sweep = status.get("sweep")
    if sweep is not None:
        policies = [p for p in ("untagged", "orphans") if sweep.get(p)]
        lines.append(f"blobs no manifest references: collected {human_duration(sweep['grace'])} "
                     "after their last push; manifests: "
                     + (", ".join(policies) if policies else "kept (no --gc-delete policy)"))
    last = status["last"]
    lines.append("")
    if last is None:
        lines.append("no round has finished since the chunkmaster started")
    else:
        sweep = last.get("sweep")
        rows = []
        if sweep is not None:
            rows.append([f"blobs collected: {sweep['blobs']} (+ {sweep['manifests']} manifests)",
                         sweep["blob_chunks"], human_size(sweep["blob_bytes"])])
        lines += table(["LAST ROUND", "CHUNKS", "BYTES"], rows + [
            ["deleted", last["chunks_deleted"], human_size(last["bytes_deleted"])],
            ["kept (a member did not delete)", last["chunks_kept"], None],
            ["in the grace period", last["chunks_waiting"], human_size(last["bytes_waiting"])],
        ])
        lines.append(f"took {human_duration(last['duration'])}")
    totals = status["totals"]
    lines.append(f"since start: {totals['runs']} rounds, {totals.get('blobs_deleted', 0)} blobs "
                 f"and {totals.get('manifests_deleted', 0)} manifests collected, "
                 f"{totals['chunks_deleted']} chunks, {human_size(totals['bytes_deleted'])} "
                 "deleted")
    return lines
