"""The handler contract, with jobs running inside real runtimes.

Every test runs over runtime (docker, podman, apptainer sandbox, uv venv) x handler
(inline, parallel): values cross through the store and the JSON-line worker protocol, not
through pickle, so each guarantee is checked again here.
"""

from __future__ import annotations

import math
import os
import time

import numpy as np
import pytest

import hither as hi

from .cfuncs import (
    c_add,
    c_concat,
    c_console,
    c_exit,
    c_identity,
    c_kill9,
    c_np_double,
    c_np_make,
    c_np_scalars,
    c_open_missing,
    c_print_then_raise,
    c_raise_custom,
    c_raise_keyerror,
    c_read_stdin,
    c_return_object,
    c_sleep,
    c_types,
    c_worker_token,
)
from .conftest import leftovers, make_case, wait_no_containers, worker_processes

WAIT = 60  # seconds; only reached when something hangs

pytestmark = pytest.mark.timeout(120)


def qualname(v) -> str:
    return f"{type(v).__module__}.{type(v).__qualname__}"


def assert_same(got, want, where="result"):
    """Equal values of exactly the same types, recursively."""
    assert type(got) is type(want), f"{where}: got {qualname(got)}, want {qualname(want)}"
    if isinstance(want, np.ndarray):
        assert (got.dtype, got.shape) == (want.dtype, want.shape), \
            f"{where}: {got.dtype}{got.shape} != {want.dtype}{want.shape}"
        assert np.array_equal(got, want), f"{where}: {got!r} != {want!r}"
    elif isinstance(want, dict):
        assert list(got) == list(want), f"{where}: keys {list(got)!r} != {list(want)!r}"
        for (kg, vg), (kw, vw) in zip(got.items(), want.items(), strict=True):
            assert type(kg) is type(kw), f"{where}: key {kg!r} is a {type(kg).__name__}"
            assert_same(vg, vw, f"{where}[{kw!r}]")
    elif isinstance(want, (list, tuple)):
        assert len(got) == len(want), f"{where}: length {len(got)} != {len(want)}"
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            assert_same(g, w, f"{where}[{i}]")
    elif isinstance(want, float) and math.isnan(want):
        assert math.isnan(got), f"{where}: {got!r} is not nan"
    else:
        assert got == want, f"{where}: {got!r} != {want!r}"


VALUES = {
    "int": 42,
    "negative-big-int": -(2**80),
    "float": 2.5,
    "nan": float("nan"),
    "inf": float("-inf"),
    "str": "plain",
    "none": None,
    "bool": False,
    "tuple": (1, "a", (2.0, None)),
    "dict-int-keys": {1: "one", 2: {3: [4, (5, 6)]}, "s": {}},
    "bytes-small": b"\x00\xff\n binary",
    "bytes-large": bytes(range(256)) * 64,  # stored as a blob
    "nested-lists": [[1, [2, [3, []]]], [], [[None]]],
    "set": {1, 2, 3},
    "complex": 1 - 2j,
    "array-int16-2d": np.arange(6, dtype=np.int16).reshape(2, 3),
    "array-float32-fortran": np.asfortranarray(np.linspace(0, 1, 6, dtype=np.float32)
                                               .reshape(2, 3)),
    "array-large-float64": np.arange(20000, dtype=np.float64).reshape(100, 200),  # a blob
    "array-bool": np.array([True, False, True]),
    "array-empty": np.zeros((0, 3), dtype=np.uint8),
    "arrays-in-dict": {"a": np.array([1.5, -2.5]), 7: [np.array([[1], [2]], dtype=np.int32)]},
    "np-bool": np.bool_(True),
    "np-int64": np.int64(-7),
    "np-float32": np.float32(0.25),
}


def test_results_come_back_exactly(runtime_config, handler):
    with runtime_config.config(job_handler=handler):
        jobs = {name: c_identity.run(x=v) for name, v in VALUES.items()}
    for name, job in jobs.items():
        assert_same(job.result(timeout=WAIT), VALUES[name], where=name)
        assert job.get_status() is hi.JobStatus.FINISHED


