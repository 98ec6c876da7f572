# -*- test-case-name: speedy.test.test_chunk_client -*-
"""
L{RequestTimings}: how long each chunkserver takes to answer, and how often
it fails, as the client that asked sees it (queueing, connecting and the
transfer included).  The imageserver exposes these per chunkserver, so an
operator can tell the one slow or failing member of a group from the rest.

Kept as plain numbers on the reactor thread (no lock); turned into
Prometheus families only when scraped
(L{speedy.monitoring.collectors.ImageserverCollector}).
"""

from collections import Counter

from twisted.internet.defer import CancelledError
from twisted.python.failure import Failure

from speedy.monitoring.buckets import Buckets
from speedy.wire.frames import (
    OP_CHAIN_PUT, OP_COMPACT, OP_DELETE, OP_GET, OP_LIST, OP_PING, OP_PUT, OP_STAT, OP_STATUS,
    OP_VERIFY)

#: opcode -> the name it has as a label.
OPERATIONS = {
    OP_PUT: "put", OP_GET: "get", OP_STAT: "stat", OP_DELETE: "delete", OP_PING: "ping",
    OP_STATUS: "status", OP_LIST: "list", OP_COMPACT: "compact", OP_VERIFY: "verify",
    OP_CHAIN_PUT: "chain_put",
}

#: Upper bounds, in seconds, of a chunk request's duration: from a small
#: stat on loopback to a 16 MiB chunk on a slow link.
CHUNK_REQUEST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                         1.0, 2.5, 5.0, 10.0, 30.0)


class RequestTimings:
    """
    Durations of answered requests and counts of failed ones, by chunkserver
    address and operation.  Labels stay bounded: addresses are the
    cluster's members, operations the protocol's opcodes, and errors the
    names of the exception classes the client raises.

    @ivar durations: C{(address, operation)} -> L{Buckets} of answered
        requests.
    @ivar errors: C{(address, operation, error)} -> failed requests.
    """

    def __init__(self, bounds=CHUNK_REQUEST_BUCKETS):
        self._bounds = bounds
        self.durations = {}
        self.errors = Counter()

    def observe(self, address, operation, seconds):
        """Record a request for C{operation} (a name of L{OPERATIONS})
        answered after C{seconds}."""
        key = (address, operation)
        buckets = self.durations.get(key)
        if buckets is None:
            buckets = self.durations[key] = Buckets(self._bounds)
        buckets.observe(seconds)

    def settled(self, result, address, operation, seconds):
        """
        Record how a request ended: answered after C{seconds}, or failed
        with the L{Failure} C{result}.  For C{addBoth}: @return: C{result}.
        """
        if isinstance(result, Failure):
            self.failed(address, operation, result.value)
        else:
            self.observe(address, operation, seconds)
        return result

    def failed(self, address, operation, error):
        """Record a request for C{operation} that failed with the
        exception C{error}.  A request its caller cancelled (a client
        gone, a read that failed over elsewhere) is no failure of the
        chunkserver's, and is not counted."""
        if isinstance(error, CancelledError):
            return
        self.errors[(address, operation, type(error).__name__)] += 1
