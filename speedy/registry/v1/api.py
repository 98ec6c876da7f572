# -*- test-case-name: speedy.test.test_registry_v1 -*-
"""
The Docker Registry V1 HTTP API, as docker-registry 0.9 served it in its
standalone mode, as one L{speedy.web.rest.Router} answering errors with
docker-registry's C{{"error": ...}} body (L{answer_v1_error}).  The
imageserver mounts its resource under the paths of L{V1_PREFIXES}, beside
its own C{/v1/files} and C{/v1/chunks}:

    v1 = RegistryV1API(metadata, storage, reactor)
    for prefix in V1_PREFIXES:
        router.mount(prefix, v1.resource, v1.body_sink_for)

Routes (C{<repo>} is C{namespace/name} or C{name}, see
L{speedy.registry.v1.names}; L{RegistryV1API._routes} is the table)::

    GET    /v1/_ping
    GET    /v1/images/<id>/json                   also PUT
    GET    /v1/images/<id>/layer                  also PUT (streamed), Range on GET
    PUT    /v1/images/<id>/checksum               X-Docker-Checksum-Payload
    GET    /v1/images/<id>/ancestry
    GET    /v1/repositories/<repo>/tags           also DELETE (the repository)
    GET    /v1/repositories/<repo>/tags/<tag>     also PUT, DELETE
    GET    /v1/repositories/<repo>/tags/<tag>/json
    GET    /v1/repositories/<repo>/json
    GET    /v1/repositories/<repo>/images         also PUT (index, 204), DELETE (no-op, 204)
    PUT    /v1/repositories/<repo>/               the index (200); DELETE: the repository
    GET    /v1/search?q=

Every answer carries C{X-Docker-Registry-Version} and
C{X-Docker-Registry-Config}; the ping, C{X-Docker-Registry-Standalone:
true} (this registry is its own index); index answers, C{X-Docker-Token}
and C{X-Docker-Endpoints}.
"""

import json

from speedy.registry.api import discard_body
from speedy.registry.blobs import parse_range
from speedy.registry.bodies import BoundedBody
from speedy.registry.errors import RANGE_INVALID, RegistryError
from speedy.registry.v1.errors import V1Error, answer_v1_error
from speedy.registry.v1.images import V1Images
from speedy.registry.v1.names import check_image_id, check_tag, parse_repository
from speedy.registry.v1.repositories import V1Repositories, index_headers
from speedy.web.downloads import send_in_large_pieces
from speedy.web.rest import Answer, Router, cancel_when_gone, send_head

#: The docker-registry version whose API this is.
REGISTRY_VERSION = "0.9.1"

#: The paths under which the imageserver mounts the V1 registry.
V1_PREFIXES = (b"v1/_ping", b"v1/images", b"v1/repositories", b"v1/search")

#: The largest JSON body (an image's JSON, a tag, an index) taken.
MAX_JSON_BODY = 4 << 20

#: The oldest Docker whose layer PUTs are taken (older ones sent no
#: payload checksum).
OLDEST_DOCKER = (0, 10)

PATH_PARAMS = {"repo": parse_repository, "image": check_image_id, "tag": check_tag}

_READ = ("GET", "HEAD")


def _json(value, status=200, headers=None):
    return Answer(status, json.dumps(value, sort_keys=True).encode("utf-8"), dict(headers or {}),
                  content_type="application/json")


def _ok(status=200, headers=None):
    """docker-registry's empty success: the JSON C{true}."""
    return _json(True, status, headers)


def _header(request, name):
    value = request.getHeader(name)
    return value.decode("latin-1") if value is not None else None


def _endpoint(request):
    """@return: C{host:port} the client reached us at (its C{Host})."""
    host = request.getHeader(b"host")
    if host:
        return host.decode("latin-1")
    address = request.getHost()
    return f"{address.host}:{address.port}"


