"""
Tests for L{speedy.logs}: the JSON lines observer, C{--log-format} on every
role, and request ids.
"""

import io
import json

from twisted.application.service import Application
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import ILogObserver, LogPublisher, Logger
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from speedy.logs import (
    JSON_KEYS, MAX_REQUEST_ID, JSONLinesObserver, LogBudget, new_request_id, request_id,
    run_as, sane_request_id, twistd_log_file, with_log_format)


def _logged(role="imageserver", pid=7):
    """@return: (a Logger publishing to a L{JSONLinesObserver}, its output)."""
    out = io.StringIO()
    publisher = LogPublisher(JSONLinesObserver(out, role, pid=pid))
    return Logger(namespace="speedy.test", observer=publisher), out


def _lines(out):
    text = out.getvalue()
    self_check = text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()], self_check


class JSONLinesObserverTests(SynchronousTestCase):
    def test_provides(self):
        verifyObject(ILogObserver, JSONLinesObserver(io.StringIO(), "chunkserver"))

    def test_fields(self):
        """Each event is one line holding exactly the fixed keys, the
        message formatted."""
        log, out = _logged()
        log.warn("chunk {file_id} is gone from {server}", file_id=42, server="a:1")
        (line,), ended = _lines(out)
        self.assertTrue(ended)
        self.assertEqual(tuple(line), JSON_KEYS)
        self.assertEqual(line["level"], "warn")
        self.assertEqual(line["role"], "imageserver")
        self.assertEqual(line["pid"], 7)
        self.assertEqual(line["namespace"], "speedy.test")
        self.assertEqual(line["message"], "chunk 42 is gone from a:1")
        self.assertIsNone(line["request_id"])
        self.assertIsNone(line["failure"])
        self.assertRegex(line["time"], r"\A\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z\Z")

    def test_one_object_per_line(self):
        """A message with newlines stays one line."""
        log, out = _logged()
        log.info("one\ntwo")
        log.error("three")
        lines, _ = _lines(out)
        self.assertEqual([line["message"] for line in lines], ["one\ntwo", "three"])
        self.assertEqual(out.getvalue().count("\n"), 2)

    def test_failure(self):
        """A failure's traceback is in C{failure}, its message in
        C{message}."""
        log, out = _logged()
        try:
            1 / 0
        except ZeroDivisionError:
            log.failure("dividing {what} failed", Failure(), what="one")
        (line,), _ = _lines(out)
        self.assertEqual(line["level"], "critical")
        self.assertEqual(line["message"], "dividing one failed")
        self.assertIn("ZeroDivisionError", line["failure"])
        self.assertIn("Traceback", line["failure"])

    def test_request_id_field(self):
        """A C{request_id} field of the event is its request id."""
        log, out = _logged()
        log.info("GET of chunk {file_id}", file_id=1, request_id="abc-1")
        (line,), _ = _lines(out)
        self.assertEqual(line["request_id"], "abc-1")

    def test_request_id_context(self):
        """A line logged while a request id is current carries it."""
        log, out = _logged()
        token = request_id.set("ctx-9")
        try:
            log.info("inside")
        finally:
            request_id.reset(token)
        log.info("outside")
        lines, _ = _lines(out)
        self.assertEqual([line["request_id"] for line in lines], ["ctx-9", None])

    def test_odd_fields(self):
        """Fields JSON cannot hold, and a format that does not format,
        still make a line."""
        log, out = _logged()
        log.info("{thing} {missing}", thing=object())
        (line,), _ = _lines(out)
        self.assertIn("Unable to format event", line["message"])

    def test_legacy_events(self):
        """Events from twisted.python.log (twisted.web's access log), as
        the legacy bridge hands them on, come out in the same shape."""
        from twisted.logger import LogLevel
        out = io.StringIO()
        JSONLinesObserver(out, "chunkmaster", pid=1)({
            "log_format": "{log_text}", "log_text": "127.0.0.1 - GET /v1/cluster 200",
            "log_system": "-", "log_level": LogLevel.info, "log_time": 0.0,
            "message": ("127.0.0.1 - GET /v1/cluster 200",), "isError": 0})
        (line,), _ = _lines(out)
        self.assertEqual(line["message"], "127.0.0.1 - GET /v1/cluster 200")
        self.assertEqual(line["namespace"], "-")
        self.assertEqual(line["time"], "1970-01-01T00:00:00.000Z")


class RequestIdTests(SynchronousTestCase):
    def test_new(self):
        rid = new_request_id()
        self.assertEqual(sane_request_id(rid), rid)
        self.assertNotEqual(rid, new_request_id())

    def test_sane(self):
        for good in ["a", "0f-1.2:3_x", "A" * MAX_REQUEST_ID, b"bytes-ok"]:
            self.assertEqual(sane_request_id(good),
                             good.decode() if isinstance(good, bytes) else good)
        for bad in [None, "", "A" * (MAX_REQUEST_ID + 1), "a b", "a\nb", "é", b"\xff",
                    "x\"}", "a/b"]:
            self.assertIsNone(sane_request_id(bad), bad)


