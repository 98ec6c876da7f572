"""
End-to-end test of C{speedy-cluster up --db mysql://...}: the local cluster
on MariaDB instead of SQLite, with an image copied in and out with skopeo.
"""

import os

from twisted.trial.unittest import SynchronousTestCase

from speedy.test.test_metadata import new_mysql_database
from speedy.test.test_registry_clients import (
    SharedFixture, SkopeoMixin, SpeedyLocalCluster, _started)
from speedy.test.util import require_mysql


def _cluster_on_mariadb(workdir):
    """A local cluster on a database of its own (the metadata store tests
    empty theirs between tests)."""
    url = new_mysql_database(require_mysql(), f"speedy_cluster_test_{os.getpid()}")
    return _started(SpeedyLocalCluster(workdir, ["--db", url]))


class MariaDBLocalClusterTests(SkopeoMixin, SynchronousTestCase):

    cluster = SharedFixture(_cluster_on_mariadb)

    def test_round_trip(self):
        """An image pushed through one imageserver comes back out of the
        other byte-identical, its metadata in MariaDB (no SQLite file is
        made)."""
        self.copy_in("small", f"{self.first}/mariadb/small:v1")
        target = self.copy_out(f"{self.second}/mariadb/small:v1", "small")
        self.assertSameImage(target, "small")
        self.assertFalse(os.path.exists(os.path.join(self.registry.var, "metadata.sqlite")))
