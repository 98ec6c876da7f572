# -*- test-case-name: speedy.test.test_admin -*-
"""
The C{speedy-admin} command line: global options, then one subcommand.

    speedy-admin [--master URL] [--token-file PATH] [--var DIR] [--json] COMMAND ...

A subcommand is a module with an C{Options} class and
C{async def run(client, options, context)} returning the exit code; it is
listed once in L{COMMANDS}.  Exit codes: 0 done, 1 the work found or left
something wrong (e.g. fsck found damage), 2 bad usage, 3 the chunkmaster
refused or could not be reached.
"""

import os
import sys

from attrs import frozen
from twisted.internet.defer import Deferred
from twisted.python import usage

from speedy.admin import gc, healing, health, registry_v1, status, transfers
from speedy.admin.client import AdminClient, AdminError
from speedy.admin.output import dump_json
from speedy.admin.target import TargetError, find_target
from speedy.config import version

#: C{(name, options class, run, one line of help)} of every subcommand.
COMMANDS = [
    ("status", status.StatusOptions, status.run, "servers, groups, state and fill"),
    ("health", health.HealthOptions, health.run,
     "probe every member's /healthz and /readyz; exit code 1 if one is not ready"),
    ("fsck", healing.FsckOptions, healing.fsck, "check every chunk list against the groups"),
    ("repair", healing.RepairOptions, healing.repair, "the repair queue and group rebuilds"),
    ("replace-server", healing.ReplaceOptions, healing.replace_server,
     "put a new server in a lost one's place"),
    ("drain", transfers.DrainOptions, transfers.drain, "move every chunk out of a group"),
    ("rebalance", transfers.RebalanceOptions, transfers.rebalance,
     "move chunks from the fullest group to the emptiest"),
    ("transfers", transfers.TransfersOptions, transfers.transfers,
     "drains and rebalances: progress, cancel"),
    ("registry-v1", registry_v1.RegistryV1Options, registry_v1.run,
     "Docker Registry V1 totals, unfinished pushes"),
    ("gc", gc.GCOptions, gc.run, "garbage collection: a round now, --dry-run, --status"),
]

EXIT_USAGE = 2
EXIT_UNREACHABLE = 3


@frozen
class Context:
    """
    What a subcommand shows its results through.

    @ivar json: whether the operator asked for JSON (C{--json}).
    @ivar out: writes one line to standard output.
    @ivar err: the standard error stream (progress bars draw there).
    @ivar reactor: the reactor, for subcommands that wait or poll.
    """

    json: bool
    out: object
    err: object
    reactor: object

    def show(self, value, render):
        """Print C{value} as JSON, or the lines C{render(value)} makes of it."""
        if self.json:
            self.out(dump_json(value))
        else:
            for line in render(value):
                self.out(line)


class Options(usage.Options):
    synopsis = "[--master URL] [--token-file PATH | --var DIR] [--json] COMMAND [options]"
    longdesc = ("Operate a Speedy cluster through its chunkmaster's admin API.  The admin token "
                "comes from --token-file, $SPEEDY_ADMIN_TOKEN, or a local cluster's state file "
                "(--var), never from the command line.")
    optFlags = [["json", None, "print JSON instead of tables (for scripts)"]]
    optParameters = [
        ["master", "m", None, "the chunkmaster's URL, e.g. http://10.0.0.1:8099"],
        ["token-file", None, None, "a file holding the admin token"],
        ["var", None, None, "a local cluster's directory (speedy-cluster up --var): its "
                            "master and admin token"],
        ["timeout", None, 30.0, "seconds each call to the chunkmaster may take", float],
    ]
    subCommands = [[name, None, options, help] for name, options, _, help in COMMANDS]

    def opt_version(self):
        """Print Speedy's version and exit."""
        print(f"speedy {version()}")
        sys.exit(0)

    def postOptions(self):
        if self.subCommand is None:
            raise usage.UsageError("say which command: " + ", ".join(c[0] for c in COMMANDS))
        if self["master"] is None and self["var"] is None:
            self["var"] = "var"


def _http_client(reactor):
    from treq.client import HTTPClient
    from twisted.web.client import Agent, HTTPConnectionPool

    pool = HTTPConnectionPool(reactor, persistent=False)
    return HTTPClient(Agent(reactor, connectTimeout=5, pool=pool))


async def run(reactor, argv, out=print, err=sys.stderr, environ=None, http=None):
    """
    Run one C{speedy-admin} invocation.

    @return: the exit code.
    """
    options = Options()
    try:
        options.parseOptions(argv)
    except usage.UsageError as e:
        err.write(f"{options}\nspeedy-admin: {e}\n")
        return EXIT_USAGE
    try:
        target = find_target(options["master"], options["token-file"], options["var"],
                             os.environ if environ is None else environ)
    except TargetError as e:
        err.write(f"speedy-admin: {e}\n")
        return EXIT_USAGE
    client = AdminClient(http if http is not None else _http_client(reactor), target,
                         timeout=options["timeout"])
    command = {name: run for name, _, run, _ in COMMANDS}[options.subCommand]
    context = Context(options["json"], out, err, reactor)
    try:
        return await command(client, options.subOptions, context)
    except AdminError as e:
        err.write(f"speedy-admin: {e}\n")
        return EXIT_UNREACHABLE


def main(argv=None):
    """The console script's entry point; exits the process."""
    from twisted.internet import task

    def react_main(reactor):
        d = Deferred.fromCoroutine(run(reactor, sys.argv[1:] if argv is None else argv))
        return d.addCallback(_exit_with)

    task.react(react_main)


def _exit_with(code):
    if code:
        raise SystemExit(code)
