"""The contract every job handler keeps: run over the inline and the worker handlers."""

from __future__ import annotations

import collections
import concurrent.futures as cf
import os
import signal
import threading
import time

import numpy as np
import pytest
from jobfuncs import (
    Pair,
    count_lines,
    jf_add,
    jf_console,
    jf_counted,
    jf_identity,
    jf_nested_run,
    jf_print_then_raise,
    jf_raise_keyerror,
    jf_sleep,
    jf_structure,
    jf_sum,
    jf_type_name,
    jf_type_names,
    jf_wait_for_file,
    wait_until,
)

import hither as hi

RESULT_TIMEOUT = 30  # generous: only reached when something hangs


def is_inline(handler) -> bool:
    return isinstance(handler, hi.DefaultJobHandler)


def assert_same(got, want, where="result"):
    """Equal value AND exactly the same types, recursively (a tuple stays a tuple...)."""
    assert type(got) is type(want), f"{where}: {type(got)!r} is not {type(want)!r}"
    if isinstance(want, np.ndarray):
        assert got.dtype == want.dtype, f"{where}: dtype {got.dtype} != {want.dtype}"
        assert got.shape == want.shape, f"{where}: shape {got.shape} != {want.shape}"
        assert np.array_equal(got, want), f"{where}: {got!r} != {want!r}"
    elif isinstance(want, dict):
        assert list(got) == list(want), f"{where}: keys {list(got)!r} != {list(want)!r}"
        for k in want:
            assert type(k) is type(next(x for x in got if x == k)), f"{where}: key type {k!r}"
            assert_same(got[k], want[k], f"{where}[{k!r}]")
    elif isinstance(want, (list, tuple)):
        assert len(got) == len(want), f"{where}: length {len(got)} != {len(want)}"
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            assert_same(g, w, f"{where}[{i}]")
    elif isinstance(want, float) and want != want:  # NaN
        assert got != got
    else:
        assert got == want, f"{where}: {got!r} != {want!r}"


VALUES = {
    "int": 42,
    "big-int": 2**70,
    "float": 2.5,
    "str": "héllo wörld\nsecond line 'quoted'",
    "none": None,
    "bool": True,
    "tuple": (1, "a", (2.0, None)),
    "list-of-tuples": [(1, 2), (3,)],
    "nested-dict-int-keys": {1: {"a": [1, 2, {3: "three"}]}, 2: (4, 5), "s": {}},
    "bytes": b"\x00\xffbinary",
    "ndarray-int16": np.arange(6, dtype=np.int16).reshape(2, 3),
    "ndarray-float32-fortran": np.asfortranarray(np.ones((2, 2), dtype=np.float32)),
    "ndarray-in-dict": {"a": np.array([1.5, 2.5]), "b": [np.array([True, False])]},
    "np-bool": np.bool_(True),
    "np-int64": np.int64(-7),
    "np-float32": np.float32(0.25),
    "set": {1, 2, 3},
    "complex": 1 + 2j,
}


# ----------------------------------------------------------------------------- results
@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", list(VALUES))
def test_result_comes_back_exactly(handler, name):
    value = VALUES[name]
    with hi.Config(job_handler=handler):
        job = jf_identity.run(x=value)
    assert_same(job.result(timeout=RESULT_TIMEOUT), value)
    assert job.get_status() is hi.JobStatus.FINISHED


@pytest.mark.timeout(60)
def test_argument_types_arrive_unchanged(handler):
    with hi.Config(job_handler=handler):
        jobs = {name: jf_type_name.run(x=VALUES[name])
                for name in ("np-int64", "np-bool", "tuple", "bytes", "ndarray-int16")}
    got = {name: j.result(timeout=RESULT_TIMEOUT) for name, j in jobs.items()}
    want = {name: f"{type(VALUES[name]).__module__}.{type(VALUES[name]).__qualname__}"
            for name in jobs}
    assert want["np-int64"] == "numpy.int64" and want["tuple"] == "builtins.tuple"
    assert got == want


