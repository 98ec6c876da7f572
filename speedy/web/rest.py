# -*- test-case-name: speedy.test.test_web_rest -*-
"""
Speedy's REST kit: one L{Router} per HTTP surface (the chunkmaster's API,
the imageserver's file and chunk APIs, the registry), from a method and a
path pattern to an C{async def} handler, with one error shape per surface.

    router = Router(answer_json_error)
    router.route("GET", "/v1/health", health)
    router.route("PUT", "/v1/admin/groups/{group_id}", set_group,
                 params={"group_id": group_in_path})
    router.route("PUT", "/v1/files/{path:path}", put_file, sink=upload_sink)
    router.wrap(count_requests)       # around the handler of every route
    router.mount(b"v2", registry.resource, registry.body_sink_for)
    router.mount(b"v1/images", v1.resource, v1.body_sink_for)
    site = StreamingSite(router.resource, router.body_sink_for, reactor)

B{Patterns} are literal text with C{{name}} (one path segment) and
C{{name:path}} (one or more, slashes included) placeholders, matched
against the request's whole path, percent-decoded as UTF-8 (bytes that are
not UTF-8 read as U+FFFD).  Patterns are tried in the order declared; the
first that matches decides.  Its C{params} converters run on what the
placeholders caught (a missing converter keeps the text): the error one
raises is the answer, so a bad id can be a 404 and a bad digest a 400.
Then the method is looked up; HEAD is answered by the GET handler when no
HEAD one is declared.  No pattern matches: L{NoRoute}; no handler for the
method: L{MethodNotAllowed}.  Both go to the error shape like any error.

B{Handlers} are C{async def handler(request, **params)}.  One returns an
L{Answer}, which the kit writes, or None once it has written the body
itself (a download streamed into the request after L{send_head}); the kit
then finishes the request.  L{cancel_when_gone} stops upstream work when the
client goes away.

B{Failures} all end the request.  An exception raised before the answer's
head is out is answered with C{answer_error(error, request)}, the surface's
error shape, which returns an L{Answer}; an answer of status 500 means a bug
and is logged with its traceback.  After the head is out the connection is
closed short of the body (the failure logged), so the client sees a
truncated answer, never a hung one.  Once the client has gone away nothing
is written, and only bugs are logged.

B{Bodies.}  A route may take its request body as a stream:
C{sink(request, **params)} returns an L{IBodySink} or None (the body is
then spooled to C{request.content} as usual).  L{Router.body_sink_for} is
what a L{StreamingSite} asks when the headers arrive; the handler finds the
sink as C{request.body_sink} and a failed write as C{request.body_failure}.
A sink that cannot be chosen (its factory raised) drops the body and its
error is the answer: the handler does not run.  The body of a request that
reaches no route is dropped, never spooled.  Under a plain C{Site} the kit
feeds the spooled body to the route's sink before the handler runs, so a
handler sees the same either way.  A sink is chosen under the request's id
(L{speedy.logs.request_id}), as its handler runs under it, so a sink that
takes the id (a blob body's chunk writer) has its work carry it too.

B{Wrappers} (L{Router.wrap}) see every routed request: C{wrapper(route,
handler)} returns the handler to run instead, for authentication, metrics
or logging of every route at once.
"""

import re
from urllib.parse import unquote

from attrs import field, frozen
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectionClosed
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from zope.interface import implementer

from speedy.logs import new_request_id, request_id, run_as, sane_request_id
from speedy.web.streaming import IBodySink

log = Logger()

#: How much of a spooled C{request.content} is handed to a sink at once.
FEED_PIECE = 64 << 10

#: Statuses whose answers carry no body and no C{Content-Length}.
_NO_BODY = (204, 304)

_PLACEHOLDER = re.compile(r"\{(\w+)(:path)?\}")


class NoRoute(Exception):
    """No pattern matches the request's path (decoded, in C{path})."""

    def __init__(self, path):
        super().__init__(f"no such endpoint: {path[:300]}")
        self.path = path


class MethodNotAllowed(Exception):
    """The path's route has no handler for the method; C{allowed} lists
    those it has, in the order declared."""

    def __init__(self, method, allowed):
        super().__init__(f"{method} is not allowed here (only {', '.join(allowed)})")
        self.method = method
        self.allowed = tuple(allowed)


@frozen
class Answer:
    """
    An answer for the kit to write.

    @ivar headers: name to value (bytes or str).
    @ivar content_type: the C{Content-Type}, or None for none.
    @ivar length: the C{Content-Length} when it is not C{len(body)}: the
        length of what a HEAD answers about.  Answers of 204 and 304 have
        none.
    """

    status: int
    body: bytes = b""
    headers: dict = field(factory=dict)
    content_type: str | bytes | None = None
    length: int | None = None


