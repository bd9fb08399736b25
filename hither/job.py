"""The Job: one call of a hither function, and a ``concurrent.futures.Future``."""

from __future__ import annotations

import enum
import itertools
import os
import string
import sys
import time
from concurrent.futures import CancelledError, Future
from datetime import datetime
from typing import TYPE_CHECKING, Any

from .errors import HitherError, JobCancelledException

if TYPE_CHECKING:
    from .config import Settings
    from .function import FunctionDef
    from .handlers.base import JobHandler


class JobStatus(enum.Enum):
    """Where a job is in its life."""

    PENDING = "pending"
    """Created; waiting for the jobs it depends on."""
    QUEUED = "queued"
    """Given to its handler; not started yet."""
    RUNNING = "running"
    FINISHED = "finished"
    ERROR = "error"
    CANCELLED = "cancelled"

    def is_complete(self) -> bool:
        """True for FINISHED, ERROR and CANCELLED."""
        return self in (JobStatus.FINISHED, JobStatus.ERROR, JobStatus.CANCELLED)


# A random prefix per process and a counter: unique across processes, and much cheaper than
# drawing randomness per job (os.urandom is a system call, ~10 us on some VMs).
_PREFIX = os.urandom(7).translate(bytes((string.ascii_letters * 5).encode()[:256])).decode()
_HEX_TO_LETTERS = str.maketrans("0123456789abcdef", "ABCDEFGHIJKLMNOP")
_counter = itertools.count()


def _new_job_id() -> str:
    """15 ASCII letters, as in hither 0.4.2: 7 random per process, then 8 from a counter."""
    return _PREFIX + format(next(_counter) & 0xFFFFFFFF, "08x").translate(_HEX_TO_LETTERS)


