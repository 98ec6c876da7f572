# -*- test-case-name: speedy.test.test_registry_v1 -*-
"""
How V1 answers failures: docker-registry's C{{"error": "<message>"}} body
with the status, the messages Docker 1.x clients read (C{"Image already
exists"} makes C{docker push} skip an image).
"""

import json

from speedy import errors
from speedy.registry.errors import RegistryError
from speedy.web.rest import Answer, MethodNotAllowed, NoRoute

#: Failures of the metadata store or storage that clear by themselves: 503.
_TRANSIENT = (errors.Unavailable, errors.Busy, errors.Timeout, errors.ConnectionFailed)


class V1Error(Exception):
    """A failed V1 request: C{status} and docker-registry's error body."""

    def __init__(self, message, status=400, headers=None):
        super().__init__(message)
        self.message = message
        self.status = status
        self.headers = dict(headers or {})


def v1_error(error):
    """
    @return: the L{V1Error} answering C{error}: itself; the status and
        message of a L{RegistryError} (a body over its limit, a range
        outside the layer); 404 for no endpoint; 405 with C{Allow} for a
        method an endpoint lacks; 503 for a store or storage that is away;
        500 for anything else (a bug).
    """
    if isinstance(error, V1Error):
        return error
    if isinstance(error, RegistryError):
        return V1Error(error.message, error.status, error.headers)
    if isinstance(error, NoRoute):
        return V1Error("Not found", 404)
    if isinstance(error, MethodNotAllowed):
        return V1Error(f"{error.method} is not supported here", 405,
                       {"Allow": ", ".join(error.allowed)})
    if isinstance(error, _TRANSIENT):
        return V1Error(f"Service unavailable, retry later: {error}", 503)
    return V1Error("Internal error", 500)


def answer_v1_error(error, request):
    """The V1 error shape (its L{speedy.web.rest.Router}'s C{answer_error})."""
    error = v1_error(error)
    body = json.dumps({"error": error.message}).encode("utf-8")
    return Answer(error.status, body, error.headers, content_type="application/json")
