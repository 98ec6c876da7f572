from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from speedy.config import fill_options, positive, read_section


class ConfigTests(SynchronousTestCase):
    def write(self, text):
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_underscores_and_dashes_name_the_same_option(self):
        path = self.write("[role]\nchunk_size = 4MiB\nfile-id-batch = 10\n")
        self.assertEqual(read_section(path, "role", ["chunk-size", "file-id-batch"]),
                         {"chunk-size": "4MiB", "file-id-batch": "10"})

    def test_bad_files_are_usage_errors(self):
        for text in ["[other]\na = 1\n", "[role]\nunknown = 1\n", "no section at all\n", "\xff"]:
            self.assertRaises(usage.UsageError, read_section, self.write(text), "role", ["a"])
        self.assertRaises(usage.UsageError, read_section, self.mktemp(), "role", ["a"])

    def test_command_line_then_config_then_default(self):
        options = {"config": self.write("[role]\nb = from-file\nc = from-file\n"),
                   "a": None, "b": None, "c": "from-command-line"}
        fill_options(options, "role", {"a": "default-a", "b": "default-b", "c": "default-c"})
        self.assertEqual((options["a"], options["b"], options["c"]),
                         ("default-a", "from-file", "from-command-line"))

    def test_positive(self):
        self.assertEqual(positive({"n": "3"}, "n", int), 3)
        self.assertEqual(positive({"n": "0.5"}, "n", float), 0.5)
        for bad in ["0", "-1", "x", "inf", "nan", None]:
            self.assertRaises(usage.UsageError, positive, {"n": bad}, "n", float)
