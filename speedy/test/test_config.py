import os
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


class SecretOptions(DaemonOptions):
    section = "role"
    options = [
        Option("token", None, "A secret.", required=True, secret=True, env="SPEEDY_TEST_TOKEN"),
        Option("other", "x", "Not a secret."),
    ]


GOOD = "k3Jd9s-0aLq2vXz8RtYw"


class SecretTests(SynchronousTestCase):
    """Secrets come from files readable by their owner only or the
    environment, never from the command line, and placeholders are
    refused."""

    def setUp(self):
        self.patch(os, "environ", {})

    def write(self, text, mode=0o600):
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(text)
        os.chmod(path, mode)
        return path

    def parse(self, *args):
        options = SecretOptions()
        options.parseOptions(list(args))
        return options

    def refused(self, *args):
        with self.assertRaises(usage.UsageError) as caught:
            self.parse(*args)
        return str(caught.exception)

    def test_from_a_file(self):
        self.assertEqual(self.parse("--token-file", self.write(GOOD + "\n"))["token"], GOOD)

    def test_from_the_environment(self):
        os.environ["SPEEDY_TEST_TOKEN"] = GOOD
        self.assertEqual(self.parse()["token"], GOOD)

    def test_file_before_environment_before_config(self):
        os.environ["SPEEDY_TEST_TOKEN"] = GOOD + "-env"
        config = self.write(f"[role]\ntoken = {GOOD}-config\n")
        self.assertEqual(self.parse("--config", config)["token"], GOOD + "-env")
        self.assertEqual(self.parse("--config", config, "--token-file",
                                    self.write(GOOD + "-file"))["token"], GOOD + "-file")
        del os.environ["SPEEDY_TEST_TOKEN"]
        self.assertEqual(self.parse("--config", config)["token"], GOOD + "-config")
        config = self.write(f"[role]\ntoken_file = {self.write(GOOD + '-named')}\n")
        self.assertEqual(self.parse("--config", config)["token"], GOOD + "-named")

    def test_never_on_the_command_line(self):
        message = self.refused("--token", GOOD)
        self.assertIn("--token-file", message)
        self.assertIn("SPEEDY_TEST_TOKEN", message)
        self.assertNotIn(GOOD, message)

    def test_readable_by_others(self):
        self.assertIn("chmod 600", self.refused("--token-file", self.write(GOOD, 0o644)))
        config = self.write(f"[role]\ntoken = {GOOD}\n", 0o640)
        self.assertIn("chmod 600", self.refused("--config", config))

    def test_placeholders_and_short_secrets(self):
        for text in ["change-me-admin", "change-me-cluster-secret", "short", "an-example-value-to-replace"]:
            self.assertNotIn(text, self.refused("--token-file", self.write(text)))

    def test_required(self):
        self.assertIn("--token", self.refused())

    def test_missing_file(self):
        self.assertIn("--token-file", self.refused("--token-file", self.mktemp()))

    def test_help_names_the_file_option(self):
        out = StringIO()
        self.patch(sys, "stdout", out)
        self.assertRaises(SystemExit, self.parse, "--help")
        self.assertIn("--token-file", out.getvalue())
        self.assertIn("SPEEDY_TEST_TOKEN", out.getvalue())
