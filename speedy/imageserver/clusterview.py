# -*- test-case-name: speedy.test.test_imageserver_clusterview -*-
"""
The imageserver's picture of the cluster: which replica groups exist, which
servers are in them, which can take writes.  A L{ClusterViewPoller} keeps it
fresh by long-polling the chunkmaster and keeps the last good view while
the master is away.
"""

from attrs import field, frozen
from twisted.application.service import Service
from twisted.internet.defer import CancelledError
from twisted.logger import Logger
from zope.interface import Attribute, Interface, implementer

from speedy.records import RW

log = Logger()


@frozen
class ServerView:
    """One chunkserver as the chunkmaster last described it."""

    server_id: str
    address: str
    state: str
    free: int = 0
    read_only: bool = False
    load: dict = field(factory=dict)
    rebuilding: bool = False  # being filled: it lacks chunks, read it last


@frozen
class GroupView:
    """A replica group and its members."""

    group_id: int
    writable: bool
    servers: tuple  # of ServerView
    read_only: bool = False

    @property
    def free(self):
        """The bytes a chunk may still take on every member (the least free)."""
        return min((s.free for s in self.servers), default=0)

    def can_take(self, size):
        """
        @return: True if the master calls the group writable, every member
            is RW and not read-only, and each has room for C{size} bytes.
        """
        return (
            self.writable
            and not self.read_only
            and bool(self.servers)
            and all(s.state == RW and not s.read_only for s in self.servers)
            and self.free >= size
        )


@frozen
class ClusterView:
    """A versioned view of every replica group."""

    version: int
    groups: dict  # group_id -> GroupView

    @classmethod
    def from_json(cls, body):
        """
        Build a view from the chunkmaster's C{GET /v1/cluster} answer.

        @raise ValueError: the body does not have that shape.
        """
        try:
            groups = {}
            for g in body["groups"]:
                servers = tuple(
                    ServerView(
                        server_id=str(s["server_id"]),
                        address=str(s["address"]),
                        state=str(s["state"]),
                        free=int(s.get("free", 0)),
                        read_only=bool(s.get("read_only", False)),
                        load=dict(s.get("load") or {}),
                        rebuilding=bool(s.get("rebuilding", False)),
                    )
                    for s in g["servers"]
                )
                group_id = int(g["group_id"])
                groups[group_id] = GroupView(
                    group_id=group_id,
                    writable=bool(g["writable"]),
                    read_only=bool(g.get("read_only", False)),
                    servers=servers,
                )
            return cls(version=int(body["version"]), groups=groups)
        except (KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"not a cluster view: {e!r}")

    def writable(self, size=0):
        """@return: the groups that can take a chunk of C{size} bytes."""
        return [g for g in self.groups.values() if g.can_take(size)]


class IClusterView(Interface):
    """Where the storage path finds the current cluster view."""

    current = Attribute("The latest L{ClusterView}, or None before the first one.")


@implementer(IClusterView)
class ClusterViewPoller(Service):
    """
    Keeps C{current} up to date: long-polls the master with the version
    held (C{wait} seconds), and after an error keeps the last good view and
    tries again every C{retry} seconds.  A master that answers a long-poll
    at once is asked again no sooner than C{min_interval} seconds later.
    """

    def __init__(self, master, clock, wait=20, retry=2.0, min_interval=0.5):
        self.current = None
        self._master = master
        self._clock = clock
        self._wait = wait
        self._retry = retry
        self._min_interval = min_interval
        self._call = None
        self._request = None
        self._failing = False

    def startService(self):
        Service.startService(self)
        self._poll()

    def stopService(self):
        Service.stopService(self)
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        if self._request is not None:
            self._request.cancel()

    def _poll(self):
        self._call = None
        started = self._clock.seconds()
        etag = None if self.current is None else self.current.version
        self._request = d = self._master.cluster(
            etag=etag, wait=self._wait if etag is not None else None)
        d.addCallbacks(self._got, self._failed)
        d.addCallback(self._schedule, started)
        d.addErrback(lambda f: log.failure("cluster view poll crashed", f))

    def _got(self, view):
        self._request = None
        if self._failing:
            log.info("chunkmaster reachable again")
            self._failing = False
        if view is not None:  # a view other than ours, even an older one: a restarted master
            self.current = view
        return self._min_interval

    def _failed(self, failure):
        self._request = None
        if failure.check(CancelledError) or not self.running:
            return None
        if not self._failing:
            log.warn("cluster view poll failed, keeping view {version}: {why}",
                     version=None if self.current is None else self.current.version,
                     why=failure.getErrorMessage())
            self._failing = True
        return self._retry

    def _schedule(self, delay, started):
        if delay is None or not self.running:
            return
        elapsed = self._clock.seconds() - started
        self._call = self._clock.callLater(max(0.0, delay - elapsed), self._poll)
