"""Whole-store operations on a :class:`~hither_store._paths.Layout`: info, gc, clear.

Garbage collection never deletes a blob that a record references, even one written while
it runs, given two rules that every writer of a :class:`~hither_store.LocalStore` keeps:

* a writer that finds its blob already stored refreshes the blob's modification time
  (``LocalStore._refresh``) before it writes the record that references it;
* gc deletes only blobs that no record referenced when it looked *and* that are older than
  its grace period (``older_than``). Each one is first renamed aside, then its modification
  time is compared with the one gc listed: a blob a writer refreshed meanwhile is put back.
  A writer that refreshes a blob after it was renamed aside finds it missing and stores it
  anew.

So a record written during gc references either a blob refreshed within the grace period,
one written anew, or one gc restored. ``older_than=0`` drops the grace period: use it only
while nothing writes to the store.
"""

from __future__ import annotations

import os
import shutil
import stat
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._atomic import remove_quietly
from ._paths import Layout, is_hexdigest, owner_of, this_host
from ._verify import VERIFIED

#: folders of processes on other hosts (whose liveness cannot be checked) are removed only
#: after this long without change, whatever ``older_than`` says
OTHER_HOST_AGE = 24 * 3600.0
_TRASH = "gc"


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


def tree_size(path: str | Path) -> int:
    """Bytes of the regular files under ``path`` (links are not followed)."""
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                total += st.st_size
    return total


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this host."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, as another user's process
        return True
    except OSError:
        return True
    return True


def abandoned(name: str, mtime: float, older_than: float, now: float | None = None) -> bool:
    """Whether a folder named by :func:`~hither_store._paths.owned_name` is left over: its
    owner, a process on this host, is gone; or it belongs to another host and has not
    changed for ``max(older_than, OTHER_HOST_AGE)`` seconds. Other names: never."""
    owner = owner_of(name)
    if owner is None:
        return False
    _, pid, host = owner
    if host == this_host():
        return pid != os.getpid() and not pid_alive(pid)
    now = time.time() if now is None else now
    return now - mtime > max(older_than, OTHER_HOST_AGE)


def owned_dirs(parent: str | Path,
               labels: Iterable[str] | None = None) -> list[tuple[os.DirEntry[str], bool]]:
    """``(entry, abandoned)`` for each folder in ``parent`` named by
    :func:`~hither_store._paths.owned_name` (with one of ``labels``, default any)."""
    wanted = None if labels is None else set(labels)
    out = []
    try:
        with os.scandir(parent) as it:
            entries = [e for e in it if e.is_dir(follow_symlinks=False)]
    except (FileNotFoundError, NotADirectoryError):
        return []
    for entry in entries:
        owner = owner_of(entry.name)
        if owner is None or (wanted is not None and owner[0] not in wanted):
            continue
        try:
            mtime = entry.stat(follow_symlinks=False).st_mtime
        except FileNotFoundError:
            continue
        out.append((entry, abandoned(entry.name, mtime, 0.0)))
    return out


def store_info(layout: Layout) -> dict[str, Any]:
    """Counts and sizes of what a store holds (a snapshot: writers may be active)."""
    blobs, blob_bytes = _entries_totals(layout.iter_blob_files())
    records, record_bytes = _entries_totals(layout.iter_record_files())
    tmp_files, tmp_bytes = _file_totals(layout.tmp_dir)
    quarantined, quarantine_bytes = _file_totals(layout.quarantine_dir)
    work = left = work_bytes = left_bytes = 0
    for entry, gone in owned_dirs(layout.tmp_dir):
        size = tree_size(entry.path)
        work, work_bytes = work + 1, work_bytes + size
        if gone:
            left, left_bytes = left + 1, left_bytes + size
    return {
        "root": str(layout.root),
        "blobs": blobs,
        "blob_bytes": blob_bytes,
        "records": records,
        "record_bytes": record_bytes,
        "tmp_files": tmp_files,
        "tmp_bytes": tmp_bytes,
        "work_dirs": work,
        "work_dir_bytes": work_bytes,
        "abandoned_dirs": left,
        "abandoned_bytes": left_bytes,
        "quarantined": quarantined,
        "quarantine_bytes": quarantine_bytes,
    }


@dataclass(frozen=True, slots=True)
class Garbage:
    """A blob that no record referenced when gc looked, as gc saw it then."""

    hexdigest: str
    path: str
    size: int
    mtime_ns: int


