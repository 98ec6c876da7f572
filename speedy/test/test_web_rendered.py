"""
Tests for L{speedy.web.rendered}: one JSON answer shared by many readers,
rendered again on a new version or after C{max_age}, with its ETag and
gzipped copy.
"""

import gzip
import json

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest

from speedy.web.rendered import RenderedJSON, accepts_gzip, etag_matches


class Source:
    """What a L{RenderedJSON} renders: a value and a version to change,
    counting its renderings; with C{hold}, a rendering takes the value,
    then waits for L{release} to return it."""

    def __init__(self):
        self.value = {"servers": ["s1"]}
        self.version = 1
        self.renders = 0
        self.hold = False
        self.held = []

    async def render(self):
        self.renders += 1
        value = self.value
        if self.hold:
            held = Deferred()
            self.held.append(held)
            await held
        if isinstance(value, Exception):
            raise value
        return dict(value)

    def release(self):
        held, self.held = self.held, []
        for d in held:
            d.callback(None)


def request(**headers):
    r = DummyRequest([b"dashboard", b"data"])
    for name, value in headers.items():
        r.requestHeaders.setRawHeaders(name.replace("_", "-"), [value])
    return r


class RenderedJSONTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1000)
        self.source = Source()
        self.rendered = RenderedJSON(self.clock, self.source.render,
                                     version=lambda: self.source.version, max_age=1.0)

    def answer(self, **headers):
        return self.successResultOf(Deferred.fromCoroutine(
            self.rendered.answer(request(**headers), {b"cache-control": b"no-cache"})))

    def test_readers_within_max_age_share_one_rendering(self):
        """Readers within C{max_age} of a rendering get its very bytes
        without a new rendering, even if the value changed meanwhile; the
        first reader after C{max_age} gets a new one."""
        first = self.answer()
        self.source.value = {"servers": ["s1", "s2"]}
        self.clock.advance(0.5)
        second = self.answer()
        self.clock.advance(0.49)
        third = self.answer()
        self.assertEqual(self.source.renders, 1)
        self.assertEqual(self.rendered.renderings, 1)
        self.assertIs(second.body, first.body)
        self.assertIs(third.body, first.body)
        self.assertEqual(json.loads(first.body), {"servers": ["s1"]})
        self.clock.advance(0.01)
        self.assertEqual(json.loads(self.answer().body), {"servers": ["s1", "s2"]})
        self.assertEqual(self.source.renders, 2)

    def test_new_version_renders_at_once(self):
        """A version change makes the very next reader get a new
        rendering, however recent the last one."""
        self.answer()
        self.source.value = {"servers": ["s1", "s2"]}
        self.source.version = 2
        self.assertEqual(json.loads(self.answer().body), {"servers": ["s1", "s2"]})
        self.assertEqual(self.source.renders, 2)
        self.answer()
        self.assertEqual(self.source.renders, 2)

    def test_readers_during_a_rendering_wait_for_it(self):
        """Readers that come while a rendering is under way get it; only
        one rendering runs.  One that gives up leaves the others served."""
        self.source.hold = True
        waiting = [self.rendered.rendering() for _ in range(3)]
        self.assertEqual(self.source.renders, 1)
        self.assertNoResult(waiting[0])
        waiting[1].cancel()
        self.failureResultOf(waiting[1], CancelledError)
        self.source.release()
        first, third = self.successResultOf(waiting[0]), self.successResultOf(waiting[2])
        self.assertIs(first, third)
        self.assertEqual(self.source.renders, 1)

    def test_version_change_during_a_rendering(self):
        """A rendering started before a version change is not served after
        it: the version it carries is the one read when it started."""
        self.source.hold = True
        started = self.rendered.rendering()
        self.source.value = {"servers": ["s1", "s2"]}
        self.source.version = 2
        self.source.release()
        self.successResultOf(started)
        self.source.hold = False
        self.assertEqual(json.loads(self.answer().body), {"servers": ["s1", "s2"]})
        self.assertEqual(self.source.renders, 2)

    def test_failed_rendering(self):
        """A rendering that raises fails every reader waiting for it and is
        not kept: the next reader renders again."""
        self.source.hold = True
        self.source.value = ValueError("store gone")
        waiting = [self.rendered.rendering() for _ in range(2)]
        self.source.release()
        for d in waiting:
            self.failureResultOf(d, ValueError)
        self.source.hold = False
        self.source.value = {"servers": []}
        self.assertEqual(json.loads(self.answer().body), {"servers": []})
        self.assertEqual(self.rendered.renderings, 1)

    def test_etag_and_304(self):
        """An answer carries a weak ETag of its bytes; a reader naming it
        in If-None-Match gets a 304 without a body, with the same ETag; a
        new rendering of other bytes has another tag."""
        first = self.answer()
        self.assertEqual(first.status, 200)
        self.assertEqual(first.headers[b"cache-control"], b"no-cache")
        self.assertEqual(first.headers[b"vary"], b"Accept-Encoding")
        etag = first.headers[b"etag"]
        self.assertTrue(etag.startswith(b'W/"'))
        unchanged = self.answer(if_none_match=etag)
        self.assertEqual((unchanged.status, unchanged.body), (304, b""))
        self.assertEqual(unchanged.headers[b"etag"], etag)
        self.assertEqual(self.answer(if_none_match=b'"other", ' + etag[2:]).status, 304)
        self.assertEqual(self.answer(if_none_match=b'W/"other"').status, 200)
        self.source.version = 2
        self.source.value = {"servers": ["s1", "s2"]}
        changed = self.answer(if_none_match=etag)
        self.assertEqual(changed.status, 200)
        self.assertNotEqual(changed.headers[b"etag"], etag)

    def test_gzip(self):
        """A reader that accepts gzip gets the rendering gzipped (what it
        decompresses to is the plain answer), the same compressed bytes to
        every such reader of one rendering; others get it plain."""
        plain = self.answer()
        zipped = self.answer(accept_encoding=b"gzip, deflate, br")
        self.assertEqual(zipped.headers[b"content-encoding"], b"gzip")
        self.assertEqual(gzip.decompress(zipped.body), plain.body)
        self.assertEqual(zipped.headers[b"etag"], plain.headers[b"etag"])
        self.assertIs(self.answer(accept_encoding=b"gzip").body, zipped.body)
        refused = self.answer(accept_encoding=b"gzip;q=0, identity")
        self.assertNotIn(b"content-encoding", refused.headers)
        self.assertEqual(refused.body, plain.body)
        self.assertEqual(self.source.renders, 1)

    def test_accepts_gzip(self):
        """Accept-Encoding takes gzip when it names it (or x-gzip, or *)
        without q=0."""
        for header, expected in [
                (None, False), (b"", False), (b"identity", False), (b"br, deflate", False),
                (b"gzip", True), (b"GZIP", True), (b"deflate, gzip;q=0.5", True),
                (b"x-gzip", True), (b"*", True), (b"*;q=0", False), (b"gzip;q=0", False),
                (b"gzip; q=0.0, *", False), (b"br, *;q=0.1", True), (b"gzip;q=bad", False)]:
            self.assertEqual(accepts_gzip(header), expected, header)

    def test_etag_matches(self):
        """If-None-Match names a tag weakly compared, in a list, or *."""
        tag = b'W/"abc"'
        for header, expected in [(None, False), (b"", False), (b'"abc"', True),
                                 (b'W/"abc"', True), (b'"x", W/"abc"', True), (b"*", True),
                                 (b'"abcd"', False), (b"abc", False)]:
            self.assertEqual(etag_matches(header, tag), expected, header)
