# -*- test-case-name: speedy.test.test_registry_api -*-
"""
The registry HTTP API (OCI distribution-spec v1.1, Docker Registry HTTP API
V2): pull, push, content discovery and content management, as one Twisted
Web resource mounted at C{/v2}.

    api = RegistryAPI(metadata, storage, reactor)
    root.putChild(b"v2", api.resource)
    site = StreamingSite(root, api.body_sink_for, reactor)
    api.start()    # stale upload expiry; api.stop() ends it

Routes (C{<name>} may hold slashes; everything else is one path segment)::

    GET    /v2/                                      200 {}
    GET    /v2/_catalog?n=&last=                     repositories
    GET    /v2/<name>/tags/list?n=&last=             tags
    GET    /v2/<name>/manifests/<reference>          also HEAD, PUT (?tag=...), DELETE
    GET    /v2/<name>/blobs/<digest>                 also HEAD, DELETE
    POST   /v2/<name>/blobs/uploads/                 ?digest= | ?mount=[&from=]
    GET    /v2/<name>/blobs/uploads/<id>             also PATCH, PUT ?digest=, DELETE
    GET    /v2/<name>/referrers/<digest>             ?artifactType=

Blob bodies stream through L{speedy.registry.bodies.BlobBody} sinks that
L{RegistryAPI.body_sink_for} hands the C{StreamingSite}; under a plain
C{Site} the spooled C{request.content} is fed through the same sinks.
"""

import json
import re
from urllib.parse import quote, unquote

from attrs import frozen
from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.error import ConnectionClosed
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from speedy import errors
from speedy.registry.blobs import Blobs, parse_range
from speedy.registry.bodies import BoundedBody, feed
from speedy.registry.errors import (
    BLOB_UPLOAD_UNKNOWN,
    DIGEST_INVALID,
    MANIFEST_TOO_LARGE,
    NAME_UNKNOWN,
    NOT_FOUND,
    PAGINATION_NUMBER_INVALID,
    RANGE_INVALID,
    UNAVAILABLE,
    UNKNOWN,
    UNSUPPORTED,
    RegistryError,
)
from speedy.registry.manifests import OCI_INDEX, Manifests
from speedy.registry.names import check_digest, check_name
from speedy.registry.referrers import referrers_index
from speedy.registry.uploads import UploadSessions, session_headers
from speedy.web.downloads import send_in_large_pieces

_log = Logger()

API_VERSION = ("Docker-Distribution-API-Version", "registry/2.0")

_ROUTE = re.compile(
    r"(?P<name>.+)/(?:"
    r"(?P<tags>tags/list)"
    r"|manifests/(?P<reference>[^/]+)"
    r"|blobs/uploads/(?P<upload>[^/]*)"
    r"|blobs/(?P<digest>[^/]+)"
    r"|referrers/(?P<subject>[^/]+)"
    r")\Z")
#: Failures of the metadata store or storage that clear by themselves: 503.
_TRANSIENT = (errors.Unavailable, errors.Busy, errors.Timeout, errors.ConnectionFailed)

_UPLOAD_ID = re.compile(r"[A-Za-z0-9_-]{1,128}\Z")

_METHODS = {
    "base": ("GET", "HEAD"),
    "catalog": ("GET", "HEAD"),
    "tags": ("GET", "HEAD"),
    "manifest": ("GET", "HEAD", "PUT", "DELETE"),
    "blob": ("GET", "HEAD", "DELETE"),
    "uploads": ("POST",),
    "upload": ("GET", "HEAD", "PATCH", "PUT", "DELETE"),
    "referrers": ("GET", "HEAD"),
}


@frozen
class Route:
    """Where a request goes: the kind of endpoint, the repository and the
    last path segment (reference, digest or upload id)."""

    kind: str
    name: str | None = None
    argument: str | None = None


