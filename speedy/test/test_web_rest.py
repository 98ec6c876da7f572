"""
Tests for L{speedy.web.rest}, the REST kit: routing, answers, failures
before and after an answer's head, clients that go away, wrappers, body
sinks and mounts.  Through L{StubTreq} where the kit's behaviour is all
that matters, over a real loopback L{StreamingSite} where the bytes on the
wire do.
"""

import gc
import json
import weakref

from treq.client import HTTPClient
from treq.testing import StubTreq
from twisted.internet import reactor
from twisted.internet.defer import Deferred, succeed
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, HTTPConnectionPool, ResponseFailed
from twisted.web.resource import Resource
from twisted.web.test.requesthelper import DummyRequest
from zope.interface import implementer

from speedy import errors
from speedy.web.json import answer_json_error, json_answer
from speedy.web.rest import (
    Answer, Discard, Router, cancel_when_gone, send_head)
from speedy.web import streaming
from speedy.web.streaming import IBodySink, StreamingSite

URL = "http://api.example"


@implementer(IBodySink)
class Collecting:
    """A sink that keeps what it is given, and whether it was finished."""

    def __init__(self, fail_on=None):
        self.pieces = []
        self.finished = False
        self._fail_on = fail_on

    def write(self, data):
        if self._fail_on is not None and self._fail_on in data:
            raise errors.TooLarge("refused")
        self.pieces.append(data)

    def finish(self):
        self.finished = True

    def connection_lost(self, reason):
        pass


def parse_even(text):
    number = int(text)
    if number % 2:
        raise errors.NotFound(f"{number} is odd")
    return number


class RouterTestCase(SynchronousTestCase):
    def setUp(self):
        self.router = Router(answer_json_error)
        self.http = StubTreq(self.router.resource)
        self.calls = []

    def call(self, method, path, data=None, headers=None):
        """@return: (status, headers, body bytes) of a request that completes at once."""
        response = self.successResultOf(
            self.http.request(method, URL + path, data=data, headers=headers))
        return response.code, response.headers, self.successResultOf(response.content())

    def error(self, method, path, data=None):
        """@return: (status, error code) of a JSON error answer."""
        status, _, body = self.call(method, path, data)
        return status, json.loads(body)["error"]["code"]

    def recorder(self, answer=None):
        async def handler(request, **params):
            self.calls.append((request.method, params))
            return answer if answer is not None else json_answer(200, params)
        return handler


class RequestIdTests(RouterTestCase):
    """Every request gets an id (L{speedy.logs}): answered in
    C{X-Request-Id}, current while its handler runs."""

    def setUp(self):
        super().setUp()
        self.seen = []

        async def handler(request):
            from speedy.logs import request_id
            await succeed(None)
            self.seen.append(request_id.get())
            return json_answer(200, {})
        self.router.route("GET", "/x", handler)

    def test_generated(self):
        _, headers, _ = self.call("GET", "/x")
        (rid,) = headers.getRawHeaders("x-request-id")
        self.assertRegex(rid, r"\A[0-9a-f]{16}\Z")
        self.assertEqual(self.seen, [rid])

    def test_honoured(self):
        _, headers, _ = self.call("GET", "/x", headers={"X-Request-Id": "pull-1.a:b_c"})
        self.assertEqual(headers.getRawHeaders("x-request-id"), ["pull-1.a:b_c"])
        self.assertEqual(self.seen, ["pull-1.a:b_c"])

    def test_insane_replaced(self):
        for bad in ["a b", "x" * 65, "quote\"", "\u00e9"]:
            _, headers, _ = self.call("GET", "/x", headers={"X-Request-Id": bad})
            (rid,) = headers.getRawHeaders("x-request-id")
            self.assertRegex(rid, r"\A[0-9a-f]{16}\Z")

    def test_on_errors(self):
        """An error answer (no route) carries it too, in its header and in
        its body."""
        status, headers, body = self.call("GET", "/nowhere")
        self.assertEqual(status, 404)
        (rid,) = headers.getRawHeaders("x-request-id")
        self.assertEqual(json.loads(body)["request_id"], rid)

    def test_in_registry_error_body(self):
        """The registry's error shape carries it beside the spec's errors."""
        from speedy.registry.api import answer_registry_error
        from speedy.registry.errors import BLOB_UNKNOWN, RegistryError
        router = Router(answer_registry_error)

        async def missing(request):
            raise RegistryError(BLOB_UNKNOWN)
        router.route("GET", "/v2/x/blobs/y", missing)
        response = self.successResultOf(StubTreq(router.resource).request(
            "GET", URL + "/v2/x/blobs/y", headers={"X-Request-Id": "pull-77"}))
        body = json.loads(self.successResultOf(response.content()))
        self.assertEqual(body["request_id"], "pull-77")
        self.assertEqual([e["code"] for e in body["errors"]], ["BLOB_UNKNOWN"])


