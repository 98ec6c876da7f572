# -*- test-case-name: speedy.test.test_chunkmaster_tap -*-
"""
The chunkmaster as a Twisted service: open the metadata store, load the
cluster from it, and only then listen, so the API never answers from an
empty model.  A store that is down at start is retried until it is back.
"""

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, maybeDeferred
from twisted.internet.task import LoopingCall, deferLater
from twisted.logger import Logger

from speedy.errors import Unavailable


class ChunkmasterService(Service):
    """
    @ivar port: the listening port once started, else None.
    """

    log = Logger()

    def __init__(self, reactor, store, cluster, endpoint, site, retry_interval=5.0,
                 background=(), closing=()):
        """
        @param reactor: provides L{IReactorTime}; runs the retry timer.
        @param store: the L{speedy.interfaces.IMetadataStore}.
        @param cluster: the L{speedy.chunkmaster.cluster.Cluster} over it.
        @param endpoint: the L{IStreamServerEndpoint} to listen on.
        @param site: the L{twisted.web.server.Site} serving the API.
        @param retry_interval: seconds between attempts while the store is
            unavailable.
        @param background: services started once the cluster is loaded
            (repair), stopped first.
        @param closing: objects with C{stop()} or C{close()} to call when
            stopping (an fsck run, the chunk client).
        """
        self._background = list(background)
        self._refresh = None
        #: seconds between looks at the database for membership changes
        #: other chunkmasters made
        self.refresh_interval = 10.0
        self._closing = list(closing)
        self._reactor = reactor
        self._store = store
        self._cluster = cluster
        self._endpoint = endpoint
        self._site = site
        self._retry_interval = retry_interval
        self._starting = None
        self.port = None

    def startService(self):
        super().startService()
        self._starting = Deferred.fromCoroutine(self._start())
        self._starting.addErrback(self._start_failed)

    async def _start(self):
        while True:
            try:
                await self._store.start()
                await self._cluster.load()
                break
            except Unavailable as e:
                self.log.warn("metadata store unavailable ({error}); retrying in {delay}s",
                              error=e, delay=self._retry_interval)
                await deferLater(self._reactor, self._retry_interval)
        self.port = await self._endpoint.listen(self._site)
        for service in self._background:
            service.startService()
        self._refresh = LoopingCall(self._refresh_cluster)
        self._refresh.clock = self._reactor
        self._refresh.start(self.refresh_interval, now=False)
        self.log.info("chunkmaster listening on {address}", address=self.port.getHost())

    def _start_failed(self, failure):
        if not failure.check(CancelledError):
            self.log.failure("the chunkmaster could not start", failure)

    def stopService(self):
        """
        Stop starting, answer every long-poll, stop listening and close the
        store.

        @return: a Deferred firing when the store is closed.
        """
        super().stopService()
        return Deferred.fromCoroutine(self._stop())

    def _refresh_cluster(self):
        """Take in what another chunkmaster on the database changed."""
        return Deferred.fromCoroutine(self._cluster.refresh()).addErrback(
            lambda f: self.log.info("could not refresh the cluster from the database: {why}",
                                    why=f.getErrorMessage()))

    async def _stop(self):
        self._starting.cancel()
        if self._refresh is not None and self._refresh.running:
            self._refresh.stop()
        for service in self._background:
            if service.running:
                await maybeDeferred(service.stopService)
        for thing in self._closing:
            await maybeDeferred(getattr(thing, "stop", None) or thing.close)
        self._cluster.stop()
        if self.port is not None:
            await maybeDeferred(self.port.stopListening)
            self.port = None
        await self._store.close()
