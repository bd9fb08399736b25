"""Values <-> store: the codec (:mod:`hither._codec`) over a content-addressed store."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from . import _codec


def blob_writer(store: Any) -> Callable[[str, Any], str]:
    """A codec ``put_blob`` writing into ``store`` (files are copied in by content)."""
    def put_blob(kind: str, write: Any) -> str:
        if kind == "file":
            known = getattr(write, "_sha256", None)
            if known is not None and store.refresh_blob("sha256://" + known):
                return "sha256://" + known  # a snapshot already in this store
            return store.put_file(os.fspath(write))
        return store.put_writer(write)

    return put_blob


def blob_reader(store: Any) -> Callable[[str, str], Any]:
    """A codec ``get_blob`` reading verified blobs from ``store`` (arrays memory-mapped,
    long strings decoded from the file)."""
    def get_blob(ref: str, kind: str) -> Any:
        if kind in ("npy", "file", "str"):
            return str(store.blob_path(ref))
        return store.get_bytes(ref)

    return get_blob


def encode(value: Any, store: Any, *, path: str = "value") -> Any:
    """``value`` as a JSON manifest whose blobs are in ``store``."""
    return _codec.encode(value, blob_writer(store), path=path)


def decode(manifest: Any, store: Any) -> Any:
    """The value of a manifest whose blobs are in ``store``."""
    return _codec.decode(manifest, blob_reader(store))
