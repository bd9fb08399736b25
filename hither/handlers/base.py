"""The handler interface: WHO schedules launches (inline, local worker pool, Slurm, Dask)."""

from __future__ import annotations

import atexit
import threading
import weakref
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
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
    #: True when host launches also carry the exchange store (``Launch.store``): the
    #: handler moves their arguments and results through it (another machine's workers)
    wants_store: ClassVar[bool] = False
    _instances: ClassVar[weakref.WeakSet[JobHandler]] = weakref.WeakSet()

    def __init__(self) -> None:
        self._closed = False
        # jobs routed to this handler and not complete yet, also those still waiting for
        # their upstream jobs: leaving the `with` block waits for them
        self._adopted: dict[str, Callable[[], object]] = {}
        # a plain lock: taken twice per job, where a Condition's own `with` is a Python call
        self._adopted_lock = threading.Lock()
        self._adopted_cond = threading.Condition(self._adopted_lock)
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

    # -- jobs routed here (called by the engine) ------------------------------------------
    def adopt(self, job_id: str, cancel: Callable[[], object]) -> None:
        """A job that will run on this handler was created; ``cancel`` cancels it."""
        with self._adopted_lock:
            self._adopted[job_id] = cancel

    def forget(self, job_id: str) -> None:
        """An adopted job completed."""
        with self._adopted_lock:
            if self._adopted.pop(job_id, None) is not None and not self._adopted:
                self._adopted_cond.notify_all()

    def wait_adopted(self) -> None:
        """Wait until every adopted job is complete."""
        with self._adopted_cond:
            while self._adopted:
                self._adopted_cond.wait(0.5)

    def cancel_adopted(self) -> None:
        """Cancel every adopted job (Ctrl-C while leaving the `with` block)."""
        with self._adopted_cond:
            cancels = list(self._adopted.values())
        for cancel in cancels:
            cancel()

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
        if exc_type is not None:  # the block raised (Ctrl-C included): drop its jobs
            _abandon(self)
            return
        try:
            self.wait_adopted()
        except KeyboardInterrupt:
            _abandon(self)
            raise
        self.shutdown(wait=True)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<{type(self).__name__} {state}>"


def _abandon(handler: JobHandler) -> None:
    """A `with` block raised or was interrupted: cancel its jobs and stop its workers; a
    second Ctrl-C skips the rest of this cleanup."""
    try:
        handler.cancel_adopted()
        handler.shutdown(wait=False, cancel=True)
    except KeyboardInterrupt:
        pass


_io = threading.local()


def mark_io_thread() -> None:
    """Mark the calling thread as a handler's loop or I/O thread: the engine then does no
    slow work (hashing, cache I/O) in it."""
    _io.flag = True


def in_io_thread() -> bool:
    """Whether the calling thread is a handler's loop or I/O thread."""
    return getattr(_io, "flag", False)


def completed_future(outcome: Outcome) -> Future[Outcome]:
    """A future already resolved to ``outcome``."""
    fut: Future[Outcome] = Future()
    fut.set_result(outcome)
    return fut


def complete_future(future: Future[Outcome], outcome: Outcome | Callable[[], Outcome]
                    ) -> None:
    """Complete a job's handler future with ``outcome``, or with what ``outcome()`` makes
    (decoding a result may take a while; one that cannot be read fails the job). A future
    completed already (cancelled meanwhile) is left as it is."""
    if callable(outcome):
        try:
            outcome = outcome()
        except Exception as e:  # noqa: BLE001 - a result that cannot be read fails the job
            outcome = Outcome(False, error=e)
    try:
        future.set_result(outcome)
    except InvalidStateError:
        pass


_exit_lock = threading.Lock()


@atexit.register
def _shutdown_all_handlers() -> None:
    with _exit_lock:
        for handler in list(JobHandler._instances):
            try:
                handler.shutdown(wait=False, cancel=True)
            except Exception:  # noqa: BLE001 - best effort at interpreter exit
                pass
