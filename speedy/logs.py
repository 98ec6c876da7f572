# -*- test-case-name: speedy.test.test_logs -*-
"""
How the daemons log: C{--log-format text} (twistd's own lines, the
default) or C{--log-format json}, and the request id that ties one
operation's lines together across daemons.

JSON logs are one object per line (JSON Lines), every role with the same
keys:

    {"time": "2026-12-05T13:20:01.123Z", "level": "info", "role": "chunkserver",
     "pid": 4242, "namespace": "speedy.chunkserver.protocol",
     "message": "GET of chunk 42 failed: CHUNK_NOT_FOUND no chunk 42",
     "request_id": "5f0c1d2e3a4b5c6d", "failure": null}

C{time} is UTC with milliseconds; C{level} is twisted.logger's level name
(C{debug}, C{info}, C{warn}, C{error}, C{critical}); C{request_id} is the
id of the HTTP request (or wire request) the line is about, or null;
C{failure} is the traceback text of a failure logged with it, else null.
No other key appears: the schema is flat and fixed, so C{jq 'select(
.request_id == "...")'}, Loki or Elasticsearch read every role's lines
alike.  Twisted's own C{jsonFileLogObserver} was not taken: it writes
every key of the event (its format string, its namespace object,
C{log_level} as a nested object, whatever fields the emitter passed, with
names that vary from line to line) behind an RS byte (RFC 7464), which
the usual line-oriented tools do not read.

The request id: each HTTP request of the imageserver and the chunkmaster
gets one (L{sane_request_id} of its C{X-Request-Id}, else
L{new_request_id}), answers it in C{X-Request-Id} and in its error body,
and runs under it (L{request_id}, a context variable: Twisted runs a
coroutine in the context it was started in, so everything the request's
handler calls, and every line it logs, sees it).  The imageserver's calls
to chunkservers carry it on the wire (a request's I{trace}, protocol.md)
and its calls to the chunkmaster in C{X-Request-Id}, so the chunkserver's
lines about the operation carry the same id (and a chunkserver forwarding
a chain passes it on).

A callback runs in the context of whatever fired it (a chunkserver's
answer, a connection's bytes, another request's handler), not of the
request that set it up.  So what a request starts to run later takes the
id when it is made and runs its pieces under it with L{run_for}: a body's
chunk writer, a download's reader, a body sink (chosen under the id when
the headers arrive).  Work for no request (the chunkmaster's repairs,
collector and fsck) runs under None, whatever request kicked it; a
transfer runs under its own id.
"""

import contextvars
import json
import os
import re
import secrets
import sys
import time
from datetime import datetime, timezone

from twisted.logger import ILogObserver, formatEvent
from zope.interface import implementer

from speedy.config import Option, choice

#: The formats of C{--log-format}.
LOG_FORMATS = ("text", "json")

#: The longest request id taken from a client (or a peer); longer ones are
#: replaced by a new one.
MAX_REQUEST_ID = 64

_SANE = re.compile(r"[A-Za-z0-9._:\-]{1,%d}\Z" % MAX_REQUEST_ID)

#: The id of the request the running code serves, or None.
request_id = contextvars.ContextVar("speedy_request_id", default=None)

#: The keys of every JSON line, in order.
JSON_KEYS = ("time", "level", "role", "pid", "namespace", "message", "request_id", "failure")


def new_request_id():
    """@return: a fresh request id: 16 random hex digits."""
    return secrets.token_hex(8)


def sane_request_id(value):
    """
    @param value: a request id from outside (str or bytes, or None).
    @return: it as str when it is 1 to L{MAX_REQUEST_ID} characters of
        letters, digits and C{. _ : -} (it goes into log lines, headers
        and wire frames as it is), else None.
    """
    if value is None:
        return None
    if isinstance(value, bytes):
        try:
            value = value.decode("ascii")
        except UnicodeDecodeError:
            return None
    return value if _SANE.match(value) else None


def run_as(rid, f, *args, **kwargs):
    """
    @param rid: a request id, or None.
    @return: C{f(*args, **kwargs)}, called with C{rid} as the current
        L{request_id} (a coroutine wrapped there runs under it to its end;
        a chunk client's request made there carries it); with None, called
        as it is.
    """
    if rid is None:
        return f(*args, **kwargs)
    return run_for(rid, f, *args, **kwargs)


def run_for(rid, f, *args, **kwargs):
    """
    Like L{run_as}, but None too is set: C{f(*args, **kwargs)} runs for the
    request C{rid}, or for no request, whatever request the caller's code
    ran for.  For work started from a callback, which runs in the context
    of whatever fired it (a chunkserver's answer, another request's
    handler, the reactor's loop), on behalf of a request known beforehand:
    a writer's chunks, a reader's fetches, a chunkmaster job.

    @return: C{f(*args, **kwargs)}.
    """
    token = request_id.set(rid)
    try:
        return f(*args, **kwargs)
    finally:
        request_id.reset(token)


