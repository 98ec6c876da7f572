# -*- test-case-name: speedy.test.test_frame_reader -*-
"""
The one frame reader of the wire protocol (C{protocol.md}), used by both
ends: the chunkserver reading requests (L{speedy.chunkserver.protocol}),
the chunk client reading answers (L{speedy.wire.connection}), and the
spliced GET checking the one answer it reads off its own socket
(L{speedy.zerocopy.spliceget}, through L{check_answer}).

A L{FrameReader} cuts a byte stream into frames: 16 header bytes, given
whole to its owner, then the frame's body handed on in pieces as they
arrive, never gathered.  The owner decides what a header means and where
its body goes.
"""

from speedy.errors import BadRequest
from speedy.wire.frames import (
    ERROR_BODY, FLAG_ERROR, FLAG_RESPONSE, HEADER_SIZE, MAX_ERROR_MESSAGE, OPCODES)


class FrameReader:
    """
    Frames out of a byte stream.

    @ivar body: what receives the current frame's body, or None between
        frames (while a header is being read).  A body has C{remaining}, the
        bytes of it still to come, and C{feed(piece)}, which takes the next
        of them (and counts them off C{remaining}).
    """

    def __init__(self, frame_started, frame_ended, whole_reads=False):
        """
        @param frame_started: called with the 16 header bytes of each frame;
            returns the frame's body receiver, or None when the stream must
            not be read further (the owner is closing it).
        @param frame_ended: called with the body receiver once its last
            byte was fed (at once for an empty body).
        @param whole_reads: pass a read that is all body (most of a big
            answer) on as the very object that was read, sparing the
            consumer a copy; else every piece is a C{memoryview}.
        """
        self._frame_started = frame_started
        self._frame_ended = frame_ended
        self._whole_reads = whole_reads
        self._header = bytearray()
        self.body = None

    def feed(self, data, stopped=lambda: False):
        """
        Take the bytes of one read, as long as C{stopped()} is false.

        @return: the bytes not taken (a possibly empty C{memoryview}): what
            arrived after C{stopped()} turned true.
        """
        view = memoryview(data)
        while view:
            if stopped():
                return view
            body = self.body
            if body is None:
                need = HEADER_SIZE - len(self._header)
                self._header += view[:need]
                view = view[need:]
                if len(self._header) == HEADER_SIZE:
                    raw, self._header = bytes(self._header), bytearray()
                    body = self.body = self._frame_started(raw)
                    if body is None:
                        return view
                    if body.remaining == 0:
                        self.end()
            else:
                take = min(len(view), body.remaining)
                piece = data if self._whole_reads and take == len(data) else view[:take]
                view = view[take:]
                body.feed(piece)
                if body.remaining == 0:
                    self.end()
        return view

    def end(self):
        """The current body has all its bytes (some were put in place by the
        owner, not fed): end its frame."""
        body, self.body = self.body, None
        self._frame_ended(body)


def check_answer(header, opcode, request_id=None):
    """
    Check that a frame header is an answer to a request of C{opcode} (and
    C{request_id}, when given), that it carries no trace (only requests
    do), and that an error answer's body is no longer than an error
    message can be.

    @raise BadRequest: it is not; the connection cannot be trusted further.
    """
    if not header.flags & FLAG_RESPONSE:
        raise BadRequest("a frame without the RESPONSE flag")
    if header.trace_length:
        raise BadRequest("an answer carries no trace")
    if request_id is not None and header.request_id != request_id:
        raise BadRequest(f"answer to request {header.request_id}, not {request_id}")
    if header.opcode != opcode:
        raise BadRequest(f"answer to request {header.request_id} has opcode "
                         f"{OPCODES.get(header.opcode, header.opcode)}, not "
                         f"{OPCODES.get(opcode, opcode)}")
    if header.flags & FLAG_ERROR and header.body_length > ERROR_BODY.size + MAX_ERROR_MESSAGE:
        raise BadRequest(f"an error body of {header.body_length} bytes")
