"""The contract, continued: cancel, waiting, the Future protocol, timeouts and crashes.

Imported by :mod:`hither.testing.contract`, which is what test modules star-import.
"""

from __future__ import annotations

import concurrent.futures as cf
import threading
import time

import pytest

import hither as hi

from .checks import WAIT, console, started_and_running, wait_until
from .jobs import (
    ht_add,
    ht_exit,
    ht_kill9,
    ht_print_then_raise,
    ht_print_then_sleep,
    ht_sleep,
)


# ----------------------------------------------------------------------------- cancel
def test_cancel_job_waiting_on_upstream(hc):
    with hc.config():
        up = ht_sleep.run(seconds=1, value=5)
        down = ht_add.run(x=up, y=1)
    assert down.get_status() is hi.JobStatus.PENDING
    assert down.cancel() is True
    with pytest.raises(hi.JobCancelledException):
        down.result(timeout=10)
    with pytest.raises(cf.CancelledError):
        down.result(timeout=10)
    assert down.get_status() is hi.JobStatus.CANCELLED
    assert down.cancelled() and down.done()
    assert down.cancel() is False  # already complete
    assert up.result(timeout=WAIT) == 5  # the upstream is not affected
    assert down.get_status() is hi.JobStatus.CANCELLED


def test_cancelled_upstream_fails_dependent_with_upstream_error(hc):
    with hc.config():
        up = ht_sleep.run(seconds=60)
        down = ht_add.run(x=up, y=1)
    assert up.cancel() is True
    err = down.exception(timeout=WAIT)
    assert isinstance(err, hi.UpstreamJobError)
    assert "cancel" in str(err) and err.upstream_id == up.get_job_id()
    assert down.get_status() is hi.JobStatus.ERROR
    assert up.get_status() is hi.JobStatus.CANCELLED


def test_cancel_finished_job_keeps_result(hc):
    with hc.config():
        job = ht_add.run(x=1, y=2)
        failed = ht_print_then_raise.run(message="kept")
    assert job.result(timeout=WAIT) == 3
    assert job.cancel() is False
    assert job.result() == 3
    assert job.get_status() is hi.JobStatus.FINISHED and not job.cancelled()
    failed.exception(timeout=WAIT)
    assert failed.cancel() is False
    with pytest.raises(ValueError, match="kept"):
        failed.result()
    assert failed.get_status() is hi.JobStatus.ERROR


def test_cancel_queued_job(hc):
    with hc.config():
        blockers = [ht_sleep.run(seconds=1.5, value=i) for i in range(hc.slots)]
        queued = ht_add.run(x=1, y=1)
    assert queued.cancel() is True
    with pytest.raises(hi.JobCancelledException):
        queued.result(timeout=10)
    assert queued.get_status() is hi.JobStatus.CANCELLED
    assert [b.result(timeout=WAIT) for b in blockers] == list(range(hc.slots))
    with hc.config():
        assert ht_add.run(x=2, y=2).result(timeout=WAIT) == 4


def test_exception_of_a_cancelled_job_raises(hc):
    with hc.config():
        cancelled = ht_add.run(x=ht_sleep.run(seconds=60), y=1)
    assert cancelled.cancel() is True
    with pytest.raises(cf.CancelledError):
        cancelled.exception(timeout=10)


# ----------------------------------------------------------------------------- waiting
def test_hi_wait_waits_for_everything_and_does_not_raise(hc):
    with hc.config():
        jobs = [ht_add.run(x=i, y=1) for i in range(5)]
        bad = ht_print_then_raise.run(message="ignored by hi.wait")
        dependent = ht_add.run(x=bad, y=1)
        after = ht_add.run(x=jobs[0], y=1)
    assert hi.wait() is None
    assert all(j.done() for j in [*jobs, bad, dependent, after])
    assert [j.get_result() for j in jobs] == [1, 2, 3, 4, 5]
    assert after.get_result() == 2
    assert bad.get_status() is hi.JobStatus.ERROR
    assert dependent.get_status() is hi.JobStatus.ERROR


def test_hi_wait_timeout_returns_without_raising(hc):
    if hc.inline:
        pytest.skip("the inline handler runs a job to its end in the waiting thread")
    with hc.config():
        job = ht_sleep.run(seconds=1.5, value="slept")
    t0 = time.monotonic()
    assert hi.wait(timeout=0.3) is None
    assert time.monotonic() - t0 < WAIT / 2
    assert not job.done()
    hi.wait()
    assert job.get_result() == "slept"


def test_job_wait_timeout_returns_none_and_result_timeout_raises(hc):
    """As in hither 0.4.2, ``job.wait(timeout)`` returns None when the time runs out;
    ``result(timeout)`` keeps the Future's TimeoutError."""
    if hc.inline:
        pytest.skip("the inline handler runs a job to its end in the waiting thread")
    with hc.config():
        job = ht_sleep.run(seconds=1.5, value="slept")
    assert job.wait(0.2) is None
    with pytest.raises(cf.TimeoutError):
        job.result(timeout=0.2)
    with pytest.raises(cf.TimeoutError):
        job.exception(timeout=0.2)
    assert not job.done()
    assert job.wait(WAIT) == "slept"


# ----------------------------------------------------------------------------- Future contract
def test_jobs_are_futures(hc):
    with hc.config():
        job = ht_add.run(x=1, y=1)
    assert isinstance(job, cf.Future)
    assert job.result(timeout=WAIT) == 2
    assert job.done() and job.exception() is None


