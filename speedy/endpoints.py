# -*- test-case-name: speedy.test.test_endpoints -*-
"""
A TCP server endpoint that several processes can listen on at once: the
C{reuseport:} endpoint string, which takes the same arguments as C{tcp:}::

    reuseport:5000:interface=127.0.0.1:backlog=128

Its socket is bound with C{SO_REUSEADDR} and C{SO_REUSEPORT}, so every
process of the same user that listens on the same address this way joins
one group, and the kernel (Linux 3.9 and later) spreads the incoming
connections across the group by a hash of each connection's addresses.  A
connection stays with the process that accepted it, so each process must be
able to serve any request: the imageserver can, because its upload sessions
live in the metadata store.

A process that stops listening takes with it the connections still waiting
in its own accept queue (they are reset), so stop a worker only when the
others may lose a handshake or two, or all at once.

With C{certKey=PEM} and C{privateKey=PEM} (as for C{ssl:}) the listener
speaks TLS with that certificate (the certificate file may hold its chain
after it)::

    reuseport:5000:interface=127.0.0.1:certKey=server.pem:privateKey=server.key

Interface addresses with a C{:} are IPv6 (C{interface=\\:\\:1}, escaped as
in any endpoint string); the default interface is every IPv4 address, as
with C{tcp:}.
"""

import socket

from twisted.internet.defer import fail, succeed
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IStreamServerEndpoint, IStreamServerEndpointStringParser
from twisted.internet.ssl import PrivateCertificate
from twisted.plugin import IPlugin
from twisted.protocols.tls import TLSMemoryBIOFactory
from zope.interface import implementer


@implementer(IStreamServerEndpoint)
class ReusePortEndpoint:
    """
    Listens on a TCP port shared (C{SO_REUSEPORT}) with other processes.

    The socket is made, bound and put in listening mode here, then handed to
    C{reactor.adoptStreamPort}, which takes a duplicate of it; the original
    is closed at once, so the listening port's C{stopListening} really
    releases the address.
    """

    def __init__(self, reactor, port, backlog=50, interface=""):
        """
        @param reactor: an L{twisted.internet.interfaces.IReactorSocket}.
        @param port: the TCP port number (0: one the kernel picks).
        @param backlog: the length of this process's accept queue.
        @param interface: the address to bind to; C{""} is every IPv4
            address, an address with a C{:} is IPv6.
        """
        self._reactor = reactor
        self._port = port
        self._backlog = backlog
        self._interface = interface

    @property
    def _family(self):
        return socket.AF_INET6 if ":" in self._interface else socket.AF_INET

    def _listening_socket(self):
        """
        @return: a non-blocking socket bound with C{SO_REUSEADDR} and
            C{SO_REUSEPORT} and listening.
        @raise CannotListenError: the address is taken by a socket without
            C{SO_REUSEPORT} (or another user's), or cannot be bound.
        """
        sock = socket.socket(self._family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((self._interface, self._port))
            sock.listen(self._backlog)
            sock.setblocking(False)
        except OSError as e:
            sock.close()
            raise CannotListenError(self._interface, self._port, e)
        return sock

    def listen(self, protocolFactory):
        """
        @return: a Deferred firing with the
            L{twisted.internet.interfaces.IListeningPort}, or failing with
            L{CannotListenError} (or with the reactor's error if it cannot
            adopt the socket, which is closed either way).
        """
        try:
            sock = self._listening_socket()
        except CannotListenError:
            return fail()
        with sock:
            try:
                port = self._reactor.adoptStreamPort(sock.fileno(), self._family, protocolFactory)
            except Exception:
                return fail()
        return succeed(port)


@implementer(IStreamServerEndpoint)
class TLSServerEndpoint:
    """Another server endpoint's connections, spoken over TLS with
    C{options} (an C{IOpenSSLServerConnectionCreator})."""

    def __init__(self, inner, options):
        self._inner = inner
        self._options = options

    def listen(self, protocolFactory):
        return self._inner.listen(TLSMemoryBIOFactory(self._options, False, protocolFactory))


def tls_server_options(certificate, key=None):
    """
    @param certificate: a PEM file with the server's certificate (and its
        chain after it, and its key if C{key} is None).
    @param key: a PEM file with its private key.
    @return: the TLS options of a server with them.
    @raise ValueError: a file cannot be read or does not hold them.
    """
    try:
        with open(certificate, "rb") as f:
            pem = f.read()
        if key is not None:
            with open(key, "rb") as f:
                pem += b"\n" + f.read()
        return PrivateCertificate.loadPEM(pem).options()
    except Exception as e:
        raise ValueError(f"TLS certificate {certificate} / key {key}: {e}")


@implementer(IPlugin, IStreamServerEndpointStringParser)
class ReusePortParser:
    """
    Parses C{reuseport:PORT[:interface=ADDRESS][:backlog=N]} into a
    L{ReusePortEndpoint}: the arguments of C{tcp:}.
    """

    prefix = "reuseport"

    def parseStreamServer(self, reactor, *args, **kwargs):
        """
        @return: a L{ReusePortEndpoint}.
        @raise ValueError: C{port} or C{backlog} is not a number.
        @raise TypeError: no port, or an unknown argument.
        """
        # The interface's signature is (reactor, *args, **kwargs): name the
        # arguments one call further down.
        return self._endpoint(reactor, *args, **kwargs)

    def _endpoint(self, reactor, port, backlog=50, interface="", certKey=None, privateKey=None):
        endpoint = ReusePortEndpoint(reactor, int(port), int(backlog), interface)
        if certKey is None and privateKey is None:
            return endpoint
        return TLSServerEndpoint(endpoint, tls_server_options(certKey or privateKey, privateKey))
