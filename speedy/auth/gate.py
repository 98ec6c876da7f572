# -*- test-case-name: speedy.test.test_auth -*-
"""
The gate in front of an imageserver's routes: every request but the
health checks is authenticated (HTTP Basic, through the C{twisted.cred}
portal) and authorized (the L{AccessPolicy}) before its handler runs and
before its body streams anywhere.

A request whose credentials passed their check lately is decided when its
headers arrive (L{Gate.body_sink_for}): allowed, its body streams to its
route as without the gate; refused, its body is dropped.  A request with
credentials not checked yet has its body spooled while bcrypt runs in a
thread, and handed to its route once they passed (the first request of a
client only: registry clients begin with C{GET /v2/}), up to
L{SPOOL_LIMIT} bytes; a larger one waits, unread in its socket, until they
passed, then streams to its route (L{_CheckedFirst}).  Workers sharing a
port each keep their own cache, so a client's large PATCH may well be the
first request a worker sees of it.  So a stranger cannot have a byte of a
body stored anywhere.

Refusals are the spec's: C{401 UNAUTHORIZED} with C{WWW-Authenticate:
Basic realm="speedy"} for missing, malformed or wrong credentials, C{403
DENIED} for a user the policy does not allow; in the registry's error body
under C{/v2}, in the JSON APIs' elsewhere, with the request's id (in the
body's C{request_id} and in C{X-Request-Id}).  Each is logged with that
id, the method and path, the peer, the user when known (the one the
policy denied, the name a wrong password was given for, a token's
subject) and the reason: C{info} for a request that brought no
credentials (the challenge every registry client starts with), C{warn}
for credentials refused.  Lines are limited per gate (a L{LogBudget} for
each of the two kinds: 20 per 10 seconds, the next line saying how many
were held back), so a flood of garbage credentials cannot fill the disk.  The user's name, and what it
may pull (for the catalog), are left on the request as C{speedy_user} and
C{speedy_may_pull}.
"""

import base64
import binascii
import hashlib
import json
from collections import OrderedDict

from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.defer import Deferred
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure
from twisted.web.resource import Resource, getChildForRequest
from twisted.web.server import NOT_DONE_YET

from speedy.auth.access import ACTIONS
from speedy.auth.htpasswd import IUserName
from speedy.auth.scopes import scope_of
from speedy.auth.tokens import BadToken
from speedy.logs import LogBudget
from speedy.web.rest import Discard, request_id_of

log = Logger()

#: The longest Authorization header looked at.
MAX_AUTHORIZATION = 4096
#: The largest body spooled while its credentials are checked.
SPOOL_LIMIT = 4 << 20


class Refused(Exception):
    """A request the gate turns away: C{status} 401 or 403; C{user}, the
    user's name when known (for the log)."""

    def __init__(self, status, message, user=None):
        super().__init__(message)
        self.status = status
        self.user = user


def basic_credentials(request):
    """
    @return: (user, password) as bytes from the request's C{Authorization:
        Basic} header, or None without one (or an empty one, C{":"}).
    @raise Refused: it is there but malformed, too long, or of another
        scheme.
    """
    header = request.getHeader(b"authorization")
    if header is None:
        return None
    if len(header) > MAX_AUTHORIZATION:
        raise Refused(401, "Authorization header too long")
    scheme, _, value = header.strip().partition(b" ")
    if scheme.lower() != b"basic":
        raise Refused(401, "only Basic authentication is taken here")
    try:
        decoded = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise Refused(401, "malformed Basic credentials")
    user, sep, password = decoded.partition(b":")
    if not sep:
        raise Refused(401, "malformed Basic credentials")
    if not user and not password:
        return None  # what some clients send with no credentials: anonymous
    if not user:
        raise Refused(401, "malformed Basic credentials")
    return user, password


