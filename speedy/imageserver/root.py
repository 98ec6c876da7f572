# -*- test-case-name: speedy.test.test_imageserver_fileapi -*-
"""
The imageserver's HTTP surface: the table of its routes (C{/v1/files},
C{/v1/chunks}, C{/v1/health}, on L{speedy.web.rest} with JSON errors), the
registry mounted at C{/v2} and the V1 registry under C{/v1/_ping},
C{/v1/images}, C{/v1/repositories} and C{/v1/search} when they are given.
"""

from speedy.imageserver.chunkapi import ChunkAPI, chunk_address
from speedy.imageserver.fileapi import FileAPI
from speedy.web.json import answer_json_error, json_answer
from speedy.web.rest import Router


class ImageServerRoot:
    """
    The root resource (C{.resource}) and C{body_sink_for} of an imageserver.

    @param storage: the L{speedy.interfaces.IChunkedStorage} (see
        L{fileapi.FileAPI}).
    @param metadata: the L{speedy.interfaces.IFileTables} of the file API.
    @param registry: an object with C{.resource} (the C{/v2} tree) and
        C{.body_sink_for(request)}, or None to leave C{/v2} unmounted.
    @param registry_v1: the same for the V1 registry, with C{.prefixes}
        (the paths it is mounted under), or None.
    """

    def __init__(self, storage, metadata, clock, registry=None, registry_v1=None):
        self._view = storage.view
        self.files = files = FileAPI(storage, metadata, clock)
        self.chunks = chunks = ChunkAPI(storage)
        self.registry = registry
        self.router = router = Router(answer_json_error)
        router.route("GET", "/v1/health", self.health)
        for pattern in ("/v1/files/{path:path}", "/v1/files/", "/v1/files"):
            router.route(("GET", "HEAD"), pattern, files.get)
            router.route("PUT", pattern, files.put, sink=files.upload_sink)
            router.route("DELETE", pattern, files.delete)
        for pattern in ("/v1/chunks", "/v1/chunks/"):
            router.route("POST", pattern, chunks.post, sink=chunks.body_sink)
        address = {"address": chunk_address}
        router.route("GET", "/v1/chunks/{address:path}", chunks.get, params=address)
        router.route("HEAD", "/v1/chunks/{address:path}", chunks.head)
        router.route("DELETE", "/v1/chunks/{address:path}", chunks.delete)
        if registry is not None:
            router.mount(b"v2", registry.resource, registry.body_sink_for)
        self.registry_v1 = registry_v1
        if registry_v1 is not None:
            for prefix in registry_v1.prefixes:
                router.mount(prefix, registry_v1.resource, registry_v1.body_sink_for)
        self.resource = router.resource
        self.body_sink_for = router.body_sink_for

    async def health(self, request):
        """
        C{GET /v1/health}: C{{"ok", "writable_groups", "view_version"}}; 503
        with C{"ok": false} until a cluster view has been fetched.
        """
        view = self._view.current
        if view is None:
            return json_answer(503, {"ok": False, "writable_groups": 0, "view_version": None})
        return json_answer(200, {"ok": True, "writable_groups": len(view.writable()),
                                 "view_version": view.version})
