# -*- test-case-name: speedy.test.test_imageserver_tap -*-
"""
C{twistd speedy-imageserver}: options and service.

    twistd -n speedy-imageserver --listen tcp:5000:interface=127.0.0.1 \\
        --master http://127.0.0.1:8099 --cluster-secret-file F --db sqlite:meta.db \\
        [--chunk-size 16MiB] [--parallelism 4] [--fill-slots 8] [--upload-backlog 0]
        [--cut-through 8]
        [--read-window 0] [--replication fanout|chain]
        [--config etc/imageserver.ini]

An option given on the command line wins over the C{--config} file (section
C{[imageserver]}, keys spelt with C{_} or C{-}), which wins over the
defaults.  The registry API is mounted at C{/v2}, and the Docker Registry
V1 API beside the file API under C{/v1} (L{speedy.registry.v1}), when
L{speedy.registry} can be imported.
"""

import os

from prometheus_client import Info
from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService, Service
from twisted.internet.defer import DeferredList
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger
from twisted.python import usage

from speedy.auth.access import AccessError, AccessPolicy
from speedy.auth.gate import Gate, TokenGate
from speedy.auth.tokens import TokenConfig, TokenIssuer, TokenVerifier
from speedy.auth.htpasswd import HtpasswdChecker, read_htpasswd, users_portal
from speedy.config import (
    DaemonOptions, Option, choice, duration, endpoint, http_urls, number, positive, size)
from speedy.imageserver.clusterview import ClusterViewPoller
from speedy.imageserver.fileids import FileIdRange
from speedy.imageserver.master import master_client
from speedy.imageserver.replication import REPLICATION_MODES, ReplicatedStorage
from speedy.imageserver.root import ImageServerRoot
from speedy.logs import log_format_option, with_log_format
from speedy.metadata import open_store
from speedy.monitoring.collectors import ImageserverCollector
from speedy.monitoring.dashboard import reported_counters
from speedy.monitoring.database import DatabaseCheck
from speedy.monitoring.endpoints import Monitoring, daemon_registry, side_listener
from speedy.monitoring.http import HTTPMetrics, MeasuredSite, imageserver_route, measured_request
from speedy.web.streaming import StreamingRequest, StreamingSite
from speedy.web.limits import http_limit_options, limits_from_options
from speedy.wire.client import ChunkClient, load_authority
from speedy.zerocopy import ZERO_COPY_MODES

try:
    from speedy.registry.api import RegistryAPI
    from speedy.registry.v1.api import RegistryV1API
except ImportError:  # the registry is optional: /v2 and V1 stay unmounted
    RegistryAPI = RegistryV1API = None

log = Logger()

#: The largest --read-window taken (the kernel caps it at net.core.rmem_max).
MAX_READ_WINDOW = 64 << 20


def auth_mode(text):
    """C{none}, C{htpasswd:PATH} naming a readable htpasswd file, or
    C{token:PATH} naming a token configuration (L{speedy.auth.tokens}):
    (mode, path or the L{TokenConfig})."""
    if text == "none":
        return ("none", None)
    kind, sep, path = text.partition(":")
    if kind not in ("htpasswd", "token") or not sep or not path:
        raise ValueError(f"must be none, htpasswd:PATH or token:PATH, not {text!r}")
    if kind == "token":
        config = TokenConfig.load(path)
        if config.htpasswd is not None:
            read_htpasswd(config.htpasswd)
        return ("token", config)
    read_htpasswd(path)  # fail at start, not at the first request
    return ("htpasswd", path)


