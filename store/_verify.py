"""Hashing of blobs, and the in-process memory of blobs already verified.

Reading a multi-gigabyte blob must not mean hashing it on every access. Once this process
has hashed a blob file and found it matches its name, the file's stat signature is
remembered; while the file on disk keeps that signature it is trusted without re-hashing.
The signature includes the inode change time, which no user-level call can set back, so
an edit in place followed by restoring the modification time is still noticed.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import BinaryIO

CHUNK_SIZE = 4 << 20  # 4 MiB: large enough for SHA-NI throughput, small enough to stay cached

Signature = tuple[int, int, int, int, int]


def signature(st: os.stat_result) -> Signature:
    """What identifies one unchanged version of a file: device, inode, size, mtime, ctime."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


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


class VerifiedCache:
    """Thread-safe, bounded map ``path -> signature`` of blob files known to be intact."""

    def __init__(self, max_entries: int = 100_000) -> None:
        self._max = max_entries
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, Signature] = OrderedDict()

    def is_verified(self, path: str, sig: Signature) -> bool:
        """Whether ``path`` was verified while it had exactly this signature."""
        with self._lock:
            if self._entries.get(path) != sig:
                return False
            self._entries.move_to_end(path)
            return True

    def remember(self, path: str, sig: Signature) -> None:
        """Record that ``path`` hashed correctly while it had signature ``sig``."""
        with self._lock:
            self._entries[path] = sig
            self._entries.move_to_end(path)
            while len(self._entries) > self._max:
                self._entries.popitem(last=False)

    def forget(self, path: str) -> None:
        """Drop what is known about ``path``."""
        with self._lock:
            self._entries.pop(path, None)

    def forget_under(self, prefix: str) -> None:
        """Drop every entry whose path starts with ``prefix``."""
        with self._lock:
            for p in [p for p in self._entries if p.startswith(prefix)]:
                del self._entries[p]

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)


VERIFIED = VerifiedCache()
