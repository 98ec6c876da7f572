# -*- test-case-name: speedy.test.test_imageserver_fileapi -*-
"""
The imageserver's resource tree and the choice of a sink for each request
body: C{/v1/files}, C{/v1/chunks} and C{/v1/health} here, the registry at
C{/v2} when one is given.
"""

from speedy.imageserver import chunkapi, fileapi
from speedy.imageserver.rest import JSONDirectory, JSONLeaf
from speedy.web.json import write_json


class Health(JSONLeaf):
    """
    C{GET /v1/health}: C{{"ok", "writable_groups", "view_version"}}; 503
    with C{"ok": false} until a cluster view has been fetched.
    """

    def __init__(self, view):
        super().__init__()
        self._view = view

    def render_GET(self, request):
        view = self._view.current
        if view is None:
            return write_json(request, 503, {"ok": False, "writable_groups": 0,
                                             "view_version": None})
        return write_json(request, 200, {"ok": True, "writable_groups": len(view.writable()),
                                         "view_version": view.version})


class ImageServerRoot:
    """
    The root resource (C{.resource}) and C{body_sink_for} of an imageserver.

    @param storage: the L{speedy.interfaces.IChunkedStorage} (see
        L{fileapi.FileAPI}).
    @param metadata: the L{speedy.interfaces.IFileTables} of the file API.
    @param registry: an object with C{.resource} (the C{/v2} tree) and
        C{.body_sink_for(request)}, or None to leave C{/v2} unmounted.
    """

    def __init__(self, storage, metadata, clock, registry=None):
        self.files = fileapi.FileAPI(storage, metadata, clock)
        self.chunks = chunkapi.ChunkAPI(storage)
        self.registry = registry
        v1 = JSONDirectory()
        v1.putChild(b"files", self.files)
        v1.putChild(b"chunks", self.chunks)
        v1.putChild(b"health", Health(storage.view))
        self.resource = JSONDirectory()
        self.resource.putChild(b"v1", v1)
        if registry is not None:
            self.resource.putChild(b"v2", registry.resource)

    def body_sink_for(self, request):
        """
        @return: the sink of the API the request's path belongs to, or None
            (bodies elsewhere are spooled by twisted.web).
        """
        path = request.path
        if path.startswith(fileapi.PREFIX):
            return self.files.body_sink_for(request)
        if path == chunkapi.PREFIX or path.startswith(chunkapi.PREFIX + b"/"):
            return self.chunks.body_sink_for(request)
        if self.registry is not None and (path == b"/v2" or path.startswith(b"/v2/")):
            return self.registry.body_sink_for(request)
        return None
