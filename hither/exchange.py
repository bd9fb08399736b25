"""The exchange store: where values cross to and from runtime workers (containers, envs).

With a writable job cache the values cross through the cache's own store (a result's blobs
are then stored once). Without a cache, or with a read-only one (``readonly=True``, or a
store on a read-only filesystem), they cross through a private store of this process in
the system temp folder, ``hither-exchange-<pid>@<host>-<random>`` (mode 0700), removed
at exit. A killed process cannot remove its own: ``hither cache gc`` removes those whose
process is gone (:func:`collect_leftovers`) and ``hither cache info`` counts them.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

from hither_store import LocalStore, owned_dirs, owned_name, tree_size

LABEL = "hither-exchange"

_private: LocalStore | None = None
_lock = threading.Lock()


def exchange_store(cache: Any) -> LocalStore:
    """The store values cross through for a job under ``cache`` (a ``hi.JobCache`` or
    None): the cache's store when it may be written, else this process's private one."""
    if cache is not None and not cache.readonly:
        return cache.store
    return private_store()


def private_store() -> LocalStore:
    """This process's private exchange store in the temp folder (created on first use)."""
    global _private
    with _lock:
        if _private is None:
            root = Path(tempfile.gettempdir()) / owned_name(LABEL)
            os.mkdir(root, 0o700)
            atexit.register(_remove, root, os.getpid())
            _private = LocalStore(root)
        return _private


def _remove(root: Path, creator: int) -> None:
    if os.getpid() == creator:  # not in a forked child that exits normally
        shutil.rmtree(root, ignore_errors=True)


def leftovers(temp_dir: str | None = None) -> list[tuple[str, int]]:
    """``(path, bytes)`` of the exchange stores of this user's processes that are gone."""
    uid = os.geteuid() if hasattr(os, "geteuid") else None
    out = []
    for entry, gone in owned_dirs(temp_dir or tempfile.gettempdir(), [LABEL]):
        if not gone:
            continue
        try:
            if uid is not None and entry.stat(follow_symlinks=False).st_uid != uid:
                continue  # another user's: not ours to judge or remove
        except FileNotFoundError:
            continue
        out.append((entry.path, tree_size(entry.path)))
    return out


def collect_leftovers(temp_dir: str | None = None, *, dry_run: bool = False) -> tuple[int, int]:
    """Remove the exchange stores left by this user's processes that are gone; returns
    ``(count, bytes)`` (what would be removed, with ``dry_run``)."""
    n = size = 0
    for path, nbytes in leftovers(temp_dir):
        if not dry_run:
            shutil.rmtree(path, ignore_errors=True)
            if os.path.lexists(path):
                continue
        n, size = n + 1, size + nbytes
    return n, size
