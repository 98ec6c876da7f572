"""
Tests for L{speedy.chunkmaster.cluster}: servers' states over time,
group writability, the versioned view and its long-poll waiters, the store
as the record of membership, and reloading after a restart.
"""

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from speedy.chunkmaster.cluster import Cluster, ServerRemoved, UnknownServer
from speedy.chunkmaster.messages import Heartbeat
from speedy.errors import BadRequest, Unavailable
from speedy.records import DOWN, DRAINING, INIT, RO, RW
from speedy.testing import OutageStore

TIMEOUT = 15.0
GiB = 1 << 30


def report(server_id="s1", group_id=1, address=None, free=10 * GiB, read_only=False, load=None):
    """@return: a L{Heartbeat} of a healthy server, with changes."""
    number = int(server_id.lstrip("s") or 0)
    return Heartbeat(
        server_id=server_id, group_id=group_id,
        address=address or f"10.0.0.{number}:8000",
        capacity=100 * GiB, used=100 * GiB - free, free=free, read_only=read_only,
        load=load or {"reads": 0})


class ClusterTestCase(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.store = OutageStore(self.clock)
        self.cluster = self.new_cluster()
        self.addCleanup(self.cluster.stop)

    def new_cluster(self):
        return Cluster(self.store, self.clock, heartbeat_timeout=TIMEOUT, group_size=3,
                       reserve=GiB, publish_interval=5.0)

    def done(self, coroutine):
        """@return: the result of a coroutine that completes at once."""
        return self.successResultOf(Deferred.fromCoroutine(coroutine))

    def refused(self, coroutine, error):
        """@return: the exception a coroutine fails with at once."""
        return self.failureResultOf(Deferred.fromCoroutine(coroutine), error).value

    def beat(self, *args, **kwargs):
        return self.done(self.cluster.heartbeat(report(*args, **kwargs)))

    def stored(self, server_id):
        return self.successResultOf(self.store.get_server(server_id))

    def full_group(self, group_id=1):
        for n in range(1, 4):
            self.beat(f"s{n + 3 * (group_id - 1)}", group_id=group_id)

    def snapshot(self):
        """@return: what a refused call must leave unchanged."""
        return (self.cluster.version, self.cluster.view(),
                self.successResultOf(self.store.list_servers()),
                self.successResultOf(self.store.list_groups()))


class HeartbeatTests(ClusterTestCase):
    def test_unknown_server_registers(self):
        """
        The first heartbeat of an unknown server records it and its group in
        the store and makes it RW.
        """
        self.assertEqual(self.beat("s1", group_id=7), RW)
        server = self.stored("s1")
        self.assertEqual((server.group_id, server.address, server.state), (7, "10.0.0.1:8000", RW))
        self.assertEqual([g.group_id for g in self.successResultOf(self.store.list_groups())], [7])

    def test_read_only_report(self):
        """A server that reports read_only is RO."""
        self.assertEqual(self.beat("s1", read_only=True), RO)

    def test_no_room(self):
        """A server with no more free space than the reserve is RO, and RW
        again once it has room."""
        self.beat("s1")
        self.assertEqual(self.beat("s1", free=GiB), RO)
        self.assertEqual(self.beat("s1", free=GiB + 1), RW)

    def test_missed_heartbeats(self):
        """
        A server is DOWN once it has been silent for the heartbeat timeout,
        and not before; every heartbeat restarts the count.
        """
        self.beat("s1")
        self.clock.advance(TIMEOUT - 1)
        self.beat("s1")
        self.clock.advance(TIMEOUT - 1)
        self.assertEqual(self.cluster.server("s1").state, RW)
        self.clock.advance(1)
        self.assertEqual(self.cluster.server("s1").state, DOWN)
        self.assertEqual(self.stored("s1").state, DOWN)
        self.assertEqual(self.beat("s1"), RW)

    def test_numbers_do_not_touch_store(self):
        """A heartbeat that changes only numbers writes nothing to the store."""
        self.beat("s1")
        del self.store.calls[:]
        self.beat("s1", free=5 * GiB, load={"reads": 9})
        self.assertEqual(self.store.calls, [])
        self.assertEqual(self.cluster.server("s1").free, 5 * GiB)

    def test_fourth_member(self):
        """A group takes no fourth member; nothing changes."""
        self.full_group()
        before = self.snapshot()
        error = self.refused(self.cluster.heartbeat(report("s9", group_id=1)), BadRequest)
        self.assertIn("group 1 already has 3 members", str(error))
        self.assertEqual(self.snapshot(), before)
        self.assertIsNone(self.cluster.server("s9"))

    def test_address_of_another(self):
        """A server claiming another's address is refused; nothing changes."""
        self.beat("s1")
        before = self.snapshot()
        error = self.refused(
            self.cluster.heartbeat(report("s2", address="10.0.0.1:8000")), BadRequest)
        self.assertIn("belongs to server s1", str(error))
        self.assertEqual(self.snapshot(), before)

    def test_other_group(self):
        """A known server cannot move to another group by heartbeat."""
        self.beat("s1", group_id=1)
        before = self.snapshot()
        self.refused(self.cluster.heartbeat(report("s1", group_id=2)), BadRequest)
        self.assertEqual(self.snapshot(), before)

    def test_new_address(self):
        """
        A server that comes back on a new address is recorded there, and its
        old address is free for another server.
        """
        self.beat("s1", address="10.0.0.1:8000")
        self.beat("s1", address="10.0.0.1:9000")
        self.assertEqual(self.stored("s1").address, "10.0.0.1:9000")
        self.assertEqual(self.beat("s2", address="10.0.0.1:8000"), RW)

    def test_store_down_new_server(self):
        """
        While the store is down an unknown server cannot register: the
        heartbeat fails with Unavailable and nothing changes.
        """
        before = self.snapshot()
        self.store.down = True
        self.refused(self.cluster.heartbeat(report("s1")), Unavailable)
        self.store.down = False
        self.assertEqual(self.snapshot(), before)
        self.assertIsNone(self.cluster.server("s1"))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_store_down_known_server(self):
        """
        A known server's heartbeats keep working while the store is down;
        a state change that cannot be recorded there is logged.
        """
        self.beat("s1")
        self.store.down = True
        self.assertEqual(self.beat("s1", read_only=True), RO)
        self.assertEqual(len(self.flushLoggedErrors(Unavailable)), 1)
        self.store.down = False
        self.assertEqual(self.beat("s1"), RW)
        self.assertEqual(self.stored("s1").state, RW)


class GroupTests(ClusterTestCase):
    def writable(self, group_id=1):
        return self.cluster.writable(group_id)

    def test_full_group(self):
        """A group with three RW members is writable."""
        self.full_group()
        self.assertTrue(self.writable())
        [group] = self.cluster.view()["groups"]
        self.assertEqual((group["group_id"], group["writable"]), (1, True))
        self.assertEqual([s["server_id"] for s in group["servers"]], ["s1", "s2", "s3"])

    def test_two_members(self):
        """A group with fewer members than the group size is not writable."""
        self.beat("s1")
        self.beat("s2")
        self.assertFalse(self.writable())

    def test_member_read_only(self):
        """One RO member makes the group unwritable."""
        self.full_group()
        self.beat("s2", free=0)
        self.assertFalse(self.writable())

    def test_member_down(self):
        """One silent member makes the group unwritable within the timeout."""
        self.full_group()
        self.clock.advance(TIMEOUT - 1)
        self.beat("s1")
        self.beat("s2")
        self.clock.advance(1)
        self.assertFalse(self.writable())
        self.assertEqual(self.cluster.server("s3").state, DOWN)

    def test_admin_read_only(self):
        """An admin can set a group read-only and writable again."""
        self.full_group()
        group = self.done(self.cluster.set_group_read_only(1, True))
        self.assertTrue(group.read_only)
        self.assertFalse(self.writable())
        self.assertTrue(self.successResultOf(self.store.list_groups())[0].read_only)
        self.done(self.cluster.set_group_read_only(1, False))
        self.assertTrue(self.writable())

    def test_admin_declares_group(self):
        """An admin call creates a group that no server declared yet."""
        self.done(self.cluster.set_group_read_only(4, False))
        self.assertEqual(
            self.cluster.view()["groups"],
            [{"group_id": 4, "writable": False, "read_only": False, "servers": []}])

    def test_store_down_group(self):
        """Setting a group read-only with the store down changes nothing."""
        self.full_group()
        before = self.snapshot()
        self.store.down = True
        self.refused(self.cluster.set_group_read_only(1, True), Unavailable)
        self.store.down = False
        self.assertEqual(self.snapshot(), before)


class AdminServerTests(ClusterTestCase):
    def test_add(self):
        """An added server is INIT in memory and in the store, until it heartbeats."""
        server, created = self.done(self.cluster.add_server("s1", 1, "10.0.0.1:8000"))
        self.assertTrue(created)
        self.assertEqual(server.state, INIT)
        self.assertEqual(self.stored("s1").state, INIT)
        self.assertEqual(self.beat("s1"), RW)

    def test_add_never_heard_from(self):
        """An added server that never heartbeats is DOWN after the timeout."""
        self.done(self.cluster.add_server("s1", 1, "10.0.0.1:8000"))
        self.clock.advance(TIMEOUT)
        self.assertEqual(self.cluster.server("s1").state, DOWN)

    def test_add_again(self):
        """Adding the same server again is harmless; with other details it
        is refused."""
        self.done(self.cluster.add_server("s1", 1, "10.0.0.1:8000"))
        version = self.cluster.version
        server, created = self.done(self.cluster.add_server("s1", 1, "10.0.0.1:8000"))
        self.assertFalse(created)
        self.assertEqual(self.cluster.version, version)
        self.refused(self.cluster.add_server("s1", 2, "10.0.0.1:8000"), BadRequest)

    def test_add_refused(self):
        """A taken address or a full group refuses an added server."""
        self.full_group()
        before = self.snapshot()
        self.refused(self.cluster.add_server("s9", 2, "10.0.0.1:8000"), BadRequest)
        self.refused(self.cluster.add_server("s9", 1, "10.0.0.9:8000"), BadRequest)
        self.assertEqual(self.snapshot(), before)

    def test_remove(self):
        """A removed server leaves memory, the store, and its group."""
        self.full_group()
        version = self.cluster.version
        self.done(self.cluster.remove_server("s2"))
        self.assertIsNone(self.cluster.server("s2"))
        self.assertIsNone(self.stored("s2"))
        self.assertFalse(self.cluster.writable(1))
        self.assertGreater(self.cluster.version, version)
        self.assertEqual(self.beat("s9", address="10.0.0.2:8000"), RW)
        self.assertTrue(self.cluster.writable(1))

    def test_remove_unknown(self):
        """Removing an unknown server fails with UnknownServer."""
        self.refused(self.cluster.remove_server("nope"), UnknownServer)

    def test_drain(self):
        """
        A drained server is DRAINING in memory and the store, makes its
        group unwritable, and stays so whatever it reports or misses.
        """
        self.full_group()
        self.assertEqual(self.done(self.cluster.drain_server("s1")).state, DRAINING)
        self.assertEqual(self.stored("s1").state, DRAINING)
        self.assertFalse(self.cluster.writable(1))
        self.assertEqual(self.beat("s1"), DRAINING)
        self.clock.advance(TIMEOUT * 2)
        self.assertEqual(self.cluster.server("s1").state, DRAINING)

    def test_drain_unknown(self):
        self.refused(self.cluster.drain_server("nope"), UnknownServer)

    def test_store_down(self):
        """With the store down, admin calls fail and change nothing."""
        self.full_group()
        before = self.snapshot()
        self.store.down = True
        self.refused(self.cluster.add_server("s9", 2, "10.0.0.9:8000"), Unavailable)
        self.refused(self.cluster.remove_server("s1"), Unavailable)
        self.refused(self.cluster.drain_server("s1"), Unavailable)
        self.store.down = False
        self.assertEqual(self.snapshot(), before)


class VersionTests(ClusterTestCase):
    def test_state_change(self):
        """Every state change increases the version."""
        self.beat("s1")
        versions = [self.cluster.version]
        self.beat("s1", read_only=True)
        versions.append(self.cluster.version)
        self.clock.advance(TIMEOUT)
        versions.append(self.cluster.version)
        self.assertEqual(versions, sorted(set(versions)))

    def test_numbers_published_later(self):
        """
        A heartbeat that changes only numbers keeps the version (and the
        view) until the publish interval has passed since the last change.
        """
        self.beat("s1")
        version, view = self.cluster.version, self.cluster.view()
        self.clock.advance(1)
        self.beat("s1", free=5 * GiB)
        self.assertEqual(self.cluster.version, version)
        self.assertIs(self.cluster.view(), view)
        self.clock.advance(3.9)
        self.assertEqual(self.cluster.version, version)
        self.clock.advance(0.1)
        self.assertGreater(self.cluster.version, version)
        self.assertEqual(self.cluster.view()["groups"][0]["servers"][0]["free"], 5 * GiB)

    def test_version_beyond_clock(self):
        """
        The version is at least the clock's time in milliseconds, so a
        restarted chunkmaster never reuses an old version.
        """
        self.clock.advance(1_000_000)
        self.beat("s1")
        self.assertGreaterEqual(self.cluster.version, 1_000_000_000)


class WaitTests(ClusterTestCase):
    def test_fires_on_change(self):
        """A waiter fires with the new version when the view changes."""
        version = self.cluster.version
        waiter = self.cluster.wait_for_change(version, 30)
        self.assertNoResult(waiter)
        self.beat("s1")
        self.assertEqual(self.successResultOf(waiter), self.cluster.version)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)  # s1's heartbeat timer

    def test_already_changed(self):
        """A waiter for an older version fires at once."""
        version = self.cluster.version
        self.beat("s1")
        self.assertEqual(self.successResultOf(self.cluster.wait_for_change(version, 30)),
                         self.cluster.version)

    def test_times_out(self):
        """Without a change, a waiter fires with the same version after its wait."""
        version = self.cluster.version
        waiter = self.cluster.wait_for_change(version, 30)
        self.clock.advance(29.9)
        self.assertNoResult(waiter)
        self.clock.advance(0.1)
        self.assertEqual(self.successResultOf(waiter), version)

    def test_cancel(self):
        """Cancelling a waiter drops its timer."""
        waiter = self.cluster.wait_for_change(self.cluster.version, 30)
        waiter.cancel()
        self.failureResultOf(waiter)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stop(self):
        """Stopping the cluster answers every waiter and cancels every timer."""
        self.full_group()
        waiter = self.cluster.wait_for_change(self.cluster.version, 30)
        self.beat("s1", free=2 * GiB)  # a pending publish of numbers
        self.cluster.stop()
        self.assertEqual(self.successResultOf(waiter), self.cluster.version)
        self.assertEqual(self.clock.getDelayedCalls(), [])