def test_argument_types_arrive_unchanged_inside(runtime_config, handler):
    value = {1: np.int64(3), 2: np.bool_(True), 3: np.arange(3), 4: (1,), 5: b"x", 6: 1.0}
    with runtime_config.config(job_handler=handler):
        job = c_types.run(x=value)
    outer, items = job.result(timeout=WAIT)
    assert outer == "builtins.dict"
    assert items == [["builtins.int", t] for t in (
        "numpy.int64", "numpy.bool_", "numpy.ndarray", "builtins.tuple", "builtins.bytes",
        "builtins.float")]


def test_numpy_scalars_made_in_the_runtime_keep_their_types(runtime_config, handler):
    with runtime_config.config(job_handler=handler):
        got = c_np_scalars.run().result(timeout=WAIT)
    assert_same(got, {"b": np.bool_(True), "i": np.int64(-7), "f": np.float32(0.25)})


AWKWARD = [
    "it's",
    'say "hi"',
    "back\\slash \\n not a newline \\\\",
    "line one\nline two\r\nline three\r",
    "tab\there",
    "unicode: héllo wörld, 日本語, emoji 🎉, rtl עברית",
    "$HOME `id` $(id) ; rm -rf / && echo | cat",
    "{\"~\": \"npy\", \"ref\": \"sha256://0\"}",
    "nul\x00byte and \x7f del",
    "",
    " leading and trailing spaces ",
    "--stdio -c 'import os'",
]


def test_awkward_strings_survive(runtime_config, handler):
    """Quotes, backslashes, newlines, unicode (the 0.4.2 bug R18) in and out intact."""
    with runtime_config.config(job_handler=handler):
        joined = c_concat.run(parts=AWKWARD, sep="\n|\n")
        echoed = c_identity.run(x={s: s for s in AWKWARD})
    assert joined.result(timeout=WAIT) == "\n|\n".join(AWKWARD)
    assert_same(echoed.result(timeout=WAIT), {s: s for s in AWKWARD})


# ----------------------------------------------------------------------------- errors
def test_builtin_exception_keeps_type_traceback_and_console(runtime_config, handler):
    with runtime_config.config(job_handler=handler):
        job = c_print_then_raise.run(message="bad 'value' 42 ü")
    with pytest.raises(ValueError) as info:
        job.result(timeout=WAIT)
    assert type(info.value) is ValueError
    assert str(info.value) == "bad 'value' 42 ü"
    assert job.get_status() is hi.JobStatus.ERROR
    rinfo = job.get_runtime_info()
    tb = rinfo.get("traceback") or str(info.value.__cause__ or "")
    assert "c_print_then_raise" in tb and "ValueError: bad 'value' 42 ü" in tb, tb
    lines = [(x["text"], x["stderr"]) for x in rinfo["console_out"]["lines"]]
    assert ("before the error, on stdout", False) in lines
    assert ("before the error, on stderr", True) in lines


def test_custom_exception_becomes_job_failed_error(runtime_config, handler):
    with runtime_config.config(job_handler=handler):
        job = c_raise_custom.run(message="custom trouble")
    with pytest.raises(hi.JobFailedError) as info:
        job.result(timeout=WAIT)
    err = info.value
    assert err.remote_type.endswith("CustomJobError"), err.remote_type
    assert "custom trouble" in str(err)
    tb = err.traceback_text or job.get_runtime_info().get("traceback") or ""
    assert "c_raise_custom" in tb and "CustomJobError" in tb, tb




