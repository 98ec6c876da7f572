# -*- test-case-name: speedy.test.test_chunkmaster_tap -*-
"""
C{twistd speedy-chunkmaster}: options and service.

    twistd -n speedy-chunkmaster --listen tcp:8099 --db sqlite:meta.db \\
        --config etc/chunkmaster.ini --admin-token-file T --cluster-secret-file S

An option given on the command line wins over the C{--config} file, which
wins over the defaults.
"""

from twisted.application.service import MultiService
from twisted.internet.endpoints import serverFromString
from twisted.web.server import Site

from speedy.chunkmaster.api import build_api
from speedy.chunkmaster.cluster import Cluster
from speedy.chunkmaster.collector import ChunkCollector, GroupDeleter
from speedy.chunkmaster.fsck import FsckRunner
from speedy.chunkmaster.repair import RepairService
from speedy.chunkmaster.transfer import TransferService
from speedy.chunkmaster.service import ChunkmasterService
from speedy.chunkmaster.sweep import MetadataSweep, parse_policies
from speedy.config import DaemonOptions, Option, duration, endpoint, number, positive, size
from speedy.metadata import open_store
from speedy.monitoring.collectors import (
    ChunkmasterCollector, CollectorMetrics, TransferMetrics)
from speedy.monitoring.dashboard import ClusterHistory, Dashboard, Peers
from speedy.monitoring.database import DatabaseCheck
from speedy.monitoring.endpoints import Monitoring, daemon_registry, side_listener
from speedy.monitoring.http import MeasuredSite, chunkmaster_route, HTTPMetrics, measured_request
from speedy.monitoring.members import Members
from speedy.monitoring.progress import WorkProgress
from speedy.monitoring.uploads import UploadSessions
from speedy.metadata.schema import GROUP_SIZE
from speedy.web.channel import GuardedSite
from speedy.logs import log_format_option, with_log_format
from speedy.web.limits import http_limit_options, limits_from_options
from speedy.wire.client import ChunkClient, load_authority


class Options(DaemonOptions):
    """Command line (and C{--config} file) of the chunkmaster."""

    section = "chunkmaster"
    options = [
        Option("listen", "tcp:8099:interface=127.0.0.1", "Endpoint string of the REST API.",
               endpoint),
        Option("db", "sqlite:meta.db", "Metadata store URL: sqlite:PATH or mysql://..."),
        Option("chunk-tls-ca", None, "PEM file of the certificate authority that signed the "
               "chunkservers' certificates: connect to chunkservers over TLS (they listen on "
               "ssl: endpoints), checking each one's certificate [default: plain TCP].",
               load_authority),
        Option("cluster-secret", None, "The cluster's shared secret: chunkservers, chunkmasters "
               "and imageservers prove to each other that they know it.", required=True,
               secret=True, env="SPEEDY_CLUSTER_SECRET"),
        Option("admin-token", None, "Bearer token of admin calls; without one they are refused.",
               secret=True, env="SPEEDY_ADMIN_TOKEN"),
        Option("heartbeat-timeout", "15", "Seconds of silence before a chunkserver is DOWN.",
               positive(float)),
        Option("group-size", "3", f"Members of a full replica group, at most {GROUP_SIZE} (the "
               "metadata store keeps no more).", number(int, 1, GROUP_SIZE)),
        Option("file-id-range", "100000", "The most file ids one allocation hands out.",
               positive(int)),
        Option("reserve", "16MiB", "Free space at or below which a chunkserver is RO.", size()),
        Option("lost-after", "1h", "Time a chunkserver stays DOWN before it is shown as lost, "
               "to be replaced (e.g. 30m, 1h).", duration(1.0)),
        Option("repair-rate", "64MiB", "Bytes a second repairs and rebuilds copy at most, all "
               "together; 0 for no limit.", size()),
        Option("repair-parallelism", "2", "Chunks repairs and rebuilds copy at once; 0 runs no "
               "repairs here (a second chunkmaster on the same database).", number(int, 0)),
        Option("repair-interval", "5", "Seconds between looks at the repair queue.",
               positive(float)),
        Option("metrics", None, "Endpoint string of a second listener serving only /metrics, "
               "/healthz and /readyz, without credentials [default: none; they are served on "
               "--listen too].", endpoint),
        Option("transfer-rate", "32MiB", "Bytes a second drains and rebalances write at most, "
               "all together (each target replica counts); 0 for no limit.", size()),
        Option("transfer-parallelism", "2", "Chunks drains and rebalances copy at once; 0 runs "
               "no transfers here (a second chunkmaster on the same database).",
               number(int, 0)),
        Option("transfer-delete-delay", "10m", "Time between a chunk's switch to its new group "
               "and the delete of its old copies (reads that looked up the old place finish).",
               duration(0.0)),
        Option("transfer-interval", "5", "Seconds between looks at the transfers.",
               positive(float)),
        Option("transfer-batch", "32", "Chunks a transfer copies before it switches their "
               "references (one transaction) and saves its progress.", positive(int)),
        Option("gc-grace", "1h", "How long a chunk recorded as garbage (of a deleted blob or "
               "file, a replaced file, a failed write) waits before the collector deletes it "
               "from its chunkservers: longer than any pull (at least 60s).", duration(60.0)),
        Option("gc-period", "1m", "Time between the chunk collector's rounds; 0 runs none "
               "here (speedy-admin gc still does).", duration()),
        Option("gc-parallelism", "8", "Chunk deletes the collector has in flight at once.",
               positive(int)),
        Option("gc-sweep-grace", "1h", "How long a blob no manifest references waits after "
               "its last push, link or mount (and a manifest under --gc-delete after its "
               "push) before the collector deletes it: longer than any push takes between "
               "its first layer and its manifest.", duration(1.0)),
        Option("gc-delete", "none", "Manifests the collector deletes too, as "
               "Distribution's garbage-collect --delete-untagged: none, untagged (nothing "
               "tags, lists or is the subject of), orphans (artifacts whose subject is gone), "
               "or untagged,orphans.", parse_policies),
        Option("gc-sweep-rate", "1000", "Blobs and manifests the collector deletes from the "
               "metadata store a second at most; 0 for no limit.", number(int, 0)),
    ] + http_limit_options(per_client="0") + [log_format_option()]