class Job(Future):
    """A call of a hither function, created by ``f.run(...)``.

    It follows the :class:`concurrent.futures.Future` contract (``result(timeout)``,
    ``exception(timeout)``, ``done()``, ``cancel()``, ``add_done_callback``; it works with
    ``concurrent.futures.wait`` and ``as_completed`` for jobs on worker handlers) and keeps
    the hither 0.4.2 names (``wait``, ``get_result``, ``get_status``,
    ``get_runtime_info``, ``print_console_out``, ...).

    Unlike a plain future, ``cancel()`` also stops a running job (its worker is killed);
    a cancelled job raises :class:`~hither.errors.JobCancelledException`, which is a
    ``concurrent.futures.CancelledError``.
    """

    def __init__(self, fdef: FunctionDef, kwargs: dict[str, Any], settings: Settings,
                 handler: JobHandler, label: str | None = None) -> None:
        super().__init__()
        self._fdef = fdef
        self._kwargs = kwargs
        self._settings = settings
        self._handler = handler
        self._job_id = _new_job_id()
        self._label = label or fdef.name
        self._status = JobStatus.PENDING
        self._hfuture: Future | None = None
        self._runtime_info: dict[str, Any] | None = None
        self._cancelled = False
        self._created = time.time()
        self.key: str | None = None
        """The cache key of the job (set once its inputs are known, when a cache is used)."""
        self.result_hash: str | None = None
        """Content hash of the job's result (set when it finishes with a cache)."""
        self.cache_hit = False
        """True when the result came from the job cache."""

    # ------------------------------------------------------------ Future contract
    def result(self, timeout: float | None = None) -> Any:
        """The function's return value; waits up to ``timeout`` seconds (None: no limit).

        Raises the job's error, :class:`JobCancelledException` if it was cancelled, or
        ``TimeoutError`` when ``timeout`` passes first (the job goes on).
        """
        timeout = self._drive(timeout)
        try:
            return super().result(timeout)
        except CancelledError as e:
            raise self._as_cancelled(e) from None

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """The job's error (None when it succeeded); waits like :meth:`result`."""
        timeout = self._drive(timeout)
        try:
            exc = super().exception(timeout)
        except CancelledError as e:
            raise self._as_cancelled(e) from None
        if self._cancelled:  # the Future contract: a cancelled future raises here
            raise self._as_cancelled(exc or CancelledError())
        return exc

    def cancel(self) -> bool:
        """Cancel the job: a waiting or queued job never runs; a running job is stopped.

        Returns False when the job had already completed (its result is kept).
        """
        from .scheduler import cancel_job

        return cancel_job(self)

    def cancelled(self) -> bool:
        """True when the job ended cancelled."""
        return self._cancelled

    def running(self) -> bool:
        """True while the job runs."""
        return self.get_status() is JobStatus.RUNNING

    def _as_cancelled(self, e: BaseException) -> BaseException:
        if isinstance(e, JobCancelledException):
            return e
        return JobCancelledException(f"job {self._label!r} was cancelled")

    def _drive(self, timeout: float | None) -> float | None:
        """Run inline work this job may wait for; returns the time left of ``timeout``."""
        if self.done():
            return timeout
        from .scheduler import drive_until_done

        return drive_until_done(self, timeout)

    # ------------------------------------------------------------ hither 0.4.2 names
    def wait(self, timeout: float | None = None) -> Any:
        """Wait for the job and return its result (raises its error).

        Unlike 0.4.2, a ``timeout`` that passes raises ``TimeoutError`` instead of
        returning None, so a timeout is never mistaken for a None result.
        """
        return self.result(timeout)

    def get_result(self) -> Any:
        """The result of a completed job (raises its error; raises if not complete)."""
        if not self.done():
            raise HitherError(f"cannot get the result of job {self._label!r}: it is "
                              f"{self.get_status().value}, not finished")
        return self.result(0)

    def get_exception(self) -> BaseException | None:
        """The error of a completed job (None if it succeeded)."""
        if not self.done():
            raise HitherError(f"job {self._label!r} is not complete")
        return self.exception(0)

    def get_status(self) -> JobStatus:
        """The job's :class:`JobStatus`."""
        status = self._status
        if status is JobStatus.QUEUED:
            h = self._hfuture
            if h is not None and h.running():
                return JobStatus.RUNNING
        return status

    @property
    def status(self) -> JobStatus:
        """Same as :meth:`get_status`."""
        return self.get_status()

    def get_job_id(self) -> str:
        """The job's random id."""
        return self._job_id

    @property
    def job_id(self) -> str:
        """The job's random id."""
        return self._job_id

    def get_label(self) -> str:
        """The label (default: the function name)."""
        return self._label

    @property
    def label(self) -> str:
        """The label (default: the function name)."""
        return self._label

    def set_label(self, label: str) -> Job:
        """Set the label; returns the job (chainable)."""
        self._label = str(label)
        return self

    def get_function_name(self) -> str:
        """Name of the job's function."""
        return self._fdef.name

    def get_function_version(self) -> str:
        """Version of the job's function."""
        return self._fdef.version

    def get_function(self):
        """The job's (decorated) function."""
        return self._fdef.fn

    def get_container(self) -> str | None:
        """The container image the job runs in, if any."""
        from .scheduler import resolve_container

        return resolve_container(self._fdef, self._settings)

    def get_jhparams(self) -> dict[str, Any]:
        """The handler parameters captured at ``.run()``."""
        return dict(self._settings.jhparams)

    def get_settings(self) -> Settings:
        """The :class:`~hither.config.Settings` captured when ``.run()`` was called."""
        return self._settings

    @property
    def handler(self) -> JobHandler:
        """The handler that runs (or ran) the job."""
        return self._handler

    @property
    def kwargs(self) -> dict[str, Any]:
        """The arguments as given to ``.run()`` (jobs not replaced by their results)."""
        return dict(self._kwargs)

    def get_runtime_info(self) -> dict[str, Any] | None:
        """Timing and console output of a completed job (None before it completes).

        ``{"start_time", "end_time", "elapsed_sec", "cache_hit", "console_out": {"label",
        "lines": [{"timestamp", "text", "stderr"}]}, ...}``
        """
        info = self._runtime_info
        if info is None:
            return None
        out = dict(info)
        out["console_out"] = {"label": info["console_out"]["label"],
                              "lines": [dict(x) for x in info["console_out"]["lines"]]}
        return out

    def console_lines(self) -> list[dict[str, Any]]:
        """Captured console lines of the completed job (empty before it completes)."""
        info = self._runtime_info
        return [] if info is None else [dict(x) for x in info["console_out"]["lines"]]

    def print_console_out(self, file=None) -> None:
        """Print the job's captured console lines as ``<iso time>: <text>``."""
        file = file or sys.stdout
        for line in self.console_lines():
            stamp = datetime.fromtimestamp(line["timestamp"]).isoformat()
            print(f"{stamp}: {line['text']}", file=file)

    def __repr__(self) -> str:
        return f"<Job {self._label} {self._job_id} {self.get_status().value}>"