# ----------------------------------------------------------------------------- errors
@pytest.mark.timeout(60)
def test_raising_function_keeps_type_message_traceback_and_console(handler):
    with hi.Config(job_handler=handler):
        job = jf_print_then_raise.run(message="bad value 42")
    with pytest.raises(ValueError) as info:
        job.result(timeout=RESULT_TIMEOUT)
    assert type(info.value) is ValueError
    assert str(info.value) == "bad value 42"
    assert job.get_status() is hi.JobStatus.ERROR
    assert job.done() and not job.cancelled()
    # a second wait raises again
    with pytest.raises(ValueError, match="bad value 42"):
        job.wait()
    runtime = job.get_runtime_info()
    assert runtime is not None
    assert "jf_print_then_raise" in runtime["traceback"]
    assert "ValueError: bad value 42" in runtime["traceback"]
    # R11: the console output printed before the raise is kept
    lines = [(x["text"], x["stderr"]) for x in runtime["console_out"]["lines"]]
    assert ("before the raise, on stdout", False) in lines
    assert ("before the raise, on stderr", True) in lines


@pytest.mark.timeout(60)
def test_other_exception_types_are_kept(handler):
    with hi.Config(job_handler=handler):
        job = jf_raise_keyerror.run(key="missing-key")
    err = job.exception(timeout=RESULT_TIMEOUT)
    assert type(err) is KeyError
    assert err.args == ("missing-key",)


# ----------------------------------------------------------------------------- console
@pytest.mark.timeout(60)
def test_console_capture_with_stderr_flag(handler):
    with hi.Config(job_handler=handler):
        job = jf_console.run()
    assert job.result(timeout=RESULT_TIMEOUT) == 7
    info = job.get_runtime_info()
    assert info["console_out"]["label"] == "jf_console"
    lines = [(x["text"], x["stderr"]) for x in info["console_out"]["lines"] if x["text"]]
    # R12: the stderr flag is set for lines written to stderr only
    assert lines == [("line one out", False), ("line two err", True),
                     ("partial line three out", False)]
    for x in info["console_out"]["lines"]:
        assert info["start_time"] - 1 <= x["timestamp"] <= info["end_time"] + 1


@pytest.mark.timeout(60)
def test_console_is_not_streamed_by_default(handler, capfd):
    with hi.Config(job_handler=handler):
        job = jf_console.run()
    job.result(timeout=RESULT_TIMEOUT)
    out, err = capfd.readouterr()
    assert "line one out" not in out + err
    assert "line two err" not in out + err


@pytest.mark.timeout(60)
def test_show_console_streams_lines_prefixed_with_label(handler, capfd):
    with hi.Config(job_handler=handler, show_console=True):
        job = jf_console.run()
    job.result(timeout=RESULT_TIMEOUT)
    # the worker writes through its own file descriptors: give the pipe a moment
    seen: list[str] = []

    def collect():
        out, err = capfd.readouterr()
        seen.extend((out + err).splitlines())
        return any("line two err" in x for x in seen) and any("line one out" in x for x in seen)

    wait_until(collect, timeout=2)
    streamed = [x for x in seen if "line" in x]
    for text in ("line one out", "line two err", "partial line three out"):
        matching = [x for x in streamed if text in x]
        assert matching, f"{text!r} was not streamed; saw {seen!r}"
        assert all("jf_console" in x and x.index("jf_console") < x.index(text)
                   for x in matching), matching
    # captured as well as streamed
    assert any(x["text"] == "line one out" for x in job.get_runtime_info()["console_out"]["lines"])


