"""
Tests for L{speedy.imageserver.clusterview} (the view and its poller),
L{speedy.imageserver.master} (the chunkmaster client over loopback HTTP) and
the fakes of L{speedy.testing}.
"""

import json

from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource
from twisted.web.server import Site
from zope.interface.verify import verifyObject

from speedy import errors
from speedy.imageserver.clusterview import ClusterView, ClusterViewPoller, IClusterView
from speedy.imageserver.master import HTTPMasterClient, IMasterClient
from speedy.interfaces import IChunkClient
from speedy.testing import FakeChunkClient, FakeMaster, StaticClusterView, make_view

VIEW_JSON = {
    "version": 7,
    "groups": [
        {"group_id": 1, "writable": True, "read_only": False, "servers": [
            {"server_id": f"s{i}", "address": f"127.0.0.1:{8000 + i}", "state": "RW",
             "capacity": 100, "used": 10, "free": 90 - i, "read_only": False, "load": {}}
            for i in range(3)]},
        {"group_id": 2, "writable": False, "read_only": False, "servers": [
            {"server_id": "t0", "address": "127.0.0.1:9000", "state": "DOWN",
             "capacity": 100, "used": 10, "free": 90, "read_only": False, "load": {}}]},
    ],
}


class ViewTests(SynchronousTestCase):
    def test_from_json(self):
        view = ClusterView.from_json(VIEW_JSON)
        self.assertEqual(view.version, 7)
        self.assertEqual([g.group_id for g in view.writable(50)], [1])
        self.assertEqual(view.groups[1].free, 88)
        self.assertEqual(view.writable(89), [])

    def test_malformed(self):
        for body in ({}, {"version": 1, "groups": [{"group_id": 1}]}, {"version": 1, "groups": 3}):
            self.assertRaises(ValueError, ClusterView.from_json, body)

    def test_fakes_provide_their_interfaces(self):
        verifyObject(IChunkClient, FakeChunkClient(Clock()))
        verifyObject(IMasterClient, FakeMaster(Clock()))
        verifyObject(IClusterView, StaticClusterView())
        verifyObject(IClusterView, ClusterViewPoller(FakeMaster(Clock()), Clock()))
        verifyObject(IMasterClient, HTTPMasterClient(reactor, "http://127.0.0.1:1", "s"))


class PollerTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.master = FakeMaster(self.clock, make_view({1: ["a:1"]}, version=1))
        self.poller = ClusterViewPoller(self.master, self.clock, wait=20, retry=2.0)
        self.poller.startService()
        self.addCleanup(self.poller.stopService)

    def test_first_view(self):
        self.assertEqual(self.poller.current.version, 1)

    def test_long_poll_picks_up_changes(self):
        """A newer view published while a long-poll waits is taken at once."""
        self.clock.advance(0.5)
        self.master.publish(make_view({1: ["a:1"], 2: ["b:1"]}, version=2))
        self.assertEqual(self.poller.current.version, 2)
        self.assertEqual(len(self.poller.current.groups), 2)

    def test_master_outage_keeps_last_view(self):
        """While the master is down the last good view stays, and polling
        goes on every `retry` seconds until it is back."""
        self.master.down = True
        self.clock.advance(20)  # the long-poll expires; the next one fails
        self.clock.advance(2)
        self.assertEqual(self.poller.current.version, 1)
        self.master.down = False
        self.master.view = make_view({1: ["a:1"]}, version=3)
        self.clock.advance(2)
        self.assertEqual(self.poller.current.version, 3)

    def test_stop_leaves_nothing(self):
        self.poller.stopService()
        self.assertEqual(self.clock.getDelayedCalls(), [])


class ChunkmasterStub(Resource):
    """The chunkmaster's /v1/cluster and /v1/file-ids, as the contract
    says, plus a mode that answers garbage."""

    isLeaf = True

    def __init__(self):
        super().__init__()
        self.garbage = False
        self.auth = []
        self.request_ids = []

    def render_GET(self, request):
        self.auth.append(request.getHeader(b"authorization"))
        if self.garbage:
            return b"<html>not json"
        if request.getHeader(b"if-none-match") == b'"7"':
            request.setResponseCode(304)
            return b""
        request.setHeader(b"etag", b'"7"')
        return json.dumps(VIEW_JSON).encode()

    def render_POST(self, request):
        self.request_ids.append(request.getHeader(b"x-request-id"))
        if self.garbage:
            return b'{"start": "x"}'
        count = json.loads(request.content.read())["count"]
        return json.dumps({"start": 100, "end": 100 + count}).encode()


class ClosingTrackedSite(Site):
    """A L{Site} that can wait for its connections to close (the client's
    pool closes them; the server side must be gone before the test ends)."""

    def __init__(self, resource):
        super().__init__(resource)
        self.closed = []

    def buildProtocol(self, addr):
        protocol = super().buildProtocol(addr)
        closed = Deferred()
        self.closed.append(closed)
        lost = protocol.connectionLost

        def connectionLost(reason):
            lost(reason)
            closed.callback(None)

        protocol.connectionLost = connectionLost
        return protocol

    def all_closed(self):
        return DeferredList(self.closed)


class HTTPMasterClientTests(TestCase):
    def setUp(self):
        self.stub = ChunkmasterStub()
        site = ClosingTrackedSite(self.stub)
        port = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.addCleanup(site.all_closed)
        self.client = HTTPMasterClient(reactor, f"http://127.0.0.1:{port.getHost().port}/", "s3")
        self.addCleanup(self.client.close)

    async def test_cluster_and_etag(self):
        view = await self.client.cluster()
        self.assertEqual(view.version, 7)
        self.assertIsNone(await self.client.cluster(etag=7, wait=1))
        self.assertEqual(self.stub.auth, [b"Bearer s3"] * 2)

    async def test_file_ids(self):
        self.assertEqual(await self.client.allocate_file_ids(5), (100, 105))

    async def test_request_id(self):
        """A call made for an HTTP request sends its id on; others none."""
        from speedy.logs import request_id
        await self.client.allocate_file_ids(5)
        token = request_id.set("pull-7")
        try:
            calling = self.client.allocate_file_ids(5)
        finally:
            request_id.reset(token)
        await calling
        self.assertEqual(self.stub.request_ids, [None, b"pull-7"])

    async def test_garbage_answers_are_unavailable(self):
        self.stub.garbage = True
        with self.assertRaises(errors.Unavailable):
            await self.client.cluster()
        with self.assertRaises(errors.Unavailable):
            await self.client.allocate_file_ids(5)

    async def test_unreachable(self):
        client = HTTPMasterClient(reactor, "http://127.0.0.1:1", "s")
        self.addCleanup(client.close)
        with self.assertRaises(errors.Unavailable):
            await client.cluster()
