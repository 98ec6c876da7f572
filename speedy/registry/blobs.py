# -*- test-case-name: speedy.test.test_registry_api,speedy.test.test_registry_names -*-
"""
Blobs: content-addressed, stored once as an ordered chunk list
(L{BlobRecord}) and made visible per repository by links.  Also the byte
range grammar of blob GETs.
"""

import re

from speedy.errors import BadRequest, Busy
from speedy.records import BlobRecord
from speedy.registry.errors import BLOB_UNKNOWN, RegistryError
from speedy.registry.names import check_name

_RANGE = re.compile(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*\Z")

#: Copies of a blob stored by others that a commit finds deleted before it
#: could link them, before it gives up.
COMMIT_ATTEMPTS = 3


class Blobs:
    """
    The registry's blobs over the L{speedy.interfaces.IRegistryTables} of
    a metadata store and an L{IChunkedStorage}.
    """

    def __init__(self, metadata, storage, clock):
        self._metadata = metadata
        self._storage = storage
        self._clock = clock

    async def linked(self, repository, digest):
        """
        @return: the L{BlobRecord} of C{digest} if it is linked in
            C{repository}.
        @raise RegistryError: C{BLOB_UNKNOWN} (404) otherwise.
        """
        blob = await self._metadata.blob_linked(repository, digest)
        if blob is None:
            raise RegistryError(BLOB_UNKNOWN, detail={"digest": digest})
        return blob

    async def commit(self, repository, digest, size, chunks, adopted=False):
        """
        Record a fully received and verified blob and link it in
        C{repository}.  If the digest is already stored, the stored copy
        wins and C{chunks} are deleted from storage once the link is made;
        if that copy is deleted before (its last link was removed
        meanwhile), the blob is stored again from C{chunks}.

        @param adopted: True when C{chunks} were written under intents
            (L{speedy.interfaces.IGarbageTables.record_intents}): a blob
            stored from them takes them over in the transaction that
            stores it (L{speedy.interfaces.IRegistryTables.put_blob}).
        @return: the stored L{BlobRecord}.
        @raise Busy: (503) the blob was deleted under the commit every time,
            or the copy stored from C{chunks} itself was, so they may be
            gone: the client pushes again.
        @raise IntentExpired: (503) C{chunks}' intents had expired (the
            collector deletes them): nothing is stored, the client pushes
            again.
        """
        chunks = tuple(chunks)
        stored = None
        try:
            for _ in range(COMMIT_ATTEMPTS):
                stored = await self._metadata.put_blob(
                    BlobRecord(digest, size, chunks, self._clock.seconds()),
                    adopted=chunks if adopted else ())
                if await self._link(repository, digest):
                    return stored
                if stored.chunks == chunks:
                    break
            raise Busy(f"blob {digest} was deleted while it was being committed")
        finally:
            if stored is None or stored.chunks != chunks:
                await self._storage.delete(chunks)

    async def _link(self, repository, digest):
        """
        Link C{digest} into C{repository}.

        @return: True, or False when the blob is gone (deleted since it was
            looked up).
        """
        try:
            await self._metadata.link_blob(repository, digest)
        except BadRequest:
            if await self._metadata.get_blob(digest) is not None:
                raise
            return False
        return True

    async def mount(self, repository, digest, source=None):
        """
        Link C{digest} into C{repository} without an upload: from
        C{source} when given (it must be linked there), else from anywhere
        in the registry.

        @return: the L{BlobRecord}, or None when the blob cannot be mounted
            (it is unknown, or was deleted meanwhile): the caller starts a
            plain upload instead.
        """
        if source is not None:
            check_name(source)
            blob = await self._metadata.blob_linked(source, digest)
        else:
            blob = await self._metadata.get_blob(digest)
        if blob is None or not await self._link(repository, digest):
            return None
        return blob

    async def remove(self, repository, digest):
        """
        Unlink C{digest} from C{repository}; when no repository links it
        any more, delete the blob and record its chunks as garbage: the
        chunk collector (L{speedy.imageserver.collector}) deletes them
        after its grace period, so a pull that found the blob before it
        went keeps its bytes to the end.

        @raise RegistryError: C{BLOB_UNKNOWN} (404) when it was not linked.
        """
        if not await self._metadata.unlink_blob(repository, digest):
            raise RegistryError(BLOB_UNKNOWN, detail={"digest": digest})
        removed = await self._metadata.delete_blob_if_unlinked(digest)
        if removed is not None:
            await self._metadata.record_garbage(removed.chunks, f"blob {digest} deleted")


def parse_range(header, size):
    """
    Interpret a request's C{Range} header against a blob of C{size} bytes.

    @param header: the header's value as text, or None.
    @return: C{(offset, length)} of a satisfiable single byte range, or None
        when the whole blob is to be sent (no header, or one we ignore as
        RFC 9110 allows: several ranges, another unit, bad syntax).
    @raise ValueError: a well-formed range that lies outside the blob
        (answered 416).
    """
    if header is None:
        return None
    m = _RANGE.match(header)
    if m is None:
        return None
    first, last = m.groups()
    if not first and not last:
        return None
    if not first:
        suffix = int(last)
        if suffix == 0 or size == 0:
            raise ValueError(f"unsatisfiable suffix range of {suffix} bytes")
        suffix = min(suffix, size)
        return size - suffix, suffix
    start = int(first)
    end = int(last) if last else size - 1
    if last and end < start:
        return None
    if start >= size:
        raise ValueError(f"range starts at {start}, blob has {size} bytes")
    end = min(end, size - 1)
    return start, end - start + 1
