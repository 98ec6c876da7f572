# -*- test-case-name: speedy.test.test_chunkmaster_api -*-
"""
The JSON bodies the chunkmaster accepts, checked field by field.

Each C{parse_*} function takes the decoded JSON object of a request and
returns plain validated values, or raises L{speedy.errors.BadRequest} naming
the first field that is wrong.  Nothing here touches the cluster.
"""

import math
import re

from attrs import frozen

from speedy.errors import BadRequest

_SERVER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_MAX_GROUP_ID = 2**31 - 1
_MAX_BYTES = 2**63 - 1
_MAX_LOAD_KEYS = 256


@frozen
class Heartbeat:
    """One chunkserver's report, as validated from C{POST /v1/heartbeat}."""

    server_id: str
    group_id: int
    address: str
    capacity: int
    used: int
    free: int
    read_only: bool
    load: dict
    damaged: tuple = ()
    #: where its /healthz and /readyz answer (its --metrics listener), or None
    health: str | None = None


#: The most damaged chunk ids one heartbeat may report.
MAX_DAMAGED_REPORTED = 1000


def parse_heartbeat(body):
    """
    @return: a L{Heartbeat} from a heartbeat body: C{server_id}, C{group_id},
        C{address}, C{capacity}, C{used}, C{free}, C{read_only} are required,
        C{load} (an object of numbers) and C{damaged} (the ids of chunks
        found damaged and dropped, at most L{MAX_DAMAGED_REPORTED}) and
        C{health} (L{parse_health_url}) are optional.
    @raise BadRequest: a field is missing or has the wrong type or range.
    """
    return Heartbeat(
        server_id=parse_server_id(_field(body, "server_id")),
        group_id=parse_group_id(_field(body, "group_id")),
        address=parse_address(_field(body, "address")),
        capacity=_byte_count(body, "capacity"),
        used=_byte_count(body, "used"),
        free=_byte_count(body, "free"),
        read_only=_boolean(body, "read_only"),
        load=_load(body.get("load", {})),
        damaged=_file_ids(body.get("damaged", []), "damaged", MAX_DAMAGED_REPORTED),
        health=None if body.get("health") is None else parse_health_url(body["health"]),
    )


def _file_ids(value, name, limit):
    """@return: a tuple of chunk file ids.  @raise BadRequest: not a list
    of at most C{limit} integers from 0 to 2**63 - 1."""
    if not isinstance(value, list) or len(value) > limit:
        raise BadRequest(f"{name} must be a list of at most {limit} file ids")
    if not all(_is_int(item) and 0 <= item < 2**63 for item in value):
        raise BadRequest(f"{name} must hold file ids (integers from 0 to 2**63-1)")
    return tuple(value)


def parse_registration(body):
    """
    @return: C{(server_id, group_id, address)} from an admin's
        C{POST /v1/admin/servers} body.
    @raise BadRequest: a field is missing or wrong.
    """
    return (
        parse_server_id(_field(body, "server_id")),
        parse_group_id(_field(body, "group_id")),
        parse_address(_field(body, "address")),
    )


def parse_replacement(body):
    """
    @return: C{(server_id, address)} of the new server in a
        C{POST /v1/admin/servers/<old>/replace} body.
    @raise BadRequest: a field is missing or wrong.
    """
    return parse_server_id(_field(body, "server_id")), parse_address(_field(body, "address"))


def parse_fsck(body):
    """
    @return: C{(repair, verify)} of a C{POST /v1/admin/fsck} body, both
        optional booleans (False by default).
    @raise BadRequest: one is not a boolean.
    """
    flags = []
    for name in ("repair", "verify"):
        value = body.get(name, False)
        if not isinstance(value, bool):
            raise BadRequest(f"{name} must be true or false")
        flags.append(value)
    return tuple(flags)


