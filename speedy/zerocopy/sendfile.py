# -*- test-case-name: speedy.test.test_sendfile,speedy.test.test_zerocopy_tls -*-
"""
Chunk bytes sent with C{os.sendfile}: from the volume file straight to the
socket, never through Python memory.

Twisted has no sendfile (ticket #585).  L{SendfileBody} is a pull producer
that calls C{os.sendfile} only when the TCP transport's own write buffer is
empty (else bytes would overtake buffered ones), and re-arms on a partial
send or C{EAGAIN} by asking the transport to wait for writability
(C{startWriting}); the transport then drains, finds its buffer empty and
calls C{resumeProducing} again.  That needs attributes of
L{twisted.internet.tcp.Connection} that are not public API
(L{speedy.zerocopy.internals}); L{can_sendfile} checks for them and the
server falls back to L{ReadBody} without them, or when zero copy is off
(C{--zero-copy off}).

Under TLS sendfile would put plaintext on the wire, so any transport
providing L{ISSLTransport} gets L{ReadBody} too.

A staged read (the chunk store kept the bytes its direct verify read, see
L{speedy.chunkserver.reads}) has no file to send from: L{StagedBody} hands
its buffers to the socket with C{sendmsg}, the same way and under the same
conditions (plus the transport's C{socket} attribute, L{can_send_staged}),
so its bytes are neither read from the disk again nor copied in Python.
"""

import os
from collections import deque
from itertools import islice

from twisted.internet.error import ConnectionLost

from speedy.wire.producers import PullBody, ReadBody
from speedy.zerocopy.internals import (
    raw_socket, wait_for_writable, write_buffer_empty, write_buffer_visible)

#: Upper bound of one sendfile call; the kernel sends what the socket takes.
_MAX_SEND = 1 << 30


def can_sendfile(transport):
    """
    @return: True if C{os.sendfile} may write to C{transport}'s socket: a
        plain TCP connection whose write buffer we can see.
    """
    return hasattr(os, "sendfile") and write_buffer_visible(transport)


class _SocketBody(PullBody):
    """
    Base of bodies written straight into a plain TCP transport's socket,
    past its Twisted buffer: only when that buffer is empty (else bytes
    would overtake buffered ones), re-armed on a partial send or C{EAGAIN}
    by asking the transport to wait for writability (C{startWriting}); the
    transport then drains, finds its buffer empty and calls
    C{resumeProducing} again.  Subclasses implement C{_send(transport)},
    returning the bytes the socket took (0 on C{EAGAIN}).
    """

    def _produce(self):
        transport = self._consumer
        if not write_buffer_empty(transport):
            return  # the transport is writing and calls us when drained
        try:
            sent = self._send(transport)
        except BlockingIOError:
            sent = 0
        except ConnectionError as e:  # the peer is gone; connectionLost follows
            raise ConnectionLost(str(e))
        self._position += sent
        if self._position == self.length:
            self._finish()
        else:
            wait_for_writable(transport)


class SendfileBody(_SocketBody):
    """
    The bytes of an L{speedy.interfaces.IChunkRead}, sent with C{os.sendfile}
    from its file descriptor.  Released when it ends, whichever way.
    """

    def __init__(self, read, fd, file_offset):
        super().__init__(read.length)
        self._read = read
        self._fd = fd
        self._file_offset = file_offset

    def _send(self, transport):
        sent = os.sendfile(transport.fileno(), self._fd, self._file_offset + self._position,
                           min(_MAX_SEND, self.length - self._position))
        if sent == 0:
            raise OSError(f"volume file ended {self.length - self._position} bytes early")
        return sent

    def _release(self):
        self._read.release()


def can_send_staged(transport):
    """
    @return: True if L{StagedBody} may write to C{transport}'s socket: a
        plain TCP connection whose write buffer and socket we can see.
    """
    return write_buffer_visible(transport) and hasattr(raw_socket(transport), "sendmsg")


#: Most buffers handed to one C{sendmsg} (Linux's C{IOV_MAX} is 1024).
_MAX_VIEWS = 64


class StagedBody(_SocketBody):
    """
    The bytes of a staged L{speedy.interfaces.IChunkRead} (one whose
    C{staged()} returns memoryviews of buffers holding them), sent with
    C{socket.sendmsg} straight from those buffers: the kernel copies them
    into the socket, Python copies nothing.  Like L{SendfileBody}, it sends
    only when the transport's buffer is empty and, when the socket takes
    less than offered (or nothing: C{EAGAIN}), asks the transport to wait
    for writability.  A peer gone mid-send fails it with C{ConnectionLost}.
    The read is released when the body ends, whichever way, and only then
    (the buffers go back to the store's pool on release).
    """

    def __init__(self, read, views):
        super().__init__(read.length)
        self._read = read
        self._views = deque(view for view in views if len(view))

    def _send(self, transport):
        views = self._views
        if not views:
            raise OSError(f"staged bytes ended {self.length - self._position} bytes early")
        sent = taken = raw_socket(transport).sendmsg(list(islice(views, _MAX_VIEWS)))
        while taken:
            if taken >= len(views[0]):
                taken -= len(views.popleft())
            else:
                views[0] = views[0][taken:]
                taken = 0
        return sent

    def _release(self):
        self._views.clear()
        self._read.release()


def range_body(read, transport, zero_copy=True):
    """
    @return: the body that sends C{read}'s bytes to C{transport} the fastest
        safe way, on plain TCP: L{StagedBody} when the read is staged (its
        optional C{staged()} returns its bytes' memoryviews), else
        L{SendfileBody} when the read has a file descriptor; else
        (TLS, other transports, C{zero_copy} false) L{ReadBody}.
    """
    staged = getattr(read, "staged", None)
    views = staged() if staged is not None else None
    if views is not None:
        if zero_copy and can_send_staged(transport):
            return StagedBody(read, views)
        return ReadBody(read)
    if zero_copy and can_sendfile(transport):
        try:
            fd, file_offset = read.fileno(), read.file_offset()
        except OSError:
            pass
        else:
            return SendfileBody(read, fd, file_offset)
    return ReadBody(read)
