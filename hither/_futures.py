"""Pieces that keep hither's own futures (a Job, the pool's task futures) light.

A large pipeline keeps many futures alive, and every object each one holds costs memory and
time in each full collection of the cyclic GC: their locks come from a fixed pool, and their
condition is made only when a thread waits.
"""

from __future__ import annotations

import itertools
import os
import threading
import weakref
from collections import deque
from typing import Any

__all__ = ["LazyCondition", "LockPool"]


class LockPool:
    """A fixed set of plain locks, handed out in turn. For state that each holder guards
    for an instant and never while holding another lock of the same pool. A forked child
    gets fresh locks (one may have been held by another thread of the parent)."""

    def __init__(self, size: int = 64) -> None:
        if size & (size - 1):
            raise ValueError("the size of a lock pool is a power of two")
        self._mask = size - 1
        self._locks = tuple(threading.Lock() for _ in range(size))
        self._turn = itertools.count()
        _POOLS.add(self)

    def take(self) -> threading.Lock:
        """The next lock of the pool."""
        return self._locks[next(self._turn) & self._mask]

    def _renew(self) -> None:
        self._locks = tuple(threading.Lock() for _ in self._locks)


_POOLS: weakref.WeakSet[LockPool] = weakref.WeakSet()


def _after_fork() -> None:
    for pool in list(_POOLS):
        pool._renew()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)


class LazyCondition(threading.Condition):
    """The condition of one future (a job, a pool task's): a ``threading.Condition`` on an RLock, without the five
    bound methods per instance, and with its queue of waiters made when a thread first
    waits. A large pipeline keeps one per job: ~1.3 KB and 9 objects for the collector
    become ~0.2 KB and 3."""

    def __init__(self) -> None:  # noqa: D107 - the base class's contract
        self._rlock: Any = threading.RLock()  # Any: its save/restore methods are private
        self._lock = self._rlock
        self._queue: deque | None = None

    @property
    def _waiters(self) -> deque:
        q = self._queue
        if q is None:  # only under the lock: wait() and notify() hold it
            q = self._queue = deque()
        return q

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        return self._rlock.acquire(blocking, timeout)

    def release(self) -> None:
        self._rlock.release()

    def _release_save(self) -> Any:
        return self._rlock._release_save()

    def _acquire_restore(self, state: Any) -> None:
        self._rlock._acquire_restore(state)

    def _is_owned(self) -> bool:
        return self._rlock._is_owned()

    def notify(self, n: int = 1) -> None:
        if self._queue is None:  # nobody ever waited: nothing to wake
            if not self._is_owned():
                raise RuntimeError("cannot notify on un-acquired lock")
            return
        super().notify(n)

    def notify_all(self) -> None:
        self.notify(len(self._queue) if self._queue is not None else 0)
