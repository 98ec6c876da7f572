# -*- test-case-name: speedy.test.test_imageserver_fileapi -*-
"""
The REST file API: files stored by path, their bytes cut into chunks on
replica groups, their chunk lists in the metadata store.

    PUT    /v1/files/<path>             body streamed into storage; 201
    GET    /v1/files/<path>             200, or 206 with Range (416 outside)
    HEAD   /v1/files/<path>             the GET's headers
    DELETE /v1/files/<path>             204
    GET    /v1/files/<dir>/?list[&limit=n][&after=p]
                                        {"paths": [...], "next": p or null}

A PUT may carry C{X-Content-SHA256: <hex>}: the file is stored only if its
bytes match.  A replaced or deleted file's chunks are recorded as garbage,
never deleted at once, so a reader of the old version is not cut short.
Each chunk of a PUT's body is recorded as an intent before its bytes go
out (L{speedy.interfaces.IGarbageTables.record_intents}), and the file's
row takes them over in the transaction that writes it: the chunks of a
PUT whose imageserver dies half-way are found by the chunk collector.
The full contract is C{docs/imageserver-api.yaml}.
"""

import hashlib
import re
from urllib.parse import parse_qs, unquote_to_bytes

from twisted.logger import Logger
from zope.interface import implementer

from speedy import errors
from speedy.metadata.schema import check_path
from speedy.records import FileRecord
from speedy.web.downloads import send_in_large_pieces
from speedy.web.json import json_answer
from speedy.web.rest import Answer, cancel_when_gone, send_head
from speedy.web.streaming import IBodySink

log = Logger()


class FileNotFound(errors.ChunkNotFound):
    """No file has that path (answered 404 FILE_NOT_FOUND)."""

    error_code = "FILE_NOT_FOUND"


PREFIX = b"/v1/files/"
MAX_LIST = 1000
_RANGE = re.compile(rb"^bytes=(\d*)-(\d*)$")


def file_path(request):
    """
    @return: the file path a request names (after C{/v1/files/}), decoded.
    @raise BadRequest: not UTF-8, or with empty, C{.} or C{..} segments.
    """
    raw = request.path[len(PREFIX):]
    try:
        path = unquote_to_bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        raise errors.BadRequest("the path is not UTF-8")
    segments = path.split("/")
    if path.endswith("/"):
        segments.pop()
    if any(s in ("", ".", "..") for s in segments) or "\x00" in path:
        raise errors.BadRequest(f"not a usable path: {path!r}")
    return path


def upload_path(request):
    """
    @return: the path a PUT stores a file at.
    @raise BadRequest: unusable (see L{file_path}), too long, or a directory.
    """
    path = file_path(request)
    check_path(path)
    if path.endswith("/"):
        raise errors.BadRequest("a file path cannot end with /")
    return path


def byte_range(header, size):
    """
    Parse a C{Range} header for a file of C{size} bytes.

    @return: (offset, length), or None when the header is absent or of a
        kind this API ignores (several ranges, other units): the whole file
        is then answered.
    @raise RangeNotSatisfiable: the range lies outside the file.
    """
    if header is None:
        return None
    m = _RANGE.match(header.strip())
    if m is None:
        return None
    first, last = m.group(1), m.group(2)
    if not first and not last:
        return None
    if not first:  # the last n bytes
        n = int(last)
        if n == 0:
            raise errors.RangeNotSatisfiable("an empty suffix range")
        return max(0, size - n), min(n, size)
    start = int(first)
    end = size - 1 if not last else min(int(last), size - 1)
    if start >= size or end < start:
        raise errors.RangeNotSatisfiable(f"bytes {header.decode('ascii', 'replace')} of {size}")
    return start, end - start + 1


@implementer(IBodySink)
class FileUpload:
    """A PUT body hashed and streamed into an L{IChunkedWriter}."""

    def __init__(self, writer):
        self.writer = writer
        self.sha256 = hashlib.sha256()

    def write(self, data):
        self.sha256.update(data)
        return self.writer.write(data)

    def finish(self):
        """The body is complete; the resource finishes the writer."""

    def connection_lost(self, reason):
        self.writer.abort().addErrback(
            lambda f: log.failure("aborting an interrupted file upload failed", f))


