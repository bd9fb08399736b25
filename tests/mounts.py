"""Mounts for tests of stores on unusual file systems: a read-only view of a folder, and a
small file system that fills up.

As root, ``chmod`` does not stop writes, so the view is a read-only bind mount
(``mount --bind`` then ``mount -o remount,bind,ro``); the small file system is a tmpfs of a
given size. Both need root and ``mount``; without them the test is skipped on a developer
machine and fails in CI (``CI=true``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


def _fail_or_skip(message: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI needs {message}")
    pytest.skip(message)


@contextlib.contextmanager
def read_only_view(src: Path, dst: Path) -> Iterator[Path]:
    """``dst``: the folder ``src`` mounted read-only (unmounted on exit)."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        _fail_or_skip("root and mount(8) for a read-only bind mount")
    dst.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "--bind", str(src), str(dst)], capture_output=True, text=True)
    if r.returncode != 0:
        _fail_or_skip(f"a bind mount ({r.stderr.strip()})")
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(dst)], check=True,
                       capture_output=True)
        with pytest.raises(OSError):  # really read-only
            (dst / "probe").write_text("x")
        yield dst
    finally:
        if subprocess.run(["umount", str(dst)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(dst)], capture_output=True)


@contextlib.contextmanager
def small_filesystem(dst: Path, size: str = "1m") -> Iterator[Path]:
    """``dst``: a fresh tmpfs of ``size`` bytes (``1m``: 1 MiB), unmounted on exit."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        _fail_or_skip("root and mount(8) for a small tmpfs")
    dst.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs",
                        str(dst)], capture_output=True, text=True)
    if r.returncode != 0:
        _fail_or_skip(f"a tmpfs mount ({r.stderr.strip()})")
    try:
        yield dst
    finally:
        if subprocess.run(["umount", str(dst)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(dst)], capture_output=True)


def tree(root: Path) -> dict[str, tuple]:
    """Every path under ``root`` (folders included) with its type, size and mtime."""
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            out[os.path.relpath(p, root)] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return out
