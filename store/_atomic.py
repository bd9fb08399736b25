"""Atomic file writing: unique temp file in the store's ``tmp/``, optional fsync, rename.

A reader therefore sees either no file or a complete one, never a partial write,
on local disks and on NFS alike (rename within one filesystem is atomic on both). A writer
killed mid-write leaves only a temp file behind, which ``LocalStore.gc`` removes.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import stat
import time
from pathlib import Path
from typing import BinaryIO

from ._shared import FILE_MODE, make_dirs, share_fd
from .errors import StoreError

_OPEN_FLAGS = (
    os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)
)

READ_ONLY = stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH  # 0o444


def temp_name(tmp_dir: Path, prefix: str) -> Path:
    """A fresh, unique temp file path in ``tmp_dir`` (the file is not created)."""
    # pid + random token: unique across processes and hosts sharing an NFS store.
    return tmp_dir / f"{prefix}-{os.getpid()}-{os.urandom(8).hex()}.tmp"


class _Names:
    """Temp names for :func:`write_new`: this process's pid and a random token drawn once
    (unique across processes and hosts sharing an NFS store), then a counter: no
    ``getpid``/``getrandom`` call per file. Drawn again in a forked child."""

    def __init__(self) -> None:
        self.stem = f"-{os.getpid()}-{os.urandom(6).hex()}-"
        self.count = itertools.count()


_NAMES = _Names()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=lambda: globals().update(_NAMES=_Names()))


def write_new(tmp_dir: str, prefix: str, data: bytes, target: str, *, fsync: bool,
              shared: bool, want_stat: bool = True) -> os.stat_result | None:
    """Write ``data`` to a fresh temp file in ``tmp_dir`` and rename it onto ``target``
    (atomic, as :class:`TempFile` + :func:`publish`, with the fewest system calls: one
    small write, no buffered file object). ``shared``: ``tmp_dir`` is group-shared (see
    :func:`share_fd`). Returns the ``os.stat`` of ``target`` when it is still the file
    written here (not already replaced by another writer), else None (always None
    without ``want_stat``)."""
    names = _NAMES
    path = f"{tmp_dir}/{prefix}{names.stem}{next(names.count)}.tmp"
    try:
        fd = os.open(path, _OPEN_FLAGS, 0o666)
    except FileNotFoundError:
        make_dirs(Path(tmp_dir))  # tmp/ was removed under us (a concurrent clear())
        fd = os.open(path, _OPEN_FLAGS, 0o666)
    try:
        if shared:
            with contextlib.suppress(OSError):
                os.fchmod(fd, FILE_MODE)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        if fsync:
            os.fsync(fd)
        ours = os.fstat(fd) if want_stat else None
    except BaseException:
        os.close(fd)
        remove_quietly(path)
        raise
    os.close(fd)
    try:
        publish(path, target)
    except BaseException:
        remove_quietly(path)
        raise
    if ours is None:
        return None
    try:
        st = os.stat(target)
    except OSError:
        return None
    return st if (st.st_dev, st.st_ino) == (ours.st_dev, ours.st_ino) else None


class TempFile:
    """A temp file being written, to be published with :func:`publish` or discarded.

    ``file`` is a buffered binary file opened for writing. Use as a context manager:
    leaving the block by an exception removes the temp file.
    """

    def __init__(self, tmp_dir: Path, prefix: str, fsync: bool = True) -> None:
        self.path = temp_name(tmp_dir, prefix)
        self.fsync = fsync
        try:
            # mode 0o666 lets the umask decide, like a normal file; mkstemp would force 0o600.
            fd = os.open(self.path, _OPEN_FLAGS, 0o666)
        except FileNotFoundError:
            # tmp/ was removed under us (e.g. a concurrent clear()): recreate it once.
            make_dirs(tmp_dir)
            fd = os.open(self.path, _OPEN_FLAGS, 0o666)
        share_fd(fd, tmp_dir)
        self.file: BinaryIO = os.fdopen(fd, "wb")

    def finish(self) -> None:
        """Flush, fsync (when asked) and close the file (a writer may have closed it)."""
        if not self.file.closed:
            self.file.flush()
            if self.fsync:
                os.fsync(self.file.fileno())
            self.file.close()
        elif self.fsync:
            fsync_path(self.path)

    def discard(self) -> None:
        """Close and remove the temp file, ignoring errors."""
        with contextlib.suppress(OSError):
            self.file.close()
        remove_quietly(self.path)

    def __enter__(self) -> TempFile:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is not None:
            self.discard()


def fsync_path(path: Path) -> None:
    """fsync an already-written file by path."""
    binary = getattr(os, "O_BINARY", 0)
    try:
        # Windows can only fsync a handle open for writing.
        fd = os.open(path, os.O_RDWR | binary)
    except PermissionError:
        fd = os.open(path, os.O_RDONLY | binary)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_quietly(path: str | Path) -> bool:
    """Remove a file if it exists; return whether it was removed."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    except PermissionError:
        # Windows refuses to delete read-only files.
        try:
            os.chmod(path, stat.S_IWUSR | stat.S_IRUSR)
            os.unlink(path)
        except FileNotFoundError:
            return False
    return True


def publish(tmp_path: Path | str, target: Path | str) -> None:
    """Atomically rename ``tmp_path`` onto ``target``, creating parent directories."""
    try:
        os.replace(tmp_path, target)
        return
    except FileNotFoundError:
        target = Path(target)
        if not os.path.exists(tmp_path):
            raise StoreError(
                f"temp file {tmp_path} vanished before it could be moved to {target} "
                "(was the store cleared or garbage-collected with older_than=0 meanwhile?)"
            ) from None
        make_dirs(target.parent)
    except PermissionError:
        # Windows cannot replace a read-only file; elsewhere this re-raises below.
        target = Path(target)
        if not target.exists():
            raise
        with contextlib.suppress(OSError):
            os.chmod(target, stat.S_IWUSR | stat.S_IRUSR)
    os.replace(tmp_path, target)


def move_into(src: Path, tmp_dir: Path, prefix: str) -> Path | None:
    """Rename ``src`` to a fresh temp path in ``tmp_dir``; None if across filesystems."""
    dst = temp_name(tmp_dir, prefix)
    try:
        # os.rename, not os.replace: dst is fresh, and EXDEV must surface as an error.
        os.rename(src, dst)
    except OSError as e:
        if e.errno == errno.EXDEV:
            return None
        raise
    return dst


def quarantine_file(
    quarantine_dir: Path, path: Path, read_stat: os.stat_result, label: str
) -> Path | None:
    """Move a damaged file aside; return its new path, or None if it was not moved.

    Only the exact file that was read (same device and inode) is moved: if another
    process has meanwhile replaced it with a fresh copy, that copy is left alone.
    """
    try:
        current = os.stat(path)
    except OSError:
        return None
    if (current.st_dev, current.st_ino) != (read_stat.st_dev, read_stat.st_ino):
        return None
    dest = quarantine_dir / f"{label}-{path.name}-{time.time_ns()}-{os.urandom(4).hex()}"
    # A writer may still replace the file between the check and the move; the good copy
    # would then be set aside, which costs a cache miss, never a wrong answer.
    for _ in range(2):
        try:
            os.replace(path, dest)
            return dest
        except FileNotFoundError:
            if not path.exists():
                return None
            make_dirs(quarantine_dir)
        except OSError:
            return None
    return None
