# -*- test-case-name: speedy.test.test_admin -*-
"""
C{speedy-admin registry-v1}: the Docker Registry V1 tables at a glance:
repositories, tags, complete images and their layers' bytes, and pushes
that did not complete (whose layers expire a day after their JSON's PUT).
"""

from twisted.python import usage

from speedy.admin.output import human_size, table


class RegistryV1Options(usage.Options):
    synopsis = "[--json]"
    longdesc = ("Show the Docker Registry V1 totals: repositories, tags, complete images and "
                "their layers, and unfinished pushes (their layers expire after a day).")


async def run(client, options, context):
    summary = await client.get("/v1/admin/registry-v1")
    context.show(summary, render)
    return 0


def render(summary):
    """@return: the lines of the V1 totals."""
    return table(["what", "count", "bytes"], [
        ["repositories", summary["repositories"], None],
        ["tags", summary["tags"], None],
        ["images", summary["images"], human_size(summary["layer_bytes"])],
        ["unfinished pushes", summary["unfinished"], None],
        ["  with a layer", summary["unfinished_layers"],
         human_size(summary["unfinished_layer_bytes"])],
    ])
