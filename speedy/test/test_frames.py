"""
Tests for L{speedy.wire.frames}: the header's byte layout, its validation,
and the error bodies.
"""

from hypothesis import given, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from speedy.errors import BY_CODE, BadRequest, ChunkNotFound, Internal, TooLarge
from speedy.wire.frames import (
    FLAG_ERROR, FLAG_KEEP, FLAG_RESPONSE, HEADER_SIZE, KNOWN_FLAGS, MAGIC, MAX_BODY,
    MAX_ERROR_MESSAGE, MAX_TRACE, OP_GET, OP_PUT, OP_STAT, BadFrame, Header, decode_error,
    error_frame, frame, read_trace, trace_of)
from speedy.logs import MAX_REQUEST_ID, new_request_id

headers = st.builds(
    Header,
    opcode=st.integers(0, 255),
    request_id=st.integers(0, 2**32 - 1),
    body_length=st.integers(0, MAX_BODY),
    flags=st.sampled_from([0, FLAG_RESPONSE, FLAG_RESPONSE | FLAG_ERROR, KNOWN_FLAGS]),
).flatmap(lambda h: st.integers(0, min(MAX_TRACE, h.body_length)).map(
    lambda n: Header(h.opcode, h.request_id, h.body_length, h.flags, trace_length=n)))

#: Traces: what L{speedy.logs.sane_request_id} lets through.
traces = st.text("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._:-",
                 min_size=1, max_size=MAX_TRACE)


class HeaderTests(SynchronousTestCase):

    def test_layout(self):
        """The header is magic, version, opcode, flags, trace length, id, length."""
        self.assertEqual(
            Header(OP_STAT, 7, 8).pack(),
            bytes.fromhex("5350434b 01 03 00 00 00000007 00000008".replace(" ", "")))
        self.assertEqual(
            Header(OP_STAT, 7, 24, trace_length=16).pack(),
            bytes.fromhex("5350434b 01 03 00 10 00000007 00000018".replace(" ", "")))
        self.assertEqual(HEADER_SIZE, 16)

    @given(headers)
    def test_round_trip(self, header):
        """Every valid header unpacks to what was packed."""
        packed = header.pack()
        self.assertEqual(len(packed), HEADER_SIZE)
        self.assertEqual(Header.unpack(packed), header)

    @given(headers, st.binary(min_size=4, max_size=4).filter(lambda m: m != MAGIC))
    def test_bad_magic(self, header, magic):
        """A header with any other magic is refused."""
        self.assertRaises(BadFrame, Header.unpack, magic + header.pack()[4:])

    @given(headers, st.integers(0, 255).filter(lambda v: v != 1))
    def test_bad_version(self, header, version):
        raw = bytearray(header.pack())
        raw[4] = version
        self.assertRaises(BadFrame, Header.unpack, bytes(raw))

    @given(headers, st.integers(MAX_TRACE + 1, 255))
    def test_trace_too_long(self, header, trace_length):
        """Byte 7, the trace length, beyond L{MAX_TRACE}: the header is refused."""
        raw = bytearray(header.pack())
        raw[7] = trace_length
        self.assertRaises(BadFrame, Header.unpack, bytes(raw))

    @given(st.integers(0, MAX_TRACE - 1), st.data())
    def test_trace_beyond_body(self, body_length, data):
        """A trace longer than the body it is part of: the header is refused."""
        trace_length = data.draw(st.integers(body_length + 1, MAX_TRACE))
        raw = bytearray(Header(OP_GET, 1, body_length).pack())
        raw[7] = trace_length
        self.assertRaises(BadFrame, Header.unpack, bytes(raw))
        self.assertRaises(ValueError, Header(OP_GET, 1, body_length, trace_length=trace_length).pack)

    def test_trace_not_counted_in_limit(self):
        """The body limit is the opcode's body's: a trace comes on top."""
        raw = Header(OP_GET, 1, 100 + MAX_TRACE, trace_length=MAX_TRACE).pack()
        self.assertEqual(Header.unpack(raw, max_body=100).trace_length, MAX_TRACE)
        raw = Header(OP_GET, 1, 101 + MAX_TRACE, trace_length=MAX_TRACE).pack()
        self.assertRaises(TooLarge, Header.unpack, raw, max_body=100)

    @given(headers, st.integers(0, 255).filter(lambda f: f & ~KNOWN_FLAGS))
    def test_unknown_flags(self, header, flags):
        raw = bytearray(header.pack())
        raw[6] = flags
        self.assertRaises(BadFrame, Header.unpack, bytes(raw))

    @given(st.integers(MAX_BODY + 1, 2**32 - 1))
    def test_too_large(self, length):
        """A body longer than the limit is refused before any byte of it."""
        raw = Header(OP_GET, 1, length).pack()
        self.assertRaises(TooLarge, Header.unpack, raw)

    def test_custom_limit(self):
        self.assertRaises(TooLarge, Header.unpack, Header(OP_GET, 1, 101).pack(), max_body=100)
        self.assertEqual(Header.unpack(Header(OP_GET, 1, 100).pack(), max_body=100).body_length, 100)

    @given(st.binary(max_size=40).filter(lambda b: len(b) != HEADER_SIZE))
    def test_wrong_size(self, raw):
        self.assertRaises(BadFrame, Header.unpack, raw)

    @given(st.binary(min_size=HEADER_SIZE, max_size=HEADER_SIZE))
    def test_garbage(self, raw):
        """Random bytes either decode to a valid header or raise BadRequest."""
        try:
            header = Header.unpack(raw)
        except BadRequest:
            return
        self.assertEqual(header.pack(), raw)

    def test_pack_refuses_out_of_range(self):
        self.assertRaises(ValueError, Header(256, 1, 0).pack)
        self.assertRaises(ValueError, Header(1, 2**32, 0).pack)
        self.assertRaises(ValueError, Header(1, 1, -1).pack)

    def test_bad_frame_is_bad_request(self):
        """Servers answer BadFrame with the BAD_REQUEST code."""
        self.assertEqual(BadFrame.code, BadRequest.code)


