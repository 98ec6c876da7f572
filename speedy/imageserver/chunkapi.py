# -*- test-case-name: speedy.test.test_imageserver_fileapi -*-
"""
The chunk-level REST API, for tools:

    POST   /v1/chunks                       body = one chunk (up to the
                                            chunk size); 201 with its ChunkRef
    GET    /v1/chunks/<group_id>/<file_id>  the chunk's bytes, from any replica
    HEAD   /v1/chunks/<group_id>/<file_id>  its size and CRC32C
    DELETE /v1/chunks/<group_id>/<file_id>  204; what a member could not
                                            delete is recorded as garbage

A ChunkRef is answered as C{{"group_id", "file_id", "size", "crc32c"}}; the
GET and HEAD answers carry C{X-Chunk-CRC32C} (decimal).
"""

from zope.interface import implementer

from speedy import errors
from speedy.crc import crc32c
from speedy.imageserver.rest import JSONLeaf, respond
from speedy.records import ChunkRef
from speedy.web.json import write_json
from speedy.web.streaming import IBodySink

PREFIX = b"/v1/chunks"


def chunk_address(request):
    """
    @return: (group_id, file_id) from C{/v1/chunks/<group_id>/<file_id>}.
    @raise BadRequest: anything else.
    """
    parts = request.path[len(PREFIX):].split(b"/")
    if len(parts) != 3 or parts[0] != b"" or not parts[1].isdigit() or not parts[2].isdigit():
        raise errors.BadRequest("expected /v1/chunks/<group_id>/<file_id>")
    return int(parts[1]), int(parts[2])


@implementer(IBodySink)
class ChunkBody:
    """Collects one chunk's bytes, refusing more than C{limit}."""

    def __init__(self, limit):
        self._limit = limit
        self._pieces = []
        self.size = 0

    def write(self, data):
        self.size += len(data)
        if self.size > self._limit:
            self._pieces = []
            raise errors.TooLarge(f"a chunk is at most {self._limit} bytes")
        self._pieces.append(data)

    def finish(self):
        """Nothing to do: L{data} joins the pieces."""

    def connection_lost(self, reason):
        self._pieces = []

    def data(self):
        """@return: the chunk's bytes."""
        return b"".join(self._pieces)


def ref_json(ref):
    return {"group_id": ref.group_id, "file_id": ref.file_id, "size": ref.size,
            "crc32c": ref.crc32c}


class ChunkAPI(JSONLeaf):
    """The C{/v1/chunks} resource (a leaf)."""

    def __init__(self, storage):
        super().__init__()
        self._storage = storage

    def body_sink_for(self, request):
        """@return: a L{ChunkBody} for a POST, else None."""
        if request.method == b"POST":
            return ChunkBody(self._storage.chunk_size)
        return None

    def render_POST(self, request):
        return respond(request, self._post(request))

    async def _post(self, request):
        if request.body_failure is not None:
            request.body_failure.raiseException()
        if request.path.rstrip(b"/") != PREFIX:
            raise errors.BadRequest("POST a chunk to /v1/chunks")
        data = request.body_sink.data()
        if not data:
            raise errors.BadRequest("a chunk cannot be empty")
        ref = await self._storage.store_chunk(data)
        return write_json(request, 201, ref_json(ref), headers={
            b"location": b"%s/%d/%d" % (PREFIX, ref.group_id, ref.file_id)})

    def render_GET(self, request):
        return respond(request, self._get(request))

    async def _get(self, request):
        group_id, file_id = chunk_address(request)
        data = await self._storage.replicas.fetch(group_id, file_id, known=False)
        request.setHeader(b"content-type", b"application/octet-stream")
        request.setHeader(b"content-length", b"%d" % (len(data),))
        request.setHeader(b"x-chunk-crc32c", b"%d" % (crc32c(data),))
        return data

    def render_HEAD(self, request):
        return respond(request, self._head(request))

    async def _head(self, request):
        group_id, file_id = chunk_address(request)
        info = await self._storage.replicas.stat(group_id, file_id)
        request.setHeader(b"content-type", b"application/octet-stream")
        request.setHeader(b"content-length", b"%d" % (info.size,))
        request.setHeader(b"x-chunk-crc32c", b"%d" % (info.crc32c,))
        return b""

    def render_DELETE(self, request):
        return respond(request, self._delete(request))

    async def _delete(self, request):
        group_id, file_id = chunk_address(request)
        await self._storage.delete([ChunkRef(group_id, file_id, 0, 0)])
        request.setResponseCode(204)
        return b""
