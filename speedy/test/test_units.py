from twisted.trial.unittest import SynchronousTestCase

from speedy.units import parse_size


class ParseSizeTests(SynchronousTestCase):
    def test_binary_units(self):
        self.assertEqual(parse_size("16MiB"), 16 * 2**20)
        self.assertEqual(parse_size("2GiB"), 2 * 2**30)
        self.assertEqual(parse_size("4KiB"), 4096)
        self.assertEqual(parse_size("1TiB"), 2**40)

    def test_decimal_units_and_plain_numbers(self):
        self.assertEqual(parse_size("1MB"), 10**6)
        self.assertEqual(parse_size("512k"), 512000)
        self.assertEqual(parse_size("1048576"), 1048576)
        self.assertEqual(parse_size(" 8 mib "), 8 * 2**20)
        self.assertEqual(parse_size(4096), 4096)

    def test_garbage_is_refused(self):
        for bad in ["", "MiB", "-1", "12 parsecs", "1.5.2G", "0x10", -5]:
            self.assertRaises(ValueError, parse_size, bad)
