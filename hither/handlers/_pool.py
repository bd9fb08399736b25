"""The records of ParallelJobHandler's pool: its jobs (tasks), its workers (slots), and
the small helpers around them."""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Hashable
from concurrent.futures import Future, InvalidStateError
from concurrent.futures._base import CANCELLED, CANCELLED_AND_NOTIFIED, FINISHED, PENDING, RUNNING
from typing import Any

from .._futures import LazyCondition, LockPool
from ..launch import ConsoleLine, Launch, Outcome
from .base import complete_future
from .host import HostWorker
from .stdio import StdioWorker, pool_key

#: an outcome, or a call that makes it (run on an I/O thread, not in the loop)
Settle = Outcome | Callable[[], Outcome]

_DONE = frozenset((CANCELLED, CANCELLED_AND_NOTIFIED, FINISHED))
_CANCELLED = frozenset((CANCELLED, CANCELLED_AND_NOTIFIED))
_LOG = logging.getLogger("concurrent.futures")  # where Future logs a failing callback
# the futures' state locks: each guards a few fields for an instant, never with another
_LOCKS = LockPool()


class Task:
    """A job given to the pool: its launch, its future, and where it is."""

    __slots__ = ("launch", "future", "head_at", "started", "cancel_why", "slot", "console",
                 "batched", "wire")

    def __init__(self, launch: Launch, future: Future[Outcome]) -> None:
        self.launch = launch
        self.future = future
        self.console: list[ConsoleLine] | None = None  # lines received live (kept at a timeout)
        self.head_at: float | None = None  # monotonic time it became its worker's head
        self.started: float | None = None  # monotonic time its function started (timeouts)
        self.cancel_why: str | None = None
        self.slot: Slot | None = None
        self.batched = False  # sent as part of a batch (its function's jobs are fast)
        self.wire = 0  # its share of the bytes sent to the worker (not known read yet)


class Slot:
    """A worker of the pool: a host process (key None) or a runtime worker."""

    __slots__ = ("key", "host", "stdio", "inflight", "pid", "limit", "unbatched", "unread")

    def __init__(self, key: Hashable, host: HostWorker | None = None,
                 stdio: StdioWorker | None = None, limit: int = 1) -> None:
        self.key = key
        self.host = host
        self.stdio = stdio
        self.inflight: deque[Task] = deque()
        self.pid = host.pid if host is not None else stdio.pid  # type: ignore[union-attr]
        self.limit = limit if host is not None else StdioWorker.max_inflight
        self.unbatched = 0  # jobs in flight that were not sent as batched
        self.unread = 0  # bytes sent for the jobs in flight (at most what it has not read)

    def took(self, tasks: list[Task], wire: int) -> bool:
        """The worker was sent ``tasks`` (``wire`` bytes of its buffer each); True when they
        are its first (the first one starts now)."""
        idle = not self.inflight
        unbatched = 0
        for task in tasks:
            task.wire = wire
            task.slot = self
            unbatched += not task.batched
        self.inflight.extend(tasks)
        self.unread += wire * len(tasks)
        self.unbatched += unbatched
        return idle

    def fds(self) -> tuple[int, ...]:
        if self.host is not None:
            return self.host.fds()
        assert self.stdio is not None
        return self.stdio.fds()


def load(s: Slot) -> int:
    """How many jobs a worker holds (sort key: idle workers first)."""
    return len(s.inflight)


def busy(slots: list[Slot]) -> bool:
    """Whether a worker holds a job."""
    for s in slots:
        if s.inflight:
            return True
    return False


def launch_pool(launch: Launch) -> Hashable:
    """The pool a launch runs in: None for the host, else its runtime's key."""
    return None if launch.runtime is None else pool_key(launch)


def kill_now(slot: Slot) -> None:
    """Stop a worker at once (the handler is gone or being reset)."""
    if slot.host is not None:
        slot.host.kill()
        slot.host.close()
        reap(slot.host, 2)
    elif slot.stdio is not None:
        slot.stdio.stop()




def reap(host: HostWorker, timeout: float) -> None:
    """Wait for a stopped (closed) host worker; its last descriptor is released once its
    end is seen."""
    host.join(timeout)
    if host.is_alive():
        host.kill()
        host.join(2)


