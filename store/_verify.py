"""Hashing of blobs, and the in-process memory of blobs already verified.

Reading a multi-gigabyte blob must not mean hashing it on every access. Once this process
has hashed a blob file and found it matches its name, the file's stat signature is
remembered (see :mod:`._statmemo`: the signature includes the inode change time, which no
user-level call can set back, and a file changed just before its read is not remembered);
while the file on disk keeps that signature it is trusted without re-hashing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import BinaryIO

from ._statmemo import Signature, StatMemo, signature

__all__ = ["CHUNK_SIZE", "VERIFIED", "Signature", "VerifiedCache", "hash_stream", "signature"]

CHUNK_SIZE = 4 << 20  # 4 MiB: large enough for SHA-NI throughput, small enough to stay cached


def hash_stream(f: BinaryIO, sink: Callable[[memoryview], object] | None = None) -> tuple[str, int]:
    """Hash everything readable from ``f``; return ``(hex sha256, byte count)``.

    ``sink``, when given, receives every chunk as well (e.g. the write method of a copy).
    """
    h = hashlib.sha256()
    buf = bytearray(CHUNK_SIZE)
    view = memoryview(buf)
    total = 0
    while True:
        n = f.readinto(view)  # type: ignore[attr-defined]
        if not n:
            break
        chunk = view[:n]
        h.update(chunk)
        if sink is not None:
            sink(chunk)
        total += n
    return h.hexdigest(), total


class VerifiedCache(StatMemo[bool]):
    """Thread-safe, bounded map ``path -> signature`` of blob files known to be intact."""

    def __init__(self, max_entries: int = 100_000) -> None:
        super().__init__(max_entries)

    def is_verified(self, path: str, sig: Signature) -> bool:
        """Whether ``path`` was verified while it had exactly this signature."""
        return self.get(path, sig) is not None

    def remember(self, path: str, sig: Signature, *, started_ns: int | None = None) -> None:
        """Record that ``path`` hashed correctly while it had signature ``sig``.

        ``started_ns`` is when the verifying read began (``time.time_ns()``): a file changed
        shortly before is not remembered. ``None`` only for a blob this process has just
        written itself.
        """
        self.put(path, sig, True, started_ns=started_ns)


VERIFIED = VerifiedCache()
"""The blobs this process has verified."""
