# -*- test-case-name: speedy.test.test_registry_v1 -*-
"""
V1 repositories: tags, the image index that C{docker push} PUTs and
C{docker pull} reads first, and search, as docker-registry 0.9 served them
in its standalone mode (where it also played the index).
"""

import json
import re
import secrets

from speedy.errors import ReferencesMissing
from speedy.records import V1TagRecord
from speedy.registry.v1.errors import V1Error
from speedy.registry.v1.names import is_image_id

#: What a tag's (or repository's) JSON says when its pusher said nothing.
DEFAULT_TAG_JSON = {
    "last_update": None, "docker_version": None, "docker_go_version": None,
    "arch": "amd64", "os": "linux", "kernel": None}

#: The most search results one answer lists.
MAX_SEARCH_RESULTS = 100

_USER_AGENT = re.compile(r"([^\s/]+)/([^\s/]+)")


def tag_properties(user_agent, now):
    """
    @param user_agent: the pushing client's C{User-Agent}, e.g.
        C{docker/1.9.1 go/go1.4.3 kernel/4.4 os/linux arch/amd64}.
    @return: docker-registry's tag JSON: when, and what the client said of
        itself.
    """
    properties = {"last_update": int(now)}
    parts = dict(_USER_AGENT.findall(user_agent or ""))
    if "docker" in parts:
        properties["docker_version"] = parts["docker"]
    if "go" in parts:
        properties["docker_go_version"] = parts["go"]
    for key in ("arch", "kernel", "os"):
        if key in parts:
            properties[key] = parts[key].lower()
    return properties


def index_headers(repository, access, endpoint):
    """
    @param endpoint: C{host:port} clients reach this registry at.
    @return: the headers of an index answer: where the images are
        (C{X-Docker-Endpoints}: here) and a token for them, which
        docker-registry in standalone mode made up and never checked.
    """
    token = (f'Token signature={secrets.token_hex(8).upper()},repository="{repository}",'
             f"access={access}")
    return {"X-Docker-Endpoints": endpoint, "WWW-Authenticate": token, "X-Docker-Token": token}


def parse_index(body):
    """
    @return: the image list of an index PUT: dicts with an C{"id"} and
        maybe a C{"checksum"}.
    @raise V1Error: 400 C{Error Decoding JSON}, C{Invalid data}.
    """
    try:
        images = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):  # nested too deep too
        raise V1Error("Error Decoding JSON")
    if not isinstance(images, list):
        raise V1Error("Invalid data")
    for entry in images:
        if not isinstance(entry, dict) or not is_image_id(entry.get("id")):
            raise V1Error("Invalid data")
        checksum = entry.get("checksum")
        if checksum is not None and not (isinstance(checksum, str) and 0 < len(checksum) <= 135):
            raise V1Error("Invalid data")
    return [{k: entry[k] for k in ("id", "checksum") if entry.get(k) is not None}
            for entry in images]


class V1Repositories:
    """V1 repositories over the L{speedy.interfaces.IV1Tables} of a
    metadata store."""

    def __init__(self, metadata, clock):
        self._metadata = metadata
        self._clock = clock

    async def tags(self, repository):
        """@return: the repository's tags, C{{tag: image id}}.
        @raise V1Error: 404 C{Repository not found}."""
        tags = await self._metadata.list_v1_tags(repository)
        if tags is None:
            raise V1Error("Repository not found", 404)
        return {t.tag: t.image_id for t in tags}

    async def tag(self, repository, tag):
        """@return: the L{V1TagRecord} of C{tag}.
        @raise V1Error: 404 C{Tag not found}."""
        record = await self._metadata.get_v1_tag(repository, tag)
        if record is None:
            raise V1Error("Tag not found", 404)
        return record

    async def tag_json(self, repository, tag):
        """@return: what the tag's pusher said of itself, or the defaults."""
        record = await self._metadata.get_v1_tag(repository, tag)
        return dict(DEFAULT_TAG_JSON, **(record.properties if record is not None else {}))

    async def put_tag(self, repository, tag, body, user_agent):
        """
        Point C{tag} at the image id C{body} holds (a JSON string).

        @raise V1Error: 400 C{Invalid data}, 404 C{Image not found}.
        """
        try:
            image_id = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):  # nested too deep too
            image_id = None
        if not image_id or not isinstance(image_id, str):
            raise V1Error("Invalid data")
        if not is_image_id(image_id):
            raise V1Error("Image not found", 404)
        record = V1TagRecord(repository, tag, image_id,
                             tag_properties(user_agent, self._clock.seconds()))
        try:
            await self._metadata.put_v1_tag(record)
        except ReferencesMissing:
            raise V1Error("Image not found", 404)

    async def delete_tag(self, repository, tag):
        """@raise V1Error: 404 C{Tag not found: <tag>}."""
        if not await self._metadata.delete_v1_tag(repository, tag):
            raise V1Error(f"Tag not found: {tag}", 404)

    async def delete(self, repository):
        """Delete the repository, its tags and index (its images stay).
        @raise V1Error: 404 C{Repository not found}."""
        if not await self._metadata.delete_v1_repository(repository):
            raise V1Error("Repository not found", 404)

    async def put_index(self, repository, body):
        """Merge the image list C{body} holds into the repository's index.
        @raise V1Error: 400 (see L{parse_index})."""
        await self._metadata.put_v1_index(repository, parse_index(body))

    async def index(self, repository):
        """@return: the repository's image index.
        @raise V1Error: 404 C{images not found}."""
        record = await self._metadata.get_v1_repository(repository)
        if record is None:
            raise V1Error("images not found", 404)
        return list(record.images)

    async def search(self, text):
        """@return: docker-registry's search answer for repositories whose
        name contains C{text}: at most L{MAX_SEARCH_RESULTS} of them."""
        names = await self._metadata.search_v1_repositories(
            text.lower(), limit=MAX_SEARCH_RESULTS)
        return {"query": text, "num_results": len(names),
                "results": [{"name": name, "description": ""} for name in names]}
