# -*- test-case-name: speedy.test.test_registry_api -*-
"""
The registry HTTP API (OCI distribution-spec v1.1, Docker Registry HTTP API
V2): pull, push, content discovery and content management, as one
L{speedy.web.rest.Router} whose resource is mounted at C{/v2}, answering
errors with the spec's body (L{answer_registry_error}).

    api = RegistryAPI(metadata, storage, reactor)
    root.putChild(b"v2", api.resource)
    site = StreamingSite(root, api.body_sink_for, reactor)
    api.start()    # stale upload expiry; api.stop() ends it

Routes (C{<name>} may hold slashes; everything else is one path segment;
L{RegistryAPI._routes} is the table)::

    GET    /v2/                                      200 {}
    GET    /v2/_catalog?n=&last=                     repositories
    GET    /v2/<name>/tags/list?n=&last=             tags
    GET    /v2/<name>/manifests/<reference>          also HEAD, PUT (?tag=...), DELETE
    GET    /v2/<name>/blobs/<digest>                 also HEAD, DELETE
    POST   /v2/<name>/blobs/uploads/                 ?digest= | ?mount=[&from=]
    GET    /v2/<name>/blobs/uploads/<id>             also PATCH, PUT ?digest=, DELETE
    GET    /v2/<name>/referrers/<digest>             ?artifactType=

A manifest PUT (by digest, or by tag) may carry up to
L{speedy.registry.manifests.MAX_TAG_PARAMS} C{?tag=} parameters: each
tag is set with the manifest, all or none, and the answer's C{OCI-Tag}
header lists them (distribution-spec C{main}); more are refused with 414.

Blob bodies stream through L{speedy.registry.bodies.BlobBody} sinks that
L{RegistryAPI.body_sink_for} hands the C{StreamingSite}; under a plain
C{Site} the kit feeds the spooled C{request.content} through the same sinks.
The body of a request to an endpoint that takes none is dropped as it
arrives.
"""

import json
import re
from urllib.parse import quote

from speedy import errors
from speedy.registry.blobs import Blobs, parse_range
from speedy.registry.bodies import BoundedBody
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
from speedy.registry.manifests import OCI_INDEX, Manifests, check_tag_params
from speedy.registry.names import check_digest, check_name
from speedy.registry.referrers import referrers_index
from speedy.registry.uploads import UploadSessions, session_headers
from speedy.web.downloads import send_in_large_pieces
from speedy.web.rest import (
    Answer, Discard, MethodNotAllowed, NoRoute, Router, cancel_when_gone, has_body, send_head)

API_VERSION = ("Docker-Distribution-API-Version", "registry/2.0")

#: Failures of the metadata store or storage that clear by themselves: 503.
_TRANSIENT = (errors.Unavailable, errors.Busy, errors.Timeout, errors.ConnectionFailed)

_UPLOAD_ID = re.compile(r"[A-Za-z0-9_-]{1,128}\Z")

_READ = ("GET", "HEAD")


def check_upload_id(text):
    """@return: C{text} if it can be an upload id.
    @raise RegistryError: C{BLOB_UPLOAD_UNKNOWN} (404)."""
    if _UPLOAD_ID.match(text) is None:
        raise RegistryError(BLOB_UPLOAD_UNKNOWN, detail={"upload": text[:200]})
    return text


#: How the parameters of the registry's paths are checked, in the order
#: they appear: the L{RegistryError} one raises is the answer (a bad name is
#: C{NAME_INVALID}, a bad digest C{DIGEST_INVALID}, both 400).
PATH_PARAMS = {"name": check_name, "digest": check_digest, "upload": check_upload_id}


def registry_error(error):
    """
    @return: the L{RegistryError} answering C{error}: itself; 404 for no
        endpoint, 405 with C{Allow} for a method an endpoint lacks, 503
        C{UNAVAILABLE} for a store or storage that is away, 500 C{UNKNOWN}
        (a bug) for anything else.
    """
    if isinstance(error, RegistryError):
        return error
    if isinstance(error, NoRoute):
        return RegistryError(NOT_FOUND, detail={"path": error.path[:300]})
    if isinstance(error, MethodNotAllowed):
        return RegistryError(UNSUPPORTED, f"{error.method} is not supported here",
                             headers={"Allow": ", ".join(error.allowed)})
    if isinstance(error, _TRANSIENT):
        return RegistryError(UNAVAILABLE, detail={"reason": str(error)})
    return RegistryError(UNKNOWN)


def answer_registry_error(error, request):
    """The registry's error shape (its L{Router}'s C{answer_error}): the
    spec's C{{"errors": [...]}} body with the status of L{registry_error}."""
    error = registry_error(error)
    return Answer(error.status, error.body(getattr(request, "request_id", None)), error.headers,
                  content_type="application/json")


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


