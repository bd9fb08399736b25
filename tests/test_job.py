"""The Job object: status flow, results before completion, labels, runtime info, ids."""

from __future__ import annotations

import io
import re
import time
from datetime import datetime

import pytest
from jobfuncs import (
    jf_add,
    jf_console,
    jf_identity,
    jf_print_then_raise,
    jf_wait_for_file,
    wait_until,
)

import hither as hi

S = hi.JobStatus


@pytest.fixture
def one_worker():
    h = hi.ParallelJobHandler(1, start_method="spawn")
    yield h
    h.shutdown(wait=False, cancel=True)


@pytest.mark.timeout(60)
def test_status_flow_on_a_worker_handler(one_worker, tmp_path):
    go_block, go_job = tmp_path / "go_block", tmp_path / "go_job"
    inline = hi.DefaultJobHandler()
    with hi.Config(job_handler=one_worker):
        blocker = jf_wait_for_file.run(path=str(go_block), value="blocker")
    with hi.Config(job_handler=inline):
        up = jf_identity.run(x="from upstream")
    with hi.Config(job_handler=one_worker):
        job = jf_wait_for_file.run(path=str(go_job), value=up)
    try:
        # waiting for its upstream
        assert job.get_status() is S.PENDING
        assert job.status is S.PENDING
        assert wait_until(lambda: blocker.get_status() is S.RUNNING, timeout=20)
        assert job.get_status() is S.PENDING
        # upstream done; the only worker is busy: given to the handler, not started
        assert up.result() == "from upstream"
        assert wait_until(lambda: job.get_status() is not S.PENDING, timeout=10)
        assert job.get_status() is S.QUEUED
        assert not job.running() and not job.done()
        # the worker becomes free: the job starts (and waits for its file)
        go_block.write_text("")
        assert wait_until(lambda: job.get_status() is S.RUNNING, timeout=20)
        assert job.running() and not job.done()
        go_job.write_text("")
        assert job.result(timeout=30) == "from upstream"
        assert job.get_status() is S.FINISHED
        assert not job.running() and job.done()
        assert blocker.get_status() is S.FINISHED
    finally:
        go_block.write_text("")
        go_job.write_text("")


def test_status_values():
    assert [s.value for s in S] == ["pending", "queued", "running", "finished", "error",
                                    "cancelled"]
    assert {s for s in S if s.is_complete()} == {S.FINISHED, S.ERROR, S.CANCELLED}


def test_inline_job_is_queued_until_waited():
    job = jf_add.run(x=1, y=1)
    assert job.get_status() is S.QUEUED
    assert job.get_runtime_info() is None
    assert job.wait() == 2
    assert job.get_status() is S.FINISHED


def test_reset_cancels_queued_inline_jobs():
    job = jf_add.run(x=1, y=1)
    down = jf_add.run(x=job, y=1)
    hi.reset()
    with pytest.raises(hi.JobCancelledException):
        job.wait()
    assert job.get_status() is S.CANCELLED
    assert down.done() and down.get_status() in (S.CANCELLED, S.ERROR)
    assert jf_add.run(x=2, y=2).wait() == 4  # the default handler goes on


def test_failing_job_status_is_error():
    job = jf_print_then_raise.run(message="m")
    with pytest.raises(ValueError):
        job.wait()
    assert job.get_status() is S.ERROR
    assert isinstance(job.get_exception(), ValueError)


@pytest.mark.timeout(60)
def test_get_result_before_completion_raises(one_worker, tmp_path):
    go = tmp_path / "go"
    inline_job = jf_add.run(x=1, y=1)
    with pytest.raises(hi.HitherError):
        inline_job.get_result()  # does not run the job
    assert inline_job.get_status() is S.QUEUED
    with pytest.raises(hi.HitherError):
        inline_job.get_exception()
    with hi.Config(job_handler=one_worker):
        job = jf_wait_for_file.run(path=str(go))
    try:
        with pytest.raises(hi.HitherError, match="jf_wait_for_file"):
            job.get_result()
    finally:
        go.write_text("")
    assert job.result(timeout=30) == "seen"
    assert job.get_result() == "seen"
    assert job.get_exception() is None
    assert inline_job.wait() == 2 and inline_job.get_result() == 2


@pytest.mark.timeout(60)
def test_wait_timeout_returns_none_result_timeout_raises(one_worker, tmp_path):
    """0.4.2's ``wait(timeout)`` returns None when the time runs out; the Future's
    ``result(timeout)`` raises TimeoutError."""
    go = tmp_path / "go"
    with hi.Config(job_handler=one_worker):
        job = jf_wait_for_file.run(path=str(go), value=None)
    try:
        assert job.wait(timeout=0.1) is None
        assert not job.done()
        with pytest.raises(TimeoutError):
            job.result(timeout=0.1)
        assert not job.done()  # the job goes on
    finally:
        go.write_text("")
    assert job.wait(timeout=30) is None
    assert job.get_status() is S.FINISHED


