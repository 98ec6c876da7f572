# -*- test-case-name: speedy.test.test_registry_v1 -*-
"""
The V1 grammar of repository names, image ids and tags, as Docker 1.x and
docker-registry 0.9 checked them.

A repository is C{namespace/name}; a name alone is in the C{library}
namespace (C{busybox} is C{library/busybox}).  A namespace is 2 to 255 of
C{[a-z0-9_-]}, neither starting nor ending with a hyphen nor holding two in
a row; a name is C{[a-z0-9_.-]+}; a one-part name may not be 64 hex digits
(it would read as an image id).  The whole is at most 255 characters.  An
image id is 64 lowercase hex digits (docker-registry also took 16, an
older short form, and so do we).  A tag is C{[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}}.
"""

import re

from speedy.registry.v1.errors import V1Error

DEFAULT_NAMESPACE = "library"
MAX_REPOSITORY = 255

_NAMESPACE = re.compile(r"[a-z0-9_-]{2,255}\Z")
_NAME = re.compile(r"[a-z0-9_.-]+\Z")
_IMAGE_ID = re.compile(r"(?:[a-f0-9]{16}|[a-f0-9]{64})\Z")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}\Z")


def parse_repository(text):
    """
    @param text: a repository as a path gives it, C{namespace/name} or
        C{name}, a trailing slash allowed.
    @return: the repository's full name, C{namespace/name}.
    @raise V1Error: 400 for a name V1 does not allow.
    """
    parts = text.rstrip("/").split("/")
    if len(parts) == 1:
        namespace, name = DEFAULT_NAMESPACE, parts[0]
        if _IMAGE_ID.match(name) and len(name) == 64:
            raise V1Error(f"Invalid repository name ({name[:300]}), cannot specify "
                          "64-byte hexadecimal strings")
    elif len(parts) == 2:
        namespace, name = parts
    else:
        raise V1Error(f"Invalid repository name ({text[:300]}): namespace/name at most")
    if (not _NAMESPACE.match(namespace) or namespace.startswith("-")
            or namespace.endswith("-") or "--" in namespace):
        raise V1Error(f"Invalid namespace name ({namespace[:300]}). Only [a-z0-9-_] are allowed, "
                      "2 to 255 of them, not starting or ending with a hyphen, no two in a row")
    if not _NAME.match(name):
        raise V1Error(f"Invalid repository name ({name[:300]}), only [a-z0-9-_.] are allowed")
    full = f"{namespace}/{name}"
    if len(full) > MAX_REPOSITORY:
        raise V1Error(f"Invalid repository name: longer than {MAX_REPOSITORY} characters")
    return full


def is_image_id(text):
    """@return: True if C{text} can be an image id."""
    return isinstance(text, str) and _IMAGE_ID.match(text) is not None


def check_image_id(text):
    """
    @return: C{text}.
    @raise V1Error: 404 C{Invalid image ID}, as docker-registry answered.
    """
    if not is_image_id(text):
        raise V1Error("Invalid image ID", 404)
    return text


def check_tag(text):
    """
    @return: C{text}.
    @raise V1Error: 400, for a tag outside the grammar.
    """
    if _TAG.match(text) is None:
        raise V1Error("Invalid tag name (must match ^[\\w][\\w.-]{0,127}$)")
    return text