def docker_version(user_agent):
    """@return: the C{(major, minor)} of a C{docker/X.Y...} C{User-Agent},
    or None when it names no Docker version."""
    for part in (user_agent or "").split():
        if part.startswith("docker/"):
            try:
                major, minor = part[len("docker/"):].split(".")[:2]
                return int(major), int("".join(c for c in minor if c.isdigit()) or 0)
            except ValueError:
                return None
    return None


class RegistryV1API:
    """
    The V1 registry over a metadata store (its
    L{speedy.interfaces.IV1Tables}) and an L{IChunkedStorage}.

    @ivar resource: the L{IResource} to mount under each of C{prefixes}.
    @ivar router: its L{Router}, to L{Router.wrap} every route.
    @param layer_expiry: seconds after which the layer of a push that
        never completed is deleted (L{V1Images.expire}).
    @param expiry_interval: seconds between two looks for such layers.
    """

    prefixes = V1_PREFIXES

    def __init__(self, metadata, storage, reactor, layer_expiry=24 * 3600, expiry_interval=600):
        self._storage = storage
        self.images = V1Images(metadata, storage, reactor, expiry=layer_expiry,
                               expiry_interval=expiry_interval)
        self.repositories = V1Repositories(metadata, reactor)
        self.router = self._routes()
        self.resource = self.router.resource
        self.body_sink_for = self.router.body_sink_for

    def _routes(self):
        router = Router(answer_v1_error, headers={
            "X-Docker-Registry-Version": REGISTRY_VERSION,
            "X-Docker-Registry-Config": "speedy",
            "Cache-Control": "no-cache",
        })

        def route(methods, pattern, handler, kind, sink=discard_body):
            router.route(methods, pattern, handler, sink=sink, params=PATH_PARAMS, name=kind)

        json_body = self._json_sink
        route(_READ, "/v1/_ping", self._ping, "v1-ping")
        route(_READ, "/v1/_ping/", self._ping, "v1-ping")
        image = "/v1/images/{image}"
        route(_READ, image + "/json", self._image_json, "v1-image-json")
        route("PUT", image + "/json", self._put_image_json, "v1-image-json", sink=json_body)
        route(_READ, image + "/layer", self._layer, "v1-layer")
        route("PUT", image + "/layer", self._put_layer, "v1-layer", sink=self._layer_sink)
        route("PUT", image + "/checksum", self._put_checksum, "v1-checksum")
        route(_READ, image + "/ancestry", self._ancestry, "v1-ancestry")
        route(_READ, "/v1/search", self._search, "v1-search")
        repo = "/v1/repositories/{repo:path}"
        route(_READ, repo + "/tags/{tag}/json", self._tag_json, "v1-tag-json")
        route(_READ, repo + "/tags/{tag}", self._tag, "v1-tag")
        route("PUT", repo + "/tags/{tag}", self._put_tag, "v1-tag", sink=json_body)
        route("DELETE", repo + "/tags/{tag}", self._delete_tag, "v1-tag")
        route(_READ, repo + "/tags", self._tags, "v1-tags")
        route("DELETE", repo + "/tags", self._delete_repository, "v1-tags")
        route(_READ, repo + "/images", self._index, "v1-index")
        route("PUT", repo + "/images", self._put_index_images, "v1-index", sink=json_body)
        route("DELETE", repo + "/images", self._delete_index, "v1-index")
        route(_READ, repo + "/json", self._repository_json, "v1-repository-json")
        route("PUT", repo, self._put_index, "v1-repository", sink=json_body)
        route("DELETE", repo, self._delete_repository, "v1-repository")
        return router

    def start(self):
        """Start the expiry of abandoned layers."""
        self.images.start()

    def stop(self):
        """Stop it."""
        self.images.stop()

    # --- bodies ----------------------------------------------------------------

    def _json_sink(self, request, **params):
        length = request.getHeader(b"content-length")
        if length is not None and length.isdigit() and int(length) > MAX_JSON_BODY:
            raise V1Error(f"body over the {MAX_JSON_BODY} byte limit", 413)
        return BoundedBody(MAX_JSON_BODY)

    def _layer_sink(self, request, image):
        version = docker_version(_header(request, b"user-agent"))
        if version is not None and version < OLDEST_DOCKER:
            raise V1Error("This endpoint does not support Docker daemons older than 0.10", 412)
        return self.images.layer_sink(image, getattr(request, "body_length", None))

    async def _body(self, request):
        """@return: the outcome of the request's body sink; an empty body
        for a request without one."""
        if request.body_failure is not None:
            request.body_failure.raiseException()
        if request.body_sink is None:
            return b""
        return await request.body_sink.outcome()

    # --- endpoints -------------------------------------------------------------

    async def _ping(self, request):
        return _json({}, headers={"X-Docker-Registry-Standalone": "true"})

    async def _image_json(self, request, image):
        record = await self.images.complete(image)
        return Answer(200, record.json, {
            "X-Docker-Size": str(record.size),
            "X-Docker-Checksum-Payload": record.checksum,
            "Cache-Control": "public, max-age=31536000",
        }, content_type="application/json")

    async def _put_image_json(self, request, image):
        await self.images.put_json(image, await self._body(request))
        return _ok()

    async def _layer(self, request, image):
        record = await self.images.complete(image)
        headers = {"Accept-Ranges": "bytes", "Cache-Control": "public, max-age=31536000"}
        try:
            wanted = parse_range(_header(request, b"range"), record.size)
        except ValueError as e:
            raise RegistryError(RANGE_INVALID, str(e),
                                headers=dict(headers, **{"Content-Range": f"bytes */{record.size}"}))
        if wanted is None:
            status, offset, length = 200, 0, record.size
        else:
            status, (offset, length) = 206, wanted
            headers["Content-Range"] = f"bytes {offset}-{offset + length - 1}/{record.size}"
        answer = Answer(status, headers=headers, content_type="application/octet-stream",
                        length=length)
        if request.method == b"HEAD" or length == 0:
            return answer
        send_head(request, answer)
        send_in_large_pieces(request)
        await cancel_when_gone(request, self._storage.read(record.chunks, offset, length, request))
        return None

    async def _put_layer(self, request, image):
        await self.images.put_layer(await self._body(request))
        return _ok()

    async def _put_checksum(self, request, image):
        await self.images.put_checksum(image, _header(request, b"x-docker-checksum-payload"))
        return _ok()

    async def _ancestry(self, request, image):
        record = await self.images.complete(image)
        return _json(list(record.ancestry), headers={"Cache-Control": "public, max-age=31536000"})

    async def _search(self, request):
        values = request.args.get(b"q")
        text = values[0].decode("utf-8", "replace") if values else ""
        return _json(await self.repositories.search(text))

    async def _tags(self, request, repo):
        return _json(await self.repositories.tags(repo))

    async def _tag(self, request, repo, tag):
        return _json((await self.repositories.tag(repo, tag)).image_id)

    async def _tag_json(self, request, repo, tag):
        return _json(await self.repositories.tag_json(repo, tag))

    async def _repository_json(self, request, repo):
        return _json(await self.repositories.tag_json(repo, "latest"))

    async def _put_tag(self, request, repo, tag):
        await self.repositories.put_tag(
            repo, tag, await self._body(request), _header(request, b"user-agent"))
        return _ok()

    async def _delete_tag(self, request, repo, tag):
        await self.repositories.delete_tag(repo, tag)
        return _ok()

    async def _delete_repository(self, request, repo):
        await self.repositories.delete(repo)
        return _ok()

    async def _put_index(self, request, repo):
        await self.repositories.put_index(repo, await self._body(request))
        return _json("", headers=index_headers(repo, "write", _endpoint(request)))

    async def _put_index_images(self, request, repo):
        await self.repositories.put_index(repo, await self._body(request))
        return Answer(204, headers=index_headers(repo, "write", _endpoint(request)))

    async def _index(self, request, repo):
        images = await self.repositories.index(repo)
        return _json(images, headers=index_headers(repo, "read", _endpoint(request)))

    async def _delete_index(self, request, repo):
        return Answer(204, headers=index_headers(repo, "delete", _endpoint(request)))
