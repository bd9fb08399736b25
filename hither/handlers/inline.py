"""DefaultJobHandler: runs jobs in the caller's thread, when the caller waits (pdb works)."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import TYPE_CHECKING

from .. import _worker
from ..errors import HitherError, JobFailedError, JobTimeoutError, find_exception_class
from ..launch import Launch, Outcome
from ..progress import EchoStream
from .base import JobHandler, completed_future

if TYPE_CHECKING:
    from .stdio import StdioWorker


class DefaultJobHandler(JobHandler):
    """Run each job in the thread that waits for it, like a plain function call.

    ``.run()`` only queues the job; it executes when ``job.wait()``, ``job.result()`` or
    ``hi.wait()`` is called, in that caller's thread, so breakpoints and ``pdb`` work.
    Exceptions are kept as the original objects. ``job_timeout`` is enforced with
    ``SIGALRM`` when the waiting thread is the main thread (it cannot be enforced in
    other threads: the job then runs to completion).
    """

    drives_in_caller = True

    def __init__(self) -> None:
        super().__init__()
        self._queue: deque[tuple[Launch, Future[Outcome]]] = deque()
        self._cond = _cond
        self._workers: dict[tuple, StdioWorker] = {}  # warm runtime workers, one per runtime
        # job id -> the runtime worker running it (None while that worker starts)
        self._busy: dict[str, StdioWorker | None] = {}
        self._stop_on_start: set[str] = set()  # jobs cancelled while their worker started

    def submit(self, launch: Launch) -> Future[Outcome]:
        if self._closed:
            return completed_future(self._closed_outcome(launch))
        fut: Future[Outcome] = Future()
        with self._cond:
            self._queue.append((launch, fut))
            self._cond.notify_all()
        return fut

    def cancel(self, job_id: str) -> bool:
        """Cancel a queued job, or stop a runtime job running in another thread (a host
        function running in a caller's thread cannot be stopped: False)."""
        with self._cond:
            running = job_id in self._busy
            busy = self._busy.get(job_id)
            if running and busy is None:  # its worker is starting: stopped once it is up
                self._stop_on_start.add(job_id)
            for item in self._queue:
                if item[0].job_id == job_id:
                    self._queue.remove(item)
                    break
            else:
                item = None
        if running:
            if busy is not None:
                busy.interrupt()
            return True
        if item is None:
            return False
        launch, fut = item
        fut.set_result(self._cancelled_outcome(launch))
        return True

    def reset(self) -> None:
        with self._cond:
            items = list(self._queue)
            self._queue.clear()
            workers = list(self._workers.values())
            self._workers.clear()
            busy = [w for w in self._busy.values() if w is not None]
            self._stop_on_start.update(j for j, w in self._busy.items() if w is None)
        for launch, fut in items:
            fut.set_result(self._cancelled_outcome(launch, "was cancelled by hi.reset()"))
        for w in busy:  # runtime jobs running in other threads: their containers go now
            w.interrupt()
        for w in workers:
            w.stop()

    def wait_adopted(self) -> None:
        """Run this handler's jobs in the calling thread until all are complete."""
        drive(lambda: not self._adopted, None)

    def shutdown(self, wait: bool = True, *, cancel: bool = False) -> None:
        if cancel:
            self.reset()
        else:
            if wait:
                self.drive(_never, None)
            with self._cond:
                workers = list(self._workers.values())
                self._workers.clear()
            for w in workers:
                w.stop(graceful=True)
        super().shutdown(wait, cancel=cancel)

    def drive(self, until: Callable[[], bool], timeout: float | None) -> None:
        """Run queued jobs of every inline handler in this thread until ``until()`` holds
        or ``timeout`` expires (an awaited job may depend on any of them)."""
        drive(until, timeout)

    def _run(self, launch: Launch, fut: Future[Outcome]) -> None:
        if fut.set_running_or_notify_cancel():
            try:
                if launch.runtime is None:
                    outcome = execute_inline(launch)
                else:
                    outcome = self._execute_in_runtime(launch)
            except BaseException:  # Ctrl-C: the job ends cancelled, the caller sees it
                fut.set_result(self._cancelled_outcome(launch, "was interrupted"))
                raise
            fut.set_result(outcome)

    def _execute_in_runtime(self, launch: Launch) -> Outcome:
        """Run in the launch's runtime, on a warm worker kept for the next job there."""
        from .stdio import StdioWorker, pool_key  # the runtimes are imported when used

        key = pool_key(launch)
        with self._cond:  # taken out while in use: two waiting threads never share one
            worker = self._workers.pop(key, None)
            self._busy[launch.job_id] = None
        if worker is None or not worker.alive():
            try:
                worker = StdioWorker(launch.runtime, launch.store)
            except BaseException as e:
                with self._cond:
                    self._busy.pop(launch.job_id, None)
                    self._stop_on_start.discard(launch.job_id)
                if not isinstance(e, Exception):
                    raise  # Ctrl-C
                return Outcome(False, error=e)  # e.g. a missing image: the job fails
        with self._cond:
            cancelled = launch.job_id in self._stop_on_start  # while its worker started
            self._stop_on_start.discard(launch.job_id)
            if cancelled:
                del self._busy[launch.job_id]
            else:
                self._busy[launch.job_id] = worker
        if cancelled:
            worker.stop()
            return self._cancelled_outcome(launch)
        try:
            outcome = worker.call(launch)
        except Exception as e:  # noqa: BLE001 - e.g. an argument the codec cannot encode
            outcome = Outcome(False, error=e)
        except BaseException:  # Ctrl-C while waiting: leave no container behind
            worker.stop()
            raise
        finally:
            with self._cond:
                self._busy.pop(launch.job_id, None)
        if worker.interrupted:
            worker.stop()
            return self._cancelled_outcome(launch)
        if worker.alive():
            with self._cond:
                spare = self._workers.setdefault(key, worker)
            if spare is not worker:  # another thread put one back meanwhile
                worker.stop(graceful=True)
        return outcome


_cond = threading.Condition()
_drivers = 0  # threads blocked in drive(): only then do completions need to notify


def _never() -> bool:
    return False


def notify_drivers() -> None:
    """Wake the threads driving inline work (cheap when there are none)."""
    if _drivers:
        with _cond:
            _cond.notify_all()


def drive(until: Callable[[], bool], timeout: float | None) -> None:
    """Run queued inline jobs in this thread, oldest first, until ``until()`` holds.

    With ``until`` never true, return once no inline work is queued.
    """
    global _drivers
    deadline = None if timeout is None else time.monotonic() + timeout
    while not until():
        item = None
        with _cond:
            for h in list(JobHandler._instances):
                if isinstance(h, DefaultJobHandler) and h._queue:
                    item = (h, *h._queue.popleft())
                    break
            if item is None:
                if until is _never:
                    return
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return
                _drivers += 1
                try:  # the timeout is a safety net: completions and submissions notify
                    _cond.wait(0.5 if remaining is None else min(remaining, 0.5))
                finally:
                    _drivers -= 1
                continue
        handler, launch, fut = item
        handler._run(launch, fut)


def execute_inline(launch: Launch) -> Outcome:
    """Run a launch in this thread and describe how it ended."""
    _worker.add_sys_path(launch.sys_path)
    prefix = launch.stream_prefix()
    ok, value, tb, lines, start, end = _worker.run_call(
        launch.fn, launch.call_kwargs(), prefix, launch.timeout,
        echo=EchoStream() if prefix is not None else None)
    if ok:
        return Outcome(True, value=value, console=lines, start_time=start, end_time=end)
    raised = True
    if isinstance(value, TimeoutError) and launch.timeout and not tb:
        value = JobTimeoutError(
            f"job {launch.label!r} ran longer than its job_timeout of {launch.timeout} s and "
            "was interrupted", job_label=launch.label)
        raised = False
    elif not _importable(type(value)):
        # as on every other handler: a class no caller can import (one defined inside a
        # function) is a JobFailedError naming it; the original stays its __cause__
        original = value
        value = JobFailedError(str(original), job_label=launch.label, traceback_text=tb,
                               remote_type=f"{type(original).__module__}."
                                           f"{type(original).__qualname__}")
        value.__cause__ = original
    return Outcome(False, error=value, traceback_text=tb, console=lines,
                   start_time=start, end_time=end, info={"raised": raised})


def _importable(cls: type) -> bool:
    """Whether the caller can name ``cls`` (hither's own errors always can)."""
    if not issubclass(cls, Exception) or issubclass(cls, HitherError):
        return True
    return find_exception_class(f"{cls.__module__}.{cls.__qualname__}") is cls
