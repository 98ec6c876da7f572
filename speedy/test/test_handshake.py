"""
Tests for the handshake that opens every chunkserver connection
(L{speedy.wire.handshake}, ``protocol.md`` *Authentication*): the
chunkserver's side fed through a L{StringTransport}, both ends over
in-memory connections, and the spliced-GET sockets over loopback.
"""

import os

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import serverFromString
from twisted.internet.task import Clock
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel, capturedLogs
from twisted.trial.unittest import SynchronousTestCase, TestCase

from speedy.chunkserver.protocol import ChunkServerFactory
from speedy.wire.client import chain_prefix
from speedy.errors import BadRequest, ConnectionFailed, Unauthenticated
from speedy.testing import MemoryChunkStore
from speedy.test.test_chunk_client import ADDRESS, ClientTestsMixin
from speedy.test.test_chunkserver_protocol import error_code, parse_frames, put_request
from speedy.wire.client import ChunkClient, load_authority
from speedy.wire.frames import (
    ALL_VOLUMES, COMPACT_REQUEST, FILE_ID, FLAG_ERROR, FLAG_RESPONSE, GET_REQUEST, OP_AUTH,
    OP_CHAIN_PUT, OP_COMPACT, OP_DELETE, OP_GET, OP_LIST, OP_PING, OP_PUT, OP_STAT, OP_STATUS,
    OP_VERIFY,
    OPCODES, frame)
from speedy.wire.handshake import (
    HANDSHAKE_TIMEOUT, NONCE_SIZE, client_answer, client_proof, new_nonce, server_proof)
from speedy.zerocopy.sources import SourcePool

SECRET = "a cluster secret of some length"


class ProofTests(SynchronousTestCase):

    def test_proofs_need_the_secret_and_both_nonces(self):
        a, b = new_nonce(), new_nonce()
        self.assertEqual(len(a), NONCE_SIZE)
        self.assertNotEqual(a, b)
        proof = server_proof(SECRET, a, b)
        self.assertEqual(proof, server_proof(SECRET, a, b))
        for other in [server_proof("another secret entirely", a, b), server_proof(SECRET, b, a),
                      server_proof(SECRET, a, new_nonce())]:
            self.assertNotEqual(proof, other)

    def test_no_reflection(self):
        """The server's proof is not the client's: a peer cannot send a
        proof back to the end that made it."""
        a, b = new_nonce(), new_nonce()
        self.assertNotEqual(server_proof(SECRET, a, b), client_proof(SECRET, a, b))

    def test_client_checks_the_server(self):
        nonce, theirs = new_nonce(), new_nonce()
        good = theirs + server_proof(SECRET, nonce, theirs)
        self.assertEqual(client_answer(SECRET, nonce, good), client_proof(SECRET, nonce, theirs))
        forged = theirs + server_proof("not the cluster secret", nonce, theirs)
        self.assertRaises(Unauthenticated, client_answer, SECRET, nonce, forged)
        self.assertRaises(Unauthenticated, client_answer, SECRET, nonce, good[:40])


