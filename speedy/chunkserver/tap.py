# -*- test-case-name: speedy.test.test_chunkserver_tap -*-
"""
C{twistd speedy-chunkserver}: options and the service tree of a chunkserver.

    twistd -n speedy-chunkserver --data-dir DIR --listen tcp:8000 --group-id 1

The service tree (L{makeService}) is a L{MultiService} of:
  - a L{ChunkStoreService} that opens the store on start and closes it on
    stop (until it is open, requests are answered L{Unavailable});
  - the wire protocol listener on C{--listen};
  - the L{Scrubber}, which reads every chunk back in the background;
  - with C{--master}, the heartbeat to each chunkmaster;
  - with C{--metrics}, a small HTTP listener of C{/metrics}, C{/healthz}
    and C{/readyz} (L{speedy.monitoring}).
"""

import os
import uuid

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService, Service
from twisted.internet.defer import CancelledError, Deferred, DeferredList, maybeDeferred
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger
from twisted.python import usage

from speedy.chunkserver.protocol import ChunkServerFactory
from speedy.chunkserver.scrubber import Scrubber
from speedy.config import (
    DaemonOptions, Option, choice, duration, endpoint, http_urls, number, size)
from speedy.errors import Unavailable
from speedy.logs import log_format_option, with_log_format
from speedy.monitoring.collectors import ChunkserverCollector
from speedy.monitoring.endpoints import Monitoring, daemon_registry, side_listener
from speedy.wire.client import ChunkClient
from speedy.zerocopy import ZERO_COPY_MODES

log = Logger()

SYNC_POLICIES = ("always", "batch", "none")
DIRECT_IO_MODES = ("auto", "off")


def reserve(text):
    """--reserve: a fraction of the disk (above 0, below 1) or a size."""
    try:
        fraction = float(text)
    except ValueError:
        fraction = None
    if fraction is not None and 0 < fraction < 1:
        return fraction
    return size()(text)


def ratio(text):
    """--compact-threshold: above 0, at most 1."""
    value = number(float, 0.0, 1.0)(text)
    if value == 0:
        raise ValueError("must be a ratio above 0 and at most 1")
    return value


def address(text):
    """host:port."""
    if not _is_address(text):
        raise ValueError(f"must be host:port, not {text!r}")
    return text


class Options(DaemonOptions):
    """Command line (and C{--config} file) of the chunkserver."""

    synopsis = "--data-dir DIR --group-id N [--listen tcp:8000] [options]"
    section = "chunkserver"
    options = [
        Option("data-dir", None, "Directory holding the volume files (required).", required=True),
        Option("listen", "tcp:8000:interface=127.0.0.1", "Endpoint to serve the wire protocol "
               "on.", endpoint),
        Option("group-id", None, "Replica group of this server, a positive integer (required).",
               number(int, 1), required=True),
        Option("volume-size", "2GiB", "Size of each volume file, at least 1MiB.", size(1 << 20)),
        Option("sync", "always", "When writes reach the disk: always, batch or none.",
               choice(*SYNC_POLICIES)),
        Option("reserve", "1GiB", "Free disk space to keep, or a fraction of the disk (0.05); "
                                  "below it the store turns read-only.", reserve),
        Option("compact-threshold", "0.3", "Garbage ratio of a volume that triggers compaction, "
               "above 0 and at most 1.", ratio),
        Option("compact-delay", "30", "Seconds after deletes take a volume past the compaction "
               "threshold that it is compacted (the periodic compaction runs anyway).",
               number(float, 0.0, 86400.0)),
        Option("direct-io", "auto", "Write and verify large chunks with O_DIRECT, bypassing the "
               "page cache: auto (where the file system allows it) or off.",
               choice(*DIRECT_IO_MODES)),
        Option("zero-copy", "auto", "On plain TCP, read PUT bodies straight into the store's "
               "buffers and send GET answers with sendfile/sendmsg: auto, or off to copy "
               "through Python.", choice(*ZERO_COPY_MODES)),
        Option("staged-read-limit", "64MiB", "Memory that large GETs verified with direct I/O may "
               "hold to send from (one disk read per GET); GETs beyond it read twice.  0 turns "
               "it off.", size()),
        Option("cache-size", "512MiB", "Memory for recently written chunks (PUTs flagged KEEP), to "
               "answer GETs of them without reading the disk.  0 turns it off.", size()),
        Option("server-id", None, "Stable id of this server [default: a uuid kept in "
               "DATA_DIR/server-id]."),
        Option("advertise", None, "host:port others reach this server at [default: from "
               "--listen].", address),
        Option("master", None, "URL of the chunkmaster to heartbeat (no heartbeat without it); "
               "several, comma-separated, for chunkmasters sharing one database: each is sent "
               "every heartbeat.", http_urls),
        Option("cluster-secret", None, "The cluster's shared secret: chunkservers, chunkmasters "
               "and imageservers prove to each other that they know it.", required=True,
               secret=True, env="SPEEDY_CLUSTER_SECRET"),
        Option("heartbeat-interval", "5", "Seconds between heartbeats, at least 0.1.",
               number(float, 0.1)),
        Option("scrub-rate", "8MiB", "Bytes a second the scrubber reads back and checks (a "
               "background pass over every chunk); 0 turns it off.", size()),
        Option("scrub-period", "7d", "Time from the start of one scrub pass to the start of "
               "the next (e.g. 12h, 7d).", duration(1.0)),
        Option("metrics", None, "Endpoint string of an HTTP listener serving /metrics "
               "(Prometheus), /healthz and /readyz, e.g. tcp:9100:interface=127.0.0.1 "
               "[default: none].", endpoint),
        log_format_option(),
    ]

    def check(self):
        if self["advertise"] is None:
            self["advertise"] = advertised_address(self["listen"])
        if self["advertise"] is None:
            raise usage.UsageError(
                "--advertise host:port is needed (it cannot be derived from --listen "
                f"{self['listen']!r})")


