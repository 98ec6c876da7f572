# -*- test-case-name: speedy.test.test_chunkmaster_cluster -*-
"""
The chunkmaster's model of the cluster: which chunkservers exist, what state
each is in, which replica groups can take writes, and a versioned view of
all that for the imageservers.

Membership (which server, in which group, at which address; a group's
read-only flag; a drained server) lives in the metadata store and is written
there I{before} it changes in memory, so a failed write changes nothing.
Liveness (INIT, RW, RO, DOWN) lives in memory, rebuilt from heartbeats after
a restart; its changes are copied to the store best-effort, for operators.

The view's version increases on every change that matters to an
imageserver: a server's state, membership, a group's writability.  Capacity
and load numbers change with nearly every heartbeat; they are published by
a version increase at most every C{publish_interval} seconds.
"""

from attrs import evolve
from twisted.internet.defer import Deferred, DeferredLock, succeed
from twisted.logger import Logger

from speedy.chunkmaster.states import DRAIN, TIMEOUT, next_state, report_event
from speedy.errors import BadRequest, NotFound
from speedy.records import DOWN, DRAINING, INIT, RW, GroupRecord, ServerRecord


class UnknownServer(NotFound):
    """An admin call named a server the chunkmaster does not know."""


class ServerRemoved(BadRequest):
    """A server an operator removed heartbeats: it stays out until an
    operator adds it again."""

    error_code = "SERVER_REMOVED"