def discard_body(request, **params):
    """The sink of an endpoint that takes no body: a body sent anyway is
    dropped as it arrives, never spooled."""
    return Discard() if has_body(request) else None


def _json(status, value, headers=None, content_type="application/json"):
    return Answer(status, json.dumps(value, separators=(",", ":")).encode("utf-8"),
                  dict(headers or {}), content_type=content_type)


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
        self.router = self._routes()
        #: the L{IResource} to mount at C{/v2}
        self.resource = self.router.resource
        self.body_sink_for = self.router.body_sink_for

    def _routes(self):
        """@return: the L{Router} of every registry endpoint, tried in this
        order; C{{name}} may hold slashes, the rest is one segment each."""
        router = Router(answer_registry_error, headers=dict([API_VERSION]))

        def route(methods, pattern, handler, kind, sink=discard_body):
            router.route(methods, pattern, handler, sink=sink, params=PATH_PARAMS, name=kind)

        route(_READ, "/v2", self._base, "base")
        route(_READ, "/v2/", self._base, "base")
        route(_READ, "/v2/_catalog", self._catalog, "catalog")
        route(_READ, "/v2/_catalog/", self._catalog, "catalog")
        route(_READ, "/v2/{name:path}/tags/list", self._tags, "tags")
        manifest = "/v2/{name:path}/manifests/{reference}"
        route(_READ, manifest, self._manifest_get, "manifest")
        route("PUT", manifest, self._manifest_put, "manifest", sink=self._manifest_sink)
        route("DELETE", manifest, self._manifest_delete, "manifest")
        route("POST", "/v2/{name:path}/blobs/uploads/", self._uploads_post, "uploads",
              sink=self._blob_sink)
        upload = "/v2/{name:path}/blobs/uploads/{upload}"
        route(_READ, upload, self._upload_get, "upload")
        route("PATCH", upload, self._upload_patch, "upload", sink=self._chunk_sink)
        route("PUT", upload, self._upload_put, "upload", sink=self._last_chunk_sink)
        route("DELETE", upload, self._upload_delete, "upload")
        blob = "/v2/{name:path}/blobs/{digest}"
        route(_READ, blob, self._blob_get, "blob")
        route("DELETE", blob, self._blob_delete, "blob")
        route(_READ, "/v2/{name:path}/referrers/{digest}", self._referrers, "referrers")
        return router

    def start(self):
        """Start the stale upload expiry timer."""
        self.uploads.start()

    def stop(self):
        """Stop the timer."""
        self.uploads.stop()

    # --- where bodies go: chosen once a request's headers have arrived ------

    def _blob_sink(self, request, name):
        """A monolithic POST (C{?digest=}, no C{?mount=}) streams its blob
        into storage; any other POST takes no body."""
        digest = _arg(request, "digest")
        if digest is None or _arg(request, "mount") is not None:
            return discard_body(request)
        algorithm = check_digest(digest).split(":", 1)[0]
        return self.uploads.receive_blob(algorithm, _body_length(request), name)

    def _chunk_sink(self, request, name, upload, final=False):
        return self.uploads.receive_chunk(
            name, upload, _header(request, b"content-range"), _content_length(request),
            _body_length(request), final)

    def _last_chunk_sink(self, request, name, upload):
        """The PUT that completes an upload may carry its last chunk."""
        if not has_body(request):
            return None
        _required_digest(request)
        return self._chunk_sink(request, name, upload, final=True)

    def _manifest_sink(self, request, name, reference):
        """A manifest is collected in memory, up to the size limit; one
        with too many or bad C{?tag=} is refused before its body comes."""
        check_tag_params(_args(request, "tag"))
        length = _content_length(request)
        if length is not None and length > self.manifests.max_size:
            raise RegistryError(
                MANIFEST_TOO_LARGE, f"manifest over the {self.manifests.max_size} byte limit",
                detail={"limit": self.manifests.max_size, "size": length})
        return BoundedBody(self.manifests.max_size)

    async def body(self, request):
        """
        @return: the outcome of the request's body sink (a
            L{speedy.registry.bodies.ReceivedBlob} or the manifest's bytes),
            or None for a request without one.
        """
        if request.body_failure is not None:
            request.body_failure.raiseException()
        if request.body_sink is None:
            return None
        return await request.body_sink.outcome()

    # --- endpoints ------------------------------------------------------------

    async def _base(self, request):
        return _json(200, {})

    async def _catalog(self, request):
        """The repositories, only those the caller may pull when the gate
        of L{speedy.auth} says so (C{request.speedy_may_pull})."""
        n, last = _page_size(request), _arg(request, "last")
        may_pull = getattr(request, "speedy_may_pull", None)
        names = await self._metadata.list_repositories(
            limit=None if n is None or may_pull else n + 1, last=last)
        if may_pull is not None:
            names = [name for name in names if may_pull(name)]
            if n is not None:
                names = names[:n + 1]
        names, link = _paged(names, n, "/v2/_catalog")
        return _json(200, {"repositories": names}, headers=link)

    async def _tags(self, request, name):
        n, last = _page_size(request), _arg(request, "last")
        tags = await self._metadata.list_tags(name, limit=None if n is None else n + 1, last=last)
        if tags is None:
            raise RegistryError(NAME_UNKNOWN, detail={"name": name})
        tags, link = _paged(tags, n, f"/v2/{name}/tags/list")
        return _json(200, {"name": name, "tags": tags}, headers=link)

    async def _manifest_get(self, request, name, reference):
        record = await self.manifests.get(name, reference)
        return Answer(200, record.content, content_type=record.media_type, headers={
            "Docker-Content-Digest": record.digest, "ETag": f'"{record.digest}"'})

    async def _manifest_put(self, request, name, reference):
        body = await self.body(request)
        tags = check_tag_params(_args(request, "tag"))
        record = await self.manifests.put(
            name, reference, body if body is not None else b"",
            content_type=_header(request, b"content-type"), tags=tags)
        headers = {
            "Location": f"/v2/{name}/manifests/{record.digest}",
            "Docker-Content-Digest": record.digest,
        }
        if tags:
            headers["OCI-Tag"] = ", ".join(tags)
        if record.subject is not None:
            headers["OCI-Subject"] = record.subject
        return Answer(201, headers=headers)

    async def _manifest_delete(self, request, name, reference):
        await self.manifests.delete(name, reference)
        return Answer(202)

    async def _blob_get(self, request, name, digest):
        blob = await self.blobs.linked(name, digest)
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
        answer = Answer(status, headers=headers, content_type="application/octet-stream",
                        length=length)
        if request.method == b"HEAD" or length == 0:
            return answer
        send_head(request, answer)
        send_in_large_pieces(request)
        await cancel_when_gone(request, self._storage.read(blob.chunks, offset, length, request))
        return None

    async def _blob_delete(self, request, name, digest):
        await self.blobs.remove(name, digest)
        return Answer(202)

    async def _uploads_post(self, request, name):
        mount, digest = _arg(request, "mount"), _arg(request, "digest")
        if mount is not None:
            blob = await self._mount(name, mount, _arg(request, "from"))
            if blob is not None:
                return Answer(201, headers={
                    "Location": blob_location(name, blob.digest),
                    "Docker-Content-Digest": blob.digest})
        elif digest is not None:
            received = await self.body(request)
            blob = await self.uploads.commit_whole(name, digest, received)
            return Answer(201, headers={
                "Location": blob_location(name, blob.digest),
                "Docker-Content-Digest": blob.digest})
        record = await self.uploads.create(name)
        return Answer(202, headers=session_headers(record))

    async def _mount(self, name, digest, source):
        """@return: the mounted L{BlobRecord}, or None when the spec says to
        fall back to a plain upload (unknown blob, bad arguments)."""
        try:
            check_digest(digest)
            return await self.blobs.mount(name, digest, source)
        except RegistryError:
            return None

    async def _upload_get(self, request, name, upload):
        record = await self.uploads.find(name, upload)
        return Answer(204, headers=session_headers(record))

    async def _upload_patch(self, request, name, upload):
        received = await self.body(request)
        record = await self.uploads.append(received)
        return Answer(202, headers=session_headers(record))

    async def _upload_put(self, request, name, upload):
        digest = _required_digest(request)
        received = await self.body(request)
        blob = await self.uploads.complete(name, upload, digest, received)
        return Answer(201, headers={
            "Location": blob_location(name, blob.digest),
            "Docker-Content-Digest": blob.digest})

    async def _upload_delete(self, request, name, upload):
        await self.uploads.cancel(name, upload)
        return Answer(204)

    async def _referrers(self, request, name, digest):
        artifact_type = _arg(request, "artifactType")
        records = await self._metadata.referrers(name, digest, artifact_type)
        headers = {"OCI-Filters-Applied": "artifactType"} if artifact_type is not None else {}
        return Answer(200, referrers_index(records), headers=headers, content_type=OCI_INDEX)


def _required_digest(request):
    """@return: the C{digest} query argument of an upload's PUT.
    @raise RegistryError: C{DIGEST_INVALID}, it is missing or malformed."""
    digest = _arg(request, "digest")
    if digest is None:
        raise RegistryError(DIGEST_INVALID, "the digest query parameter is required")
    return check_digest(digest)


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