class RoutingTests(RouterTestCase):
    def test_patterns(self):
        """A placeholder takes one segment, a :path one takes the rest,
        percent-decoded; the first pattern that matches decides."""
        self.router.route("GET", "/v1/items/{item}", self.recorder())
        self.router.route("GET", "/v1/items/{item}/parts/{part:path}", self.recorder())
        self.router.route("GET", "/v1/{anything:path}", self.recorder(Answer(204)))
        self.assertEqual(json.loads(self.call("GET", "/v1/items/a%20b")[2]), {"item": "a b"})
        self.assertEqual(json.loads(self.call("GET", "/v1/items/a/parts/x/y%2Fz")[2]),
                         {"item": "a", "part": "x/y/z"})
        self.assertEqual(self.call("GET", "/v1/items/a/other")[0], 204)
        self.assertEqual(self.calls, [(b"GET", {"item": "a b"}),
                                      (b"GET", {"item": "a", "part": "x/y/z"}),
                                      (b"GET", {"anything": "items/a/other"})])
        self.assertEqual(self.error("GET", "/v2/items/a"), (404, "NOT_FOUND"))
        self.assertEqual(self.error("GET", "/v1"), (404, "NOT_FOUND"))

    def test_converters(self):
        """A converter's value reaches the handler; its error is the answer,
        before the method is looked at."""
        self.router.route("PUT", "/v1/even/{n}", self.recorder(), params={"n": parse_even})
        self.assertEqual(json.loads(self.call("PUT", "/v1/even/42")[2]), {"n": 42})
        self.assertEqual(self.error("PUT", "/v1/even/7"), (404, "NOT_FOUND"))
        self.assertEqual(self.error("GET", "/v1/even/7"), (404, "NOT_FOUND"))
        self.assertEqual(self.error("PUT", "/v1/even/x"), (500, "INTERNAL"))
        self.flushLoggedErrors(ValueError)

    def test_methods(self):
        """A method without a handler is a 405 naming those the route has;
        HEAD falls back to GET (and is not named unless declared)."""
        self.router.route(("GET", "DELETE"), "/v1/thing", self.recorder())
        status, headers, body = self.call("POST", "/v1/thing")
        self.assertEqual((status, json.loads(body)["error"]["code"]), (405, "METHOD_NOT_ALLOWED"))
        self.assertEqual(headers.getRawHeaders("allow"), ["GET, DELETE"])
        status, headers, body = self.call("HEAD", "/v1/thing")
        self.assertEqual((status, body), (200, b""))
        self.assertEqual(headers.getRawHeaders("content-length"), ["2"])
        self.assertEqual(self.calls, [(b"HEAD", {})])

    def test_answers(self):
        """An answer's status, headers and body go out as given; 204 and 304
        carry no Content-Length; bytes-like bodies are sent as bytes."""
        self.router.route("GET", "/a", self.recorder(Answer(
            201, bytearray(b"made"), {"x-thing": "1"}, content_type="text/plain")))
        self.router.route("GET", "/b", self.recorder(Answer(204, headers={b"etag": b'"1"'})))
        response = self.successResultOf(self.http.get(URL + "/a"))
        self.assertEqual((response.code, response.length), (201, 4))
        self.assertEqual(self.successResultOf(response.content()), b"made")
        headers = response.headers
        self.assertEqual((headers.getRawHeaders("x-thing"), headers.getRawHeaders("content-type")),
                         (["1"], ["text/plain"]))
        status, headers, body = self.call("GET", "/b")
        self.assertEqual((status, headers.getRawHeaders("content-length"),
                          headers.getRawHeaders("content-type")), (204, None, None))

    def test_surface_headers(self):
        """A router's own headers are on every answer, its errors too."""
        router = Router(answer_json_error, headers={"X-Surface": "yes"})
        router.route("GET", "/a", self.recorder())
        http = StubTreq(router.resource)
        for path in ("/a", "/nothing"):
            response = self.successResultOf(http.get(URL + path))
            self.assertEqual(response.headers.getRawHeaders("x-surface"), ["yes"], path)


