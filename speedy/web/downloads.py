# -*- test-case-name: speedy.test.test_web_downloads -*-
"""
Streaming large downloads out of C{twisted.web}.

A download (a blob, a file) is written to its request in pieces of a
megabyte (L{speedy.imageserver.reader.WRITE_PIECE}); Twisted's TCP
transport hands at most C{SEND_LIMIT} (128 KiB) to each C{send} call, so
every piece costs eight syscalls and eight passes through C{doWrite}.  On a
pull, those sends were most of the imageserver's reactor thread.
C{SEND_LIMIT} is not public API: it is set through
L{speedy.zerocopy.internals}.
"""

from speedy.zerocopy.internals import set_send_size

#: Bytes a download's transport may hand to one C{send} call.
SEND_SIZE = 1 << 20


def send_in_large_pieces(request):
    """
    Let the transport under C{request}, which is about to stream a large
    body, send up to L{SEND_SIZE} bytes per C{send} call.  The limit stays
    for the rest of the connection (it only bounds one call's size).  A
    transport without C{SEND_LIMIT} is left as it is.
    """
    set_send_size(getattr(getattr(request, "channel", None), "transport", None), SEND_SIZE)
