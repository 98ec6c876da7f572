# -*- test-case-name: speedy.test.test_inplace,speedy.test.test_zerocopy_tls -*-
"""
Bytes read from a socket straight into the buffer they belong in.

Twisted's TCP transport reads with C{socket.recv}, into a new bytes object
per read, which the chunkserver then copied into the staging buffer its
direct write goes out from: a copy and a fresh allocation per read of
every PUT body byte.  L{read_in_place} gives a plain TCP transport a
C{doRead} that asks first where the next bytes go (C{space}, a writable
memoryview or None) and, given a place, reads into it with
C{socket.recv_into} and reports the count (C{received}); else it reads as
Twisted does.  Like L{speedy.zerocopy.sendfile}, this uses attributes of
L{twisted.internet.tcp.Connection} that are not public API
(L{speedy.zerocopy.internals}; L{can_read_in_place} checks for them); under TLS the bytes must be
decrypted first, so TLS transports keep the ordinary read.
"""

import errno

from twisted.internet import main

from speedy.zerocopy.internals import (
    can_take_over_reads, own_reads, raw_socket, take_over_reads)

_AGAIN = (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR)


def can_read_in_place(transport):
    """@return: True if L{read_in_place} can take over C{transport}'s reads."""
    return can_take_over_reads(transport)


class InPlaceReader:
    """
    The C{doRead} of one transport: into C{space()} when it gives a place,
    else the transport's own.

    @ivar reads_in_place: reads that went straight into a given place.
    """

    def __init__(self, transport, space, received):
        self._socket = raw_socket(transport)
        self._read = own_reads(transport)
        self._space = space
        self._received = received
        self.reads_in_place = 0

    def doRead(self):
        space = self._space()
        if space is None:
            return self._read()
        try:
            count = self._socket.recv_into(space)
        except OSError as e:
            if e.errno in _AGAIN:
                return None
            return main.CONNECTION_LOST
        if not count:
            return main.CONNECTION_DONE
        self.reads_in_place += 1
        self._received(count)
        return None


def read_in_place(transport, space, received):
    """
    Make C{transport} (L{can_read_in_place}) read into the place
    C{space()} returns whenever it returns one, then call
    C{received(count)}; its protocol's C{dataReceived} gets the rest.

    @return: the L{InPlaceReader} now doing its reads.
    """
    reader = InPlaceReader(transport, space, received)
    take_over_reads(transport, reader.doRead)
    return reader
