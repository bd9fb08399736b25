"""Automatic batching of tiny jobs on ParallelJobHandler (hither/handlers/_batching.py).

Real worker processes. Each test first makes a function's jobs known to be fast (its
history), then checks that the jobs sent in one message still complete, fail, cancel and
time out one by one.
"""

from __future__ import annotations

import pytest
from jobfuncs import jf_tiny, jf_tiny_other, pid_alive, wait_until

import hither as hi
from hither.handlers._batching import BatchPolicy

RESULT_TIMEOUT = 30


def _warm(jh: hi.ParallelJobHandler, n: int = 200) -> None:
    """Run ``n`` tiny jobs: their run times make jf_tiny a batched function."""
    with hi.Config(job_handler=jh):
        jobs = [jf_tiny.run(x=i) for i in range(n)]
    assert [j.result(timeout=RESULT_TIMEOUT) for j in jobs] == [i + 1 for i in range(n)]


def _sent(jh: hi.ParallelJobHandler) -> tuple[int, int]:
    b = jh.batching
    return b["messages"], b["jobs"]


def _wait_sent(jh: hi.ParallelJobHandler, jobs: int) -> None:
    """Wait until the handler has sent ``jobs`` jobs to its workers in all."""
    assert wait_until(lambda: _sent(jh)[1] >= jobs, timeout=RESULT_TIMEOUT), jh.batching


def _batch_behind_a_blocked_job(jh: hi.ParallelJobHandler, gate, n: int):
    """Warm jf_tiny up, then send a job that blocks until ``gate`` exists and ``n - 1``
    jobs batched behind it; returns (blocked job, batch, jobs sent before)."""
    _warm(jh)
    _, s0 = _sent(jh)
    with hi.Config(job_handler=jh):
        blocked = jf_tiny.run(x=0, gate=str(gate))
        batch = [jf_tiny.run(x=i) for i in range(1, n)]
    _wait_sent(jh, s0 + n)
    return blocked, batch, s0


@pytest.fixture(params=["forkserver", "spawn"])
def one_worker(request):
    jh = hi.ParallelJobHandler(1, start_method=request.param)
    yield jh
    jh.shutdown(wait=False, cancel=True)


# ----------------------------------------------------------------------------- policy
def test_policy_grows_while_fast_and_drops_at_once_on_a_slow_job():
    p = BatchPolicy(target=0.005)
    assert p.size("f") == 1  # no history: not batched
    sizes = []
    for _ in range(10):
        p.record("f", 1e-5)
        sizes.append(p.size("f"))
    assert sizes[:4] == [2, 4, 8, 16]  # doubles per fast job ...
    assert sizes[-1] == int(0.005 / (1e-5 + 20e-6))  # ... up to target / cost
    p.record("f", 0.01)  # one slow job
    assert p.size("f") == 1
    p.record("g", 1e-5)
    p.slow("g")  # a timeout or a crash
    assert p.size("g") == 1


def test_policy_room_keeps_unbatched_jobs_out_of_batches():
    p = BatchPolicy()
    for _ in range(20):
        p.record("fast", 1e-5)
    assert p.room("fast", 0, 0, 2) and p.room("fast", 1, 1, 2)  # within prefetch
    assert p.room("fast", 50, 0, 2)  # a batch
    assert not p.room("fast", 2, 1, 2)  # never behind a job that is not batched
    assert not p.room("new", 2, 0, 2)  # no history: never behind a batch
    assert p.room("new", 1, 0, 2)


def test_policy_disabled_never_batches():
    p = BatchPolicy(False)
    for _ in range(20):
        p.record("f", 1e-5)
    assert p.size("f") == 1
    assert not p.room("f", 2, 0, 2)
    with pytest.raises(ValueError):
        BatchPolicy(target=0)


