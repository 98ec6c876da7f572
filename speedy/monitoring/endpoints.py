# -*- test-case-name: speedy.test.test_monitoring -*-
"""
C{/metrics}, C{/healthz} and C{/readyz}: routes of L{speedy.web.rest}.

    GET /metrics    the Prometheus text exposition of the daemon's registry
    GET /healthz    200 {"alive": true}: the process answers
    GET /readyz     200 {"ready": true, "checks": {...}} when every check
                    passes, else 503 {"ready": false, "checks": {...}}

A readiness check is a callable returning C{(ok, detail)}: whether the
daemon can serve what it is for (its store open, a cluster view at hand, its
database reachable), and a short text an operator reads.  It may instead
return a mapping with C{ok}, C{detail} and figures a program reads (the
imageserver's C{writable_groups}), answered beside them; and it may
return an awaitable of either (L{speedy.monitoring.database.DatabaseCheck})::

    {"ready": true, "checks": {"cluster_view": {"ok": true, "detail": "...",
                                                "view_version": 7, "writable_groups": 1}}}
"""

from inspect import isawaitable

from prometheus_client import (
    CONTENT_TYPE_LATEST, CollectorRegistry, PlatformCollector, ProcessCollector,
    generate_latest)

try:  # the text format every Prometheus reads (the library's latest is 1.0.0 since 0.22)
    from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4 as CONTENT_TYPE
except ImportError:
    CONTENT_TYPE = CONTENT_TYPE_LATEST
from twisted.application.internet import StreamServerEndpointService
from twisted.internet.endpoints import serverFromString

from speedy.web.channel import GuardedSite
from speedy.web.json import answer_json_error, json_answer
from speedy.web.limits import HTTPLimits
from speedy.web.rest import Answer, Router


def daemon_registry(*collectors):
    """
    @return: a new L{CollectorRegistry} (never the library's global one)
        with the process's CPU, memory and file descriptors, the Python
        platform, and C{collectors} (objects with C{collect()}).
    """
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    for collector in collectors:
        registry.register(collector)
    return registry


class Monitoring:
    """
    The monitoring routes of one daemon.

    @param registry: its L{prometheus_client.CollectorRegistry}.
    @param checks: name to readiness check (see the module docstring).
    @param before_scrape: coroutine functions awaited before each scrape, to
        fetch what a collector cannot read synchronously (they must not fail).
    """

    def __init__(self, registry, checks=None, before_scrape=()):
        self.registry = registry
        self.checks = dict(checks or {})
        self.before_scrape = list(before_scrape)

    def add_routes(self, router):
        """Declare C{/metrics}, C{/healthz} and C{/readyz} on C{router}."""
        router.route("GET", "/metrics", self.metrics)
        router.route("GET", "/healthz", self.healthz)
        router.route("GET", "/readyz", self.readyz)
        return router

    async def metrics(self, request):
        for fetch in self.before_scrape:
            await fetch()
        return Answer(200, generate_latest(self.registry), content_type=CONTENT_TYPE)

    async def healthz(self, request):
        return json_answer(200, {"alive": True})

    async def readyz(self, request):
        results = {}
        ready = True
        for name, check in self.checks.items():
            try:
                result = check()
                if isawaitable(result):  # a check that asks something (the database)
                    result = await result
                if isinstance(result, dict):
                    result = dict(result, ok=bool(result.get("ok")),
                                  detail=str(result.get("detail", "")))
                else:
                    ok, detail = result
                    result = {"ok": bool(ok), "detail": detail}
            except Exception as e:
                result = {"ok": False, "detail": f"check failed: {e}"}
            results[name] = result
            ready = ready and result["ok"]
        return json_answer(200 if ready else 503, {"ready": ready, "checks": results})


def side_listener(reactor, endpoint, monitoring, limits=None):
    """
    @param limits: the L{HTTPLimits} of the listener (header and idle
        timeouts, request line and header sizes, connections per client
        and in all): the daemon's main listener's, so the C{--metrics}
        port is no softer a target; the defaults without one.
    @return: a service listening on C{endpoint} (an endpoint string) with a
        L{GuardedSite} serving only the routes of C{monitoring}: the
        C{--metrics} listener.
    """
    router = monitoring.add_routes(Router(answer_json_error))
    site = GuardedSite(router.resource, limits=limits or HTTPLimits(), reactor=reactor)
    return StreamServerEndpointService(serverFromString(reactor, endpoint), site)