class Options(DaemonOptions):
    """Command line (and C{--config} file) of an imageserver."""

    section = "imageserver"
    options = [
        Option("listen", "tcp:5000:interface=127.0.0.1", "Endpoint string of the HTTP listener.",
               endpoint),
        Option("master", "http://127.0.0.1:8099", "URL of the chunkmaster; several, "
               "comma-separated, for chunkmasters sharing one database (calls fail over "
               "between them).", http_urls),
        Option("cluster-secret", None, "The cluster's shared secret: chunkservers, chunkmasters "
               "and imageservers prove to each other that they know it.", required=True,
               secret=True, env="SPEEDY_CLUSTER_SECRET"),
        Option("db", "sqlite:meta.db", "Metadata store URL: sqlite:PATH or mysql://..."),
        Option("auth", "none", "Who may use the registry and the file and chunk APIs: none "
               "(anyone who reaches the listener), htpasswd:PATH (HTTP Basic against an "
               "htpasswd file of bcrypt entries, htpasswd -B), or token:PATH (Docker's bearer "
               "tokens, from the embedded token service or another; see docs/security.md).",
               auth_mode),
        Option("access", None, "TOML file of allow rules: who may pull, push, delete, or "
               "admin (see docs/security.md) [default: every htpasswd user may pull, push and "
               "delete; file and chunk APIs for admin only]."),
        Option("chunk-tls-ca", None, "PEM file of the certificate authority that signed the "
               "chunkservers' certificates: connect to chunkservers over TLS (they listen on "
               "ssl: endpoints), checking each one's certificate [default: plain TCP].",
               load_authority),
        Option("chunk-size", "16MiB", "Size streams are cut into chunks at, at most 1GiB.",
               size(1, 1 << 30)),
        Option("parallelism", "4", "Chunks in flight per upload and fetched ahead per download.",
               positive(int)),
        Option("request-timeout", "30", "Seconds a chunkserver request may go without any byte "
               "moving.", positive(float)),
        Option("file-id-batch", "1000", "The fewest file ids fetched from the chunkmaster at "
               "once.", positive(int)),
        Option("file-id-horizon", "10m", "File ids held ahead: enough for this long at the "
               "rate of the last minute, so writes go on through a chunkmaster outage that "
               "long.", duration()),
        Option("read-window", "0", "Receive buffer of each socket spliced downloads (plain "
               "TCP) read chunkservers' answers on, against TCP incast, at most 64MiB; 0 lets "
               "the kernel size it.", size(0, MAX_READ_WINDOW)),
        Option("fill-slots", "8", "Uploads that take client bytes into a chunk at once; the "
               "others wait their turn. 0 for no limit.", number(int, 0)),
        Option("upload-backlog", "0", "Bytes of uploads' whole chunks waiting for their replicas "
               "(per process) above which no upload starts a new chunk until enough are "
               "stored: bounds the memory uploads take when clients send faster than the "
               "chunkservers store. 0 for no limit.", size()),
        Option("cut-through", "8", "Chunks of uploads with a Content-Length sent on to their "
               "replicas while they arrive, at once, while no whole chunk is being stored; the "
               "others are sent once whole. 0 for none.", number(int, 0)),
        Option("replication", None, "How a chunk reaches the members of its group: chain "
               "(this imageserver sends it to one, which forwards it to the next as it "
               "arrives; plain TCP only) or fanout (it sends it to each) [default: chain, "
               "fanout with --chunk-tls-ca].", choice(*REPLICATION_MODES)),
        Option("zero-copy", "auto", "Splice downloads from chunkserver sockets into plain-TCP "
               "responses: auto, or off to copy them through Python.",
               choice(*ZERO_COPY_MODES)),
        Option("metrics", None, "Endpoint string of a second listener serving only /metrics, "
               "/healthz and /readyz, without credentials: one per worker when several share "
               "--listen [default: none; they are served on --listen, /metrics behind --auth].",
               endpoint),
        Option("request-metrics", "on", "Count and time every HTTP request by route and status "
               "for /metrics (speedy_imageserver_http_*): on, or off to spare each request the "
               "bookkeeping (the other metrics stay).", choice("on", "off")),
    ] + http_limit_options(per_client="128") + [log_format_option()]

    def check(self):
        if self["replication"] is None:
            self["replication"] = "fanout" if self["chunk-tls-ca"] is not None else "chain"
        if self["replication"] == "chain" and self["chunk-tls-ca"] is not None:
            raise usage.UsageError("--replication chain: chunkservers forward chains over "
                                   "plain TCP only; use fanout with --chunk-tls-ca")
        if self["access"] is not None:
            try:
                AccessPolicy.load(self["access"])
            except AccessError as e:
                raise usage.UsageError(f"--access: {e}")


class ImageServerSite(MeasuredSite, StreamingSite):
    """The imageserver's L{StreamingSite}, its requests counted and timed
    (L{speedy.monitoring.http})."""

    requestFactory = measured_request(StreamingRequest)


class Resources(Service):
    """
    Starts what the imageserver holds open (the metadata store, the
    registries' timers) and closes it, with the connection pools, on stop.

    @param registries: objects with C{start()} and C{stop()} (the V2 and
        V1 registries).
    """

    def __init__(self, metadata, closables, registries=()):
        self._metadata = metadata
        self._closables = closables
        self._registries = [r for r in registries if r is not None]

    def startService(self):
        Service.startService(self)
        self._metadata.start().addErrback(
            lambda f: log.failure("the metadata store did not start", f))
        for registry in self._registries:
            registry.start()

    def stopService(self):
        Service.stopService(self)
        for registry in self._registries:
            registry.stop()
        closing = [c.close() for c in self._closables] + [self._metadata.close()]
        return DeferredList(closing, consumeErrors=True)