class RestartTests(ClusterTestCase):
    def test_reload(self):
        """
        A new cluster over the same store has the same servers and groups,
        all INIT but a drained one, DOWN unless they heartbeat within the
        timeout, and the group writable again once all three report.
        """
        self.full_group()
        self.full_group(group_id=2)
        self.done(self.cluster.drain_server("s4"))
        self.done(self.cluster.set_group_read_only(2, True))
        old_version = self.cluster.version
        self.cluster.stop()

        self.clock.advance(60)
        self.cluster = self.new_cluster()
        self.done(self.cluster.load())
        self.assertGreater(self.cluster.version, old_version)
        states = {s["server_id"]: s["state"]
                  for g in self.cluster.view()["groups"] for s in g["servers"]}
        self.assertEqual(states, {"s1": INIT, "s2": INIT, "s3": INIT,
                                  "s4": DRAINING, "s5": INIT, "s6": INIT})
        self.assertTrue(self.cluster.group(2).read_only)
        self.assertFalse(self.cluster.writable(1))

        self.beat("s1")
        self.beat("s2")
        self.clock.advance(TIMEOUT)
        self.assertEqual(self.cluster.server("s3").state, DOWN)
        self.assertEqual(self.beat("s3"), RW)
        self.beat("s1")
        self.beat("s2")
        self.assertTrue(self.cluster.writable(1))

    def test_reload_refuses_fourth(self):
        """Reloaded membership still counts: a group stays at three."""
        self.full_group()
        self.cluster.stop()
        self.cluster = self.new_cluster()
        self.done(self.cluster.load())
        self.refused(self.cluster.heartbeat(report("s9", group_id=1)), BadRequest)