@pytest.mark.timeout(60)
def test_inline_wait_timeout_is_not_doubled(one_worker, tmp_path):
    go = tmp_path / "go"
    with hi.Config(job_handler=one_worker):
        up = jf_wait_for_file.run(path=str(go), value=1)
    down = jf_add.run(x=up, y=1)  # inline, waiting for the worker job
    t0 = time.monotonic()
    try:
        with pytest.raises(TimeoutError):
            down.result(timeout=2)
        elapsed = time.monotonic() - t0
    finally:
        go.write_text("")
    assert down.wait(timeout=30) == 2
    assert elapsed < 3.5, f"wait(timeout=2) took {elapsed:.1f} s"


def test_set_label_chains():
    job = jf_add.run(x=1)
    assert job.get_label() == "jf_add" and job.label == "jf_add"
    assert job.set_label("first").set_label("my label") is job
    assert job.get_label() == "my label"
    assert "my label" in repr(job)
    assert job.get_function_name() == "jf_add"
    assert job.get_function_version() == "1"
    assert job.get_function() is jf_add


def test_set_label_names_the_job_in_its_errors():
    up = jf_print_then_raise.run(message="m").set_label("loader")
    down = jf_add.run(x=up)
    with pytest.raises(hi.UpstreamJobError, match="loader"):
        down.wait()


def test_print_console_out_format():
    job = jf_console.run()
    buf = io.StringIO()
    job.print_console_out(file=buf)
    assert buf.getvalue() == ""  # nothing before the job completes
    job.wait()
    buf = io.StringIO()
    job.print_console_out(file=buf)
    lines = [x for x in buf.getvalue().splitlines() if not x.endswith(": ")]
    texts = []
    for line in lines:
        m = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?): (.*)", line)
        assert m, line
        stamp = datetime.fromisoformat(m.group(1)).timestamp()
        info = job.get_runtime_info()
        assert info["start_time"] - 1 <= stamp <= info["end_time"] + 1
        texts.append(m.group(2))
    assert texts == ["line one out", "line two err", "partial line three out"]


def test_print_console_out_defaults_to_stdout(capsys):
    job = jf_console.run()
    job.wait()
    job.print_console_out()
    out = capsys.readouterr().out
    assert re.search(r"^\d{4}-\d\d-\d\dT[\d:.]+: line one out$", out, re.MULTILINE)


def test_runtime_info_keys():
    job = jf_console.run()
    assert job.get_runtime_info() is None
    job.wait()
    info = job.get_runtime_info()
    assert {"start_time", "end_time", "elapsed_sec", "console_out", "cache_hit"} <= set(info)
    assert info["cache_hit"] is False
    assert info["start_time"] <= info["end_time"]
    assert info["elapsed_sec"] == pytest.approx(info["end_time"] - info["start_time"], abs=1e-3)
    assert info["elapsed_sec"] >= 0
    assert info["console_out"]["label"] == "jf_console"
    assert all(set(x) == {"timestamp", "text", "stderr"} for x in info["console_out"]["lines"])
    # a copy: changing it does not change the job
    info["console_out"]["lines"].clear()
    info["cache_hit"] = "changed"
    assert job.get_runtime_info()["console_out"]["lines"]
    assert job.get_runtime_info()["cache_hit"] is False


def test_job_ids_are_15_letters_and_unique():
    jobs = [jf_add.run(x=i) for i in range(200)]
    ids = [j.get_job_id() for j in jobs]
    assert all(re.fullmatch(r"[A-Za-z]{15}", i) for i in ids)
    assert len(set(ids)) == len(ids)
    assert jobs[0].job_id == ids[0]


def test_kwargs_and_settings_are_kept():
    h = hi.DefaultJobHandler()
    with hi.Config(job_handler=h, jhparams={"k": 1}):
        job = jf_add.run(x=1, y=2)
    assert job.kwargs == {"x": 1, "y": 2}
    assert job.handler is h
    assert job.get_jhparams() == {"k": 1}
    assert job.wait() == 3