def send_head(request, answer):
    """Set the status and headers of C{answer} on C{request} (its body is
    for the caller to write)."""
    request.setResponseCode(answer.status)
    for name, value in answer.headers.items():
        request.setHeader(name, value)
    if answer.content_type is not None:
        request.setHeader(b"content-type", answer.content_type)
    if answer.status not in _NO_BODY:
        length = len(answer.body) if answer.length is None else answer.length
        request.setHeader(b"content-length", b"%d" % (length,))


def write_answer(request, answer):
    """Write C{answer} to C{request} (its body not for a HEAD), unfinished."""
    send_head(request, answer)
    body = answer.body
    if body and request.method != b"HEAD" and answer.status not in _NO_BODY:
        request.write(body if type(body) is bytes else bytes(body))


def has_body(request):
    """@return: whether C{request} announces a body (chunked, or a
    C{Content-Length} above 0)."""
    if request.getHeader(b"transfer-encoding") is not None:
        return True
    try:
        return int(request.getHeader(b"content-length") or 0) > 0
    except ValueError:
        return False


def decoded_path(path):
    """@return: a request's path (bytes) percent-decoded as UTF-8, with
    U+FFFD for what is not UTF-8: the text patterns are matched against."""
    return unquote(path.decode("utf-8", "replace"))


@implementer(IBodySink)
class Discard:
    """
    A body nobody takes: its bytes are dropped as they arrive.  With an
    C{error}, the request is answered with it and its handler not run.
    """

    def __init__(self, error=None):
        self.error = error

    @property
    def refusal(self):
        """The error: a request that has one is answered before its body
        (see L{speedy.web.streaming.IBodySink})."""
        return self.error

    def write(self, data):
        """Drop C{data}."""

    def finish(self):
        """Nothing to flush."""

    def connection_lost(self, reason):
        """Nothing to clean up."""


class Route:
    """
    The handlers of one path pattern, by method.

    @ivar pattern: the pattern as declared, e.g. C{"/v1/files/{path:path}"}.
    @ivar name: a name for it (a registry endpoint's kind), or None.
    """

    def __init__(self, pattern, params=None, name=None):
        self.pattern = pattern
        self.name = name
        self.params = dict(params or {})
        self.handlers = {}  # method -> handler, in the order declared
        self.sinks = {}  # method -> sink factory
        self._regex = _compile(pattern)

    def match(self, text):
        """@return: the placeholders' converted values if C{text} (a
        decoded path) matches, else None.  @raise Exception: a converter's
        error."""
        m = self._regex.match(text)
        if m is None:
            return None
        return {name: self.params[name](value) if name in self.params else value
                for name, value in m.groupdict().items()}

    def handler_for(self, method):
        """@return: the handler of C{method} (str).  @raise MethodNotAllowed."""
        handler = self.handlers.get(method)
        if handler is None and method == "HEAD":
            handler = self.handlers.get("GET")
        if handler is None:
            raise MethodNotAllowed(method, self.handlers)
        return handler


def _under(path, prefix):
    """@return: whether C{path} is C{prefix} or below it."""
    return path == prefix or path.startswith(prefix + b"/")


def _compile(pattern):
    parts, last = [], 0
    for m in _PLACEHOLDER.finditer(pattern):
        parts.append(re.escape(pattern[last:m.start()]))
        parts.append(f"(?P<{m.group(1)}>{'.+' if m.group(2) else '[^/]+'})")
        last = m.end()
    parts.append(re.escape(pattern[last:]))
    return re.compile("".join(parts) + r"\Z", re.DOTALL)