# ----------------------------------------------------------------------------- pipelines
@pytest.mark.timeout(60)
def test_jobs_nested_in_structures_are_replaced_by_results(handler):
    with hi.Config(job_handler=handler):
        a = jf_add.run(x=1, y=2)
        b = jf_identity.run(x=(4, "four"))
        c = jf_structure.run(data={"list": [a, 5, [b]], "tuple": (b, a),
                                   "dict": {"k": a, 3: [b, {"deep": a}]}})
    assert_same(c.result(timeout=RESULT_TIMEOUT), {
        "list": [3, 5, [(4, "four")]],
        "tuple": ((4, "four"), 3),
        "dict": {"k": 3, 3: [(4, "four"), {"deep": 3}]},
        "tuple_is_tuple": True,
    })


@pytest.mark.timeout(60)
def test_shared_upstream_runs_exactly_once(handler, tmp_path):
    counter = tmp_path / "count.txt"
    with hi.Config(job_handler=handler):
        up = jf_counted.run(path=str(counter), value=10)
        downs = [jf_add.run(x=up, y=i) for i in range(4)]
        total = jf_sum.run(values=[up, *downs])
    assert total.result(timeout=RESULT_TIMEOUT) == 10 + (10 + 11 + 12 + 13)
    assert [d.result(timeout=RESULT_TIMEOUT) for d in downs] == [10, 11, 12, 13]
    hi.wait()
    assert count_lines(counter) == 1


@pytest.mark.timeout(60)
def test_upstream_failure_fails_dependents_with_upstream_error(handler):
    with hi.Config(job_handler=handler):
        up = jf_print_then_raise.run(message="upstream broke")
        mid = jf_add.run(x=up, y=1)
        down = jf_add.run(x=[mid][0], y=1)
        unrelated = jf_add.run(x=1, y=1)
    with pytest.raises(hi.UpstreamJobError) as info:
        mid.result(timeout=RESULT_TIMEOUT)
    assert isinstance(info.value, hi.JobError)
    assert "jf_print_then_raise" in str(info.value)
    assert info.value.upstream_label == "jf_print_then_raise"
    assert info.value.upstream_id == up.get_job_id()
    assert mid.get_status() is hi.JobStatus.ERROR
    with pytest.raises(hi.UpstreamJobError) as info2:
        down.result(timeout=RESULT_TIMEOUT)
    assert info2.value.upstream_id == mid.get_job_id()
    assert down.get_status() is hi.JobStatus.ERROR
    with pytest.raises(ValueError, match="upstream broke"):
        up.result(timeout=RESULT_TIMEOUT)
    assert unrelated.result(timeout=RESULT_TIMEOUT) == 2


@pytest.mark.timeout(60)
def test_chain_of_three(handler):
    with hi.Config(job_handler=handler):
        a = jf_add.run(x=1, y=1)
        b = jf_add.run(x=a, y=10)
        c = jf_add.run(x=b, y=100)
    assert c.result(timeout=RESULT_TIMEOUT) == 112
    assert [j.get_status() for j in (a, b, c)] == [hi.JobStatus.FINISHED] * 3


@pytest.mark.timeout(60)
def test_namedtuple_of_jobs_keeps_its_type(handler):
    with hi.Config(job_handler=handler):
        a = jf_add.run(x=1, y=2)
        b = jf_identity.run(x=Pair(a, [a, "z"]))
    assert_same(b.result(timeout=RESULT_TIMEOUT), Pair(3, [3, "z"]))


@pytest.mark.timeout(60)
def test_argument_container_types_survive_upstream_replacement(handler):
    with hi.Config(job_handler=handler):
        up = jf_add.run(x=1, y=1)
        job = jf_type_names.run(a=collections.OrderedDict(k=1), b=up)
        job2 = jf_type_names.run(a=collections.defaultdict(list), b=[up])
    assert job.result(timeout=RESULT_TIMEOUT) == ["collections.OrderedDict", "builtins.int"]
    assert job2.result(timeout=RESULT_TIMEOUT) == ["collections.defaultdict", "builtins.list"]


