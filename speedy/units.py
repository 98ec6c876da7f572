# -*- test-case-name: speedy.test.test_units -*-
"""Sizes and durations as people write them on command lines and in config files."""

import re

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?\s*$", re.IGNORECASE)
_UNITS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "kib": 1 << 10, "ki": 1 << 10,
    "m": 1000**2, "mb": 1000**2, "mib": 1 << 20, "mi": 1 << 20,
    "g": 1000**3, "gb": 1000**3, "gib": 1 << 30, "gi": 1 << 30,
    "t": 1000**4, "tb": 1000**4, "tib": 1 << 40, "ti": 1 << 40,
}


def parse_size(text):
    """
    Parse C{"16MiB"}, C{"2GiB"}, C{"512k"}, C{"1048576"} into a number of
    bytes.  Binary units (KiB, MiB, GiB, TiB) are powers of 1024, decimal
    ones (kB, MB, GB) powers of 1000.

    @raise ValueError: for anything else, including negative sizes.
    """
    if isinstance(text, int):
        if text < 0:
            raise ValueError(f"negative size: {text}")
        return text
    m = _SIZE.match(str(text))
    if not m or (m.group(2) or "").lower() not in _UNITS:
        raise ValueError(f"not a size: {text!r} (try 16MiB, 2GiB, 4096)")
    return int(float(m.group(1)) * _UNITS[(m.group(2) or "").lower()])