def _is_address(text):
    host, sep, port = text.rpartition(":")
    return bool(sep and host and port.isdigit() and 0 < int(port) < 65536)


def advertised_address(listen):
    """
    @return: the "host:port" a C{tcp:}/C{ssl:} endpoint string C{listen} can
        be reached at: its interface if it names one other than a wildcard,
        else 127.0.0.1; None for other endpoint types.
    """
    kind, _, rest = listen.partition(":")
    if kind not in ("tcp", "ssl", "tcp6"):
        return None
    port, interface = None, None
    for part in rest.split(":"):
        key, eq, value = part.partition("=")
        if not eq and port is None:
            port = key
        elif key == "port":
            port = value
        elif key == "interface":
            interface = value
    if port is None or not port.isdigit():
        return None
    if not interface or interface in ("0.0.0.0", "::"):
        interface = "127.0.0.1"
    return f"{interface}:{port}"


def health_base(metrics, advertise=None):
    """
    @param metrics: the C{--metrics} endpoint string, or None.
    @param advertise: the C{host:port} others reach the server at: its
        host stands for a wildcard (or missing) interface of C{metrics}.
    @return: C{http://host:port} where that listener's C{/healthz} and
        C{/readyz} answer, or None without one (or for an endpoint type
        L{advertised_address} does not read).
    """
    address = None if metrics is None else advertised_address(metrics)
    if address is None:
        return None
    named = any(part.partition("=")[0] == "interface"
                and part.partition("=")[2] not in ("", "0.0.0.0", "::")
                for part in metrics.split(":"))
    if not named and advertise:
        address = advertise.rpartition(":")[0] + ":" + address.rpartition(":")[2]
    return "http://" + address


