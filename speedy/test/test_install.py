"""
End-to-end test of installing Speedy as software: a wheel built from this
tree, installed with pip into a fresh virtualenv (not this checkout, not
editable), gives daemons that start, the console scripts, and the sample
configuration files and systemd units where C{speedy-cluster etc} says.
"""

import atexit
import glob
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile

from twisted.trial.unittest import SkipTest, TestCase

from speedy.test.util import TEST_SECRET

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir, os.pardir))


def run(argv, **kwargs):
    return subprocess.run(argv, capture_output=True, text=True, timeout=300, **kwargs)


class Installation:
    """A wheel of this tree installed into a fresh virtualenv (made once per
    test process, removed when it exits)."""

    _made = None

    @classmethod
    def get(cls):
        if cls._made is None:
            cls._made = cls()
        if isinstance(cls._made, Exception):
            raise cls._made
        return cls._made

    def __init__(self):
        try:
            self._make()
        except Exception as e:
            Installation._made = e
            raise

    def _make(self):
        cls = self
        cls.work = tempfile.mkdtemp(prefix="speedy-install-")
        atexit.register(shutil.rmtree, cls.work, True)
        wheels = os.path.join(cls.work, "wheels")
        # Built from a copy of the tree: a build writes build/ and *.egg-info
        # beside the sources, and trial -j runs this in several processes.
        source = os.path.join(cls.work, "source")
        shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
            ".git", ".venv", "_trial_temp*", "build", "*.egg-info", "var", "__pycache__",
            ".hypothesis", "dropin.cache"))
        built = run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                     "--no-build-isolation", "--wheel-dir", wheels, source], cwd=cls.work)
        if built.returncode:
            raise AssertionError(f"building the wheel failed:\n{built.stdout}{built.stderr}")
        cls.venv = os.path.join(cls.work, "venv")
        made = run([sys.executable, "-m", "venv", cls.venv])
        if made.returncode:
            raise SkipTest(f"cannot make a virtualenv here: {made.stderr}")
        # Speedy's dependencies come from this environment's site-packages (a
        # path, so its .pth files, this checkout's editable install among
        # them, are not read); Speedy itself only from the wheel.
        site = run([os.path.join(cls.venv, "bin", "python"), "-c",
                    "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip()
        with open(os.path.join(site, "deps.pth"), "w") as f:
            f.write(sysconfig.get_paths()["purelib"] + "\n")
        [wheel] = glob.glob(os.path.join(wheels, "speedy-*.whl"))
        installed = run([os.path.join(cls.venv, "bin", "python"), "-m", "pip", "install",
                         "--quiet", "--no-deps", "--no-index", wheel])
        if installed.returncode:
            raise AssertionError(f"pip install failed:\n{installed.stdout}{installed.stderr}")



class InstalledTests(TestCase):

    def setUp(self):
        installation = Installation.get()
        self.work, self.venv = installation.work, installation.venv

    def venv_run(self, *argv):
        """Run C{argv} with the new virtualenv's bin first, away from this
        tree, with a cluster secret in the environment as a service manager
        would give it."""
        env = dict(os.environ, PATH=os.path.join(self.venv, "bin") + os.pathsep + os.environ["PATH"],
                   SPEEDY_CLUSTER_SECRET=TEST_SECRET)
        env.pop("PYTHONPATH", None)
        return run(list(argv), cwd=self.work, env=env)

    def twistd(self, *argv):
        return self.venv_run(os.path.join(self.venv, "bin", "python"), "-c",
                             "from twisted.scripts.twistd import run; run()", *argv)

    def test_speedy_comes_from_the_wheel(self):
        done = self.venv_run(os.path.join(self.venv, "bin", "python"), "-c",
                             "import speedy; print(speedy.__file__)")
        self.assertTrue(done.stdout.startswith(self.venv), done.stdout + done.stderr)

    def test_daemons(self):
        """Each role's twistd plugin is installed: its help and version."""
        for plugin in ("speedy-chunkmaster", "speedy-chunkserver", "speedy-imageserver"):
            done = self.twistd(plugin, "--help")
            self.assertEqual(done.returncode, 0, done.stdout + done.stderr)
            self.assertIn("--listen", done.stdout)
            version = self.twistd(plugin, "--version")
            self.assertEqual(version.stdout.strip(), "speedy 0.1.0", version.stderr)

    def test_console_scripts(self):
        """speedy-cluster, speedy-migrate and speedy-admin are on the PATH,
        and print Speedy's version."""
        for script, words in (("speedy-cluster", "up|down|status"), ("speedy-migrate", "--db"),
                              ("speedy-admin", "status")):
            done = self.venv_run(script, "--help")
            self.assertEqual(done.returncode, 0, done.stdout + done.stderr)
            self.assertIn(words, done.stdout)
            version = self.venv_run(script, "--version")
            self.assertEqual(version.stdout.strip(), "speedy 0.1.0", version.stderr)

    def test_dashboard_assets(self):
        """The dashboard's page, stylesheet and script are installed with
        the package (not only in a checkout)."""
        done = self.venv_run(
            os.path.join(self.venv, "bin", "python"), "-c",
            "import os, speedy.monitoring.dashboard as d; print(d.ASSETS); "
            "print(' '.join(sorted(os.listdir(d.ASSETS))))")
        where, names = done.stdout.strip().splitlines()
        self.assertTrue(where.startswith(self.venv), where + done.stderr)
        self.assertEqual(names, "dashboard.css dashboard.js index.html")

    def test_sample_files(self):
        """C{speedy-cluster etc} names the installed sample configurations and
        systemd units, which the daemons accept."""
        done = self.venv_run("speedy-cluster", "etc")
        etc = done.stdout.strip()
        self.assertTrue(etc.startswith(self.venv), etc + done.stderr)
        self.assertEqual(
            sorted(os.listdir(etc)),
            ["chunkmaster.ini", "chunkserver.ini", "grafana-speedy.json", "imageserver.ini",
             "prometheus.yml", "systemd"])
        self.assertEqual(
            sorted(os.listdir(os.path.join(etc, "systemd"))),
            ["speedy-chunkmaster.service", "speedy-chunkserver@.service",
             "speedy-imageserver@.service"])
        for role in ("chunkmaster", "chunkserver", "imageserver"):
            parsed = self.venv_run(
                os.path.join(self.venv, "bin", "python"), "-c",
                f"import sys; from speedy.{role}.tap import Options; "
                "Options().parseOptions(['--config', sys.argv[1]])",
                os.path.join(etc, f"{role}.ini"))
            self.assertEqual(parsed.returncode, 0, parsed.stdout + parsed.stderr)
