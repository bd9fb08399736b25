"""The handler interface: WHO schedules launches (inline, local worker pool, Slurm, Dask)."""

from __future__ import annotations

import atexit
import threading
import weakref
from collections.abc import Callable
from concurrent.futures import Future
from typing import ClassVar

from ..errors import HandlerClosedError, JobCancelledException
from ..launch import Launch, Outcome


class JobHandler:
    """Base class of job handlers.

    A handler takes :class:`~hither.launch.Launch` descriptions and returns futures that
    resolve to :class:`~hither.launch.Outcome` objects. Every handler is a context manager:
    leaving the ``with`` block waits for the jobs given to it (cancels them when the block
    raised) and then releases its workers.
    """

    #: True when launches run only while the caller waits (the inline handler)
    drives_in_caller: ClassVar[bool] = False
    _instances: ClassVar[weakref.WeakSet[JobHandler]] = weakref.WeakSet()
    #: set by the scheduler: waits until every job routed to this handler is done
    _wait_for_jobs_hook: ClassVar[Callable[[JobHandler], None] | None] = None

    def __init__(self) -> None:
        self._closed = False
        JobHandler._instances.add(self)

    # -- the interface ------------------------------------------------------------------
    def submit(self, launch: Launch) -> Future[Outcome]:
        """Schedule ``launch``; the returned future resolves to its :class:`Outcome`."""
        raise NotImplementedError

    def cancel(self, job_id: str) -> bool:
        """Cancel a launch not yet finished; True when it will end cancelled."""
        return False

    def reset(self) -> None:
        """Cancel everything outstanding and stop workers; the handler stays usable."""

    def shutdown(self, wait: bool = True, *, cancel: bool = False) -> None:
        """Stop accepting launches and release workers.

        ``wait`` waits for launches already submitted; ``cancel`` cancels them instead.
        """
        self._closed = True

    @property
    def closed(self) -> bool:
        """True once :meth:`shutdown` was called."""
        return self._closed

    def drive(self, until: Callable[[], bool], timeout: float | None) -> None:
        """Run queued work in the calling thread (inline handlers only)."""

    # -- helpers ------------------------------------------------------------------------
    def _closed_outcome(self, launch: Launch) -> Outcome:
        return Outcome(ok=False, error=HandlerClosedError(
            f"job {launch.label!r} was given to a {type(self).__name__} that has been shut "
            "down (its `with` block ended or shutdown() was called); create a new handler "
            "or run the job inside the block", job_label=launch.label))

    @staticmethod
    def _cancelled_outcome(launch: Launch, why: str = "cancelled") -> Outcome:
        return Outcome(ok=False, error=JobCancelledException(f"job {launch.label!r} {why}"))

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None and JobHandler._wait_for_jobs_hook is not None:
            JobHandler._wait_for_jobs_hook(self)
        self.shutdown(wait=exc_type is None, cancel=exc_type is not None)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<{type(self).__name__} {state}>"


def completed_future(outcome: Outcome) -> Future[Outcome]:
    """A future already resolved to ``outcome``."""
    fut: Future[Outcome] = Future()
    fut.set_result(outcome)
    return fut


_exit_lock = threading.Lock()


@atexit.register
def _shutdown_all_handlers() -> None:
    with _exit_lock:
        for handler in list(JobHandler._instances):
            try:
                handler.shutdown(wait=False, cancel=True)
            except Exception:  # noqa: BLE001 - best effort at interpreter exit
                pass