class Gate:
    """
    @param resource: the imageserver's root resource, served behind the gate.
    @param body_sink_for: its C{body_sink_for}.
    @param portal: the C{Portal} of users (L{speedy.auth.htpasswd.users_portal}).
    @param checker: its L{HtpasswdChecker} (asked whether credentials
        passed lately, without a thread).
    @param policy: the L{AccessPolicy}.
    @param clock: the C{IReactorTime} the log's budget keeps time with
        (None: C{time.monotonic}).
    @ivar resource: the gate's own resource, the site's root.
    @ivar refusals: the L{LogBudget}s of the refusal lines: C{"challenge"}
        (no credentials) and C{"refused"} (credentials refused).
    """

    def __init__(self, resource, body_sink_for, portal, checker, policy, realm="speedy",
                 clock=None):
        self.inner = resource
        self._inner_sink_for = body_sink_for
        self._portal = portal
        self._checker = checker
        self.policy = policy
        self.realm = realm
        self.resource = _GateResource(self)
        self.refusals = {"challenge": LogBudget(clock), "refused": LogBudget(clock)}

    def body_sink_for(self, request):
        """The sink of an allowed request's body, a L{Discard} for a refused
        one, or None (spool it) while its credentials are being checked."""
        scope = request.speedy_scope = scope_of(
            request.method.decode("ascii", "replace"), request.uri)
        if scope.kind == "public":
            return self._inner_sink_for(request)
        try:
            credentials = basic_credentials(request)
        except Refused:
            return Discard()
        if credentials is None:
            user = None
        elif self._checker.known(*credentials):
            user = credentials[0].decode("utf-8")
        elif _declared_length(request) > SPOOL_LIMIT:
            return _CheckedFirst(self, request)
        else:
            request.body_sink_chosen = False  # the router feeds it on, once admitted
            return None
        if not self.allowed(user, scope):
            return Discard()
        request.speedy_admitted = (user,)  # decided: admit_known need not again
        return self._inner_sink_for(request)

    def allowed(self, user, scope):
        """@return: whether C{user} (None: anonymous) may have C{scope}."""
        policy = self.policy
        if scope.kind == "public":
            return True
        if scope.kind == "login":
            return user is not None
        if scope.kind == "any":
            return any(_covers_some(policy, user, action) for action in ACTIONS)
        if scope.kind == "somewhere":
            return _covers_some(policy, user, scope.action)
        if scope.kind == "repository":
            if scope.also_pull and not policy.allows(user, "pull", scope.also_pull):
                return False
            return policy.allows(user, scope.action, scope.repository)
        return policy.allows(user, "admin")

    def admit_known(self, request):
        """
        Decide at once a request without credentials or with credentials
        that passed lately (the common case).

        @return: what L{admit} would return, a L{Refused} it would raise,
            or L{_UNKNOWN} when the credentials must be checked first.
        """
        admitted = getattr(request, "speedy_admitted", None)
        if admitted is not None:  # body_sink_for decided on these headers
            return admitted[0]
        scope = getattr(request, "speedy_scope", None) or scope_of(
            request.method.decode("ascii", "replace"), request.uri)
        if scope.kind == "public":
            return None
        try:
            credentials = basic_credentials(request)
        except Refused as e:
            return e
        if credentials is None:
            user = None
        elif self._checker.known(*credentials):
            user = credentials[0].decode("utf-8")
        else:
            return _UNKNOWN
        if self.allowed(user, scope):
            return user
        if user is None:
            return Refused(401, "authentication required")
        return Refused(403, "requested access to the resource is denied", user)

    async def admit(self, request):
        """
        @return: the user's name, or None for an anonymous request the
            policy allows.
        @raise Refused: it may not pass.
        """
        scope = getattr(request, "speedy_scope", None) or scope_of(
            request.method.decode("ascii", "replace"), request.uri)
        if scope.kind == "public":
            return None
        credentials = basic_credentials(request)
        user = None
        if credentials is not None and self._checker.known(*credentials):
            user = credentials[0].decode("utf-8")  # passed lately: no portal round
        elif credentials is not None:
            try:
                _, user, _ = await self._portal.login(
                    UsernamePassword(*credentials), None, IUserName)
            except UnauthorizedLogin:
                raise Refused(401, "unknown user or wrong password",
                              credentials[0].decode("utf-8", "replace"))
        if not self.allowed(user, scope):
            if user is None:
                raise Refused(401, "authentication required")
            raise Refused(403, "requested access to the resource is denied", user)
        return user

    def challenge(self, scope, refused):
        """@return: the C{WWW-Authenticate} value of a 401."""
        return f'Basic realm="{self.realm}"'.encode()

    def may_pull(self, user):
        """@return: a predicate on the repositories C{user} may pull, or None
        for all of them."""
        return None if self.policy.allows(user, "admin") else self.policy.may_pull(user)

    def name_of(self, user):
        """@return: the user's name (None: anonymous)."""
        return user

    def refusal(self, request, refused):
        """Answer C{request} with C{refused}, in the error shape of its path,
        and log it."""
        rid = request_id_of(request)
        self.log_refusal(request, refused, rid)
        scope = scope_of(request.method.decode("ascii", "replace"), request.uri)
        code = "UNAUTHORIZED" if refused.status == 401 else "DENIED"
        if scope.registry == "v2":
            body = {"errors": [{"code": code, "message": str(refused), "detail": None}]}
            request.setHeader(b"docker-distribution-api-version", b"registry/2.0")
        elif scope.registry == "v1":
            body = {"error": str(refused)}
        else:
            body = {"error": {"code": code, "message": str(refused)}}
        body["request_id"] = rid
        request.setResponseCode(refused.status)
        if refused.status == 401:
            request.setHeader(b"www-authenticate", self.challenge(scope, refused))
        request.setHeader(b"content-type", b"application/json")
        data = json.dumps(body).encode("utf-8")
        request.setHeader(b"content-length", b"%d" % len(data))
        if request.method != b"HEAD":
            request.write(data)
        request.finish()


    def log_refusal(self, request, refused, rid):
        """Log the refusal of C{request} (see the module docstring)."""
        log_refusal(self.refusals, request, refused.status, str(refused), refused.user, rid)


