# -*- test-case-name: speedy.test.test_sendfile -*-
"""
Chunk bytes sent with C{os.sendfile}: from the volume file straight to the
socket, never through Python memory.

Twisted has no sendfile (ticket #585).  L{SendfileBody} is a pull producer
that calls C{os.sendfile} only when the TCP transport's own write buffer is
empty (else bytes would overtake buffered ones), and re-arms on a partial
send or C{EAGAIN} by asking the transport to wait for writability
(C{startWriting}); the transport then drains, finds its buffer empty and
calls C{resumeProducing} again.  That needs three attributes of
L{twisted.internet.tcp.Connection} that are not public API; L{can_sendfile}
checks for them and the server falls back to L{ReadBody} without them.

Under TLS sendfile would put plaintext on the wire, so any transport
providing L{ISSLTransport} gets L{ReadBody} too.
"""

import os

from twisted.internet.error import ConnectionLost

from speedy.wire.producers import PullBody, ReadBody, buffer_empty, buffer_visible

#: Set SPEEDY_NO_SENDFILE=1 to send every body with read() (benchmarks).
SENDFILE_DISABLED = os.environ.get("SPEEDY_NO_SENDFILE", "") not in ("", "0")

#: Upper bound of one sendfile call; the kernel sends what the socket takes.
_MAX_SEND = 1 << 30


def can_sendfile(transport):
    """
    @return: True if C{os.sendfile} may write to C{transport}'s socket: a
        plain TCP connection whose write buffer we can see.
    """
    return hasattr(os, "sendfile") and buffer_visible(transport)


class SendfileBody(PullBody):
    """
    The bytes of an L{speedy.interfaces.IChunkRead}, sent with C{os.sendfile}
    from its file descriptor.  Released when it ends, whichever way.
    """

    def __init__(self, read, fd, file_offset):
        super().__init__(read.length)
        self._read = read
        self._fd = fd
        self._file_offset = file_offset

    def _produce(self):
        transport = self._consumer
        if not buffer_empty(transport):
            return  # the transport is writing and calls us when drained
        try:
            sent = os.sendfile(transport.fileno(), self._fd,
                               self._file_offset + self._position,
                               min(_MAX_SEND, self.length - self._position))
        except BlockingIOError:
            sent = None
        except ConnectionError as e:  # the peer is gone; connectionLost follows
            raise ConnectionLost(str(e))
        if sent == 0:
            raise OSError(f"volume file ended {self.length - self._position} bytes early")
        if sent:
            self._position += sent
        if self._position == self.length:
            self._finish()
        else:
            transport.startWriting()

    def _release(self):
        self._read.release()


def range_body(read, transport, allow_sendfile=True):
    """
    @return: the body that sends C{read}'s bytes to C{transport} the fastest
        safe way: L{SendfileBody} on plain TCP when the read has a file
        descriptor, else L{ReadBody}.
    """
    if allow_sendfile and not SENDFILE_DISABLED and can_sendfile(transport):
        try:
            fd, file_offset = read.fileno(), read.file_offset()
        except OSError:
            pass
        else:
            return SendfileBody(read, fd, file_offset)
    return ReadBody(read)