# ----------------------------------------------------------------------------- pool
@pytest.mark.timeout(120)
@pytest.mark.parametrize("batch", [True, False])
def test_tiny_jobs_are_batched_unless_turned_off(batch):
    jh = hi.ParallelJobHandler(2, batch=batch)
    try:
        _warm(jh, 500)
        with hi.Config(job_handler=jh):
            jobs = [jf_tiny.run(x=i) for i in range(1000)]
        assert [j.result(timeout=RESULT_TIMEOUT) for j in jobs] == list(range(1, 1001))
        messages, sent = _sent(jh)
        assert sent == 1500
        if batch:
            assert messages < sent / 4, jh.batching
        else:
            assert messages == sent
        assert jh.batching["enabled"] is batch
    finally:
        jh.shutdown()


@pytest.mark.timeout(120)
def test_failing_job_in_a_batch_fails_only_itself(one_worker):
    _warm(one_worker)
    m0, _ = _sent(one_worker)
    with hi.Config(job_handler=one_worker):
        jobs = [jf_tiny.run(x=i, fail=(i == 37)) for i in range(100)]
    for i, j in enumerate(jobs):
        if i == 37:
            with pytest.raises(ValueError, match="tiny job 37 fails"):
                j.result(timeout=RESULT_TIMEOUT)
            assert j.get_status() is hi.JobStatus.ERROR
        else:
            assert j.result(timeout=RESULT_TIMEOUT) == i + 1
    assert _sent(one_worker)[0] - m0 < 50  # they went in batches


@pytest.mark.timeout(120)
def test_results_come_per_job_and_cancel_takes_one_queued_job(one_worker, tmp_path):
    gate = tmp_path / "gate"
    _warm(one_worker)
    m0, s0 = _sent(one_worker)
    with hi.Config(job_handler=one_worker):
        first = jf_tiny.run(x=0)
        blocked = jf_tiny.run(x=1, gate=str(gate))
        rest = [jf_tiny.run(x=i) for i in range(2, 40)]
    _wait_sent(one_worker, s0 + 40)
    assert _sent(one_worker)[0] - m0 < 20  # queued at the worker, in batches
    # the job before the blocked one completes now, not when its batch ends
    assert first.result(timeout=RESULT_TIMEOUT) == 1
    assert wait_until(lambda: blocked.get_status() is hi.JobStatus.RUNNING, timeout=10)
    assert not blocked.done() and not any(j.done() for j in rest)
    assert rest[10].cancel() is True  # queued in the worker behind the blocked job
    gate.write_text("")
    assert blocked.result(timeout=RESULT_TIMEOUT) == 2
    for i, j in enumerate(rest, start=2):
        if i == 12:
            with pytest.raises(hi.JobCancelledException):
                j.result(timeout=RESULT_TIMEOUT)
            assert j.get_status() is hi.JobStatus.CANCELLED
        else:
            assert j.result(timeout=RESULT_TIMEOUT) == i + 1


@pytest.mark.timeout(120)
def test_new_function_is_not_queued_behind_a_batch(tmp_path):
    """Worker A holds a batch behind a job that blocks; a job of a function without
    history goes to worker B and completes meanwhile."""
    gate = tmp_path / "gate"
    jh = hi.ParallelJobHandler(2)
    try:
        blocked, batch, _ = _batch_behind_a_blocked_job(jh, gate, 200)
        with hi.Config(job_handler=jh):
            other = jf_tiny_other.run(x=5)
        assert other.result(timeout=RESULT_TIMEOUT) == -5
        assert not blocked.done()
        gate.write_text("")
        assert blocked.result(timeout=RESULT_TIMEOUT) == 1
        assert [j.result(timeout=RESULT_TIMEOUT) for j in batch] == list(range(2, 201))
    finally:
        jh.shutdown(wait=False, cancel=True)


@pytest.mark.timeout(120)
def test_unknown_function_waits_for_a_free_worker_not_behind_a_batch(one_worker, tmp_path):
    gate = tmp_path / "gate"
    blocked, batch, s0 = _batch_behind_a_blocked_job(one_worker, gate, 50)
    with hi.Config(job_handler=one_worker):
        other = jf_tiny_other.run(x=5)
    assert not wait_until(lambda: _sent(one_worker)[1] > s0 + 50, timeout=0.5)
    gate.write_text("")  # the batch drains: then the new job is sent
    assert other.result(timeout=RESULT_TIMEOUT) == -5
    assert [j.result(timeout=RESULT_TIMEOUT) for j in [blocked, *batch]] == list(range(1, 51))


