# -*- test-case-name: speedy.test.test_monitoring -*-
"""
What an HTTP listener served: requests by route, method and status, their
latency, and bytes in and out.

L{MeasuredSite} (mixed into a L{twisted.web.server.Site}) stamps each
request when the channel creates it (its request line has arrived) and
hands it to L{HTTPMetrics.observe} when it finishes.  L{HTTPMetrics} keeps
plain numbers in a dict, and its L{collect} turns them into Prometheus
families only when scraped: a request costs a route lookup, a dict lookup
and a bisect (about two microseconds), not the locks of a
L{prometheus_client.Histogram} per observation.

Routes are a small fixed set (L{imageserver_route}, L{chunkmaster_route}):
never a repository name, digest or server id, so the series stay bounded.
"""

from bisect import bisect_left
from functools import lru_cache
from time import monotonic

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

#: Upper bounds of the latency buckets, in seconds.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                   1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

#: The methods counted by name (bytes -> str); any other is C{other}.
_METHODS = {m.encode("ascii"): m for m in
            ("GET", "HEAD", "PUT", "POST", "PATCH", "DELETE", "OPTIONS")}

#: The parts of a /v2 path that name the endpoint, looked for from the end.
_V2_KINDS = (("/blobs/uploads", "v2_uploads"), ("/blobs/", "v2_blobs"),
             ("/manifests/", "v2_manifests"), ("/tags/list", "v2_tags"),
             ("/referrers/", "v2_referrers"))

_V1_KINDS = frozenset(["files", "chunks", "health", "_ping", "images", "repositories",
                       "search", "heartbeat", "cluster", "file-ids", "admin", "users"])


def imageserver_route(path):
    """
    @param path: a request's path (bytes).
    @return: the route it belongs to, one of a fixed set of names:
        C{v2_base}, C{v2_catalog}, C{v2_blobs}, C{v2_uploads},
        C{v2_manifests}, C{v2_tags}, C{v2_referrers}, C{v2_other},
        C{v1_<kind>} for the file, chunk and V1 registry APIs, C{metrics},
        C{healthz}, C{readyz}, or C{other}.
    """
    if len(path) <= _REMEMBERED_PATH:
        return _remembered_route(path)
    return _imageserver_route(path)


#: Paths up to this long have their routes remembered (the same ones come
#: again and again: a layer's HEAD, a tag's manifest), 1,024 at most.
_REMEMBERED_PATH = 256


@lru_cache(maxsize=1024)
def _remembered_route(path):
    return _imageserver_route(path)


def _imageserver_route(path):
    text = path.decode("latin-1")
    if text.startswith("/v2"):
        if text in ("/v2", "/v2/"):
            return "v2_base"
        if text.startswith("/v2/_catalog"):
            return "v2_catalog"
        best, name = -1, "v2_other"
        for marker, kind in _V2_KINDS:
            at = text.rfind(marker)
            if at > best:
                best, name = at, kind
        return name
    return _common_route(text)


def chunkmaster_route(path):
    """@return: the route of a chunkmaster request's path (bytes):
    C{v1_heartbeat}, C{v1_cluster}, C{v1_admin}, ..., C{dashboard},
    C{metrics}, C{healthz}, C{readyz} or C{other}."""
    return _common_route(path.decode("latin-1"))


def _common_route(text):
    if text.startswith("/v1/"):
        kind = text[4:].split("/", 1)[0]
        return "v1_" + kind if kind in _V1_KINDS else "v1_other"
    first = text[1:].split("/", 1)[0]
    if first in ("metrics", "healthz", "readyz", "dashboard"):
        return first
    return "other"