class FileAPI:
    """
    The handlers of C{/v1/files} (routed in L{speedy.imageserver.root});
    each parses its path itself (L{file_path}).

    @param storage: the L{speedy.interfaces.IChunkedStorage} the files'
        bytes go to, with the C{record_garbage} of
        L{speedy.imageserver.replication.ReplicatedStorage} for the chunks
        of replaced and deleted files.
    @param metadata: the L{speedy.interfaces.IFileTables} of the files,
        with the C{record_intents} of L{speedy.interfaces.IGarbageTables}.
    """

    def __init__(self, storage, metadata, clock):
        self._storage = storage
        self._metadata = metadata
        self._clock = clock

    def upload_sink(self, request, path=None):
        """
        @return: the L{FileUpload} a PUT's body streams into.
        @raise BadRequest: the path is unusable (nothing is stored).
        """
        path = upload_path(request)

        def record_intent(chunk):
            return self._metadata.record_intents([chunk], f"file {path!r}")
        return FileUpload(self._storage.writer(length=getattr(request, "body_length", None),
                                               record_intent=record_intent))

    async def put(self, request, path=None):
        path = upload_path(request)
        upload = request.body_sink
        try:
            if request.body_failure is not None:
                request.body_failure.raiseException()
            chunks = await upload.writer.finish()
        except BaseException:
            await upload.writer.abort()
            raise
        size = upload.writer.bytes_written
        digest = upload.sha256.hexdigest()
        expected = request.getHeader(b"x-content-sha256")
        if expected is not None and expected.decode("ascii", "replace").lower() != digest:
            await self._storage.delete(chunks)
            raise errors.BadRequest(f"the body's sha256 is {digest}, not {expected!r}")
        record = FileRecord(path, size, chunks, self._clock.seconds(), digest)
        try:
            replaced = await self._metadata.put_file(record, adopted=chunks)
        except BaseException:
            await self._storage.delete(chunks)
            raise
        if replaced is not None:
            await self._storage.record_garbage(replaced.chunks, f"file {path!r} replaced")
        return json_answer(201, {"path": path, "size": size, "sha256": digest,
                                 "chunks": len(chunks)})

    async def get(self, request, path=None):
        """A file's bytes (a range of them), its headers for a HEAD, or a
        directory's listing."""
        path = file_path(request)
        if path.endswith("/") or path == "":
            if b"list" not in parse_qs(request.uri.partition(b"?")[2], keep_blank_values=True):
                raise errors.BadRequest("a directory: add ?list to list it")
            return await self._list(request, path)
        record = await self._metadata.get_file(path)
        if record is None:
            raise FileNotFound(f"no file {path!r}")
        headers = {b"accept-ranges": b"bytes"}
        if record.sha256:
            headers[b"etag"] = b'"%s"' % record.sha256.encode("ascii")
            headers[b"x-content-sha256"] = record.sha256.encode("ascii")
        try:
            wanted = byte_range(request.getHeader(b"range"), record.size)
        except errors.RangeNotSatisfiable:
            request.setHeader(b"content-range", b"bytes */%d" % (record.size,))
            raise
        if wanted is None:
            status, offset, length = 200, 0, record.size
        else:
            status, (offset, length) = 206, wanted
            headers[b"content-range"] = b"bytes %d-%d/%d" % (
                offset, offset + length - 1, record.size)
        answer = Answer(status, headers=headers, content_type=b"application/octet-stream",
                        length=length)
        if request.method == b"HEAD" or length == 0:
            return answer
        send_head(request, answer)
        send_in_large_pieces(request)
        await cancel_when_gone(request, self._storage.read(record.chunks, offset, length, request))
        return None

    async def _list(self, request, prefix):
        try:
            limit = int(request.args.get(b"limit", [MAX_LIST])[0])
        except ValueError:
            raise errors.BadRequest("limit must be a number")
        if not 1 <= limit <= MAX_LIST:
            raise errors.BadRequest(f"limit must be between 1 and {MAX_LIST}")
        after = request.args.get(b"after", [None])[0]
        if after is not None:
            after = after.decode("utf-8", "replace")
        paths = await self._metadata.list_files(prefix, limit=limit, after=after)
        more = len(paths) == limit
        return json_answer(200, {"paths": paths, "next": paths[-1] if more else None})

    async def delete(self, request, path=None):
        path = file_path(request)
        record = await self._metadata.delete_file(path)
        if record is None:
            raise FileNotFound(f"no file {path!r}")
        await self._storage.record_garbage(record.chunks, f"file {path!r} deleted")
        return Answer(204)
