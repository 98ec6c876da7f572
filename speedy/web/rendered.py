# -*- test-case-name: speedy.test.test_web_rendered -*-
"""
One JSON answer that many readers share: L{RenderedJSON} renders it at most
once per version of what it shows and once per C{max_age} seconds, and
serves the same bytes to every reader in between:

    data = RenderedJSON(clock, snapshot, version=lambda: cluster.version, max_age=1.0)

    async def handler(request):
        return await data.answer(request, {b"cache-control": b"no-cache"})

C{snapshot} is an C{async def} returning the JSON-ready value; C{version}
returns anything comparable that changes whenever what must show at once
changes (the cluster view's version: a server registered, went DOWN, a
group set read-only).  So an answer is never older than the last change of
version, and what changes without one (load counters, ages) is at most
C{max_age} seconds old.  Readers that arrive while a rendering is under way
wait for it rather than start their own.

Each rendering is encoded once (as L{speedy.web.json.json_answer} does,
keys sorted) and carries a weak C{ETag} of its bytes: a reader whose
C{If-None-Match} names it gets a 304 without a body.  A reader whose
C{Accept-Encoding} takes gzip gets the rendering gzipped, compressed once
per rendering on first demand (C{Vary: Accept-Encoding}).  A weak tag
names both encodings of one rendering, as RFC 9110 allows (and nginx does).
"""

import gzip
from hashlib import blake2b

from attrs import define, field
from twisted.internet.defer import Deferred, succeed
from twisted.python.failure import Failure

from speedy.web.json import json_bytes
from speedy.web.rest import Answer

#: zlib's level for gzipped renderings: 6 (zlib's default) halves level 1's
#: bytes on the dashboard's JSON for about twice its CPU, once a rendering.
GZIP_LEVEL = 6


@define
class Rendering:
    """
    One rendering of a L{RenderedJSON}.

    @ivar body: its JSON (bytes).
    @ivar etag: its weak entity tag, C{W/"<hash of body>"}.
    @ivar version: the version it was rendered at (read before rendering).
    @ivar rendered_at: the clock's time when its rendering started.
    """

    body: bytes
    version: object
    rendered_at: float
    etag: bytes = field(init=False)
    _gzipped: bytes | None = field(default=None, init=False)

    def __attrs_post_init__(self):
        self.etag = b'W/"%s"' % (blake2b(self.body, digest_size=12).hexdigest().encode("ascii"),)

    def gzipped(self):
        """@return: the body gzipped (compressed on the first call only)."""
        if self._gzipped is None:
            self._gzipped = gzip.compress(self.body, compresslevel=GZIP_LEVEL, mtime=0)
        return self._gzipped


class RenderedJSON:
    """
    A JSON answer rendered at most once per version and per C{max_age}
    seconds (module docstring).

    @param clock: an L{twisted.internet.interfaces.IReactorTime}.
    @param render: C{async def render()} returning the JSON-ready value.
    @param version: C{version()} returns what a rendering must match to be
        served; by default nothing (C{max_age} alone decides).
    @param max_age: seconds a rendering is served for at most.
    @ivar renderings: how many renderings were made.
    """

    def __init__(self, clock, render, version=lambda: None, max_age=1.0):
        self._clock = clock
        self._render = render
        self._version = version
        self.max_age = max_age
        self.renderings = 0
        self._current = None  # the last Rendering
        self._waiting = None  # Deferreds of the readers while a rendering is under way

    def rendering(self):
        """
        @return: a Deferred firing with a L{Rendering} of the current
            version no older than C{max_age}: the last one, or one rendered
            now (or already under way) for every reader that asks meanwhile.
            It fails with what rendering raised, and the next call tries
            again.
        """
        current = self._current
        if (current is not None and current.version == self._version()
                and self._clock.seconds() - current.rendered_at < self.max_age):
            return succeed(current)
        waiter = Deferred(self._forget)
        if self._waiting is None:
            self._waiting = [waiter]
            Deferred.fromCoroutine(self._rerender())
        else:
            self._waiting.append(waiter)
        return waiter

    def _forget(self, waiter):
        """A reader gave up: its Deferred is cancelled, the rendering goes on."""
        if self._waiting is not None and waiter in self._waiting:
            self._waiting.remove(waiter)

    async def _rerender(self):
        # The version is read first: a change while rendering makes the
        # next reader render again rather than keep what it may miss.
        version, started = self._version(), self._clock.seconds()
        try:
            rendering = Rendering(json_bytes(await self._render()), version, started)
        except Exception:
            outcome, rendering = Failure(), None
        else:
            outcome = rendering
            self._current = rendering
            self.renderings += 1
        waiting, self._waiting = self._waiting, None
        for waiter in waiting:
            if rendering is None:
                waiter.errback(outcome)
            else:
                waiter.callback(outcome)

    async def answer(self, request, headers=None):
        """
        @return: the L{Answer} to C{request}: 304 when its C{If-None-Match}
            names the current rendering, else 200 with the rendering,
            gzipped when its C{Accept-Encoding} takes gzip; with C{ETag},
            C{Vary: Accept-Encoding} and C{headers}.
        """
        rendering = await self.rendering()
        headers = dict(headers or {})
        headers[b"etag"] = rendering.etag
        headers[b"vary"] = b"Accept-Encoding"
        if etag_matches(request.getHeader(b"if-none-match"), rendering.etag):
            return Answer(304, headers=headers)
        body = rendering.body
        if accepts_gzip(request.getHeader(b"accept-encoding")):
            body = rendering.gzipped()
            headers[b"content-encoding"] = b"gzip"
        return Answer(200, body, headers, content_type=b"application/json")


def _opaque(tag):
    """@return: an entity tag without its weakness prefix (weak comparison)."""
    tag = tag.strip()
    return tag[2:] if tag.startswith(b"W/") else tag


def etag_matches(header, etag):
    """
    @param header: an C{If-None-Match} header (bytes) or None.
    @return: whether it names C{etag} (weakly compared, RFC 9110 13.1.2)
        or is C{*}.
    """
    if not header:
        return False
    if header.strip() == b"*":
        return True
    wanted = _opaque(etag)
    return any(_opaque(tag) == wanted for tag in header.split(b","))


def accepts_gzip(header):
    """
    @param header: an C{Accept-Encoding} header (bytes) or None.
    @return: whether it takes gzip (named, or C{*}, without C{q=0}).
    """
    if not header:
        return False
    star = False
    for item in header.lower().split(b","):
        coding, _, params = item.partition(b";")
        coding = coding.strip()
        if coding not in (b"gzip", b"x-gzip", b"*"):
            continue
        accepted = _quality(params) > 0
        if coding == b"*":
            star = accepted
        else:
            return accepted
    return star


def _quality(params):
    """@return: the C{q} of an C{Accept-Encoding} item's parameters (1 if none)."""
    for param in params.split(b";"):
        name, _, value = param.partition(b"=")
        if name.strip() == b"q":
            try:
                return float(value.strip())
            except ValueError:
                return 0.0
    return 1.0