class FailureTests(RouterTestCase):
    def test_error_before_the_head(self):
        """An exception becomes the surface's error answer; a bug is a 500,
        logged with its traceback, and the next request is served."""
        async def refuse(request):
            raise errors.Unavailable("down for now")

        async def crash(request):
            raise KeyError("oops")

        self.router.route("GET", "/refuse", refuse)
        self.router.route("GET", "/crash", crash)
        self.router.route("GET", "/ok", self.recorder())
        self.assertEqual(self.error("GET", "/refuse"), (503, "UNAVAILABLE"))
        self.assertEqual(self.flushLoggedErrors(), [])
        self.assertEqual(self.error("GET", "/crash"), (500, "INTERNAL"))
        self.assertEqual(len(self.flushLoggedErrors(KeyError)), 1)
        self.assertEqual(self.call("GET", "/ok")[0], 200)

    def test_error_after_the_head(self):
        """A failure once the head is out closes the connection (the client
        sees the answer cut short), logged."""
        async def half(request):
            send_head(request, Answer(200, content_type=b"application/octet-stream", length=10))
            request.write(b"12345")
            raise errors.Unavailable("no replica")

        self.router.route("GET", "/half", half)
        d = self.http.get(URL + "/half")
        response = self.successResultOf(d)
        self.assertEqual(response.code, 200)
        self.failureResultOf(response.content(), ResponseFailed)
        self.assertEqual(len(self.flushLoggedErrors(errors.Unavailable)), 1)

    def test_streamed_answer_is_finished(self):
        """A handler that wrote its body and returned None has its request
        finished for it."""
        async def stream(request):
            send_head(request, Answer(200, length=6))
            request.write(b"abc")
            request.write(b"def")

        self.router.route("GET", "/stream", stream)
        self.assertEqual(self.call("GET", "/stream")[::2], (200, b"abcdef"))

    def test_broken_error_shape(self):
        """When even the error shape fails, a bare 500 still ends the request."""
        def broken(error, request):
            raise RuntimeError("the shape is broken")

        async def refuse(request):
            raise errors.BadRequest("no")

        router = Router(broken)
        router.route("GET", "/", refuse)
        response = self.successResultOf(StubTreq(router.resource).get(URL + "/"))
        self.assertEqual(response.code, 500)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_client_goes_away(self):
        """Work given to cancel_when_gone is cancelled when the client goes
        away; nothing is answered and nothing logged."""
        cancelled = []
        upstream = Deferred(cancelled.append)

        async def wait(request):
            await cancel_when_gone(request, upstream)
            return json_answer(200, {})

        self.router.route("GET", "/wait", wait)
        with capturedLogs() as events:
            d = self.http.get(URL + "/wait")
            self.assertNoResult(d)
            d.cancel()
            self.failureResultOf(d)
            self.http.flush()
        self.assertEqual(cancelled, [upstream])
        self.assertEqual([e for e in events if e.get("log_level").name in ("warn", "error",
                                                                             "critical")], [])

    def test_cancel_when_already_gone(self):
        """Work handed over after the client left is cancelled at once."""
        reached = Deferred()
        cancelled = []
        late = Deferred(cancelled.append)

        async def slow(request):
            await reached
            await cancel_when_gone(request, late)

        self.router.route("GET", "/slow", slow)
        d = self.http.get(URL + "/slow")
        d.cancel()
        self.failureResultOf(d)
        self.http.flush()
        reached.callback(None)
        self.assertEqual(cancelled, [late])


