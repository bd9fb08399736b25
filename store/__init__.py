"""hither_store: the content-addressed store of hither.

Blobs (immutable bytes named ``sha256://<hex>``) and records (JSON dicts under opaque
keys) in a plain directory layout that any filesystem, NFS included, can hold. Writes are
atomic and safe with many concurrent writers; reads verify what they return.

The same layout on an object store or a web server makes a remote store
(:class:`Remote`); a :class:`StoreStack` reads through the local store to remotes and
copies verified hits in; records carry Ed25519 signatures in sidecar files
(:mod:`hither_store.signing`); closures of results move as bundles
(:mod:`hither_store.bundle`).

This package depends on nothing in ``hither``.
"""

from typing import TYPE_CHECKING, Any

from ._hitindex import Summary
from ._maintenance import owned_dirs, tree_size
from ._paths import blob_uri, default_store_path, owned_name, parse_blob_uri
from ._statmemo import FileMemo, PersistentStatMemo, StatMemo
from .errors import (
    BlobNotFoundError,
    CorruptBlobError,
    RemoteStoreWarning,
    StoreError,
    StoreWarning,
)
from .local import LocalStore

if TYPE_CHECKING:
    from .closure import Closure, RecordRefs, compute_closure
    from .lookupcache import LookupCache
    from .signing import PublicKey, SecretKey, Sidecar, TrustedKeys
    from .stack import PullReport, PushReport, Remote, StoreStack, remotes_from_env

# sharing (remotes, signatures, closures) is imported on first use: a local store alone
# does not pay for it
_LAZY = {
    "Closure": ".closure", "RecordRefs": ".closure", "compute_closure": ".closure",
    "LookupCache": ".lookupcache",
    "PublicKey": ".signing", "SecretKey": ".signing", "Sidecar": ".signing",
    "TrustedKeys": ".signing",
    "PullReport": ".stack", "PushReport": ".stack", "Remote": ".stack",
    "StoreStack": ".stack", "remotes_from_env": ".stack",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'hither_store' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


__all__ = [
    "BlobNotFoundError",
    "Closure",
    "CorruptBlobError",
    "FileMemo",
    "LocalStore",
    "LookupCache",
    "PersistentStatMemo",
    "PublicKey",
    "PullReport",
    "PushReport",
    "RecordRefs",
    "Remote",
    "RemoteStoreWarning",
    "SecretKey",
    "Sidecar",
    "StatMemo",
    "StoreError",
    "StoreStack",
    "StoreWarning",
    "Summary",
    "TrustedKeys",
    "blob_uri",
    "compute_closure",
    "default_store_path",
    "owned_dirs",
    "owned_name",
    "parse_blob_uri",
    "remotes_from_env",
    "tree_size",
]
