"""
Onboard monitoring: every daemon's Prometheus metrics and health checks.

  - L{monitoring.http}: request counts, latency histograms and bytes of an
    HTTP listener, by route and status, counted as each request finishes.
  - L{monitoring.collectors}: the figures each role already keeps (wire and
    store counters of a chunkserver, the cluster and repairs of a
    chunkmaster, the replication counters of an imageserver), read only
    when Prometheus scrapes, so they cost the hot paths nothing.
  - L{monitoring.endpoints}: C{/metrics}, C{/healthz} and C{/readyz} as
    routes of L{speedy.web.rest}, and a side listener serving only them.

Each daemon has its own L{prometheus_client.CollectorRegistry}, never the
library's global one, so tests and several roles in one process stay apart.
"""
