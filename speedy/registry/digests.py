# -*- test-case-name: speedy.test.test_registry_names -*-
"""
Running sha256/sha512 hashes whose state can be saved in the metadata store
and restored by another imageserver (PyPI C{rehashes}; C{hashlib} objects
cannot be serialised).

Hashing happens on the reactor thread, one body piece at a time as it comes
off the socket (Twisted reads at most 64 KiB at once; anything bigger is fed
in L{SLICE} pieces), never a whole 16 MiB chunk at once.  Measured here
(rehashes 0.3.0, 2 cores): sha256 ~1.4 GB/s like C{hashlib} (SHA-NI),
sha512 ~450 MB/s, so a 64 KiB piece holds the reactor 0.05 ms (sha256) or
0.15 ms (sha512) and a slice at most ~2.3 ms.  Both C{hashlib} and
C{rehashes} 0.3.0 release the GIL while hashing, so a thread pool could take
the work off the reactor thread; per 64 KiB piece the thread hop costs about
as much as the hash, so it would only pay with batching, and is left for
when profiles of real pushes show the reactor thread saturated.
"""

import hashlib

import rehashes

from speedy.registry.names import HEX_LENGTHS

_HASHERS = {"sha256": rehashes.PySha256, "sha512": rehashes.PySha512}

#: Largest buffer hashed in one call.
SLICE = 1 << 20


class ResumableHash:
    """
    A running hash of one algorithm over a byte stream.

    @ivar algorithm: C{"sha256"} or C{"sha512"}.
    """

    def __init__(self, algorithm, state=None):
        """
        @param state: bytes from L{state} of an earlier hash of the same
            algorithm, to continue it.
        @raise ValueError: unknown algorithm, or a state that cannot be
            restored (the caller then re-hashes the stored bytes).
        """
        if algorithm not in _HASHERS:
            raise ValueError(f"unsupported digest algorithm {algorithm!r}")
        self.algorithm = algorithm
        if state is None:
            self._hasher = _HASHERS[algorithm]()
        else:
            try:
                self._hasher = _HASHERS[algorithm].deserialize(bytes(state))
            except Exception as e:
                raise ValueError(f"cannot restore {algorithm} hash state: {e}") from e

    def update(self, data):
        """Feed C{data} (bytes-like)."""
        view = memoryview(data)
        for start in range(0, len(view), SLICE):
            self._hasher.update(bytes(view[start:start + SLICE]))

    def state(self):
        """@return: the serialised state, as bytes, for L{ResumableHash}C{(algorithm, state)}."""
        return bytes(self._hasher.serialize())

    def digest(self):
        """@return: the digest of everything fed so far, C{"<algorithm>:<hex>"}.
        Feeding may continue afterwards."""
        return f"{self.algorithm}:{self._hasher.finalize()}"


def digest_of(algorithm, data):
    """@return: the C{"<algorithm>:<hex>"} digest of the bytes C{data}
    (C{hashlib}, for whole small bodies such as manifests)."""
    if algorithm not in HEX_LENGTHS:
        raise ValueError(f"unsupported digest algorithm {algorithm!r}")
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"
