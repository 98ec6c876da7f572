"""
C{tools/speedy-migrate}, run as an operator runs it.
"""

import os
import sys

from twisted.internet import reactor
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase

from speedy.config import version
from speedy.metadata.schema import SQLITE_MIGRATIONS, latest_version

TOOL = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
    "tools", "speedy-migrate")


async def run_tool(*args):
    """@return: (stdout, stderr, exit code) of the tool run with C{args}."""
    out, err, code = await getProcessOutputAndValue(
        sys.executable, [TOOL, *args], env=os.environ, reactor=reactor)
    return out.decode(), err.decode(), code


class MigrateToolTests(TestCase):
    async def test_migrate_in_steps(self):
        """The tool prints the versions before and after, and stops at --to."""
        url = "sqlite:" + os.path.abspath(self.mktemp() + ".db")
        out, err, code = await run_tool("--db", url, "--to", "1")
        self.assertEqual((out, code), ("schema version before: 0\nschema version after: 1\n", 0),
                         err)
        out, err, code = await run_tool("--db", url)
        self.assertEqual((out, code), ("schema version before: 1\nschema version after: "
                                      f"{latest_version(SQLITE_MIGRATIONS)}\n", 0),
                         err)

    async def test_bad_url(self):
        out, err, code = await run_tool("--db", "memory:")
        self.assertEqual((out, code), ("", 1))
        self.assertIn("only database stores have a schema", err)

    async def test_version(self):
        """C{--version} prints Speedy's version, as the daemons do."""
        out, err, code = await run_tool("--version")
        self.assertEqual((out, code), (f"speedy {version()}\n", 0), err)
