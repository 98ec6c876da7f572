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

A secret (C{Option(..., secret=True, env="SPEEDY_...")}: the cluster
secret, the admin token) never comes from the command line, where C{ps}
shows it to every local user: it is read from C{--NAME-file PATH} (a file
readable by its owner only), else from the environment variable C{env},
else from the config file (C{NAME-file}, or C{NAME} itself in a config file
readable by its owner only).  A secret shorter than L{MIN_SECRET}
characters, or one of the placeholders the sample configs once carried, is
refused.
"""

import configparser
import os
import stat
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
    @ivar secret: the value is a secret, taken from a file or the
        environment variable C{env}, never from the command line (see the
        module docstring).
    """

    name: str
    default: str | None
    help: str
    parse: object = str
    required: bool = False
    secret: bool = False
    env: str | None = None


#: The fewest characters a secret may have.
MIN_SECRET = 16
#: Words that mark a value as a placeholder, not a secret.
_PLACEHOLDERS = ("change-me", "changeme", "change_me", "placeholder", "example")


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
                for o in cls.options if not o.secret
            ] + [
                [o.name + "-file", None, None,
                 f"{o.help} Read from this file (mode 0600)"
                 + (f", else from ${o.env}" if o.env else "") + "; never given on the command line."]
                for o in cls.options if o.secret
            ] + [["config", "c", None, f"INI file with a [{cls.section}] section of the same "
                                       "keys (see etc/); the command line wins."]]

            for o in cls.options:
                if o.secret:
                    setattr(cls, "opt_" + o.name.replace("-", "_"), _refused(o))

    def postOptions(self):
        known = [o.name for o in self.options] + [o.name + "-file" for o in self.options if o.secret]
        config = read_section(self["config"], self.section, known) if self["config"] else {}
        for option in self.options:
            if option.secret:
                text = self[option.name] = self._secret(option, config)
            else:
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

    def _secret(self, option, config):
        """@return: the text of the secret C{option} (see the module
        docstring), or None if none is given.
        @raise usage.UsageError: it is unreadable, too readable, or a
            placeholder."""
        name = option.name
        path, where = self[name + "-file"], f"--{name}-file"
        if path is None and option.env and os.environ.get(option.env):
            return check_secret(os.environ[option.env], f"${option.env}")
        if path is None and config.get(name + "-file"):
            path, where = config[name + "-file"], f"{name}_file in {self['config']}"
        if path is None:
            if config.get(name) is None:
                return None
            where = f"{name} in {self['config']}"
            _private(self["config"], where)
            text = config.pop(name)
            return check_secret(text, where)
        _private(path, where)
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read().strip()
        except (OSError, UnicodeDecodeError) as e:
            raise usage.UsageError(f"{where}: {e}")
        return check_secret(text, where)

    def check(self):
        """Check what involves several options (all parsed by now).
        @raise usage.UsageError: they do not go together."""

    def opt_version(self):
        """Print Speedy's version and exit."""
        print(f"speedy {version()}")
        sys.exit(0)


def _refused(option):
    def refuse(self, value):
        raise usage.UsageError(
            f"--{option.name} is not taken on the command line, where every local user "
            f"sees it (ps): use --{option.name}-file PATH (mode 0600)"
            + (f" or ${option.env}" if option.env else ""))
    refuse.__doc__ = f"Refused: see --{option.name}-file."
    return refuse


def check_secret(text, where):
    """
    @return: C{text}, stripped, if it can be a secret.
    @raise usage.UsageError: it is too short or a placeholder (C{where}
        says where it came from).
    """
    text = text.strip()
    if len(text) < MIN_SECRET:
        raise usage.UsageError(f"{where}: a secret has at least {MIN_SECRET} characters "
                               f"(make one with: python3 -c 'import secrets; print(secrets.token_urlsafe(32))')")
    if any(word in text.lower() for word in _PLACEHOLDERS):
        raise usage.UsageError(f"{where}: {text[:4]}... looks like a placeholder, not a secret")
    return text


def _private(path, where):
    """@raise usage.UsageError: the file at C{path}, which holds a secret,
    is missing or readable by others than its owner."""
    try:
        mode = os.stat(path).st_mode
    except OSError as e:
        raise usage.UsageError(f"{where}: {e}")
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise usage.UsageError(f"{where}: {path} holds a secret but is readable by others "
                               f"(mode {stat.S_IMODE(mode):04o}); chmod 600 it")


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
