# -*- test-case-name: speedy.test.test_webjson -*-
"""
JSON in and out for the REST APIs (chunkmaster, imageserver file API).

Errors are C{{"error": {"code": "BAD_REQUEST", "message": "..."}}} with a
4xx/5xx status.  The registry API has its own error body (the spec's
C{{"errors": [...]}}) in L{speedy.registry}.
"""

import json

from speedy import errors

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


def write_json(request, status, body, headers=None):
    """Answer C{body} as JSON with C{status}; returns the encoded bytes for
    C{render_*} to return."""
    payload = json.dumps(body, separators=(",", ":"), sort_keys=True).encode("utf-8")
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"content-length", str(len(payload)).encode("ascii"))
    for name, value in (headers or {}).items():
        request.setHeader(name, value)
    if request.method == b"HEAD":
        return b""
    return payload


def error_body(code, message):
    return {"error": {"code": code, "message": message}}


def write_error(request, status, code, message):
    """Answer a JSON error."""
    return write_json(request, status, error_body(code, message))


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
    if not isinstance(value, dict):
        raise errors.BadRequest("expected a JSON object")
    return value
