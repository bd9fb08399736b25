"""Exceptions and warnings raised by :mod:`hither_store`.

The hierarchy::

    Exception
     └── StoreError                  any failure reported by the content store
          ├── BlobNotFoundError       no blob is stored under a uri (also a KeyError)
          └── CorruptBlobError        a blob's content does not hash to its name

    UserWarning
     └── StoreWarning                a damaged record was found and moved to quarantine
          └── RemoteStoreWarning     a remote's entry was not used (unsigned, untrusted,
                                     damaged) or the remote could not be reached

Malformed arguments (a bad blob uri, a bad record key) raise :class:`ValueError`, and
values of the wrong type raise :class:`TypeError`: those are caller mistakes, not store
failures.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["BlobNotFoundError", "CorruptBlobError", "RemoteStoreWarning", "StoreError",
           "StoreWarning"]


class StoreError(Exception):
    """Base class of every error reported by the content store."""


class BlobNotFoundError(StoreError, KeyError):
    """No blob is stored under the requested uri.

    Attributes:
        uri: the requested blob uri.
        path: where the blob would live, if known.
    """

    def __init__(self, uri: str, path: str | Path | None = None) -> None:
        self.uri = uri
        self.path = Path(path) if path is not None else None
        where = f" (expected at {self.path})" if self.path is not None else ""
        super().__init__(f"blob not found: {uri}{where}")

    def __str__(self) -> str:
        # KeyError.__str__ would show the repr of the message, quotes included.
        return str(self.args[0])

    def __reduce__(self) -> tuple[type, tuple[str, Path | None]]:
        return (type(self), (self.uri, self.path))


class CorruptBlobError(StoreError):
    """A blob's content does not hash to the digest in its name.

    The damaged file has been moved out of the way (see ``quarantined_to``), so storing
    the same content again repairs the store.

    Attributes:
        uri: the blob uri that was read.
        path: the file that held the damaged content.
        actual: hex sha256 of what was actually read.
        quarantined_to: where the damaged file now lives, or None if it was not moved.
    """

    def __init__(
        self,
        uri: str,
        path: str | Path,
        actual: str,
        quarantined_to: str | Path | None = None,
    ) -> None:
        self.uri = uri
        self.path = Path(path)
        self.actual = actual
        self.quarantined_to = Path(quarantined_to) if quarantined_to is not None else None
        moved = (
            f"; moved to {self.quarantined_to}"
            if self.quarantined_to is not None
            else "; it was not moved aside (already moved or replaced meanwhile?)"
        )
        super().__init__(
            f"corrupt blob {uri} at {self.path}: content hashes to sha256 {actual}{moved}"
        )

    def __reduce__(self) -> tuple[type, tuple[str, Path, str, Path | None]]:
        return (type(self), (self.uri, self.path, self.actual, self.quarantined_to))


class StoreWarning(UserWarning):
    """Something in the store was damaged and has been set aside (e.g. a corrupt record)."""


class RemoteStoreWarning(StoreWarning):
    """A remote store's entry was not used (it failed a check), or the remote could not be
    reached or written; the lookup went on as a cache miss."""
