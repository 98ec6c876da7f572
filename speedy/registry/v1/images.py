# -*- test-case-name: speedy.test.test_registry_v1 -*-
"""
V1 images: an image's JSON, its layer streamed into storage as chunks (like
any blob) while its payload checksum is computed, the checksum PUT that
completes it, and its ancestry.

docker-registry 0.9 kept an "uploading" mark from the JSON's PUT until the
checksum PUT matched the checksum it had computed from the layer, and kept
that checksum in the client's session cookie.  Here both live in the
metadata store (L{speedy.records.V1ImageRecord}: C{complete}, C{checksum}),
so each request of a push may reach another imageserver.

A layer's chunks are each recorded as an intent before their bytes go
out, and the image's row takes them over in the transaction that records
the layer; a layer replaced or cleared (a JSON or layer pushed again, a
checksum mismatch, an abandoned push's expiry) has its chunks recorded as
garbage in the transaction that changes the row, then deleted at once
(only complete images' layers are read, so no pull is cut short).  At
every step some row owns the chunks: an imageserver killed in between
leaves them to the chunk collector.

The payload checksum is C{sha256:} and the hex SHA-256 of the image's JSON
as stored, a newline, and the layer's bytes: what Docker 0.10 and later send
as C{X-Docker-Checksum-Payload}.
"""

import json

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorThreads
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from speedy.errors import ReferencesMissing
from speedy.records import V1ImageRecord
from speedy.registry.bodies import BlobBody
from speedy.registry.digests import OneShotHash, hashing_lane
from speedy.registry.v1.errors import V1Error
from speedy.registry.v1.names import is_image_id

_log = Logger()

#: Abandoned layers examined per round of expiry.
EXPIRY_BATCH = 100


def image_not_found():
    return V1Error("Image not found", 404)


def payload_hash(image_json):
    """@return: a running SHA-256 fed the image's JSON and a newline: the
    layer's bytes complete its payload checksum."""
    hasher = OneShotHash("sha256")
    hasher.update(image_json + b"\n")
    return hasher


def parse_image_json(image_id, body):
    """
    Check an image JSON PUT as docker-registry did.

    @return: the image's parent id, or None.
    @raise V1Error: 400 with docker-registry's message.
    """
    try:
        document = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):  # nested too deep too
        document = None
    if not document or not isinstance(document, dict):
        raise V1Error("Invalid JSON")
    if "id" not in document:
        raise V1Error("Missing key `id' in JSON")
    if document["id"] != image_id:
        raise V1Error("JSON data contains invalid id")
    parent = document.get("parent")
    if not parent:
        return None
    if not is_image_id(parent):
        raise V1Error("Image depends on a non existing parent")
    return parent