class _Parent(dict):
    pass


class LogFormatTests(SynchronousTestCase):
    """C{--log-format} on every role's plugin."""

    def _options(self, module, args):
        options = module.Options()
        options.parseOptions(args)
        return options

    def _roles(self):
        from speedy.chunkmaster import tap as chunkmaster
        from speedy.chunkserver import tap as chunkserver
        from speedy.imageserver import tap as imageserver
        secret = self.mktemp()
        with open(secret, "w") as f:
            f.write("a-cluster-secret-of-some-length")
        import os
        os.chmod(secret, 0o600)
        data = self.mktemp()
        return [
            ("imageserver", imageserver, ["--cluster-secret-file", secret,
                                          "--db", "sqlite:" + self.mktemp()]),
            ("chunkmaster", chunkmaster, ["--cluster-secret-file", secret,
                                          "--db", "sqlite:" + self.mktemp()]),
            ("chunkserver", chunkserver, ["--cluster-secret-file", secret, "--data-dir", data,
                                          "--group-id", "1"]),
        ]

    def test_default_text(self):
        """Without the option, the application gets no observer: twistd
        logs text as it always did."""
        for role, module, args in self._roles():
            options = self._options(module, args)
            self.assertEqual(options["log-format"], "text")
            application = Application(role)
            service = module.makeService(options, reactor=MemoryReactorClock())
            service.setServiceParent(application)
            self.assertIsNone(application.getComponent(ILogObserver, None), role)

    def test_json(self):
        """C{--log-format json} gives twistd's application a
        L{JSONLinesObserver} naming the role."""
        for role, module, args in self._roles():
            options = self._options(module, args + ["--log-format", "json"])
            out = io.StringIO()
            options.parent = _Parent(logfile=None, nodaemon=True)
            application = Application(role)
            service = module.makeService(options, reactor=MemoryReactorClock())
            observer = application.getComponent(ILogObserver, None)
            self.assertIsNone(observer)
            service.setServiceParent(application)
            observer = application.getComponent(ILogObserver)
            self.assertIsInstance(observer, JSONLinesObserver)
            observer._out = out
            Logger(observer=observer).info("hello")
            self.assertEqual(json.loads(out.getvalue())["role"], role)

    def test_bad_format(self):
        from twisted.python.usage import UsageError
        role, module, args = self._roles()[2]
        self.assertRaises(UsageError, self._options, module, args + ["--log-format", "xml"])

    def test_log_file(self):
        """Where twistd would log: stdout with -n and no --logfile (or
        C{-}), else the --logfile."""
        import sys

        class Options(dict):
            pass

        options = Options()
        self.assertIs(twistd_log_file(options), sys.stdout)
        options.parent = _Parent(logfile="-", nodaemon=True)
        self.assertIs(twistd_log_file(options), sys.stdout)
        path = self.mktemp()
        options.parent = _Parent(logfile=path, nodaemon=True)
        f = twistd_log_file(options)
        self.addCleanup(f.close)
        f.write("x\n")
        f.flush()
        with open(path) as g:
            self.assertEqual(g.read(), "x\n")

    def test_with_log_format_text(self):
        """C{text} leaves the service alone."""
        from twisted.application.service import MultiService
        service = MultiService()
        self.assertIs(with_log_format(service, {"log-format": "text"}, "x"), service)
        self.assertNotIn("setServiceParent", service.__dict__)


class RunAsTests(SynchronousTestCase):

    def test_run_as(self):
        """C{run_as} calls under the id and restores the one before; None
        leaves it as it is."""
        self.assertEqual(run_as("r-1", request_id.get), "r-1")
        self.assertIsNone(request_id.get())
        token = request_id.set("outer")
        try:
            self.assertEqual(run_as(None, request_id.get), "outer")
            self.assertEqual(run_as("inner", request_id.get), "inner")
            self.assertEqual(request_id.get(), "outer")
        finally:
            request_id.reset(token)

    def test_restored_on_error(self):
        def boom():
            raise ValueError()
        self.assertRaises(ValueError, run_as, "r-2", boom)
        self.assertIsNone(request_id.get())


class LogBudgetTests(SynchronousTestCase):

    def test_burst_then_held(self):
        """C{burst} lines go per interval; the rest are held back and
        counted; the first line of the next interval says how many."""
        clock = MemoryReactorClock()
        budget = LogBudget(clock, burst=3, interval=10.0)
        self.assertEqual([budget.take() for _ in range(5)], [0, 0, 0, None, None])
        clock.advance(9.9)
        self.assertIsNone(budget.take())
        clock.advance(0.1)
        self.assertEqual(budget.take(), 3)
        self.assertEqual(budget.take(), 0)
        self.assertEqual(LogBudget.more(3), " (3 more like it not logged)")
        self.assertEqual(LogBudget.more(0), "")

    def test_default_clock(self):
        """Without a clock it keeps time with C{time.monotonic}."""
        budget = LogBudget(burst=1)
        self.assertEqual(budget.take(), 0)
        self.assertIsNone(budget.take())