@pytest.mark.timeout(60)
def test_mixing_handlers_in_a_pipeline(handler):
    inline = hi.DefaultJobHandler()
    with hi.Config(job_handler=inline):
        a = jf_add.run(x=1, y=2)
    with hi.Config(job_handler=handler):
        b = jf_add.run(x=a, y=3)
        c = jf_add.run(x=b, y=1)
    with hi.Config(job_handler=inline):
        d = jf_add.run(x=c, y=10)
    a.result()  # an inline upstream runs when waited for
    assert b.result(timeout=RESULT_TIMEOUT) == 6
    if is_inline(handler):
        c.result()  # c sits on another inline handler: only waiting for c itself runs it
    assert d.result(timeout=RESULT_TIMEOUT) == 17  # a worker job feeding an inline one


@pytest.mark.timeout(60)
def test_waiting_drives_an_inline_upstream_of_another_handler(handler):
    with hi.Config(job_handler=hi.DefaultJobHandler()):
        a = jf_add.run(x=1, y=2)
    with hi.Config(job_handler=handler):
        b = jf_add.run(x=a, y=3)
    assert b.result(timeout=2) == 6


@pytest.mark.timeout(60)
def test_hi_wait_runs_a_mixed_pipeline(handler):
    with hi.Config(job_handler=hi.DefaultJobHandler()):
        a = jf_add.run(x=1, y=2)
    with hi.Config(job_handler=handler):
        b = jf_add.run(x=a, y=3)
    hi.wait()
    assert b.get_result() == 6


@pytest.mark.timeout(60)
def test_job_that_runs_jobs_itself(handler):
    with hi.Config(job_handler=handler):
        job = jf_nested_run.run(x=1)
    assert job.result(timeout=RESULT_TIMEOUT) == 20
    texts = [x["text"] for x in job.get_runtime_info()["console_out"]["lines"]]
    assert "outer starts" in texts


@pytest.mark.timeout(60)
def test_function_defined_inside_a_test_runs_everywhere(handler):
    offset = 100

    @hi.function("nested_scale_fn", "1")
    def nested_scale_fn(x):
        return x * 3 + offset

    with hi.Config(job_handler=handler):
        job = nested_scale_fn.run(x=2)
    assert job.result(timeout=RESULT_TIMEOUT) == 106


# ----------------------------------------------------------------------------- cancel
@pytest.mark.timeout(60)
def test_cancel_job_waiting_on_upstream(handler, tmp_path):
    go = tmp_path / "go"
    with hi.Config(job_handler=handler):
        up = jf_wait_for_file.run(path=str(go), value=5)
        down = jf_add.run(x=up, y=1)
    assert down.get_status() is hi.JobStatus.PENDING
    assert down.cancel() is True
    with pytest.raises(hi.JobCancelledException):
        down.result(timeout=10)
    with pytest.raises(cf.CancelledError):
        down.result(timeout=10)
    assert down.get_status() is hi.JobStatus.CANCELLED
    assert down.cancelled() and down.done()
    assert down.cancel() is False  # already complete
    go.write_text("")
    assert up.result(timeout=RESULT_TIMEOUT) == 5  # the upstream is not affected
    assert down.get_status() is hi.JobStatus.CANCELLED


@pytest.mark.timeout(60)
def test_cancelled_upstream_fails_dependent_with_upstream_error(handler, tmp_path):
    go = tmp_path / "go"
    with hi.Config(job_handler=handler):
        up = jf_wait_for_file.run(path=str(go))
        down = jf_add.run(x=up, y=1)
    assert up.cancel() is True
    err = down.exception(timeout=RESULT_TIMEOUT)
    assert isinstance(err, hi.UpstreamJobError)
    assert "cancel" in str(err) and err.upstream_id == up.get_job_id()
    assert down.get_status() is hi.JobStatus.ERROR
    assert up.get_status() is hi.JobStatus.CANCELLED