class V1Images:
    """
    V1 images over the L{speedy.interfaces.IV1Tables} of a metadata store
    and an L{IChunkedStorage}.

    @param clock: runs the expiry timer; hashes layers in its thread pool
        when it has one.
    @param expiry: seconds after its JSON's PUT that the layer of an image
        whose push never completed (no matching checksum) is deleted.
    @param expiry_interval: seconds between two looks for such layers.
    """

    def __init__(self, metadata, storage, clock, expiry=24 * 3600, expiry_interval=600):
        self._metadata = metadata
        self._storage = storage
        self._clock = clock
        self.expiry = expiry
        self._expiry_interval = expiry_interval
        self._expiry_loop = None
        self._run_in_thread = hashing_lane(clock) if IReactorThreads.providedBy(clock) else None

    def start(self):
        """Start deleting the layers of abandoned pushes."""
        self._expiry_loop = LoopingCall(self._expire_logged)
        self._expiry_loop.clock = self._clock
        self._expiry_loop.start(self._expiry_interval, now=False).addErrback(
            lambda f: _log.failure("V1 layer expiry stopped", f))

    def stop(self):
        """Stop the expiry timer."""
        if self._expiry_loop is not None and self._expiry_loop.running:
            self._expiry_loop.stop()
        self._expiry_loop = None

    def _expire_logged(self):
        d = Deferred.fromCoroutine(self.expire())
        d.addErrback(lambda f: _log.failure("expiring abandoned V1 layers failed", f))
        return d

    async def expire(self):
        """
        Delete the layers of unfinished images whose JSON was PUT more
        than C{expiry} seconds ago (a push abandoned between its layer and
        its checksum); the images stay unfinished, to be pushed again.

        @return: the number of layers deleted.
        """
        count = 0
        while True:
            stale = await self._metadata.stale_v1_layers(
                self._clock.seconds() - self.expiry, limit=EXPIRY_BATCH)
            for image in stale:
                if await self._metadata.clear_v1_layer(
                        image.image_id, image.chunks,
                        f"v1-image {image.image_id}: abandoned push expired"):
                    await self._storage.delete(image.chunks)
                    count += 1
            if len(stale) < EXPIRY_BATCH:
                return count

    async def put_json(self, image_id, body):
        """
        Store an image's JSON: a new image, or one whose push did not
        complete (its layer, if any, is deleted).

        @raise V1Error: 400 for bad JSON or a parent that is not stored,
            409 C{Image already exists} for a complete image.
        """
        parent_id = parse_image_json(image_id, body)
        ancestry = (image_id,)
        if parent_id is not None:
            parent = await self._metadata.get_v1_image(parent_id)
            if parent is None:
                raise V1Error("Image depends on a non existing parent")
            if image_id in parent.ancestry:
                raise V1Error("Image depends on itself through its parent")
            ancestry += parent.ancestry
        try:
            before = await self._metadata.put_v1_image(
                V1ImageRecord(image_id, bytes(body), parent_id, ancestry))
        except ReferencesMissing:
            raise V1Error("Image depends on a non existing parent")
        if before is not None and before.complete:
            raise V1Error("Image already exists", 409)
        if before is not None and before.chunks:
            await self._storage.delete(before.chunks)

    def layer_sink(self, image_id, body_length=None):
        """
        @return: the L{BlobBody} a layer's PUT streams into: stored as
            chunks and fed to the payload checksum; it fails with 404 when
            the image's JSON was not PUT first, 409 when the image is
            complete (nothing of the body is stored then).  Each chunk is
            recorded as an intent before its bytes go out; L{put_layer}
            has the image take them over.
        """
        reason = f"v1 layer of {image_id}"

        def record_intent(chunk):
            return self._metadata.record_intents([chunk], reason)
        return BlobBody(Deferred.fromCoroutine(self._prepare_layer(image_id)), self._storage,
                        run_in_thread=self._run_in_thread, body_length=body_length,
                        record_intent=record_intent)

    async def _prepare_layer(self, image_id):
        image = await self._metadata.get_v1_image(image_id)
        if image is None:
            raise image_not_found()
        if image.complete:
            raise V1Error("Image already exists", 409)
        return image, payload_hash(image.json)

    async def put_layer(self, received):
        """
        Record a layer that arrived whole (a L{layer_sink}'s outcome),
        with its payload checksum, taking its chunks' intents over; a layer
        stored before for the image is recorded as garbage and deleted.

        @raise V1Error: 404 or 409 when the image went away, completed or
            got another JSON meanwhile; the layer's chunks are deleted.
        @raise IntentExpired: the body took longer than the collector's
            grace period (503: push again); its chunks are deleted.
        """
        image = received.context
        try:
            before = await self._metadata.set_v1_layer(
                image.image_id, image.json, received.length, received.chunks,
                received.hash.digest(), adopted=received.chunks)
        except BaseException:
            await self._storage.delete(received.chunks)
            raise
        if before is None:
            await self._storage.delete(received.chunks)
            current = await self._metadata.get_v1_image(image.image_id)
            if current is None:
                raise image_not_found()
            if current.complete:
                raise V1Error("Image already exists", 409)
            raise V1Error("The image's JSON changed while its layer was sent: push it again", 409)
        if before.chunks:
            await self._storage.delete(before.chunks)

    async def put_checksum(self, image_id, checksum):
        """
        Complete an image if C{checksum} (the request's
        C{X-Docker-Checksum-Payload}) is the one computed from its layer;
        if it is not, the layer is deleted and the image stays unfinished.

        @raise V1Error: as docker-registry: 412 without the header, 400
            for an empty one or a mismatch, 404 for an unknown image, 409
            for a complete one; 400 when no layer was PUT.
        """
        if checksum is None:
            raise V1Error(
                "X-Docker-Checksum-Payload not set.  If you are using the Docker daemon, "
                "you should upgrade to version 0.10 or later", 412)
        if not checksum:
            raise V1Error("Missing Image's checksum")
        image = await self._metadata.get_v1_image(image_id)
        if image is None:
            raise image_not_found()
        if image.complete:
            raise V1Error("Cannot set this image checksum", 409)
        if image.checksum is None:
            raise V1Error("Image layer not found: PUT the layer before its checksum")
        if checksum != image.checksum:
            if await self._metadata.clear_v1_layer(image_id, image.chunks,
                                                   f"v1-image {image_id}: checksum mismatch"):
                await self._storage.delete(image.chunks)
            raise V1Error("Checksum mismatch")
        if not await self._metadata.complete_v1_image(image_id, checksum):
            raise V1Error("Cannot set this image checksum", 409)

    async def complete(self, image_id):
        """
        @return: the L{V1ImageRecord} of a complete image.
        @raise V1Error: 404 C{Image not found}; 400 C{Image is being
            uploaded, retry later} for an unfinished one.
        """
        image = await self._metadata.get_v1_image(image_id)
        if image is None:
            raise image_not_found()
        if not image.complete:
            raise V1Error("Image is being uploaded, retry later")
        return image
