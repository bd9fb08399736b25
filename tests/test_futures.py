"""hither._futures: the lock pool and the lazy condition behind hither's futures."""

from __future__ import annotations

import os
import threading

import pytest

from hither._futures import LazyCondition, LockPool


def test_a_lock_pool_hands_its_locks_out_in_turn() -> None:
    pool = LockPool(4)
    locks = [pool.take() for _ in range(8)]
    assert len({id(lock) for lock in locks}) == 4 and locks[:4] == locks[4:]
    with pytest.raises(ValueError):
        LockPool(6)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_gets_fresh_locks() -> None:
    """A lock held by another thread of the parent at the fork is never seen by the child."""
    pool = LockPool(1)
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with pool.take():
            held.set()
            release.wait(30)

    thread = threading.Thread(target=hold)
    thread.start()
    held.wait(30)
    pid = os.fork()
    if pid == 0:  # the child: its pool's lock must be free
        ok = pool.take().acquire(timeout=5)
        os._exit(0 if ok else 1)
    release.set()
    thread.join()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_a_lazy_condition_wakes_a_waiter_and_notifies_without_one() -> None:
    cond = LazyCondition()
    with cond:
        cond.notify_all()  # nobody waits: nothing made, nothing to wake
    assert cond._queue is None
    with pytest.raises(RuntimeError):
        cond.notify()
    woke = []

    def wait() -> None:
        with cond:
            woke.append(cond.wait(30))

    thread = threading.Thread(target=wait)
    thread.start()
    while True:
        with cond:
            if cond._queue:
                cond.notify_all()
                break
    thread.join(30)
    assert woke == [True]
