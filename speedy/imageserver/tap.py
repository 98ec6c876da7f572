# -*- test-case-name: speedy.test.test_imageserver_tap -*-
"""
C{twistd speedy-imageserver}: options and service.

    twistd -n speedy-imageserver --listen tcp:5000:interface=127.0.0.1 \\
        --master http://127.0.0.1:8099 --cluster-secret S --db sqlite:meta.db \\
        [--chunk-size 16MiB] [--parallelism 4] [--fill-slots 8] [--cut-through 8]
        [--read-window 0]
        [--config etc/imageserver.ini]

An option given on the command line wins over the C{--config} file (section
C{[imageserver]}, keys spelt with C{_} or C{-}), which wins over the
defaults.  The registry API is mounted at C{/v2} when
L{speedy.registry.api} can be imported.
"""


from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService, Service
from twisted.internet.defer import DeferredList
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger
from twisted.python import usage

from speedy.imageserver.clusterview import ClusterViewPoller
from speedy.imageserver.fileids import FileIdRange
from speedy.imageserver.master import HTTPMasterClient
from speedy.imageserver.replication import ReplicatedStorage
from speedy.imageserver.root import ImageServerRoot
from speedy.metadata import open_store
from speedy.config import fill_options, number, positive, size
from speedy.web.streaming import StreamingSite
from speedy.wire.client import ChunkClient

try:
    from speedy.registry.api import RegistryAPI
except ImportError:  # the registry is optional: /v2 stays unmounted
    RegistryAPI = None

log = Logger()

#: option -> default, applied after the command line and the config file.
DEFAULTS = {
    "listen": "tcp:5000:interface=127.0.0.1",
    "master": "http://127.0.0.1:8099",
    "cluster-secret": "",
    "db": "sqlite:meta.db",
    "chunk-size": "16MiB",
    "parallelism": "4",
    "request-timeout": "30",
    "file-id-batch": "1000",
    "read-window": "0",
    "fill-slots": "8",
    "cut-through": "8",
}

#: The largest --read-window taken (the kernel caps it at net.core.rmem_max).
MAX_READ_WINDOW = 64 << 20


class Options(usage.Options):
    optParameters = [
        ["listen", None, None, "Endpoint string of the HTTP listener "
         "[default: tcp:5000:interface=127.0.0.1]."],
        ["master", None, None, "URL of the chunkmaster [default: http://127.0.0.1:8099]."],
        ["cluster-secret", None, None, "Bearer token for the chunkmaster [default: none]."],
        ["db", None, None, "Metadata store URL: sqlite:PATH or mysql://... [default: sqlite:meta.db]."],
        ["chunk-size", None, None, "Size streams are cut into chunks at [default: 16MiB]."],
        ["parallelism", None, None, "Chunks in flight per upload and fetched ahead per "
         "download [default: 4]."],
        ["request-timeout", None, None, "Seconds a chunkserver request may go without any byte "
         "moving [default: 30]."],
        ["file-id-batch", None, None, "File ids fetched from the chunkmaster at once "
         "[default: 1000]."],
        ["fill-slots", None, None, "Uploads that take client bytes into a chunk at once; the "
         "others wait their turn. 0 for no limit [default: 8]."],
        ["cut-through", None, None, "Chunks of uploads with a Content-Length sent on to their "
         "replicas while they arrive, at once, while no whole chunk is being stored; the "
         "others are sent once whole. 0 for none [default: 8]."],
        ["read-window", None, None, "Receive buffer of each socket spliced downloads (plain "
         "TCP) read chunkservers' answers on, against TCP incast; 0 lets the kernel size it "
         "[default: 0]."],
        ["config", None, None, "INI file with an [imageserver] section (see etc/imageserver.ini)."],
    ]

    def postOptions(self):
        fill_options(self, "imageserver", DEFAULTS)
        self["chunk-size"] = size(self, "chunk-size")
        if not 0 < self["chunk-size"] <= 1 << 30:
            raise usage.UsageError("--chunk-size must be between 1 byte and 1GiB")
        self["read-window"] = size(self, "read-window")
        if not 0 <= self["read-window"] <= MAX_READ_WINDOW:
            raise usage.UsageError("--read-window must be between 0 and 64MiB")
        self["parallelism"] = positive(self, "parallelism", int)
        self["fill-slots"] = number(self, "fill-slots", int, minimum=0)
        self["cut-through"] = number(self, "cut-through", int, minimum=0)
        self["request-timeout"] = positive(self, "request-timeout", float)
        self["file-id-batch"] = positive(self, "file-id-batch", int)
        if not self["master"].startswith(("http://", "https://")):
            raise usage.UsageError(f"--master must be an http(s) URL, not {self['master']!r}")


class Resources(Service):
    """
    Starts what the imageserver holds open (the metadata store, the
    registry's timers) and closes it, with the connection pools, on stop.
    """

    def __init__(self, metadata, closables, registry=None):
        self._metadata = metadata
        self._closables = closables
        self._registry = registry

    def startService(self):
        Service.startService(self)
        self._metadata.start().addErrback(
            lambda f: log.failure("the metadata store did not start", f))
        if self._registry is not None:
            self._registry.start()

    def stopService(self):
        Service.stopService(self)
        if self._registry is not None:
            self._registry.stop()
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
    client = ChunkClient(reactor, request_timeout=options["request-timeout"])
    master = HTTPMasterClient(reactor, options["master"], options["cluster-secret"])
    poller = ClusterViewPoller(master, reactor)
    storage = ReplicatedStorage(
        client, poller, FileIdRange(master, batch=options["file-id-batch"],
                                    low_water=max(1, options["file-id-batch"] // 4)),
        metadata, reactor, chunk_size=options["chunk-size"],
        parallelism=options["parallelism"], read_window=options["read-window"],
        fill_slots=options["fill-slots"], cut_through=options["cut-through"])
    registry = None if RegistryAPI is None else RegistryAPI(metadata, storage, reactor)
    root = ImageServerRoot(storage, metadata, reactor, registry)
    site = StreamingSite(root.resource, root.body_sink_for, reactor=reactor)
    service = MultiService()
    Resources(metadata, [storage, client, master], registry).setServiceParent(service)
    poller.setServiceParent(service)
    StreamServerEndpointService(
        serverFromString(reactor, options["listen"]), site).setServiceParent(service)
    return service
