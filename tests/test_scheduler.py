"""The scheduler: what a job computes and the key it is stored under are fixed at ``.run()``
(values frozen, File inputs snapshotted), lineage through nested jobs, planning failures,
threads and file descriptors of handlers, asyncio."""

from __future__ import annotations

import ast
import asyncio
import gc
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from jobfuncs import (
    jf_add,
    jf_file_name,
    jf_identity,
    jf_make_array,
    jf_read_after,
    jf_return_lock,
    jf_sleep,
    jf_sum,
    jf_zero_then_sum,
)

import hither as hi
from hither.handlers.base import JobHandler
from hither.launch import Outcome

from .conftest import HANDLER_KINDS, make_handler

WAIT = 60


@pytest.fixture(params=HANDLER_KINDS)
def any_handler(request):
    h = make_handler(request.param)
    yield h
    h.shutdown(wait=False, cancel=True)


# ----------------------------------------------------------------------------- replay
def test_a_replayed_pipeline_is_complete_when_run_returns(tmp_path):
    """Cache hits known at ``.run()`` (also downstream of finished jobs) complete there:
    never live, never given to the handler, with the same keys and result hashes."""
    from hither import scheduler

    cache = hi.JobCache(path=str(tmp_path / "cache"))
    first: list[hi.Job] = []
    for _ in range(2):
        with hi.Config(job_cache=cache):
            up = jf_add.run(x=1, y=2)
            down = jf_add.run(x=up, y=10)
            both = jf_sum.run(values=[up, down])
        assert both.result() == 16
        if not first:
            first = [up, down, both]
            assert not any(j.cache_hit for j in first)
    again = [up, down, both]
    assert all(j.done() and j.cache_hit for j in again)
    assert [j.key for j in again] == [j.key for j in first]
    assert [j.result_hash for j in again] == [j.result_hash for j in first]
    assert down.keyinfo.inputs["x"]["job"] == up.key
    assert both.keyinfo.inputs["values"]["jobs"] == [up.key, down.key]
    assert not set(map(id, again)) & set(map(id, scheduler.live_jobs()))
    assert all(j.get_runtime_info()["cache_hit"] for j in again)
    assert up.handler._adopted.get(up.job_id) is None


def test_a_job_whose_upstream_finished_fails_on_an_argument_it_cannot_hash(tmp_path):
    """Planned at ``.run()`` because its upstream job had finished, a job whose arguments
    cannot be used still fails as a job: ``.run()`` does not raise."""
    up = jf_return_lock.run()
    up.result()
    with hi.Config(job_cache=hi.JobCache(path=str(tmp_path / "cache"))):
        down = jf_identity.run(x=up)
    assert down.done() and down.get_status() is hi.JobStatus.ERROR
    with pytest.raises(hi.SerializationError, match="kw\\['x'\\]"):
        down.result()


# ----------------------------------------------------------------------------- values
@pytest.mark.parametrize("cached", [False, True], ids=["nocache", "cache"])
def test_caller_mutation_after_run_changes_nothing(any_handler, cached, tmp_path):
    cache = hi.JobCache(path=tmp_path / "store") if cached else None
    arr = np.arange(5, dtype=np.int64)
    items = [1, 2, 3]
    with hi.Config(job_handler=any_handler, job_cache=cache):
        j1 = jf_sum.run(values=arr)
        j2 = jf_sum.run(values=items)
    arr[:] = 100
    items.append(1000)
    assert j1.result(timeout=WAIT) == 10
    assert j2.result(timeout=WAIT) == 6
    if cached:  # stored under the key of what ran: the original values hit
        with hi.Config(job_handler=any_handler, job_cache=cache):
            again = jf_sum.run(values=np.arange(5, dtype=np.int64))
            assert again.result(timeout=WAIT) == 10 and again.cache_hit
            assert again.key == j1.key


@pytest.mark.parametrize("cached", [False, True], ids=["nocache", "cache"])
def test_a_job_mutating_a_shared_input_changes_no_sibling(any_handler, cached, tmp_path):
    cache = hi.JobCache(path=tmp_path / "store") if cached else None
    with hi.Config(job_handler=any_handler, job_cache=cache):
        up = jf_make_array.run(n=5)  # [0 1 2 3 4]
        mutator = jf_zero_then_sum.run(x=up)  # zeroes x[0] of its input
        reader = jf_sum.run(values=up)
        assert mutator.result(timeout=WAIT) == 10
        assert reader.result(timeout=WAIT) == 10
        assert up.result(timeout=WAIT).tolist() == [0, 1, 2, 3, 4]
        if cached:
            assert reader.key == jf_sum.run(values=np.arange(5, dtype=np.int64)).key


