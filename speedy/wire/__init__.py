"""
The chunkserver wire protocol (C{protocol.md}): its codec and its clients.

    frames.py       the 16-byte header, opcodes, flags, body layouts, limits
    reader.py       the one frame reader both ends cut their streams with
    outbox.py       frames out, one after another, bodies streamed
    producers.py    frame bodies written as the transport drains
    growing.py      bodies sent on while their bytes still arrive
    connection.py   one client connection: requests tagged, answers matched
    client.py       the pooled, timed, reconnecting chunk client

The server end is L{speedy.chunkserver.protocol}; whatever moves bytes
without Python touching them (sendfile, in-place reads, splice) is in
L{speedy.zerocopy}.
"""