def makeService(options, reactor=None):
    """
    @return: a L{MultiService} that polls the cluster view, keeps file ids
        at hand and serves the file, chunk and (when available) registry
        APIs on C{--listen}.
    """
    if reactor is None:
        from twisted.internet import reactor
    metadata = open_store(options["db"], reactor)
    client = ChunkClient(reactor, request_timeout=options["request-timeout"],
                         secret=options["cluster-secret"], tls=options["chunk-tls-ca"])
    name, health = worker_name(options["listen"]), health_base(options)
    master = master_client(reactor, options["master"], options["cluster-secret"],
                           name=name, health=health,
                           counters=lambda: reported_counters(storage.counters))
    poller = ClusterViewPoller(master, reactor)
    file_ids = FileIdRange(master, batch=options["file-id-batch"],
                           low_water=max(1, options["file-id-batch"] // 4),
                           clock=reactor, horizon=options["file-id-horizon"])
    storage = ReplicatedStorage(
        client, poller, file_ids, metadata, reactor, chunk_size=options["chunk-size"],
        parallelism=options["parallelism"], read_window=options["read-window"],
        fill_slots=options["fill-slots"], cut_through=options["cut-through"],
        zero_copy=options["zero-copy"] == "auto", replication=options["replication"],
        upload_backlog=options["upload-backlog"])
    registry = None if RegistryAPI is None else RegistryAPI(metadata, storage, reactor)
    registry_v1 = None if RegistryV1API is None else RegistryV1API(metadata, storage, reactor)
    root = ImageServerRoot(storage, metadata, reactor, registry, registry_v1)
    http_metrics = HTTPMetrics(imageserver_route, "speedy_imageserver_http")
    monitoring = Monitoring(
        daemon_registry(ImageserverCollector(storage, file_ids, client.timings), http_metrics),
        {"cluster_view": lambda: _view_ready(poller),
         "database": DatabaseCheck(reactor, metadata.count_uploads)})
    Info("speedy_imageserver_worker", "This imageserver process: the name it gives the "
         "chunkmaster (host:port pid N) and where its health checks answer.",
         registry=monitoring.registry).info({"name": name, "health": health or ""})
    monitoring.add_routes(root.router)
    resource, body_sink_for = root.resource, root.body_sink_for
    mode, path = options["auth"]
    if mode == "htpasswd":
        checker = HtpasswdChecker(path, reactor, reactor)
        policy = AccessPolicy.load(options["access"]) if options["access"] else \
            AccessPolicy.default()
        gate = Gate(resource, body_sink_for, users_portal(checker), checker, policy,
                    clock=reactor)
        resource, body_sink_for = gate.resource, gate.body_sink_for
    elif mode == "token":
        config = path
        if config.private_key is not None:  # the embedded token service, at /token
            checker = HtpasswdChecker(config.htpasswd, reactor, reactor)
            policy = AccessPolicy.load(config.access) if config.access else \
                AccessPolicy.default()
            root.router.mount(b"token", TokenIssuer(config, users_portal(checker), policy,
                                                    budget_clock=reactor))
        gate = TokenGate(resource, body_sink_for, TokenVerifier(config), config, reactor)
        resource, body_sink_for = gate.resource, gate.body_sink_for
    elif options["access"]:
        log.warn("--access is ignored with --auth none: anyone who reaches the listener "
                 "may do anything")
    site = ImageServerSite(resource, body_sink_for, reactor=reactor,
                          limits=limits_from_options(options))
    site.http_metrics = http_metrics if options["request-metrics"] == "on" else None
    service = MultiService()
    Resources(metadata, [storage, client, master],
              [registry, registry_v1]).setServiceParent(service)
    poller.setServiceParent(service)
    StreamServerEndpointService(
        serverFromString(reactor, options["listen"]), site).setServiceParent(service)
    if options["metrics"] is not None:
        side_listener(reactor, options["metrics"], monitoring,
                      limits_from_options(options)).setServiceParent(service)
    return with_log_format(service, options, "imageserver")


def _address(endpoint):
    """@return: the C{(scheme, host:port)} an endpoint string (C{tcp:},
    C{ssl:}, C{reuseport:} with or without a certificate) is reached at, or
    C{(scheme, None)} for other kinds."""
    from speedy.chunkserver.tap import advertised_address
    kind, _, rest = endpoint.partition(":")
    tls = kind == "ssl" or (kind == "reuseport" and "privateKey=" in rest)
    if kind == "reuseport":
        endpoint = "tcp:" + rest
    return ("https" if tls else "http"), advertised_address(endpoint)


def worker_name(listen, pid=None):
    """
    @return: how this imageserver names itself to the chunkmaster (the
        dashboard's and C{speedy-admin health}'s imageservers, the
        C{speedy_imageserver_worker_info} metric): C{host:port pid N}, its
        registry address and process, which tells apart the workers
        sharing one port; the endpoint string for kinds without an address.
    """
    address = _address(listen)[1] or listen
    return f"{address} pid {os.getpid() if pid is None else pid}"


def health_base(options):
    """
    @return: C{scheme://host:port} where this imageserver's C{/healthz}
        and C{/readyz} answer: its own C{--metrics} listener, else its
        C{--listen} (which, shared by several workers, answers for
        whichever the kernel picks); None when neither has an address.
    """
    scheme, address = _address(options["metrics"] or options["listen"])
    return None if address is None else f"{scheme}://{address}"


def _view_ready(poller):
    """@return: the readiness check of the cluster view (L{Monitoring}):
    ready with a view; its version and writable groups for programs
    (C{speedy-cluster up} waits for a writable group)."""
    view = poller.current
    if view is None:
        return {"ok": False, "detail": "no cluster view from the chunkmaster yet",
                "view_version": None, "writable_groups": 0}
    writable = len(view.writable())
    return {"ok": True, "detail": f"cluster view version {view.version}, {writable} writable groups",
            "view_version": view.version, "writable_groups": writable}
