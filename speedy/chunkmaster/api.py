# -*- test-case-name: speedy.test.test_chunkmaster_api -*-
"""
The chunkmaster's REST API: JSON in and out, JSON errors
(L{speedy.web.json}), routed by L{speedy.web.rest}.
C{docs/chunkmaster-api.yaml} documents every endpoint; L{build_api} is the
table of them:

    /v1/health                              GET     no credentials
    /metrics, /healthz, /readyz             GET     no credentials (L{speedy.monitoring})
    /dashboard, /dashboard/data             GET     no credentials (L{speedy.monitoring.dashboard})
    /v1/heartbeat                           POST    cluster secret
    /v1/cluster[?wait=S]                    GET     cluster secret
    /v1/file-ids                            POST    cluster secret
    /v1/admin/cluster                       GET     admin token
    /v1/admin/servers                       POST    admin token
    /v1/admin/servers/<server_id>           DELETE  admin token
    /v1/admin/servers/<server_id>/drain     POST    admin token
    /v1/admin/servers/<server_id>/replace   POST    admin token
    /v1/admin/groups/<group_id>             PUT     admin token
    /v1/admin/repairs                       GET     admin token
    /v1/admin/repairs                       POST    admin token (work the queue now)
    /v1/admin/fsck                          GET     admin token
    /v1/admin/fsck                          POST    admin token (start a run)
    /v1/admin/registry-v1                   GET     admin token (V1 registry totals)
    /v1/admin/transfers                     GET     admin token (drains, rebalances, progress)
    /v1/admin/transfers                     POST    admin token (start a drain or rebalance)
    /v1/admin/transfers/<transfer_id>       DELETE  admin token (cancel)
    /v1/admin/gc                            GET     admin token (the chunk collector)
    /v1/admin/gc                            POST    admin token (a round now, or a dry run)

A server id or group id that cannot be one is a 404.  Every refused call
is logged (L{log_refusals}); a 500 with its traceback.
"""

import hmac

from twisted.logger import Logger

from speedy import errors
from speedy.chunkmaster import messages
from speedy.records import BadReplica
from speedy.web.json import HTTPError, answer_json_error, json_answer, json_error, read_json
from speedy.web.rest import Answer, Router, cancel_when_gone

log = Logger()

#: The longest a C{GET /v1/cluster?wait=S} long-poll waits.
MAX_WAIT = 30.0


class BearerToken:
    """
    A secret that callers present as C{Authorization: Bearer <secret>},
    compared in constant time.

    @ivar secret: the expected secret, or None when none is configured.
    @ivar required: whether a call is refused (403) when none is configured,
        rather than let through.
    """

    def __init__(self, secret, required):
        self.secret = secret.encode("utf-8") if secret else None
        self.required = required

    def check(self, request):
        """
        @raise HTTPError: 401 if the request lacks the secret or presents
            another one; 403 if a secret is required and none is configured.
        """
        if self.secret is None:
            if self.required:
                raise HTTPError(403, "FORBIDDEN", "admin calls are disabled: no admin token is configured")
            return
        scheme, _, presented = (request.getHeader(b"authorization") or b"").partition(b" ")
        if scheme.lower() != b"bearer" or not hmac.compare_digest(presented.strip(), self.secret):
            raise HTTPError(401, "UNAUTHORIZED", "missing or wrong bearer token",
                            {b"www-authenticate": b"Bearer"})

    def guard(self, handler):
        """@return: C{handler}, run only for a request that passes L{check}."""
        async def guarded(request, **params):
            self.check(request)
            return await handler(request, **params)
        return guarded


def log_refusals(route, handler):
    """A wrapper (L{Router.wrap}) that logs every call refused with a 4xx
    or a 503 (a 500 is logged by the kit, with its traceback)."""
    async def logged(request, **params):
        try:
            return await handler(request, **params)
        except Exception as e:
            refusal = json_error(e)
            if refusal.status != 500:
                log.info("{method} {uri}: {status} {code}: {message}", method=_text(request.method),
                         uri=_text(request.uri), status=refusal.status, code=refusal.code,
                         message=str(refusal))
            raise
    return logged


