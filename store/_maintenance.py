"""Whole-store operations on a :class:`~hither_store._paths.Layout`: info, gc, clear."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from ._atomic import remove_quietly
from ._paths import Layout
from ._verify import VERIFIED


def _file_totals(path: Path) -> tuple[int, int]:
    count = size = 0
    try:
        with os.scandir(path) as it:
            for entry in it:
                if entry.is_file(follow_symlinks=False):
                    try:
                        size += entry.stat(follow_symlinks=False).st_size
                    except FileNotFoundError:
                        continue
                    count += 1
    except FileNotFoundError:
        pass
    return count, size


def _entries_totals(entries: Any) -> tuple[int, int]:
    count = size = 0
    for _, entry in entries:
        try:
            size += entry.stat(follow_symlinks=False).st_size
        except FileNotFoundError:
            continue
        count += 1
    return count, size


def store_info(layout: Layout) -> dict[str, Any]:
    """Counts and sizes of what a store holds (a snapshot: writers may be active)."""
    blobs, blob_bytes = _entries_totals(layout.iter_blob_files())
    records, record_bytes = _entries_totals(layout.iter_record_files())
    tmp_files, tmp_bytes = _file_totals(layout.tmp_dir)
    quarantined, quarantine_bytes = _file_totals(layout.quarantine_dir)
    return {
        "root": str(layout.root),
        "blobs": blobs,
        "blob_bytes": blob_bytes,
        "records": records,
        "record_bytes": record_bytes,
        "tmp_files": tmp_files,
        "tmp_bytes": tmp_bytes,
        "quarantined": quarantined,
        "quarantine_bytes": quarantine_bytes,
    }


def collect_garbage(layout: Layout, keep_hex: set[str] | None, older_than: float) -> dict[str, int]:
    """Remove stale temp files and, if ``keep_hex`` is given, every blob not in it."""
    tmp_removed = tmp_bytes = 0
    cutoff = time.time() - older_than
    try:
        with os.scandir(layout.tmp_dir) as it:
            entries = [e for e in it if e.is_file(follow_symlinks=False)]
    except FileNotFoundError:
        entries = []
    for entry in entries:
        try:
            st = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue
        # older_than <= 0 means "all of them", even if an NFS server's clock runs ahead.
        if older_than <= 0 or st.st_mtime < cutoff:
            if remove_quietly(entry.path):
                tmp_removed += 1
                tmp_bytes += st.st_size

    blobs_removed = blob_bytes = 0
    if keep_hex is not None:
        for hexdigest, entry in layout.iter_blob_files():
            if hexdigest in keep_hex:
                continue
            try:
                size = entry.stat(follow_symlinks=False).st_size
            except FileNotFoundError:
                continue
            VERIFIED.forget(entry.path)
            if remove_quietly(entry.path):
                blobs_removed += 1
                blob_bytes += size

    return {
        "tmp_removed": tmp_removed,
        "tmp_bytes": tmp_bytes,
        "blobs_removed": blobs_removed,
        "blob_bytes": blob_bytes,
        "bytes_freed": tmp_bytes + blob_bytes,
    }


def clear_store(layout: Layout) -> None:
    """Remove the store's own directories and recreate an empty store.

    Files under the root that the store does not own are left alone, so pointing a store
    at the wrong directory cannot wipe unrelated data.
    """
    for top in layout.subdirs():
        if not top.is_dir() or top.is_symlink():
            continue
        for dirpath, dirnames, filenames in os.walk(top, topdown=False):
            for name in filenames:
                remove_quietly(os.path.join(dirpath, name))
            for name in dirnames:
                _rmdir_quietly(os.path.join(dirpath, name))
        _rmdir_quietly(top)
    VERIFIED.forget_under(str(layout.root) + os.sep)
    layout.create()


def _rmdir_quietly(path: str | Path) -> None:
    try:
        os.rmdir(path)
    except FileNotFoundError:
        pass
    except OSError:
        # a symlink to a directory, or a concurrent writer just added a file: leave it.
        if os.path.islink(path):
            remove_quietly(path)