def test_concurrent_futures_wait_and_as_completed(hc):
    if hc.inline:
        pytest.skip("inline jobs run only when waited for through hither")
    with hc.config():
        jobs = [ht_add.run(x=i, y=1) for i in range(6)]
        bad = ht_print_then_raise.run(message="in as_completed")
    done, not_done = cf.wait([*jobs, bad], timeout=WAIT)
    assert not not_done and done == {*jobs, bad}
    with hc.config():
        more = [ht_add.run(x=i, y=100) for i in range(6)]
    seen = list(cf.as_completed(more, timeout=WAIT))
    assert sorted(j.result() for j in seen) == list(range(100, 106))
    assert len(seen) == len(set(seen)) == 6
    first = cf.wait([bad, *more], return_when=cf.FIRST_EXCEPTION, timeout=WAIT)
    assert bad in first.done


def test_done_callback_is_called_once_with_the_job(hc):
    calls: list = []
    lock = threading.Lock()

    def cb(j):
        with lock:
            calls.append(j)

    with hc.config():
        job = ht_sleep.run(seconds=0.5, value="x")
    assert not job.done()
    job.add_done_callback(cb)
    assert calls == []
    assert job.result(timeout=WAIT) == "x"
    assert wait_until(lambda: len(calls) >= 1, timeout=10)
    time.sleep(0.2)
    assert calls == [job]
    late: list = []
    job.add_done_callback(late.append)  # added after completion: called at once
    assert late == [job]


def test_exception_returns_the_error(hc):
    with hc.config():
        bad = ht_print_then_raise.run(message="from exception()")
        good = ht_add.run(x=1, y=1)
    err = bad.exception(timeout=WAIT)
    assert type(err) is ValueError and str(err) == "from exception()"
    assert bad.exception() is err
    assert good.exception(timeout=WAIT) is None


def test_done_is_false_until_the_job_completes(hc):
    with hc.config():
        job = ht_sleep.run(seconds=0.5, value="slept")
    assert not job.done()
    assert job.get_status() in (hi.JobStatus.QUEUED, hi.JobStatus.RUNNING)
    assert job.result(timeout=WAIT) == "slept"
    assert job.done() and job.get_status() is hi.JobStatus.FINISHED


# ------------------------------------------------------------- with a handler of their own
# Last: each shuts the case's handler down first (hc.fresh()), so that no warm worker of
# another handler starts or stops while it checks what its own handler leaves behind.
def test_cancel_running_job_stops_its_worker_and_the_handler_goes_on(hc):
    if hc.in_process:
        pytest.skip("a job running in the caller's own thread cannot be stopped")
    with hc.fresh() as fc:
        with fc.config():
            job = ht_sleep.run(seconds=60)
        started_and_running(job, fc)
        assert job.running()
        t0 = time.monotonic()
        assert job.cancel() is True
        with pytest.raises(hi.JobCancelledException):
            job.result(timeout=WAIT)
        assert time.monotonic() - t0 < WAIT / 2
        assert job.cancelled() and job.get_status() is hi.JobStatus.CANCELLED
        fc.assert_idle()  # the cancelled job's worker is gone
        with fc.config():
            assert ht_add.run(x=1, y=1).result(timeout=WAIT) == 2


def test_cancel_a_job_whose_worker_is_starting(hc):
    """A cancel that comes while the job's worker (a container, an interpreter) is still
    starting is not lost: the job ends cancelled, it does not run."""
    if hc.in_process:
        pytest.skip("a job running in the caller's own thread cannot be stopped")
    with hc.fresh() as fc:
        with fc.config():
            job = ht_sleep.run(seconds=60, value="ran")
        if fc.inline:  # it runs in a thread waiting for it: cancel once it is running
            started_and_running(job, fc, worker=False)
        assert job.cancel() is True
        with pytest.raises(hi.JobCancelledException):
            job.result(timeout=WAIT / 2)
        assert job.cancelled()
        with fc.config():
            assert ht_add.run(x=1, y=1).result(timeout=WAIT) == 2


def test_job_timeout_stops_the_job_keeps_its_console_and_the_handler_goes_on(hc):
    with hc.fresh() as fc:
        with fc.config(job_timeout=2):
            job = ht_print_then_sleep.run(seconds=60)
        t0 = time.monotonic()
        with pytest.raises(hi.JobTimeoutError) as info:
            job.result(timeout=WAIT)
        assert time.monotonic() - t0 < WAIT / 2
        assert isinstance(info.value, TimeoutError) and "job_timeout" in str(info.value)
        assert job.get_status() is hi.JobStatus.ERROR
        lines = console(job)
        assert ("printed before the sleep", False) in lines, lines
        assert ("printed on stderr before the sleep", True) in lines, lines
        fc.assert_idle()  # the job's worker was stopped
        with fc.config(job_timeout=30):
            assert ht_add.run(x=1, y=1).result(timeout=WAIT) == 2


def test_job_timeout_counts_from_the_function_start(hc):
    """Starting a worker (a container, an interpreter) is not the job's time."""
    with hc.fresh() as fc, fc.config(job_timeout=2):
        assert ht_sleep.run(seconds=0.1, value="in time").result(timeout=WAIT) == "in time"


@pytest.mark.parametrize("how", ["exit", "sigkill"])
def test_worker_crash_names_its_cause_and_the_handler_goes_on(hc, how):
    if hc.in_process:
        pytest.skip("the job would end the caller's own process")
    with hc.fresh() as fc:
        with fc.config():
            job = ht_exit.run(code=3) if how == "exit" else ht_kill9.run()
        with pytest.raises(hi.WorkerCrashedError) as info:
            job.result(timeout=WAIT)
        msg = str(info.value)
        if how == "exit":
            assert "exited with code 3" in msg, msg
        else:
            assert "SIGKILL" in msg, msg
        assert "None" not in msg, msg
        assert job.get_status() is hi.JobStatus.ERROR
        fc.assert_idle()
        with fc.config():
            assert ht_add.run(x=1, y=2).result(timeout=WAIT) == 3