class LogBudget:
    """
    At most C{burst} log lines of one kind per C{interval} seconds: what a
    peer can cause by sending garbage (refused handshakes, refused
    credentials) must not let a flood of it fill the disk.  The lines held
    back are counted, and the next line that goes through says how many.

        budget = LogBudget(reactor)
        held = budget.take()
        if held is not None:
            log.warn("refused ...{more}", more=LogBudget.more(held), ...)

    @param clock: an C{IReactorTime} (its C{seconds}); None for
        C{time.monotonic}.
    """

    def __init__(self, clock=None, burst=20, interval=10.0):
        self._clock = clock
        self.burst = burst
        self.interval = interval
        self._window = None  # when the current window began
        self._spent = 0  # lines logged in it
        self.held = 0  # lines held back since the last one logged

    def take(self):
        """
        @return: None when this line must not be logged (it is counted),
            else the number of lines held back before it (usually 0).
        """
        now = self._clock.seconds() if self._clock is not None else time.monotonic()
        if self._window is None or now - self._window >= self.interval:
            self._window, self._spent = now, 0
        if self._spent >= self.burst:
            self.held += 1
            return None
        self._spent += 1
        held, self.held = self.held, 0
        return held

    @staticmethod
    def more(held):
        """@return: the text to end a line with that follows C{held} lines
        held back ("" for none)."""
        return f" ({held} more like it not logged)" if held else ""


def log_format_option():
    """@return: the C{--log-format} L{Option} every role takes."""
    return Option("log-format", "text", "How the log is written: text (twistd's lines) or "
                  "json (one JSON object per line, the same keys in every role; see "
                  "docs/operations.md).", choice(*LOG_FORMATS))


def json_record(event, role, pid):
    """
    @param event: a twisted.logger event.
    @return: the event as the dict of L{JSON_KEYS} its JSON line holds.
    """
    when = datetime.fromtimestamp(event.get("log_time") or 0, timezone.utc)
    level = event.get("log_level")
    failure = event.get("log_failure")
    rid = event.get("request_id") or request_id.get()
    return {
        "time": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "level": getattr(level, "name", "info"),
        "role": role,
        "pid": pid,
        "namespace": event.get("log_namespace") or event.get("log_system") or "-",
        "message": formatEvent(event).rstrip("\n"),
        "request_id": rid if isinstance(rid, str) else None,
        "failure": _traceback(failure) if failure is not None else None,
    }


def _traceback(failure):
    try:
        return failure.getTraceback()
    except Exception:
        return repr(failure)


@implementer(ILogObserver)
class JSONLinesObserver:
    """
    Writes each event as one line of JSON (L{json_record}) to a file and
    flushes it.

    @param out: a text file (C{sys.stdout} or a twistd C{LogFile}), taken
        when the observer is made: twistd redirects C{sys.stdout} into the
        log once logging begins.
    """

    def __init__(self, out, role, pid=None):
        self._out = out
        self._role = role
        self._pid = os.getpid() if pid is None else pid

    def __call__(self, event):
        try:
            line = json.dumps(json_record(event, self._role, self._pid), ensure_ascii=False,
                              default=repr, separators=(",", ":"))
        except Exception as e:  # never lose a line to an odd field
            line = json.dumps({"time": None, "level": "error", "role": self._role,
                               "pid": self._pid, "namespace": "speedy.logs",
                               "message": f"unloggable event: {e!r}", "request_id": None,
                               "failure": None})
        self._out.write(line + "\n")
        self._out.flush()


def twistd_log_file(options):
    """
    @param options: a role's options, parsed under twistd (whose own
        options are C{options.parent}) or not.
    @return: the file twistd would log to: stdout with C{-n} and no
        C{--logfile} (or C{--logfile -}), else the C{--logfile} (by default
        C{twistd.log}) as a twistd C{LogFile}, which rotates as twistd's does.
    """
    parent = getattr(options, "parent", None)
    logfile = parent.get("logfile") if parent is not None else None
    nodaemon = parent.get("nodaemon", True) if parent is not None else True
    if logfile == "-" or (nodaemon and not logfile):
        return sys.stdout
    from twisted.python.logfile import LogFile
    return LogFile.fromFullPath(logfile or "twistd.log")


def with_log_format(service, options, role, out=None):
    """
    Make C{service}, a role's service tree, log as C{--log-format} asks.

    With C{json}, the application twistd puts C{service} in gets a
    L{JSONLinesObserver} as its C{ILogObserver} component, which twistd
    logs to instead of its text observer (C{AppLogger.start} looks for it
    once the service tree is built, before logging begins); C{--logfile}
    and C{-n} choose the file as they would.  With C{text}, nothing
    changes.

    @param out: the file to write to (tests); by default
        L{twistd_log_file}.
    @return: C{service}.
    """
    if options.get("log-format", "text") != "json":
        return service
    observer = JSONLinesObserver(twistd_log_file(options) if out is None else out, role)
    set_parent = service.setServiceParent

    def setServiceParent(parent):
        set_component = getattr(parent, "setComponent", None)
        if set_component is not None:  # twistd's Application
            set_component(ILogObserver, observer)
        return set_parent(parent)

    service.setServiceParent = setServiceParent
    service.log_observer = observer
    return service
