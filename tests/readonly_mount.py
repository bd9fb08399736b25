"""A read-only view of a folder, for tests of stores on read-only file systems.

As root, ``chmod`` does not stop writes, so the view is a read-only bind mount
(``mount --bind`` then ``mount -o remount,bind,ro``). It needs root and ``mount``; without
them the test is skipped on a developer machine and fails in CI (``CI=true``).
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


def tree(root: Path) -> dict[str, tuple]:
    """Every path under ``root`` (folders included) with its type, size and mtime."""
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            out[os.path.relpath(p, root)] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return out
