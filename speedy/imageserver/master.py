# -*- test-case-name: speedy.test.test_imageserver_clusterview -*-
"""
The imageserver's client of the chunkmaster's REST API: the cluster view and
file-id ranges (see the table in C{docs/architecture.md}).
"""

import json

from treq.client import HTTPClient
from twisted.internet.defer import CancelledError, Deferred
from twisted.web.client import Agent, HTTPConnectionPool
from zope.interface import Interface, implementer

from speedy import errors
from speedy.imageserver.clusterview import ClusterView
from speedy.logs import request_id
from speedy.web.body import BytesBody


class IMasterClient(Interface):
    """What an imageserver asks the chunkmaster."""

    def cluster(etag=None, wait=None):
        """
        Fetch the cluster view; with C{etag} (the version held) answer only
        a newer one, waiting up to C{wait} seconds for it (long-poll).

        @return: a Deferred firing with a L{ClusterView}, or with None when
            the view is still C{etag}.  It fails with L{Unavailable} when the
            master cannot be reached or answers an error.
        """

    def allocate_file_ids(count):
        """
        @return: a Deferred firing with (start, end): ids start <= id < end
            that no one else will ever be given; L{Unavailable} as above.
        """

    def close():
        """Drop pooled connections.  @return: a Deferred."""


@implementer(IMasterClient)
class HTTPMasterClient:
    """
    L{IMasterClient} over HTTP with its own connection pool and a timeout
    on every request (long-polls get their wait on top).  C{secret} is
    sent as a bearer token when not empty; C{name}, when given, as
    C{X-Speedy-Imageserver} (the chunkmaster's dashboard lists who polls);
    C{counters}, when given, returns a dict of counters sent with each
    poll of the view as C{X-Speedy-Imageserver-Counters: name=value,...}
    (the dashboard shows the imageservers' failovers); C{health}, when
    given, as C{X-Speedy-Imageserver-Health}: the C{http://host:port}
    where this imageserver's C{/healthz} and C{/readyz} answer (what
    C{speedy-admin health} probes).
    """

    def __init__(self, reactor, url, secret, timeout=10.0, name=None, counters=None,
                 health=None):
        self._reactor = reactor
        self._url = url.rstrip("/")
        self._headers = {b"authorization": [b"Bearer " + secret.encode("utf-8")]} if secret else {}
        if name:
            self._headers[b"x-speedy-imageserver"] = [name.encode("utf-8")]
        if health:
            self._headers[b"x-speedy-imageserver-health"] = [health.encode("utf-8")]
        self._counters = counters
        self._timeout = timeout
        self._pool = HTTPConnectionPool(reactor, persistent=True)
        self._http = HTTPClient(
            Agent(reactor, connectTimeout=timeout, pool=self._pool),
            data_to_body_producer=BytesBody)

    def cluster(self, etag=None, wait=None):
        return Deferred.fromCoroutine(self._cluster(etag, wait))

    async def _cluster(self, etag, wait):
        headers = dict(self._headers)
        if self._counters is not None:
            headers[b"x-speedy-imageserver-counters"] = [",".join(
                f"{k}={int(v)}" for k, v in sorted(self._counters().items())).encode("ascii")]
        params = {}
        if etag is not None:
            headers[b"if-none-match"] = [b'"%d"' % (etag,)]
            if wait:
                params["wait"] = str(wait)
        timeout = self._timeout + (wait or 0)
        status, body = await self._call("GET", "/v1/cluster", headers, None, params, timeout)
        if status == 304:
            return None
        try:
            return ClusterView.from_json(body)
        except ValueError as e:
            raise errors.Unavailable(f"the chunkmaster answered a bad cluster view: {e}")

    def allocate_file_ids(self, count):
        return Deferred.fromCoroutine(self._allocate(count))

    async def _allocate(self, count):
        _, body = await self._call(
            "POST", "/v1/file-ids", self._headers, {"count": count}, None, self._timeout)
        try:
            start, end = int(body["start"]), int(body["end"])
        except (KeyError, TypeError, ValueError):
            raise errors.Unavailable(f"the chunkmaster answered a bad file-id range: {body!r}")
        if not 0 <= start < end:
            raise errors.Unavailable(f"the chunkmaster answered an empty range: {body!r}")
        return start, end

    async def _call(self, method, path, headers, body, params, timeout):
        """
        @return: (status, decoded JSON body or None for 304).
        @raise Unavailable: unreachable, timed out, an error status or a
            body that is not JSON.
        """
        rid = request_id.get()
        if rid is not None:  # the HTTP request this call serves (speedy.logs)
            headers = dict(headers)
            headers[b"x-request-id"] = [rid.encode("ascii")]
        try:
            response = await self._http.request(
                method, self._url + path, headers=headers, json=body, params=params,
                timeout=timeout)
            if response.code == 304:
                await response.content()
                return 304, None
            raw = await response.content()
        except CancelledError:
            raise
        except Exception as e:
            raise errors.Unavailable(f"chunkmaster {method} {path}: {e!r}")
        if response.code >= 300:
            raise errors.Unavailable(
                f"chunkmaster {method} {path} answered {response.code}: {raw[:200]!r}")
        try:
            return response.code, json.loads(raw)
        except ValueError:
            raise errors.Unavailable(f"chunkmaster {method} {path} answered non-JSON")

    def close(self):
        return self._pool.closeCachedConnections()


@implementer(IMasterClient)
class FailoverMasterClient:
    """
    L{IMasterClient} over several chunkmasters that share one database:
    every call goes to the one that answered last, and on L{Unavailable}
    to the next, in turn, until one answers or all failed.  Writes go on
    through the outage of any one chunkmaster.
    """

    def __init__(self, clients):
        """@param clients: the L{IMasterClient}s, in order of preference."""
        self._clients = list(clients)
        self._current = 0

    @property
    def current(self):
        """The index of the client calls go to first."""
        return self._current

    def cluster(self, etag=None, wait=None):
        return Deferred.fromCoroutine(self._first(lambda c: c.cluster(etag, wait)))

    def allocate_file_ids(self, count):
        return Deferred.fromCoroutine(self._first(lambda c: c.allocate_file_ids(count)))

    async def _first(self, call):
        reasons = []
        for step in range(len(self._clients)):
            index = (self._current + step) % len(self._clients)
            try:
                result = await call(self._clients[index])
            except errors.Unavailable as e:
                reasons.append(str(e))
                continue
            self._current = index
            return result
        raise errors.Unavailable("no chunkmaster answered: " + " | ".join(reasons))

    def close(self):
        return Deferred.fromCoroutine(self._close())

    async def _close(self):
        for client in self._clients:
            await client.close()


def master_client(reactor, urls, secret, timeout=10.0, name=None, counters=None, health=None):
    """@return: an L{IMasterClient} for one chunkmaster URL, or one failing
    over between several; C{name} names this imageserver to them,
    C{counters} reports its counters and C{health} says where its health
    checks answer (L{HTTPMasterClient})."""
    clients = [HTTPMasterClient(reactor, url, secret, timeout, name, counters, health)
               for url in urls]
    return clients[0] if len(clients) == 1 else FailoverMasterClient(clients)
