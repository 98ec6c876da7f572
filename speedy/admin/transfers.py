# -*- test-case-name: speedy.test.test_admin -*-
"""
The online data transfer subcommands of C{speedy-admin}:

    drain [--wait] group|server ID      move every chunk out of a group
    rebalance [--spread R] [--wait]     fullest group to the emptiest
    transfers [--cancel ID] [--wait]    every transfer and its progress
"""

from twisted.internet.task import deferLater
from twisted.python import usage

from speedy.admin.output import ProgressBar, human_duration, human_size, table

#: Seconds between polls while waiting.
POLL = 1.0


def _flags_last(options):
    options = list(options or ())
    return ([a for a in options if a.startswith("-")]
            + [a for a in options if not a.startswith("-")])


class DrainOptions(usage.Options):
    synopsis = "[--wait] group GROUP_ID | server SERVER_ID"
    longdesc = ("Empty a replica group while it serves: it takes no more writes, and each of "
                "its chunks is copied to another writable group, every reference switched, and "
                "its old copies deleted after the chunkmaster's --transfer-delete-delay.  "
                "'server ID' drains the server's whole group (to replace one server of a "
                "healthy group, use replace-server).  Once the transfer is done the group's "
                "servers hold no live chunk and can be removed.")
    optFlags = [["wait", None, "wait until the transfer is done, with a progress bar"]]

    def parseOptions(self, options=None):
        super().parseOptions(_flags_last(options))

    def parseArgs(self, what, ident):
        if what not in ("group", "server"):
            raise usage.UsageError("say 'group GROUP_ID' or 'server SERVER_ID'")
        if what == "group":
            try:
                ident = int(ident)
            except ValueError:
                raise usage.UsageError(f"a group id is a number, not {ident!r}")
        self["what"], self["id"] = what, ident


async def drain(client, options, context):
    body = {"kind": "drain", f"{options['what']}_id": options["id"]}
    answer = await client.post("/v1/admin/transfers", body)
    transfer = answer["transfer"]
    if not context.json:
        context.out(f"transfer {transfer['transfer_id']}: draining group "
                    f"{transfer['source_group']}")
    return await _follow(client, context, transfer["transfer_id"], options["wait"])


class RebalanceOptions(usage.Options):
    synopsis = "[--spread RATIO] [--wait]"
    longdesc = ("Move chunks from the fullest writable group to the emptiest until their fill "
                "ratios meet (run it again for more than two groups).  Nothing is moved when "
                "the fill ratios differ by no more than --spread.")
    optFlags = [["wait", None, "wait until the transfer is done, with a progress bar"]]
    optParameters = [["spread", None, 0.1, "the fill ratio difference tolerated (0.1: ten "
                                           "points)", float]]


async def rebalance(client, options, context):
    answer = await client.post("/v1/admin/transfers",
                               {"kind": "rebalance", "spread": options["spread"]})
    if answer["transfer"] is None:
        context.show(answer, lambda a: ["the groups are balanced: nothing to move"])
        return 0
    transfer = answer["transfer"]
    if not context.json:
        context.out(f"transfer {transfer['transfer_id']}: {human_size(transfer['byte_budget'])} "
                    f"from group {transfer['source_group']} to {transfer['target_groups']}")
    return await _follow(client, context, transfer["transfer_id"], options["wait"])


class TransfersOptions(usage.Options):
    synopsis = "[--cancel TRANSFER_ID] [--wait]"
    longdesc = ("Show every drain and rebalance with its progress: chunks moved and left, "
                "bytes, rate, time left, old copies waiting for their delete.  --cancel stops "
                "one (chunks already moved stay moved).")
    optFlags = [["wait", None, "wait until no transfer runs"]]
    optParameters = [["cancel", None, None, "the transfer to cancel"]]


async def transfers(client, options, context):
    if options["cancel"]:
        await client.delete(f"/v1/admin/transfers/{options['cancel']}")
    if options["wait"]:
        return await _follow(client, context, None, True)
    status = await client.get("/v1/admin/transfers")
    context.show(status, _render)
    return 0


def _active(status, transfer_id):
    return [t for t in status["transfers"] if t["state"] in ("running", "deleting")
            and (transfer_id is None or t["transfer_id"] == transfer_id)]


async def _follow(client, context, transfer_id, wait):
    status = await client.get("/v1/admin/transfers")
    bar = None
    while wait and _active(status, transfer_id):
        active = _active(status, transfer_id)
        done = sum(t["chunks_done"] for t in active)
        total = done + sum(t["chunks_left"] for t in active)
        if bar is None:
            bar = ProgressBar(context.err, total, "transfer ")
        bar.total = total
        rate = sum(t["rate"] for t in active)
        pending = sum(t["old_copies_pending"] for t in active)
        bar.update(done, f"{human_size(rate)}/s"
                   + (f", {pending} old copies to delete" if pending else ""))
        await deferLater(context.reactor, POLL, lambda: None)
        status = await client.get("/v1/admin/transfers")
    if bar is not None:
        bar.finish()
    if transfer_id is not None:
        status = dict(status, transfers=[t for t in status["transfers"]
                                         if t["transfer_id"] == transfer_id])
    context.show(status, _render)
    return 0


def _render(status):
    if not status["transfers"]:
        return ["no transfers"]
    return table(
        ["TRANSFER", "KIND", "FROM", "TO", "STATE", "CHUNKS", "MOVED", "RATE", "ETA",
         "OLD COPIES"],
        [[t["transfer_id"], t["kind"], t["source_group"],
          ",".join(str(g) for g in t["target_groups"]) or "any", t["state"],
          f"{t['chunks_done']}/{t['chunks_done'] + t['chunks_left']}",
          human_size(t["bytes_done"]), f"{human_size(t['rate'])}/s", human_duration(t["eta"]),
          t["old_copies_pending"]] for t in status["transfers"]])
