# -*- test-case-name: speedy.test.test_frames -*-
"""
The frames of the chunkserver wire protocol (``protocol.md`` is the full
spec; this module is its code).

Every frame is a 16-byte header followed by C{body_length} body bytes::

    offset size field
    0      4    magic        b"SPCK"
    4      1    version      1
    5      1    opcode       OP_* below
    6      1    flags        FLAG_* below
    7      1    trace_length 0, or (requests only) the length of the trace
                             the body begins with, at most MAX_TRACE
    8      4    request_id   chosen by the client, echoed by the server
    12     4    body_length  bytes following the header (the trace's included)

All integers are unsigned big-endian.  The fixed parts of the bodies are
described by the C{*_BODY} structs below.

A request may carry a I{trace}: the id of the operation it serves (the
HTTP request id of L{speedy.logs}, 1 to L{MAX_TRACE} ASCII letters, digits
or C{. _ : -}), as the first C{trace_length} bytes of its body, before the
opcode's own body; the server logs the request's errors with it and passes
it on to the next member of a chain.  A frame without one is the same
bytes as before traces existed (byte 7 was a reserved 0).
"""

import re
import struct

from attrs import frozen

from speedy.errors import BadRequest, TooLarge, error_for_code

MAGIC = b"SPCK"
VERSION = 1

HEADER = struct.Struct(">4sBBBBII")
HEADER_SIZE = HEADER.size  # 16

OP_PUT = 1
OP_GET = 2
OP_STAT = 3
OP_DELETE = 4
OP_PING = 5
OP_STATUS = 6
OP_LIST = 7
OP_COMPACT = 8
OP_VERIFY = 9
OP_AUTH = 10
OP_CHAIN_PUT = 11
OPCODES = {
    OP_PUT: "PUT", OP_GET: "GET", OP_STAT: "STAT", OP_DELETE: "DELETE",
    OP_PING: "PING", OP_STATUS: "STATUS", OP_LIST: "LIST", OP_COMPACT: "COMPACT",
    OP_VERIFY: "VERIFY", OP_AUTH: "AUTH", OP_CHAIN_PUT: "CHAIN_PUT",
}

#: Set on every frame the server sends.
FLAG_RESPONSE = 0x01
#: The body is an error: ERROR_BODY then a UTF-8 message.
FLAG_ERROR = 0x02
#: More response frames follow for this request id (LIST).
FLAG_MORE = 0x04
#: On a PUT request: keep the chunk in the server's memory cache, this
#: replica is the one reads of it go to first.
FLAG_KEEP = 0x08
KNOWN_FLAGS = FLAG_RESPONSE | FLAG_ERROR | FLAG_MORE | FLAG_KEEP
#: The flags a request may carry, by opcode; every other request sends 0.
REQUEST_FLAGS = {OP_PUT: FLAG_KEEP}

#: The largest chunk a PUT may carry, and the largest body of any frame.
MAX_CHUNK = 64 * 1024 * 1024
#: Members of a chain (CHAIN_PUT) at most, the receiver included, and the
#: longest route (the addresses of the members after the receiver).
MAX_CHAIN = 8
MAX_ROUTE = 1024
MAX_BODY = MAX_CHUNK + 64 + MAX_ROUTE
#: The longest trace a request may carry (L{speedy.logs.MAX_REQUEST_ID}).
MAX_TRACE = 64
#: Bytes either end reads from its socket per call (the transport's
#: C{bufferSize}): bodies are megabytes, and Twisted's default of 64 KiB
#: costs a Python call chain per 64 KiB (on a 16 MiB PUT, a quarter of the
#: chunkserver's CPU).  C{bufferSize} is also where a transport pauses a
#: streaming producer; every body sent on this protocol is a pull producer.
RECEIVE_SIZE = 1 << 20
#: Error messages are cut to this many bytes.
MAX_ERROR_MESSAGE = 1024
#: File ids per LIST response frame.
LIST_BATCH = 8192

#: "To the end of the chunk" in a GET's length, "every volume" in COMPACT.
ALL_BYTES = 2**64 - 1
ALL_VOLUMES = 2**32 - 1

FILE_ID = struct.Struct(">Q")  # PUT (then the data), STAT, DELETE requests
GET_REQUEST = struct.Struct(">QQQ")  # file_id, offset, length
GET_RESPONSE = struct.Struct(">QIQ")  # chunk size, crc32c, offset; then data
CHUNK_INFO = struct.Struct(">QI")  # PUT and STAT responses: size, crc32c
COMPACT_REQUEST = struct.Struct(">I")  # volume_id
COMPACT_RESPONSE = struct.Struct(">Q")  # bytes freed
ERROR_BODY = struct.Struct(">B")  # error code; then the message
#: CHAIN_PUT request: file_id, keep mask (bit i: member i of the chain keeps
#: the chunk in its memory cache, bit 0 the receiver), route length; then
#: the route (the next members' "host:port", comma-separated, UTF-8), then
#: the chunk's bytes.  Its answer: one CHUNK_INFO per member, receiver first.
CHAIN_PREFIX = struct.Struct(">QBH")

_TRACE = re.compile(r"[A-Za-z0-9._:\-]{1,%d}\Z" % MAX_TRACE)
_TRACE_BYTES = re.compile(rb"[A-Za-z0-9._:\-]{1,%d}\Z" % MAX_TRACE)

