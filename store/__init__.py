"""hither_store: the content-addressed store of hither.

Blobs (immutable bytes named ``sha256://<hex>``) and records (JSON dicts under opaque
keys) in a plain directory layout that any filesystem, NFS included, can hold. Writes are
atomic and safe with many concurrent writers; reads verify what they return.

This package depends on nothing in ``hither``.
"""

from ._maintenance import owned_dirs, tree_size
from ._paths import blob_uri, default_store_path, owned_name, parse_blob_uri
from ._statmemo import FileMemo, PersistentStatMemo, StatMemo
from .errors import BlobNotFoundError, CorruptBlobError, StoreError, StoreWarning
from .local import LocalStore

__all__ = [
    "BlobNotFoundError",
    "CorruptBlobError",
    "FileMemo",
    "LocalStore",
    "PersistentStatMemo",
    "StatMemo",
    "StoreError",
    "StoreWarning",
    "blob_uri",
    "default_store_path",
    "owned_dirs",
    "owned_name",
    "parse_blob_uri",
    "tree_size",
]