@pytest.mark.timeout(60)
def test_threads_waiting_on_a_job_are_all_woken(one_worker, tmp_path):
    """A job's condition (lighter than threading.Condition) wakes every kind of waiter:
    result(), exception(), concurrent.futures.wait / as_completed, and a timed wait that
    runs out first leaves the job going on."""
    import concurrent.futures as cf
    import threading

    go = tmp_path / "go"
    with hi.Config(job_handler=one_worker):
        job = jf_wait_for_file.run(path=str(go), value="woken")
    assert wait_until(lambda: job.get_status() is S.RUNNING, timeout=20)
    with pytest.raises(TimeoutError):
        job.result(timeout=0.05)
    done, pending = cf.wait([job], timeout=0.05)
    assert not done and pending == {job}
    got: list[object] = []
    waiters = [threading.Thread(target=lambda: got.append(job.result())),
               threading.Thread(target=lambda: got.append(job.exception())),
               threading.Thread(target=lambda: got.append(
                   next(cf.as_completed([job])).result())),
               threading.Thread(target=lambda: got.append(
                   len(cf.wait([job], return_when=cf.FIRST_COMPLETED).done)))]
    for t in waiters:
        t.start()
    assert not job.done()
    go.write_text("")
    for t in waiters:
        t.join(30)
    assert not any(t.is_alive() for t in waiters)
    assert sorted(map(repr, got)) == sorted(map(repr, ["woken", None, "woken", 1]))


def test_job_sets_every_field_future_init_sets():
    """Job does not call Future.__init__ (its condition is made on first wait): a Python
    whose Future gains a field must fail here, not at some later wait."""
    from concurrent.futures import Future

    assert set(vars(Future())) == {"_condition", "_state", "_result", "_exception",
                                   "_waiters", "_done_callbacks"}
    job = jf_add.run(x=1, y=2)
    assert vars(job) == {}  # every field in a slot
    assert job.result() == 3 and job.done() and not job.cancelled()


@pytest.mark.timeout(120)
def test_waiting_while_jobs_complete_never_misses_a_wakeup():
    """The condition of a job is made by the first thread that waits, while a handler
    thread may be completing the job: every waiter of every kind is woken."""
    import concurrent.futures as cf
    import threading

    h = hi.ParallelJobHandler(2, start_method="spawn")
    try:
        with hi.Config(job_handler=h):
            jobs = [jf_add.run(x=i, y=1) for i in range(300)]
        got: list[object] = []
        lock = threading.Lock()

        def waiter(i: int, job: hi.Job) -> None:
            kind = i % 4
            if kind == 0:
                value = job.result()
            elif kind == 1:
                value = None if job.exception() is None else "error"
            elif kind == 2:
                value = next(cf.as_completed([job])).result()
            else:
                value = len(cf.wait([job]).done)
            with lock:
                got.append((i, value))

        threads = [threading.Thread(target=waiter, args=(i, j)) for i, j in enumerate(jobs)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not any(t.is_alive() for t in threads)
        want = {i: [i + 1, None, i + 1, 1][i % 4] for i in range(300)}
        assert dict(got) == want
    finally:
        h.shutdown(wait=False, cancel=True)


def test_done_callbacks_before_and_after_completion():
    """Callbacks added before completion run once at completion, those added after run
    at once; a failing callback is logged, the others still run."""
    calls: list[str] = []
    job = jf_add.run(x=1, y=1)  # inline: queued until waited
    job.add_done_callback(lambda j: calls.append("before"))
    job.add_done_callback(lambda j: 1 / 0)
    job.add_done_callback(lambda j: calls.append("after failing one"))
    assert job.result() == 2
    assert calls == ["before", "after failing one"]
    job.add_done_callback(lambda j: calls.append("late"))
    assert calls[-1] == "late"
    failing = jf_print_then_raise.run(message="x")
    failing.add_done_callback(lambda j: calls.append(type(j.exception()).__name__))
    with pytest.raises(ValueError, match="x"):
        failing.result()
    assert calls[-1] == "ValueError" and isinstance(failing.exception(), ValueError)


def test_a_cache_hit_is_a_completed_future_from_run(tmp_path):
    """A hit known at ``.run()`` is completed as it is made (without the locks and the
    callbacks of a completion): it must still be every bit a finished job."""
    import concurrent.futures as cf

    cache = hi.JobCache(path=str(tmp_path / "c"))
    with hi.Config(job_cache=cache):
        first = jf_add.run(x=2, y=3)
        assert first.result() == 5 and not first.cache_hit
        job = jf_add.run(x=2, y=3)
    assert job.done() and job.cache_hit and not job.cancelled()
    assert job.get_status() is hi.JobStatus.FINISHED and job._state == "FINISHED"
    assert job.result(timeout=0) == 5 and job.exception(timeout=0) is None
    assert job.key == first.key and job.result_hash == first.result_hash
    assert job.keyinfo is not None and job.keyinfo.key == job.key
    assert job.keyinfo.inputs["x"]["desc"] == first.keyinfo.inputs["x"]["desc"]
    info = job.get_runtime_info()
    assert info["cache_hit"] is True and info["result_hash"] == first.result_hash
    seen: list[object] = []
    job.add_done_callback(lambda j: seen.append(j.result()))
    assert seen == [5]
    assert cf.wait([job], timeout=0).done == {job}
    assert next(cf.as_completed([job], timeout=1)) is job
    assert not job.cancel()  # a finished job cannot be cancelled