class ChunkmasterSite(MeasuredSite, GuardedSite):
    """
    The chunkmaster's site.  Heartbeats and cluster-view polls arrive from
    every chunkserver and imageserver every few seconds; the ones that
    succeed are routine and stay out of the access log (a thousand
    chunkservers would write hundreds of lines a second, a third of the
    chunkmaster's CPU).  Failures and every other request are logged.
    """

    ROUTINE = frozenset([b"/v1/heartbeat", b"/v1/cluster", b"/metrics", b"/healthz",
                         b"/readyz", b"/dashboard/data"])
    requestFactory = measured_request(Site.requestFactory)

    def log(self, request):
        if self.http_metrics is not None:
            self.http_metrics.observe(request)
        if request.code < 400 and request.path in self.ROUTINE:
            return
        GuardedSite.log(self, request)


def makeService(options, reactor=None):
    """
    @return: a L{ChunkmasterService} that opens the store named by
        C{--db}, loads the cluster and serves the API on C{--listen}.
    """
    if reactor is None:
        from twisted.internet import reactor
    store = open_store(options["db"], reactor)
    cluster = Cluster(
        store, reactor, heartbeat_timeout=options["heartbeat-timeout"],
        group_size=options["group-size"], reserve=options["reserve"],
        lost_after=options["lost-after"])
    client = ChunkClient(reactor, secret=options["cluster-secret"], tls=options["chunk-tls-ca"])
    repairs = RepairService(
        reactor, cluster, store, client, parallelism=options["repair-parallelism"],
        rate=options["repair-rate"], interval=options["repair-interval"])
    fsck = FsckRunner(reactor, cluster, store, client)
    transfers = TransferService(
        reactor, cluster, store, client, parallelism=options["transfer-parallelism"],
        rate=options["transfer-rate"], delete_delay=options["transfer-delete-delay"],
        interval=options["transfer-interval"], batch=options["transfer-batch"],
        replication="fanout" if options["chunk-tls-ca"] is not None else "chain")
    sweep = MetadataSweep(
        store, reactor, grace=options["gc-sweep-grace"],
        untagged="untagged" in options["gc-delete"], orphans="orphans" in options["gc-delete"],
        rate=options["gc-sweep-rate"])
    collector = ChunkCollector(
        GroupDeleter(cluster, client), store, reactor, grace=options["gc-grace"],
        period=options["gc-period"], parallelism=options["gc-parallelism"], sweep=sweep)
    progress = WorkProgress(reactor, collector, transfers)
    uploads = UploadSessions(reactor, store)
    http_metrics = HTTPMetrics(chunkmaster_route, "speedy_chunkmaster_http")
    monitoring = Monitoring(
        daemon_registry(ChunkmasterCollector(cluster, repairs), CollectorMetrics(collector),
                        TransferMetrics(transfers), progress, uploads, http_metrics),
        {"cluster": lambda: (cluster.version > 0, f"cluster view version {cluster.version}"),
         "database": DatabaseCheck(reactor, store.count_uploads)},
        before_scrape=[progress.refresh, uploads.refresh])
    history, peers = ClusterHistory(reactor, cluster), Peers(reactor)
    api = build_api(
        cluster, store, cluster_secret=options["cluster-secret"],
        admin_token=options["admin-token"], max_file_ids=options["file-id-range"],
        repairs=repairs, fsck=fsck, monitoring=monitoring, transfers=transfers,
        collector=collector,
        dashboard=Dashboard(reactor, cluster, history, peers, repairs, progress), peers=peers,
        members=Members(reactor, cluster, peers))
    site = ChunkmasterSite(api, reactor=reactor)
    site.http_metrics = http_metrics

    site.limit(limits_from_options(options))
    service = ChunkmasterService(
        reactor, store, cluster, serverFromString(reactor, options["listen"]), site,
        background=[s for s in (repairs, transfers) if s.enabled] + [collector, history],
        closing=[fsck, client])
    if options["metrics"] is None:
        return with_log_format(service, options, "chunkmaster")
    top = MultiService()
    service.setServiceParent(top)
    side_listener(reactor, options["metrics"], monitoring,
                  limits_from_options(options)).setServiceParent(top)
    return with_log_format(top, options, "chunkmaster")
