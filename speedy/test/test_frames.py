"""
Tests for L{speedy.wire.frames}: the header's byte layout, its validation,
and the error bodies.
"""

from hypothesis import given, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from speedy.errors import BY_CODE, BadRequest, ChunkNotFound, Internal, TooLarge
from speedy.wire.frames import (
    FLAG_ERROR, FLAG_RESPONSE, HEADER_SIZE, KNOWN_FLAGS, MAGIC, MAX_BODY,
    MAX_ERROR_MESSAGE, OP_GET, OP_STAT, BadFrame, Header, decode_error,
    error_frame, frame)

headers = st.builds(
    Header,
    opcode=st.integers(0, 255),
    request_id=st.integers(0, 2**32 - 1),
    body_length=st.integers(0, MAX_BODY),
    flags=st.sampled_from([0, FLAG_RESPONSE, FLAG_RESPONSE | FLAG_ERROR, KNOWN_FLAGS]),
)


class HeaderTests(SynchronousTestCase):

    def test_layout(self):
        """The header is magic, version, opcode, flags, reserved, id, length."""
        self.assertEqual(
            Header(OP_STAT, 7, 8).pack(),
            bytes.fromhex("5350434b 01 03 00 00 00000007 00000008".replace(" ", "")))
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

    @given(headers, st.integers(1, 255))
    def test_reserved_byte(self, header, reserved):
        raw = bytearray(header.pack())
        raw[7] = reserved
        self.assertRaises(BadFrame, Header.unpack, bytes(raw))

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
