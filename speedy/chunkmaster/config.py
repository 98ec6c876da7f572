# -*- test-case-name: speedy.test.test_chunkmaster_tap -*-
"""
The chunkmaster's INI file: one C{[chunkmaster]} section whose keys are the
command-line options with underscores (C{etc/chunkmaster.ini} is a sample).
"""

import configparser

SECTION = "chunkmaster"

#: The keys a C{[chunkmaster]} section may hold.
KEYS = (
    "listen", "db", "admin_token", "cluster_secret", "heartbeat_timeout",
    "group_size", "file_id_range", "reserve",
)


def read_config(path):
    """
    @return: a dict of the C{[chunkmaster]} section of the INI file at
        C{path}, keyed by option name (C{"heartbeat-timeout"}), values as
        written (strings).
    @raise ValueError: the file cannot be read or parsed, lacks the section,
        or has a key that is not one of L{KEYS}.
    """
    parser = configparser.ConfigParser(interpolation=None)
    try:
        with open(path, encoding="utf-8") as f:
            parser.read_file(f)
    except (OSError, UnicodeDecodeError, configparser.Error) as e:
        raise ValueError(f"cannot read {path}: {e}") from None
    if not parser.has_section(SECTION):
        raise ValueError(f"{path} has no [{SECTION}] section")
    values = {}
    for key, value in parser.items(SECTION):
        if key not in KEYS:
            raise ValueError(f"{path}: unknown key {key!r} in [{SECTION}] (known: {', '.join(KEYS)})")
        values[key.replace("_", "-")] = value
    return values
