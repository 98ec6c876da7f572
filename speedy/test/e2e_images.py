# -*- test-case-name: speedy.test.test_registry_clients -*-
"""
OCI image layouts built on disk in pure Python, for end-to-end tests with
real registry clients (no docker, no network).

An OCI image layout is a directory::

    oci-layout            {"imageLayoutVersion": "1.0.0"}
    index.json            an image index naming the tagged manifests
                          (annotation org.opencontainers.image.ref.name)
    blobs/sha256/<hex>    every blob: layers, configs, manifests, indexes

which C{skopeo copy oci:DIR:tag ...} reads and writes.  Layers are tar
archives of one file of seeded random bytes, gzip-compressed, so the same
seed always gives the same digests and a test can tell a byte changed.

    layout = ImageLayout(path)
    image = layout.add_image([1 << 20, 100 << 20], seed=1)
    layout.tag(image, "v1")
"""

import gzip
import hashlib
import json
import os
import random
import tarfile

from attrs import frozen

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
REF_NAME = "org.opencontainers.image.ref.name"

_PIECE = 1 << 20


@frozen
class Descriptor:
    """An OCI content descriptor: what a manifest or index says of a blob."""

    media_type: str
    digest: str
    size: int
    platform: dict | None = None
    annotations: dict | None = None

    def to_json(self):
        """@return: the descriptor as the JSON object manifests embed."""
        value = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.platform is not None:
            value["platform"] = self.platform
        if self.annotations:
            value["annotations"] = self.annotations
        return value


