# -*- test-case-name: speedy.test.test_registry_names -*-
"""
The distribution-spec grammar of repository names, tags and digests.

A name is one or more path components (C{[a-z0-9]+} joined by C{.}, C{_},
C{__} or dashes) separated by C{/}, at most 255 characters in all.  A tag is
C{[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}}.  A digest is C{<algorithm>:<hex>}; we
accept the two algorithms the spec registers, C{sha256} (64 lowercase hex
digits) and C{sha512} (128).
"""

import re

from speedy.registry.errors import DIGEST_INVALID, NAME_INVALID, TAG_INVALID, RegistryError

MAX_NAME_LENGTH = 255

_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
_NAME = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*\Z")
_TAG = re.compile(r"[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}\Z")

#: Supported digest algorithms and the length of their hex encoding.
HEX_LENGTHS = {"sha256": 64, "sha512": 128}
_DIGEST = re.compile(r"([a-z0-9]+(?:[.+_-][a-z0-9]+)*):([a-zA-Z0-9=_-]+)\Z")
_HEX = re.compile(r"[0-9a-f]+\Z")


def is_name(text):
    """@return: True if C{text} is a valid repository name."""
    return len(text) <= MAX_NAME_LENGTH and _NAME.match(text) is not None


def check_name(text):
    """
    @return: C{text} unchanged.
    @raise RegistryError: C{NAME_INVALID} (400) when it is not a valid name.
    """
    if not is_name(text):
        raise RegistryError(NAME_INVALID, detail={"name": text[:MAX_NAME_LENGTH + 1]})
    return text


def is_tag(text):
    """@return: True if C{text} is a valid tag."""
    return _TAG.match(text) is not None


def check_tag(text):
    """
    @return: C{text} unchanged.
    @raise RegistryError: C{TAG_INVALID} (400) when it is not a valid tag.
    """
    if not is_tag(text):
        raise RegistryError(TAG_INVALID, detail={"tag": text[:129]})
    return text


def looks_like_digest(text):
    """
    @return: True if C{text} has the general shape C{algorithm:encoded} of
        a digest (even with an unsupported algorithm), so a manifest
        reference can be told apart from a tag.
    """
    return ":" in text


def parse_digest(text):
    """
    Validate a digest string.

    @return: the pair C{(algorithm, hex)}.
    @raise RegistryError: C{DIGEST_INVALID} (400) for a malformed digest, an
        algorithm other than sha256 and sha512, or a wrong-length or
        uppercase encoding.
    """
    if not isinstance(text, str):
        raise RegistryError(DIGEST_INVALID, "digest is not a string")
    m = _DIGEST.match(text)
    if m is None:
        raise RegistryError(DIGEST_INVALID, "malformed digest", detail={"digest": text[:200]})
    algorithm, encoded = m.groups()
    if algorithm not in HEX_LENGTHS:
        raise RegistryError(
            DIGEST_INVALID, f"unsupported digest algorithm {algorithm!r} (sha256, sha512)",
            detail={"digest": text[:200]})
    if len(encoded) != HEX_LENGTHS[algorithm] or _HEX.match(encoded) is None:
        raise RegistryError(
            DIGEST_INVALID, f"a {algorithm} digest is {HEX_LENGTHS[algorithm]} lowercase hex digits",
            detail={"digest": text[:200]})
    return algorithm, encoded


def check_digest(text):
    """@return: C{text} once L{parse_digest} accepted it."""
    parse_digest(text)
    return text
