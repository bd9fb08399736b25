"""hi.Config: nesting, capture at .run(), validation, threads and asyncio tasks."""

from __future__ import annotations

import asyncio
import os
import threading

import pytest
from jobfuncs import jf_getpid, jf_identity

import hither as hi


def settings_now():
    """The settings a job created here would capture (seen through a real job)."""
    job = jf_identity.run(x=0)
    settings = job.get_settings()
    job.cancel()
    return settings


def test_defaults():
    s = settings_now()
    assert s.job_timeout is None and s.job_cache is None and s.container is None
    assert s.force_run is False and s.rerun_failing is False and s.cache_failing is False
    assert s.show_console is False and s.jhparams == {}
    assert isinstance(jf_identity.run(x=1).handler, hi.DefaultJobHandler)


def test_nesting_inherits_unset_keys():
    h = hi.DefaultJobHandler()
    with hi.Config(job_timeout=5, force_run=True, job_handler=h, jhparams={"a": 1}):
        with hi.Config(show_console=True, cache_failing=True):
            inner = settings_now()
            assert jf_identity.run(x=1).handler is h
        outer = settings_now()
    assert (inner.job_timeout, inner.force_run, inner.show_console, inner.cache_failing) == \
        (5, True, True, True)
    assert inner.job_handler is h and inner.jhparams == {"a": 1}
    assert (outer.job_timeout, outer.force_run, outer.show_console, outer.cache_failing) == \
        (5, True, False, False)
    assert settings_now().job_timeout is None


def test_explicit_none_overrides():
    h = hi.DefaultJobHandler()
    with hi.Config(job_timeout=5, job_handler=h, container="docker://x:1"):
        with hi.Config(job_timeout=None, job_handler=None, container=None):
            s = settings_now()
            job = jf_identity.run(x=1)
        assert settings_now().job_timeout == 5
    assert s.job_timeout is None and s.container is None and s.job_handler is None
    assert job.handler is not h and isinstance(job.handler, hi.DefaultJobHandler)


def test_jhparams_are_copied():
    params = {"partition": "a"}
    with hi.Config(jhparams=params):
        params["partition"] = "changed"
        job = jf_identity.run(x=1)
    assert job.get_jhparams() == {"partition": "a"}


def test_exit_restores_after_an_exception():
    with pytest.raises(RuntimeError):
        with hi.Config(job_timeout=3):
            with hi.Config(force_run=True):
                raise RuntimeError("inside")
    s = settings_now()
    assert s.job_timeout is None and s.force_run is False


@pytest.mark.timeout(60)
def test_settings_are_captured_at_run():
    h = hi.ParallelJobHandler(1, start_method="spawn")
    try:
        with hi.Config(job_handler=h, job_timeout=30):
            job = jf_getpid.run()
        # waited outside the block: still the block's handler and timeout
        assert job.handler is h
        assert job.get_settings().job_timeout == 30
        assert job.result(timeout=30) != os.getpid()
    finally:
        h.shutdown(wait=False, cancel=True)


def test_unknown_keyword_raises_type_error():
    with pytest.raises(TypeError):
        hi.Config(job_timeuot=3)
    with pytest.raises(TypeError):
        hi.Config(3)  # keywords only


@pytest.mark.parametrize("kwargs", [
    {"job_timeout": -1},
    {"job_timeout": 0},
    {"job_timeout": "5"},
    {"job_timeout": True},
    {"job_handler": "parallel"},
    {"job_handler": 4},
    {"force_run": "yes"},
    {"rerun_failing": 1},
    {"cache_failing": None},
    {"show_console": "true"},
    {"container": 5},
    {"jhparams": ["partition"]},
])
def test_bad_values_raise(kwargs):
    with pytest.raises((TypeError, ValueError)):
        hi.Config(**kwargs)


def test_good_values_are_accepted():
    for kwargs in ({"job_timeout": 0.5}, {"job_timeout": 3}, {"container": True},
                   {"container": False}, {"container": "docker://img:1"},
                   {"jhparams": {}}, {"job_handler": hi.DefaultJobHandler()}):
        with hi.Config(**kwargs):
            pass


def test_threads_start_with_defaults():
    seen = {}

    def worker():
        seen["settings"] = settings_now()
        seen["handler"] = jf_identity.run(x=1).handler

    h = hi.DefaultJobHandler()
    with hi.Config(job_timeout=7, job_handler=h):
        t = threading.Thread(target=worker)
        t.start()
        t.join(10)
    assert seen["settings"].job_timeout is None
    assert seen["handler"] is not h


@pytest.mark.timeout(60)
def test_two_threads_with_different_handlers_do_not_mix():
    handlers = [hi.DefaultJobHandler(), hi.DefaultJobHandler()]
    inside = threading.Barrier(2, timeout=10)
    results: dict[int, list] = {0: [], 1: []}
    errors: list[BaseException] = []

    def worker(i):
        try:
            with hi.Config(job_handler=handlers[i], job_timeout=10 + i):
                inside.wait()  # both threads are inside their blocks now
                for k in range(20):
                    job = jf_identity.run(x=(i, k))
                    results[i].append((job.handler, job.get_settings().job_timeout,
                                       job.result(timeout=10)))
                inside.wait()
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
    for i in range(2):
        assert len(results[i]) == 20
        assert all(h is handlers[i] and t == 10 + i and r[0] == i for h, t, r in results[i])


def test_asyncio_tasks_keep_their_own_config():
    async def task(n):
        with hi.Config(job_timeout=n):
            await asyncio.sleep(0.01 * (4 - n))  # let the other tasks enter their blocks
            first = settings_now().job_timeout
            await asyncio.sleep(0.01 * n)
            second = settings_now().job_timeout
        after = settings_now().job_timeout
        return first, second, after

    async def main():
        with hi.Config(force_run=True):
            out = await asyncio.gather(task(1), task(2), task(3))
            return out, settings_now()

    out, outer = asyncio.run(main())
    assert out == [(1, 1, None), (2, 2, None), (3, 3, None)]
    assert outer.force_run is True and outer.job_timeout is None


@pytest.mark.timeout(60)
def test_same_config_object_entered_in_two_threads():
    cfg = hi.Config(job_timeout=9)
    entered = threading.Barrier(2, timeout=10)
    first_out = threading.Event()
    out: dict[str, tuple] = {}
    errors: list[BaseException] = []

    def worker(name, leave_first):
        try:
            with cfg:
                entered.wait()
                if not leave_first:
                    first_out.wait(10)
                inside = settings_now().job_timeout
            after = settings_now().job_timeout
            if leave_first:
                first_out.set()
            out[name] = (inside, after)
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    # the thread that entered last leaves first, and the other way round
    threads = [threading.Thread(target=worker, args=("a", True)),
               threading.Thread(target=worker, args=("b", False))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
    assert out == {"a": (9, None), "b": (9, None)}
    # and the same object nested in one thread
    with cfg:
        with cfg:
            assert settings_now().job_timeout == 9
        assert settings_now().job_timeout == 9
    assert settings_now().job_timeout is None


def test_reset_restores_defaults():
    cfg = hi.Config(job_timeout=4)
    cfg.__enter__()
    assert settings_now().job_timeout == 4
    hi.reset()
    assert settings_now().job_timeout is None
