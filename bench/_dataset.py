# -*- test-case-name: bench._test_loadgen -*-
"""
Fresh random payloads that any worker process can regenerate from a seed.

Blob C{i} of a L{Dataset} is the AES-128-CTR keystream under the run's random
key with the counter block C{i << 64}: incompressible, different in every
run (the key comes from C{os.urandom}), unique per index, and cheap to make
again in another process without shipping the bytes around.
"""

import hashlib
import os
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes


@dataclass(frozen=True)
class Item:
    """
    One object of a workload, as the load generator addresses it.

    C{name} is the registry blob digest or the file API path; C{digest} is
    always C{"sha256:<hex>"} of the bytes, which pulls are verified against.
    """

    index: int
    name: str
    size: int
    digest: str


@dataclass(frozen=True)
class Dataset:
    """C{count} random payloads of C{size} bytes each, fresh for every run."""

    count: int
    size: int
    key: bytes = field(default_factory=lambda: os.urandom(16))

    @property
    def run_id(self):
        """@return: a short hex name for this run (for repository and path names)."""
        return hashlib.sha256(self.key).hexdigest()[:12]

    def payload(self, index):
        """@return: the bytes of payload C{index}."""
        if not 0 <= index < self.count:
            raise IndexError(index)
        counter = (index << 64).to_bytes(16, "big")
        encryptor = Cipher(algorithms.AES(self.key), modes.CTR(counter)).encryptor()
        return encryptor.update(bytes(self.size)) + encryptor.finalize()


def sha256_digest(data):
    """@return: C{"sha256:<hex>"} of C{data}."""
    return "sha256:" + hashlib.sha256(data).hexdigest()
