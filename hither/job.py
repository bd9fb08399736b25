"""The Job: one call of a hither function, and a ``concurrent.futures.Future``.

A Job's state (status, outcome, the handler future it waits on, the count of upstream
jobs it still waits for) changes only inside this class, under one lock, and it completes
through one path (:meth:`Job._complete`): the first completion wins, whatever thread
reaches it. The scheduler drives a job through the methods marked "engine side"; it never
sets a job's attributes itself.
"""

from __future__ import annotations

import enum
import itertools
import logging
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import CancelledError, Future
from concurrent.futures._base import FINISHED, PENDING
from typing import TYPE_CHECKING, Any, Protocol

from ._futures import LazyCondition, LockPool
from ._jobids import job_id_text, next_job_number
from .errors import HitherError, JobCancelledException, JobError
from .launch import Outcome

if TYPE_CHECKING:
    from .config import Settings
    from .fdef import FunctionDef
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


class Engine(Protocol):
    """What a Job asks of the engine that created it (the scheduler)."""

    def cancel(self, job: Job) -> bool:
        """Cancel a job that was already given to its handler."""

    def drive(self, job: Job, timeout: float | None) -> float | None:
        """Run inline work ``job`` may wait for; returns the time left of ``timeout``."""

    def interrupted(self) -> None:
        """Ctrl-C reached a thread waiting on a job: cancel what that thread started."""