class ChunkmasterAPI:
    """The handlers of the API over a cluster and the file-id store."""

    def __init__(self, cluster, store, max_file_ids, repairs=None, fsck=None, transfers=None,
                 collector=None, members=None):
        self._transfers = transfers
        self._cluster = cluster
        self._store = store
        self._max_file_ids = max_file_ids
        self._repairs = repairs
        self._fsck = fsck
        self._collector = collector
        self._members = members

    async def health(self, request):
        return json_answer(200, {"ok": True})

    async def heartbeat(self, request):
        """Chunkservers report here every few seconds."""
        report = messages.parse_heartbeat(read_json(request))
        state = await self._cluster.heartbeat(report)
        if self._members is not None:
            self._members.heard(report)
        for file_id in report.damaged:
            # Recorded before the answer: the server forgets them once answered.
            await self._store.record_bad_replica(BadReplica(
                report.server_id, report.group_id, file_id, "damaged on disk"))
        if report.damaged and self._repairs is not None:
            self._repairs.kick()
        return json_answer(200, {"state": state, "cluster_version": self._cluster.version})

    async def cluster_view(self, request):
        """
        The versioned cluster view, with C{ETag: "<version>"}.  A matching
        C{If-None-Match} answers 304, after waiting up to C{?wait=S} seconds
        for a newer version.
        """
        wait = _wait_argument(request)
        known = _etag_version(request.getHeader(b"if-none-match"))
        if known == self._cluster.version and wait > 0:
            await cancel_when_gone(request, self._cluster.wait_for_change(known, wait))
        version = self._cluster.version
        headers = {b"etag": b'"%d"' % (version,), b"cache-control": b"no-cache"}
        if known == version:
            return Answer(304, headers=headers)
        return json_answer(200, self._cluster.view(), headers)

    async def members(self, request):
        """Every member and where its health checks answer
        (L{speedy.monitoring.members})."""
        self._needs(self._members, "member list")
        return json_answer(200, self._members.listing())

    async def file_ids(self, request):
        """Ranges of never-issued file ids, straight from the store."""
        count = min(messages.parse_file_id_count(read_json(request)), self._max_file_ids)
        start, end = await self._store.allocate_file_ids(count)
        return json_answer(200, {"start": start, "end": end})

    async def add_server(self, request):
        server_id, group_id, address = messages.parse_registration(read_json(request))
        server, created = await self._cluster.add_server(server_id, group_id, address)
        return json_answer(201 if created else 200, _server_answer(server))

    async def remove_server(self, request, server_id):
        await self._cluster.remove_server(server_id)
        return Answer(204)

    async def drain_server(self, request, server_id):
        server = await self._cluster.drain_server(server_id)
        return json_answer(200, _server_answer(server))

    async def replace_server(self, request, server_id):
        """C{POST {"server_id", "address"}}: the new server takes the old
        one's place in its group and is rebuilt."""
        new_id, address = messages.parse_replacement(read_json(request))
        server = await self._cluster.replace_server(server_id, new_id, address)
        if self._repairs is not None:
            self._repairs.kick()
        return json_answer(200, dict(_server_answer(server), rebuilding=server.rebuilding))

    async def repairs(self, request):
        """The repair queue, what was done, and the rebuilds."""
        return json_answer(200, await self._repair_status())

    async def run_repairs(self, request):
        """Work the repair queue (and the rebuilds) now."""
        self._needs(self._repairs, "repair")
        self._repairs.kick()
        return json_answer(202, await self._repair_status())

    async def _repair_status(self):
        self._needs(self._repairs, "repair")
        status = await self._repairs.current_status()
        status["lost"] = [s.server_id for s in self._cluster.servers()
                          if self._cluster.is_lost(s.server_id)]
        return status

    async def registry_v1(self, request):
        """The Docker Registry V1 tables at a glance (IV1Tables.v1_summary)."""
        return json_answer(200, await self._store.v1_summary())

    async def gc_status(self, request):
        """The chunk collector: settings, the round in progress, the last."""
        self._needs(self._collector, "garbage collection")
        return json_answer(200, self._collector.status())

    async def run_gc(self, request):
        """C{POST {"dry_run": bool}}: a dry run answers what a round would
        delete now (200); otherwise a round starts (or the one running is
        joined) and the answer is the status (202)."""
        self._needs(self._collector, "garbage collection")
        dry_run = messages.parse_gc(read_json(request))
        if dry_run:
            run = await self._collector.dry_run()
            return json_answer(200, run.as_json())
        self._collector.collect().addErrback(
            lambda f: log.failure("a garbage collection round failed", f))
        return json_answer(202, self._collector.status())

    async def fsck_status(self, request):
        self._needs(self._fsck, "fsck")
        return json_answer(200, self._fsck.status())

    async def start_fsck(self, request):
        self._needs(self._fsck, "fsck")
        repair, verify = messages.parse_fsck(read_json(request))
        if self._fsck.running:
            raise HTTPError(409, "FSCK_RUNNING", "an fsck is running already")
        return json_answer(202, self._fsck.start(repair=repair, verify=verify))

    async def transfers(self, request):
        """Every drain and rebalance with its progress."""
        self._needs(self._transfers, "transfer")
        return json_answer(200, await self._transfers.status())

    async def start_transfer(self, request):
        """C{POST {"kind": "drain", "group_id": N}}, C{{"kind": "drain",
        "server_id": ID}} (drains the server's group) or C{{"kind":
        "rebalance", "spread": 0.1}}."""
        self._needs(self._transfers, "transfer")
        body = read_json(request)
        if not isinstance(body, dict):
            raise HTTPError(400, "BAD_REQUEST", "a JSON object is expected")
        kind = body.get("kind")
        if kind == "drain":
            if "server_id" in body:
                server = self._cluster.server(str(body["server_id"]))
                if server is None:
                    raise HTTPError(404, "UNKNOWN_SERVER", f"no server {body['server_id']!r}")
                group_id = server.group_id
            else:
                group_id = body.get("group_id")
                if not isinstance(group_id, int) or isinstance(group_id, bool) or group_id < 0:
                    raise HTTPError(400, "BAD_REQUEST", "group_id must be a group's number")
            try:
                record = await self._transfers.drain(group_id)
            except errors.BadRequest as e:
                raise HTTPError(409, "CANNOT_DRAIN", str(e))
        elif kind == "rebalance":
            spread = body.get("spread", 0.1)
            if not isinstance(spread, (int, float)) or isinstance(spread, bool) \
                    or not 0 <= spread <= 1:
                raise HTTPError(400, "BAD_REQUEST", "spread must be a ratio from 0 to 1")
            record = await self._transfers.rebalance(float(spread))
            if record is None:
                return json_answer(200, {"balanced": True, "transfer": None})
        else:
            raise HTTPError(400, "BAD_REQUEST", 'kind must be "drain" or "rebalance"')
        return json_answer(202, {"balanced": False, "transfer": _transfer_answer(record)})

    async def cancel_transfer(self, request, transfer_id):
        self._needs(self._transfers, "transfer")
        record = await self._transfers.cancel(transfer_id)
        if record is None:
            raise HTTPError(404, "UNKNOWN_TRANSFER", f"no transfer {transfer_id!r}")
        return json_answer(200, _transfer_answer(record))

    @staticmethod
    def _needs(service, what):
        if service is None:
            raise HTTPError(404, "NOT_FOUND", f"this chunkmaster runs no {what}")

    async def set_group(self, request, group_id):
        """C{PUT {"read_only": bool}} creates the group if needed and sets its flag."""
        read_only = messages.parse_group_update(read_json(request))
        group = await self._cluster.set_group_read_only(group_id, read_only)
        return json_answer(200, {
            "group_id": group.group_id,
            "read_only": group.read_only,
            "writable": self._cluster.writable(group.group_id),
        })