@pytest.mark.timeout(60)
def test_cancel_finished_job_keeps_result(handler):
    with hi.Config(job_handler=handler):
        job = jf_add.run(x=1, y=2)
        failed = jf_print_then_raise.run(message="kept")
    assert job.result(timeout=RESULT_TIMEOUT) == 3
    assert job.cancel() is False
    assert job.result() == 3
    assert job.get_status() is hi.JobStatus.FINISHED
    assert not job.cancelled()
    failed.exception(timeout=RESULT_TIMEOUT)
    assert failed.cancel() is False
    with pytest.raises(ValueError, match="kept"):
        failed.result()
    assert failed.get_status() is hi.JobStatus.ERROR


@pytest.mark.timeout(60)
def test_cancel_queued_job(handler, tmp_path):
    go = tmp_path / "go"
    with hi.Config(job_handler=handler):
        blockers = [jf_wait_for_file.run(path=str(go), value=i) for i in range(2)]
        queued = jf_add.run(x=1, y=1)
    assert queued.cancel() is True
    with pytest.raises(hi.JobCancelledException):
        queued.result(timeout=10)
    assert queued.get_status() is hi.JobStatus.CANCELLED
    go.write_text("")
    assert [b.result(timeout=RESULT_TIMEOUT) for b in blockers] == [0, 1]
    with hi.Config(job_handler=handler):
        assert jf_add.run(x=2, y=2).result(timeout=RESULT_TIMEOUT) == 4


# ----------------------------------------------------------------------------- timeout
@pytest.mark.timeout(90)
def test_job_timeout_stops_job_and_handler_goes_on(handler):
    with hi.Config(job_handler=handler, job_timeout=1):
        job = jf_sleep.run(seconds=60, value="late")
    t0 = time.monotonic()
    with pytest.raises(hi.JobTimeoutError) as info:
        job.result(timeout=45)
    assert time.monotonic() - t0 < 15
    assert isinstance(info.value, TimeoutError)
    assert job.get_status() is hi.JobStatus.ERROR
    with hi.Config(job_handler=handler, job_timeout=20):
        after = jf_add.run(x=1, y=1)
    assert after.result(timeout=RESULT_TIMEOUT) == 2


@pytest.mark.timeout(60)
def test_inline_job_timeout_keeps_an_outer_alarm():
    """An inline job_timeout uses SIGALRM; a timer set by the caller must survive it."""
    fired: list[int] = []
    old = signal.signal(signal.SIGALRM, lambda *a: fired.append(1))
    try:
        signal.setitimer(signal.ITIMER_REAL, 50.0)
        with hi.Config(job_handler=hi.DefaultJobHandler(), job_timeout=5):
            assert jf_add.run(x=1, y=1).result() == 2
        remaining = signal.getitimer(signal.ITIMER_REAL)[0]
        assert remaining > 0, "the caller's SIGALRM timer was cancelled by the job"
        assert signal.getsignal(signal.SIGALRM) is not signal.SIG_DFL
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


# ----------------------------------------------------------------------------- hi.wait
@pytest.mark.timeout(60)
def test_hi_wait_waits_for_everything_and_does_not_raise(handler, tmp_path):
    counter = tmp_path / "count.txt"
    with hi.Config(job_handler=handler):
        jobs = [jf_counted.run(path=str(counter), value=i) for i in range(5)]
        bad = jf_print_then_raise.run(message="ignored by hi.wait")
        dependent = jf_add.run(x=bad, y=1)
        after = jf_add.run(x=jobs[0], y=1)
    assert hi.wait() is None
    assert all(j.done() for j in [*jobs, bad, dependent, after])
    assert count_lines(counter) == 5
    assert after.get_result() == 1
    assert bad.get_status() is hi.JobStatus.ERROR
    assert dependent.get_status() is hi.JobStatus.ERROR


