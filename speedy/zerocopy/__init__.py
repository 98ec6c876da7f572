"""
Zero copy: chunk bytes moved by the kernel, never through Python memory,
and every use of Twisted internals that makes it possible.

    internals.py    the Twisted attributes that are not public API, each
                    behind a function, listed for the test that checks them
                    (also used by the wire's bodies and speedy.web)
    sendfile.py     chunkserver GET answers: C{sendfile} from the volume,
                    or C{sendmsg} from staged buffers
    inplace.py      chunkserver PUT bodies read with C{recv_into} straight
                    into the store's staging buffers
    pipes.py        pipes for C{splice}
    sources.py      dedicated sockets to chunkservers for spliced GETs
    spliceget.py    one GET answer read off such a socket
    relay.py        GET bodies spliced chunkserver socket -> pipe -> client

Each trick falls back to the ordinary path wherever its preconditions do
not hold (TLS, HTTP/2, other transports), and every daemon that uses one
takes C{--zero-copy auto|off}: C{off} takes the ordinary path always (to
compare, or to rule zero copy out when chasing a problem).

The splice relay (pipes, sources, spliceget, relay): chunk bytes relayed
with C{os.splice} from a chunkserver's socket into a pipe and from the pipe
into an HTTP client's socket, never through Python memory
(L{speedy.imageserver.splicereader} drives it).  Three parts, none of which
knows about imageservers:

  - L{SourcePool}: dedicated non-blocking TCP sockets to chunkservers, one
    GET answer at a time on each (a spliced body must be the only thing on
    its socket while it streams), kept idle per address for the next GET
    once an answer was read to its end; and a pool of empty pipes.
  - L{SpliceGet}: one GET on such a socket.  The request frame goes out as
    soon as a socket is at hand; L{SpliceGet.head} reads the 16-byte frame
    header and the 20-byte GET prefix with C{recv} (exactly those bytes,
    never more), turning an error frame into its L{speedy.errors} class;
    then the body is for L{SpliceRelay} to take.
  - L{SpliceRelay}: moves bodies through one pipe into the socket of a
    C{twisted.web} response, as the request's streaming producer.

Back-pressure comes for free: the source's fd is registered with the
reactor (C{addReader}) only while the pipe has room, so a client that does
not read fills the pipe, the relay stops reading the chunkserver's socket,
and TCP slows the chunkserver down.
"""

#: The values of the daemons' C{--zero-copy} option.
ZERO_COPY_MODES = ("auto", "off")
