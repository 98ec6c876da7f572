# -*- test-case-name: speedy.test.test_testing,speedy.test.test_imageserver_clusterview -*-
"""
A cluster view the test sets (L{StaticClusterView}, for
L{speedy.imageserver.clusterview.IClusterView}) and L{make_view} to build
one from a map of groups to addresses.
"""

from zope.interface import implementer

from speedy.imageserver.clusterview import ClusterView, GroupView, IClusterView, ServerView
from speedy.records import RW


def make_view(groups, version=1, free=1 << 40, writable=True):
    """
    Build a L{ClusterView}: C{groups} maps a group id to its member
    addresses; every server is RW with C{free} bytes, server ids are
    C{"cs-<address>"}.
    """
    return ClusterView(
        version=version,
        groups={
            group_id: GroupView(
                group_id=group_id,
                writable=writable,
                servers=tuple(ServerView(f"cs-{a}", a, RW, free=free) for a in addresses),
            )
            for group_id, addresses in groups.items()
        },
    )


@implementer(IClusterView)
class StaticClusterView:
    """An L{IClusterView} that holds whatever view the test sets."""

    def __init__(self, current=None):
        self.current = current
