# -*- test-case-name: speedy.test.test_imageserver_fileapi -*-
"""
What the imageserver's REST resources share: running an C{async def}
handler for a request, turning its errors into JSON answers, and JSON
404/405 answers where twisted.web would answer HTML.
"""

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from speedy.web.json import status_for, write_error

log = Logger()


def respond(request, handler):
    """
    Run C{handler} (a coroutine) for C{request}.  It answers the bytes of
    the body, already having set the status and headers, or None when it
    finished the request itself.  A Speedy error it raises becomes a JSON
    error with its status; anything else is logged and answered 500.

    @return: C{NOT_DONE_YET}, for C{render_*} to return.
    """
    d = Deferred.fromCoroutine(handler)
    d.addCallbacks(lambda body: _finish(request, body), lambda f: answer_failure(request, f))
    d.addErrback(lambda f: log.failure("answering {uri!r} failed", f, uri=request.uri))
    return NOT_DONE_YET


def _finish(request, body):
    if body is not None and not request._disconnected:
        request.write(body)
        request.finish()


def answer_failure(request, failure):
    """Answer C{failure} as a JSON error (logging it when it is a bug)."""
    status, code = status_for(failure.value)
    if status >= 500 and code == "INTERNAL":
        log.failure("{method} {uri!r} failed", failure, method=request.method, uri=request.uri)
    if request._disconnected:
        return
    if request.startedWriting:
        # The answer's head is out: all that is left is to cut it short.
        request.transport.abortConnection()
        return
    _finish(request, write_error(request, status, code, failure.getErrorMessage()))


class JSONDirectory(Resource):
    """A L{Resource} whose unknown children answer a JSON 404."""

    def getChild(self, path, request):
        return NotFound()


class NotFound(Resource):
    """Answers 404 NOT_FOUND to every method."""

    isLeaf = True

    def render(self, request):
        return write_error(request, 404, "NOT_FOUND", f"nothing at {request.path!r}")


class JSONLeaf(Resource):
    """A leaf L{Resource} that answers a method it lacks with a JSON 405."""

    isLeaf = True

    def render(self, request):
        method = request.method.decode("ascii", "replace")
        if method == "HEAD" and getattr(self, "render_GET", None) is not None:
            return Resource.render(self, request)  # twisted.web answers HEAD from GET
        if getattr(self, "render_" + method, None) is None:
            allowed = sorted(name[len("render_"):] for name in dir(self)
                             if name.startswith("render_") and name[len("render_"):].isupper())
            request.setHeader(b"allow", ", ".join(allowed).encode("ascii"))
            return write_error(request, 405, "METHOD_NOT_ALLOWED",
                               f"{method} is not one of {', '.join(allowed)}")
        return Resource.render(self, request)
