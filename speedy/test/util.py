"""
Helpers the tests share: skipping on a missing outside tool (a failure
under CI=true, where .ci/run must have installed it), the MariaDB URL, and
the secrets of test clusters.
"""

import os
import shutil

from twisted.trial.unittest import SkipTest

IN_CI = os.environ.get("CI") == "true"

#: The cluster secret of test clusters, and their admin token.
TEST_SECRET = "test-cluster-secret-0123456789"
TEST_ADMIN_TOKEN = "test-admin-token-0123456789"


def with_secrets(case, cluster=TEST_SECRET, admin=None):
    """Give the test C{case} an environment holding the cluster secret
    (and the admin token), as daemons read them, for the test's length."""
    env = dict(os.environ, SPEEDY_CLUSTER_SECRET=cluster)
    env.pop("SPEEDY_ADMIN_TOKEN", None)
    if admin is not None:
        env["SPEEDY_ADMIN_TOKEN"] = admin
    case.patch(os, "environ", env)


MYSQL_URL = os.environ.get(
    "SPEEDY_TEST_MYSQL_URL", "mysql://root@127.0.0.1:3306/test")


def skip_or_fail(reason):
    """
    Skip the running test for C{reason}; under CI=true fail it instead,
    because CI provisions every tool a test needs.
    """
    if IN_CI:
        raise AssertionError("CI=true, but: " + reason)
    raise SkipTest(reason)


def require_tool(name):
    """
    @return: the absolute path of the executable C{name}; skip (or fail under
        CI) when it is not installed.
    """
    path = shutil.which(name)
    if path is None:
        skip_or_fail(f"{name} is not installed (Debian package; .ci/run installs it)")
    return path


def require_mysql():
    """
    @return: the MariaDB URL for tests once a connection succeeded; skip (or
        fail under CI) when the server is unreachable.
    """
    import pymysql

    from speedy.metadata.mysql import parse_url

    try:
        pymysql.connect(
            connect_timeout=2, **dict(parse_url(MYSQL_URL), ssl_disabled=True)).close()
    except Exception as e:
        skip_or_fail(f"MariaDB at {MYSQL_URL} is unreachable: {e}")
    return MYSQL_URL


async def connections_closed(site, timeout=5.0):
    """
    Wait until every connection a L{speedy.web.channel.GuardedSite} counts
    has closed on the server side (a connection answered before its body
    closes by lingering: after the client's side does), at most C{timeout}
    seconds.
    """
    from twisted.internet import reactor
    from twisted.internet.task import deferLater
    waited = 0.0
    while site.connections.total and waited < timeout:
        await deferLater(reactor, 0.01, lambda: None)
        waited += 0.01


def watch_intents(metadata, stored_file_ids):
    """
    Wrap C{metadata.record_intents} to note, for each chunk it is given,
    whether a chunkserver already held the chunk at that moment.

    @param stored_file_ids: returns the file ids the chunkservers hold.
    @return: the list it appends C{(file id, already stored, reason)} to.
    """
    record_intents = metadata.record_intents
    seen = []

    def recording(chunks, reason):
        for chunk in chunks:
            seen.append((chunk.file_id, chunk.file_id in stored_file_ids(), reason))
        return record_intents(chunks, reason)
    metadata.record_intents = recording
    return seen