# A job's state lock guards a few fields for an instant and is never held with another
# job's: jobs share a fixed set of locks (one lock object per job would be one more object
# per job for the cyclic GC to visit, in a pipeline that keeps 100,000 jobs).
_STATE_LOCKS = LockPool()
_LOG = logging.getLogger("concurrent.futures")  # where Future logs a failing callback
#: guards the making of a job's condition against its completion (see Job._condition)
_LAZY = threading.Lock()


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

    # slots: a large pipeline keeps many jobs alive, and every object a job holds costs
    # memory and time in each full collection of the cyclic GC. The Future base class's
    # fields are slots here too (no __dict__ per job); its condition and waiter list are
    # made when a thread first waits (see _condition), which a cache hit completed at
    # .run() never needs.
    __slots__ = ("_fdef", "_kwargs", "_settings", "_handler", "_engine", "_job_id", "_label",
                 "_creator", "_state_lock", "_status", "_completing",
                 "_cancelled", "_hfuture", "_waiting", "_done",
                 "_keyinfo", "key",
                 "result_hash", "cache_hit",
                 # Future's own fields, as Future.__init__ sets them
                 "_state", "_result", "_exception", "_done_callbacks", "_cond", "_waiter_list")
    _done_callbacks: list[Any] | tuple[()]  # Future's own (typeshed does not declare it)

    def __init__(self, fdef: FunctionDef, kwargs: dict[str, Any], settings: Settings,
                 handler: JobHandler, engine: Engine, upstream: int = 0) -> None:
        # not Future.__init__: it makes a threading.Condition per job (see _condition)
        self._state = PENDING
        self._result: Any = None
        self._exception: BaseException | None = None
        self._done_callbacks = []
        self._cond: threading.Condition | None = None
        self._waiter_list: list[Any] | None = None
        self._fdef = fdef
        self._kwargs = kwargs
        self._settings = settings
        self._handler = handler
        self._engine = engine
        self._job_id: int | str = next_job_number()  # its text is made when first asked for
        self._label = fdef.name
        self._creator = threading.get_ident()
        self._state_lock = _STATE_LOCKS.take()
        self._status = JobStatus.PENDING
        self._completing = False
        self._cancelled = False
        self._hfuture: Future[Outcome] | None = None
        self._waiting = upstream  # upstream jobs not finished yet; -1 once one failed
        # what the runtime info needs, once complete (the dict is built when asked for):
        # tuples of numbers and strings (the info dict as its items), which the cyclic GC
        # stops tracking, where an Outcome and its console list would be two more objects per
        # job to visit in every full collection of a 100,000-job pipeline
        self._done: _Done | None = None
        self._keyinfo: Any = None
        self.key: str | None = None
        """The cache key of the job (set once its inputs are known, when a cache is used)."""
        self.result_hash: str | None = None
        """Content hash of the job's result (set when it finishes with a cache)."""
        self.cache_hit = False
        """True when the result came from the job cache."""

    # ------------------------------------------------------------ Future contract
    @property
    def _condition(self) -> threading.Condition:
        """Future's condition, made on first use. It is made under ``_LAZY``, which a
        completion also takes when no condition exists yet: a thread that makes the
        condition and then finds the job not done is always notified."""
        cond = self._cond
        if cond is None:
            with _LAZY:
                cond = self._cond
                if cond is None:
                    cond = self._cond = LazyCondition()
        return cond

    @_condition.setter
    def _condition(self, cond: threading.Condition) -> None:
        self._cond = cond

    @property
    def _waiters(self) -> list[Any]:
        """Future's list of ``concurrent.futures.wait`` waiters, made on first use (always
        under the condition, by the ``concurrent.futures`` functions)."""
        waiters = self._waiter_list
        if waiters is None:
            with _LAZY:
                waiters = self._waiter_list
                if waiters is None:
                    waiters = self._waiter_list = []
        return waiters

    @_waiters.setter
    def _waiters(self, waiters: list[Any]) -> None:
        self._waiter_list = waiters

    def add_done_callback(self, fn: Callable[[Future], object]) -> None:
        """Call ``fn(job)`` once the job completed (at once if it has); as a Future's,
        without making the condition only waiting threads need."""
        with self._state_lock:
            callbacks = self._done_callbacks
            if type(callbacks) is list:  # its completion will call fn
                callbacks.append(fn)
                return
        try:
            fn(self)
        except Exception:
            _LOG.exception("exception calling callback for %r", self)

    def done(self) -> bool:
        """True once the job completed (finished, failed or cancelled)."""
        return self._state is FINISHED  # a job is never RUNNING or CANCELLED as a Future

    def result(self, timeout: float | None = None) -> Any:
        """The function's return value; waits up to ``timeout`` seconds (None: no limit).

        Raises the job's error, :class:`JobCancelledException` if it was cancelled, or
        ``TimeoutError`` when ``timeout`` passes first (the job goes on).
        """
        if self._state is FINISHED and self._exception is None:
            return self._result  # final: a finished future never changes again
        try:
            timeout = self._drive(timeout)
            return super().result(timeout)
        except CancelledError as e:
            raise self._as_cancelled(e) from None
        except KeyboardInterrupt:
            self._engine.interrupted()
            raise

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """The job's error (None when it succeeded); waits like :meth:`result`."""
        try:
            timeout = self._drive(timeout)
            exc = super().exception(timeout)
        except CancelledError as e:
            raise self._as_cancelled(e) from None
        except KeyboardInterrupt:
            self._engine.interrupted()
            raise
        if self._cancelled:  # the Future contract: a cancelled future raises here
            raise self._as_cancelled(exc or CancelledError())
        return exc

    def _finished_ok(self) -> bool:
        """Completed with a result (not an error, not cancelled); engine side."""
        return self._state is FINISHED and self._exception is None

    def _result_now(self) -> Any:
        """The result of a completed job, without waiting; raises its (raw) error."""
        if self._state is FINISHED and self._exception is None:
            return self._result
        return Future.result(self, 0)

    def cancel(self) -> bool:
        """Cancel the job: a waiting or queued job never runs; a running job is stopped.

        Returns False when the job had already completed (its result is kept).
        """
        with self._state_lock:
            if self._completing:
                return False
            dispatched = self._hfuture is not None
            if not dispatched:
                self._waiting = -1  # a late upstream completion must not start it
        if not dispatched:
            return self._complete(Outcome(False, error=JobCancelledException(
                f"job {self._label!r} was cancelled")), JobStatus.CANCELLED)
        return self._engine.cancel(self)

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
        return self._engine.drive(self, timeout)

    def __await__(self):
        """``await job`` (see :func:`hither.gather`)."""
        from .aio import await_job

        return await_job(self).__await__()

    # ------------------------------------------------------------ engine side
    def _upstream_finished(self, failed: bool) -> bool:
        """Count one upstream job as complete; True when this job should go on now:
        its last upstream finished, or (``failed``) the first one failed."""
        with self._state_lock:
            if self._completing or self._waiting < 0:
                return False
            if failed:
                self._waiting = -1
                return True
            self._waiting -= 1
            return self._waiting == 0

    def _dispatched(self, hfuture: Future[Outcome]) -> bool:
        """The job was given to its handler as ``hfuture``; False when it completed (was
        cancelled) meanwhile, and the caller must withdraw it from the handler."""
        with self._state_lock:
            if self._completing:
                return False
            self._hfuture = hfuture
            self._status = JobStatus.QUEUED
            return True

    def _keyed(self, keyinfo: Any) -> None:
        """Its inputs are known: remember the cache key and what went into it."""
        with self._state_lock:
            self._keyinfo = keyinfo
            self.key = keyinfo.key

    def _set_result_hash(self, result_hash: str | None) -> None:
        with self._state_lock:
            self.result_hash = result_hash

    def _complete(self, outcome: Outcome, status: JobStatus, *, cache_hit: bool = False,
                  remote: bool = False, result_hash: str | None = None) -> bool:
        """Complete the job with ``outcome``; False when it had completed already.

        ``remote`` marks an outcome from another process: its traceback text is attached as
        the ``__cause__`` of the error. ``result_hash`` (a cache hit's) is set with it.
        """
        with self._state_lock:
            if self._completing:
                return False
            self._completed(outcome, status, cache_hit, result_hash)
        err = None if outcome.ok else self._error_of(outcome, remote)
        # Future.set_result / set_exception, with the condition only when one was made
        with _LAZY:
            cond = self._cond
            if cond is None:  # nobody waits, nor can start waiting before this is set
                self._finish_future(outcome.value if err is None else None, err)
        if cond is not None:
            with cond:
                self._finish_future(outcome.value if err is None else None, err)
                cond.notify_all()
        # the callbacks to run; one added from now on runs at once (and the list lets go of
        # the downstream jobs and plans they hold)
        with self._state_lock:
            callbacks, self._done_callbacks = self._done_callbacks, ()
        for callback in callbacks:
            try:
                callback(self)
            except Exception:
                _LOG.exception("exception calling callback for %r", self)
        return True

    def _complete_new(self, keyinfo: Any, outcome: Outcome, result_hash: str | None) -> None:
        """Complete a job just made, with the cache hit ``outcome`` of ``keyinfo``: what
        ``_keyed`` and ``_complete`` do, without their locks and callbacks. Only for a job
        no other thread can know of yet (nothing waits for it, no callback was added)."""
        self._keyinfo = keyinfo
        self.key = keyinfo.key
        ok = outcome.ok
        self._completed(outcome, JobStatus.FINISHED if ok else JobStatus.ERROR, True,
                        result_hash)
        self._done_callbacks = ()
        self._finish_future(outcome.value if ok else None,
                            None if ok else self._error_of(outcome, False))

    def _completed(self, outcome: Outcome, status: JobStatus, cache_hit: bool,
                   result_hash: str | None) -> None:
        """The job's own state once complete (under the state lock, or before anyone can
        see the job)."""
        self._completing = True
        if result_hash is not None:
            self.result_hash = result_hash
        self._waiting = -1
        self._done = (self._label, outcome.start_time, outcome.end_time,
                      tuple(outcome.console), outcome.traceback_text, time.time(),
                      *_flat(outcome.info.items()))
        self._hfuture = None  # the handler's future (and what it holds) can go now
        keyinfo = self._keyinfo
        if keyinfo is not None and type(keyinfo) is not tuple:
            # kept as one tuple of plain values from now on (the cyclic GC stops tracking
            # it); as it is if it cannot be (it stays correct, only heavier)
            try:
                self._keyinfo = keyinfo.packed()
            except Exception:  # noqa: BLE001 - the job completes whatever happens here
                _LOG.debug("key info of %r kept unpacked", self, exc_info=True)
        self.cache_hit = cache_hit
        self._status = status
        self._cancelled = status is JobStatus.CANCELLED

    def _error_of(self, outcome: Outcome, remote: bool) -> BaseException:
        err = outcome.error
        if err is None:
            err = JobError(f"job {self._label!r} failed", job_label=self._label)
        if outcome.traceback_text and err.__cause__ is None and remote:
            err.__cause__ = RemoteTraceback(outcome.traceback_text)
        return err

    def _finish_future(self, value: Any, err: BaseException | None) -> None:
        """Set the Future's final state (under its condition, or ``_LAZY`` without one)."""
        if err is None:
            self._result = value
        else:
            self._exception = err
        self._state = FINISHED
        if self._waiter_list:
            for waiter in self._waiter_list:
                if err is None:
                    waiter.add_result(self)
                else:
                    waiter.add_exception(self)

    # ------------------------------------------------------------ hither 0.4.2 names
    def wait(self, timeout: float | None = None) -> Any:
        """Wait for the job and return its result (raises its error).

        As in hither 0.4.2, when ``timeout`` passes first this returns None (the job goes
        on); use :meth:`result` to get ``TimeoutError`` instead.
        """
        try:
            return self.result(timeout)
        except TimeoutError:
            if timeout is None or self.done():
                raise  # the job's own JobTimeoutError, not the wait running out
            return None

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
        return self.job_id

    @property
    def job_id(self) -> str:
        """The job's random id."""
        job_id = self._job_id
        if isinstance(job_id, int):  # a cache hit completed at .run() may never need it
            job_id = self._job_id = job_id_text(job_id)
        return job_id

    def get_label(self) -> str:
        """The label (default: the function name)."""
        return self._label

    @property
    def label(self) -> str:
        """The label (default: the function name)."""
        return self._label

    def set_label(self, label: str) -> Job:
        """Set the label (also the prefix of its live console lines); returns the job."""
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

    @property
    def function_def(self) -> FunctionDef:
        """What hither knows of the job's function."""
        return self._fdef

    def get_container(self) -> str | None:
        """The container image the job runs in, if any."""
        c = self._settings.container
        if c is True:
            return self._fdef.container
        return c if isinstance(c, str) else None

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

    @property
    def keyinfo(self) -> Any:
        """The job's key and what went into it (a ``cacheflow.KeyInfo``), once known."""
        keyinfo = self._keyinfo
        if type(keyinfo) is tuple:  # a completed job's (see _complete)
            from .cacheflow import unpack_keyinfo

            return unpack_keyinfo(keyinfo)
        return keyinfo

    @property
    def created_by(self) -> int:
        """The ident of the thread that created the job."""
        return self._creator

    def get_runtime_info(self) -> dict[str, Any] | None:
        """Timing and console output of a completed job (None before it completes).

        ``{"start_time", "end_time", "elapsed_sec", "cache_hit", "console_out": {"label",
        "lines": [{"timestamp", "text", "stderr"}]}, ...}``
        """
        done = self._done
        if done is None:
            return None
        return _runtime_info(done, self._status, self.cache_hit)  # a new dict each time

    def console_lines(self) -> list[dict[str, Any]]:
        """Captured console lines of the completed job (empty before it completes)."""
        done = self._done
        if done is None:
            return []
        return [{"timestamp": t, "text": text, "stderr": err} for t, text, err in done[3]]

    def print_console_out(self, file=None) -> None:
        """Print the job's captured console lines as ``<iso time>: <text>``."""
        from datetime import datetime  # only to print a console

        file = file or sys.stdout
        for line in self.console_lines():
            stamp = datetime.fromtimestamp(line["timestamp"]).isoformat()
            print(f"{stamp}: {line['text']}", file=file)

    def __repr__(self) -> str:
        return f"<Job {self._label} {self.job_id} {self.get_status().value}>"

    def _repr_html_(self) -> str:
        """The job in a notebook: status, key, cache hit, elapsed time, console tail."""
        from .explain_html import job_html

        return job_html(self)


#: (label, start time, end time, console lines, traceback text, completed at, then the info
#: as key, value, key, value, ...): flat, as the cyclic GC stops tracking a tuple of plain
#: values at its first collection, but a tuple of such tuples only at a later one
_Done = tuple[Any, ...]

_flat = itertools.chain.from_iterable


def _runtime_info(done: _Done, status: JobStatus, cache_hit: bool) -> dict[str, Any]:
    label, start, end, console, traceback_text, completed_at = done[:6]
    extra = done[6:]
    if start is None:
        start = end = completed_at
    info: dict[str, Any] = {
        "start_time": start,
        "end_time": end,
        "elapsed_sec": (end or start) - start,
        "cache_hit": cache_hit,
        "status": status.value,
        "console_out": {"label": label, "lines": [
            {"timestamp": t, "text": text, "stderr": err} for t, text, err in console]},
    }
    info.update(zip(extra[::2], extra[1::2], strict=True))
    if traceback_text:
        info["traceback"] = traceback_text
    return info


class RemoteTraceback(Exception):
    """Carries the traceback text of an exception raised in a worker (its ``__cause__``)."""

    def __str__(self) -> str:
        return "\n\n" + str(self.args[0]).rstrip()
