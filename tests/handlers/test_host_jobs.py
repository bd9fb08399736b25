"""What host jobs can do that jobs in a runtime cannot (the shared contract is in
``hither.testing.contract``): take and return any picklable object, keep container types
of the caller, run jobs themselves, be defined inside another function."""

from __future__ import annotations

import collections
import datetime
import decimal
import fractions
import signal

import pytest
from jobfuncs import Pair, jf_add, jf_identity, jf_nested_run, jf_type_names

import hither as hi

RESULT_TIMEOUT = 30

#: values outside hither's codec: a host job takes and returns them as they are
PICKLABLE = {
    "namedtuple": Pair(1, [2, "x"]),
    "ordered-dict": collections.OrderedDict([("b", 1), ("a", 2)]),
    "fraction": fractions.Fraction(1, 3),
    "decimal": decimal.Decimal("1.10"),
    "datetime": datetime.datetime(2024, 5, 1, 12, 30, tzinfo=datetime.timezone.utc),
    "frozen-dict-keys": {("tuple", "key"): frozenset({1, 2})},
}


@pytest.mark.timeout(60)
def test_any_picklable_value_goes_in_and_comes_back(handler):
    with hi.Config(job_handler=handler):
        jobs = {name: jf_identity.run(x=v) for name, v in PICKLABLE.items()}
    for name, job in jobs.items():
        got = job.result(timeout=RESULT_TIMEOUT)
        assert type(got) is type(PICKLABLE[name]) and got == PICKLABLE[name], name


@pytest.mark.timeout(60)
def test_namedtuple_of_jobs_keeps_its_type(handler):
    with hi.Config(job_handler=handler):
        a = jf_add.run(x=1, y=2)
        b = jf_identity.run(x=Pair(a, [a, "z"]))
    got = b.result(timeout=RESULT_TIMEOUT)
    assert type(got) is Pair and got == Pair(3, [3, "z"])


@pytest.mark.timeout(60)
def test_argument_container_types_survive_upstream_replacement(handler):
    with hi.Config(job_handler=handler):
        up = jf_add.run(x=1, y=1)
        job = jf_type_names.run(a=collections.OrderedDict(k=1), b=up)
        job2 = jf_type_names.run(a=collections.defaultdict(list), b=[up])
    assert job.result(timeout=RESULT_TIMEOUT) == ["collections.OrderedDict", "builtins.int"]
    assert job2.result(timeout=RESULT_TIMEOUT) == ["collections.defaultdict", "builtins.list"]


@pytest.mark.timeout(60)
def test_job_that_runs_jobs_itself(handler):
    with hi.Config(job_handler=handler):
        job = jf_nested_run.run(x=1)
    assert job.result(timeout=RESULT_TIMEOUT) == 20
    assert "outer starts" in [x["text"] for x in job.console_lines()]


@pytest.mark.timeout(60)
def test_function_defined_inside_a_test_runs(handler):
    offset = 100

    @hi.function("nested_scale_fn", "1")
    def nested_scale_fn(x):
        return x * 3 + offset

    with hi.Config(job_handler=handler):
        job = nested_scale_fn.run(x=2)
    assert job.result(timeout=RESULT_TIMEOUT) == 106


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
