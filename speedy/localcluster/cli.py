# -*- test-case-name: speedy.test.test_localcluster -*-
"""
The C{speedy-cluster} command line (C{up}, C{down}, C{status}, C{etc}).
"""

import os
import sys

from twisted.internet.defer import Deferred
from twisted.python import usage

from speedy.config import DaemonOptions
from speedy.units import parse_size
from speedy.localcluster.health import HealthProbe
from speedy.localcluster.plan import (
    DEFAULT_IMAGESERVER_WORKERS, LOCAL_CACHE_SIZE, LOCAL_FILL_SLOTS, LOCAL_STAGED_READ_LIMIT,
    LOCAL_UPLOAD_BACKLOG, SECRETS_DIR,
    ClusterError, ClusterPlan)
from speedy.localcluster.recorded import process_matches, report_status, stop_recorded
from speedy.localcluster.state import read_state
from speedy.localcluster.supervisor import LocalCluster
from speedy.localcluster.tls import LocalTLS
from speedy.localcluster.tokens import write_token_service


def _metrics_port(text):
    """@return: C{--metrics-port}'s port, or None for C{none}."""
    return None if text == "none" else int(text)


class _ClusterOptions(usage.Options):
    optParameters = [["var", None, "var", "directory of the cluster's data, logs and state file"]]


class UpOptions(_ClusterOptions):
    synopsis = "[options]"
    longdesc = ("Start a local cluster and run it in the foreground (in its own terminal, or in the "
                "background with '&' and stopped with 'down'); Ctrl-C or SIGTERM stops every role in "
                "reverse order.  A port of 0 picks free ports.")
    optFlags = [["tls", None, "listen with TLS on the registry ports, with a certificate of a "
                              "throwaway CA made under VAR/tls (the CA, and how to make skopeo "
                              "and podman trust it, are printed)"]]
    optParameters = [
        ["registry", None, "127.0.0.1:5000", "HOST:PORT of the first imageserver's registry; "
                                              "more imageservers take the following ports"],
        ["chunkservers", None, 3, "number of chunkservers", int],
        ["imageservers", None, 1, "number of imageservers", int],
        ["imageserver-workers", None, DEFAULT_IMAGESERVER_WORKERS,
         "imageserver processes sharing each registry port (SO_REUSEPORT; Linux)", int],
        ["group-size", None, 3, "chunkservers per replica group", int],
        ["master-port", None, 8099, "chunkmaster port", int],
        ["chunkserver-port", None, 8001, "first chunkserver port", int],
        ["metrics-port", None, 0, "first port of the --metrics listeners every chunkserver "
         "and every imageserver worker gets (/metrics, /healthz, /readyz; chunkservers first, "
         "then the workers); 0 picks free ports, none gives them none", _metrics_port],
        ["chunk-size", None, None, "imageserver chunk size (e.g. 4MiB)", parse_size],
        ["volume-size", None, "256MiB", "size of each chunkserver volume file (sparse)", parse_size],
        ["cache-size", None, LOCAL_CACHE_SIZE, "memory cache of each chunkserver, reserved at "
         "its start (a workstation's default; the chunkserver's own is 512MiB)", parse_size],
        ["staged-read-limit", None, LOCAL_STAGED_READ_LIMIT, "memory each chunkserver's large "
         "GETs may hold to send from (a workstation's default; the chunkserver's own is 64MiB)",
         parse_size],
        ["fill-slots", None, LOCAL_FILL_SLOTS, "uploads each imageserver process takes bytes "
         "into a chunk for at once (a workstation's default; the imageserver's own is 8)", int],
        ["upload-backlog", None, LOCAL_UPLOAD_BACKLOG, "bytes of uploads' whole chunks waiting "
         "for their replicas above which an imageserver process starts no new chunk (a "
         "workstation's default; the imageserver's own is 0, no limit)", parse_size],
        ["replication", None, None, "how imageservers replicate chunks: fanout or chain "
         "[default: the imageserver's]"],
        ["request-metrics", None, None, "imageservers count and time every request for "
         "/metrics: on or off [default: the imageserver's, on]"],
        ["heartbeat-interval", None, 1.0, "chunkserver heartbeat interval, seconds", float],
        ["htpasswd", None, None, "imageservers take HTTP Basic credentials of this htpasswd "
         "file (bcrypt, htpasswd -B) and refuse anonymous requests [default: no auth]"],
        ["access", None, None, "with --htpasswd: TOML file of allow rules (docs/security.md)"],
        ["auth", None, None, "none, htpasswd (the users of --htpasswd log in with HTTP "
         "Basic) or token (Docker bearer tokens from an embedded token service on the first "
         "imageserver, logging in the users of --htpasswd: its signing key and configuration "
         "are made under VAR/secrets) [default: htpasswd with --htpasswd, else none]"],
        ["auth-token", None, None, "imageservers take Docker bearer tokens: their token "
         "configuration (TOML, docs/security.md; a key pair of yours)"],
        ["scrub-rate", None, None, "bytes a second each chunkserver's scrubber checks (e.g. 8MiB; "
         "0 turns it off) [default: the chunkserver's]", parse_size],
        ["scrub-period", None, None, "time between the starts of scrub passes (e.g. 1s: scrub "
         "without pause, 7d) [default: the chunkserver's]"],
        ["gc-grace", None, None, "how old garbage chunks are when the chunkmaster deletes them "
         "(e.g. 60s) [default: the chunkmaster's, 1h]"],
        ["gc-sweep-grace", None, None, "how long a blob no manifest references waits before "
         "the chunkmaster's collector deletes it (e.g. 60s) [default: the chunkmaster's, 1h]"],
        ["start-timeout", None, 60.0, "seconds each role has to become healthy", float],
        ["db", None, None, "metadata store URL every role shares, e.g. "
         "mysql://root@127.0.0.1:3306/speedy (default: sqlite:VAR/metadata.sqlite)"],
    ]

    def postOptions(self):
        db = self["db"]
        if self["replication"] not in (None, "fanout", "chain"):
            raise usage.UsageError(f"--replication is fanout or chain, not {self['replication']!r}")
        if self["request-metrics"] not in (None, "on", "off"):
            raise usage.UsageError(
                f"--request-metrics is on or off, not {self['request-metrics']!r}")
        auth = self["auth"]
        if auth is None:
            auth = "htpasswd" if self["htpasswd"] is not None else "none"
        if auth not in ("none", "htpasswd", "token"):
            raise usage.UsageError(f"--auth is none, htpasswd or token, not {auth!r}")
        if auth in ("htpasswd", "token") and self["htpasswd"] is None:
            raise usage.UsageError(f"--auth {auth} needs --htpasswd FILE: the users who log in")
        if auth == "none" and self["htpasswd"] is not None:
            raise usage.UsageError("--auth none and --htpasswd: say which")
        if auth == "token" and self["auth-token"] is not None:
            raise usage.UsageError("--auth token makes its own token configuration: "
                                   "leave out --auth-token")
        self["auth"] = auth
        if db is not None and not db.startswith(("sqlite:", "mysql://", "memory:")):
            raise usage.UsageError(f"--db must be sqlite:PATH or mysql://..., not {db!r}")


