from twisted.trial.unittest import SynchronousTestCase

from speedy import errors


class ErrorCodeTests(SynchronousTestCase):
    def test_codes_are_unique_and_round_trip(self):
        codes = [cls.code for cls in errors.BY_CODE.values()]
        self.assertEqual(len(codes), len(set(codes)))
        for code, cls in errors.BY_CODE.items():
            exc = errors.error_for_code(code, "why")
            self.assertIsInstance(exc, cls)
            self.assertEqual(str(exc), "why")

    def test_unknown_code_is_internal(self):
        """A newer peer's error code never crashes an older client."""
        self.assertIsInstance(errors.error_for_code(200), errors.Internal)

    def test_no_writable_group_is_unavailable(self):
        self.assertTrue(issubclass(errors.NoWritableGroup, errors.Unavailable))
