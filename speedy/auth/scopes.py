# -*- test-case-name: speedy.test.test_auth -*-
"""
What a request to an imageserver asks for: a L{Scope} from its method and
path, decided before its body arrives (so a refused push never streams).

| path | needs |
|---|---|
| C{/v1/health}, C{/healthz}, C{/readyz}, C{/v1/_ping}, C{/token} | nothing (the token service logs its callers in itself) |
| C{/v2/} | a logged-in user (anonymous callers are asked to log in, so that clients send their credentials) |
| C{/v2/_catalog}, C{/v1/search} | a caller with some access (the catalog is filtered) |
| C{/v2/NAME/...} | C{pull} (GET, HEAD), C{push} (PUT, POST, PATCH), C{delete} (DELETE) on NAME; a cross-repository mount also C{pull} on its source |
| C{/v1/repositories/NAME/...} | the same on NAME |
| C{/v1/images/...} | C{pull} (GET, HEAD) or C{push} (PUT) on some repository |
| anything else (C{/v1/files}, C{/v1/chunks}, ...) | C{admin} |
"""

import functools
from urllib.parse import parse_qs, unquote, urlsplit

from attrs import frozen

PUBLIC = frozenset({"/v1/health", "/healthz", "/readyz", "/v1/_ping", "/v1/_ping/", "/token"})
_REGISTRY_PARTS = ("/manifests/", "/blobs/", "/tags/list", "/referrers/")
_ACTION_OF = {"GET": "pull", "HEAD": "pull", "PUT": "push", "POST": "push", "PATCH": "push",
              "DELETE": "delete"}


@frozen
class Scope:
    """
    @ivar kind: C{"public"}, C{"login"} (a user), C{"any"} (some access),
        C{"repository"},
        C{"somewhere"} (C{action} on some repository) or C{"admin"}.
    @ivar registry: the error shape to answer with: C{"v2"}, C{"v1"} or
        C{"json"}.
    """

    kind: str
    registry: str = "json"
    repository: str | None = None
    action: str | None = None
    also_pull: str | None = None  # a mount's source repository


@functools.lru_cache(maxsize=4096)
def scope_of(method, uri):
    """
    @param method: the request's method (str).
    @param uri: the request's URI (bytes or str, with its query).
    @return: the L{Scope} the request needs.
    """
    if isinstance(uri, bytes):
        uri = uri.decode("utf-8", "replace")
    parts = urlsplit(uri)
    path = unquote(parts.path)
    if path in PUBLIC:
        return Scope("public")
    if path in ("/v2", "/v2/"):
        # Always asks anonymous callers to log in (as Distribution does): a
        # client that got 200 here would never send its credentials.
        return Scope("login", "v2")
    if path in ("/v2/_catalog", "/v2/_catalog/"):
        return Scope("any", "v2")
    if path.startswith("/v2/"):
        action = _ACTION_OF.get(method, "push")
        name = _registry_name(path[len("/v2/"):])
        if name is None:
            return Scope("any", "v2")
        source = None
        if method == "POST" and "/blobs/uploads" in path:
            source = parse_qs(parts.query).get("from", [None])[0]
        return Scope("repository", "v2", name, action, source)
    if path.startswith("/v1/repositories/"):
        rest = path[len("/v1/repositories/"):].strip("/").split("/")
        name = "/".join(rest[:2]) if len(rest) >= 2 and rest[1] not in ("tags", "images") \
            else "library/" + rest[0] if rest and rest[0] else None
        if name is None:
            return Scope("admin", "v1")
        return Scope("repository", "v1", name, _ACTION_OF.get(method, "push"))
    if path.startswith("/v1/images/"):
        return Scope("somewhere", "v1", action="pull" if method in ("GET", "HEAD") else "push")
    if path.startswith("/v1/search"):
        return Scope("any", "v1")
    return Scope("admin")


def _registry_name(rest):
    """@return: the repository name at the start of C{rest} (the path after
    C{/v2/}), or None: what comes before the last C{/manifests/},
    C{/blobs/}, C{/tags/list} or C{/referrers/} (a name may hold those
    words; what follows them, a reference, digest or upload id, may not)."""
    at = max(rest.rfind(part) for part in _REGISTRY_PARTS)
    return rest[:at] if at > 0 else None