def route_for(path):
    """
    @param path: the request's path, bytes, starting with its C{/v2}
        segment (percent-encoded).
    @return: the L{Route}.
    @raise RegistryError: 404 for no endpoint, C{NAME_INVALID} (400) for a
        bad repository name.
    """
    text = unquote(path.decode("utf-8", "replace"))
    parts = text.split("/", 2)
    rest = parts[2] if len(parts) == 3 else ""
    if rest == "":
        return Route("base")
    if rest in ("_catalog", "_catalog/"):
        return Route("catalog")
    m = _ROUTE.match(rest)
    if m is None:
        raise RegistryError(NOT_FOUND, detail={"path": text[:300]})
    name = check_name(m.group("name"))
    if m.group("tags"):
        return Route("tags", name)
    if m.group("reference") is not None:
        return Route("manifest", name, m.group("reference"))
    if m.group("upload") is not None:
        upload = m.group("upload")
        if upload == "":
            return Route("uploads", name)
        if _UPLOAD_ID.match(upload) is None:
            raise RegistryError(BLOB_UPLOAD_UNKNOWN, detail={"upload": upload[:200]})
        return Route("upload", name, upload)
    if m.group("digest") is not None:
        return Route("blob", name, check_digest(m.group("digest")))
    return Route("referrers", name, check_digest(m.group("subject")))


def _arg(request, name):
    values = request.args.get(name.encode("ascii"))
    return values[0].decode("utf-8", "replace") if values else None


def _args(request, name):
    return [v.decode("utf-8", "replace") for v in request.args.get(name.encode("ascii"), [])]


def _header(request, name):
    value = request.getHeader(name)
    return value.decode("latin-1") if value is not None else None


def _content_length(request):
    """@return: the request's C{Content-Length} as an int, or None."""
    value = request.getHeader(b"content-length")
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _body_length(request):
    """@return: the length a streamed body is held to by the HTTP layer
    (L{speedy.web.streaming.StreamingRequest.body_length}), or None."""
    return getattr(request, "body_length", None)


def _has_body(request):
    return request.getHeader(b"transfer-encoding") is not None or bool(_content_length(request))


def _page_size(request):
    """@return: the C{n} query argument as an int >= 0, or None.
    @raise RegistryError: C{PAGINATION_NUMBER_INVALID} (400)."""
    n = _arg(request, "n")
    if n is None:
        return None
    if not n.isdigit() or len(n) > 9:
        raise RegistryError(PAGINATION_NUMBER_INVALID, detail={"n": n[:20]})
    return int(n)


def blob_location(name, digest):
    """@return: the relative URL of a blob."""
    return f"/v2/{name}/blobs/{digest}"


class DiscardedBody:
    """An C{IBodySink} for a body nobody needs (the request needs none, or
    is already known to fail with C{error}): it drops the bytes as they
    arrive, so no body is ever spooled to memory or disk."""

    def __init__(self, error=None):
        self._error = error

    def write(self, data):
        """Drop C{data}."""

    def finish(self):
        """Nothing to flush."""

    def connection_lost(self, reason):
        """Nothing to clean up."""

    def outcome(self):
        """@return: a Deferred failing with the error, or firing with None."""
        return fail(self._error) if self._error is not None else succeed(None)


class _Exchange:
    """One request being answered, and whether its client is still there."""

    def __init__(self, request):
        self.request = request
        self.gone = False
        self._on_gone = []
        request.notifyFinish().addErrback(self._lost)

    def _lost(self, _):
        self.gone = True
        for callback in self._on_gone:
            callback()

    def on_gone(self, callback):
        """Call C{callback} if the client goes away."""
        self._on_gone.append(callback)

    def send(self, status, body=b"", headers=None, content_type=None, length=None):
        """Answer, unless the client went away.  C{length} overrides the
        C{Content-Length} (a HEAD of a blob or manifest)."""
        if self.gone:
            return
        request = self.request
        request.setResponseCode(status)
        for key, value in (headers or {}).items():
            request.setHeader(key, value)
        if content_type is not None:
            request.setHeader(b"content-type", content_type)
        if status != 204:
            request.setHeader(b"content-length", str(len(body) if length is None else length))
        if request.method != b"HEAD" and body:
            request.write(body)
        request.finish()

    def send_json(self, status, value, headers=None, content_type="application/json"):
        self.send(status, json.dumps(value, separators=(",", ":")).encode("utf-8"),
                  headers=headers, content_type=content_type)

    def send_error(self, error):
        self.send(error.status, error.body(), headers=error.headers, content_type="application/json")


