"""The contract every job handler keeps, in every runtime: the test functions.

Each test takes the fixture ``hc``, a :class:`~hither.testing.cases.Case` (one handler x
one runtime) that the importing test module defines; see :mod:`hither.testing`. Only
values every runtime can carry are used (jobs in containers take and return values of
hither's codec); what legitimately differs between host and runtime jobs is tested
elsewhere.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

import hither as hi

from . import contract_control as _control
from .cases import Case
from .checks import WAIT, assert_same, console, streamed
from .jobs import (
    CustomJobError,
    ht_add,
    ht_concat,
    ht_console,
    ht_console_lines,
    ht_count,
    ht_identity,
    ht_np_double,
    ht_np_make,
    ht_np_scalars,
    ht_open_missing,
    ht_print_then_raise,
    ht_raise_custom,
    ht_raise_keyerror,
    ht_raise_local,
    ht_structure,
    ht_sum,
    ht_types,
    ht_worker_token,
)


@pytest.fixture(autouse=True)
def contract_settle(hc: Case):
    """After each test: jobs it left behind are cancelled (warm workers are kept)."""
    yield
    hc.settle()


# ----------------------------------------------------------------------------- values
VALUES = {
    "int": 42,
    "big-int": 2**70,
    "negative-big-int": -(2**80),
    "float": 2.5,
    "nan": float("nan"),
    "inf": float("-inf"),
    "str": "plain",
    "unicode": "héllo wörld\nsecond line 'quoted'",
    "none": None,
    "bool": False,
    "complex": 1 - 2j,
    "tuple": (1, "a", (2.0, None)),
    "list-of-tuples": [(1, 2), (3,)],
    "nested-lists": [[1, [2, [3, []]]], [], [[None]]],
    "dict-int-keys": {1: "one", 2: {3: [4, (5, 6)]}, "s": {}},
    "set": {1, 2, 3},
    "bytes-small": b"\x00\xff\n binary",
    "bytes-large": bytes(range(256)) * 64,
    "array-int16-2d": np.arange(6, dtype=np.int16).reshape(2, 3),
    "array-float32-fortran": np.asfortranarray(np.linspace(0, 1, 6, dtype=np.float32)
                                               .reshape(2, 3)),
    "array-large-float64": np.arange(20000, dtype=np.float64).reshape(100, 200),
    "array-bool": np.array([True, False, True]),
    "array-empty": np.zeros((0, 3), dtype=np.uint8),
    "arrays-in-dict": {"a": np.array([1.5, -2.5]), 7: [np.array([[1], [2]], dtype=np.int32)]},
    "np-bool": np.bool_(True),
    "np-int64": np.int64(-7),
    "np-float32": np.float32(0.25),
}

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


def test_results_come_back_exactly(hc):
    with hc.config():
        jobs = {name: ht_identity.run(x=v) for name, v in VALUES.items()}
    for name, job in jobs.items():
        assert_same(job.result(timeout=WAIT), VALUES[name], where=name)
        assert job.get_status() is hi.JobStatus.FINISHED


def test_argument_types_arrive_unchanged(hc):
    value = {1: np.int64(3), 2: np.bool_(True), 3: np.arange(3), 4: (1,), 5: b"x", 6: 1.0,
             7: "s", 8: None, 9: [1], 10: {"k": 1}}
    with hc.config():
        job = ht_types.run(x=value)
    outer, items = job.result(timeout=WAIT)
    np_bool = "numpy.bool_" if (hc.numpy_version or "1").startswith("1.") else "numpy.bool"
    assert outer == "builtins.dict"
    assert items == [["builtins.int", t] for t in (
        "numpy.int64", np_bool, "numpy.ndarray", "builtins.tuple", "builtins.bytes",
        "builtins.float", "builtins.str", "builtins.NoneType", "builtins.list",
        "builtins.dict")]


def test_numpy_scalars_made_by_a_job_keep_their_types(hc):
    with hc.config():
        got = ht_np_scalars.run().result(timeout=WAIT)
    assert_same(got, {"b": np.bool_(True), "i": np.int64(-7), "f": np.float32(0.25)})


def test_awkward_strings_survive(hc):
    """Quotes, backslashes, newlines, NUL, unicode (0.4.2's bug R18) in and out intact."""
    with hc.config():
        joined = ht_concat.run(parts=AWKWARD, sep="\n|\n")
        echoed = ht_identity.run(x={s: s for s in AWKWARD})
    assert joined.result(timeout=WAIT) == "\n|\n".join(AWKWARD)
    assert_same(echoed.result(timeout=WAIT), {s: s for s in AWKWARD})


def test_warm_workers_are_reused(hc):
    if not hc.reuses_workers:
        pytest.skip("each job runs in a process of its own (reuses_workers=False)")
    with hc.config():
        one_by_one = [ht_worker_token.run(i=i).result(timeout=WAIT) for i in range(10)]
        burst = [ht_worker_token.run(i=i) for i in range(10)]
        burst_tokens = [j.result(timeout=WAIT) for j in burst]
    assert len(set(one_by_one)) == 1, set(one_by_one)
    assert len(set(burst_tokens)) <= hc.slots, set(burst_tokens)


# ----------------------------------------------------------------------------- errors
def test_builtin_exception_keeps_type_message_traceback_and_console(hc):
    with hc.config():
        job = ht_print_then_raise.run(message="bad 'value' 42 ü")
    with pytest.raises(ValueError) as info:
        job.result(timeout=WAIT)
    assert type(info.value) is ValueError
    assert str(info.value) == "bad 'value' 42 ü"
    assert info.value.args == ("bad 'value' 42 ü",)
    assert job.get_status() is hi.JobStatus.ERROR
    assert job.done() and not job.cancelled()
    with pytest.raises(ValueError, match="bad 'value' 42"):  # again
        job.wait()
    tb = job.get_runtime_info()["traceback"]
    assert "ht_print_then_raise" in tb and "ValueError: bad 'value' 42 ü" in tb, tb
    lines = console(job)
    assert ("before the raise, on stdout", False) in lines
    assert ("before the raise, on stderr", True) in lines


def test_builtin_exception_arguments_survive(hc):
    with hc.config():
        kjob = ht_raise_keyerror.run(key="missing-key")
        ojob = ht_open_missing.run(path="/nonexistent/file.txt")
    kerr = kjob.exception(timeout=WAIT)
    oerr = ojob.exception(timeout=WAIT)
    assert type(kerr) is KeyError and kerr.args == ("missing-key",)
    assert type(oerr) is FileNotFoundError
    assert (oerr.errno, oerr.filename) == (2, "/nonexistent/file.txt"), oerr.args


def test_custom_exception_comes_back_as_itself(hc):
    """Its class can be imported in the caller: ``except CustomJobError`` works."""
    with hc.config():
        job = ht_raise_custom.run(message="custom trouble", code=3)
    with pytest.raises(CustomJobError) as info:
        job.result(timeout=WAIT)
    assert type(info.value) is CustomJobError
    assert info.value.args == ("custom trouble", 3)
    tb = job.get_runtime_info()["traceback"]
    assert "ht_raise_custom" in tb and "CustomJobError" in tb, tb


def test_exception_the_caller_cannot_import_is_a_job_failed_error(hc):
    with hc.config():
        job = ht_raise_local.run(message="local trouble")
    with pytest.raises(hi.JobFailedError) as info:
        job.result(timeout=WAIT)
    err = info.value
    assert err.remote_type.endswith("ht_raise_local.<locals>.LocalJobError"), err.remote_type
    assert "local trouble" in str(err) and err.job_label == "ht_raise_local"
    tb = err.traceback_text or ""
    assert "ht_raise_local" in tb and "LocalJobError: local trouble" in tb, tb
    assert job.get_status() is hi.JobStatus.ERROR


# ----------------------------------------------------------------------------- console
def test_console_lines_with_stderr_flag(hc):
    with hc.config():
        job = ht_console.run()
    assert job.result(timeout=WAIT) == 7
    info = job.get_runtime_info()
    assert info["console_out"]["label"] == "ht_console"
    lines = [(x["text"], x["stderr"]) for x in info["console_out"]["lines"] if x["text"]]
    assert lines == [("line one out", False), ("line two err", True),
                     ("partial line three out", False)]
    for x in info["console_out"]["lines"]:
        assert info["start_time"] - 1 <= x["timestamp"] <= info["end_time"] + 1


def test_console_is_not_streamed_by_default(hc, capfd):
    with hc.config():
        job = ht_console_lines.run(n=2)
    job.result(timeout=WAIT)
    time.sleep(0.2)
    out, err = capfd.readouterr()
    assert "out line" not in out + err and "err line" not in out + err


def test_show_console_streams_each_line_once_prefixed_with_the_label(hc, capfd):
    with hc.config(show_console=True):
        job = ht_console_lines.run(n=2)
    assert job.result(timeout=WAIT) == 2
    seen = streamed(capfd, 4)
    got = sorted(x for x in seen if "line" in x)
    assert got == sorted(f"[ht_console_lines] {w} line {i}" for w in ("out", "err")
                         for i in range(2)), seen
    assert sorted(x for x in console(job) if x[0]) == sorted(
        [(f"out line {i}", False) for i in range(2)] + [(f"err line {i}", True)
                                                         for i in range(2)])


def test_live_console_prefix_follows_set_label(hc, capfd):
    with hc.config(show_console=True):
        job = ht_console_lines.run(n=1, delay=0.5)
    job.set_label("renamed job")
    assert job.result(timeout=WAIT) == 1
    seen = streamed(capfd, 2)
    got = sorted(x for x in seen if "line" in x)
    assert got == ["[renamed job] err line 0", "[renamed job] out line 0"], seen
    assert job.get_runtime_info()["console_out"]["label"] == "renamed job"


# ----------------------------------------------------------------------------- pipelines
def test_jobs_nested_in_structures_are_replaced_by_results(hc):
    with hc.config():
        a = ht_add.run(x=1, y=2)
        b = ht_identity.run(x=(4, "four"))
        c = ht_structure.run(data={"list": [a, 5, [b]], "tuple": (b, a),
                                   "dict": {"k": a, 3: [b, {"deep": a}]}})
    assert_same(c.result(timeout=WAIT), {
        "list": [3, 5, [(4, "four")]],
        "tuple": ((4, "four"), 3),
        "dict": {"k": 3, 3: [(4, "four"), {"deep": 3}]},
        "tuple_is_tuple": True,
    })


def test_chain_of_three(hc):
    with hc.config():
        a = ht_add.run(x=1, y=1)
        b = ht_add.run(x=a, y=10)
        c = ht_add.run(x=b, y=100)
    assert c.result(timeout=WAIT) == 112
    assert [j.get_status() for j in (a, b, c)] == [hi.JobStatus.FINISHED] * 3


def test_numpy_arrays_flow_through_a_pipeline_in_the_runtime(hc):
    with hc.config():
        made = ht_np_make.run(n=5)
        doubled = ht_np_double.run(data=made)
        words = ht_concat.run(parts=[ht_concat.run(parts=["x", "y"]), "z"], sep="-")
    got = doubled.result(timeout=WAIT)
    assert got["version"] == hc.numpy_version  # numpy of the runtime, not the caller's
    assert got["got_type"] == "numpy.ndarray"
    assert_same(got["array"], np.arange(5, dtype=np.int64) * 6)
    assert words.result(timeout=WAIT) == "xy-z"


def test_upstream_failure_fails_dependents_with_upstream_error(hc):
    with hc.config():
        up = ht_print_then_raise.run(message="upstream broke")
        mid = ht_add.run(x=up, y=1)
        down = ht_add.run(x=[mid][0], y=1)
        unrelated = ht_add.run(x=1, y=1)
    with pytest.raises(hi.UpstreamJobError) as info:
        mid.result(timeout=WAIT)
    assert isinstance(info.value, hi.JobError)
    assert "ht_print_then_raise" in str(info.value)
    assert info.value.upstream_label == "ht_print_then_raise"
    assert info.value.upstream_id == up.get_job_id()
    assert mid.get_status() is hi.JobStatus.ERROR
    with pytest.raises(hi.UpstreamJobError) as info2:
        down.result(timeout=WAIT)
    assert info2.value.upstream_id == mid.get_job_id()
    with pytest.raises(ValueError, match="upstream broke"):
        up.result(timeout=WAIT)
    assert unrelated.result(timeout=WAIT) == 2


def test_shared_upstream_runs_exactly_once(hc, tmp_path):
    if not hc.shares_files:
        pytest.skip("jobs in an isolated container cannot count runs in the caller's files")
    counter = tmp_path / "count.txt"
    with hc.config():
        up = ht_count.run(path=str(counter), value=10)
        downs = [ht_add.run(x=up, y=i) for i in range(4)]
        total = ht_sum.run(values=[up, *downs])
    assert total.result(timeout=WAIT) == 10 + (10 + 11 + 12 + 13)
    assert [d.result(timeout=WAIT) for d in downs] == [10, 11, 12, 13]
    hi.wait()
    assert len(counter.read_text().splitlines()) == 1


def test_mixing_handlers_in_a_pipeline(hc):
    inline = hi.DefaultJobHandler()
    with hi.Config(job_handler=inline):
        a = ht_add.run(x=1, y=2)
    with hc.config():
        b = ht_add.run(x=a, y=3)
        c = ht_add.run(x=b, y=1)
    with hi.Config(job_handler=inline):
        d = ht_add.run(x=c, y=10)
    a.result()  # an inline upstream runs when waited for
    assert b.result(timeout=WAIT) == 6
    if hc.inline:
        c.result()  # c sits on another inline handler: only waiting for c itself runs it
    assert d.result(timeout=WAIT) == 17  # a job of this handler feeding an inline one


def test_waiting_drives_an_inline_upstream_of_another_handler(hc):
    with hi.Config(job_handler=hi.DefaultJobHandler()):
        a = ht_add.run(x=1, y=2)
    with hc.config():
        b = ht_add.run(x=a, y=3)
    assert b.result(timeout=WAIT) == 6


def test_hi_wait_runs_a_mixed_pipeline(hc):
    with hi.Config(job_handler=hi.DefaultJobHandler()):
        a = ht_add.run(x=1, y=2)
    with hc.config():
        b = ht_add.run(x=a, y=3)
    hi.wait()
    assert b.get_result() == 6


globals().update((n, v) for n, v in vars(_control).items() if n.startswith("test_"))

# in the order above (a star import keeps it): the tests with a handler of their own last
__all__ = ["contract_settle"] + [n for n in list(globals()) if n.startswith("test_")]

for _name in __all__[1:]:  # a hang fails its test (pytest-timeout), wherever they are imported
    globals()[_name] = pytest.mark.timeout(180)(globals()[_name])