def server_id(data_dir):
    """
    @return: the id kept in C{data_dir}/server-id, written (a new uuid) on
        first start.
    """
    path = os.path.join(data_dir, "server-id")
    try:
        with open(path) as f:
            existing = f.read().strip()
    except FileNotFoundError:
        existing = ""
    if existing:
        return existing
    new = uuid.uuid4().hex
    os.makedirs(data_dir, exist_ok=True)
    with open(path + ".tmp", "w") as f:
        f.write(new + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(path + ".tmp", path)
    return new


class ChunkStoreService(Service):
    """
    Opens the chunk store when started and closes it when stopped, and hands
    it to the wire protocol's factory once open.

    @ivar store: the open L{IChunkStore}, or None.
    """

    _log = Logger()

    def __init__(self, reactor, open_store, factory):
        """
        @param reactor: stopped if the store cannot be opened.
        @param open_store: callable returning the store, or a Deferred of it.
        @param factory: the L{ChunkServerFactory} to serve it.
        """
        self._reactor = reactor
        self._open_store = open_store
        self._factory = factory
        self._opening = None
        self.store = None

    def startService(self):
        super().startService()
        self._opening = maybeDeferred(self._open_store)
        self._opening.addCallback(self._opened)
        self._opening.addErrback(self._failed)

    def _opened(self, store):
        self.store = store
        self._factory.store = store
        self._log.info("chunk store open: {chunks} chunks", chunks=store.status().get("chunks"))

    def _failed(self, reason):
        if reason.check(CancelledError):
            return  # stopped while opening
        self._log.failure("could not open the chunk store; stopping", reason)
        self._reactor.stop()

    def stopService(self):
        super().stopService()
        self._factory.store = None
        store, self.store = self.store, None
        if store is None:
            if self._opening is not None:
                self._opening.cancel()
            return None
        return store.close()

    # What the heartbeat reads of the store (it is built before it opens).

    @property
    def read_only(self):
        return self.store is None or self.store.read_only

    def status(self):
        """@return: the store's status dict.  @raise Unavailable: not open yet."""
        if self.store is None:
            raise Unavailable("the chunk store is not open")
        return self.store.status()

    @property
    def damaged(self):
        """The store's damaged chunk ids not yet acknowledged (none while
        it is not open)."""
        return {} if self.store is None else self.store.damaged

    def acknowledge_damaged(self, file_ids):
        if self.store is not None:
            self.store.acknowledge_damaged(file_ids)


def open_chunk_store(reactor, options):
    """@return: a Deferred firing with the started L{speedy.chunkserver.store.ChunkStore}."""
    from speedy.chunkserver.store import CACHE_SIZE, STAGED_READ_LIMIT, ChunkStore

    async def open_and_start():
        store = await maybeDeferred(
            ChunkStore.open, reactor, options["data-dir"],
            volume_size=options["volume-size"], sync=options["sync"],
            reserve=options["reserve"], compact_threshold=options["compact-threshold"],
            compact_delay=options.get("compact-delay", 30.0),
            direct_io=options.get("direct-io") or "auto",
            staged_read_limit=options.get("staged-read-limit", STAGED_READ_LIMIT),
            cache_size=options.get("cache-size", CACHE_SIZE))
        await maybeDeferred(store.start)
        # In the background: the store serves meanwhile.
        store.reserve_cache().addErrback(
            lambda f: log.failure("reserving the chunk cache's memory failed", f))
        return store

    return Deferred.fromCoroutine(open_and_start())


#: Seconds a chain's forwarded PUT to a last member may go without a byte
#: moving, and more per member after the one forwarded to: less than an
#: imageserver's request timeout (30 s) for chains of three, so the member
#: before a stalled one answers first, naming it.
FORWARD_TIMEOUT = 20.0
FORWARD_TIMEOUT_PER_HOP = 2.0


class _Forwarders(Service):
    """
    The chunk clients chains are forwarded with, by the number of members
    after the one forwarded to (L{ChunkServerFactory.forwarder}); closed
    when the service stops.
    """

    def __init__(self, reactor, secret):
        self._reactor = reactor
        self._secret = secret
        self._clients = {}

    def __call__(self, after):
        client = self._clients.get(after)
        if client is None:
            client = self._clients[after] = ChunkClient(
                self._reactor, secret=self._secret,
                request_timeout=FORWARD_TIMEOUT + FORWARD_TIMEOUT_PER_HOP * after)
        return client

    def stopService(self):
        super().stopService()
        clients, self._clients = list(self._clients.values()), {}
        return DeferredList([c.close() for c in clients], consumeErrors=True)


def makeService(options, reactor=None):
    """@return: the chunkserver's L{MultiService} (see the module docstring)."""
    if reactor is None:
        from twisted.internet import reactor
    if not options["server-id"]:
        options["server-id"] = server_id(options["data-dir"])
    top = MultiService()
    # Chains (CHAIN_PUT) go on to their next member through these clients:
    # one per number of members after that one, each waiting longer.
    forwarders = _Forwarders(reactor, options["cluster-secret"])
    factory = ChunkServerFactory(reactor, zero_copy=options["zero-copy"] == "auto",
                                 secret=options["cluster-secret"], forwarder=forwarders)
    forwarders.setServiceParent(top)
    stores = ChunkStoreService(reactor, lambda: open_chunk_store(reactor, options), factory)
    stores.setServiceParent(top)
    listener = StreamServerEndpointService(serverFromString(reactor, options["listen"]), factory)
    listener.setServiceParent(top)
    Scrubber(reactor, lambda: stores.store, options["scrub-rate"], options["scrub-period"],
             busy=factory.busy).setServiceParent(top)
    for master in options["master"] or ():
        from speedy.chunkserver.heartbeat import HeartbeatService
        HeartbeatService(
            reactor, master, options["cluster-secret"],
            options["server-id"], options["group-id"],
            options["advertise"], stores, options["heartbeat-interval"],
            health=health_base(options["metrics"], options["advertise"]),
        ).setServiceParent(top)
    if options["metrics"] is not None:
        monitoring = Monitoring(
            daemon_registry(ChunkserverCollector(lambda: stores.store, factory.counters)),
            {"store": lambda: (stores.store is not None,
                               "the chunk store is open" if stores.store is not None
                               else "the chunk store is not open yet")})
        side_listener(reactor, options["metrics"], monitoring).setServiceParent(top)
    return with_log_format(top, options, "chunkserver")
