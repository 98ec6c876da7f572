# -*- test-case-name: speedy.test.test_handshake -*-
"""
The handshake that opens every chunkserver connection (``protocol.md``,
*Authentication*): both ends prove that they know the cluster secret,
without sending it, before the first request is read.

    client -> server   AUTH  client nonce (32 random bytes)
    server -> client   AUTH  server nonce (32) + server proof (32)
    client -> server   AUTH  client proof (32); no answer unless it is wrong

A proof is an HMAC-SHA256, keyed by the secret, of a label naming who
proves and both nonces: the labels differ, so a proof cannot be reflected
back to its sender, and the nonces are fresh on both sides, so an old
handshake cannot be replayed.  Proofs are compared in constant time.  The
client sends its first requests right behind its proof: the server reads
them only once the proof checked, and closes the connection otherwise.
"""

import hashlib
import hmac
import os

from speedy.errors import Unauthenticated

#: Bytes of a nonce and of a proof.
NONCE_SIZE = PROOF_SIZE = 32
#: Seconds a connection may take to finish its handshake.
HANDSHAKE_TIMEOUT = 10.0

_SERVER_LABEL = b"speedy chunkserver proof v1\0"
_CLIENT_LABEL = b"speedy client proof v1\0"


def new_nonce():
    """@return: a fresh nonce."""
    return os.urandom(NONCE_SIZE)


def _key(secret):
    return secret.encode("utf-8") if isinstance(secret, str) else bytes(secret)


def server_proof(secret, client_nonce, server_nonce):
    """@return: the server's proof that it knows C{secret}."""
    return hmac.new(_key(secret), _SERVER_LABEL + client_nonce + server_nonce,
                    hashlib.sha256).digest()


def client_proof(secret, client_nonce, server_nonce):
    """@return: the client's proof that it knows C{secret}."""
    return hmac.new(_key(secret), _CLIENT_LABEL + server_nonce + client_nonce,
                    hashlib.sha256).digest()


def server_challenge(secret, client_nonce):
    """
    The server's answer to a client's nonce.

    @return: (the answer's body, the proof the client must send back).
    """
    nonce = new_nonce()
    return (nonce + server_proof(secret, client_nonce, nonce),
            client_proof(secret, client_nonce, nonce))


def client_answer(secret, client_nonce, challenge):
    """
    Check the server's answer to C{client_nonce}.

    @return: the client's proof, to send.
    @raise Unauthenticated: the server does not know the secret.
    """
    challenge = bytes(challenge)
    if len(challenge) != NONCE_SIZE + PROOF_SIZE:
        raise Unauthenticated(f"a handshake answer is {NONCE_SIZE + PROOF_SIZE} bytes, "
                              f"not {len(challenge)}")
    nonce, proof = challenge[:NONCE_SIZE], challenge[NONCE_SIZE:]
    if not hmac.compare_digest(proof, server_proof(secret, client_nonce, nonce)):
        raise Unauthenticated("the chunkserver does not know the cluster secret")
    return client_proof(secret, client_nonce, nonce)


def same_proof(expected, given):
    """@return: True if C{given} is C{expected} (compared in constant time)."""
    return hmac.compare_digest(expected, bytes(given))