class SelfHealingTests(ClusterTestCase):
    """Removals that stick, lost servers, group rebuilds, the chunkmaster's
    own stalls."""

    def test_removed_server_stays_out(self):
        """A server removed while it still runs is refused on its next
        heartbeat, after a restart of the chunkmaster too, until an operator
        adds it again."""
        self.full_group()
        self.done(self.cluster.remove_server("s2"))
        error = self.refused(self.cluster.heartbeat(report("s2")), ServerRemoved)
        self.assertIn("removed by an operator", str(error))
        self.assertIsNone(self.cluster.server("s2"))
        self.assertFalse(self.cluster.writable(1))
        restarted = self.new_cluster()
        self.addCleanup(restarted.stop)
        self.done(restarted.load())
        self.refused(restarted.heartbeat(report("s2")), ServerRemoved)
        self.done(restarted.add_server("s2", 1, "10.0.0.2:8000"))
        self.assertEqual(self.done(restarted.heartbeat(report("s2"))), RW)

    def test_lost_after_grace(self):
        """A server DOWN for C{lost_after} is shown as lost in the view;
        coming back clears it."""
        self.cluster.lost_after = 100
        self.full_group()
        for _ in range(int(TIMEOUT) + 1):
            self.clock.advance(1)
            self.beat("s1")
            self.beat("s3")
        self.assertEqual(self.cluster.server("s2").state, DOWN)
        lost = {s["server_id"]: s["lost"] for s in self.cluster.view()["groups"][0]["servers"]}
        self.assertEqual(lost, {"s1": False, "s2": False, "s3": False})
        for _ in range(100):
            self.clock.advance(1)
        self.assertTrue(self.cluster.is_lost("s2"))
        lost = {s["server_id"]: s["lost"] for s in self.cluster.view()["groups"][0]["servers"]}
        self.assertEqual(lost["s2"], True)
        self.beat("s2")
        self.assertFalse(self.cluster.is_lost("s2"))
        self.assertFalse(self.cluster.view()["groups"][0]["servers"][1]["lost"])

    def test_replace(self):
        """Replacing a lost member removes it for good and adds the new one
        as rebuilding: the group takes no writes until the rebuild is done,
        and the view says which member is rebuilding."""
        self.full_group()
        before = self.cluster.version
        new = self.done(self.cluster.replace_server("s2", "s9", "10.0.0.9:8000"))
        self.assertEqual((new.group_id, new.state, new.rebuilding), (1, INIT, True))
        self.assertGreater(self.cluster.version, before)
        self.assertEqual([s.server_id for s in self.cluster.members(1)], ["s1", "s3", "s9"])
        self.assertTrue(self.stored("s9").rebuilding)
        self.assertIsNone(self.stored("s2"))
        self.refused(self.cluster.heartbeat(report("s2")), ServerRemoved)
        self.assertEqual(self.done(self.cluster.heartbeat(report("s9"))), RW)
        self.assertFalse(self.cluster.writable(1))
        [s9] = [s for s in self.cluster.view()["groups"][0]["servers"] if s["server_id"] == "s9"]
        self.assertTrue(s9["rebuilding"])
        self.done(self.cluster.finish_rebuild("s9"))
        self.assertTrue(self.cluster.writable(1))
        self.assertFalse(self.stored("s9").rebuilding)

    def test_replace_at_the_same_address(self):
        """A new disk in the same machine: the new server may take the old
        one's address."""
        self.full_group()
        self.done(self.cluster.replace_server("s2", "s9", "10.0.0.2:8000"))
        self.assertEqual(self.cluster.server("s9").address, "10.0.0.2:8000")

    def test_replace_refused(self):
        """An unknown old server, a new id already registered, or an address
        of another member: refused, nothing changed."""
        self.full_group()
        before = self.snapshot()
        self.refused(self.cluster.replace_server("s7", "s9", "10.0.0.9:8000"), UnknownServer)
        self.refused(self.cluster.replace_server("s2", "s3", "10.0.0.9:8000"), BadRequest)
        self.refused(self.cluster.replace_server("s2", "s9", "10.0.0.3:8000"), BadRequest)
        self.assertEqual(self.snapshot(), before)

    def test_rebuilding_survives_a_restart(self):
        self.full_group()
        self.done(self.cluster.replace_server("s2", "s9", "10.0.0.9:8000"))
        restarted = self.new_cluster()
        self.addCleanup(restarted.stop)
        self.done(restarted.load())
        self.assertTrue(restarted.server("s9").rebuilding)

    def test_own_stall_is_not_their_silence(self):
        """The chunkmaster paused (SIGSTOP, a VM freeze) past the heartbeat
        timeout: when it runs again its late timers give every server a
        new timeout instead of marking them all DOWN, and servers that are
        really gone turn DOWN one timeout later."""
        self.full_group()
        self.clock.advance(TIMEOUT + 30)  # every timer fires 30 s late
        self.assertEqual([s.state for s in self.cluster.members(1)], [RW, RW, RW])
        self.assertTrue(self.cluster.writable(1))
        for _ in range(5):
            self.clock.advance(1)
        self.beat("s1")
        self.beat("s2")
        for _ in range(int(TIMEOUT) - 5):
            self.clock.advance(1)
        self.assertEqual([s.state for s in self.cluster.members(1)], [RW, RW, DOWN])


