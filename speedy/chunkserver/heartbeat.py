# -*- test-case-name: speedy.test.test_heartbeat -*-
"""
The chunkserver's side of the heartbeat: every few seconds, its space and
load counters to the chunkmaster (C{POST /v1/heartbeat}, see
C{docs/chunkmaster-api.yaml}).

A master that is down, slow or refusing never stops the chunkserver: each
failure is logged (the first of a run, then once a minute) and the next
beat goes out on schedule.
"""

import json
from itertools import islice

from treq.client import HTTPClient
from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool

from speedy.errors import Timeout
from speedy.web.body import BytesBody

#: Seconds between two log lines about the same run of failures.
LOG_EVERY = 60.0

#: The most damaged chunk ids one heartbeat reports (the chunkmaster takes
#: at most this many).
MAX_DAMAGED_REPORTED = 1000


class MasterRefused(Exception):
    """The chunkmaster answered a heartbeat with an error status."""


class HeartbeatService(Service):
    """
    Reports C{store.status()} to the chunkmaster every C{interval} seconds.

    @ivar state: the state the master last gave this server (C{"RW"}, ...),
        or None before its first answer.
    @ivar cluster_version: the view version of that answer, or None.
    """

    log = Logger()

    def __init__(self, reactor, master_url, cluster_secret, server_id, group_id,
                 address, store, interval, *, timeout=10.0, agent=None, health=None):
        """
        @param reactor: provides L{IReactorTime} and L{IReactorTCP}.
        @param master_url: the chunkmaster's base URL, C{http://host:8099}.
        @param cluster_secret: the bearer secret, or None.
        @param address: C{"host:port"} imageservers reach this server at.
        @param store: an object with C{status()} as
            L{speedy.interfaces.IChunkStore.status} (while it raises, as
            L{speedy.errors.Unavailable} before the store is open, no beat
            is sent), and C{damaged} and C{acknowledge_damaged} as
            L{IChunkStore} has them: each beat reports up to
            L{MAX_DAMAGED_REPORTED} damaged chunk ids, acknowledged once the
            chunkmaster answered.
        @param interval: seconds between heartbeats.
        @param timeout: seconds a heartbeat may take before it is given up.
        @param agent: the L{IAgent} to send through; by default one over this
            service's own connection pool (closed on stop).
        @param health: C{http://host:port} of this server's C{--metrics}
            listener, where its C{/healthz} and C{/readyz} answer (sent with
            every beat, so C{speedy-admin health} finds it), or None.
        """
        self._reactor = reactor
        self._url = master_url.rstrip("/").encode("utf-8") + b"/v1/heartbeat"
        self._headers = {b"content-type": [b"application/json"]}
        if cluster_secret:
            self._headers[b"authorization"] = [b"Bearer " + cluster_secret.encode("utf-8")]
        self._server_id = server_id
        self._group_id = group_id
        self._address = address
        self._health = health
        self._store = store
        self._interval = interval
        self._timeout = timeout
        self._agent = agent
        self._pool = None
        self._http = None
        self._loop = None
        self._pending = None
        self._failures = 0
        self._logged_at = None
        self.state = None
        self.cluster_version = None

    def startService(self):
        super().startService()
        agent = self._agent
        if agent is None:
            self._pool = HTTPConnectionPool(self._reactor, persistent=True)
            self._pool.maxPersistentPerHost = 1
            agent = Agent(self._reactor, connectTimeout=self._timeout, pool=self._pool)
        self._http = HTTPClient(agent, data_to_body_producer=BytesBody)
        self._loop = LoopingCall(self.beat)
        self._loop.clock = self._reactor
        self._loop.start(self._interval, now=True).addErrback(
            lambda f: self.log.failure("the heartbeat loop stopped", f))

    def stopService(self):
        """
        Stop beating, give up a heartbeat in flight and close the pool.

        @return: a Deferred firing when pooled connections are closed.
        """
        super().stopService()
        self._loop.stop()
        if self._pending is not None:
            self._pending.cancel()
        if self._pool is None:
            return succeed(None)
        pool, self._pool = self._pool, None
        return pool.closeCachedConnections()

    def beat(self):
        """
        Send one heartbeat now.

        @return: a Deferred firing with None once it was answered, refused,
            failed or timed out; it never fails.
        """
        try:
            report = self._report()
        except Exception as e:  # Unavailable until the store is open
            self._trouble("not sending heartbeats: {error!r}", e)
            return succeed(None)
        self._pending = Deferred.fromCoroutine(self._send(report))
        self._pending.addTimeout(self._timeout, self._reactor, onTimeoutCancel=_no_answer)
        return self._pending.addCallbacks(self._answered, self._failed,
                                          callbackArgs=(report["damaged"],))

    def _report(self):
        status = self._store.status()
        load = {name: value for name, value in status.get("counters", {}).items()
                if isinstance(value, (int, float)) and not isinstance(value, bool)}
        load["chunks"] = status.get("chunks", 0)
        load["garbage"] = sum(v.get("garbage", 0) for v in status.get("volumes", ()))
        damaged = list(islice(getattr(self._store, "damaged", ()), MAX_DAMAGED_REPORTED))
        report = {
            "damaged": damaged,
            "server_id": self._server_id,
            "group_id": self._group_id,
            "address": self._address,
            "capacity": status["capacity"],
            "used": status["used"],
            "free": status["free"],
            "read_only": bool(status["read_only"]),
            "load": load,
        }
        if self._health is not None:
            report["health"] = self._health
        return report

    async def _send(self, report):
        response = await self._http.post(
            self._url, data=json.dumps(report).encode("utf-8"), headers=self._headers)
        raw = await response.content()
        if response.code != 200:
            raise MasterRefused(f"{response.code} {_error_message(raw)}")
        answer = json.loads(raw)
        return answer["state"], answer["cluster_version"]

    def _answered(self, answer, damaged):
        self._pending = None
        state, self.cluster_version = answer
        if damaged:
            self._store.acknowledge_damaged(damaged)
        if self._failures:
            self.log.info("heartbeats go through again after {count} that did not",
                          count=self._failures)
            self._failures, self._logged_at = 0, None
        if state != self.state:
            self.log.info("the chunkmaster has this server {state}", state=state)
            self.state = state

    def _failed(self, failure):
        self._pending = None
        if not self.running:
            return None  # given up by stopService
        self._trouble("heartbeat to {url} failed: {error}", failure.value, url=self._url.decode())
        return None

    def _trouble(self, message, error, **fields):
        """Count a failed beat; log the first of a run, then once a minute."""
        self._failures += 1
        now = self._reactor.seconds()
        if self._logged_at is None or now - self._logged_at >= LOG_EVERY:
            self._logged_at = now
            self.log.warn(message + " ({count} in a row)", error=error, count=self._failures, **fields)


def _no_answer(result, timeout):
    return Failure(Timeout(f"no answer within {timeout}s"))


def _error_message(raw):
    """@return: the message of a chunkmaster JSON error body, else its start."""
    try:
        return json.loads(raw)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return repr(raw[:200])
