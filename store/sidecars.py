"""Signature sidecars in a local store: read, write, and sign the one of a record."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ._atomic import TempFile, publish
from ._paths import sidecar_relpath
from .local import LocalStore
from .signing import SecretKey, Sidecar, make_claim

__all__ = ["ensure_signed", "read_sidecar", "write_sidecar"]


def read_sidecar(store: LocalStore, key: str, checksum: str) -> Sidecar | None:
    """The store's signature file of this version (``checksum``) of record ``key``;
    None when absent, unreadable or about another record."""
    try:
        sc = Sidecar.decode((store.root / sidecar_relpath(key, checksum)).read_bytes())
    except (OSError, ValueError):
        return None
    c = sc.claim
    return sc if c.get("key") == key and c.get("record_sha256") == checksum else None


def write_sidecar(store: LocalStore, key: str, checksum: str, sidecar: Sidecar) -> None:
    """Write (atomically, replacing) the signature file of a record version."""
    with TempFile(store.tmp_dir, "sig", store.fsync) as tmp:
        tmp.file.write(sidecar.encode())
        tmp.finish()
        publish(tmp.path, store.root / sidecar_relpath(key, checksum))


def ensure_signed(store: LocalStore, key: str, body: Mapping[str, Any], checksum: str,
                  sizes: Mapping[str, int], signer: SecretKey | None) -> Sidecar | None:
    """The sidecar of this record version, with ``signer``'s signature added (and saved)
    when missing; None when there is none and no signer."""
    sc = read_sidecar(store, key, checksum)
    claim = make_claim(key, body, sizes, checksum)
    if sc is not None and sc.claim != claim:
        sc = None  # made from other blob sizes or rules: start afresh
    if signer is not None and (sc is None or not sc.signed_by(signer.public_key)):
        sc = sc or Sidecar(claim)
        sc.sign(signer)
        if not store.readonly:
            write_sidecar(store, key, checksum, sc)
    return sc