def build_api(cluster, store, cluster_secret=None, admin_token=None, max_file_ids=10000,
              repairs=None, fsck=None, monitoring=None, transfers=None, collector=None,
              dashboard=None, peers=None, members=None):
    """
    @param cluster: the L{speedy.chunkmaster.cluster.Cluster}.
    @param store: the L{speedy.interfaces.IClusterTables} file ids come from
        (and the L{speedy.interfaces.IV1Tables} the V1 totals).
    @param cluster_secret: what heartbeats, view and file-id calls must
        present; None lets them through.
    @param admin_token: what admin calls must present; None refuses them.
    @param max_file_ids: the most file ids one call hands out.
    @param repairs: the L{speedy.chunkmaster.repair.RepairService}, or None.
    @param fsck: the L{speedy.chunkmaster.fsck.FsckRunner}, or None.
    @param monitoring: the L{speedy.monitoring.endpoints.Monitoring} of
        C{/metrics}, C{/healthz} and C{/readyz} (no credentials), or None.
    @param transfers: the L{speedy.chunkmaster.transfer.TransferService}, or None.
    @param collector: the L{speedy.chunkmaster.collector.ChunkCollector},
        or None.
    @param dashboard: the L{speedy.monitoring.dashboard.Dashboard} of
        C{/dashboard} (no credentials), or None.
    @param peers: a L{speedy.monitoring.dashboard.Peers} noting who polls
        C{/v1/cluster}, or None.
    @param members: the L{speedy.monitoring.members.Members} of
        C{/v1/admin/members}, told of each heartbeat, or None.
    @return: the root L{Resource} of the API.
    """
    api = ChunkmasterAPI(cluster, store, max_file_ids, repairs, fsck, transfers, collector,
                         members)
    member = BearerToken(cluster_secret, required=False).guard
    admin = BearerToken(admin_token, required=True).guard
    server = {"server_id": _server_in_path}
    router = Router(answer_json_error)
    router.wrap(log_refusals)
    router.route("GET", "/v1/health", api.health)
    if monitoring is not None:
        monitoring.add_routes(router)
    if dashboard is not None:
        dashboard.add_routes(router)
    router.route("POST", "/v1/heartbeat", member(api.heartbeat))
    router.route("GET", "/v1/cluster", member(_noting(peers, api.cluster_view)))
    router.route("POST", "/v1/file-ids", member(api.file_ids))
    router.route("GET", "/v1/admin/cluster", admin(api.cluster_view))
    router.route("GET", "/v1/admin/members", admin(api.members))
    router.route("POST", "/v1/admin/servers", admin(api.add_server))
    router.route("DELETE", "/v1/admin/servers/{server_id}", admin(api.remove_server), params=server)
    router.route("POST", "/v1/admin/servers/{server_id}/drain", admin(api.drain_server),
                 params=server)
    router.route("POST", "/v1/admin/servers/{server_id}/replace", admin(api.replace_server),
                 params=server)
    router.route("GET", "/v1/admin/repairs", admin(api.repairs))
    router.route("POST", "/v1/admin/repairs", admin(api.run_repairs))
    router.route("GET", "/v1/admin/fsck", admin(api.fsck_status))
    router.route("POST", "/v1/admin/fsck", admin(api.start_fsck))
    router.route("GET", "/v1/admin/registry-v1", admin(api.registry_v1))
    router.route("GET", "/v1/admin/transfers", admin(api.transfers))
    router.route("POST", "/v1/admin/transfers", admin(api.start_transfer))
    router.route("DELETE", "/v1/admin/transfers/{transfer_id}", admin(api.cancel_transfer),
                 params={"transfer_id": str})
    router.route("GET", "/v1/admin/gc", admin(api.gc_status))
    router.route("POST", "/v1/admin/gc", admin(api.run_gc))
    router.route("PUT", "/v1/admin/groups/{group_id}", admin(api.set_group),
                 params={"group_id": _group_in_path})
    return router.resource