class LifetimeTests(RouterTestCase):
    """
    The router keeps nothing of a request once it is answered: every
    request it had kept (all of them, for a while) was walked by each full
    collection of Python's garbage collector, whose pauses grew past a
    second in an imageserver after some 20,000 requests.
    """

    def answered_request_is_freed(self, path, leave=False):
        requests = []

        async def handler(request):
            requests.append(weakref.ref(request))
            await cancel_when_gone(request, Deferred() if leave else succeed(None))
            return json_answer(200, {})

        self.router.route("GET", path, handler)
        d = self.http.get(URL + path)
        if leave:
            d.cancel()
            self.failureResultOf(d)
        else:
            self.successResultOf(d)
        self.http.flush()
        del d
        gc.collect()
        self.assertEqual(len(requests), 1)
        self.assertIsNone(requests[0]())

    def test_answered(self):
        self.answered_request_is_freed("/answered")

    def test_client_went_away(self):
        self.answered_request_is_freed("/left", leave=True)


class WrapperTests(RouterTestCase):
    def test_wrappers(self):
        """Wrappers run around every route's handler, declared before or
        after them, the first wrapper outermost, and see the route."""
        seen = []

        def wrapper(tag):
            def wrap(route, handler):
                async def wrapped(request, **params):
                    seen.append((tag, route.pattern))
                    return await handler(request, **params)
                return wrapped
            return wrap

        self.router.route("GET", "/before/{x}", self.recorder())
        self.router.wrap(wrapper("outer"))
        self.router.wrap(wrapper("inner"))
        self.router.route("GET", "/after", self.recorder())
        self.call("GET", "/before/1")
        self.call("GET", "/after")
        self.call("GET", "/nothing")
        self.assertEqual(seen, [("outer", "/before/{x}"), ("inner", "/before/{x}"),
                                ("outer", "/after"), ("inner", "/after")])


class SinkTests(RouterTestCase):
    def setUp(self):
        super().setUp()
        self.sinks = []

        def sink(request, **params):
            if params.get("name") == "bad":
                raise errors.BadRequest("not that one")
            self.sinks.append(Collecting(fail_on=b"!"))
            return self.sinks[-1]

        async def put(request, name):
            if request.body_failure is not None:
                request.body_failure.raiseException()
            return json_answer(201, {"got": b"".join(request.body_sink.pieces).decode(),
                                     "finished": request.body_sink.finished})

        self.router.route("PUT", "/v1/{name}", put, sink=sink)
        self.router.route("GET", "/v1/{name}", self.recorder())

    def request(self, method, path, headers=()):
        request = DummyRequest([b""])
        request.method, request.path = method, path
        for name, value in headers:
            request.requestHeaders.addRawHeader(name, value)
        return request

    def test_body_sink_for(self):
        """A route's sink for its method; a body to nowhere is dropped; a
        sink that cannot be chosen drops the body and carries the error."""
        router = self.router
        self.assertIsInstance(router.body_sink_for(self.request(b"PUT", b"/v1/a")), Collecting)
        self.assertIsNone(router.body_sink_for(self.request(b"GET", b"/v1/a")))
        body = [(b"content-length", b"5")]
        for method, path in [(b"POST", b"/v1/a"), (b"PUT", b"/elsewhere")]:
            self.assertIsNone(router.body_sink_for(self.request(method, path)))
            sink = router.body_sink_for(self.request(method, path, body))
            self.assertEqual((type(sink), sink.error), (Discard, None))
        refused = router.body_sink_for(self.request(b"PUT", b"/v1/bad"))
        self.assertIsInstance(refused.error, errors.BadRequest)

    def test_plain_site_feeds_the_sink(self):
        """Under a plain Site the spooled body goes through the same sink
        before the handler runs; a failed write is the request's
        body_failure; a refused sink is the answer."""
        status, _, body = self.call("PUT", "/v1/a", data=b"x" * 100_000)
        self.assertEqual(status, 201)
        self.assertEqual(json.loads(body), {"got": "x" * 100_000, "finished": True})
        self.assertEqual(self.error("PUT", "/v1/a", data=b"no!"), (413, "TOO_LARGE"))
        self.assertEqual(self.error("PUT", "/v1/bad", data=b"x"), (400, "BAD_REQUEST"))
        self.assertEqual(len(self.sinks), 2)

    def test_mount(self):
        """A mounted resource serves its paths, and its own body_sink_for
        chooses their sinks."""
        leaf = Resource()
        leaf.isLeaf = True
        leaf.render_GET = lambda request: b"mounted " + request.path
        mounted_sink = Collecting()
        self.router.mount(b"v2", leaf, lambda request: mounted_sink)
        self.assertEqual(self.call("GET", "/v2/x/y")[::2], (200, b"mounted /v2/x/y"))
        self.assertIs(self.router.body_sink_for(self.request(b"PUT", b"/v2/x")), mounted_sink)
        self.assertIsNone(self.router.body_sink_for(self.request(b"PUT", b"/v2x")))

    def test_mount_under_several_segments(self):
        """A resource mounted under a several-segment prefix serves the
        paths below it; the router keeps the rest of the first segment."""
        leaf = Resource()
        leaf.isLeaf = True
        leaf.render = lambda request: b"mounted " + request.path
        mounted_sink = Collecting()
        self.router.mount(b"v1/images", leaf, lambda request: mounted_sink)
        self.assertEqual(self.call("GET", "/v1/images/x/json")[::2], (200, b"mounted /v1/images/x/json"))
        self.assertEqual(self.call("GET", "/v1/images")[::2], (200, b"mounted /v1/images"))
        self.assertEqual(json.loads(self.call("GET", "/v1/files")[2]), {"name": "files"})
        self.assertEqual(json.loads(self.call("GET", "/v1/imagesx")[2]), {"name": "imagesx"})
        self.assertIs(self.router.body_sink_for(self.request(b"PUT", b"/v1/images/x")), mounted_sink)
        self.assertIsNot(self.router.body_sink_for(self.request(b"PUT", b"/v1/files")), mounted_sink)