def test_builtin_exception_arguments_survive(runtime_config, handler):
    with runtime_config.config(job_handler=handler):
        kerr = c_raise_keyerror.run(key="missing-key").exception(timeout=WAIT)
        oerr = c_open_missing.run(path="/nonexistent/file.txt").exception(timeout=WAIT)
    assert type(kerr) is KeyError
    assert type(oerr) is FileNotFoundError
    assert kerr.args == ("missing-key",), kerr.args
    assert (oerr.errno, oerr.filename) == (2, "/nonexistent/file.txt"), oerr.args


def test_unencodable_result_fails_clearly(runtime_config, handler):
    with runtime_config.config(job_handler=handler):
        job = c_return_object.run()
        err = job.exception(timeout=WAIT)
        assert isinstance(err, (hi.JobFailedError, TypeError)), repr(err)
        assert "result['bad'][0]" in str(err) and "object" in str(err), str(err)
        assert job.get_status() is hi.JobStatus.ERROR
        assert c_add.run(a=1, b=2).result(timeout=WAIT) == 3




def test_unencodable_argument_fails_the_job(runtime_config, handler, request):
    with runtime_config.config(job_handler=handler):
        try:
            job = c_identity.run(x={"a": [object()]})
        except hi.SerializationError as e:  # refusing at .run() is fine too
            assert "kw['x']['a'][0]" in str(e)
            job = None
        if job is not None:
            with pytest.raises(TypeError) as info:
                job.result(timeout=WAIT)
            assert "kw['x']['a'][0]" in str(info.value)
            assert job.done(), f"the job is still {job.get_status()} after failing"
            assert job.get_status() is hi.JobStatus.ERROR
            with pytest.raises(TypeError):  # again, at once
                job.result(timeout=WAIT)
        assert c_add.run(a=1, b=2).result(timeout=WAIT) == 3


# ----------------------------------------------------------------------------- console
def test_show_console_streams_each_line_once(runtime_config, handler, capfd):
    with runtime_config.config(job_handler=handler, show_console=True):
        job = c_console.run(n=2)
        assert job.result(timeout=WAIT) == 2
    seen: list[str] = []
    deadline = time.monotonic() + 5  # the parallel handler's loop thread prints them
    while time.monotonic() < deadline:
        out, err = capfd.readouterr()
        seen += (out + err).splitlines()
        if sum("line" in x for x in seen) >= 4:
            break
        time.sleep(0.1)
    streamed = sorted(x for x in seen if "line" in x)
    assert streamed == sorted(f"[c_console] {w} line {i}" for w in ("out", "err")
                              for i in range(2)), seen
    # captured too, each line once, with its stderr flag
    lines = sorted((x["text"], x["stderr"]) for x in job.console_lines() if x["text"])
    assert lines == sorted([(f"out line {i}", False) for i in range(2)]
                           + [(f"err line {i}", True) for i in range(2)])


def test_console_lines_with_stderr_flag(runtime_config, handler):
    with runtime_config.config(job_handler=handler):
        job = c_console.run(n=3)
    assert job.result(timeout=WAIT) == 3
    info = job.get_runtime_info()
    lines = [(x["text"], x["stderr"]) for x in info["console_out"]["lines"] if x["text"]]
    assert [t for t in lines if not t[1]] == [(f"out line {i}", False) for i in range(3)]
    assert [t for t in lines if t[1]] == [(f"err line {i}", True) for i in range(3)]
    assert info["console_out"]["label"] == "c_console"


# ----------------------------------------------------------------------------- pipelines
def test_pipeline_across_jobs(runtime_config, handler):
    with runtime_config.config(job_handler=handler):
        a = c_add.run(a=1, b=2)
        b = c_add.run(a=a, b=10)
        words = c_concat.run(parts=[c_concat.run(parts=["x", "y"]), "z"], sep="-")
        made = c_np_make.run(n=5)
        doubled = c_np_double.run(data=made)
    assert b.result(timeout=WAIT) == 13
    assert words.result(timeout=WAIT) == "xy-z"
    got = doubled.result(timeout=WAIT)
    assert got["version"] == runtime_config.numpy_version
    assert got["got_type"] == "numpy.ndarray"
    assert_same(got["array"], np.arange(5, dtype=np.int64) * 6)