class ServerTests(SynchronousTestCase):
    """The chunkserver's side, byte by byte."""

    def setUp(self):
        self.clock = Clock()
        self.store = MemoryChunkStore()
        self.factory = ChunkServerFactory(self.clock, self.store, secret=SECRET)
        self.protocol = self.factory.buildProtocol(None)
        self.transport = StringTransport()
        self.protocol.makeConnection(self.transport)

    def answers(self):
        frames, rest = parse_frames(self.transport.value())
        self.assertEqual(rest, b"")
        self.transport.clear()
        return frames

    def challenge(self):
        """Send a nonce; @return: (it, the server's answer body)."""
        nonce = new_nonce()
        self.protocol.dataReceived(frame(OP_AUTH, 7, nonce))
        [(header, body)] = self.answers()
        self.assertEqual((header.opcode, header.request_id, header.flags),
                         (OP_AUTH, 7, FLAG_RESPONSE))
        return nonce, body

    def assert_refused(self):
        [(header, body)] = self.answers()
        self.assertEqual(header.flags, FLAG_RESPONSE | FLAG_ERROR)
        self.assertEqual(error_code(body), Unauthenticated.code)
        self.assertTrue(self.transport.disconnecting)
        self.assertEqual(self.factory.counters["handshake_failures"], 1)
        self.assertEqual(self.factory.counters["requests"], 0)

    def test_handshake_then_requests(self):
        """A client that proves the secret, with requests right behind
        its proof, gets them answered."""
        nonce, challenge = self.challenge()
        proof = client_answer(SECRET, nonce, challenge)
        self.protocol.dataReceived(frame(OP_AUTH, 0, proof) + frame(OP_PING, 1)
                                   + put_request(2, 5, b"data"))
        frames = self.answers()
        self.assertEqual([(h.opcode, h.request_id, h.flags) for h, _ in frames],
                         [(OP_PING, 1, FLAG_RESPONSE), (OP_PUT, 2, FLAG_RESPONSE)])
        self.assertEqual(self.store.contents(5), b"data")
        self.assertFalse(self.transport.disconnecting)
        self.clock.advance(HANDSHAKE_TIMEOUT * 2)
        self.assertFalse(self.transport.disconnecting)

    def test_request_before_the_handshake(self):
        """Any request first is refused and the connection closed: the PUT
        stores nothing, the GET reads nothing."""
        self.store.add(1, b"secret bytes")
        self.protocol.dataReceived(put_request(1, 9, b"intruder") + frame(
            OP_GET, 2, GET_REQUEST.pack(1, 0, 12)))
        self.assert_refused()
        self.assertNotIn(9, self.store.file_ids())

    def test_wrong_proof(self):
        """A client that does not know the secret is closed out, and the
        requests it sent behind its proof are never read."""
        nonce, challenge = self.challenge()
        proof = client_answer("a guessed secret, not the one", nonce,
                              challenge[:NONCE_SIZE] + server_proof(
                                  "a guessed secret, not the one", nonce, challenge[:NONCE_SIZE]))
        self.protocol.dataReceived(frame(OP_AUTH, 0, proof) + put_request(2, 5, b"data"))
        self.assert_refused()
        self.assertNotIn(5, self.store.file_ids())

    def test_replayed_proof(self):
        """A proof from another connection's handshake does not pass: the
        server's nonce is new on every connection."""
        nonce, challenge = self.challenge()
        old_proof = client_answer(SECRET, nonce, challenge)
        other = self.factory.buildProtocol(None)
        transport = StringTransport()
        other.makeConnection(transport)
        other.dataReceived(frame(OP_AUTH, 1, nonce))
        other.dataReceived(frame(OP_AUTH, 0, old_proof) + frame(OP_PING, 2))
        [_, (header, body)] = parse_frames(transport.value())[0]
        self.assertEqual(error_code(body), Unauthenticated.code)
        self.assertTrue(transport.disconnecting)

    def test_every_opcode_refused_before_the_handshake(self):
        """The chunkserver's row of the authorization matrix: each opcode,
        from a peer with no handshake and from one with a wrong secret, is
        refused before it touches the store; after a right handshake each
        is served."""
        self.store.add(1, b"stored bytes")
        requests = {
            OP_PUT: put_request(3, 2, b"new"), OP_GET: frame(OP_GET, 3, GET_REQUEST.pack(1, 0, 5)),
            OP_STAT: frame(OP_STAT, 3, FILE_ID.pack(1)), OP_PING: frame(OP_PING, 3),
            OP_STATUS: frame(OP_STATUS, 3), OP_LIST: frame(OP_LIST, 3),
            OP_COMPACT: frame(OP_COMPACT, 3, COMPACT_REQUEST.pack(ALL_VOLUMES)),
            OP_VERIFY: frame(OP_VERIFY, 3, FILE_ID.pack(1)),
            OP_DELETE: frame(OP_DELETE, 3, FILE_ID.pack(1)),
            # the last member of a chain: it stores and forwards to no one
            OP_CHAIN_PUT: frame(OP_CHAIN_PUT, 3, chain_prefix(2, [], 0) + b"new"),
        }
        self.assertEqual(set(requests) | {OP_AUTH}, set(OPCODES))
        for opcode, request in requests.items():
            for secret in (None, "a guessed secret, long enough"):
                protocol = self.factory.buildProtocol(None)
                transport = StringTransport()
                protocol.makeConnection(transport)
                if secret is not None:
                    nonce = new_nonce()
                    protocol.dataReceived(frame(OP_AUTH, 1, nonce))
                    [(_, challenge)] = parse_frames(transport.value())[0]
                    transport.clear()
                    protocol.dataReceived(frame(OP_AUTH, 0, client_proof(
                        secret, nonce, challenge[:NONCE_SIZE])))
                protocol.dataReceived(request)
                [(header, body)] = parse_frames(transport.value())[0]
                self.assertEqual((header.opcode, error_code(body)), (OP_AUTH, Unauthenticated.code),
                                 (OPCODES[opcode], secret))
                self.assertTrue(transport.disconnecting)
            self.assertEqual(self.store.contents(1), b"stored bytes")
            self.assertIsNone(self.store.contents(2))
        for opcode, request in requests.items():
            protocol = self.factory.buildProtocol(None)
            transport = StringTransport()
            protocol.makeConnection(transport)
            nonce = new_nonce()
            protocol.dataReceived(frame(OP_AUTH, 1, nonce))
            [(_, challenge)] = parse_frames(transport.value())[0]
            transport.clear()
            protocol.dataReceived(frame(OP_AUTH, 0, client_answer(SECRET, nonce, challenge))
                                  + request)
            while transport.producer is not None:  # a streamed answer (LIST)
                transport.producer.resumeProducing()
            frames, _ = parse_frames(transport.value())
            self.assertEqual((frames[0][0].opcode, frames[0][0].flags & FLAG_ERROR), (opcode, 0),
                             OPCODES[opcode])
        self.assertEqual(self.factory.counters["handshake_failures"], 2 * len(requests))

    def test_random_bytes(self):
        self.protocol.dataReceived(os.urandom(4096))
        self.assertTrue(self.transport.disconnecting)
        self.assertEqual(list(self.store.file_ids()), [])

    def test_slow_handshake(self):
        """A connection that has not finished its handshake in time is
        closed."""
        self.clock.advance(HANDSHAKE_TIMEOUT - 0.1)
        self.assertFalse(self.transport.disconnecting)
        self.clock.advance(0.2)
        self.assert_refused()

    def test_second_handshake_refused(self):
        nonce, challenge = self.challenge()
        self.protocol.dataReceived(frame(OP_AUTH, 0, client_answer(SECRET, nonce, challenge)))
        self.protocol.dataReceived(frame(OP_AUTH, 3, new_nonce()))
        [(header, body)] = self.answers()
        self.assertEqual(error_code(body), BadRequest.code)

    def test_no_secret_no_handshake(self):
        """A server without a secret (in tests of other things) answers
        requests at once, and refuses a handshake as a bad request."""
        factory = ChunkServerFactory(self.clock, self.store)
        protocol = factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        protocol.dataReceived(frame(OP_AUTH, 1, new_nonce()) + frame(OP_PING, 2))
        frames, _ = parse_frames(transport.value())
        self.assertEqual(error_code(frames[0][1]), BadRequest.code)
        self.assertEqual((frames[1][0].opcode, frames[1][0].flags), (OP_PING, FLAG_RESPONSE))