def log_refusal(budgets, request, status, reason, user, rid):
    """
    Log a refused request: C{info} when it brought no credentials, else
    C{warn}; within C{budgets} (L{Gate.refusals}).
    """
    kind = "challenge" if request.getHeader(b"authorization") is None else "refused"
    held = budgets[kind].take()
    if held is None:
        return
    who = "" if user is None else " as {user}"
    log.emit(LogLevel.info if kind == "challenge" else LogLevel.warn,
             "refused {method} {path} from {peer}" + who
             + ": {status} {reason} (request {request_id}){more}",
             method=request.method.decode("ascii", "replace"),
             path=request.uri.partition(b"?")[0].decode("utf-8", "replace")[:256],
             peer=_peer(request),
             user=None if user is None else user[:64], status=status, reason=reason,
             request_id=rid, held_back=held, more=LogBudget.more(held))


def _peer(request):
    address = request.getClientAddress()
    host, port = getattr(address, "host", None), getattr(address, "port", None)
    return str(address) if host is None else f"{host}:{port}"


_UNKNOWN = object()


def _declared_length(request):
    """@return: the body length a request declares (a chunked body counts
    as endless)."""
    if request.getHeader(b"transfer-encoding") is not None:
        return float("inf")
    try:
        return int(request.getHeader(b"content-length") or 0)
    except ValueError:
        return float("inf")


def _covers_some(policy, user, action):
    """@return: whether some rule lets C{user} do C{action} somewhere."""
    return any(rule.covers(user) and (action in rule.actions or "admin" in rule.actions)
               for rule in policy.rules)