class LoopbackTests(TestCase):
    """Over a real StreamingSite on loopback."""

    def setUp(self):
        self.router = Router(answer_json_error)
        site = StreamingSite(self.router.resource, self.router.body_sink_for, reactor=reactor)
        self.port = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(pool.closeCachedConnections)
        self.http = HTTPClient(Agent(reactor, pool=pool))
        self.url = f"http://127.0.0.1:{self.port.getHost().port}"

    async def put_through_a_sink(self):
        """PUT a body to a route with a sink: it reaches the sink whole,
        finished before the handler runs."""
        sink = Collecting()

        async def put(request):
            return json_answer(200, {"bytes": sum(map(len, sink.pieces)), "finished": sink.finished,
                                     "same": request.body_sink is sink})

        self.router.route("PUT", "/up", put, sink=lambda request: sink)
        response = await self.http.put(self.url + "/up", data=b"z" * 300_000)
        self.assertEqual(json.loads(await response.content()),
                         {"bytes": 300_000, "finished": True, "same": True})

    async def test_streamed_sink(self):
        """A PUT body streams into the route's sink, finished before the
        handler runs."""
        await self.put_through_a_sink()

    async def test_spooled_body_still_reaches_the_sink(self):
        """A body the site had to spool (the channel's request line could
        not be read before it) goes through the route's sink all the same,
        before the handler runs."""
        self.patch(streaming, "request_line", lambda channel: None)
        await self.put_through_a_sink()

    async def test_bug_after_the_head_ends_the_connection(self):
        """A bug once the answer began closes the connection: the client
        sees a truncated answer instead of waiting forever."""
        async def half(request):
            send_head(request, Answer(200, length=100))
            request.write(b"x" * 10)
            return await succeed(None).addCallback(lambda _: {}["missing"])

        self.router.route("GET", "/half", half)
        response = await self.http.get(self.url + "/half")
        self.assertEqual(response.code, 200)
        with self.assertRaises(ResponseFailed):
            await response.content()
        self.assertEqual(len(self.flushLoggedErrors(KeyError)), 1)
