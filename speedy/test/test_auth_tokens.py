"""
Tests for L{speedy.auth.tokens} and L{speedy.auth.gate.TokenGate}: tokens
checked for signature, issuer, audience, expiry and access claims; the
embedded token service; the gate's answers and challenges.
"""

import base64
import hashlib
import hmac
import json
import time

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest

from speedy.auth.access import AccessPolicy
from speedy.auth.gate import TokenGate
from speedy.auth.htpasswd import HtpasswdChecker, users_portal
from speedy.auth.tokens import BadToken, TokenConfig, TokenIssuer, TokenVerifier, parse_scope
from speedy.test.test_auth import POLICY, FakeReactor, SyncPool, entry


def pem_pair(directory):
    key = ec.generate_private_key(ec.SECP256R1())
    private = f"{directory}/token.key"
    public = f"{directory}/token.pub"
    with open(private, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    with open(public, "wb") as f:
        f.write(key.public_key().public_bytes(serialization.Encoding.PEM,
                                              serialization.PublicFormat.SubjectPublicKeyInfo))
    return key, private, public


def write_config(case, realm="http://127.0.0.1:5000/token"):
    """@return: (the TokenConfig, the signing key, the directory)."""
    directory = case.mktemp()
    import os
    os.makedirs(directory)
    key, private, public = pem_pair(directory)
    with open(f"{directory}/users", "w") as f:
        f.write(entry("alice", "alice-password") + entry("bob", "bob-password")
                + entry("ops", "ops-password"))
    with open(f"{directory}/access.toml", "w") as f:
        f.write(POLICY)
    path = f"{directory}/token.toml"
    with open(path, "w") as f:
        f.write(f'realm = "{realm}"\nservice = "speedy-test"\nissuer = "speedy-test-issuer"\n'
                f'public_key = "{public}"\n\n[token_service]\nprivate_key = "{private}"\n'
                f'htpasswd = "{directory}/users"\naccess = "{directory}/access.toml"\n'
                f'expiry = 300\n')
    return TokenConfig.load(path), key, directory


def token(key, algorithm="ES256", **claims):
    now = int(time.time())
    body = {"iss": "speedy-test-issuer", "aud": "speedy-test", "sub": "alice", "iat": now,
            "exp": now + 300,
            "access": [{"type": "repository", "name": "alice/app", "actions": ["pull", "push"]}]}
    body.update(claims)
    return jwt.encode(body, key, algorithm=algorithm)


def hs256(claims, secret):
    """A token signed with HMAC-SHA256 under C{secret}: the algorithm
    confusion attack, when C{secret} is the verifier's public key."""
    def part(value):
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=")
    signing = part({"alg": "HS256", "typ": "JWT"}) + b"." + part(claims)
    mac = hmac.new(secret, signing, hashlib.sha256).digest()
    return (signing + b"." + base64.urlsafe_b64encode(mac).rstrip(b"=")).decode()


class VerifierTests(SynchronousTestCase):

    def setUp(self):
        self.config, self.key, _ = write_config(self)
        self.verifier = TokenVerifier(self.config)

    def test_good_token(self):
        grant = self.verifier.verify(token(self.key))
        self.assertEqual(grant.subject, "alice")
        self.assertTrue(grant.allows("push", "alice/app"))
        self.assertFalse(grant.allows("push", "alice/other"))
        self.assertFalse(grant.allows("delete", "alice/app"))

    def test_bad_tokens(self):
        """Expired, another audience or issuer, forged, alg none, an HMAC
        signed with the public key, garbage: all refused."""
        other = ec.generate_private_key(ec.SECP256R1())
        public_pem = self.config.public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        now = int(time.time())
        unsigned = (base64.urlsafe_b64encode(json.dumps({"alg": "none", "typ": "JWT"}).encode())
                    .rstrip(b"=") + b"." + base64.urlsafe_b64encode(json.dumps(
                        {"iss": "speedy-test-issuer", "aud": "speedy-test", "exp": now + 300,
                         "access": []}).encode()).rstrip(b"=") + b".")
        bad = {
            "expired": token(self.key, exp=now - 3600),
            "audience": token(self.key, aud="another-registry"),
            "issuer": token(self.key, iss="someone-else"),
            "forged": token(other),
            "alg none": unsigned.decode(),
            "hmac with the public key": hs256({"iss": "speedy-test-issuer", "aud": "speedy-test",
                                               "exp": now + 300, "access": []}, public_pem),
            "garbage": "not.a.token",
            "no expiry": jwt.encode({"iss": "speedy-test-issuer", "aud": "speedy-test"},
                                    self.key, algorithm="ES256"),
        }
        for name, value in bad.items():
            self.assertRaises(BadToken, self.verifier.verify, value)

    def test_scopes(self):
        self.assertEqual(parse_scope("repository:a/b:pull,push"), ("repository", "a/b",
                                                                  ("pull", "push")))
        self.assertEqual(parse_scope("repository:host:5000/a:pull"),
                         ("repository", "host:5000/a", ("pull",)))
        self.assertIsNone(parse_scope("nonsense"))


class IssuerAndGateTests(SynchronousTestCase):
    """The embedded token service hands out what the rules allow, and the
    gate lets exactly that through."""

    def setUp(self):
        self.config, self.key, directory = write_config(self)
        clock = FakeReactor()
        checker = HtpasswdChecker(self.config.htpasswd, clock, clock, threadpool=SyncPool())
        self.issuer = TokenIssuer(self.config, users_portal(checker),
                                  AccessPolicy.load(self.config.access))
        self.served = []
        from twisted.web.resource import Resource
        outer = self

        class Recorder(Resource):
            isLeaf = True

            def render(self, request):
                outer.served.append(request.uri)
                return b"ok"
        self.gate = TokenGate(Recorder(), lambda request: None, TokenVerifier(self.config),
                              self.config, Clock())

    def get_token(self, scopes, user=None, password=None):
        query = "&".join(["service=speedy-test"] + [f"scope={s}" for s in scopes])
        request = DummyRequest([b"token"])
        request.uri = f"/token?{query}".encode()
        request.args = {b"service": [b"speedy-test"], b"scope": [s.encode() for s in scopes]}
        if user is not None:
            request.requestHeaders.setRawHeaders(
                b"authorization", [b"Basic " + base64.b64encode(f"{user}:{password}".encode())])
        self.issuer.render_GET(request)
        self.assertTrue(request.finished)
        return request.responseCode or 200, json.loads(b"".join(request.written))

    def call(self, method, uri, bearer=None):
        request = DummyRequest(uri.lstrip("/").split("/"))
        request.method, request.uri = method.encode(), uri.encode()
        if bearer is not None:
            request.requestHeaders.setRawHeaders(b"authorization", [b"Bearer " + bearer.encode()])
        self.gate.resource.render(request)
        return request

    def test_flow(self):
        """No token: 401 and a challenge naming the scope; a token for it:
        allowed; a token for another repository or action: 401
        insufficient_scope; the wrong password gets no token."""
        request = self.call("PUT", "/v2/alice/app/manifests/1")
        self.assertEqual(request.responseCode, 401)
        [challenge] = request.responseHeaders.getRawHeaders(b"www-authenticate")
        self.assertEqual(challenge, b'Bearer realm="http://127.0.0.1:5000/token",'
                                    b'service="speedy-test",scope="repository:alice/app:pull,push"')
        status, answer = self.get_token(["repository:alice/app:pull,push"], "alice",
                                        "alice-password")
        self.assertEqual(status, 200)
        granted = answer["token"]
        self.assertEqual(self.call("PUT", "/v2/alice/app/manifests/1", granted).responseCode, None)
        for method, uri in [("DELETE", "/v2/alice/app/manifests/1"),
                            ("PUT", "/v2/bob/app/manifests/1"), ("GET", "/v1/files/x")]:
            request = self.call(method, uri, granted)
            self.assertEqual(request.responseCode, 401, uri)
            self.assertIn(b'error="insufficient_scope"',
                          request.responseHeaders.getRawHeaders(b"www-authenticate")[0])
        self.assertEqual(self.served, [b"/v2/alice/app/manifests/1"])
        self.assertEqual(self.get_token(["repository:alice/app:pull"], "alice", "wrong")[0], 401)

    def refusals(self, events):
        return [e for e in events if e.get("log_format", "").startswith("refused {method}")]

    def test_garbage_tokens_refused_and_logged(self):
        """A garbage JWT, a forged one (C{alg: none}), a huge one, one for
        another repository: 401, the request id in the body, and a warning
        with it and the reason (the subject, for a token that does not
        grant); then a good token passes as ever."""
        _, answer = self.get_token(["repository:alice/app:pull,push"], "alice", "alice-password")
        granted = answer["token"]
        header = base64.urlsafe_b64encode(b'{"alg":"none","typ":"JWT"}').rstrip(b"=").decode()
        payload = base64.urlsafe_b64encode(json.dumps(
            {"sub": "mallory", "access": [{"type": "repository", "name": "alice/app",
                                           "actions": ["push"]}]}).encode()).rstrip(b"=").decode()
        cases = [("not.a.jwt", "invalid token", None), (f"{header}.{payload}.", "invalid token", None),
                 ("A" * 20_000, "too long", None), ("\u00e9\u00e9", "invalid token", None)]
        for token, reason, user in cases:
            with capturedLogs() as events:
                request = self.call("PUT", "/v2/alice/app/manifests/1", token)
            self.assertEqual(request.responseCode, 401, token[:20])
            rid = json.loads(b"".join(request.written))["request_id"]
            [event] = self.refusals(events)
            self.assertEqual((event["request_id"], event["log_level"], event["user"]),
                             (rid, LogLevel.warn, user))
            self.assertIn(reason, event["reason"])
        with capturedLogs() as events:
            self.call("PUT", "/v2/bob/app/manifests/1", granted)
        [event] = self.refusals(events)
        self.assertEqual((event["user"], event["reason"]), ("alice", "the token does not grant this"))
        self.assertEqual(self.served, [])
        self.assertEqual(self.call("PUT", "/v2/alice/app/manifests/1", granted).responseCode, None)

    def test_issuer_refusals_logged(self):
        """The token service's refusals (a wrong password, malformed
        credentials) carry the request id and are logged with the user."""
        with capturedLogs() as events:
            status, answer = self.get_token(["repository:alice/app:pull"], "alice", "wrong")
        self.assertEqual(status, 401)
        [event] = self.refusals(events)
        self.assertEqual((event["request_id"], event["user"], event["log_level"]),
                         (answer["request_id"], "alice", LogLevel.warn))

    def test_decided_once(self):
        """A token decided as the headers arrived (the body went to its
        route) is not looked up again when the request renders; a request
        the gate did not see arrive is decided when it renders."""
        status, answer = self.get_token(["repository:alice/app:pull,push"], "alice",
                                        "alice-password")
        looked = []
        real = self.gate._grant
        self.gate._grant = lambda request: looked.append(request.uri) or real(request)
        request = DummyRequest(["v2", "alice", "app", "manifests", "1"])
        request.method, request.uri = b"PUT", b"/v2/alice/app/manifests/1"
        request.requestHeaders.setRawHeaders(b"authorization",
                                             [b"Bearer " + answer["token"].encode()])
        self.assertIsNone(self.gate.body_sink_for(request))  # the route's (none here)
        self.gate.resource.render(request)
        self.assertEqual((looked, self.served), ([request.uri], [request.uri]))
        self.assertEqual(self.call("PUT", "/v2/bob/app/manifests/1",
                                   answer["token"]).responseCode, 401)
        self.assertEqual(len(looked), 2)

    def test_grants_follow_the_rules(self):
        """bob asking for push on alice/app gets pull only; anonymous gets
        public pulls; only ops gets the catalog of everything."""
        def access(*args):
            status, answer = self.get_token(*args)
            claims = jwt.decode(answer["token"], options={"verify_signature": False})
            return claims["access"]
        self.assertEqual(access(["repository:alice/app:pull,push"], "bob", "bob-password"),
                         [{"type": "repository", "name": "alice/app", "actions": ["pull"]}])
        self.assertEqual(access(["repository:public/x:pull,push", "repository:alice/app:pull"]),
                         [{"type": "repository", "name": "public/x", "actions": ["pull"]}])
        self.assertEqual(access(["registry:catalog:*"], "alice", "alice-password"), [])
        self.assertEqual(access(["repository:alice/app:*"], "alice", "alice-password"),
                         [{"type": "repository", "name": "alice/app", "actions": ["pull", "push"]}])
        self.assertEqual(access(["registry:catalog:*"], "ops", "ops-password"),
                         [{"type": "registry", "name": "catalog", "actions": ["*"]}])
