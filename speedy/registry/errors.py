# -*- test-case-name: speedy.test.test_registry_names -*-
"""
The distribution-spec's error codes and the JSON body every failed answer
carries::

    {"errors": [{"code": "BLOB_UNKNOWN", "message": "...", "detail": {...}}],
     "request_id": "5f0c1d2e3a4b5c6d"}

C{request_id} is the request's id (L{speedy.logs}; also in the
C{X-Request-Id} header), beside the spec's C{errors}: clients read only
C{errors}, and an operator finds the request's log lines, the
chunkservers' included, by it.

A handler raises L{RegistryError}; L{speedy.registry.api} turns it into the
status and body.  Besides the spec's codes we use three that Distribution
uses (C{RANGE_INVALID}, C{PAGINATION_NUMBER_INVALID}, C{TAG_INVALID}) and
C{UNAVAILABLE} (503) for a metadata store or storage that cannot be reached.
Two codes are answered with another status than their usual one: a
manifest over the size limit is C{SIZE_INVALID} with 413, and a manifest
PUT with more C{?tag=} than L{speedy.registry.manifests.MAX_TAG_PARAMS} is
C{TAG_INVALID} with 414 (the status the spec names for it).
"""

import json

from attrs import frozen


@frozen
class ErrorCode:
    """One error code: its name, HTTP status and default message."""

    name: str
    status: int
    message: str


BLOB_UNKNOWN = ErrorCode("BLOB_UNKNOWN", 404, "blob unknown to registry")
BLOB_UPLOAD_INVALID = ErrorCode("BLOB_UPLOAD_INVALID", 400, "blob upload invalid")
BLOB_UPLOAD_UNKNOWN = ErrorCode("BLOB_UPLOAD_UNKNOWN", 404, "blob upload unknown to registry")
DIGEST_INVALID = ErrorCode("DIGEST_INVALID", 400, "provided digest did not match uploaded content")
MANIFEST_BLOB_UNKNOWN = ErrorCode(
    "MANIFEST_BLOB_UNKNOWN", 400, "manifest references a manifest or blob unknown to registry")
MANIFEST_INVALID = ErrorCode("MANIFEST_INVALID", 400, "manifest invalid")
MANIFEST_UNKNOWN = ErrorCode("MANIFEST_UNKNOWN", 404, "manifest unknown to registry")
NAME_INVALID = ErrorCode("NAME_INVALID", 400, "invalid repository name")
NAME_UNKNOWN = ErrorCode("NAME_UNKNOWN", 404, "repository name not known to registry")
SIZE_INVALID = ErrorCode("SIZE_INVALID", 400, "provided length did not match content length")
MANIFEST_TOO_LARGE = ErrorCode("SIZE_INVALID", 413, "manifest too large")
UNSUPPORTED = ErrorCode("UNSUPPORTED", 405, "the operation is unsupported")
NOT_FOUND = ErrorCode("UNSUPPORTED", 404, "no such endpoint")
TOOMANYREQUESTS = ErrorCode("TOOMANYREQUESTS", 429, "too many requests")
RANGE_INVALID = ErrorCode("RANGE_INVALID", 416, "invalid content range")
PAGINATION_NUMBER_INVALID = ErrorCode(
    "PAGINATION_NUMBER_INVALID", 400, "invalid number of results requested")
TAG_INVALID = ErrorCode("TAG_INVALID", 400, "invalid tag")
TOO_MANY_TAGS = ErrorCode("TAG_INVALID", 414, "too many tag parameters in one request")
UNAVAILABLE = ErrorCode("UNAVAILABLE", 503, "service unavailable, retry later")
UNKNOWN = ErrorCode("UNKNOWN", 500, "unknown error")


class RegistryError(Exception):
    """
    A failed registry request, answered with C{code.status} and the spec's
    error body.  C{headers} are added to the answer (a 416 carries the
    upload's current C{Range}).
    """

    def __init__(self, code, message=None, detail=None, headers=None, more=()):
        super().__init__(message or code.message)
        self.code = code
        self.message = message or code.message
        self.detail = detail
        self.headers = dict(headers or {})
        #: further errors of the same answer (one per missing blob)
        self.more = tuple(more)

    @property
    def status(self):
        return self.code.status

    def body(self, request_id=None):
        """@return: the JSON error body as bytes."""
        return error_body([self] + list(self.more), request_id)


def error_body(errors, request_id=None):
    """
    @param errors: L{RegistryError}s.
    @param request_id: the id of the request answered, or None.
    @return: the UTF-8 JSON C{{"errors": [...]}} body listing them (and
        C{request_id}, when given).
    """
    body = {"errors": [
        {"code": e.code.name, "message": e.message, "detail": e.detail if e.detail is not None else {}}
        for e in errors
    ]}
    if request_id is not None:
        body["request_id"] = request_id
    return json.dumps(body, separators=(",", ":")).encode("utf-8")