class TraceTests(SynchronousTestCase):
    """A request's trace: the request id of the operation it serves."""

    def test_limit(self):
        """A trace holds any request id L{speedy.logs} lets through."""
        self.assertEqual(MAX_TRACE, MAX_REQUEST_ID)

    @given(traces, st.binary(max_size=40), st.sampled_from([0, FLAG_KEEP]))
    def test_round_trip(self, trace, body, flags):
        """A traced frame is the header (byte 7 the trace's length), the
        trace, the body; both come back whole."""
        raw = frame(OP_PUT, 3, body, flags, trace=trace.encode())
        header = Header.unpack(raw[:HEADER_SIZE])
        self.assertEqual((header.trace_length, header.body_length, header.flags),
                         (len(trace), len(trace) + len(body), flags))
        self.assertEqual(read_trace(raw[HEADER_SIZE:HEADER_SIZE + header.trace_length]), trace)
        self.assertEqual(raw[HEADER_SIZE + header.trace_length:], body)

    def test_untraced_frame_unchanged(self):
        """Without a trace a frame is the bytes it was before traces existed."""
        self.assertEqual(frame(OP_STAT, 7, b"\0" * 8, trace=b""),
                         bytes.fromhex("5350434b 01 03 00 00 00000007 00000008".replace(" ", ""))
                         + b"\0" * 8)

    def test_trace_of(self):
        """A request id becomes a trace; None, or anything that is not a
        sane id, none at all."""
        rid = new_request_id()
        self.assertEqual(trace_of(rid), rid.encode())
        for bad in (None, "", "a b", "x" * (MAX_TRACE + 1), "caf\u00e9", "a\nb"):
            self.assertEqual(trace_of(bad), b"", bad)

    def test_read_trace_refuses(self):
        """A trace of other bytes than letters, digits and . _ : - is a bad request."""
        for bad in (b"", b"a b", b"\xff", b"a\nforged line", b"{}"):
            self.assertRaises(BadRequest, read_trace, bad)
        self.assertEqual(read_trace(memoryview(b"req-1.2:3_x")), "req-1.2:3_x")


class ErrorFrameTests(SynchronousTestCase):

    @given(st.sampled_from(sorted(BY_CODE)), st.text(max_size=300))
    def test_round_trip(self, code, message):
        """An error frame gives back the same class and message."""
        raw = error_frame(OP_GET, 9, BY_CODE[code](message))
        header = Header.unpack(raw[:HEADER_SIZE])
        self.assertEqual(header.flags, FLAG_RESPONSE | FLAG_ERROR)
        self.assertEqual(header.request_id, 9)
        error = decode_error(raw[HEADER_SIZE:])
        self.assertIs(type(error), BY_CODE[code])
        self.assertEqual(str(error), message)

    def test_long_message_cut(self):
        raw = error_frame(OP_GET, 1, ChunkNotFound("x" * 5000))
        self.assertEqual(len(raw), HEADER_SIZE + 1 + MAX_ERROR_MESSAGE)

    def test_unknown_code(self):
        """A code this version does not know becomes Internal."""
        self.assertIsInstance(decode_error(b"\x99boom"), Internal)

    def test_empty_body(self):
        self.assertIsInstance(decode_error(b""), BadRequest)

    def test_frame(self):
        self.assertEqual(frame(OP_STAT, 1, b"abc")[HEADER_SIZE:], b"abc")
        self.assertEqual(Header.unpack(frame(OP_STAT, 1, b"abc")[:HEADER_SIZE]).body_length, 3)
