# -*- test-case-name: speedy.test.test_registry_api -*-
"""
Manifests: parsing and validating the four media types we serve (Docker
schema2 manifest and manifest list, OCI image manifest and index, with OCI
1.1 artifacts: C{artifactType} and C{subject}), and storing them byte-exact
with their tags.
"""

import json
import re

from attrs import field, frozen

from speedy.errors import ReferencesMissing, SizeMismatch
from speedy.records import ManifestRecord
from speedy.registry.digests import digest_of
from speedy.registry.errors import (
    DIGEST_INVALID,
    MANIFEST_BLOB_UNKNOWN,
    MANIFEST_INVALID,
    MANIFEST_UNKNOWN,
    TOO_MANY_TAGS,
    RegistryError,
)
from speedy.registry.names import check_tag, looks_like_digest, parse_digest

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"

#: Media types whose body lists blobs (a config and layers).
IMAGE_TYPES = frozenset({DOCKER_MANIFEST, OCI_MANIFEST})
#: Media types whose body lists other manifests.
INDEX_TYPES = frozenset({DOCKER_MANIFEST_LIST, OCI_INDEX})
#: Media types that may carry C{subject} and C{artifactType}.
OCI_TYPES = frozenset({OCI_MANIFEST, OCI_INDEX})

#: The most C{?tag=} query parameters one manifest PUT may carry (the spec
#: asks for at least 10).  A hundred tags of the longest kind (128
#: characters) make a request line of about 13 KB, within the 16 KiB that
#: twisted.web takes for a request's line and headers.
MAX_TAG_PARAMS = 100

#: RFC 6838 media type, at most 255 characters (what the metadata store keeps).
_MEDIA_TYPE = re.compile(
    r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}\Z")


@frozen
class Descriptor:
    """A content descriptor inside a manifest."""

    media_type: str
    digest: str
    size: int
    #: where a non-distributable layer can be fetched; such a blob need not be here
    urls: tuple = ()


@frozen
class ParsedManifest:
    """What a manifest body says, once validated."""

    media_type: str
    blobs: tuple  # Descriptors of blobs that must be in the repository
    manifests: tuple  # Descriptors of manifests that must be in the repository
    references: tuple  # digests of every blob and manifest it references
    subject: str | None = None
    artifact_type: str | None = None
    annotations: dict = field(factory=dict)


def _invalid(message, **detail):
    return RegistryError(MANIFEST_INVALID, message, detail=detail or None)


def _media_type(value, what):
    if not isinstance(value, str) or _MEDIA_TYPE.match(value) is None:
        raise _invalid(f"{what} is not a media type", value=str(value)[:300])
    return value


def _descriptor(value, what):
    """@return: the L{Descriptor} C{value} describes; @raise RegistryError:
    C{MANIFEST_INVALID} when it is not a valid descriptor."""
    if not isinstance(value, dict):
        raise _invalid(f"{what} is not a descriptor")
    media_type = _media_type(value.get("mediaType"), f"{what}.mediaType")
    digest = value.get("digest")
    try:
        parse_digest(digest)
    except RegistryError:
        raise _invalid(f"{what}.digest is not a valid digest", digest=str(digest)[:200])
    size = value.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise _invalid(f"{what}.size is not a non-negative integer")
    urls = value.get("urls", [])
    if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
        raise _invalid(f"{what}.urls is not a list of strings")
    return Descriptor(media_type, digest, size, tuple(urls))


def _descriptors(body, key, media_type):
    values = body.get(key)
    if not isinstance(values, list):
        raise _invalid(f"a {media_type} needs a {key} list")
    return [_descriptor(v, f"{key}[{i}]") for i, v in enumerate(values)]


def _annotations(body):
    annotations = body.get("annotations", {})
    if not isinstance(annotations, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in annotations.items()):
        raise _invalid("annotations must map strings to strings")
    return annotations


def bare_media_type(content_type):
    """@return: C{content_type} without parameters, or None."""
    if not content_type:
        return None
    return content_type.split(";", 1)[0].strip() or None


def parse_manifest(body, content_type=None):
    """
    Validate a manifest body.

    @param body: the bytes as received.
    @param content_type: the request's C{Content-Type}, used when the body
        has no C{mediaType}.
    @return: a L{ParsedManifest}.
    @raise RegistryError: C{MANIFEST_INVALID} (400) for anything but a valid
        manifest of a supported media type.
    """
    try:
        document = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise _invalid(f"not JSON: {e}")
    except RecursionError:  # nested deeper than Python's stack: no manifest is
        raise _invalid("JSON nested too deeply")
    if not isinstance(document, dict):
        raise _invalid("a manifest is a JSON object")
    declared = bare_media_type(content_type)
    media_type = document.get("mediaType", declared)
    if media_type is None:
        raise _invalid("no mediaType in the manifest and no Content-Type")
    if media_type not in IMAGE_TYPES | INDEX_TYPES:
        raise _invalid(f"unsupported manifest media type {str(media_type)[:300]!r}")
    if declared in IMAGE_TYPES | INDEX_TYPES and declared != media_type:
        raise _invalid(f"Content-Type {declared} differs from the manifest's mediaType {media_type}")
    if document.get("schemaVersion") != 2:
        raise _invalid("schemaVersion must be 2")
    if media_type in IMAGE_TYPES:
        config = _descriptor(document.get("config"), "config")
        blobs = [config] + _descriptors(document, "layers", media_type)
        manifests = []
    else:
        blobs = []
        manifests = _descriptors(document, "manifests", media_type)
    subject = artifact_type = None
    if media_type in OCI_TYPES:
        if "subject" in document:
            subject = _descriptor(document["subject"], "subject").digest
        if "artifactType" in document:
            artifact_type = _media_type(document["artifactType"], "artifactType")
        elif media_type == OCI_MANIFEST:
            artifact_type = config.media_type
    return ParsedManifest(
        media_type=media_type,
        blobs=tuple(d for d in blobs if not d.urls),
        manifests=tuple(manifests),
        references=tuple(dict.fromkeys(d.digest for d in blobs + manifests)),
        subject=subject,
        artifact_type=artifact_type,
        annotations=_annotations(document),
    )


