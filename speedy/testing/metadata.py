# -*- test-case-name: speedy.test.test_testing,speedy.test.test_chunkmaster_cluster -*-
"""
L{OutageStore}: the in-memory metadata store with a database that can go
away, for tests of what the chunkmaster does through an outage.
"""

from twisted.internet.defer import fail

from speedy.errors import Unavailable
from speedy.metadata.memory import MemoryMetadataStore


def _outage(name):
    """@return: C{MemoryMetadataStore.<name>}, recorded, and failing with
    L{Unavailable} while the store is down."""
    method = getattr(MemoryMetadataStore, name)

    def call(self, *args, **kwargs):
        self.calls.append(name)
        if self.down:
            return fail(Unavailable("the database is down"))
        return method(self, *args, **kwargs)

    call.__name__ = name
    return call


class OutageStore(MemoryMetadataStore):
    """
    A L{MemoryMetadataStore} whose database can go away: while C{down} is
    true, every cluster call fails with L{Unavailable} and changes nothing.

    @ivar calls: the names of the cluster calls made, in order.
    """

    down = False

    def __init__(self, clock):
        super().__init__(clock)
        self.calls = []

    start = _outage("start")
    upsert_server = _outage("upsert_server")
    get_server = _outage("get_server")
    list_servers = _outage("list_servers")
    remove_server = _outage("remove_server")
    upsert_group = _outage("upsert_group")
    list_groups = _outage("list_groups")
    allocate_file_ids = _outage("allocate_file_ids")
    v1_summary = _outage("v1_summary")  # what the admin API reads of the V1 tables