class Options(usage.Options):
    synopsis = "up|down|status|etc [--var DIR] [options]"
    longdesc = "Start, inspect and stop a Speedy cluster on this machine (what make run runs)."
    subCommands = [
        ["up", None, UpOptions, "start a local cluster and run it until Ctrl-C"],
        ["down", None, _ClusterOptions, "stop the cluster recorded under --var"],
        ["status", None, _ClusterOptions, "show each role's pid and health"],
        ["etc", None, usage.Options, "print the directory of the sample configuration files "
                                      "and systemd units"],
    ]

    opt_version = DaemonOptions.opt_version

    def postOptions(self):
        if self.subCommand is None:
            raise usage.UsageError("say up, down, status or etc")


def _say(line):
    print(line, flush=True)


def _http_client(reactor, ca=None):
    """@return: a treq client for health checks; with C{ca} (a PEM file)
    it trusts the certificates that CA signed."""
    from treq.client import HTTPClient
    from twisted.internet.ssl import Certificate
    from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool

    policy = BrowserLikePolicyForHTTPS()
    if ca is not None:
        with open(ca, "rb") as f:
            policy = BrowserLikePolicyForHTTPS(trustRoot=Certificate.loadPEM(f.read()))
    return HTTPClient(Agent(reactor, contextFactory=policy, connectTimeout=2,
                            pool=HTTPConnectionPool(reactor, persistent=False)))


