"""Automatic batching of tiny jobs on a worker pool: how many jobs a worker may be given.

A host worker of :class:`~hither.handlers.parallel.ParallelJobHandler` can be sent many
jobs in one message; it still runs and answers them one by one. How many is decided per
function from the run times its workers measured, the way joblib's automatic batch size
adapts:

* a function with no history yet is sent like any job: at most ``prefetch`` jobs queued
  per worker (its first run tells how long it takes);
* while its jobs are fast, a worker may hold as many of them as fit in ``target`` seconds
  of expected run time (doubling at most per finished job, up to ``max_size``);
* one slow job (over half of ``target``), a job stopped at its ``job_timeout`` or a
  worker crash sets it back to the start at once.

Beyond ``prefetch``, jobs wait only behind batched jobs: a job of a function that is not
batched is never queued behind a batch, and a batch is never queued behind such a job
(see :meth:`BatchPolicy.room`).
"""

from __future__ import annotations

from collections import deque
from typing import Any

#: what a job costs a worker besides its function (arguments, console capture, reply)
_OVERHEAD = 20e-6


class _Stats:
    __slots__ = ("mean", "size")

    def __init__(self, seconds: float) -> None:
        self.mean = seconds
        self.size = 1


class BatchPolicy:
    """Per-function run times, and how many jobs of a function a worker may hold.

    ``enabled=False`` turns batching off: every job is sent on its own, at most
    ``prefetch`` ahead, as before batching existed.
    """

    def __init__(self, enabled: bool = True, *, target: float = 0.005,
                 max_size: int = 256) -> None:
        if target <= 0:
            raise ValueError(f"the batch target must be positive, got {target!r}")
        self.enabled = enabled
        self.target = float(target)
        self.max_size = max(1, int(max_size))
        self._stats: dict[str, _Stats] = {}

    def size(self, fid: str) -> int:
        """How many jobs of function ``fid`` a worker may hold now (1: not batched)."""
        st = self._stats.get(fid)
        return 1 if st is None else st.size

    def room(self, fid: str, queued: int, unbatched: int, prefetch: int) -> bool:
        """Whether a job of ``fid`` may join a worker that holds ``queued`` jobs, of which
        ``unbatched`` are of functions that are not batched: any job within ``prefetch``;
        beyond it, only batched jobs behind batched jobs, up to the function's size."""
        return queued < prefetch or _fits(self.size(fid), queued, unbatched)

    def record(self, fid: str, seconds: float) -> None:
        """A job of ``fid`` ran for ``seconds`` (its function's run time in the worker)."""
        if not self.enabled:
            return
        st = self._stats.get(fid)
        if st is None:
            self._stats[fid] = st = _Stats(seconds)
        if seconds > self.target / 2:
            self.slow(fid, seconds)
            return
        st.mean += 0.25 * (seconds - st.mean)
        fits = int(self.target / (st.mean + _OVERHEAD))
        st.size = max(1, min(self.max_size, fits, st.size * 2))

    def slow(self, fid: str, seconds: float | None = None) -> None:
        """A job of ``fid`` was slow, timed out or crashed its worker: stop batching it
        until its jobs are fast again."""
        st = self._stats.get(fid)
        if st is None:
            self._stats[fid] = st = _Stats(seconds if seconds is not None else self.target)
        st.size = 1
        st.mean = max(st.mean, seconds if seconds is not None else self.target)


def _fits(size: int, queued: int, unbatched: int) -> bool:
    """Whether a batched job (its function's size ``size``) may join a worker beyond its
    prefetch (see :meth:`BatchPolicy.room`)."""
    return size > 1 and not unbatched and queued < size


def take_batch(policy: BatchPolicy, queue: deque[Any], slot: Any, limit: int,
               prefetch: int) -> list[Any]:
    """Take from the front of ``queue`` (tasks with a ``launch``) the jobs host worker
    ``slot`` may be sent now: at most ``limit``, as :meth:`BatchPolicy.room` allows, and
    within the bytes its connection takes without blocking (at least one job)."""
    taken: list[Any] = []
    queued = len(slot.inflight)
    unbatched = slot.unbatched
    budget = slot.host.direct_budget - slot.unread
    fid, size = None, 1  # the size of the function of the last job (a batch has one)
    while queue and len(taken) < limit:
        launch = queue[0].launch
        if launch.fid != fid:
            fid, size = launch.fid, policy.size(launch.fid)
        if queued >= prefetch and not _fits(size, queued, unbatched):  # policy.room
            break
        cost = len(launch.kwargs_pickle or b"") + 256
        if taken and cost > budget:
            break
        budget -= cost
        task = queue.popleft()
        task.batched = size > 1
        unbatched += not task.batched
        queued += 1
        taken.append(task)
    return taken