def find_garbage(layout: Layout, keep_hex: set[str], older_than: float,
                 now: float | None = None) -> tuple[list[Garbage], int]:
    """Blobs not in ``keep_hex`` and older than ``older_than`` seconds; and how many
    unreferenced blobs were kept because they are younger."""
    cutoff_ns = int(((time.time() if now is None else now) - older_than) * 1e9)
    doomed: list[Garbage] = []
    recent = 0
    for hexdigest, entry in layout.iter_blob_files():
        if hexdigest in keep_hex:
            continue
        try:
            st = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue
        if older_than > 0 and st.st_mtime_ns >= cutoff_ns:
            recent += 1  # a writer may be about to record it
            continue
        doomed.append(Garbage(hexdigest, entry.path, st.st_size, st.st_mtime_ns))
    return doomed, recent


def sweep_blobs(layout: Layout, doomed: Iterable[Garbage]) -> dict[str, int]:
    """Delete ``doomed`` blobs that are still garbage: each is renamed aside, and put back
    if a writer refreshed it since :func:`find_garbage` listed it."""
    removed = freed = restored = 0
    layout.tmp_dir.mkdir(parents=True, exist_ok=True)
    for g in doomed:
        trash = layout.tmp_dir / f"{_TRASH}-{g.hexdigest}-{os.getpid()}-{os.urandom(4).hex()}.tmp"
        VERIFIED.forget(g.path)
        try:
            os.rename(g.path, trash)
        except OSError:
            continue  # gone already (another gc), or not ours to move
        try:
            st = os.lstat(trash)
        except FileNotFoundError:
            continue  # a concurrent gc's temp sweep handled it
        if st.st_mtime_ns != g.mtime_ns:
            _restore(trash, Path(g.path))
            restored += 1
        elif remove_quietly(trash):
            removed += 1
            freed += st.st_size
    return {"blobs_removed": removed, "blob_bytes": freed, "blobs_restored": restored}


def _restore(trash: Path, target: Path) -> None:
    """Put a blob set aside back in place, unless a writer stored a new copy meanwhile."""
    try:
        try:
            os.link(trash, target)
        except FileNotFoundError:
            target.parent.mkdir(parents=True, exist_ok=True)
            os.link(trash, target)
    except FileExistsError:
        pass  # the same content is in place again
    except OSError:  # no hard links here: rename (an equal copy in place is replaced)
        os.replace(trash, target)
        return
    remove_quietly(trash)


def _sweep_tmp(layout: Layout, older_than: float, dry_run: bool, now: float) -> dict[str, int]:
    """Stale temp files, blobs a killed gc left aside (put back), abandoned work folders."""
    files = file_bytes = dirs = dir_bytes = 0
    cutoff = now - older_than
    try:
        with os.scandir(layout.tmp_dir) as it:
            entries = list(it)
    except FileNotFoundError:
        entries = []
    for entry in entries:
        name = entry.name
        try:
            st = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue
        if stat.S_ISDIR(st.st_mode):
            if abandoned(name, st.st_mtime, older_than, now):
                size = tree_size(entry.path)
                if not dry_run:
                    shutil.rmtree(entry.path, ignore_errors=True)
                    if os.path.lexists(entry.path):
                        continue
                dirs, dir_bytes = dirs + 1, dir_bytes + size
            continue
        parts = name.split("-")
        if parts[0] == _TRASH and len(parts) > 1 and is_hexdigest(parts[1]):
            if not dry_run:
                target = layout.blob_path(parts[1])
                _restore(Path(entry.path), target)  # deleted for good by a later gc
            continue
        # older_than <= 0 means "all of them", even if an NFS server's clock runs ahead.
        if older_than <= 0 or st.st_mtime < cutoff:
            if dry_run or remove_quietly(entry.path):
                files, file_bytes = files + 1, file_bytes + st.st_size
    return {"tmp_removed": files, "tmp_bytes": file_bytes, "dirs_removed": dirs,
            "dir_bytes": dir_bytes}


def collect_garbage(layout: Layout, keep_hex: set[str] | None, older_than: float,
                    dry_run: bool = False) -> dict[str, int]:
    """Remove stale temp files and abandoned work folders and, if ``keep_hex`` is given,
    the blobs not in it that are older than ``older_than`` (see the module docstring)."""
    now = time.time()
    out = _sweep_tmp(layout, older_than, dry_run, now)
    out.update(blobs_removed=0, blob_bytes=0, blobs_recent=0, blobs_restored=0)
    if keep_hex is not None:
        doomed, out["blobs_recent"] = find_garbage(layout, keep_hex, older_than, now)
        if dry_run:
            out["blobs_removed"] = len(doomed)
            out["blob_bytes"] = sum(g.size for g in doomed)
        else:
            out.update(sweep_blobs(layout, doomed))
    out["bytes_freed"] = out["tmp_bytes"] + out["dir_bytes"] + out["blob_bytes"]
    return out


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