def parse_gc(body):
    """
    @return: the C{dry_run} flag of a C{POST /v1/admin/gc} body (optional,
        False by default).
    @raise BadRequest: it is not a boolean.
    """
    value = body.get("dry_run", False)
    if not isinstance(value, bool):
        raise BadRequest("dry_run must be true or false")
    return value


def parse_group_update(body):
    """
    @return: the C{read_only} flag of a C{PUT /v1/admin/groups/<id>} body.
    @raise BadRequest: it is missing or not a boolean.
    """
    return _boolean(body, "read_only")


def parse_file_id_count(body):
    """
    @return: the C{count} of a C{POST /v1/file-ids} body, a positive integer.
    @raise BadRequest: it is missing, not an integer, or below 1.
    """
    count = _field(body, "count")
    if not _is_int(count) or count < 1:
        raise BadRequest(f"count must be a positive integer, not {count!r}")
    return count


def parse_server_id(value):
    """
    @return: C{value} if it is a server id: 1 to 64 letters, digits, dots,
        dashes and underscores, starting with a letter or digit (it appears
        in URL paths).
    @raise BadRequest: otherwise.
    """
    if not isinstance(value, str) or not _SERVER_ID.match(value):
        raise BadRequest(f"server_id must be 1-64 of [A-Za-z0-9._-], not {value!r}")
    return value


def parse_group_id(value):
    """
    @return: C{value} if it is a group id, an integer from 0 to 2**31-1.
    @raise BadRequest: otherwise.
    """
    if not _is_int(value) or not 0 <= value <= _MAX_GROUP_ID:
        raise BadRequest(f"group_id must be an integer from 0 to {_MAX_GROUP_ID}, not {value!r}")
    return value


def parse_address(value):
    """
    @return: C{value} if it is C{"host:port"} (C{"[v6]:port"} for IPv6)
        with a port from 1 to 65535.
    @raise BadRequest: otherwise.
    """
    if isinstance(value, str) and len(value) <= 255:
        host, _, port = value.rpartition(":")
        if host and port.isdigit() and 1 <= int(port) <= 65535 and not any(c.isspace() for c in host):
            return value
    raise BadRequest(f"address must be 'host:port', not {value!r}")


def health_url(value):
    """
    @return: C{value} if it is the base URL of a member's C{/healthz} and
        C{/readyz}: C{http://host:port} or C{https://host:port}, nothing
        after the port, at most 255 characters; else None.
    """
    if isinstance(value, str) and len(value) <= 255:
        scheme, sep, rest = value.partition("://")
        if scheme in ("http", "https") and sep:
            try:
                parse_address(rest)
            except BadRequest:
                return None
            if "/" not in rest:
                return value
    return None


def parse_health_url(value):
    """
    @return: C{value} if L{health_url} takes it.
    @raise BadRequest: otherwise.
    """
    if health_url(value) is None:
        raise BadRequest(f"health must be 'http://host:port' or 'https://host:port', "
                         f"not {value!r}")
    return value


def _field(body, name):
    try:
        return body[name]
    except KeyError:
        raise BadRequest(f"missing field {name!r}") from None


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _byte_count(body, name):
    value = _field(body, name)
    if not _is_int(value) or not 0 <= value <= _MAX_BYTES:
        raise BadRequest(f"{name} must be a byte count (a non-negative integer), not {value!r}")
    return value


def _boolean(body, name):
    value = _field(body, name)
    if not isinstance(value, bool):
        raise BadRequest(f"{name} must be true or false, not {value!r}")
    return value


def _load(value):
    if not isinstance(value, dict) or len(value) > _MAX_LOAD_KEYS:
        raise BadRequest(f"load must be an object of at most {_MAX_LOAD_KEYS} numbers")
    for key, number in value.items():
        if isinstance(number, bool) or not isinstance(number, (int, float)) or not math.isfinite(number):
            raise BadRequest(f"load[{key!r}] must be a finite number, not {number!r}")
    return value
