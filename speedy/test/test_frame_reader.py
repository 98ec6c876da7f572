"""
Tests for L{speedy.wire.reader}: frames cut out of a byte stream however
it is split, bodies handed on in pieces, reading stopped and resumed, and
answers checked.
"""

from twisted.trial.unittest import SynchronousTestCase

from speedy.errors import BadRequest
from speedy.wire.frames import (
    ERROR_BODY, FLAG_ERROR, FLAG_RESPONSE, MAX_ERROR_MESSAGE, OP_GET, OP_PUT, OP_STAT, Header,
    frame)
from speedy.wire.reader import FrameReader, check_answer


class Body:
    def __init__(self, header):
        self.header = header
        self.remaining = header.body_length
        self.pieces = []

    def feed(self, piece):
        self.remaining -= len(piece)
        self.pieces.append(piece)


class FrameReaderTests(SynchronousTestCase):

    def setUp(self):
        self.frames = []
        self.reader = FrameReader(self.started, self.frames.append)

    def started(self, raw):
        return Body(Header.unpack(raw))

    def stream(self):
        return (frame(OP_PUT, 1, b"a" * 1000) + frame(OP_STAT, 2, b"")
                + frame(OP_GET, 3, b"bc"))

    def check(self):
        self.assertEqual([(b.header.opcode, b.header.request_id, b"".join(map(bytes, b.pieces)))
                          for b in self.frames],
                         [(OP_PUT, 1, b"a" * 1000), (OP_STAT, 2, b""), (OP_GET, 3, b"bc")])

    def test_one_read(self):
        self.assertEqual(len(self.reader.feed(self.stream())), 0)
        self.check()

    def test_byte_at_a_time(self):
        data = self.stream()
        for i in range(len(data)):
            self.reader.feed(data[i:i + 1])
        self.check()
        self.assertIsNone(self.reader.body)

    def test_bodies_are_never_gathered(self):
        """A body arriving in several reads reaches its receiver as several
        pieces, each a view of what was read."""
        data = frame(OP_PUT, 1, b"x" * 300)
        self.reader.feed(data[:100])
        self.reader.feed(data[100:])
        [body] = self.frames
        self.assertEqual([len(p) for p in body.pieces], [84, 216])
        self.assertIsInstance(body.pieces[0], memoryview)

    def test_whole_reads(self):
        """With C{whole_reads}, a read that is all body is passed on as the
        object read."""
        reader = FrameReader(self.started, self.frames.append, whole_reads=True)
        data = frame(OP_PUT, 1, b"x" * 300)
        reader.feed(data[:100])
        rest = data[100:]
        reader.feed(rest)
        self.assertIs(self.frames[0].pieces[1], rest)

    def test_stopped(self):
        """Once C{stopped()} is true the rest is returned, untouched, and
        feeding it later carries on where it stopped."""
        data = self.stream()
        stop = [False]

        def stopped():
            return stop[0]

        def started(raw):
            stop[0] = True  # stop after each header
            return Body(Header.unpack(raw))

        reader = FrameReader(started, self.frames.append)
        held = bytes(reader.feed(data, stopped))
        while held:
            stop[0] = False
            held = bytes(reader.feed(held, stopped))
        self.check()

    def test_owner_refuses(self):
        """A header its owner refuses (None) ends reading: the rest comes
        back unread."""
        reader = FrameReader(lambda raw: None, self.frames.append)
        data = frame(OP_PUT, 1, b"abc")
        self.assertEqual(bytes(reader.feed(data)), b"abc")
        self.assertEqual(self.frames, [])


class CheckAnswerTests(SynchronousTestCase):

    def test_good(self):
        check_answer(Header(OP_GET, 7, 10, flags=FLAG_RESPONSE), OP_GET, 7)
        check_answer(Header(OP_GET, 7, ERROR_BODY.size + MAX_ERROR_MESSAGE,
                            flags=FLAG_RESPONSE | FLAG_ERROR), OP_GET)

    def test_bad(self):
        for header, opcode, request_id in [
                (Header(OP_GET, 7, 10), OP_GET, 7),  # a request, not an answer
                (Header(OP_PUT, 7, 10, flags=FLAG_RESPONSE), OP_GET, 7),
                (Header(OP_GET, 8, 10, flags=FLAG_RESPONSE), OP_GET, 7),
                (Header(OP_GET, 7, ERROR_BODY.size + MAX_ERROR_MESSAGE + 1,
                        flags=FLAG_RESPONSE | FLAG_ERROR), OP_GET, 7)]:
            self.assertRaises(BadRequest, check_answer, header, opcode, request_id)