def sha256_digest(data):
    """@return: C{"sha256:<hex>"} of C{data}."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def canonical_json(value):
    """@return: C{value} encoded as compact, key-sorted UTF-8 JSON bytes."""
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode("utf-8")


class _HashingFile:
    """A write-only file that hashes and counts what passes through it."""

    def __init__(self, f):
        self._f = f
        self.sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data):
        self.sha256.update(data)
        self.size += len(data)
        return self._f.write(data)

    def flush(self):
        self._f.flush()


class _RandomFile:
    """A read-only file of C{size} seeded random bytes, made as it is read."""

    def __init__(self, size, rng):
        self._left = size
        self._rng = rng

    def read(self, n=-1):
        if n < 0 or n > self._left:
            n = self._left
        self._left -= n
        return self._rng.randbytes(n)


class ImageLayout:
    """
    An OCI image layout directory being written.  Blobs land under
    C{blobs/sha256/}; C{index.json} is rewritten on every L{tag}.
    """

    def __init__(self, path):
        self.path = path
        self._tagged = []
        os.makedirs(os.path.join(path, "blobs", "sha256"), exist_ok=True)
        with open(os.path.join(path, "oci-layout"), "w") as f:
            json.dump({"imageLayoutVersion": "1.0.0"}, f)
        self._write_index()

    def blob_path(self, digest):
        """@return: the file holding the blob C{digest}."""
        algorithm, hexdigest = digest.split(":", 1)
        return os.path.join(self.path, "blobs", algorithm, hexdigest)

    def add_blob(self, data, media_type):
        """Store C{data} as a blob.  @return: its L{Descriptor}."""
        digest = sha256_digest(data)
        with open(self.blob_path(digest), "wb") as f:
            f.write(data)
        return Descriptor(media_type, digest, len(data))

    def add_layer(self, size, seed, compresslevel=1):
        """
        Store a gzip-compressed tar layer holding one file of C{size} random
        bytes drawn from C{seed}, streamed to disk (never whole in memory).
        Random bytes do not compress: use C{compresslevel=0} for big layers
        to spend no time trying.

        @return: the layer's L{Descriptor}.
        """
        scratch = os.path.join(self.path, "blobs", "layer.partial")
        with open(scratch, "wb") as raw:
            hashing = _HashingFile(raw)
            with gzip.GzipFile(fileobj=hashing, mode="wb", compresslevel=compresslevel, mtime=0) as gz:
                with tarfile.open(fileobj=gz, mode="w|", format=tarfile.PAX_FORMAT) as tar:
                    member = tarfile.TarInfo(f"data/random-{seed}-{size}.bin")
                    member.size = size
                    member.mode = 0o644
                    tar.addfile(member, _RandomFile(size, random.Random(seed)))
        digest = "sha256:" + hashing.sha256.hexdigest()
        os.replace(scratch, self.blob_path(digest))
        return Descriptor(OCI_LAYER_GZIP, digest, hashing.size)

    def add_manifest(self, manifest, media_type=OCI_MANIFEST, **descriptor_fields):
        """
        Store a manifest (or index) given as a JSON-ready dict.

        @return: its L{Descriptor}, with C{descriptor_fields} (platform,
            annotations) set on it.
        """
        stored = self.add_blob(canonical_json(manifest), media_type)
        return Descriptor(media_type, stored.digest, stored.size, **descriptor_fields)

    def add_image(self, layer_sizes, seed, platform=None, big_layer=32 << 20):
        """
        Store a runnable-looking image: one layer per size in C{layer_sizes}
        (layers of C{big_layer} bytes or more are stored uncompressed inside
        their gzip stream), a config listing their diff ids, and a manifest.

        @param platform: C{{"os": ..., "architecture": ...}}; linux/amd64 if
            None.
        @return: the manifest's L{Descriptor}, carrying C{platform}.
        """
        platform = platform or {"os": "linux", "architecture": "amd64"}
        layers = [
            self.add_layer(size, seed=seed * 1000 + i, compresslevel=0 if size >= big_layer else 1)
            for i, size in enumerate(layer_sizes)
        ]
        config = self.add_blob(canonical_json({
            **platform,
            "config": {"Cmd": ["/bin/true"]},
            "rootfs": {"type": "layers", "diff_ids": [self.diff_id(layer) for layer in layers]},
        }), OCI_CONFIG)
        return self.add_manifest({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": config.to_json(),
            "layers": [layer.to_json() for layer in layers],
        }, platform=platform)

    def add_index(self, manifests):
        """
        Store a multi-platform image index over C{manifests} (descriptors
        that carry their platform).

        @return: the index's L{Descriptor}.
        """
        return self.add_manifest({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [m.to_json() for m in manifests],
        }, media_type=OCI_INDEX)

    def diff_id(self, layer):
        """@return: the digest of C{layer}'s uncompressed tar stream."""
        sha = hashlib.sha256()
        with gzip.open(self.blob_path(layer.digest), "rb") as f:
            for piece in iter(lambda: f.read(_PIECE), b""):
                sha.update(piece)
        return "sha256:" + sha.hexdigest()

    def tag(self, descriptor, name):
        """Name C{descriptor} C{name} in C{index.json}, so C{oci:DIR:name}
        finds it."""
        annotations = dict(descriptor.annotations or {}, **{REF_NAME: name})
        self._tagged.append(Descriptor(descriptor.media_type, descriptor.digest, descriptor.size,
                                       annotations=annotations))
        self._write_index()

    def _write_index(self):
        with open(os.path.join(self.path, "index.json"), "wb") as f:
            f.write(canonical_json({
                "schemaVersion": 2,
                "mediaType": OCI_INDEX,
                "manifests": [d.to_json() for d in self._tagged],
            }))


def layout_blobs(path):
    """
    @return: a dict mapping the digest of every blob in the layout at
        C{path} to the sha256 of its bytes as found on disk (equal to the
        digest unless the file is damaged).
    """
    found = {}
    for algorithm in os.listdir(os.path.join(path, "blobs")):
        directory = os.path.join(path, "blobs", algorithm)
        if not os.path.isdir(directory):
            continue
        for hexdigest in os.listdir(directory):
            sha = hashlib.sha256()
            with open(os.path.join(directory, hexdigest), "rb") as f:
                for piece in iter(lambda: f.read(_PIECE), b""):
                    sha.update(piece)
            found[f"{algorithm}:{hexdigest}"] = "sha256:" + sha.hexdigest()
    return found


def layout_tags(path):
    """@return: a dict mapping each tag of the layout at C{path} to the
    digest it names in C{index.json}."""
    with open(os.path.join(path, "index.json"), "rb") as f:
        index = json.load(f)
    return {
        m["annotations"][REF_NAME]: m["digest"]
        for m in index.get("manifests", [])
        if REF_NAME in m.get("annotations", {})
    }
