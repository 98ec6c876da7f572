# -*- test-case-name: speedy.test.test_config -*-
"""
Each daemon's options come from three places, in this order of precedence:
the command line, the C{--config} INI file (one section named for the role,
keys as the option names with C{_} or C{-}), and the built-in defaults.
"""

import configparser

from twisted.python import usage

from speedy.units import parse_size


def read_section(path, section, known):
    """
    @param known: the option names (with C{-}) the section may hold.
    @return: the C{[section]} of the INI file at C{path} as {option name:
        value as written}, keys with C{_} read as C{-}.
    @raise usage.UsageError: the file is unreadable or malformed, lacks the
        section, or names an option not in C{known}.
    """
    parser = configparser.ConfigParser(interpolation=None)
    try:
        with open(path, encoding="utf-8") as f:
            parser.read_file(f)
    except (OSError, UnicodeDecodeError, configparser.Error) as e:
        raise usage.UsageError(f"--config {path}: {e}")
    if not parser.has_section(section):
        raise usage.UsageError(f"--config {path}: no [{section}] section")
    values = {key.replace("_", "-"): value for key, value in parser.items(section)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise usage.UsageError(
            f"--config {path}: unknown keys in [{section}]: {', '.join(unknown)} "
            f"(known: {', '.join(sorted(known))})")
    return values


def fill_options(options, section, defaults):
    """
    Fill every option in C{defaults} that the command line left unset
    (C{None}) from the C{--config} file named by C{options["config"]}, if
    any, else from C{defaults}.

    @raise usage.UsageError: as L{read_section}.
    """
    config = read_section(options["config"], section, defaults) if options["config"] else {}
    for name, default in defaults.items():
        if options[name] is None:
            options[name] = config.get(name, default)


def positive(options, name, kind):
    """
    @return: C{options[name]} converted by C{kind} (C{int} or C{float}).
    @raise usage.UsageError: it is not a finite number above zero.
    """
    try:
        value = kind(options[name])
    except (TypeError, ValueError):
        value = 0
    if not 0 < value < float("inf"):
        raise usage.UsageError(f"--{name} must be a positive number, not {options[name]!r}")
    return value


def size(options, name):
    """
    @return: C{options[name]} as a number of bytes (L{parse_size}).
    @raise usage.UsageError: it is not a size.
    """
    try:
        return parse_size(options[name])
    except ValueError as e:
        raise usage.UsageError(f"--{name}: {e}")


def number(options, name, kind, minimum):
    """
    @return: C{options[name]} converted by C{kind} (C{int} or C{float}).
    @raise usage.UsageError: it is not a number, or below C{minimum}.
    """
    try:
        value = kind(options[name])
    except (TypeError, ValueError):
        raise usage.UsageError(f"--{name} must be a number, not {options[name]!r}")
    if value < minimum:
        raise usage.UsageError(f"--{name} must be at least {minimum}")
    return value