def check_tag_params(tags):
    """
    Check the C{?tag=} query parameters of a manifest PUT.

    @param tags: their values, in the order given.
    @return: the distinct tags, in the order first given.
    @raise RegistryError: C{TAG_INVALID} with 414 for more than
        L{MAX_TAG_PARAMS} of them, C{TAG_INVALID} (400) for one outside
        the tag grammar.
    """
    if len(tags) > MAX_TAG_PARAMS:
        raise RegistryError(TOO_MANY_TAGS, detail={"limit": MAX_TAG_PARAMS, "given": len(tags)})
    return list(dict.fromkeys(check_tag(t) for t in tags))


class Manifests:
    """
    The registry's manifests and tags over the
    L{speedy.interfaces.IRegistryTables} of a metadata store.

    @param max_size: the largest manifest body accepted, in bytes.
    """

    def __init__(self, metadata, clock, max_size=4 << 20):
        self._metadata = metadata
        self._clock = clock
        self.max_size = max_size

    async def put(self, repository, reference, body, content_type=None, tags=()):
        """
        Validate and store a manifest under C{reference} (a tag or a digest)
        and the extra C{tags} (the C{?tag=} parameters: all are set, or
        none).  Every blob and manifest it references must be in the
        repository with the size its descriptor gives, except a C{subject}
        and layers with C{urls}.  The metadata store checks that
        in the transaction that stores the manifest, so a blob deleted at
        the same time either comes first (and the manifest is refused) or
        after the manifest is stored, never in between.

        @return: the stored L{ManifestRecord}.
        @raise RegistryError: C{MANIFEST_INVALID} (also for a descriptor
            whose size is not the stored size), C{DIGEST_INVALID},
            C{TAG_INVALID} (414 for too many C{tags}, see
            L{check_tag_params}), C{MANIFEST_BLOB_UNKNOWN} (one error per
            missing digest).
        """
        tags = check_tag_params(tags)
        if looks_like_digest(reference):
            algorithm, _ = parse_digest(reference)
            digest = digest_of(algorithm, body)
            if digest != reference:
                raise RegistryError(
                    DIGEST_INVALID, "the manifest's digest differs from the reference",
                    detail={"expected": reference, "actual": digest})
        else:
            digest = digest_of("sha256", body)
            tags = [check_tag(reference)] + tags
        parsed = parse_manifest(body, content_type)
        record = ManifestRecord(
            repository=repository, digest=digest, media_type=parsed.media_type,
            content=bytes(body), created=self._clock.seconds(), subject=parsed.subject,
            artifact_type=parsed.artifact_type, annotations=parsed.annotations,
            references=parsed.references)
        try:
            await self._metadata.put_manifest(
                record, tags=list(dict.fromkeys(tags)),
                required_blobs=[(d.digest, d.size) for d in parsed.blobs],
                required_manifests=[(d.digest, d.size) for d in parsed.manifests])
        except ReferencesMissing as e:
            errors = [RegistryError(MANIFEST_BLOB_UNKNOWN, detail={"digest": d})
                      for d in e.digests]
            raise RegistryError(
                MANIFEST_BLOB_UNKNOWN, detail=errors[0].detail, more=errors[1:])
        except SizeMismatch as e:
            raise _invalid(
                "a descriptor's size differs from the size of what it names",
                digest=e.digest, size=e.given, stored=e.stored)
        return record

    async def resolve(self, repository, reference):
        """
        @return: the digest C{reference} (a tag or a digest) names.
        @raise RegistryError: C{MANIFEST_UNKNOWN} (404) for an unknown tag,
            C{DIGEST_INVALID}/C{TAG_INVALID} (400) for a malformed reference.
        """
        if looks_like_digest(reference):
            parse_digest(reference)
            return reference
        digest = await self._metadata.resolve_tag(repository, check_tag(reference))
        if digest is None:
            raise RegistryError(MANIFEST_UNKNOWN, detail={"tag": reference})
        return digest

    async def get(self, repository, reference):
        """
        @return: the L{ManifestRecord} C{reference} names.
        @raise RegistryError: C{MANIFEST_UNKNOWN} (404).
        """
        digest = await self.resolve(repository, reference)
        record = await self._metadata.get_manifest(repository, digest)
        if record is None:
            raise RegistryError(MANIFEST_UNKNOWN, detail={"digest": digest})
        return record

    async def delete(self, repository, reference):
        """
        Delete a tag (C{reference} is a tag), or a manifest and every tag
        pointing at it (a digest).

        @raise RegistryError: C{MANIFEST_UNKNOWN} (404).
        """
        if looks_like_digest(reference):
            parse_digest(reference)
            deleted = await self._metadata.delete_manifest(repository, reference)
        else:
            deleted = await self._metadata.delete_tag(repository, check_tag(reference))
        if not deleted:
            raise RegistryError(MANIFEST_UNKNOWN, detail={"reference": reference})
