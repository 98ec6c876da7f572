import subprocess
import sys
from io import StringIO

from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from speedy.config import (
    DaemonOptions, Option, choice, endpoint, http_url, number, positive, read_section, size,
    version)


class RoleOptions(DaemonOptions):
    section = "role"
    options = [
        Option("first", "default-1", "An option."),
        Option("second", "default-2", "Another."),
        Option("third", "default-3", "A third."),
        Option("count", "3", "A count.", positive(int)),
        Option("needed", None, "Must be given.", required=True),
        Option("maybe", None, "May be left out.", positive(int)),
    ]


class ConfigTests(SynchronousTestCase):
    def write(self, text):
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(text)
        return path

    def parse(self, *args):
        options = RoleOptions()
        options.parseOptions(["--needed", "yes", *args])
        return options

    def test_underscores_and_dashes_name_the_same_option(self):
        path = self.write("[role]\nchunk_size = 4MiB\nfile-id-batch = 10\n")
        self.assertEqual(read_section(path, "role", ["chunk-size", "file-id-batch"]),
                         {"chunk-size": "4MiB", "file-id-batch": "10"})

    def test_bad_files_are_usage_errors(self):
        for text in ["[other]\na = 1\n", "[role]\nunknown = 1\n", "no section at all\n", "\xff"]:
            self.assertRaises(usage.UsageError, read_section, self.write(text), "role", ["a"])
        self.assertRaises(usage.UsageError, read_section, self.mktemp(), "role", ["a"])

    def test_command_line_then_config_then_default(self):
        path = self.write("[role]\nsecond = from-file\nthird = from-file\ncount = 7\n")
        options = self.parse("--config", path, "--third", "from-command-line")
        self.assertEqual((options["first"], options["second"], options["third"]),
                         ("default-1", "from-file", "from-command-line"))
        self.assertEqual((options["count"], options["maybe"]), (7, None))

    def test_parsed_values(self):
        """Each value, default included, is parsed; a bad one is a usage
        error that names its option; a required one must be given."""
        self.assertEqual(self.parse()["count"], 3)
        self.assertEqual(self.parse("--maybe", "2")["maybe"], 2)
        for args, name in [(["--count", "0"], "--count"), (["--maybe", "x"], "--maybe"),
                           (["--config", self.write("[role]\ncount = -1\n")], "--count")]:
            e = self.assertRaises(usage.UsageError, self.parse, *args)
            self.assertIn(name, str(e))
        e = self.assertRaises(usage.UsageError, RoleOptions().parseOptions, [])
        self.assertIn("--needed", str(e))

    def test_help_shows_defaults(self):
        text = str(RoleOptions())
        self.assertIn("[default: default-1]", text)
        self.assertIn("--config", text)

    def test_version(self):
        """--version prints Speedy's version and exits."""
        out = StringIO()
        self.patch(sys, "stdout", out)
        self.assertRaises(SystemExit, RoleOptions().parseOptions, ["--version"])
        self.assertEqual(out.getvalue(), f"speedy {version()}\n")
        self.assertRegex(version(), r"^\d+\.\d+\.\d+")

    def test_positive(self):
        self.assertEqual(positive(int)("3"), 3)
        self.assertEqual(positive(float)("0.5"), 0.5)
        for bad in ["0", "-1", "x", "inf", "nan", None]:
            self.assertRaises(ValueError, positive(float), bad)

    def test_parsers(self):
        self.assertEqual(number(int, 0, 3)("0"), 0)
        for bad in ["-1", "4", "2.5"]:
            self.assertRaises(ValueError, number(int, 0, 3), bad)
        self.assertEqual(size(1, 1 << 30)("16MiB"), 16 << 20)
        for bad in ["0", "2GiB", "lots"]:
            self.assertRaises(ValueError, size(1, 1 << 30), bad)
        self.assertEqual(choice("a", "b")("b"), "b")
        self.assertRaises(ValueError, choice("a", "b"), "c")
        self.assertEqual(endpoint("tcp:8000:interface=127.0.0.1"), "tcp:8000:interface=127.0.0.1")
        self.assertRaises(ValueError, endpoint, "nonsense:1")
        self.assertEqual(http_url("https://m:1"), "https://m:1")
        self.assertRaises(ValueError, http_url, "m:1")


class VersionTests(SynchronousTestCase):
    def test_every_role(self):
        """twistd speedy-<role> --version prints Speedy's version, for each role."""
        for role in ("chunkmaster", "chunkserver", "imageserver"):
            done = subprocess.run(
                [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
                 f"speedy-{role}", "--version"], capture_output=True, text=True, timeout=60)
            self.assertEqual((done.returncode, done.stdout), (0, f"speedy {version()}\n"), role)