@pytest.mark.timeout(120)
def test_job_timeout_in_a_batch_fails_that_job_and_redispatches_the_rest(one_worker):
    with hi.Config(job_timeout=20):
        _warm(one_worker)
        m0, _ = _sent(one_worker)
        pid = one_worker.worker_pids[0]
        with hi.Config(job_handler=one_worker, job_timeout=1):
            jobs = [jf_tiny.run(x=i, seconds=60 if i == 10 else 0.0) for i in range(40)]
    for i, j in enumerate(jobs):
        if i == 10:
            with pytest.raises(hi.JobTimeoutError):
                j.result(timeout=RESULT_TIMEOUT)
        else:
            assert j.result(timeout=RESULT_TIMEOUT) == i + 1
    assert _sent(one_worker)[0] - m0 < 40  # some were sent together with the slow one
    assert wait_until(lambda: not pid_alive(pid), timeout=10)
    assert one_worker.worker_pids and pid not in one_worker.worker_pids


@pytest.mark.timeout(120)
def test_worker_crash_mid_batch_fails_the_running_job_and_redispatches_the_rest(
        one_worker, tmp_path):
    cache = hi.JobCache(path=str(tmp_path / "cache"))
    _warm(one_worker)
    m0, _ = _sent(one_worker)
    with hi.Config(job_handler=one_worker, job_cache=cache):
        jobs = [jf_tiny.run(x=i, exit_code=3 if i == 20 else None) for i in range(60)]
    for i, j in enumerate(jobs):
        if i == 20:
            with pytest.raises(hi.WorkerCrashedError):
                j.result(timeout=RESULT_TIMEOUT)
        else:
            assert j.result(timeout=RESULT_TIMEOUT) == i + 1
    assert _sent(one_worker)[0] - m0 < 60
    with hi.Config(job_handler=one_worker, job_cache=cache):  # the crash was not cached
        again = jf_tiny.run(x=20, exit_code=3)
        with pytest.raises(hi.WorkerCrashedError):
            again.result(timeout=RESULT_TIMEOUT)
        assert not again.cache_hit


@pytest.mark.timeout(120)
def test_reset_stops_a_batch_queued_at_a_worker(one_worker, tmp_path):
    gate = tmp_path / "gate"
    _warm(one_worker)
    _, s0 = _sent(one_worker)
    pid = one_worker.worker_pids[0]
    with hi.Config(job_handler=one_worker):
        jobs = [jf_tiny.run(x=0, gate=str(gate))] + [jf_tiny.run(x=i) for i in range(1, 30)]
    _wait_sent(one_worker, s0 + 30)
    hi.reset()
    for j in jobs:
        with pytest.raises(hi.JobCancelledException):
            j.result(timeout=RESULT_TIMEOUT)
    assert wait_until(lambda: not pid_alive(pid), timeout=10)
    with hi.Config(job_handler=one_worker):  # still usable
        assert jf_tiny.run(x=1).result(timeout=RESULT_TIMEOUT) == 2


@pytest.mark.timeout(120)
def test_worker_reply_with_bad_times_does_not_break_the_pool(one_worker):
    """A job that leaves its worker's clock returning text: the times in that worker's
    answers are not numbers; the pool goes on and later jobs complete."""
    _warm(one_worker, 20)
    with hi.Config(job_handler=one_worker):
        spoil = jf_tiny.run(x=0, spoil_clock=True)
        later = [jf_tiny.run(x=i) for i in range(1, 50)]
    assert spoil.result(timeout=RESULT_TIMEOUT) == 1
    assert [j.result(timeout=RESULT_TIMEOUT) for j in later] == list(range(2, 51))