#: Exact request body lengths of every opcode but PUT (FILE_ID + data).
REQUEST_BODY_SIZES = {
    OP_GET: GET_REQUEST.size,
    OP_STAT: FILE_ID.size,
    OP_DELETE: FILE_ID.size,
    OP_PING: 0,
    OP_STATUS: 0,
    OP_LIST: 0,
    OP_COMPACT: COMPACT_REQUEST.size,
    OP_VERIFY: FILE_ID.size,
    OP_AUTH: 32,  # a nonce, then a proof: see speedy.wire.handshake
}


class BadFrame(BadRequest):
    """A header that cannot be trusted (magic, version, flag bits, a trace
    length beyond L{MAX_TRACE} or the body); the stream cannot be
    resynchronised, so the connection is closed."""


def _u8(value):
    return 0 <= value < 2**8


@frozen
class Header:
    """One frame header.  C{pack} and C{unpack} refuse what the wire forbids."""

    opcode: int
    request_id: int
    body_length: int
    flags: int = 0
    version: int = VERSION
    #: Bytes of trace at the front of the body (L{MAX_TRACE} at most).
    trace_length: int = 0

    def pack(self):
        """
        @return: the 16 header bytes.
        @raise ValueError: a field does not fit its width.
        """
        if not (_u8(self.opcode) and _u8(self.flags) and _u8(self.version)
                and 0 <= self.trace_length <= min(MAX_TRACE, self.body_length)
                and 0 <= self.request_id < 2**32 and 0 <= self.body_length < 2**32):
            raise ValueError(f"header field out of range: {self!r}")
        return HEADER.pack(MAGIC, self.version, self.opcode, self.flags, self.trace_length,
                           self.request_id, self.body_length)

    @classmethod
    def unpack(cls, data, max_body=MAX_BODY):
        """
        Decode and validate exactly L{HEADER_SIZE} bytes.

        @param max_body: the largest body taken, not counting a trace.
        @return: a L{Header}.
        @raise BadFrame: wrong size, magic, version, unknown flag bits, or a
            trace longer than L{MAX_TRACE} or than the body.
        @raise TooLarge: C{body_length} exceeds C{max_body} (plus the trace).
        """
        if len(data) != HEADER_SIZE:
            raise BadFrame(f"a header is {HEADER_SIZE} bytes, not {len(data)}")
        magic, version, opcode, flags, trace_length, request_id, body_length = HEADER.unpack(data)
        if magic != MAGIC:
            raise BadFrame(f"bad magic {bytes(magic)!r}")
        if version != VERSION:
            raise BadFrame(f"unsupported protocol version {version}")
        if flags & ~KNOWN_FLAGS:
            raise BadFrame(f"reserved flag bits set (flags {flags:#x})")
        if trace_length and (trace_length > MAX_TRACE or trace_length > body_length):
            raise BadFrame(f"a trace of {trace_length} bytes in a body of {body_length}")
        if body_length > max_body + trace_length:
            raise TooLarge(f"body of {body_length} bytes exceeds the limit of {max_body}")
        return cls(opcode=opcode, request_id=request_id, body_length=body_length,
                   flags=flags, version=version, trace_length=trace_length)


def frame(opcode, request_id, body=b"", flags=0, trace=b""):
    """
    @param trace: the request's trace (ASCII bytes, at most L{MAX_TRACE}),
        sent before C{body}; empty for none.
    @return: the bytes of a whole frame carrying C{body}.
    @raise struct.error: a field does not fit its width.
    """
    if trace:
        return HEADER.pack(MAGIC, VERSION, opcode, flags, len(trace), request_id,
                           len(trace) + len(body)) + trace + body
    return HEADER.pack(MAGIC, VERSION, opcode, flags, 0, request_id, len(body)) + body


def trace_of(value):
    """
    @param value: a request id (str; L{speedy.logs.request_id}'s value), or
        None.
    @return: it as the bytes of a trace, or C{b""} for None or an id that
        is not one (see L{speedy.logs.sane_request_id}): a request is never
        refused for its trace's sake by its own sender.
    """
    if value is None:
        return b""
    return value.encode("ascii") if _TRACE.match(value) else b""


def read_trace(data):
    """
    @param data: the first C{trace_length} bytes of a request's body.
    @return: the trace as str.
    @raise BadRequest: it is not letters, digits and C{. _ : -}.
    """
    data = bytes(data)
    if not _TRACE_BYTES.match(data):
        raise BadRequest(f"a trace is letters, digits and . _ : -, not {data[:MAX_TRACE]!r}")
    return data.decode("ascii")


def error_frame(opcode, request_id, error):
    """
    @param error: a L{speedy.errors.SpeedyError} (its C{code} and message).
    @return: the bytes of an error response frame.
    """
    message = str(error).encode("utf-8", "replace")[:MAX_ERROR_MESSAGE]
    return frame(opcode, request_id, ERROR_BODY.pack(error.code) + message,
                 FLAG_RESPONSE | FLAG_ERROR)


def decode_error(body):
    """@return: the L{speedy.errors.SpeedyError} an error frame's body names."""
    if len(body) < ERROR_BODY.size:
        return BadRequest("empty error frame")
    (code,) = ERROR_BODY.unpack_from(body)
    return error_for_code(code, bytes(body[ERROR_BODY.size:]).decode("utf-8", "replace"))
