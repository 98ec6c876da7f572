# -*- test-case-name: speedy.test.test_auth_tokens -*-
"""
Docker's token authentication: a registry that asks for a bearer token
(C{401} with C{WWW-Authenticate: Bearer realm=...,service=...,scope=...}),
a token service that issues JWTs to users, and the registry checking each
token's signature, issuer, audience, expiry and C{access} claims.

L{TokenVerifier} checks tokens (ES256 or RS256 only: C{alg: none} and
HMAC algorithms are refused, so a public key can never be used as an HMAC
secret).  L{TokenIssuer} is the embedded token service, a resource on the
imageserver: it logs users in with the htpasswd portal and grants each
requested C{repository:NAME:ACTIONS} scope the actions the access rules
allow.  An external issuer (Harbor's, Quay's, a corporate one) works with
the same verifier when it signs with a key whose public half is configured.

The configuration (C{--auth token:PATH}), TOML:

    realm = "https://registry.example.com/token"   # where clients get tokens
    service = "registry.example.com"              # the tokens' audience
    issuer = "speedy-token-issuer"                # the tokens' issuer
    public_key = "/etc/speedy/token.pub"          # PEM, verifies tokens

    [token_service]                               # optional: the embedded service
    private_key = "/etc/speedy/token.key"         # PEM, signs tokens
    htpasswd = "/etc/speedy/users"
    access = "/etc/speedy/access.toml"            # optional
    expiry = 300                                  # seconds a token lives
"""

import json
import os
import time
import tomllib

import jwt
from attrs import frozen
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key, load_pem_public_key
from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from speedy.auth.htpasswd import IUserName
from speedy.logs import LogBudget
from speedy.web.rest import request_id_of

log = Logger()

ALGORITHMS = ("ES256", "RS256")
#: The most scopes one token request may ask for.
MAX_SCOPES = 32


class TokenConfigError(ValueError):
    """The token configuration cannot be used."""


class BadToken(Exception):
    """A token that does not pass."""


@frozen
class TokenConfig:
    realm: str
    service: str
    issuer: str
    public_key: object
    private_key: object = None
    htpasswd: str | None = None
    access: str | None = None
    expiry: float = 300.0

    @classmethod
    def load(cls, path):
        """@raise TokenConfigError: unreadable, malformed or incomplete."""
        try:
            with open(path, "rb") as f:
                document = tomllib.load(f)
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise TokenConfigError(f"{path}: {e}")
        try:
            fields = {key: str(document[key]) for key in ("realm", "service", "issuer")}
            public = _read_key(document["public_key"], load_pem_public_key)
        except KeyError as e:
            raise TokenConfigError(f"{path}: {e.args[0]} is required")
        section = document.get("token_service")
        if section is None:
            return cls(public_key=public, **fields)
        try:
            private = _read_key(section["private_key"], lambda data: load_pem_private_key(data, None))
            return cls(public_key=public, private_key=private, htpasswd=section["htpasswd"],
                       access=section.get("access"), expiry=float(section.get("expiry", 300)),
                       **fields)
        except KeyError as e:
            raise TokenConfigError(f"{path}: [token_service] needs {e.args[0]}")


def _read_key(path, load):
    try:
        with open(path, "rb") as f:
            key = load(f.read())
    except (OSError, ValueError, TypeError) as e:
        raise TokenConfigError(f"{path}: not a PEM key ({e})")
    if not isinstance(key, (ec.EllipticCurvePublicKey, ec.EllipticCurvePrivateKey,
                            rsa.RSAPublicKey, rsa.RSAPrivateKey)):
        raise TokenConfigError(f"{path}: an EC (ES256) or RSA (RS256) key is needed")
    return key


def _algorithm(key):
    return "ES256" if isinstance(key, (ec.EllipticCurvePublicKey, ec.EllipticCurvePrivateKey)) \
        else "RS256"


@frozen
class Grant:
    """What a token grants: C{subject} (a user name, or "" for anonymous),
    {(type, name): actions}, and when it C{expires} (seconds since the
    epoch)."""

    subject: str
    access: dict
    expires: float = 0.0

    def allows(self, action, repository):
        actions = self.access.get(("repository", repository), ())
        return action in actions or "*" in actions

    def is_admin(self):
        return "*" in self.access.get(("registry", "admin"), ())

    def may_pull(self):
        if "*" in self.access.get(("registry", "catalog"), ()):
            return None
        return lambda repository: self.allows("pull", repository)