async def _run_up(reactor, var, options):
    tls = None
    if options["tls"]:
        host = options["registry"].rpartition(":")[0]
        tls = LocalTLS(os.path.join(os.path.abspath(var), "tls")).make(hosts=(host,))
    token = options["auth"] == "token"
    plan = ClusterPlan.build(tls=tls,
        var=var, registry=options["registry"], master_port=options["master-port"],
        chunkserver_port=options["chunkserver-port"], chunkservers=options["chunkservers"],
        metrics_port=options["metrics-port"],
        imageservers=options["imageservers"], imageserver_workers=options["imageserver-workers"],
        group_size=options["group-size"],
        chunk_size=options["chunk-size"], volume_size=parse_size(options["volume-size"]),
        cache_size=options["cache-size"], staged_read_limit=options["staged-read-limit"],
        fill_slots=options["fill-slots"], upload_backlog=options["upload-backlog"],
        heartbeat_interval=options["heartbeat-interval"], db=options["db"],
        scrub_rate=options["scrub-rate"], scrub_period=options["scrub-period"],
        gc_grace=options["gc-grace"], gc_sweep_grace=options["gc-sweep-grace"],
        htpasswd=None if token else options["htpasswd"],
        access=None if token else options["access"],
        token_config=(os.path.join(os.path.abspath(var), SECRETS_DIR, "token.toml") if token
                      else options["auth-token"]),
        replication=options["replication"], request_metrics=options["request-metrics"])
    existing = read_state(var)
    if existing is not None and (
            process_matches(existing["supervisor_pid"], "speedy")
            or any(process_matches(r["pid"], r["plugin"]) for r in existing["roles"])):
        raise ClusterError(f"a cluster already runs under {plan.var}: 'down' it first")
    ca = None if tls is None else tls.ca_certificate
    if token:
        realm = f"{plan.registry_scheme}://{plan.registries[0]}/token"
        write_token_service(os.path.dirname(plan.token_config), realm,
                            options["htpasswd"], options["access"])
    cluster = LocalCluster(reactor, plan, HealthProbe(reactor, _http_client(reactor, ca)), _say,
                           start_timeout=options["start-timeout"])
    stopped = Deferred()

    def shutting_down():
        # Before the reactor stops (Ctrl-C, SIGTERM): stop the roles in order.
        d = cluster.down()
        d.addCallback(lambda _: stopped.callback(None))
        return d

    reactor.addSystemEventTrigger("before", "shutdown", shutting_down)
    await cluster.up()
    if token:
        cert_dir = "" if tls is None else f" --cert-dir {tls.ca_dir}"
        _say(f"bearer tokens from the token service at {plan.registry_scheme}://"
             f"{plan.registries[0]}/token for the users of {options['htpasswd']} (its signing key "
             f"and configuration: {os.path.dirname(plan.token_config)}): "
             f"podman login{cert_dir} {plan.registries[0]}, or skopeo --creds USER:PASSWORD")
    elif plan.token_config is not None:
        _say(f"bearer tokens as {plan.token_config} says: log in first (podman login)")
    elif plan.htpasswd is None:
        _say(f"no authentication: anyone who reaches {plan.host} may push, pull and delete "
             "(--htpasswd FILE turns it on)")
    else:
        _say(f"users from {plan.htpasswd}: log in first (podman login, skopeo --creds)")
    _say("Ctrl-C (or 'speedy-cluster down') stops the cluster")
    await stopped


def samples_directory():
    """
    @return: where the sample configuration files and systemd units are:
        C{etc/} of the source tree Speedy runs from, else C{share/speedy/etc}
        under the installation's prefix (where C{pip install} puts them).
    """
    here = os.path.dirname(os.path.abspath(__file__))
    for candidate in (os.path.join(os.path.dirname(os.path.dirname(here)), "etc"),
                      os.path.join(sys.prefix, "share", "speedy", "etc")):
        if os.path.isfile(os.path.join(candidate, "chunkserver.ini")):
            return candidate
    raise SystemExit("speedy-cluster: the sample configuration files are not installed")


def main(argv=None, reactor=None):
    """Run the C{speedy-cluster} command line (C{sys.argv} by default);
    exits the process."""
    if argv is None:
        argv = sys.argv[1:]
    from twisted.internet import task

    options = Options()
    try:
        options.parseOptions(argv)
    except usage.UsageError as e:
        print(f"{options}\nspeedy-cluster: {e}", file=sys.stderr)
        sys.exit(2)
    command = options.subCommand
    if command == "etc":
        print(samples_directory())
        sys.exit(0)
    var = options.subOptions["var"]

    async def run(reactor):
        try:
            if command == "up":
                await _run_up(reactor, var, options.subOptions)
                return 0
            if command == "down":
                await stop_recorded(reactor, var, _say)
                return 0
            state = read_state(var) or {}
            probe = HealthProbe(reactor, _http_client(reactor, state.get("tls_ca")))
            return await report_status(var, probe, _say)
        except ClusterError as e:
            print(f"speedy-cluster: {e}", file=sys.stderr)
            return 1

    def react_main(reactor):
        return Deferred.fromCoroutine(run(reactor)).addCallback(_exit_with)

    task.react(react_main, [], _reactor=reactor)


def _exit_with(code):
    if code:
        raise SystemExit(code)
