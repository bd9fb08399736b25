"""``hi.JobCache``: job records by key, over a content-addressed store."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from hither_store import LocalStore, default_store_path

from .errors import CacheError


class JobCache:
    """Where job results are memoized: a :class:`hither_store.LocalStore`.

    ``JobCache()`` uses ``$HITHER_STORE`` or the user cache directory (e.g.
    ``~/.cache/hither/store``); ``JobCache(path=...)`` a directory of your choice (a
    shared disk works: writes are atomic and reads verified); ``JobCache(use_tempdir=True)``
    a folder of this user in the system temp dir. ``readonly=True`` reads results but never writes.

    Whether failures are stored and reused is set per block with ``hi.Config(
    cache_failing=..., rerun_failing=..., force_run=...)``.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None, *,
                 use_tempdir: bool | None = None, readonly: bool = False,
                 store: LocalStore | None = None) -> None:
        given = sum(x is not None for x in (path, store)) + bool(use_tempdir)
        if given > 1:
            raise ValueError("give at most one of path=, use_tempdir=True and store=")
        if store is None:
            if path is not None:
                root = Path(os.fspath(path))
            elif use_tempdir:
                suffix = f"_{os.getuid()}" if hasattr(os, "getuid") else ""
                root = Path(tempfile.gettempdir()) / f"hither_job_cache{suffix}"
            else:
                root = default_store_path()
            try:
                store = LocalStore(root)
            except OSError as e:
                raise CacheError(f"cannot open the job cache at {root}: {e}") from e
        self.store = store
        self.readonly = bool(readonly)

    @property
    def path(self) -> Path:
        """The store's directory."""
        return self.store.root

    def get_record(self, key: str) -> dict[str, Any] | None:
        """The record stored under ``key`` (None when absent or unreadable)."""
        return self.store.get_record(key)

    def put_record(self, key: str, record: dict[str, Any]) -> None:
        """Store ``record`` under ``key`` (nothing when read-only)."""
        if not self.readonly:
            self.store.put_record(key, record)

    def __repr__(self) -> str:
        ro = ", readonly=True" if self.readonly else ""
        return f"JobCache(path={str(self.path)!r}{ro})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, JobCache) and other.store == self.store \
            and other.readonly == self.readonly

    def __hash__(self) -> int:
        return hash((JobCache, self.store, self.readonly))
