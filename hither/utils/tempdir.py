"""A temporary directory that is removed robustly and never fails on exit."""

from __future__ import annotations

import os
import shutil
import stat
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from types import TracebackType
from typing import Any

__all__ = ["TemporaryDirectory", "default_temp_base"]

#: Sleeps between removal attempts (so up to five attempts, about 0.75 s in all).
_REMOVE_RETRY_SLEEPS = (0.05, 0.1, 0.2, 0.4)


def default_temp_base() -> str:
    """The folder hither creates temporary folders in.

    ``$HITHER_TMPDIR`` when it is set and not empty (created if missing), otherwise the system
    temporary folder (:func:`tempfile.gettempdir`).
    """
    env = os.environ.get("HITHER_TMPDIR")
    if env:
        os.makedirs(env, exist_ok=True)
        return env
    return tempfile.gettempdir()


def _make_writable_and_retry(func: Callable[..., Any], path: str, _exc: Any) -> None:
    """rmtree error hook: a read-only folder blocks deleting its entries; fix it and retry."""
    parent = os.path.dirname(path)
    for p in (parent, path):
        try:
            os.chmod(p, os.stat(p).st_mode | stat.S_IWUSR | stat.S_IXUSR | stat.S_IRUSR)
        except OSError:
            pass
    func(path)


def _rmtree(path: str) -> None:
    if sys.version_info >= (3, 12):
        shutil.rmtree(path, onexc=_make_writable_and_retry)
    else:  # pragma: no cover - exercised on Python < 3.12 only
        shutil.rmtree(path, onerror=_make_writable_and_retry)


class TemporaryDirectory:
    """Context manager creating a fresh folder and yielding its path as a ``str``.

    The folder is created (mode 0o700, name starting with ``prefix``) under ``dir`` when given,
    else under ``$HITHER_TMPDIR``, else under the system temporary folder. With ``remove=True``
    it is deleted on exit, including read-only entries; deletion is retried a few times with
    short sleeps (files may still be being closed, e.g. by a process that is exiting), and if
    it still fails a :class:`RuntimeWarning` is issued instead of raising, so a cleanup problem
    never hides the block's own result or exception.

    Example::

        with TemporaryDirectory(prefix="job_") as path:
            ...  # use path
    """

    def __init__(self, remove: bool = True, prefix: str = "tmp", dir: str | None = None):
        self.remove = remove
        self.prefix = prefix
        self.dir = dir
        self._path: str | None = None

    @property
    def path(self) -> str | None:
        """The folder's path, or None before the block is entered."""
        return self._path

    def __enter__(self) -> str:
        if self._path is not None:
            raise RuntimeError("this TemporaryDirectory was already entered")
        base = self.dir if self.dir is not None else default_temp_base()
        os.makedirs(base, exist_ok=True)
        self._path = tempfile.mkdtemp(prefix=self.prefix, dir=base)
        return self._path

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.remove:
            self.cleanup()

    def cleanup(self) -> bool:
        """Delete the folder now (retrying); True if it is gone, False (with a warning) if not."""
        path = self._path
        if path is None or not os.path.lexists(path):
            return True
        last_error: OSError | None = None
        for attempt in range(len(_REMOVE_RETRY_SLEEPS) + 1):
            try:
                _rmtree(path)
                return True
            except OSError as e:
                if not os.path.lexists(path):
                    return True
                last_error = e
            if attempt < len(_REMOVE_RETRY_SLEEPS):
                time.sleep(_REMOVE_RETRY_SLEEPS[attempt])
        warnings.warn(
            f"hither: could not remove temporary folder {path}: {last_error}",
            RuntimeWarning,
            stacklevel=2,
        )
        return False
