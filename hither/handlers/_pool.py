"""The records of ParallelJobHandler's pool: its jobs (tasks), its workers (slots), and
the small helpers around them."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from concurrent.futures._base import PENDING
from typing import Any

from ..job import _Condition
from ..launch import ConsoleLine, Launch, Outcome
from .base import complete_future
from .host import HostWorker
from .stdio import StdioWorker, pool_key

#: an outcome, or a call that makes it (run on an I/O thread, not in the loop)
Settle = Outcome | Callable[[], Outcome]


class Task:
    """A job given to the pool: its launch, its future, and where it is."""

    __slots__ = ("launch", "future", "head_at", "started", "cancel_why", "slot", "console",
                 "batched", "wire")

    def __init__(self, launch: Launch, future: Future[Outcome]) -> None:
        self.launch = launch
        self.future = future
        self.console: list[ConsoleLine] = []  # lines received live (kept at a timeout)
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

    def fds(self) -> tuple[int, ...]:
        if self.host is not None:
            return self.host.fds()
        assert self.stdio is not None
        return self.stdio.fds()


def load(s: Slot) -> int:
    """How many jobs a worker holds (sort key: idle workers first)."""
    return len(s.inflight)


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
    """A Future with the lighter condition jobs use (one is made per job: a
    ``threading.Condition`` costs a tiny job's driver several percent)."""

    _done_callbacks: list[Any]  # Future's own (typeshed does not declare it)

    def __init__(self) -> None:  # noqa: D107 - Future.__init__'s fields, but the condition
        self._condition = _Condition()
        self._state = PENDING
        self._result = None
        self._exception = None
        self._waiters = []
        self._done_callbacks = []


def unsendable(e: Exception) -> Outcome:
    """The outcome of a job whose function or arguments could not be sent."""
    return Outcome(False, error=e, traceback_text=(
        f"the job's function or arguments could not be sent to a worker: {type(e).__name__}: {e}"))


def settle(done: list[tuple[Task, Settle]]) -> None:
    """Make each outcome (decoding a result may take a while) and complete its future."""
    for task, item in done:
        complete_future(task.future, item)

