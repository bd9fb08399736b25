"""Names and places: blob uris, record keys, and the on-disk layout of a local store.

Layout under the store root::

    blobs/sha256/ab/cd/<hex>      blob whose sha256 is <hex> = "abcd..."
    records/<k0k1>/<key>.json     record whose key starts with the characters k0 k1
    records/<k0k1>/<key>.<h>.sig  signatures of the record whose body hashes to <h>
    tmp/                          in-flight writes (same filesystem, so rename is atomic)
    tmp/<label>-<pid>@<host>-<t>/ private work folders of one process (see owned_name)
    tmp/gc-<hex>-...              a blob set aside by gc while it checks it is still garbage
    quarantine/                   damaged files moved aside by readers
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ._shared import make_dirs

BLOB_SCHEME = "sha256://"
ENV_STORE = "HITHER_STORE"

_HEX_RE = re.compile(r"[0-9a-f]{64}")
_KEY_RE = re.compile(r"[0-9A-Za-z_-]{8,128}")
_RECORD_SUFFIX = ".json"
SIDECAR_SUFFIX = ".sig"
_LABEL_RE = re.compile(r"[a-z]+(?:-[a-z]+)*")
_OWNED_RE = re.compile(
    r"(?P<label>[a-z]+(?:-[a-z]+)*)-(?P<pid>[0-9]+)@(?P<host>[A-Za-z0-9._-]+)-[0-9a-f]{8,}")
_HOST_BAD = re.compile(r"[^A-Za-z0-9._-]")


def blob_uri(hexdigest: str) -> str:
    """Return the uri ``sha256://<hexdigest>`` of a blob.

    Raises:
        ValueError: ``hexdigest`` is not 64 lowercase hexadecimal characters.
    """
    if not isinstance(hexdigest, str) or not _HEX_RE.fullmatch(hexdigest):
        raise ValueError(
            f"not a sha256 hex digest (expected 64 lowercase hex characters): {hexdigest!r}"
        )
    return BLOB_SCHEME + hexdigest


def parse_blob_uri(uri: str) -> str:
    """Return the hex sha256 digest named by a blob uri ``sha256://<64 hex>``.

    Raises:
        ValueError: ``uri`` is not a well-formed blob uri.
    """
    if not isinstance(uri, str):
        raise ValueError(f"blob uri must be a str, got {type(uri).__name__}: {uri!r}")
    if not uri.startswith(BLOB_SCHEME):
        raise ValueError(f"not a blob uri (expected {BLOB_SCHEME}<64 hex>): {uri!r}")
    hexdigest = uri[len(BLOB_SCHEME) :]
    if not _HEX_RE.fullmatch(hexdigest):
        raise ValueError(
            f"malformed blob uri {uri!r}: the digest must be 64 lowercase hex characters"
        )
    return hexdigest


def is_hexdigest(name: str) -> bool:
    """Whether ``name`` is a 64-character lowercase hex digest (a blob file name)."""
    return _HEX_RE.fullmatch(name) is not None


def check_key(key: str) -> str:
    """Return ``key`` if it is a valid record key, else raise ValueError.

    A key is 8 to 128 characters from ``[0-9a-zA-Z_-]``: safe as a file name everywhere.
    """
    if not isinstance(key, str) or not _KEY_RE.fullmatch(key):
        raise ValueError(
            f"invalid record key {key!r}: expected 8 to 128 characters from [0-9a-zA-Z_-]"
        )
    return key


def is_key(key: str) -> bool:
    """Whether ``key`` is a valid record key."""
    return _KEY_RE.fullmatch(key) is not None


def blob_relpath(hexdigest: str) -> str:
    """``blobs/sha256/ab/cd/<hex>``: where a blob lives under any store root (local or
    remote), as a relative POSIX path."""
    return f"blobs/sha256/{hexdigest[:2]}/{hexdigest[2:4]}/{hexdigest}"


def record_relpath(key: str) -> str:
    """``records/<k0k1>/<key>.json``: where a record lives under any store root."""
    return f"records/{key[:2]}/{key}{_RECORD_SUFFIX}"


def sidecar_relpath(key: str, checksum: str) -> str:
    """``records/<k0k1>/<key>.<checksum>.sig``: the signatures of the record ``key`` whose
    body hashes to ``checksum``. Named by the body, so a sidecar can never be paired with
    another writer's version of the same record."""
    return f"records/{key[:2]}/{key}.{checksum}{SIDECAR_SUFFIX}"