class _CheckedFirst:
    """
    The sink of a large body whose credentials are not checked yet (its
    client's connection reached a worker that has not seen them: workers
    sharing a port keep their own caches).  The body's first piece is held,
    and with it the client's socket (a pending write: TCP back-pressure,
    nothing spooled), while bcrypt runs in its thread; then the body goes
    to its route's sink as if the credentials had been known, or, refused,
    is dropped (the request is answered 401 or 403 when it renders).
    """

    refusal = None

    def __init__(self, gate, request):
        self._gate = gate
        self._request = request
        self._checked = Deferred.fromCoroutine(gate.admit(request))

    def write(self, data):
        request = self._request

        def admitted(_):
            sink = self._gate._inner_sink_for(request)
            if sink is None:  # a route that takes its body whole
                sink = _ContentSpool(request.content)
            request.body_sink = sink
            return sink.write(data)

        def refused(failure):
            request.body_sink = Discard()
            if not failure.check(Refused):
                log.failure("checking credentials failed", failure)
            raise Refused(401, "authentication failed") if not failure.check(
                Refused) else failure.value

        checked, self._checked = self._checked, None
        return checked.addCallbacks(admitted, refused)

    def finish(self):
        """An empty body: the request is admitted when it renders."""

    def connection_lost(self, reason):
        """Nothing went anywhere yet."""
        if self._checked is not None:
            self._checked.addErrback(lambda _: None)


class _ContentSpool:
    """A sink that keeps the body in the request's C{content}, as a route
    without a sink of its own expects it."""

    def __init__(self, content):
        self._content = content

    def write(self, data):
        self._content.write(data)

    def finish(self):
        """Already there."""

    def connection_lost(self, reason):
        """Nothing to clean up."""


class _GateResource(Resource):
    """Every path comes here first (a leaf); admitted requests go on to the
    resource behind the gate, as the site would have found it."""

    isLeaf = True

    def __init__(self, gate):
        super().__init__()
        self._gate = gate

    def render(self, request):
        known = self._gate.admit_known(request)
        if known is _UNKNOWN:  # bcrypt first, in a thread
            d = Deferred.fromCoroutine(self._gate.admit(request))
            d.addCallbacks(self._admitted, self._refused, callbackArgs=(request,),
                           errbackArgs=(request,)).addErrback(self._broken, request)
            return NOT_DONE_YET
        try:  # decided now (the common case): no Deferred to pay for
            if isinstance(known, Refused):
                self._refused(Failure(known), request)
            else:
                self._admitted(known, request)
        except Exception:
            self._broken(Failure(), request)
        return NOT_DONE_YET

    def _admitted(self, user, request):
        gate = self._gate
        sink = getattr(request, "body_sink", None)
        if isinstance(sink, Discard) and isinstance(sink.error, Refused):
            return gate.refusal(request, sink.error)
        request.speedy_user = gate.name_of(user)
        request.speedy_may_pull = gate.may_pull(user)
        resource = getChildForRequest(gate.inner, request)
        body = resource.render(request)
        if body is not NOT_DONE_YET:
            request.write(body)
            request.finish()

    def _refused(self, failure, request):
        if request.finished or getattr(request, "_disconnected", False):
            return
        if failure.check(Refused):
            return self._gate.refusal(request, failure.value)
        log.failure("checking credentials failed", failure)
        self._gate.refusal(request, Refused(401, "authentication failed"))

    @staticmethod
    def _broken(failure, request):
        log.failure("serving an admitted request failed", failure)
        if not request.finished and not getattr(request, "_disconnected", False):
            if request.startedWriting:
                request.loseConnection()
            else:
                request.setResponseCode(500)
                request.finish()