class HTTPMetrics:
    """
    Requests, latency and bytes of one HTTP listener.

    @param route_of: C{route_of(path)} returns the route name of a path.
    @param prefix: the metric names' prefix, e.g. C{speedy_imageserver_http}.
    @param now: a monotonic clock in seconds.
    """

    def __init__(self, route_of, prefix, now=monotonic):
        self._route_of = route_of
        self.prefix = prefix
        self.now = now
        #: (route, method, status) -> [count, sum of seconds, bucket counts...]
        self._requests = {}
        #: route -> [bytes in, bytes out]
        self._bytes = {}

    def observe(self, request):
        """Count C{request}, which has just finished."""
        started = getattr(request, "speedy_started", None)
        elapsed = 0.0 if started is None else max(0.0, self.now() - started)
        route = self._route_of(request.path or b"")
        method = _METHODS.get(request.method, "other")
        key = (route, method, request.code)
        entry = self._requests.get(key)
        if entry is None:
            entry = self._requests[key] = [0, 0.0] + [0] * (len(LATENCY_BUCKETS) + 1)
        entry[0] += 1
        entry[1] += elapsed
        entry[2 + bisect_left(LATENCY_BUCKETS, elapsed)] += 1
        moved = self._bytes.get(route)
        if moved is None:
            moved = self._bytes[route] = [0, 0]
        moved[0] += _bytes_in(request)
        moved[1] += _bytes_out(request)

    def collect(self):
        """@return: the Prometheus families (a collector's C{collect})."""
        prefix = self.prefix
        requests = CounterMetricFamily(
            prefix + "_requests", "HTTP requests answered, by route, method and status.",
            labels=["route", "method", "status"])
        latency = HistogramMetricFamily(
            prefix + "_request_duration_seconds",
            "Time from a request's first line to the end of its answer.",
            labels=["route", "method"])
        by_route = {}
        for (route, method, status), entry in sorted(self._requests.items()):
            requests.add_metric([route, method, str(status)], entry[0])
            merged = by_route.setdefault((route, method), [0, 0.0] + [0] * (len(entry) - 2))
            for i, value in enumerate(entry):
                merged[i] += value
        for (route, method), entry in by_route.items():
            cumulative, buckets = 0, []
            for bound, count in zip(LATENCY_BUCKETS + (float("inf"),), entry[2:]):
                cumulative += count
                buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
            latency.add_metric([route, method], buckets, entry[1])
        received = CounterMetricFamily(prefix + "_received_bytes",
                                       "Request body bytes received, by route.",
                                       labels=["route"])
        sent = CounterMetricFamily(prefix + "_sent_bytes", "Answer body bytes sent, by route.",
                                   labels=["route"])
        for route, (bytes_in, bytes_out) in sorted(self._bytes.items()):
            received.add_metric([route], bytes_in)
            sent.add_metric([route], bytes_out)
        return [requests, latency, received, sent]


def _bytes_in(request):
    length = getattr(request, "body_length", None)
    if length is None:
        header = request.requestHeaders.getRawHeaders(b"content-length")
        try:
            length = int(header[0]) if header else 0
        except ValueError:
            length = 0
    return length


def _bytes_out(request):
    if request.method == b"HEAD":
        return 0
    # Answers sent with sendfile or splice bypass request.write (and
    # sentLength); their Content-Length says what went out.
    header = request.responseHeaders.getRawHeaders(b"content-length")
    try:
        declared = int(header[0]) if header else 0
    except ValueError:
        declared = 0
    return max(request.sentLength, declared)


def measured_request(request_class):
    """
    @return: a subclass of C{request_class} that notes, when created, the
        time its site's L{HTTPMetrics} measure from (C{speedy_started}).
    """
    class Measured(request_class):
        def __init__(self, channel, *args, **kwargs):
            request_class.__init__(self, channel, *args, **kwargs)
            metrics = getattr(getattr(channel, "site", None), "http_metrics", None)
            self.speedy_started = None if metrics is None else metrics.now()

    Measured.__name__ = Measured.__qualname__ = "Measured" + request_class.__name__
    return Measured


class MeasuredSite:
    """
    Mixed in before a L{twisted.web.server.Site} (with C{requestFactory =
    measured_request(...)}): every finished request goes to
    C{http_metrics}, an L{HTTPMetrics}, or nowhere while it is None.
    """

    http_metrics = None

    def log(self, request):
        if self.http_metrics is not None:
            self.http_metrics.observe(request)
        super().log(request)
