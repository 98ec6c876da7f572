# -*- test-case-name: speedy.test.test_webjson -*-
"""
JSON in and out for the REST APIs of the chunkmaster and the imageserver
(L{speedy.web.rest} routes them): answers, request bodies, and their one
error shape, L{answer_json_error}.

Errors are C{{"error": {"code": "BAD_REQUEST", "message": "..."}}} with a
4xx/5xx status.  The registry API has its own error body (the spec's
C{{"errors": [...]}}) in L{speedy.registry}.
"""

import json

from speedy import errors
from speedy.web.rest import Answer, MethodNotAllowed, NoRoute

#: HTTP status for each Speedy error, when a REST handler lets one escape.
STATUS_FOR_ERROR = {
    errors.ChunkNotFound: 404,
    errors.NotFound: 404,
    errors.ChunkExists: 409,
    errors.ChecksumMismatch: 502,
    errors.ReadOnly: 503,
    errors.NoSpace: 507,
    errors.TooLarge: 413,
    errors.BadRequest: 400,
    errors.RangeNotSatisfiable: 416,
    errors.Busy: 503,
    errors.Timeout: 504,
    errors.ConnectionFailed: 502,
    errors.NoWritableGroup: 503,
    errors.Unavailable: 503,
}


class HTTPError(Exception):
    """An answer other than success that is not a Speedy error: a 401 with
    its C{WWW-Authenticate}, a 403."""

    def __init__(self, status, code, message, headers=None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.headers = headers or {}


def json_bytes(value):
    """@return: C{value} as the APIs' JSON: compact, keys sorted, UTF-8."""
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode("utf-8")


def json_answer(status, value, headers=None):
    """@return: the L{Answer} carrying C{value} as JSON."""
    return Answer(status, json_bytes(value), dict(headers or {}), content_type=b"application/json")


def error_body(code, message, request_id=None):
    """@return: the JSON APIs' error body, with the request's id (see
    L{speedy.web.rest.request_id_of}) when it has one."""
    body = {"error": {"code": code, "message": message}}
    if request_id is not None:
        body["request_id"] = request_id
    return body


def json_error(error):
    """
    @return: the L{HTTPError} answering C{error}: itself, the status and
        code of a Speedy error (L{status_for}), 404 for L{NoRoute}, 405
        with C{Allow} for L{MethodNotAllowed}, and 500 INTERNAL ("internal
        error": the details go to the log) for anything else.
    """
    if isinstance(error, HTTPError):
        return error
    if isinstance(error, NoRoute):
        return HTTPError(404, "NOT_FOUND", "no such endpoint")
    if isinstance(error, MethodNotAllowed):
        return HTTPError(405, "METHOD_NOT_ALLOWED", str(error),
                         {b"allow": ", ".join(error.allowed).encode("ascii")})
    status, code = status_for(error)
    return HTTPError(status, code, "internal error" if status == 500 else str(error))


def answer_json_error(error, request):
    """The error shape of the JSON APIs (a L{speedy.web.rest.Router}'s
    C{answer_error}): C{{"error": {"code", "message"}, "request_id"}} with
    the status of L{json_error}."""
    refusal = json_error(error)
    return json_answer(refusal.status, error_body(refusal.code, str(refusal),
                                                  getattr(request, "request_id", None)),
                       refusal.headers)


def status_for(exc):
    """
    The HTTP status and error code name for an exception (500 INTERNAL for
    anything that is not a Speedy error).  An exception's C{error_code}
    attribute, when it has one, names it more precisely than the listed
    class it derives from (C{FileNotFound(ChunkNotFound)} is FILE_NOT_FOUND).
    """
    for cls in type(exc).__mro__:
        if cls in STATUS_FOR_ERROR:
            return STATUS_FOR_ERROR[cls], getattr(exc, "error_code", None) or _code_name(cls)
    return 500, "INTERNAL"


def _code_name(cls):
    name = cls.__name__
    return "".join("_" + c if c.isupper() and i else c for i, c in enumerate(name)).upper()


def read_json(request, max_bytes=1 << 20):
    """
    Decode the request body as a JSON object.

    @raise errors.BadRequest: not JSON, not an object, or too large.
    """
    request.content.seek(0)
    raw = request.content.read(max_bytes + 1)
    if len(raw) > max_bytes:
        raise errors.TooLarge(f"JSON body over {max_bytes} bytes")
    try:
        value = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise errors.BadRequest(f"malformed JSON: {e}")
    except RecursionError:
        raise errors.BadRequest("malformed JSON: nested too deeply")
    if not isinstance(value, dict):
        raise errors.BadRequest("expected a JSON object")
    return value