def this_host() -> str:
    """This machine's name as it appears in owned names (``[A-Za-z0-9._-]`` only)."""
    import socket

    return _HOST_BAD.sub("_", socket.gethostname()) or "unknown"


def owned_name(label: str) -> str:
    """A fresh name ``<label>-<pid>@<host>-<random>`` for a folder this process owns.

    ``hither cache gc`` removes such folders once their owner is gone (see
    :func:`owner_of`), so a killed process leaves nothing behind for long.
    """
    if not _LABEL_RE.fullmatch(label):
        raise ValueError(f"label must be lowercase words joined by '-', got {label!r}")
    return f"{label}-{os.getpid()}@{this_host()}-{os.urandom(6).hex()}"


def owner_of(name: str) -> tuple[str, int, str] | None:
    """``(label, pid, host)`` of a name made by :func:`owned_name`, else None."""
    m = _OWNED_RE.fullmatch(name)
    if m is None:
        return None
    return m.group("label"), int(m.group("pid")), m.group("host")


def default_store_path() -> Path:
    """Return the default store root.

    ``$HITHER_STORE`` when set (and not empty), else ``<user cache dir>/hither/store``
    as given by platformdirs.
    """
    env = os.environ.get(ENV_STORE)
    if env:
        return Path(env).expanduser()
    import platformdirs

    return platformdirs.user_cache_path("hither") / "store"


@dataclass(frozen=True)
class Layout:
    """Where each kind of file lives under a store root."""

    root: Path

    @property
    def blobs_dir(self) -> Path:
        """Directory holding the sharded sha256 blobs."""
        return self.root / "blobs" / "sha256"

    @property
    def records_dir(self) -> Path:
        """Directory holding the sharded records."""
        return self.root / "records"

    @property
    def tmp_dir(self) -> Path:
        """Directory of in-flight writes."""
        return self.root / "tmp"

    @property
    def quarantine_dir(self) -> Path:
        """Directory where damaged files are moved aside."""
        return self.root / "quarantine"

    def subdirs(self) -> tuple[Path, ...]:
        """The top-level directories a store owns (removed by ``clear``)."""
        return (self.root / "blobs", self.records_dir, self.tmp_dir, self.quarantine_dir)

    def create(self) -> None:
        """Create the directories of an empty store (idempotent)."""
        for d in (self.blobs_dir, self.records_dir, self.tmp_dir, self.quarantine_dir):
            make_dirs(d)

    def blob_path(self, hexdigest: str) -> Path:
        """Path of the blob with this (already validated) hex digest."""
        return self.blobs_dir / hexdigest[:2] / hexdigest[2:4] / hexdigest

    def record_path(self, key: str) -> Path:
        """Path of the record with this (already validated) key."""
        return self.records_dir / key[:2] / (key + _RECORD_SUFFIX)

    def sidecar_path(self, key: str, checksum: str) -> Path:
        """Path of the signatures of record ``key`` with body checksum ``checksum``."""
        return self.root / sidecar_relpath(key, checksum)

    def iter_blob_files(self) -> Iterator[tuple[str, os.DirEntry[str]]]:
        """Yield ``(hexdigest, entry)`` for every well-placed blob file."""
        for a in _scandirs(self.blobs_dir):
            for b in _scandirs(a.path):
                for entry in _scanfiles(b.path):
                    name = entry.name
                    if is_hexdigest(name) and name[:2] == a.name and name[2:4] == b.name:
                        yield name, entry

    def iter_record_files(self) -> Iterator[tuple[str, os.DirEntry[str]]]:
        """Yield ``(key, entry)`` for every well-placed record file, in key order."""
        for shard in sorted(_scandirs(self.records_dir), key=lambda e: e.name):
            files = sorted(_scanfiles(shard.path), key=lambda e: e.name)
            for entry in files:
                name = entry.name
                if not name.endswith(_RECORD_SUFFIX):
                    continue
                key = name[: -len(_RECORD_SUFFIX)]
                if is_key(key) and key[:2] == shard.name:
                    yield key, entry


def _scandirs(path: str | Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(path) as it:
            return [e for e in it if e.is_dir(follow_symlinks=False)]
    except FileNotFoundError:
        return []


def _scanfiles(path: str | Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(path) as it:
            return [e for e in it if e.is_file(follow_symlinks=False)]
    except FileNotFoundError:
        return []