class RegistryAPI:
    """
    The registry API over a metadata store (its
    L{speedy.interfaces.IRegistryTables} and
    L{speedy.interfaces.IUploadTables}) and an L{IChunkedStorage}.

    @ivar resource: the L{IResource} to mount at C{/v2}.
    @param reactor: the clock for timestamps and stale upload expiry.
    @param max_manifest_size: the largest manifest accepted, in bytes.
    @param upload_expiry: seconds after its last change an upload expires.
    @param expiry_interval: seconds between looks for expired uploads.
    """

    def __init__(self, metadata, storage, reactor, max_manifest_size=4 * 2**20,
                 upload_expiry=24 * 3600, expiry_interval=600):
        self._metadata = metadata
        self._storage = storage
        self.blobs = Blobs(metadata, storage, reactor)
        self.uploads = UploadSessions(
            metadata, storage, self.blobs, reactor, expiry=upload_expiry,
            expiry_interval=expiry_interval)
        self.manifests = Manifests(metadata, reactor, max_size=max_manifest_size)
        self.resource = RegistryResource(self)

    def start(self):
        """Start the stale upload expiry timer."""
        self.uploads.start()

    def stop(self):
        """Stop the timer."""
        self.uploads.stop()

    def body_sink_for(self, request):
        """
        Choose where a request's body goes, once its headers have arrived.

        @return: a blob sink for the bodies of a monolithic POST, a PATCH
            and an upload PUT; a bounded buffer for a manifest PUT; a sink
            that discards the body of any other request that has one; None
            for a request without a body.
        """
        try:
            route = route_for(request.path)
        except RegistryError as e:
            return DiscardedBody(e) if _has_body(request) else None
        method = request.method.decode("ascii", "replace")
        try:
            if route.kind == "uploads" and method == "POST" and _arg(request, "digest") is not None \
                    and _arg(request, "mount") is None:
                algorithm = check_digest(_arg(request, "digest")).split(":", 1)[0]
                return self.uploads.receive_blob(algorithm, _body_length(request))
            if route.kind == "upload" and method == "PATCH":
                return self._chunk_sink(request, route, final=False)
            if route.kind == "upload" and method == "PUT" and _has_body(request):
                check_digest(_arg(request, "digest") or "")
                return self._chunk_sink(request, route, final=True)
            if route.kind == "manifest" and method == "PUT":
                length = _content_length(request)
                if length is not None and length > self.manifests.max_size:
                    raise RegistryError(
                        MANIFEST_TOO_LARGE, f"manifest over the {self.manifests.max_size} byte limit",
                        detail={"limit": self.manifests.max_size, "size": length})
                return BoundedBody(self.manifests.max_size)
        except RegistryError as e:
            return DiscardedBody(e)
        return DiscardedBody() if _has_body(request) else None

    def _chunk_sink(self, request, route, final):
        return self.uploads.receive_chunk(
            route.name, route.argument, _header(request, b"content-range"), _content_length(request),
            _body_length(request), final)

    async def body(self, request):
        """
        @return: the outcome of the request's body sink (a
            L{speedy.registry.bodies.ReceivedBlob} or the manifest's bytes),
            or None for a request without one.
        """
        failure = getattr(request, "body_failure", None)
        if failure is not None:
            failure.raiseException()
        sink = getattr(request, "body_sink", None)
        if sink is None:
            sink = self.body_sink_for(request)
            if sink is None:
                return None
            await feed(sink, request.content)
        return await sink.outcome()

    async def handle(self, exchange):
        """Answer one request; never raises."""
        request = exchange.request
        try:
            route = route_for(request.path)
            method = request.method.decode("ascii", "replace")
            if method not in _METHODS[route.kind]:
                raise RegistryError(
                    UNSUPPORTED, f"{method} is not supported here",
                    headers={"Allow": ", ".join(_METHODS[route.kind])})
            handler = getattr(self, f"_{route.kind}_{method.lower()}", None) or getattr(
                self, f"_{route.kind}_get")
            await handler(exchange, route)
        except RegistryError as e:
            exchange.send_error(e)
        except _TRANSIENT as e:
            exchange.send_error(RegistryError(UNAVAILABLE, detail={"reason": str(e)}))
        except CancelledError:
            pass
        except Exception:
            _log.failure("registry request {method} {uri} failed",
                         method=request.method, uri=request.uri)
            exchange.send_error(RegistryError(UNKNOWN))

    # --- endpoints ------------------------------------------------------------

    async def _base_get(self, exchange, route):
        exchange.send_json(200, {})

    async def _catalog_get(self, exchange, route):
        request = exchange.request
        n, last = _page_size(request), _arg(request, "last")
        names = await self._metadata.list_repositories(
            limit=None if n is None else n + 1, last=last)
        names, link = _paged(names, n, "/v2/_catalog")
        exchange.send_json(200, {"repositories": names}, headers=link)

    async def _tags_get(self, exchange, route):
        request = exchange.request
        n, last = _page_size(request), _arg(request, "last")
        tags = await self._metadata.list_tags(
            route.name, limit=None if n is None else n + 1, last=last)
        if tags is None:
            raise RegistryError(NAME_UNKNOWN, detail={"name": route.name})
        tags, link = _paged(tags, n, f"/v2/{route.name}/tags/list")
        exchange.send_json(200, {"name": route.name, "tags": tags}, headers=link)

    async def _manifest_get(self, exchange, route):
        record = await self.manifests.get(route.name, route.argument)
        exchange.send(
            200, record.content, content_type=record.media_type,
            headers={"Docker-Content-Digest": record.digest, "ETag": f'"{record.digest}"'})

    async def _manifest_put(self, exchange, route):
        request = exchange.request
        body = await self.body(request)
        record = await self.manifests.put(
            route.name, route.argument, body if body is not None else b"",
            content_type=_header(request, b"content-type"), tags=_args(request, "tag"))
        headers = {
            "Location": f"/v2/{route.name}/manifests/{record.digest}",
            "Docker-Content-Digest": record.digest,
        }
        if record.subject is not None:
            headers["OCI-Subject"] = record.subject
        exchange.send(201, headers=headers)

    async def _manifest_delete(self, exchange, route):
        await self.manifests.delete(route.name, route.argument)
        exchange.send(202)

    async def _blob_get(self, exchange, route):
        request = exchange.request
        blob = await self.blobs.linked(route.name, route.argument)
        headers = {
            "Docker-Content-Digest": blob.digest,
            "Accept-Ranges": "bytes",
            "ETag": f'"{blob.digest}"',
            "Cache-Control": "max-age=31536000",
        }
        try:
            wanted = parse_range(_header(request, b"range"), blob.size)
        except ValueError as e:
            headers = dict(headers, **{"Content-Range": f"bytes */{blob.size}"})
            raise RegistryError(RANGE_INVALID, str(e), detail={"size": blob.size}, headers=headers)
        if wanted is None:
            status, offset, length = 200, 0, blob.size
        else:
            status, (offset, length) = 206, wanted
            headers["Content-Range"] = f"bytes {offset}-{offset + length - 1}/{blob.size}"
        if request.method == b"HEAD" or length == 0:
            exchange.send(status, headers=headers, content_type="application/octet-stream",
                          length=length)
            return
        request.setResponseCode(status)
        for key, value in headers.items():
            request.setHeader(key, value)
        request.setHeader(b"content-type", b"application/octet-stream")
        request.setHeader(b"content-length", str(length))
        send_in_large_pieces(request)
        reading = self._storage.read(blob.chunks, offset, length, request)
        exchange.on_gone(reading.cancel)
        try:
            await reading
        except (CancelledError, ConnectionClosed):
            return
        except Exception:
            if exchange.gone:
                return
            if not request.startedWriting:
                raise
            _log.failure("blob {digest} broke off after the answer began", digest=blob.digest)
            request.loseConnection()
            return
        if not exchange.gone:
            request.finish()

    async def _blob_delete(self, exchange, route):
        await self.blobs.remove(route.name, route.argument)
        exchange.send(202)

    async def _uploads_post(self, exchange, route):
        request = exchange.request
        mount, digest = _arg(request, "mount"), _arg(request, "digest")
        if mount is not None:
            blob = await self._mount(route.name, mount, _arg(request, "from"))
            if blob is not None:
                exchange.send(201, headers={
                    "Location": blob_location(route.name, blob.digest),
                    "Docker-Content-Digest": blob.digest})
                return
        elif digest is not None:
            received = await self.body(request)
            blob = await self.uploads.commit_whole(route.name, digest, received)
            exchange.send(201, headers={
                "Location": blob_location(route.name, blob.digest),
                "Docker-Content-Digest": blob.digest})
            return
        record = await self.uploads.create(route.name)
        exchange.send(202, headers=session_headers(record))

    async def _mount(self, name, digest, source):
        """@return: the mounted L{BlobRecord}, or None when the spec says to
        fall back to a plain upload (unknown blob, bad arguments)."""
        try:
            check_digest(digest)
            return await self.blobs.mount(name, digest, source)
        except RegistryError:
            return None

    async def _upload_get(self, exchange, route):
        record = await self.uploads.find(route.name, route.argument)
        exchange.send(204, headers=session_headers(record))

    async def _upload_patch(self, exchange, route):
        received = await self.body(exchange.request)
        record = await self.uploads.append(received)
        exchange.send(202, headers=session_headers(record))

    async def _upload_put(self, exchange, route):
        request = exchange.request
        digest = _arg(request, "digest")
        if digest is None:
            raise RegistryError(DIGEST_INVALID, "the digest query parameter is required")
        check_digest(digest)
        received = await self.body(request)
        blob = await self.uploads.complete(route.name, route.argument, digest, received)
        exchange.send(201, headers={
            "Location": blob_location(route.name, blob.digest),
            "Docker-Content-Digest": blob.digest})

    async def _upload_delete(self, exchange, route):
        await self.uploads.cancel(route.name, route.argument)
        exchange.send(204)

    async def _referrers_get(self, exchange, route):
        artifact_type = _arg(exchange.request, "artifactType")
        records = await self._metadata.referrers(route.name, route.argument, artifact_type)
        headers = {"OCI-Filters-Applied": "artifactType"} if artifact_type is not None else {}
        exchange.send(200, referrers_index(records), headers=headers, content_type=OCI_INDEX)


def _paged(names, n, path):
    """
    @param names: up to C{n + 1} names from the store.
    @return: the first C{n} of them and the headers: a C{Link} to the next
        page when there is one.
    """
    if n is None or len(names) <= n:
        return list(names), {}
    names = list(names[:n])
    if n == 0:
        return names, {}
    return names, {"Link": f'<{path}?n={n}&last={quote(names[-1], safe="")}>; rel="next"'}


class RegistryResource(Resource):
    """The C{/v2} resource: every path below it is routed by
    L{route_for}, so it is a leaf."""

    isLeaf = True

    def __init__(self, api):
        super().__init__()
        self._api = api

    def render(self, request):
        request.defaultContentType = None
        request.setHeader(*API_VERSION)
        d = Deferred.fromCoroutine(self._api.handle(_Exchange(request)))
        d.addErrback(lambda f: _log.failure("answering a registry request failed", f))
        return NOT_DONE_YET