class RefusalLogTests(SynchronousTestCase):
    """
    Bad input on a chunkserver port (random bytes, a request before the
    handshake, a wrong proof, silence): each connection is refused, closed,
    counted and logged with the peer's address and the reason, within the
    listener's budget of lines; nothing is stored; the server goes on
    serving the next client.
    """

    def setUp(self):
        self.clock = Clock()
        self.store = MemoryChunkStore()
        self.factory = ChunkServerFactory(self.clock, self.store, secret=SECRET)

    def connect(self, port=40000):
        protocol = self.factory.buildProtocol(None)
        transport = StringTransport(peerAddress=IPv4Address("TCP", "192.0.2.7", port))
        protocol.makeConnection(transport)
        return protocol, transport

    def refusals(self, events):
        return [e for e in events if e.get("log_format", "").startswith("refused connection")]

    def test_random_bytes_logged(self):
        """A handshake of random bytes: answered BAD_REQUEST, closed, counted
        as a failed handshake, and one warning naming the peer and why."""
        protocol, transport = self.connect()
        with capturedLogs() as events:
            protocol.dataReceived(b"\x16\x03\x01" + os.urandom(4093))  # a TLS hello, say
        [(header, body)] = parse_frames(transport.value())[0]
        self.assertEqual(error_code(body), BadRequest.code)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.factory.counters["handshake_failures"], 1)
        [event] = self.refusals(events)
        self.assertEqual(event["log_level"], LogLevel.warn)
        self.assertEqual(event["peer"].host, "192.0.2.7")
        self.assertIn("not a frame", event["why"])
        self.assertEqual(list(self.store.file_ids()), [])

    def test_each_refusal_logged_with_reason(self):
        """A request first, a wrong proof, no handshake in time: each a
        warning with its own reason."""
        with capturedLogs() as events:
            first, _ = self.connect(1)
            first.dataReceived(put_request(1, 9, b"intruder"))
            second, transport = self.connect(2)
            nonce = new_nonce()
            second.dataReceived(frame(OP_AUTH, 1, nonce))
            second.dataReceived(frame(OP_AUTH, 0, b"\0" * 32))
            self.connect(3)
            self.clock.advance(HANDSHAKE_TIMEOUT + 1)
        whys = [(e["peer"].port, e["why"]) for e in self.refusals(events)]
        self.assertEqual([port for port, _ in whys], [1, 2, 3])
        self.assertIn("PUT before the handshake", whys[0][1])
        self.assertIn("wrong proof", whys[1][1])
        self.assertIn("no handshake within", whys[2][1])
        self.assertEqual(self.factory.counters["handshake_failures"], 3)
        self.assertIsNone(self.store.contents(9))

    def test_flood_is_rate_limited(self):
        """A flood of garbage connections: every one refused and counted,
        but at most the budget's lines per interval are logged; the next
        line after it says how many were held back.  Then a client with
        the secret is served as ever."""
        burst = self.factory.refusals.burst
        with capturedLogs() as events:
            for port in range(1000):
                protocol, transport = self.connect(port)
                protocol.dataReceived(os.urandom(64))
                self.assertTrue(transport.disconnecting)
        self.assertEqual(self.factory.counters["handshake_failures"], 1000)
        self.assertEqual(len(self.refusals(events)), burst)
        self.clock.advance(self.factory.refusals.interval)
        with capturedLogs() as events:
            protocol, _ = self.connect()
            protocol.dataReceived(os.urandom(64))
        [event] = self.refusals(events)
        self.assertEqual(event["held_back"], 1000 - burst)
        self.assertIn(f"{1000 - burst} more like it not logged", event["log_format"].format(**event))
        protocol, transport = self.connect()
        nonce = new_nonce()
        protocol.dataReceived(frame(OP_AUTH, 1, nonce))
        [(_, challenge)] = parse_frames(transport.value())[0]
        transport.clear()
        protocol.dataReceived(frame(OP_AUTH, 0, client_answer(SECRET, nonce, challenge))
                              + put_request(2, 5, b"data"))
        [(header, _)] = parse_frames(transport.value())[0]
        self.assertEqual((header.opcode, header.flags), (OP_PUT, FLAG_RESPONSE))
        self.assertEqual(self.store.contents(5), b"data")


