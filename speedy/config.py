# -*- test-case-name: speedy.test.test_config -*-
"""
The options of Speedy's daemons, declared once each.

A role's C{Options} is a L{DaemonOptions} with a list of L{Option}s: name
(the long command-line option, and the key of the role's section of a
C{--config} INI file, spelt with C{-} or C{_}), default, help, and the
function that parses and checks its text:

    class Options(DaemonOptions):
        section = "imageserver"
        options = [
            Option("listen", "tcp:5000", "Endpoint of the HTTP listener.", endpoint),
            Option("chunk-size", "16MiB", "Size streams are cut at.", size(1, 1 << 30)),
        ]

        def check(self):
            ...  # what involves several options

Values come from the command line, else the C{--config} file, else the
default; each is then parsed (a C{ValueError} is a usage error naming the
option) and C{options[name]} holds the result.  C{--version} prints
Speedy's version.
"""

import configparser
import sys
from importlib import metadata

from attrs import frozen
from twisted.internet.endpoints import serverFromString
from twisted.python import usage

from speedy.units import parse_size


@frozen
class Option:
    """
    One option of a daemon.

    @ivar default: its text when neither the command line nor the config
        file gives one; None leaves the option None (unparsed).
    @ivar parse: text to value; raises C{ValueError} with what is wrong.
    @ivar required: a missing value is a usage error.
    """

    name: str
    default: str | None
    help: str
    parse: object = str
    required: bool = False


def version():
    """@return: Speedy's version, as installed."""
    try:
        return metadata.version("speedy")
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


class DaemonOptions(usage.Options):
    """
    The command line (and C{--config} file) of one role: subclasses set
    C{section} (the INI section) and C{options} (L{Option}s), and may
    override L{check}.
    """

    section = None
    options = ()

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "options" in cls.__dict__:
            cls.optParameters = [
                [o.name, None, None, o.help + (f" [default: {o.default}]" if o.default else "")]
                for o in cls.options
            ] + [["config", "c", None, f"INI file with a [{cls.section}] section of the same "
                                       "keys (see etc/); the command line wins."]]

    def postOptions(self):
        config = read_section(self["config"], self.section, [o.name for o in self.options]) \
            if self["config"] else {}
        for option in self.options:
            text = self[option.name]
            if text is None:
                text = config.get(option.name, option.default)
            if text is None:
                if option.required:
                    raise usage.UsageError(f"--{option.name} is required")
                continue
            try:
                self[option.name] = option.parse(text)
            except ValueError as e:
                raise usage.UsageError(f"--{option.name}: {e}")
        self.check()

    def check(self):
        """Check what involves several options (all parsed by now).
        @raise usage.UsageError: they do not go together."""

    def opt_version(self):
        """Print Speedy's version and exit."""
        print(f"speedy {version()}")
        sys.exit(0)


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


# What an option's text may be: each returns the parse function of an Option.

def number(kind, minimum=None, maximum=None):
    """@return: a parser of a C{kind} (C{int} or C{float}) from C{minimum}
    to C{maximum} (each None for no bound)."""
    def parse(text):
        try:
            value = kind(text)
        except (TypeError, ValueError):
            raise ValueError(f"not a number: {text!r}")
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError(f"not a finite number: {text!r}")
        if minimum is not None and value < minimum:
            raise ValueError(f"must be at least {minimum}, not {text!r}")
        if maximum is not None and value > maximum:
            raise ValueError(f"must be at most {maximum}, not {text!r}")
        return value
    return parse


def positive(kind):
    """@return: a parser of a finite C{kind} above zero."""
    at_least = number(kind)

    def parse(text):
        value = at_least(text)
        if not value > 0:
            raise ValueError(f"must be a positive number, not {text!r}")
        return value
    return parse


def size(minimum=0, maximum=None):
    """@return: a parser of a number of bytes (L{parse_size}: C{16MiB},
    C{4096}) from C{minimum} to C{maximum}."""
    def parse(text):
        value = parse_size(text)
        if value < minimum:
            raise ValueError(f"must be at least {minimum} bytes, not {text!r}")
        if maximum is not None and value > maximum:
            raise ValueError(f"must be at most {maximum} bytes, not {text!r}")
        return value
    return parse


_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def duration(minimum=0.0):
    """@return: a parser of a time span in seconds: C{90}, C{90s}, C{15m},
    C{12h}, C{7d}, at least C{minimum} seconds."""
    def parse(text):
        text = str(text).strip()
        unit = _SECONDS.get(text[-1:].lower())
        value = number(float, 0.0)(text[:-1] if unit else text) * (unit or 1)
        if value < minimum:
            raise ValueError(f"must be at least {minimum:g} seconds, not {text!r}")
        return value
    return parse


def choice(*values):
    """@return: a parser of one of C{values}."""
    def parse(text):
        if text not in values:
            raise ValueError(f"must be one of {', '.join(values)}, not {text!r}")
        return text
    return parse


def endpoint(text):
    """An endpoint string a server can listen on (C{tcp:8000})."""
    try:
        serverFromString(None, text)
    except (ValueError, TypeError, KeyError, OSError) as e:
        raise ValueError(f"{text!r}: {e}")
    return text


def http_url(text):
    """An C{http://} or C{https://} URL."""
    if not text.startswith(("http://", "https://")):
        raise ValueError(f"must be an http:// or https:// URL, not {text!r}")
    return text


def http_urls(text):
    """One or more L{http_url}s separated by commas: a list of them."""
    urls = [http_url(part.strip()) for part in text.split(",") if part.strip()]
    if not urls:
        raise ValueError("must name at least one URL")
    return urls