def _noting(peers, handler):
    """@return: C{handler}, its callers noted in C{peers} first (if any)."""
    if peers is None:
        return handler

    async def noted(request, **params):
        peers.saw(request)
        return await handler(request, **params)
    return noted


def _server_in_path(text):
    """@return: the server id a path names.  @raise NotFound: it cannot be one."""
    try:
        return messages.parse_server_id(text)
    except errors.BadRequest as e:
        raise errors.NotFound(str(e))


def _group_in_path(text):
    """@return: the group id a path names.  @raise NotFound: it cannot be one."""
    try:
        return messages.parse_group_id(int(text) if text.isascii() and text.isdigit() else None)
    except errors.BadRequest as e:
        raise errors.NotFound(str(e))


def _text(raw):
    return raw.decode("utf-8", "replace")


def _transfer_answer(record):
    return {"transfer_id": record.transfer_id, "kind": record.kind,
            "source_group": record.source_group, "target_groups": list(record.target_groups),
            "state": record.state, "byte_budget": record.byte_budget}


def _server_answer(server):
    return {
        "server_id": server.server_id,
        "group_id": server.group_id,
        "address": server.address,
        "state": server.state,
    }


def _wait_argument(request):
    """@return: the C{wait} query argument in seconds, at most L{MAX_WAIT};
    0 when absent.  @raise BadRequest: it is not a non-negative number."""
    values = request.args.get(b"wait")
    if not values:
        return 0.0
    try:
        wait = float(values[0])
    except ValueError:
        wait = -1.0
    if not 0 <= wait < float("inf"):
        raise errors.BadRequest(f"wait must be a number of seconds, not {values[0]!r}")
    return min(wait, MAX_WAIT)


def _etag_version(header):
    """
    @return: the version an C{If-None-Match} header names (C{"7"} or
        C{W/"7"}; the first of a list), or None.
    """
    if not header:
        return None
    tag = header.split(b",")[0].strip()
    if tag.startswith(b"W/"):
        tag = tag[2:]
    tag = tag.strip(b'"')
    return int(tag) if tag.isdigit() else None
