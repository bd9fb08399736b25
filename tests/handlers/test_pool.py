"""The pool's job future (hither/handlers/_pool.py LeanFuture): the
``concurrent.futures.Future`` contract, with its condition made only when a thread waits."""

from __future__ import annotations

import concurrent.futures as cf
import logging
import threading

import pytest

from hither.handlers._pool import LeanFuture


def test_results_errors_and_states():
    f = LeanFuture()
    assert not f.done() and not f.running() and not f.cancelled()
    assert f.set_running_or_notify_cancel() and f.running()
    assert not f.cancel()  # a running future cannot be cancelled
    f.set_result(3)
    assert f.done() and not f.running() and f.result() == 3 and f.exception() is None
    assert f._cond is None  # nobody waited: no condition was made
    with pytest.raises(cf.InvalidStateError):
        f.set_result(4)
    with pytest.raises(cf.InvalidStateError):
        f.set_exception(ValueError("late"))
    assert f.result(0) == 3

    g = LeanFuture()
    g.set_exception(ValueError("bad"))
    assert isinstance(g.exception(), ValueError)
    with pytest.raises(ValueError, match="bad"):
        g.result()


def test_cancel_before_start():
    f = LeanFuture()
    calls: list[bool] = []
    f.add_done_callback(lambda fut: calls.append(fut.cancelled()))
    assert f.cancel() and f.cancel()  # a second cancel: still True
    assert f.cancelled() and f.done() and calls == [True]
    assert not f.set_running_or_notify_cancel()
    with pytest.raises(cf.CancelledError):
        f.result(0)
    with pytest.raises(cf.CancelledError):
        f.exception(0)


def test_callbacks_before_and_after_completion(caplog):
    f = LeanFuture()
    calls: list[str] = []
    f.add_done_callback(lambda fut: calls.append("before"))
    f.add_done_callback(lambda fut: 1 / 0)
    f.add_done_callback(lambda fut: calls.append(f"value {fut.result()}"))
    with caplog.at_level(logging.ERROR, logger="concurrent.futures"):
        f.set_result(7)
    assert calls == ["before", "value 7"]
    assert "exception calling callback" in caplog.text
    f.add_done_callback(lambda fut: calls.append("late"))
    assert calls[-1] == "late"


def test_result_with_timeout_times_out_while_pending():
    f = LeanFuture()
    with pytest.raises(cf.TimeoutError):
        f.result(0.01)
    f.set_result(1)
    assert f.result(0) == 1


@pytest.mark.timeout(120)
def test_waiters_of_every_kind_are_woken_while_futures_complete():
    """Threads start waiting (making each future's condition) while another thread
    completes the futures: no waiter misses its wake-up, whichever comes first."""
    futures = [LeanFuture() for _ in range(400)]
    got: dict[int, object] = {}
    lock = threading.Lock()

    def waiter(i: int, fut: LeanFuture) -> None:
        kind = i % 4
        if kind == 0:
            value: object = fut.result()
        elif kind == 1:
            value = fut.exception()
        elif kind == 2:
            value = next(cf.as_completed([fut])).result()
        else:
            value = len(cf.wait([fut]).done)
        with lock:
            got[i] = value

    def complete() -> None:
        for i, fut in enumerate(futures):
            if i % 4 == 1:
                fut.set_exception(None)  # as Future: an exception of None is a result
            else:
                fut.set_result(i)

    threads = [threading.Thread(target=waiter, args=(i, f)) for i, f in enumerate(futures)]
    for t in threads[::2]:
        t.start()
    completer = threading.Thread(target=complete)
    completer.start()
    for t in threads[1::2]:
        t.start()
    for t in [*threads, completer]:
        t.join(60)
    assert not any(t.is_alive() for t in [*threads, completer])
    assert got == {i: [i, None, i, 1][i % 4] for i in range(400)}


@pytest.mark.timeout(60)
def test_wait_sees_a_cancel():
    f = LeanFuture()
    done = threading.Event()

    def wait() -> None:
        cf.wait([f])
        done.set()

    t = threading.Thread(target=wait)
    t.start()
    assert f.cancel()
    assert not f.set_running_or_notify_cancel()  # what an executor does: wakes wait()
    t.join(30)
    assert done.is_set()
