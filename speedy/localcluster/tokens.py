# -*- test-case-name: speedy.test.test_localcluster_tokens -*-
"""
The token service of a local cluster run with C{speedy-cluster up --auth
token}: a signing key made at start and the imageservers' token
configuration, under C{VAR/secrets/} (0600, as the other secrets):

    VAR/secrets/token.key    the ES256 signing key (P-256, PKCS#8 PEM)
    VAR/secrets/token.pub    its public key: what imageservers verify with
    VAR/secrets/token.toml   the token configuration (docs/security.md):
                             realm = the first imageserver's /token,
                             [token_service] with the key, the users
                             (an htpasswd file) and the access rules
"""

import json
import os

#: The tokens' audience and issuer in a local cluster.
SERVICE = "speedy-local"
ISSUER = "speedy-cluster"


def write_token_service(directory, realm, htpasswd, access=None):
    """
    Make a signing key and the token configuration of a local cluster in
    C{directory} (made 0700 if missing; files 0600).

    @param realm: where clients get tokens: C{SCHEME://HOST:PORT/token} of
        the first imageserver.
    @param htpasswd: the users who may log in (a bcrypt htpasswd file).
    @param access: their allow rules (TOML), or None: every user everywhere.
    @return: the path of the configuration file.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    os.makedirs(directory, mode=0o700, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    private = os.path.join(directory, "token.key")
    public = os.path.join(directory, "token.pub")
    config = os.path.join(directory, "token.toml")
    _write(private, key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
    _write(public, key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    lines = [f"realm = {_quote(realm)}", f"service = {_quote(SERVICE)}",
             f"issuer = {_quote(ISSUER)}", f"public_key = {_quote(public)}", "",
             "[token_service]", f"private_key = {_quote(private)}",
             f"htpasswd = {_quote(os.path.abspath(htpasswd))}"]
    if access is not None:
        lines.append(f"access = {_quote(os.path.abspath(access))}")
    _write(config, ("\n".join(lines) + "\n").encode("utf-8"))
    return config


def _quote(text):
    return json.dumps(text)  # a TOML basic string is a JSON string


def _write(path, data):
    descriptor = os.open(path + ".new", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as f:
        f.write(data)
    os.chmod(path + ".new", 0o600)
    os.replace(path + ".new", path)