class ClientTests(ClientTestsMixin, SynchronousTestCase):
    """Both ends, over in-memory connections."""

    def serve_with(self, server_secret, client_secret):
        self.serve()
        self.factory.secret = server_secret
        self.client.secret = client_secret

    def test_same_secret(self):
        self.serve_with(SECRET, SECRET)
        self.answer(self.client.put(ADDRESS, 1, b"x" * 1000))
        self.assertEqual(self.answer(self.client.get(ADDRESS, 1)), b"x" * 1000)
        self.assertEqual(self.factory.counters["handshake_failures"], 0)

    def test_client_with_another_secret(self):
        """The chunkserver's proof does not check out: the client fails the
        request as if the server were unreachable, and sends no proof."""
        self.serve_with(SECRET, "another secret, also long")
        error = self.fails(self.client.put(ADDRESS, 1, b"x"), ConnectionFailed)
        self.assertIsInstance(error, Unauthenticated)
        self.assertEqual(list(self.store.file_ids()), [])
        self.flushLoggedErrors()

    def test_client_without_secret(self):
        self.serve_with(SECRET, None)
        self.fails(self.client.put(ADDRESS, 1, b"x"), ConnectionFailed)
        self.assertEqual(list(self.store.file_ids()), [])
        self.assertEqual(self.factory.counters["handshake_failures"], 1)

    def test_server_without_secret(self):
        """A chunkserver that proves nothing is not trusted."""
        self.serve_with(None, SECRET)
        self.assertIsInstance(self.fails(self.client.ping(ADDRESS), ConnectionFailed),
                              Unauthenticated)
        self.flushLoggedErrors()