class Cluster:
    """
    Servers, groups, heartbeat timers and the versioned view.

    Mutating methods are C{async} and must not be cancelled by callers: a
    store write, once started, is always followed by the matching change in
    memory.
    """

    log = Logger()

    def __init__(self, store, clock, heartbeat_timeout=15.0, group_size=3,
                 reserve=16 << 20, publish_interval=5.0, lost_after=3600.0,
                 stall_tolerance=2.0):
        """
        @param store: the L{speedy.interfaces.IClusterTables} of the
            metadata store.
        @param clock: an L{twisted.internet.interfaces.IReactorTime}.
        @param heartbeat_timeout: seconds of silence after which a server
            is DOWN.
        @param group_size: members a group needs to be writable, and the
            most it may have.
        @param reserve: a server with this many free bytes or fewer is RO.
        @param publish_interval: changed capacity and load numbers alone
            increase the version at most once every this many seconds.
        @param lost_after: seconds a server stays DOWN before it is shown
            as lost: to be replaced (L{replace_server}).
        @param stall_tolerance: a heartbeat timer that fires this many
            seconds late or more means the chunkmaster itself stalled (a
            pause, a VM freeze): the servers get a fresh timeout instead of
            being marked DOWN for heartbeats it could not hear.
        """
        self._store = store
        self._clock = clock
        self.heartbeat_timeout = heartbeat_timeout
        self.group_size = group_size
        self.reserve = reserve
        self.publish_interval = publish_interval
        self._servers = {}  # server_id -> ServerRecord
        self._groups = {}  # group_id -> GroupRecord
        self._addresses = {}  # address -> server_id
        self._members = {}  # group_id -> set of server ids
        self._timers = {}  # server_id -> DelayedCall marking it DOWN
        self._deadlines = {}  # server_id -> when its DOWN timer is due
        self.lost_after = lost_after
        self.stall_tolerance = stall_tolerance
        self._lost_timers = {}  # server_id -> DelayedCall marking it lost
        self._lost = set()  # ids of servers DOWN for longer than lost_after
        self._removed = set()  # ids of servers an operator removed
        self._waiters = {}  # Deferred -> DelayedCall of its wait timeout
        #: serialises membership changes with their store writes
        self._lock = DeferredLock()
        self._unsaved = set()  # server ids whose liveness is not in the store yet
        self._saving = False
        self._version = 0
        self._version_time = 0.0
        self._view = None
        #: pending while numbers changed that no version published yet
        self._publish_call = None
        #: heartbeats taken since the start (a metric)
        self.heartbeats = 0

    @property
    def version(self):
        """The current view version: increases on every change, and is at
        least the clock's time in milliseconds, so it keeps increasing
        across restarts."""
        return self._version

    def server(self, server_id):
        """@return: the L{ServerRecord} of C{server_id}, or None."""
        return self._servers.get(server_id)

    def group(self, group_id):
        """@return: the L{GroupRecord} of C{group_id}, or None."""
        return self._groups.get(group_id)

    def members(self, group_id):
        """@return: the L{ServerRecord}s of group C{group_id}, by id."""
        return [self._servers[server_id] for server_id in sorted(self._members.get(group_id, ()))]

    def servers(self):
        """@return: every L{ServerRecord}, by id."""
        return [server for _, server in sorted(self._servers.items())]

    def is_lost(self, server_id):
        """@return: True if the server has been DOWN for C{lost_after}."""
        return server_id in self._lost

    async def load(self):
        """
        Read servers and groups from the store.  Drained servers stay
        DRAINING; every other one starts INIT and turns DOWN unless it
        heartbeats within the heartbeat timeout.
        """
        groups = await self._store.list_groups()
        servers = await self._store.list_servers()
        self._removed = set(await self._store.removed_servers())
        for group in groups:
            self._groups[group.group_id] = group
        for server in servers:
            if server.state != DRAINING:
                server = evolve(server, state=INIT)
            self._put(server)
        self._changed()

    async def refresh(self):
        """
        Take in the membership changes another chunkmaster sharing the
        database made: servers added or removed, groups set read-only,
        rebuilds begun or ended, drains.  Liveness stays this chunkmaster's
        own, from the heartbeats it hears.
        """
        groups = await self._store.list_groups()
        servers = await self._store.list_servers()
        removed = await self._store.removed_servers()
        async with self._lock:
            changed = False
            for group in groups:
                if self._groups.get(group.group_id) != group:
                    self._groups[group.group_id] = group
                    changed = True
            stored = {server.server_id: server for server in servers}
            for server_id in [s for s in self._servers if s not in stored and s in removed]:
                self._forget(server_id)
                changed = True
            for server_id, server in stored.items():
                current = self._servers.get(server_id)
                if current is None:
                    if server.address in self._addresses:
                        continue  # an address change not heard of yet
                    self._put(evolve(server, state=DRAINING if server.state == DRAINING else INIT))
                    changed = True
                elif current.rebuilding != server.rebuilding or (
                        server.state == DRAINING and current.state != DRAINING):
                    state = DRAINING if server.state == DRAINING else current.state
                    self._put(evolve(current, rebuilding=server.rebuilding, state=state))
                    changed = True
            self._removed |= removed
            if changed:
                self.log.info("took in membership changes from the database")
                self._changed()

    def stop(self):
        """
        Cancel every timer and answer every long-poll waiter with the
        current version.
        """
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        for timer in self._lost_timers.values():
            timer.cancel()
        self._lost_timers.clear()
        self._cancel_publish()
        self._wake_waiters()

    # --- heartbeats ---------------------------------------------------------

    async def heartbeat(self, report):
        """
        Take a L{speedy.chunkmaster.messages.Heartbeat}.  A server heard of
        for the first time, or moved to a new address, is recorded in the
        store first.

        @return: the server's state after the report.
        @raise BadRequest: the server belongs to another group, its address
            is another server's, or its group is full.
        @raise ServerRemoved: an operator removed it.
        @raise Unavailable: the store could not record a new server.
        """
        self.heartbeats += 1
        if report.server_id in self._removed:
            raise ServerRemoved(f"server {report.server_id} was removed by an operator; "
                                "add it again (POST /v1/admin/servers) to bring it back")
        current = self._servers.get(report.server_id)
        if current is not None and (current.group_id, current.address) == (report.group_id, report.address):
            return self._apply_report(current, report)
        async with self._lock:
            return await self._register_reporting(report)

    def _reported(self, current, report):
        """@return: C{current} as C{report} changes it."""
        return evolve(
            current, address=report.address,
            state=next_state(current.state, report_event(report.read_only, report.free, self.reserve)),
            capacity=report.capacity, used=report.used, free=report.free,
            read_only=report.read_only, load=report.load, last_heartbeat=self._clock.seconds())

    def _apply_report(self, current, report):
        server = self._reported(current, report)
        self._put(server)
        if server.state != current.state:
            self.log.info("server {server_id} is {state} (was {previous})",
                          server_id=server.server_id, state=server.state, previous=current.state)
            self._changed()
            self._save_later(server.server_id)
        else:
            self._publish_later()
        return server.state

    async def _register_reporting(self, report):
        current = self._servers.get(report.server_id)
        if current is None:
            self._check_room(report.group_id)
            current = ServerRecord(report.server_id, report.group_id, report.address)
        elif current.group_id != report.group_id:
            raise BadRequest(
                f"server {report.server_id} belongs to group {current.group_id}, not {report.group_id}")
        elif current.address == report.address:
            # registered while this report waited for the lock
            return self._apply_report(current, report)
        self._check_address(report.server_id, report.address)
        await self._ensure_group(report.group_id)
        server = self._reported(current, report)
        await self._store.upsert_server(server)
        self.log.info("server {server_id} of group {group_id} at {address} is {state}",
                      server_id=server.server_id, group_id=server.group_id,
                      address=server.address, state=server.state)
        self._put(server, replaced=self._servers.get(server.server_id))
        self._changed()
        return server.state

    def _timed_out(self, server_id):
        del self._timers[server_id]
        late = self._clock.seconds() - self._deadlines.pop(server_id)
        if late >= self.stall_tolerance:
            # We were not running when it was due: nobody could be heard.
            self.log.warn("the chunkmaster stalled for {late:.1f}s: giving server {server_id} "
                          "a new heartbeat timeout", late=late, server_id=server_id)
            self._arm(server_id)
            return
        current = self._servers[server_id]
        state = next_state(current.state, TIMEOUT)
        if state != current.state:
            self.log.warn("server {server_id} missed heartbeats for {timeout}s: {state}",
                          server_id=server_id, timeout=self.heartbeat_timeout, state=state)
            self._servers[server_id] = evolve(current, state=state)
            self._changed()
            self._save_later(server_id)
            self._lost_timers[server_id] = self._clock.callLater(
                self.lost_after, self._lost_now, server_id)

    def _lost_now(self, server_id):
        del self._lost_timers[server_id]
        server = self._servers.get(server_id)
        if server is not None and server.state == DOWN:
            self.log.error("server {server_id} of group {group_id} has been DOWN for {seconds}s:"
                           " replace it (speedy-admin replace-server)", server_id=server_id,
                           group_id=server.group_id, seconds=self.lost_after)
            self._lost.add(server_id)
            self._changed()

    # --- admin calls --------------------------------------------------------

    async def add_server(self, server_id, group_id, address):
        """
        Register a server by hand, in state INIT until it heartbeats.

        @return: C{(record, created)}; registering an identical server again
            returns it with C{created} False.
        @raise BadRequest: the id is registered with another group or
            address, the address is taken, or the group is full.
        @raise Unavailable: the store is down.
        """
        async with self._lock:
            current = self._servers.get(server_id)
            if current is not None:
                if (current.group_id, current.address) != (group_id, address):
                    raise BadRequest(
                        f"server {server_id} is registered in group {current.group_id} at "
                        f"{current.address}; remove it first")
                return current, False
            self._check_address(server_id, address)
            self._check_room(group_id)
            await self._ensure_group(group_id)
            server = ServerRecord(server_id, group_id, address)
            await self._store.upsert_server(server)
            self._removed.discard(server_id)
            self.log.info("server {server_id} added to group {group_id} at {address}",
                          server_id=server_id, group_id=group_id, address=address)
            self._put(server)
            self._changed()
            return server, True

    async def remove_server(self, server_id):
        """
        Forget a server (from the store first).

        @raise UnknownServer: no such server.
        @raise Unavailable: the store is down.
        """
        async with self._lock:
            self._known(server_id)
            await self._store.remove_server(server_id)
            server = self._forget(server_id)
            self.log.info("server {server_id} removed from group {group_id}",
                          server_id=server_id, group_id=server.group_id)
            self._changed()

    async def replace_server(self, old_id, new_id, address):
        """
        Replace group member C{old_id} (lost, or leaving) by a new server
        C{new_id} at C{address}: the old one is removed (it stays out), the
        new one joins its group as INIT and I{rebuilding}, so the group
        takes no writes until the repair has copied every chunk of the
        group onto it (L{finish_rebuild}).  Reads skip it meanwhile.

        @return: the new server's L{ServerRecord}.
        @raise UnknownServer: no server C{old_id}.
        @raise BadRequest: C{new_id} is already a member somewhere, or
            another server (not C{old_id}) has C{address}.
        @raise Unavailable: the store is down.
        """
        async with self._lock:
            old = self._known(old_id)
            if new_id in self._servers:
                raise BadRequest(f"server {new_id} is already registered; remove it first")
            owner = self._addresses.get(address)
            if owner is not None and owner != old_id:
                raise BadRequest(f"address {address} belongs to server {owner}")
            server = ServerRecord(new_id, old.group_id, address, rebuilding=True)
            await self._store.remove_server(old_id)
            await self._store.upsert_server(server)
            self._forget(old_id)
            self._removed.discard(new_id)
            self._put(server)
            self.log.info("server {new_id} at {address} replaces {old_id} in group {group_id};"
                          " rebuilding", new_id=new_id, address=address, old_id=old_id,
                          group_id=old.group_id)
            self._changed()
            return server

    async def finish_rebuild(self, server_id):
        """
        A rebuilt server holds every chunk of its group: it takes part in
        writes and reads like the others from now on.

        @raise UnknownServer: no such server.
        @raise Unavailable: the store is down.
        """
        async with self._lock:
            current = self._known(server_id)
            if not current.rebuilding:
                return
            await self._store.upsert_server(evolve(current, rebuilding=False))
            self._servers[server_id] = evolve(self._servers[server_id], rebuilding=False)
            self.log.info("server {server_id} is rebuilt: group {group_id} is whole again",
                          server_id=server_id, group_id=current.group_id)
            self._changed()

    def _forget(self, server_id):
        """Drop a removed server from memory.  @return: its record."""
        server = self._servers.pop(server_id)
        del self._addresses[server.address]
        self._members[server.group_id].discard(server_id)
        for timers in (self._timers, self._lost_timers):
            timer = timers.pop(server_id, None)
            if timer is not None:
                timer.cancel()
        self._deadlines.pop(server_id, None)
        self._lost.discard(server_id)
        self._removed.add(server_id)
        return server

    async def drain_server(self, server_id):
        """
        Mark a server DRAINING: its group takes no more writes, and it stays
        DRAINING until removed.

        @return: the server's new L{ServerRecord}.
        @raise UnknownServer: no such server.
        @raise Unavailable: the store is down.
        """
        async with self._lock:
            current = self._known(server_id)
            state = next_state(current.state, DRAIN)
            if state == current.state:
                return current
            await self._store.upsert_server(evolve(current, state=state))
            server = evolve(self._servers[server_id], state=state)
            self._put(server)
            self.log.info("server {server_id} is draining", server_id=server_id)
            self._changed()
            return server

    async def set_group_read_only(self, group_id, read_only):
        """
        Create group C{group_id} if it is new, and set its admin read-only
        flag.

        @return: the group's new L{GroupRecord}.
        @raise Unavailable: the store is down.
        """
        async with self._lock:
            current = self._groups.get(group_id)
            if current is not None and current.read_only == read_only:
                return current
            group = evolve(current or self._new_group(group_id), read_only=read_only)
            await self._store.upsert_group(group)
            self._groups[group_id] = group
            self.log.info("group {group_id} read_only={read_only}", group_id=group_id, read_only=read_only)
            self._changed()
            return group

    # --- the view -----------------------------------------------------------

    def writable(self, group_id):
        """
        @return: True if group C{group_id} can take writes: it has
            C{group_size} members, all RW (so each above the reserve), and
            an admin has not set it read-only.
        """
        group = self._groups.get(group_id)
        members = self._members.get(group_id, ())
        return (
            not (group and group.read_only)
            and len(members) == self.group_size
            and all(self._servers[server_id].state == RW and not self._servers[server_id].rebuilding
                    for server_id in members))

    def view(self):
        """
        @return: the JSON-ready cluster view of the current version, the same
            object until the version changes: C{{"version", "groups": [{"group_id",
            "writable", "read_only", "servers": [...]}]}}, ordered by ids.
        """
        if self._view is None:
            groups = []
            for group_id in sorted(self._groups.keys() | self._members.keys()):
                group = self._groups.get(group_id)
                groups.append({
                    "group_id": group_id,
                    "writable": self.writable(group_id),
                    "read_only": bool(group and group.read_only),
                    "servers": [_server_json(self._servers[server_id], server_id in self._lost)
                                for server_id in sorted(self._members.get(group_id, ()))],
                })
            self._view = {"version": self._version, "groups": groups}
        return self._view

    def wait_for_change(self, version, timeout):
        """
        @return: a Deferred firing with the current version once it differs
            from C{version}, or after C{timeout} seconds, or when the cluster
            stops; at once if it already differs.  Cancelling it removes the
            waiter and its timer.
        """
        if version != self._version or timeout <= 0:
            return succeed(self._version)

        def cancel(waiter):
            self._waiters.pop(waiter).cancel()

        def expire():
            del self._waiters[waiter]
            waiter.callback(self._version)

        waiter = Deferred(cancel)
        self._waiters[waiter] = self._clock.callLater(timeout, expire)
        return waiter

    # --- internals ------------------------------------------------------------

    def _known(self, server_id):
        try:
            return self._servers[server_id]
        except KeyError:
            raise UnknownServer(f"no server {server_id!r}") from None

    def _check_address(self, server_id, address):
        owner = self._addresses.get(address)
        if owner is not None and owner != server_id:
            raise BadRequest(f"address {address} belongs to server {owner}")

    def _check_room(self, group_id):
        members = len(self._members.get(group_id, ()))
        if members >= self.group_size:
            raise BadRequest(f"group {group_id} already has {members} members")

    def _new_group(self, group_id):
        return GroupRecord(group_id, created=self._clock.seconds())

    async def _ensure_group(self, group_id):
        if group_id not in self._groups:
            group = self._new_group(group_id)
            await self._store.upsert_group(group)
            self._groups[group_id] = group

    def _put(self, server, replaced=None):
        """Keep C{server} in memory (replacing C{replaced}, if its address
        moved) and arm its heartbeat timer unless it is DRAINING."""
        if replaced is not None and replaced.address != server.address:
            del self._addresses[replaced.address]
        self._servers[server.server_id] = server
        self._addresses[server.address] = server.server_id
        self._members.setdefault(server.group_id, set()).add(server.server_id)
        lost = self._lost_timers.pop(server.server_id, None)
        if lost is not None:
            lost.cancel()
        if server.server_id in self._lost and server.state != DOWN:
            self._lost.discard(server.server_id)
            self._view = None
        timer = self._timers.get(server.server_id)
        if server.state == DRAINING:
            if timer is not None:
                del self._timers[server.server_id]
                self._deadlines.pop(server.server_id, None)
                timer.cancel()
        else:
            self._arm(server.server_id)

    def _arm(self, server_id):
        """(Re)start the heartbeat timeout of a server."""
        self._deadlines[server_id] = self._clock.seconds() + self.heartbeat_timeout
        timer = self._timers.get(server_id)
        if timer is not None:
            timer.reset(self.heartbeat_timeout)
        else:
            self._timers[server_id] = self._clock.callLater(
                self.heartbeat_timeout, self._timed_out, server_id)

    def _changed(self):
        """Increase the version, drop the cached view, wake long-polls."""
        now = self._clock.seconds()
        self._version = max(self._version + 1, int(now * 1000))
        self._version_time = now
        self._view = None
        self._cancel_publish()
        self._wake_waiters()

    def _wake_waiters(self):
        waiters, self._waiters = self._waiters, {}
        for waiter, timer in waiters.items():
            timer.cancel()
            waiter.callback(self._version)

    def _publish_later(self):
        """Numbers changed: publish them by a version increase once
        C{publish_interval} has passed since the last one."""
        if self._publish_call is None:
            delay = max(0.0, self._version_time + self.publish_interval - self._clock.seconds())
            self._publish_call = self._clock.callLater(delay, self._publish_numbers)

    def _publish_numbers(self):
        self._publish_call = None
        self._changed()

    def _cancel_publish(self):
        if self._publish_call is not None:
            self._publish_call.cancel()
            self._publish_call = None

    def _save_later(self, server_id):
        """Copy a liveness change to the store, best-effort, coalescing the
        changes that pile up while a write is running."""
        self._unsaved.add(server_id)
        if not self._saving:
            self._saving = True
            self._lock.run(self._save_states).addErrback(self._save_failed)

    async def _save_states(self):
        try:
            while self._unsaved:
                server = self._servers.get(self._unsaved.pop())
                if server is not None:
                    await self._store.upsert_server(server)
        finally:
            self._saving = False

    def _save_failed(self, failure):
        self._unsaved.clear()
        self.log.failure(
            "could not record server states in the store; heartbeats rebuild them", failure)
        return None


def _server_json(server, lost=False):
    return {
        "rebuilding": server.rebuilding,
        "lost": lost,
        "server_id": server.server_id,
        "address": server.address,
        "state": server.state,
        "capacity": server.capacity,
        "used": server.used,
        "free": server.free,
        "read_only": server.read_only,
        "load": server.load,
        "last_heartbeat": server.last_heartbeat,
    }