@pytest.mark.timeout(60)
def test_hi_wait_timeout_returns_without_raising(handler, tmp_path):
    if is_inline(handler):
        pytest.skip("the inline handler runs a job to its end in the waiting thread")
    go = tmp_path / "go"
    with hi.Config(job_handler=handler):
        job = jf_wait_for_file.run(path=str(go))
    t0 = time.monotonic()
    assert hi.wait(timeout=0.3) is None
    assert time.monotonic() - t0 < 10
    assert not job.done()
    go.write_text("")
    hi.wait()
    assert job.get_result() == "seen"


# ----------------------------------------------------------------------------- Future contract
@pytest.mark.timeout(60)
def test_jobs_are_futures(handler):
    with hi.Config(job_handler=handler):
        job = jf_add.run(x=1, y=1)
    assert isinstance(job, cf.Future)
    assert job.result(timeout=RESULT_TIMEOUT) == 2
    assert job.done()
    assert job.exception() is None


@pytest.mark.timeout(60)
def test_concurrent_futures_wait_and_as_completed(handler):
    if is_inline(handler):
        pytest.skip("inline jobs run only when waited for through hither")
    with hi.Config(job_handler=handler):
        jobs = [jf_add.run(x=i, y=1) for i in range(6)]
        bad = jf_print_then_raise.run(message="in as_completed")
    done, not_done = cf.wait([*jobs, bad], timeout=RESULT_TIMEOUT)
    assert not not_done
    assert done == {*jobs, bad}
    with hi.Config(job_handler=handler):
        more = [jf_add.run(x=i, y=100) for i in range(6)]
    seen = list(cf.as_completed(more, timeout=RESULT_TIMEOUT))
    assert sorted(j.result() for j in seen) == list(range(100, 106))
    assert len(seen) == len(set(seen)) == 6
    first = cf.wait([bad, *more], return_when=cf.FIRST_EXCEPTION, timeout=RESULT_TIMEOUT)
    assert bad in first.done


@pytest.mark.timeout(60)
def test_done_callback_called_once_with_the_job(handler, tmp_path):
    go = tmp_path / "go"
    calls: list = []
    lock = threading.Lock()

    def cb(j):
        with lock:
            calls.append(j)

    with hi.Config(job_handler=handler):
        job = jf_wait_for_file.run(path=str(go), value="x")
    assert not job.done()
    job.add_done_callback(cb)
    assert calls == []
    go.write_text("")
    assert job.result(timeout=RESULT_TIMEOUT) == "x"
    assert wait_until(lambda: len(calls) >= 1, timeout=10)
    time.sleep(0.2)
    assert calls == [job]
    late: list = []
    job.add_done_callback(late.append)  # added after completion: called at once
    assert late == [job]


@pytest.mark.timeout(60)
def test_exception_returns_the_error(handler):
    with hi.Config(job_handler=handler):
        bad = jf_print_then_raise.run(message="from exception()")
        good = jf_add.run(x=1, y=1)
    err = bad.exception(timeout=RESULT_TIMEOUT)
    assert type(err) is ValueError and str(err) == "from exception()"
    assert bad.exception() is err
    assert good.exception(timeout=RESULT_TIMEOUT) is None


@pytest.mark.timeout(60)
def test_exception_of_cancelled_job_raises(handler, tmp_path):
    go = tmp_path / "go"
    with hi.Config(job_handler=handler):
        cancelled = jf_add.run(x=jf_wait_for_file.run(path=str(go)), y=1)
    assert cancelled.cancel() is True
    try:
        with pytest.raises(cf.CancelledError):
            cancelled.exception(timeout=10)
    finally:
        go.write_text("")


@pytest.mark.timeout(60)
def test_done_is_false_until_the_job_completes(handler, tmp_path):
    go = tmp_path / "go"
    with hi.Config(job_handler=handler):
        job = jf_wait_for_file.run(path=str(go))
    time.sleep(0.1)
    assert not job.done()
    assert job.get_status() in (hi.JobStatus.QUEUED, hi.JobStatus.RUNNING)
    go.write_text("")
    assert job.result(timeout=RESULT_TIMEOUT) == "seen"
    assert job.done()
    assert os.path.exists(go)