class LeanFuture(Future):
    """The future of a job given to the pool: a ``concurrent.futures.Future`` whose state
    changes under a plain lock shared with other futures, and whose condition and waiter
    list are made when a thread first waits (as a Job's are). One is made per job: a
    ``threading.Condition`` and its RLock, taken by every ``done()``, ``running()`` and
    ``add_done_callback()``, cost a tiny job's driver several percent."""

    _done_callbacks: list[Any] | tuple[()]  # Future's own (typeshed does not declare it)

    def __init__(self) -> None:  # noqa: D107 - Future.__init__'s fields, made lazily
        self._state = PENDING
        self._result = None
        self._exception = None
        self._done_callbacks = []
        self._lock = _LOCKS.take()
        self._cond: threading.Condition | None = None
        self._waiter_list: list[Any] | None = None

    @property
    def _condition(self) -> threading.Condition:
        """Future's condition, made on first use (under the state lock, which a state
        change also holds while it looks for a condition to notify)."""
        cond = self._cond
        if cond is None:
            with self._lock:
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
            waiters = self._waiter_list = []
        return waiters

    @_waiters.setter
    def _waiters(self, waiters: list[Any]) -> None:
        self._waiter_list = waiters

    def cancelled(self) -> bool:  # noqa: D102 - Future's
        return self._state in _CANCELLED

    def running(self) -> bool:  # noqa: D102 - Future's
        return self._state == RUNNING

    def done(self) -> bool:  # noqa: D102 - Future's
        return self._state in _DONE

    def add_done_callback(self, fn: Callable[[Future], object]) -> None:  # noqa: D102
        with self._lock:
            callbacks = self._done_callbacks
            if type(callbacks) is list:  # not complete yet: its completion calls fn
                callbacks.append(fn)
                return
        try:
            fn(self)
        except Exception:
            _LOG.exception("exception calling callback for %r", self)

    def result(self, timeout: float | None = None) -> Any:  # noqa: D102 - Future's
        if self._state == FINISHED and self._exception is None:
            return self._result  # final: no condition needed
        return super().result(timeout)

    def exception(self, timeout: float | None = None) -> BaseException | None:  # noqa: D102
        if self._state == FINISHED:
            return self._exception
        return super().exception(timeout)

    def set_running_or_notify_cancel(self) -> bool:  # noqa: D102 - Future's
        with self._lock:
            if self._state == PENDING:
                self._state = RUNNING
                return True
        return super().set_running_or_notify_cancel()  # cancelled, or a wrong state

    def cancel(self) -> bool:  # noqa: D102 - Future's
        with self._lock:
            if self._state in (RUNNING, FINISHED):
                return False
            if self._state in _CANCELLED:
                return True
            self._state = CANCELLED
            cond, callbacks = self._cond, self._take_callbacks()
        self._settled(cond, callbacks)
        return True

    def set_result(self, result: Any) -> None:  # noqa: D102 - Future's
        with self._lock:
            state = self._state
            if state not in _DONE:
                self._result = result
                self._state = FINISHED
                cond, callbacks = self._cond, self._take_callbacks()
        if state in _DONE:  # (its repr takes the lock)
            raise InvalidStateError(f"{state}: {self!r}")
        self._settled(cond, callbacks)

    def set_exception(self, exception: BaseException | None) -> None:  # noqa: D102
        with self._lock:
            state = self._state
            if state not in _DONE:
                self._exception = exception
                self._state = FINISHED
                cond, callbacks = self._cond, self._take_callbacks()
        if state in _DONE:  # (its repr takes the lock)
            raise InvalidStateError(f"{state}: {self!r}")
        self._settled(cond, callbacks)

    def _take_callbacks(self) -> list[Any] | tuple[()]:
        """The callbacks to run now that the state is final (under the lock): one added
        from now on runs at once."""
        callbacks, self._done_callbacks = self._done_callbacks, ()
        return callbacks

    def _settled(self, cond: threading.Condition | None, callbacks: list[Any] | tuple[()]) -> None:
        """The state became final: wake the waiters, if a thread ever waited (a condition
        made from now on sees the final state), then run the callbacks."""
        if cond is not None:
            with cond:
                if self._waiter_list and self._state == FINISHED:  # a cancel reaches
                    for waiter in self._waiter_list:  # wait() at set_running_or_notify_cancel
                        if self._exception is None:
                            waiter.add_result(self)
                        else:
                            waiter.add_exception(self)
                cond.notify_all()
        for fn in callbacks:
            try:
                fn(self)
            except Exception:
                _LOG.exception("exception calling callback for %r", self)


def unsendable(e: Exception) -> Outcome:
    """The outcome of a job whose function or arguments could not be sent."""
    return Outcome(False, error=e, traceback_text=(
        f"the job's function or arguments could not be sent to a worker: {type(e).__name__}: {e}"))


def settle(done: list[tuple[Task, Settle]]) -> None:
    """Make each outcome (decoding a result may take a while) and complete its future."""
    for task, item in done:
        complete_future(task.future, item)