class Router:
    """
    The routes of one HTTP surface and how it answers errors.

    @param answer_error: C{answer_error(error, request)} returns the
        L{Answer} to an exception (L{NoRoute} and L{MethodNotAllowed}
        included): the surface's one error shape.
    @param headers: set on every answer of this surface.
    @ivar resource: the L{IResource} serving the routes (and the mounts).
    """

    def __init__(self, answer_error, headers=None):
        self._answer_error = answer_error
        self._headers = dict(headers or {})
        self._routes = []
        self._wrappers = []
        self._wrapped = {}  # (route, method) -> the wrapped handler
        self._mounts = {}  # b"/segment" -> body_sink_for, or None
        self._delegates = {}  # b"/several/segments" -> the resource serving them
        self.resource = _RouterResource(self)

    def route(self, methods, pattern, handler, *, sink=None, params=None, name=None):
        """
        Answer C{methods} (one, or a tuple) on paths matching C{pattern}
        with C{handler}.  Declaring more methods of a pattern declared
        before adds them to its route.

        @param sink: C{sink(request, **params)} returning the L{IBodySink}
            the body streams into, or None to spool it.
        @param params: placeholder name to converter (text to value).
        @param name: a name for the route (see L{Route}).
        @return: the L{Route}.
        """
        route = next((r for r in self._routes if r.pattern == pattern), None)
        if route is None:
            route = Route(pattern, params, name)
            self._routes.append(route)
        elif params:
            route.params.update(params)
        for method in (methods,) if isinstance(methods, str) else methods:
            route.handlers[method] = handler
            if sink is not None:
                route.sinks[method] = sink
        self._wrapped.clear()
        return route

    def wrap(self, wrapper):
        """
        Run every route's handler through C{wrapper(route, handler)}, which
        returns the handler to run instead; it applies to the routes
        declared before and after, the first wrapper outermost.
        """
        self._wrappers.append(wrapper)
        self._wrapped.clear()

    def mount(self, segment, resource, body_sink_for=None):
        """
        Serve every path under C{/segment} with C{resource}, and choose the
        sinks of their bodies with C{body_sink_for(request)}.

        @param segment: bytes: one path segment (C{b"v2"}), a child of
            the router's resource; or several (C{b"v1/images"}), whose
            requests the router hands to C{resource.render} itself while
            the rest of their first segment stays its own.
        """
        if b"/" in segment:
            self._delegates[b"/" + segment] = resource
        else:
            self.resource.putChild(segment, resource)
        self._mounts[b"/" + segment] = body_sink_for

    def resolve(self, path):
        """
        @param path: a request's path (bytes, percent-encoded).
        @return: C{(route, params)}: the first route whose pattern matches,
            and its converted placeholders.
        @raise NoRoute: none matches.
        @raise Exception: what a converter raised.
        """
        text = decoded_path(path)
        for route in self._routes:
            params = route.match(text)
            if params is not None:
                return route, params
        raise NoRoute(text)

    def body_sink_for(self, request):
        """
        @return: the L{IBodySink} for the body of C{request}: its route's,
            a mount's, a L{Discard} (no route, or no sink could be chosen),
            or None to spool it.  It is chosen under the request's id
            (L{request_id_of}), the one its handler runs under later: what
            the sink starts (a blob's chunk writer, a session's lookup)
            serves the request, though the body's pieces arrive from the
            connection, outside the handler.
        """
        return run_as(request_id_of(request), self._body_sink_for, request)

    def _body_sink_for(self, request):
        for prefix, body_sink_for in self._mounts.items():
            if _under(request.path, prefix):
                return None if body_sink_for is None else body_sink_for(request)
        return self._sink(request)

    def _sink(self, request):
        try:
            route, params = self.resolve(request.path)
            method = request.method.decode("ascii", "replace")
            route.handler_for(method)
        except Exception:
            return Discard() if has_body(request) else None
        sink = route.sinks.get(method)
        if sink is None:
            return None
        try:
            return sink(request, **params)
        except Exception as e:
            return Discard(e)

    def _handler(self, route, method):
        key = (route, method)
        handler = self._wrapped.get(key)
        if handler is None:
            handler = route.handler_for(method)
            for wrapper in reversed(self._wrappers):
                handler = wrapper(route, handler)
            self._wrapped[key] = handler
        return handler

    def render(self, request):
        """Answer C{request} (see the module docstring)."""
        for prefix, resource in self._delegates.items():
            if _under(request.path, prefix):
                return resource.render(request)
        request.defaultContentType = None
        for name, value in self._headers.items():
            request.setHeader(name, value)
        rid = request_id_of(request)
        call = _Call(request)
        token = request_id.set(rid)
        try:  # the coroutine runs in a copy of this context: under the request's id
            d = Deferred.fromCoroutine(self._serve(call))
        finally:
            request_id.reset(token)
        d.addErrback(self._last_resort, call)
        return NOT_DONE_YET

    async def _serve(self, call):
        request = call.request
        try:
            route, params = self.resolve(request.path)
            handler = self._handler(route, request.method.decode("ascii", "replace"))
            await self._take_body(request, route, params)
            answer = await handler(request, **params)
            if not call.gone and not request.finished:
                if answer is not None:
                    write_answer(request, answer)
                request.finish()
        except Exception:
            self._failed(call, Failure())

    async def _take_body(self, request, route, params):
        """
        Under a plain C{Site}, or for a streaming request that could not
        stream (C{body_sink_chosen} false), feed the spooled body to the
        route's sink; raise the error of a body whose sink could not be
        chosen.
        """
        if not getattr(request, "body_sink_chosen", False):
            request.body_sink = request.body_failure = None
            sink = self._sink(request)
            if sink is not None:
                await _feed(request, sink)
        if isinstance(request.body_sink, Discard) and request.body_sink.error is not None:
            raise request.body_sink.error

    def _failed(self, call, failure):
        """
        End a request whose handling failed (see the module docstring).  A
        cancellation or a lost connection most likely means the client went
        away (a consumer the transport stopped as it closed, before the
        request heard of it): the request is ended all the same, with a log
        line rather than a traceback.
        """
        request = call.request
        went_away = failure.check(CancelledError, ConnectionClosed) is not None
        if call.gone or request.finished:
            if not went_away and self._answer_error(failure.value, request).status == 500:
                self._log_failure(failure, request, "failed")
            return
        if request.startedWriting:
            self._log_failure(failure, request, "broke off after its answer began", went_away)
            request.loseConnection()
            return
        answer = self._answer_error(failure.value, request)
        if answer.status == 500:
            self._log_failure(failure, request, "failed", went_away)
        write_answer(request, answer)
        request.finish()

    @staticmethod
    def _log_failure(failure, request, what, quietly=False):
        if quietly:
            log.info("{method} {uri} {what}: {why}", method=request.method, uri=request.uri,
                     what=what, why=failure.getErrorMessage())
        else:
            log.failure("{method} {uri} {what}", failure, method=request.method, uri=request.uri,
                        what=what)

    def _last_resort(self, failure, call):
        """Answering failed (a bug in the kit or an error shape): a bare
        500 if nothing was sent yet, else close the connection."""
        request = call.request
        self._log_failure(failure, request, "could not be answered")
        if call.gone or request.finished:
            return
        try:
            if request.startedWriting:
                raise RuntimeError("the answer began")
            write_answer(request, Answer(500))
            request.finish()
        except Exception:
            request.loseConnection()


