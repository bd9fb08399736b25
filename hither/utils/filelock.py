"""An advisory inter-process (and inter-thread) lock on a file, with a timeout."""

from __future__ import annotations

import errno
import os
import time
from types import TracebackType

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]

__all__ = ["FileLock"]

_FIRST_SLEEP = 0.001
_MAX_SLEEP = 0.05


class FileLock:
    """Exclusive or shared ``fcntl.flock`` lock on ``path``, usable as a context manager.

    The lock file is created if missing (mode 0o644) and never truncated or deleted, so it may
    also hold data. Each acquisition opens its own file description, hence two ``FileLock``
    objects on the same path exclude each other whether they live in different processes or
    in different threads of one process. A single ``FileLock`` object, though, represents one
    holder: share the path between threads, not the object.

    ``exclusive=False`` takes a shared lock: any number of shared holders coexist, and they
    exclude exclusive holders. Acquisition blocks until the lock is free, or, with ``timeout``
    (seconds), raises :class:`TimeoutError` naming the path once it has expired
    (``timeout=0`` tries once). Waiting retries a non-blocking ``flock`` with sleeps growing
    from 1 ms to 50 ms, so it is not strictly first come, first served.

    The lock is advisory (only cooperating ``flock`` users are held off) and ends with the
    process that holds it, even if the process crashes. POSIX only; on NFS ``flock`` may be
    local to each client.

    Example::

        with FileLock(cache_dir / ".lock", timeout=30):
            ...  # only one holder at a time
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        exclusive: bool = True,
        timeout: float | None = None,
    ):
        if fcntl is None:  # pragma: no cover - not POSIX
            raise NotImplementedError("FileLock needs fcntl.flock (POSIX)")
        if timeout is not None and timeout < 0:
            raise ValueError(f"timeout must be None or >= 0, got {timeout}")
        self.path = os.fspath(path)
        self.exclusive = exclusive
        self.timeout = timeout
        self._fd: int | None = None

    @property
    def locked(self) -> bool:
        """True while this object holds the lock."""
        return self._fd is not None

    def _open(self) -> int:
        try:
            return os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            # a shared lock on an existing file in a read-only place only needs read access
            if self.exclusive or e.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise
            return os.open(self.path, os.O_RDONLY)

    def acquire(self, timeout: float | None = None) -> None:
        """Take the lock, waiting at most ``timeout`` s (default: the constructor's).

        Raises:
            TimeoutError: if the lock could not be taken in time.
            RuntimeError: if this object already holds the lock.
        """
        if self._fd is not None:
            raise RuntimeError(f"FileLock on {self.path} is already held by this object")
        if timeout is None:
            timeout = self.timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        operation = (fcntl.LOCK_EX if self.exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB
        fd = self._open()
        sleep = _FIRST_SLEEP
        try:
            while True:
                try:
                    fcntl.flock(fd, operation)
                    break
                except BlockingIOError:
                    pass
                if deadline is not None:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        kind = "exclusive" if self.exclusive else "shared"
                        raise TimeoutError(
                            f"timed out after {timeout} s waiting for a {kind} lock on {self.path}"
                        )
                    time.sleep(min(sleep, remaining))
                else:
                    time.sleep(sleep)
                sleep = min(sleep * 2, _MAX_SLEEP)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def release(self) -> None:
        """Give the lock up (the file stays). Does nothing if the lock is not held."""
        fd = self._fd
        if fd is None:
            return
        self._fd = None
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def __enter__(self) -> FileLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    def __repr__(self) -> str:
        kind = "exclusive" if self.exclusive else "shared"
        state = "locked" if self.locked else "unlocked"
        return f"<FileLock {self.path!r} {kind} {state}>"