class TokenGate(Gate):
    """
    The gate with Docker's token authentication (L{speedy.auth.tokens}):
    a request carries C{Authorization: Bearer JWT}; what it may do is what
    the token's C{access} claims grant.  A request without a token, or with
    one that does not grant its scope, gets C{401} and a C{Bearer} challenge
    naming the token service and the scope to ask it for.

    Tokens that passed are remembered (by their SHA-256) until they expire,
    at most L{TOKEN_CACHE} of them.
    """

    def __init__(self, resource, body_sink_for, verifier, config, clock):
        super().__init__(resource, body_sink_for, None, None, None, clock=clock)
        self._verifier = verifier
        self._config = config
        self._clock = clock
        self._tokens = OrderedDict()  # SHA-256 of a token -> (its Grant, its expiry)

    def _grant(self, request):
        """@return: the request's L{Grant}, None without a token.
        @raise Refused: a token that does not pass, or other credentials."""
        header = request.getHeader(b"authorization")
        if header is None:
            return None
        if len(header) > MAX_AUTHORIZATION * 4:
            raise Refused(401, "Authorization header too long")
        scheme, _, token = header.strip().partition(b" ")
        if scheme.lower() != b"bearer" or not token:
            raise Refused(401, "a bearer token is needed here")
        key = hashlib.sha256(token).digest()
        cached = self._tokens.get(key)
        now = self._clock.seconds()
        if cached is not None and cached[1] > now:
            return cached[0]
        try:
            grant = self._verifier.verify(token.strip())
        except BadToken as e:
            raise Refused(401, f"invalid token: {e}")
        self._tokens[key] = (grant, min(grant.expires, now + 60))
        while len(self._tokens) > TOKEN_CACHE:
            self._tokens.popitem(last=False)
        return grant

    def body_sink_for(self, request):
        scope = request.speedy_scope = scope_of(
            request.method.decode("ascii", "replace"), request.uri)
        if scope.kind == "public":
            return self._inner_sink_for(request)
        decided = self.admit_known(request)
        if isinstance(decided, Refused):
            return Discard()
        request.speedy_admitted = (decided,)  # decided: admit_known need not again
        return self._inner_sink_for(request)

    def admit_known(self, request):
        admitted = getattr(request, "speedy_admitted", None)
        if admitted is not None:  # body_sink_for decided on these headers
            return admitted[0]
        scope = getattr(request, "speedy_scope", None) or scope_of(
            request.method.decode("ascii", "replace"), request.uri)
        if scope.kind == "public":
            return None
        try:
            grant = self._grant(request)
        except Refused as e:
            e.scope = scope
            return e
        if grant is not None and self.allowed(grant, scope):
            return grant
        refused = Refused(401, "authentication required" if grant is None
                          else "the token does not grant this",
                          None if grant is None else grant.subject or None)
        refused.insufficient = grant is not None
        return refused

    async def admit(self, request):
        decided = self.admit_known(request)
        if isinstance(decided, Refused):
            raise decided
        return decided

    def allowed(self, grant, scope):
        if scope.kind == "public":
            return True
        if grant is None:
            return False
        if scope.kind in ("login", "any", "somewhere"):
            return True
        if scope.kind == "repository":
            if scope.also_pull and not grant.allows("pull", scope.also_pull):
                return False
            return grant.allows(scope.action, scope.repository) or grant.is_admin()
        return grant.is_admin()

    def challenge(self, scope, refused):
        config = self._config
        value = f'Bearer realm="{config.realm}",service="{config.service}"'
        wanted = None
        if scope.kind == "repository":
            actions = {"pull": "pull", "push": "pull,push", "delete": "delete"}[scope.action]
            wanted = f"repository:{scope.repository}:{actions}"
        elif scope.kind == "admin":
            wanted = "registry:admin:*"
        elif scope.kind == "any":
            wanted = "registry:catalog:*"
        if wanted is not None:
            value += f',scope="{wanted}"'
        if getattr(refused, "insufficient", False):
            value += ',error="insufficient_scope"'
        return value.encode()

    def may_pull(self, grant):
        if grant is None:  # a public path
            return None
        return None if grant.is_admin() else grant.may_pull()

    def name_of(self, grant):
        return None if grant is None else grant.subject or None


#: Tokens remembered.
TOKEN_CACHE = 10_000