def test_unpicklable_inline_arguments_still_run():
    lock = threading.Lock()  # neither picklable nor copyable: passed as it is
    assert jf_identity.run(x=lock).result(timeout=WAIT) is lock


# ----------------------------------------------------------------------------- files
@pytest.mark.parametrize("kind", ["inline", "parallel-forkserver"])
def test_a_file_changed_after_run_is_never_stored_under_its_old_key(kind, tmp_path):
    handler = make_handler(kind)
    try:
        data, go = tmp_path / "data.txt", tmp_path / "go"
        data.write_text("old")
        cache = hi.JobCache(path=tmp_path / "store")
        with hi.Config(job_handler=handler, job_cache=cache):
            job = jf_read_after.run(f=hi.File(data), go=str(go))
            data.write_text("new content")  # after .run(), before the job reads it
            go.write_text("")
            assert job.result(timeout=WAIT) == ["old", "old"]  # the snapshot it was keyed by
            old_key = job.key
            data.write_text("old")
            os.utime(data, ns=(1, 1))  # same size, old mtime: the content is what counts
            again = jf_read_after.run(f=hi.File(data), go=str(go))
            assert again.result(timeout=WAIT) == ["old", "old"]
            assert again.key == old_key and again.cache_hit
            data.write_text("new content")
            changed = jf_read_after.run(f=hi.File(data), go=str(go))
            assert changed.result(timeout=WAIT) == ["new content", "new content"]
            assert changed.key != old_key and not changed.cache_hit
    finally:
        handler.shutdown(wait=False, cancel=True)


def test_a_file_rewritten_while_the_job_runs_keeps_the_job_consistent(tmp_path):
    handler = make_handler("parallel-forkserver")
    try:
        data, go = tmp_path / "data.txt", tmp_path / "go"
        data.write_text("A")
        cache = hi.JobCache(path=tmp_path / "store")
        with hi.Config(job_handler=handler, job_cache=cache):
            job = jf_read_after.run(f=hi.File(data), go=str(go))
            go.write_text("")
            time.sleep(0.1)  # the job has read once: it reads again in 0.2 s
            data.write_text("B")
            first, second = job.result(timeout=WAIT)
            assert first == second == "A"
        # the job's input links are gone, the snapshot stays in the store
        assert not list(Path(cache.store.tmp_dir).glob("in-*"))
    finally:
        handler.shutdown(wait=False, cancel=True)


def test_file_input_keeps_its_name_and_a_returned_input_stays_readable(tmp_path):
    data = tmp_path / "table.csv"
    data.write_text("a,b\n")
    with hi.Config(job_cache=hi.JobCache(path=tmp_path / "store")):
        assert jf_file_name.run(f=hi.File(data)).result(timeout=WAIT) == "table.csv"
        got = jf_identity.run(x=hi.File(data)).result(timeout=WAIT)
    assert isinstance(got, hi.File) and Path(got.path).read_text() == "a,b\n"


# ----------------------------------------------------------------------------- lineage
def test_jobs_nested_in_lists_and_dicts_are_recorded_as_upstream(tmp_path):
    cache = hi.JobCache(path=tmp_path / "store")
    with hi.Config(job_cache=cache):
        a, b = jf_add.run(x=1), jf_add.run(x=2)
        total = jf_sum.run(values=[a, b])
        direct = jf_add.run(x=a, y=1)
        nested = jf_identity.run(x={"k": (b,)})
        assert total.result(timeout=WAIT) == 3
        direct.result(timeout=WAIT)
        nested.result(timeout=WAIT)
    rec = cache.get_record(total.key)
    assert rec["inputs"]["values"]["jobs"] == [a.key, b.key]
    assert cache.get_record(direct.key)["inputs"]["x"]["job"] == a.key
    assert cache.get_record(nested.key)["inputs"]["x"]["jobs"] == [b.key]


# ----------------------------------------------------------------------------- bad input
def test_cycles_and_deep_nesting_are_refused_at_run_naming_the_path():
    cyc: list = [1]
    cyc.append(cyc)
    with pytest.raises(hi.SerializationError) as info:
        jf_identity.run(x={"a": cyc})
    assert "kw['x']['a']" in str(info.value)
    deep: list = []
    for _ in range(1000):
        deep = [deep]
    with pytest.raises(hi.SerializationError) as info:
        jf_identity.run(x=deep)
    assert "kw['x']" in str(info.value)
    up = jf_add.run(x=1)
    with pytest.raises(hi.SerializationError):  # also with a job in the arguments
        jf_identity.run(x=[up, deep])


class _BrokenHandler(JobHandler):
    def submit(self, launch):
        raise RuntimeError("this handler is broken")


