"""Tests of hither.utils.FileLock."""

from __future__ import annotations

import multiprocessing
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from hither.utils import FileLock

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="fcntl.flock is POSIX")


def _child_hold(path: str, held: Any, release: Any) -> None:
    with FileLock(path):
        held.set()
        release.wait(60)


def _child_try(path: str, exclusive: bool, timeout: float, results: Any) -> None:
    try:
        with FileLock(path, exclusive=exclusive, timeout=timeout):
            results.put("acquired")
    except TimeoutError as e:
        results.put(f"timeout: {e}")


def _child_count(path: str, counter_file: str, n: int) -> None:
    for _ in range(n):
        with FileLock(path, timeout=60):
            value = int(Path(counter_file).read_text())
            time.sleep(0.001)
            Path(counter_file).write_text(str(value + 1))


@pytest.fixture
def ctx() -> Any:
    return multiprocessing.get_context("spawn")


def test_basic_state(tmp_path: Path) -> None:
    lock = FileLock(tmp_path / "a.lock")
    assert not lock.locked
    with lock as same:
        assert same is lock
        assert lock.locked
        with pytest.raises(RuntimeError):
            lock.acquire()
    assert not lock.locked
    lock.release()  # no-op
    assert (tmp_path / "a.lock").exists()


def test_does_not_truncate(tmp_path: Path) -> None:
    path = tmp_path / "data.lock"
    path.write_text("precious")
    with FileLock(path):
        assert path.read_text() == "precious"
    with FileLock(str(path), exclusive=False):
        assert path.read_text() == "precious"
    assert path.read_text() == "precious"


def test_negative_timeout_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        FileLock(tmp_path / "x.lock", timeout=-1)


def test_timeout_raises_naming_the_path(tmp_path: Path) -> None:
    path = tmp_path / "busy.lock"
    with FileLock(path):
        other = FileLock(path, timeout=0.3)
        t0 = time.monotonic()
        with pytest.raises(TimeoutError, match="busy.lock"):
            other.acquire()
        elapsed = time.monotonic() - t0
        assert 0.25 <= elapsed < 10
        assert not other.locked
        with pytest.raises(TimeoutError):
            FileLock(path, timeout=0).acquire()
        with pytest.raises(TimeoutError):
            FileLock(path).acquire(timeout=0.05)
    with FileLock(path, timeout=0):  # free again
        pass


def test_released_when_block_raises(tmp_path: Path) -> None:
    path = tmp_path / "r.lock"
    with pytest.raises(KeyError):
        with FileLock(path):
            raise KeyError("x")
    with FileLock(path, timeout=0):
        pass


def test_threads_exclude_each_other(tmp_path: Path) -> None:
    path = tmp_path / "threads.lock"
    inside = 0
    max_inside = 0
    total = 0
    guard = threading.Lock()

    def work() -> None:
        nonlocal inside, max_inside, total
        for _ in range(20):
            with FileLock(path, timeout=60):
                with guard:
                    inside += 1
                    max_inside = max(max_inside, inside)
                value = total
                time.sleep(0.001)
                total = value + 1
                with guard:
                    inside -= 1

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert max_inside == 1
    assert total == 80


def test_thread_waits_for_holder(tmp_path: Path) -> None:
    path = tmp_path / "wait.lock"
    holder = FileLock(path)
    holder.acquire()
    got = threading.Event()

    def waiter() -> None:
        with FileLock(path, timeout=30):
            got.set()

    t = threading.Thread(target=waiter)
    t.start()
    assert not got.wait(0.3)  # blocked while held
    holder.release()
    assert got.wait(30)
    t.join(30)


def test_shared_locks_coexist(tmp_path: Path) -> None:
    path = tmp_path / "shared.lock"
    a = FileLock(path, exclusive=False, timeout=0)
    b = FileLock(path, exclusive=False, timeout=0)
    with a, b:
        assert a.locked and b.locked
        with pytest.raises(TimeoutError, match="exclusive"):
            FileLock(path, timeout=0.1).acquire()
    with FileLock(path, timeout=0):
        with pytest.raises(TimeoutError, match="shared"):
            FileLock(path, exclusive=False, timeout=0.1).acquire()


def test_processes_exclude_each_other(tmp_path: Path, ctx: Any) -> None:
    path = str(tmp_path / "proc.lock")
    held, release = ctx.Event(), ctx.Event()
    p = ctx.Process(target=_child_hold, args=(path, held, release))
    p.start()
    try:
        assert held.wait(60)
        with pytest.raises(TimeoutError):
            FileLock(path, timeout=0.2).acquire()
        with pytest.raises(TimeoutError):
            FileLock(path, exclusive=False, timeout=0.1).acquire()
        release.set()
        with FileLock(path, timeout=60):
            pass
    finally:
        release.set()
        p.join(60)
    assert p.exitcode == 0


def test_child_process_sees_parent_lock(tmp_path: Path, ctx: Any) -> None:
    path = str(tmp_path / "parent.lock")
    results = ctx.Queue()
    with FileLock(path):
        p = ctx.Process(target=_child_try, args=(path, True, 0.2, results))
        p.start()
        outcome = results.get(timeout=60)
        p.join(60)
    assert outcome.startswith("timeout") and "parent.lock" in outcome
    with FileLock(path, exclusive=False):
        p = ctx.Process(target=_child_try, args=(path, False, 5.0, results))
        p.start()
        outcome = results.get(timeout=60)
        p.join(60)
    assert outcome == "acquired"


def test_processes_count_correctly(tmp_path: Path, ctx: Any) -> None:
    path = str(tmp_path / "count.lock")
    counter = tmp_path / "counter.txt"
    counter.write_text("0")
    procs = [ctx.Process(target=_child_count, args=(path, str(counter), 15)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    assert counter.read_text() == "45"
