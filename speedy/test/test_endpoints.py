"""
Tests for L{speedy.endpoints}: the C{reuseport:} endpoint string, its
socket handed to the reactor and released, and real processes' worth of
ports sharing one address on loopback.
"""

import os
import socket

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol, serverFromString
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IStreamServerEndpoint, IStreamServerEndpointStringParser
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactor, RaisingMemoryReactor
from twisted.plugin import getPlugins
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from speedy.endpoints import ReusePortEndpoint, ReusePortParser
from speedy.test.processes import free_port


def fd_is_open(fileno):
    try:
        os.fstat(fileno)
    except OSError:
        return False
    return True


def plain_bind(port, host="127.0.0.1", family=socket.AF_INET):
    """@return: True if a socket without C{SO_REUSEPORT} can listen on C{port}."""
    with socket.socket(family) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
            s.listen()
        except OSError:
            return False
    return True


class ParserTests(SynchronousTestCase):
    """The plugin and what C{reuseport:} strings parse to."""

    def test_plugin(self):
        [parser] = [p for p in getPlugins(IStreamServerEndpointStringParser) if p.prefix == "reuseport"]
        verifyObject(IStreamServerEndpointStringParser, parser)
        self.assertIsInstance(parser, ReusePortParser)

    def test_server_from_string(self):
        """C{serverFromString} makes a L{ReusePortEndpoint} that hands the
        reactor a listening IPv4 socket of its own, bound where the string
        says, and closes its copy."""
        memory = MemoryReactor()
        endpoint = serverFromString(memory, "reuseport:0:interface=127.0.0.1:backlog=7")
        verifyObject(IStreamServerEndpoint, endpoint)
        factory = Factory.forProtocol(Protocol)
        self.successResultOf(endpoint.listen(factory))
        [(fileno, family, adopted)] = memory.adoptedPorts
        self.assertEqual((family, adopted), (socket.AF_INET, factory))
        self.assertFalse(fd_is_open(fileno))

    def test_ipv6_interface(self):
        """An interface address with a colon is IPv6."""
        if not plain_bind(0, "::1", socket.AF_INET6):
            raise SkipTest("no IPv6 loopback here")
        memory = MemoryReactor()
        endpoint = serverFromString(memory, r"reuseport:0:interface=\:\:1")
        self.successResultOf(endpoint.listen(Factory.forProtocol(Protocol)))
        self.assertEqual(memory.adoptedPorts[0][1], socket.AF_INET6)

    def test_bad_strings(self):
        for string in ("reuseport:http", "reuseport:5000:backlog=many", "reuseport:"):
            self.assertRaises((ValueError, TypeError), serverFromString, MemoryReactor(), string)

    def test_reactor_refuses(self):
        """If the reactor cannot adopt the socket, C{listen} fails with its
        error and the socket is closed: the port is free again."""
        number = free_port()
        endpoint = ReusePortEndpoint(RaisingMemoryReactor(listenException=OSError("no")), number,
                                     interface="127.0.0.1")
        self.failureResultOf(endpoint.listen(Factory.forProtocol(Protocol)), OSError)
        self.assertTrue(plain_bind(number))

    def test_address_held_without_reuseport(self):
        """An address a socket without C{SO_REUSEPORT} listens on is a clean
        L{CannotListenError}, not a crash."""
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            number = taken.getsockname()[1]
            endpoint = ReusePortEndpoint(MemoryReactor(), number, interface="127.0.0.1")
            failure = self.failureResultOf(endpoint.listen(Factory.forProtocol(Protocol)),
                                           CannotListenError)
        self.assertEqual(failure.value.port, number)

    def test_unbindable_interface(self):
        endpoint = ReusePortEndpoint(MemoryReactor(), 0, interface="192.0.2.1")
        self.failureResultOf(endpoint.listen(Factory.forProtocol(Protocol)), CannotListenError)


class Greeting(Protocol):
    """Says its factory's name to each connection and hangs up."""

    def connectionMade(self):
        self.factory.served += 1
        self.transport.write(self.factory.name)
        self.transport.loseConnection()


class GreetingFactory(Factory):
    protocol = Greeting

    def __init__(self, name):
        self.name = name
        self.served = 0


class Listener(Protocol):
    """Collects what the server says; C{done} fires with it on hang-up."""

    def __init__(self):
        self.received = b""
        self.done = Deferred()

    def dataReceived(self, data):
        self.received += data

    def connectionLost(self, reason):
        self.done.callback(self.received)


class LoopbackTests(TestCase):
    """Real listening ports on 127.0.0.1, with the reactor."""

    def listen(self, port, name):
        """@return: a Deferred firing with the listening port, stopped at
        the end of the test."""
        endpoint = serverFromString(reactor, f"reuseport:{port}:interface=127.0.0.1")
        d = endpoint.listen(GreetingFactory(name))
        d.addCallback(lambda listening: self.addCleanup(listening.stopListening) or listening)
        return d

    async def greet(self, port):
        """@return: what a fresh connection to C{port} was told."""
        client = await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), Listener())
        return await client.done

    def test_two_ports_share_one_address(self):
        """
        Two listeners on the same address both accept: the kernel spreads
        connections across them (32 connections all landing on one of two
        listeners would happen once in 2**31 runs), and every connection is
        served by exactly one.
        """
        async def run():
            first = await self.listen(0, b"first")
            number = first.getHost().port
            second = await self.listen(number, b"second")
            self.assertEqual(second.getHost().port, number)
            answers = await gatherResults([Deferred.fromCoroutine(self.greet(number)) for _ in range(32)])
            self.assertEqual(set(answers), {b"first", b"second"})
            self.assertEqual(first.factory.served + second.factory.served, 32)

        return Deferred.fromCoroutine(run())

    def test_stop_listening_releases_the_address(self):
        """Once every listener stopped, nothing holds the port: a plain
        socket can listen on it (it could not while one still listened)."""
        async def run():
            first = await self.listen(0, b"first")
            number = first.getHost().port
            second = await self.listen(number, b"second")
            await first.stopListening()
            self.assertEqual(await self.greet(number), b"second")
            self.assertFalse(plain_bind(number))
            await second.stopListening()
            self.assertTrue(plain_bind(number))

        return Deferred.fromCoroutine(run())
