# -*- test-case-name: speedy.test.test_chunkmaster_api -*-
"""
The chunkmaster's REST API on Twisted Web: JSON in and out, JSON errors.
C{docs/chunkmaster-api.yaml} documents every endpoint; this is the tree:

    /v1/health                              GET     no credentials
    /v1/heartbeat                           POST    cluster secret
    /v1/cluster[?wait=S]                    GET     cluster secret
    /v1/file-ids                            POST    cluster secret
    /v1/admin/servers                       POST    admin token
    /v1/admin/servers/<server_id>           DELETE  admin token
    /v1/admin/servers/<server_id>/drain     POST    admin token
    /v1/admin/groups/<group_id>             PUT     admin token

Each endpoint is an L{_Endpoint}: its C{async def handle_<METHOD>} returns
C{(status, body, headers)}, and every exception becomes a JSON error with
its status, logged.
"""

import hmac

from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from speedy import errors
from speedy.chunkmaster import messages
from speedy.web.json import error_body, read_json, status_for, write_json

#: The longest a C{GET /v1/cluster?wait=S} long-poll waits.
MAX_WAIT = 30.0


class HTTPError(Exception):
    """An answer other than success that is not a Speedy error."""

    def __init__(self, status, code, message, headers=None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.headers = headers or {}


class BearerToken:
    """
    A secret that callers present as C{Authorization: Bearer <secret>},
    compared in constant time.

    @ivar secret: the expected secret, or None when none is configured.
    @ivar required: whether a call is refused (403) when none is configured,
        rather than let through.
    """

    def __init__(self, secret, required):
        self.secret = secret.encode("utf-8") if secret else None
        self.required = required

    def check(self, request):
        """
        @raise HTTPError: 401 if the request lacks the secret or presents
            another one; 403 if a secret is required and none is configured.
        """
        if self.secret is None:
            if self.required:
                raise HTTPError(403, "FORBIDDEN", "admin calls are disabled: no admin token is configured")
            return
        scheme, _, presented = (request.getHeader(b"authorization") or b"").partition(b" ")
        if scheme.lower() != b"bearer" or not hmac.compare_digest(presented.strip(), self.secret):
            raise HTTPError(401, "UNAUTHORIZED", "missing or wrong bearer token",
                            {b"www-authenticate": b"Bearer"})


class _Directory(Resource):
    """A path segment with children only: anything else is a JSON 404."""

    def getChild(self, path, request):
        return _NotFound()

    def render(self, request):
        return write_json(request, 404, error_body("NOT_FOUND", "no such endpoint"))


class _NotFound(_Directory):
    isLeaf = True


class _Endpoint(_Directory):
    """
    A JSON endpoint.  Subclasses define C{async def handle_GET(request)} and
    the like, returning C{(status, body, headers)} (C{body} None for an
    empty answer), and set C{token} to the L{BearerToken} callers need.
    """

    log = Logger()
    token = None

    def render(self, request):
        method = request.method.decode("ascii", "replace")
        handler = getattr(self, "handle_" + ("GET" if method == "HEAD" else method), None)
        if handler is None:
            allowed = ", ".join(sorted(n[len("handle_"):] for n in dir(self) if n.startswith("handle_")))
            request.setHeader(b"allow", allowed.encode("ascii"))
            return write_json(request, 405, error_body("METHOD_NOT_ALLOWED", f"{method} is not allowed here"))
        gone = []
        request.notifyFinish().addErrback(gone.append)
        Deferred.fromCoroutine(self._answer(handler, request, gone)).addErrback(
            lambda f: self.log.failure("answering {method} {uri}", f, method=method, uri=_text(request.uri)))
        return NOT_DONE_YET

    async def _answer(self, handler, request, gone):
        try:
            if self.token is not None:
                self.token.check(request)
            status, body, headers = await handler(request)
        except CancelledError:
            if gone:
                return
            raise
        except Exception:
            status, body, headers = self._error(request, Failure())
        if gone:
            return
        if body is None:
            request.setResponseCode(status)
            for name, value in headers.items():
                request.setHeader(name, value)
        else:
            request.write(write_json(request, status, body, headers))
        request.finish()

    def _error(self, request, failure):
        """@return: the C{(status, body, headers)} answering C{failure}, logged."""
        exc = failure.value
        if isinstance(exc, HTTPError):
            status, code, headers = exc.status, exc.code, exc.headers
        else:
            (status, code), headers = status_for(exc), {}
        if status == 500:
            self.log.failure("{method} {uri} failed", failure, method=_text(request.method),
                             uri=_text(request.uri))
            message = "internal error"
        else:
            message = str(exc)
            self.log.info("{method} {uri}: {status} {code}: {message}", method=_text(request.method),
                          uri=_text(request.uri), status=status, code=code, message=message)
        return status, error_body(code, message), headers


class Health(_Endpoint):
    async def handle_GET(self, request):
        return 200, {"ok": True}, {}


class Heartbeat(_Endpoint):
    """Chunkservers report here every few seconds."""

    def __init__(self, cluster, token):
        super().__init__()
        self._cluster = cluster
        self.token = token

    async def handle_POST(self, request):
        report = messages.parse_heartbeat(read_json(request))
        state = await self._cluster.heartbeat(report)
        return 200, {"state": state, "cluster_version": self._cluster.version}, {}


class ClusterView(_Endpoint):
    """
    The versioned cluster view, with C{ETag: "<version>"}.  A matching
    C{If-None-Match} answers 304, after waiting up to C{?wait=S} seconds
    for a newer version.
    """

    def __init__(self, cluster, token):
        super().__init__()
        self._cluster = cluster
        self.token = token

    async def handle_GET(self, request):
        wait = _wait_argument(request)
        known = _etag_version(request.getHeader(b"if-none-match"))
        if known == self._cluster.version and wait > 0:
            waiter = self._cluster.wait_for_change(known, wait)
            request.notifyFinish().addErrback(lambda _: waiter.cancel())
            await waiter
        version = self._cluster.version
        headers = {b"etag": b'"%d"' % (version,), b"cache-control": b"no-cache"}
        if known == version:
            return 304, None, headers
        return 200, self._cluster.view(), headers


class FileIds(_Endpoint):
    """Ranges of never-issued file ids, straight from the store."""

    def __init__(self, store, max_count, token):
        super().__init__()
        self._store = store
        self._max_count = max_count
        self.token = token

    async def handle_POST(self, request):
        count = min(messages.parse_file_id_count(read_json(request)), self._max_count)
        start, end = await self._store.allocate_file_ids(count)
        return 200, {"start": start, "end": end}, {}


class AdminServers(_Endpoint):
    """C{POST} registers a server; its children are the servers by id."""

    def __init__(self, cluster, token):
        super().__init__()
        self._cluster = cluster
        self.token = token

    async def handle_POST(self, request):
        server_id, group_id, address = messages.parse_registration(read_json(request))
        server, created = await self._cluster.add_server(server_id, group_id, address)
        return (201 if created else 200), _server_answer(server), {}

    def getChild(self, path, request):
        try:
            server_id = messages.parse_server_id(path.decode("utf-8"))
        except (UnicodeDecodeError, errors.BadRequest):
            return _NotFound()
        return AdminServer(self._cluster, self.token, server_id)


class AdminServer(_Endpoint):
    """C{DELETE} removes the server; C{drain} is its child."""

    def __init__(self, cluster, token, server_id):
        super().__init__()
        self._cluster = cluster
        self.token = token
        self._server_id = server_id
        self.putChild(b"drain", DrainServer(cluster, token, server_id))

    async def handle_DELETE(self, request):
        await self._cluster.remove_server(self._server_id)
        return 204, None, {}


class DrainServer(_Endpoint):
    def __init__(self, cluster, token, server_id):
        super().__init__()
        self._cluster = cluster
        self.token = token
        self._server_id = server_id

    async def handle_POST(self, request):
        server = await self._cluster.drain_server(self._server_id)
        return 200, _server_answer(server), {}


class AdminGroups(_Directory):
    """Its children are the groups by id."""

    def __init__(self, cluster, token):
        super().__init__()
        self._cluster = cluster
        self._token = token

    def getChild(self, path, request):
        if not path.isdigit():
            return _NotFound()
        try:
            group_id = messages.parse_group_id(int(path))
        except errors.BadRequest:
            return _NotFound()
        return AdminGroup(self._cluster, self._token, group_id)


class AdminGroup(_Endpoint):
    """C{PUT {"read_only": bool}} creates the group if needed and sets its flag."""

    def __init__(self, cluster, token, group_id):
        super().__init__()
        self._cluster = cluster
        self.token = token
        self._group_id = group_id

    async def handle_PUT(self, request):
        read_only = messages.parse_group_update(read_json(request))
        group = await self._cluster.set_group_read_only(self._group_id, read_only)
        return 200, {
            "group_id": group.group_id,
            "read_only": group.read_only,
            "writable": self._cluster.writable(group.group_id),
        }, {}


def build_api(cluster, store, cluster_secret=None, admin_token=None, max_file_ids=10000):
    """
    @param cluster: the L{speedy.chunkmaster.cluster.Cluster}.
    @param store: the L{speedy.interfaces.IClusterTables} file ids come from.
    @param cluster_secret: what heartbeats, view and file-id calls must
        present; None lets them through.
    @param admin_token: what admin calls must present; None refuses them.
    @param max_file_ids: the most file ids one call hands out.
    @return: the root L{Resource} of the API.
    """
    cluster_token = BearerToken(cluster_secret, required=False)
    admin = BearerToken(admin_token, required=True)
    root, v1, admin_root = _Directory(), _Directory(), _Directory()
    root.putChild(b"v1", v1)
    v1.putChild(b"health", Health())
    v1.putChild(b"heartbeat", Heartbeat(cluster, cluster_token))
    v1.putChild(b"cluster", ClusterView(cluster, cluster_token))
    v1.putChild(b"file-ids", FileIds(store, max_file_ids, cluster_token))
    v1.putChild(b"admin", admin_root)
    admin_root.putChild(b"servers", AdminServers(cluster, admin))
    admin_root.putChild(b"groups", AdminGroups(cluster, admin))
    return root


def _text(raw):
    return raw.decode("utf-8", "replace")


def _server_answer(server):
    return {
        "server_id": server.server_id,
        "group_id": server.group_id,
        "address": server.address,
        "state": server.state,
    }


def _wait_argument(request):
    """@return: the C{wait} query argument in seconds, at most L{MAX_WAIT};
    0 when absent.  @raise BadRequest: it is not a non-negative number."""
    values = request.args.get(b"wait")
    if not values:
        return 0.0
    try:
        wait = float(values[0])
    except ValueError:
        wait = -1.0
    if not 0 <= wait < float("inf"):
        raise errors.BadRequest(f"wait must be a number of seconds, not {values[0]!r}")
    return min(wait, MAX_WAIT)


def _etag_version(header):
    """
    @return: the version an C{If-None-Match} header names (C{"7"} or
        C{W/"7"}; the first of a list), or None.
    """
    if not header:
        return None
    tag = header.split(b",")[0].strip()
    if tag.startswith(b"W/"):
        tag = tag[2:]
    tag = tag.strip(b'"')
    return int(tag) if tag.isdigit() else None