def test_failed_upstream_fails_the_pipeline(runtime_config, handler):
    with runtime_config.config(job_handler=handler):
        bad = c_print_then_raise.run(message="upstream")
        after = c_add.run(a=bad, b=1)
    with pytest.raises(hi.UpstreamJobError):
        after.result(timeout=WAIT)
    assert isinstance(bad.exception(timeout=WAIT), ValueError)


# ----------------------------------------------------------------------------- failures
def _gone(runtime_config, timeout: float = 15) -> None:
    """No container (or worker process) of this process remains."""
    if runtime_config.name in ("docker", "podman"):
        left = wait_no_containers(os.getpid(), timeout)
        assert not left, f"containers left: {left}"
    deadline = time.monotonic() + timeout
    while worker_processes(os.getpid()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not worker_processes(os.getpid())


def test_timeout_stops_the_job_and_the_next_job_works(runtime_config, handler):
    with runtime_config.config(job_handler=handler, job_timeout=2):
        job = c_sleep.run(seconds=60)
        t0 = time.monotonic()
        with pytest.raises(hi.JobTimeoutError):
            job.result(timeout=WAIT)
        assert time.monotonic() - t0 < 30
        assert job.get_status() is hi.JobStatus.ERROR
        assert c_add.run(a=1, b=1).result(timeout=WAIT) == 2


def test_cancel_a_running_job(runtime_config, parallel_handler):
    with runtime_config.config(job_handler=parallel_handler):
        job = c_sleep.run(seconds=60)
        deadline = time.monotonic() + WAIT
        while job.get_status() is not hi.JobStatus.RUNNING:
            assert time.monotonic() < deadline, "the job never started"
            time.sleep(0.05)
        if runtime_config.name in ("docker", "podman"):
            while not leftovers(os.getpid()):
                assert time.monotonic() < deadline, "no container was started"
                time.sleep(0.1)
        time.sleep(0.5)  # well inside the sleep
        assert job.cancel()
        with pytest.raises(hi.JobCancelledException):
            job.result(timeout=WAIT)
        assert job.cancelled()
        _gone(runtime_config)
        assert c_add.run(a=2, b=3).result(timeout=WAIT) == 5




@pytest.mark.parametrize("how", ["os._exit(3)", "SIGKILL"])
def test_crash_gives_worker_crashed_error_and_the_next_job_works(runtime_config, handler,
                                                                  how, request):
    with runtime_config.config(job_handler=handler):
        job = c_exit.run(code=3) if how == "os._exit(3)" else c_kill9.run()
        with pytest.raises(hi.WorkerCrashedError):
            job.result(timeout=WAIT)
        assert job.get_status() is hi.JobStatus.ERROR
        assert c_add.run(a=1, b=2).result(timeout=WAIT) == 3


# ----------------------------------------------------------------------------- warm workers
def test_warm_workers_are_reused(runtime_config, handler):
    with runtime_config.config(job_handler=handler):
        one_by_one = [c_worker_token.run(i=i).result(timeout=WAIT) for i in range(20)]
        burst = [c_worker_token.run(i=i) for i in range(20)]
        burst_tokens = [j.result(timeout=WAIT) for j in burst]
    assert len(set(one_by_one)) == 1, set(one_by_one)
    assert len(set(burst_tokens)) <= 2, set(burst_tokens)
    assert len(set(one_by_one + burst_tokens)) <= 2




@pytest.mark.parametrize("name", ["docker", "venv"])
def test_reading_stdin_in_a_job_gets_eof(name):
    case = make_case(name)
    with case.config(job_timeout=5):
        got = c_read_stdin.run().result(timeout=WAIT)
        assert c_add.run(a=1, b=1).result(timeout=WAIT) == 2
    assert got in (["read", ""], ["error", "EOFError"]), got