class SplicedSocketTests(TestCase):
    """The sockets of spliced GETs, over loopback."""

    def listen(self, secret):
        self.store = MemoryChunkStore()
        self.factory = ChunkServerFactory(reactor, self.store, secret=secret)
        port = reactor.listenTCP(0, self.factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return f"127.0.0.1:{port.getHost().port}"

    def pool(self, secret):
        pool = SourcePool(reactor, connect_timeout=2.0, secret=secret)
        self.addCleanup(pool.close)
        return pool

    @inlineCallbacks
    def test_same_secret(self):
        address = self.listen(SECRET)
        source = yield Deferred.fromCoroutine(self.pool(SECRET)._connect(address))
        self.addCleanup(source.close)
        self.assertFalse(source.closed)
        self.assertEqual(self.factory.counters["handshake_failures"], 0)

    @inlineCallbacks
    def test_another_secret(self):
        address = self.listen(SECRET)
        yield self.assertFailure(Deferred.fromCoroutine(
            self.pool("another secret, also long")._connect(address)), Unauthenticated)

    @inlineCallbacks
    def test_no_secret(self):
        """Without a secret the socket is refused at its first GET."""
        address = self.listen(SECRET)
        pool = self.pool(None)
        get = pool.get(address, 1, 0, 10)
        self.addCleanup(get.close)
        yield self.assertFailure(get.head(), ConnectionFailed, BadRequest, Unauthenticated)


def make_authority(directory, ip="127.0.0.1"):
    """
    Make a throwaway certificate authority and a certificate it signed for
    C{ip}, as PEM files in C{directory}.

    @return: (the authority's PEM path, the server's key-and-certificate PEM
        path, as an C{ssl:} endpoint's C{privateKey}/C{certKey} takes it).
    """
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test authority")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ip)]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    ca_path = os.path.join(directory, "ca.pem")
    server_path = os.path.join(directory, "server.pem")
    with open(ca_path, "wb") as f:
        f.write(ca.public_bytes(serialization.Encoding.PEM))
    with open(server_path, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    return ca_path, server_path


class TLSTests(TestCase):
    """Chunkservers listening with TLS, over loopback."""

    def setUp(self):
        directory = self.mktemp()
        os.makedirs(directory)
        self.ca_path, server_path = make_authority(directory)
        self.store = MemoryChunkStore()
        self.factory = ChunkServerFactory(reactor, self.store, secret=SECRET)
        endpoint = serverFromString(
            reactor, f"ssl:0:interface=127.0.0.1:privateKey={server_path}:certKey={server_path}")
        d = endpoint.listen(self.factory)

        def listening(port):
            self.addCleanup(port.stopListening)
            self.address = f"127.0.0.1:{port.getHost().port}"
        return d.addCallback(listening)

    def client(self, tls):
        client = ChunkClient(reactor, connect_timeout=5.0, secret=SECRET, tls=tls)
        self.addCleanup(client.close)
        return client

    @inlineCallbacks
    def test_round_trip(self):
        """A client given the authority writes to and reads from a TLS
        chunkserver, the handshake inside TLS."""
        client = self.client(load_authority(self.ca_path))
        data = os.urandom(300_000)
        yield client.put(self.address, 1, data)
        self.assertEqual((yield client.get(self.address, 1)), data)
        self.assertEqual(self.factory.counters["handshake_failures"], 0)

    @inlineCallbacks
    def test_other_authority(self):
        """A chunkserver whose certificate another authority signed is not
        trusted."""
        directory = self.mktemp()
        os.makedirs(directory)
        other_ca, _ = make_authority(directory)
        client = self.client(load_authority(other_ca))
        yield self.assertFailure(client.put(self.address, 1, b"x"), ConnectionFailed)
        self.assertEqual(list(self.store.file_ids()), [])

    @inlineCallbacks
    def test_plain_client(self):
        """A client speaking plain TCP to a TLS chunkserver fails cleanly."""
        client = self.client(None)
        client.connect_timeout = 2.0
        yield self.assertFailure(client.ping(self.address), ConnectionFailed)

    def test_bad_authority_file(self):
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("not a certificate")
        self.assertRaises(ValueError, load_authority, path)
        self.assertRaises(ValueError, load_authority, self.mktemp())