def request_id_of(request):
    """
    @return: the id of C{request} (L{speedy.logs}): its sane C{X-Request-Id},
        else a new one; kept on the request as C{request_id} and answered
        in C{X-Request-Id}.  Every error shape puts it in its body too
        (C{"request_id"}), so a failed request can be found in the logs.
    """
    rid = getattr(request, "request_id", None)
    if rid is None:
        rid = sane_request_id(request.getHeader(b"x-request-id")) or new_request_id()
        request.request_id = rid
        request.setHeader(b"X-Request-Id", rid.encode("ascii"))
    return rid


class _RouterResource(Resource):
    """A L{Router}'s resource: its mounts are its children; every other
    path is answered by the router."""

    def __init__(self, router):
        super().__init__()
        self._router = router
        self._leaf = _Leaf(router)

    def getChild(self, path, request):
        return self._leaf

    def render(self, request):
        return self._router.render(request)


class _Leaf(Resource):
    isLeaf = True

    def __init__(self, router):
        super().__init__()
        self._router = router

    def render(self, request):
        return self._router.render(request)


class _Call:
    """
    One request being answered, and whether its client went away.

    The request holds its call (C{speedy_call}), so the call lives exactly
    as long as the request.  (A C{WeakKeyDictionary} of request -> call
    held every request forever, since the call refers to its request: some
    24 objects a request that every full collection of Python's garbage
    collector then walked, until its pauses reached a second.)
    """

    def __init__(self, request):
        self.request = request
        self.gone = False
        self._on_gone = []
        request.speedy_call = self
        request.notifyFinish().addErrback(self._lost)

    def _lost(self, _):
        self.gone = True
        on_gone, self._on_gone = self._on_gone, []
        for callback in on_gone:
            callback()

    def when_gone(self, callback):
        if self.gone:
            callback()
        else:
            self._on_gone.append(callback)


def cancel_when_gone(request, deferred):
    """
    Cancel C{deferred} (upstream work for C{request}: a read, a long-poll)
    if the client goes away before the answer is complete; at once if it
    already has.

    @return: C{deferred}.
    """
    call = getattr(request, "speedy_call", None)
    if call is not None:
        call.when_gone(deferred.cancel)
    else:
        request.notifyFinish().addErrback(lambda _: deferred.cancel())
    return deferred


async def _feed(request, sink):
    """Hand C{sink} the body a plain C{Site} spooled, as a
    L{speedy.web.streaming.StreamingRequest} would: a failed write keeps its failure in C{request.body_failure} and
    ends the writes, else the sink is finished."""
    request.body_sink = sink
    content = request.content
    content.seek(0)
    try:
        while True:
            piece = content.read(FEED_PIECE)
            if not piece:
                break
            waiting = sink.write(piece)
            if waiting is not None:
                await waiting
    except Exception:
        request.body_failure = Failure()
        return
    sink.finish()