class TwoChunkmastersTests(ClusterTestCase):
    """Two chunkmasters on one database: what an operator changes through
    one, the other takes in at its next refresh."""

    def setUp(self):
        super().setUp()
        self.other = self.new_cluster()
        self.addCleanup(self.other.stop)
        self.full_group()
        for n in range(1, 4):
            self.done(self.other.heartbeat(report(f"s{n}")))

    def refresh(self):
        self.done(self.other.refresh())

    def test_removal_and_addition(self):
        self.done(self.cluster.remove_server("s2"))
        self.refresh()
        self.assertIsNone(self.other.server("s2"))
        self.refused(self.other.heartbeat(report("s2")), ServerRemoved)
        self.done(self.cluster.add_server("s7", 2, "10.0.0.7:8000"))
        self.refresh()
        self.assertEqual(self.other.server("s7").state, INIT)

    def test_read_only_group(self):
        self.done(self.cluster.set_group_read_only(1, True))
        version = self.other.version
        self.refresh()
        self.assertFalse(self.other.writable(1))
        self.assertGreater(self.other.version, version)

    def test_rebuild_begun_and_ended(self):
        self.done(self.cluster.replace_server("s2", "s9", "10.0.0.9:8000"))
        self.refresh()
        self.assertTrue(self.other.server("s9").rebuilding)
        self.assertIsNone(self.other.server("s2"))
        self.done(self.other.heartbeat(report("s9")))
        self.assertFalse(self.other.writable(1))
        self.done(self.cluster.finish_rebuild("s9"))
        self.refresh()
        self.assertTrue(self.other.writable(1))

    def test_nothing_changed(self):
        version = self.other.version
        self.refresh()
        self.assertEqual(self.other.version, version)
