"""
The metadata schema's pieces that need no database: the migration lists and
the range scan's upper bound.
"""

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from speedy.metadata import schema
from speedy.metadata.sql import prefix_successor

#: Text as the store accepts it: no surrogates, with the highest code points.
texts = st.text(
    alphabet=st.one_of(
        st.characters(blacklist_categories=("Cs",)),
        st.sampled_from(["\U0010ffff", "\ud7ff", "\ue000", "a", "b"])),
    max_size=6)


class PrefixSuccessorTests(SynchronousTestCase):
    """C{path >= p AND path < prefix_successor(p)} selects exactly the paths
    that start with C{p}, in Python's (code point) order and in UTF-8 byte
    order, which both databases use."""

    @given(texts, texts)
    def test_range_is_the_prefix(self, prefix, path):
        upper = prefix_successor(prefix)
        for key in (str, lambda s: s.encode("utf-8")):
            in_range = key(prefix) <= key(path) and (upper is None or key(path) < key(upper))
            self.assertEqual(in_range, path.startswith(prefix))

    def test_unbounded(self):
        self.assertIsNone(prefix_successor(""))
        self.assertIsNone(prefix_successor("\U0010ffff\U0010ffff"))

    def test_examples(self):
        self.assertEqual(prefix_successor("a/"), "a0")
        self.assertEqual(prefix_successor("a\U0010ffff"), "b")
        self.assertEqual(prefix_successor("\ud7ff"), "\ue000")


class MigrationListTests(SynchronousTestCase):
    """Both dialects have the same numbered steps, in order."""

    def test_versions(self):
        for migrations in (schema.SQLITE_MIGRATIONS, schema.MYSQL_MIGRATIONS):
            versions = [version for version, _ in migrations]
            self.assertEqual(versions, list(range(1, len(versions) + 1)))
        self.assertEqual(
            schema.latest_version(schema.SQLITE_MIGRATIONS),
            schema.latest_version(schema.MYSQL_MIGRATIONS))

    def test_mysql_steps_can_be_rerun(self):
        """MySQL commits each DDL statement, so a crash can leave a step
        half applied: every statement must be safe to run again (creates
        only what is missing, inserts only what is new, updates only rows
        not updated yet)."""
        rerunnable = ("IF NOT EXISTS", "WHERE NOT EXISTS", "INSERT IGNORE", "WHERE linked = 0")
        for _, statements in schema.MYSQL_MIGRATIONS:
            for statement in statements:
                self.assertTrue(any(s in statement for s in rerunnable), statement)