def test_a_handler_whose_submit_raises_fails_the_job():
    h = _BrokenHandler()
    with hi.Config(job_handler=h):
        job = jf_add.run(x=1)
    with pytest.raises(RuntimeError, match="broken"):
        job.result(timeout=WAIT)
    assert job.get_status() is hi.JobStatus.ERROR


# ----------------------------------------------------------------------------- threads, fds
def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _loop_threads() -> int:
    return sum(t.name == "hither-parallel" and t.is_alive() for t in threading.enumerate())


def test_reset_then_reuse_keeps_one_loop_and_no_fd_leak():
    h = hi.ParallelJobHandler(1)
    try:
        with hi.Config(job_handler=h):
            assert jf_add.run(x=1).result(timeout=WAIT) == 1
        before, loop = _fds(), h._shared.thread
        threads = _loop_threads()
        for i in range(5):
            hi.reset()
            with hi.Config(job_handler=h):
                assert jf_add.run(x=i).result(timeout=WAIT) == i
            assert h._shared.thread is loop and loop.is_alive()  # one loop, kept
            assert _loop_threads() <= threads
        assert _fds() <= before
    finally:
        h.shutdown()


def test_dropped_handlers_leak_no_fds_or_threads():
    def one():
        h = hi.ParallelJobHandler(1)
        with hi.Config(job_handler=h):
            assert jf_add.run(x=2).result(timeout=WAIT) == 2

    one()
    gc.collect()
    time.sleep(0.5)
    before, threads = _fds(), _loop_threads()
    for _ in range(5):
        one()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (_fds() > before or _loop_threads() > threads):
        gc.collect()
        time.sleep(0.1)
    assert _fds() <= before
    assert _loop_threads() <= threads


def test_reset_from_another_thread_stops_running_worker_jobs():
    h = hi.ParallelJobHandler(1)
    try:
        with hi.Config(job_handler=h):
            job = jf_sleep.run(seconds=60)
        while job.get_status() is not hi.JobStatus.RUNNING:
            time.sleep(0.01)
        t = threading.Thread(target=hi.reset)
        t.start()
        t.join(10)
        assert job.done() and job.cancelled()
    finally:
        h.shutdown(wait=False, cancel=True)


# ----------------------------------------------------------------------------- asyncio
@pytest.mark.parametrize("kind", ["inline", "parallel-forkserver"])
def test_await_jobs_and_gather(kind):
    handler = make_handler(kind)

    async def main():
        with hi.Config(job_handler=handler):
            a = jf_add.run(x=1, y=2)
            b = jf_add.run(x=a, y=10)
            ticks = 0

            async def ticker():
                nonlocal ticks
                while True:
                    ticks += 1
                    await asyncio.sleep(0.01)

            t = asyncio.ensure_future(ticker())
            slow = jf_sleep.run(seconds=0.3, value="slept")
            assert await slow == "slept"
            t.cancel()
            assert ticks >= 5  # the loop ran while the job did
            return await a, await b, await hi.gather(a, b, jf_add.run(x=5))

    try:
        assert asyncio.run(main()) == (3, 13, [3, 13, 5])
    finally:
        handler.shutdown(wait=False, cancel=True)


def test_cancelling_the_awaiting_task_cancels_the_job():
    handler = make_handler("parallel-forkserver")

    async def main():
        with hi.Config(job_handler=handler):
            job = jf_sleep.run(seconds=60)
        task = asyncio.ensure_future(hi.gather(job))
        await asyncio.sleep(0.5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return job

    try:
        job = asyncio.run(main())
        deadline = time.monotonic() + 10
        while not job.done() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert job.cancelled()
    finally:
        handler.shutdown(wait=False, cancel=True)


# ----------------------------------------------------------------------------- structure
_ENGINE = ("scheduler", "job", "function", "fdef", "cacheflow", "launch", "aio")


def _imports(module: str) -> set[str]:
    src = Path(__file__).resolve().parent.parent / "hither" / f"{module}.py"
    found = set()
    for node in ast.walk(ast.parse(src.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            names = [node.module] if node.module else [a.name for a in node.names]
            found.update(n.split(".")[0] for n in names if n)
    return found & set(_ENGINE)


def test_no_import_cycle_in_the_engine():
    graph = {m: _imports(m) for m in _ENGINE}

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        for nxt in graph[start]:
            if nxt == goal or (nxt not in seen and reaches(nxt, goal, seen | {nxt})):
                return True
        return False

    cycles = [m for m in _ENGINE if reaches(m, m, {m})]
    assert not cycles, f"import cycle through {cycles}: {graph}"


def test_outcome_is_plain_data():
    o = Outcome(True, value=1)
    assert o.ok and o.error is None
