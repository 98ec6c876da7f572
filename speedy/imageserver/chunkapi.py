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
from speedy.records import ChunkRef
from speedy.web.json import json_answer
from speedy.web.rest import Answer
from speedy.web.streaming import IBodySink

PREFIX = "/v1/chunks"


def chunk_address(text):
    """
    @param text: what follows C{/v1/chunks/} in a path.
    @return: (group_id, file_id) from C{<group_id>/<file_id>}.
    @raise BadRequest: anything else.
    """
    parts = text.split("/")
    if len(parts) != 2 or not all(p.isascii() and p.isdigit() and len(p) <= 20 for p in parts):
        raise errors.BadRequest("expected /v1/chunks/<group_id>/<file_id>")
    group_id, file_id = int(parts[0]), int(parts[1])
    if not 0 < group_id < 2**31 or not 0 <= file_id < 2**63:
        raise errors.BadRequest(f"no chunk can be {group_id}/{file_id}: a group id is "
                                "below 2**31, a file id below 2**63")
    return group_id, file_id


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


class ChunkAPI:
    """The handlers of C{/v1/chunks} (routed in L{speedy.imageserver.root})."""

    def __init__(self, storage):
        self._storage = storage

    def body_sink(self, request):
        """@return: the L{ChunkBody} a POST's body goes to."""
        return ChunkBody(self._storage.chunk_size)

    async def post(self, request):
        if request.body_failure is not None:
            request.body_failure.raiseException()
        data = request.body_sink.data()
        if not data:
            raise errors.BadRequest("a chunk cannot be empty")
        ref = await self._storage.store_chunk(data)
        return json_answer(201, ref_json(ref), headers={
            b"location": f"{PREFIX}/{ref.group_id}/{ref.file_id}".encode("ascii")})

    async def get(self, request, address):
        group_id, file_id = address
        data = await self._storage.replicas.fetch(group_id, file_id, known=False)
        return Answer(200, data, {b"x-chunk-crc32c": b"%d" % (crc32c(data),)},
                      content_type=b"application/octet-stream")

    async def head(self, request, address):
        group_id, file_id = address
        info = await self._storage.replicas.stat(group_id, file_id)
        return Answer(200, headers={b"x-chunk-crc32c": b"%d" % (info.crc32c,)},
                      content_type=b"application/octet-stream", length=info.size)

    async def delete(self, request, address):
        group_id, file_id = address
        await self._storage.delete([ChunkRef(group_id, file_id, 0, 0)])
        return Answer(204)