class TokenVerifier:
    """Checks bearer tokens against the configuration's key, issuer and
    service."""

    def __init__(self, config, clock=time):
        self._config = config
        self._clock = clock

    def verify(self, token):
        """@return: the L{Grant} of C{token} (bytes or str).
        @raise BadToken: it does not pass."""
        config = self._config
        try:
            claims = jwt.decode(
                token, config.public_key, algorithms=list(ALGORITHMS), audience=config.service,
                issuer=config.issuer, options={"require": ["exp", "iss", "aud"]}, leeway=30)
        except jwt.PyJWTError as e:
            raise BadToken(str(e))
        access = {}
        for entry in claims.get("access") or []:
            if not isinstance(entry, dict):
                raise BadToken("malformed access claim")
            key = (str(entry.get("type")), str(entry.get("name")))
            access[key] = tuple(str(a) for a in entry.get("actions") or ())
        return Grant(str(claims.get("sub") or ""), access, float(claims["exp"]))


def parse_scope(text):
    """@return: (type, name, actions) of C{repository:NAME:pull,push}, or
    None for what is not a scope."""
    kind, _, rest = text.partition(":")
    name, _, actions = rest.rpartition(":")
    if not kind or not name:
        return None
    return kind, name, tuple(a for a in actions.split(",") if a)


class TokenIssuer(Resource):
    """
    C{GET /token?service=S&scope=repository:NAME:pull,push&...}: logs the
    caller in (HTTP Basic, the htpasswd portal; anonymous without
    credentials) and answers C{{"token", "access_token", "expires_in",
    "issued_at"}}, granting each scope the actions the access rules allow
    (a scope of another service, or none allowed, is left out).  A refusal
    carries the request's id (C{X-Request-Id}, C{request_id} in the body)
    and is logged as the gate's are (L{speedy.auth.gate.log_refusal}).

    @param budget_clock: the C{IReactorTime} the refusal lines' budget
        keeps time with (None: C{time.monotonic}).
    """

    isLeaf = True

    def __init__(self, config, portal, policy, clock=time, budget_clock=None):
        super().__init__()
        self._config = config
        self._portal = portal
        self._policy = policy
        self._clock = clock
        self.refusals = {"challenge": LogBudget(budget_clock), "refused": LogBudget(budget_clock)}

    def render_GET(self, request):
        from speedy.auth.gate import log_refusal  # one module each way
        rid = request_id_of(request)
        d = Deferred.fromCoroutine(self._issue(request))

        def done(answer):
            status, body, user = answer
            if status >= 400:
                body["request_id"] = rid
                log_refusal(self.refusals, request, status, body["errors"][0]["message"],
                            user, rid)
            request.setResponseCode(status)
            request.setHeader(b"content-type", b"application/json")
            request.setHeader(b"cache-control", b"no-store")
            if status == 401:
                request.setHeader(b"www-authenticate",
                                  f'Basic realm="{self._config.service}"'.encode())
            request.write(json.dumps(body).encode("utf-8"))
            request.finish()

        def failed(failure):
            log.failure("issuing a token failed", failure)
            if not request.finished:
                request.setResponseCode(500)
                request.finish()

        d.addCallbacks(done, failed)
        return NOT_DONE_YET

    async def _issue(self, request):
        from speedy.auth.gate import Refused, basic_credentials  # one module each way
        config = self._config
        args = request.args
        service = (args.get(b"service") or [config.service.encode()])[0].decode("utf-8", "replace")
        if service != config.service:
            return 400, {"errors": [{"code": "DENIED", "message": f"unknown service {service}"}]}, None
        try:
            credentials = basic_credentials(request)
        except Refused as e:
            return 401, {"errors": [{"code": "UNAUTHORIZED", "message": str(e)}]}, None
        user = None
        if credentials is not None:
            try:
                _, user, _ = await self._portal.login(UsernamePassword(*credentials), None,
                                                      IUserName)
            except UnauthorizedLogin:
                return 401, {"errors": [{"code": "UNAUTHORIZED",
                                         "message": "unknown user or wrong password"}]}, \
                    credentials[0].decode("utf-8", "replace")
        access = []
        for raw in (args.get(b"scope") or [])[:MAX_SCOPES]:
            for text in raw.decode("utf-8", "replace").split(" "):
                scope = parse_scope(text)
                if scope is None:
                    continue
                kind, name, wanted = scope
                if kind == "repository":
                    if "*" in wanted:  # everything the rules allow
                        wanted = ("pull", "push", "delete")
                    granted = [a for a in wanted if a in ("pull", "push", "delete")
                               and self._policy.allows(user, a, name)]
                elif kind == "registry" and name in ("catalog", "admin"):
                    granted = ["*"] if self._policy.allows(user, "admin") else []
                else:
                    granted = []
                if granted:
                    access.append({"type": kind, "name": name, "actions": granted})
        now = int(self._clock.time())
        claims = {"iss": config.issuer, "sub": user or "", "aud": config.service,
                  "iat": now, "nbf": now - 5, "exp": now + int(config.expiry),
                  "jti": os.urandom(12).hex(), "access": access}
        token = jwt.encode(claims, config.private_key, algorithm=_algorithm(config.private_key))
        return 200, {"token": token, "access_token": token, "expires_in": int(config.expiry),
                     "issued_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))}, None
