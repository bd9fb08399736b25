"""The job cache: flags, exact round trips of results, records and provenance, damage.

Executions are counted through the call log (``HITHER_TEST_CALL_LOG``, read inside the job
functions of ``tests/cachefuncs/funcs.py``), never through arguments, which are in the key.
"""

from __future__ import annotations

import mmap
import os
import re
import socket
import stat
import time
import warnings

import numpy as np
import pytest
from hither_store import StoreWarning

import hither as hi
from hither import hashing
from tests.cachefuncs import (
    CALL_LOG_ENV,
    blob_files,
    blob_is_intact,
    blob_path_of,
    flip_byte,
    read_calls,
    store_files,
    strict_equal,
)
from tests.cachefuncs import funcs as cf
from tests.mounts import read_only_view, tree

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def log(tmp_path, monkeypatch):
    path = tmp_path / "calls.log"
    monkeypatch.setenv(CALL_LOG_ENV, str(path))
    monkeypatch.setenv("HITHER_FILEHASH_DB", str(tmp_path / "filehash.sqlite"))
    hashing.clear_file_hash_memo()
    yield path
    hashing.clear_file_hash_memo()


@pytest.fixture
def cache(tmp_path):
    return hi.JobCache(path=tmp_path / "store")


@pytest.fixture(params=["inline", "parallel"])
def handler(request, log):  # after the env is set: spawn workers inherit it
    h = hi.DefaultJobHandler() if request.param == "inline" else \
        hi.ParallelJobHandler(2, start_method="spawn")
    yield h
    h.shutdown(wait=False, cancel=True)


@pytest.fixture
def workers(log):
    h = hi.ParallelJobHandler(2, start_method="spawn")
    yield h
    h.shutdown(wait=False, cancel=True)


def calls(log, name: str) -> int:
    return read_calls(log)[name]


def run(fn, handler=None, cache=None, **config):
    """``fn.run`` under a Config; returns the completed job (failures do not raise)."""
    def go(**kwargs):
        with hi.Config(job_handler=handler or hi.DefaultJobHandler(), job_cache=cache,
                       **config):
            job = fn.run(**kwargs)
        job.exception(timeout=60)
        return job
    return go


def n_records(cache) -> int:
    return sum(1 for _ in cache.store.iter_records())


# ----------------------------------------------------------------------------- flags
def test_force_run_reruns_and_stores_the_new_result(handler, cache, log):
    first = run(cf.cf_calls_so_far, handler, cache)(tag="t")
    assert first.result() == ["t", 1] and not first.cache_hit
    hit = run(cf.cf_calls_so_far, handler, cache)(tag="t")
    assert hit.result() == ["t", 1] and hit.cache_hit
    forced = run(cf.cf_calls_so_far, handler, cache, force_run=True)(tag="t")
    assert forced.result() == ["t", 2] and not forced.cache_hit
    assert forced.key == first.key
    assert calls(log, "cf_calls_so_far") == 2
    # the forced run's result replaced the stored one
    assert cache.get_record(first.key)["result"] == ["t", 2]
    again = run(cf.cf_calls_so_far, handler, cache)(tag="t")
    assert again.result() == ["t", 2] and again.cache_hit
    assert again.result_hash == forced.result_hash != first.result_hash
    assert calls(log, "cf_calls_so_far") == 2


def test_failures_are_not_cached_by_default(handler, cache, log):
    for i in range(2):
        job = run(cf.cf_fail, handler, cache)(kind="ValueError", message="no good")
        assert isinstance(job.exception(), ValueError)
        assert not job.cache_hit
        assert calls(log, "cf_fail") == i + 1
        assert cache.get_record(job.key) is None
    assert n_records(cache) == 0


def test_cache_failing_stores_a_failure_and_reuses_it(handler, cache, log):
    first = run(cf.cf_fail, handler, cache, cache_failing=True)(
        kind="ValueError", message="bad input: 42")
    assert type(first.exception()) is ValueError
    rec = cache.get_record(first.key)
    assert rec["status"] == "error"
    assert rec["error"]["type"] == "builtins.ValueError"
    assert rec["error"]["message"] == "bad input: 42"
    assert "Traceback" in rec["error"]["traceback"]
    second = run(cf.cf_fail, handler, cache, cache_failing=True)(
        kind="ValueError", message="bad input: 42")
    assert second.cache_hit and second.get_runtime_info()["cache_hit"] is True
    assert calls(log, "cf_fail") == 1
    err = second.exception()
    assert type(err) is ValueError
    assert str(err) == "bad input: 42"
    with pytest.raises(ValueError, match="^bad input: 42$"):
        second.result()
    # without cache_failing a stored failure is not used: the job runs again
    third = run(cf.cf_fail, handler, cache)(kind="ValueError", message="bad input: 42")
    assert not third.cache_hit and type(third.exception()) is ValueError
    assert calls(log, "cf_fail") == 2


def test_a_cached_failure_keeps_the_exception_message(cache, log):
    first = run(cf.cf_fail, cache=cache, cache_failing=True)(kind="KeyError", message="k")
    second = run(cf.cf_fail, cache=cache, cache_failing=True)(kind="KeyError", message="k")
    assert second.cache_hit
    assert type(second.exception()) is KeyError
    assert second.exception().args == first.exception().args == ("k",)
    assert str(second.exception()) == str(first.exception())


def test_a_cached_failure_of_a_custom_type_comes_back_as_that_type(cache, log):
    """Its class can be imported in the caller: the same type as when it ran."""
    first = run(cf.cf_fail, cache=cache, cache_failing=True)(kind="custom", message="oops")
    assert type(first.exception()) is cf.CfError
    second = run(cf.cf_fail, cache=cache, cache_failing=True)(kind="custom", message="oops")
    assert second.cache_hit and calls(log, "cf_fail") == 1
    err = second.exception()
    assert type(err) is cf.CfError and err.args == ("oops",)


def test_a_cached_failure_of_a_type_the_caller_cannot_import_names_the_type(cache, log):
    first = run(cf.cf_fail, cache=cache, cache_failing=True)(kind="local", message="oops")
    assert isinstance(first.exception(), hi.JobFailedError)
    second = run(cf.cf_fail, cache=cache, cache_failing=True)(kind="local", message="oops")
    assert second.cache_hit and calls(log, "cf_fail") == 1
    err = second.exception()
    assert isinstance(err, hi.JobFailedError) and "oops" in str(err)
    assert err.remote_type.endswith("cf_fail.<locals>.LocalError"), err.remote_type


def test_rerun_failing_reruns_a_stored_failure(handler, cache, log):
    flags = {"cache_failing": True}
    fail_flag = log.with_name(log.name + ".fail")  # read inside the job: not in the key
    fail_flag.write_text("")
    failed = run(cf.cf_flaky, handler, cache, **flags)(x=3)
    assert isinstance(failed.exception(), ValueError)
    # still failing: rerun_failing runs it again (and the failure is stored again)
    rerun = run(cf.cf_flaky, handler, cache, rerun_failing=True, **flags)(x=3)
    assert not rerun.cache_hit and isinstance(rerun.exception(), ValueError)
    assert calls(log, "cf_flaky") == 2
    assert cache.get_record(failed.key)["status"] == "error"
    # fixed: a plain cache_failing run still gets the stored failure...
    fail_flag.unlink()
    stale = run(cf.cf_flaky, handler, cache, **flags)(x=3)
    assert stale.cache_hit and isinstance(stale.exception(), ValueError)
    assert calls(log, "cf_flaky") == 2
    # ...rerun_failing runs it, and its success replaces the failure
    fixed = run(cf.cf_flaky, handler, cache, rerun_failing=True, **flags)(x=3)
    assert not fixed.cache_hit and fixed.result() == 30
    assert calls(log, "cf_flaky") == 3
    assert cache.get_record(failed.key)["status"] == "finished"
    later = run(cf.cf_flaky, handler, cache)(x=3)
    assert later.cache_hit and later.result() == 30
    assert calls(log, "cf_flaky") == 3


def test_rerun_failing_does_not_rerun_a_success(cache, log):
    run(cf.cf_add, cache=cache)(a=1, b=2)
    job = run(cf.cf_add, cache=cache, cache_failing=True, rerun_failing=True)(a=1, b=2)
    assert job.cache_hit and job.result() == 3
    assert calls(log, "cf_add") == 1


def test_readonly_cache_gives_hits_and_writes_no_records(tmp_path, log):
    path = tmp_path / "store"
    writable = hi.JobCache(path=path)
    run(cf.cf_add, cache=writable)(a=1, b=2)
    before = store_files(path)
    ro = hi.JobCache(path=path, readonly=True)
    hit = run(cf.cf_add, cache=ro)(a=1, b=2)
    assert hit.cache_hit and hit.result() == 3
    miss = run(cf.cf_add, cache=ro)(a=5, b=5)
    assert not miss.cache_hit and miss.result() == 10
    again = run(cf.cf_add, cache=ro)(a=5, b=5)
    assert not again.cache_hit and again.result() == 10
    assert calls(log, "cf_add") == 3
    failing = run(cf.cf_fail, cache=ro, cache_failing=True)(kind="ValueError", message="x")
    assert isinstance(failing.exception(), ValueError)
    assert ro.get_record(miss.key) is None and ro.get_record(failing.key) is None
    assert store_files(path) == before


def test_readonly_cache_writes_no_blobs(tmp_path, log):
    path = tmp_path / "store"
    hi.JobCache(path=path)  # create the store
    before = store_files(path)
    ro = hi.JobCache(path=path, readonly=True)
    big = run(cf.cf_bytes, cache=ro)(n=100_000)
    assert len(big.result()) == 100_000
    arr = run(cf.cf_array, cache=ro)(n=10_000)
    assert arr.result().shape == (10_000,)
    assert store_files(path) == before


# ----------------------------------------------------------------------------- never cached
@pytest.mark.parametrize("kind", ["inline", "parallel"])
def test_timeouts_are_never_cached(kind, cache, log):
    h = hi.DefaultJobHandler() if kind == "inline" else \
        hi.ParallelJobHandler(1, start_method="spawn")
    try:
        for i in range(2):
            job = run(cf.cf_sleep, h, cache, job_timeout=0.5, cache_failing=True)(seconds=20)
            assert isinstance(job.exception(), hi.JobTimeoutError)
            assert not job.cache_hit
            assert calls(log, "cf_sleep") == i + 1
            assert cache.get_record(job.key) is None
    finally:
        h.shutdown(wait=False, cancel=True)


def test_worker_crashes_are_never_cached(workers, cache, log):
    for i in range(2):
        job = run(cf.cf_crash, workers, cache, cache_failing=True)(code=3)
        assert isinstance(job.exception(), hi.WorkerCrashedError)
        assert calls(log, "cf_crash") == i + 1
        assert cache.get_record(job.key) is None


def test_cancelled_jobs_are_never_cached(workers, cache, log):
    with hi.Config(job_handler=workers, job_cache=cache, cache_failing=True):
        job = cf.cf_sleep.run(seconds=30, value="never")
    deadline = time.monotonic() + 30
    while calls(log, "cf_sleep") == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert calls(log, "cf_sleep") == 1  # it is running
    assert job.cancel()
    with pytest.raises(hi.JobCancelledException):
        job.result(timeout=30)
    assert cache.get_record(job.key) is None
    assert n_records(cache) == 0


# ----------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("kind", cf.VALUE_KINDS)
def test_results_round_trip_exactly(kind, cache, log):
    fresh = run(cf.cf_values, cache=cache)(kind=kind)
    cached = run(cf.cf_values, cache=cache)(kind=kind)
    assert not fresh.cache_hit and cached.cache_hit
    assert calls(log, "cf_values") == 1
    strict_equal(fresh.result(), cf.make_value(kind))
    strict_equal(cached.result(), fresh.result())
    assert cached.result_hash == fresh.result_hash == hashing.hash_value(fresh.result())


def test_results_from_workers_round_trip_exactly(workers, cache, log):
    with hi.Config(job_handler=workers, job_cache=cache):
        fresh = [cf.cf_values.run(kind=k) for k in cf.VALUE_KINDS]
    hi.wait(60)
    with hi.Config(job_handler=workers, job_cache=cache):
        cached = [cf.cf_values.run(kind=k) for k in cf.VALUE_KINDS]
    assert calls(log, "cf_values") == len(cf.VALUE_KINDS)
    for kind, a, b in zip(cf.VALUE_KINDS, fresh, cached, strict=True):
        assert b.cache_hit
        strict_equal(a.result(), cf.make_value(kind), kind)
        strict_equal(b.result(), a.result(), kind)


def _mapped(arr) -> bool:
    base = arr
    while base is not None:
        if isinstance(base, mmap.mmap):
            return True
        base = getattr(base, "base", None)
    return False


def test_large_arrays_come_back_memory_mapped(cache, log):
    n = 2_000_000
    fresh = run(cf.cf_array, cache=cache)(n=n, dtype="float32")
    cached = run(cf.cf_array, cache=cache)(n=n, dtype="float32")
    assert cached.cache_hit and calls(log, "cf_array") == 1
    a, b = fresh.result(), cached.result()
    strict_equal(b, a)
    assert type(b) is np.ndarray
    assert not b.flags.owndata and _mapped(b)
    # copy-on-write: changing the cached array changes neither the store nor the next hit
    b[:10] = -1.0
    again = run(cf.cf_array, cache=cache)(n=n, dtype="float32")
    assert again.cache_hit
    strict_equal(again.result(), a)


def test_unstorable_results_are_returned_but_not_cached(cache, log):
    with pytest.warns(UserWarning, match="not stored in the job cache"):
        first = run(cf.cf_values, cache=cache)(kind="fraction")
    assert first.result() == cf.make_value("fraction")
    assert first.result_hash is None and cache.get_record(first.key) is None
    with pytest.warns(UserWarning, match="not stored in the job cache"):
        second = run(cf.cf_values, cache=cache)(kind="fraction")
    assert not second.cache_hit and calls(log, "cf_values") == 2


# ----------------------------------------------------------------------------- job facts
def test_key_and_result_hash_are_set(handler, cache, log):
    up = run(cf.cf_add, handler, cache)(a=2, b=3)
    assert re.fullmatch(r"[0-9a-f]{64}", up.key)
    assert up.result_hash == hashing.hash_value(5)
    with hi.Config(job_handler=handler, job_cache=cache):
        down = cf.cf_square.run(x=up)
    assert down.result(timeout=60) == 25
    assert re.fullmatch(r"[0-9a-f]{64}", down.key) and down.key != up.key
    assert down.result_hash == hashing.hash_value(25)
    hit = run(cf.cf_add, handler, cache)(a=2, b=3)
    assert hit.cache_hit and (hit.key, hit.result_hash) == (up.key, up.result_hash)
    other = run(cf.cf_add, handler, cache)(a=3, b=2)  # same result, other inputs
    assert other.key != up.key and other.result_hash == up.result_hash
    # no cache, no key
    plain = run(cf.cf_add, handler)(a=2, b=3)
    assert plain.key is None and plain.result_hash is None and not plain.cache_hit


def test_runtime_info_of_a_hit_keeps_the_original_console(handler, cache, log):
    first = run(cf.cf_console, handler, cache)(n=3)
    second = run(cf.cf_console, handler, cache)(n=3)
    assert calls(log, "cf_console") == 1
    info1, info2 = first.get_runtime_info(), second.get_runtime_info()
    assert info1["cache_hit"] is False and info2["cache_hit"] is True
    lines = [(x["text"], x["stderr"]) for x in info1["console_out"]["lines"]]
    assert lines == [("out line 0", False), ("out line 1", False), ("out line 2", False),
                     ("err line", True)]
    assert info2["console_out"]["lines"] == info1["console_out"]["lines"]  # timestamps too
    assert info2["start_time"] == pytest.approx(info1["start_time"])
    assert info2["end_time"] == pytest.approx(info1["end_time"])


def test_the_result_is_stored_when_wait_returns(workers, cache, log):
    """hither 0.4.2 bug R6: an identical job started right after wait() ran again."""
    for i in range(6):
        with hi.Config(job_handler=workers, job_cache=cache):
            job = cf.cf_add.run(a=i, b=100)
        if i % 2:
            hi.wait()
        else:
            job.wait()
        assert cache.get_record(job.key) is not None
        with hi.Config(job_handler=workers, job_cache=cache):
            again = cf.cf_add.run(a=i, b=100)
        assert again.cache_hit and again.result(timeout=60) == i + 100
    assert calls(log, "cf_add") == 6


def test_a_thousand_cached_jobs_rerun_with_no_execution(cache, log):
    n = 1000
    with hi.Config(job_cache=cache):
        jobs = [cf.cf_square.run(x=i) for i in range(n)]
    hi.wait()
    assert [j.result() for j in jobs] == [i * i for i in range(n)]
    assert calls(log, "cf_square") == n
    # the re-run never reaches the handler: its workers are not even started
    h = hi.ParallelJobHandler(2, start_method="spawn")
    try:
        t0 = time.monotonic()
        with hi.Config(job_handler=h, job_cache=cache):
            again = [cf.cf_square.run(x=i) for i in range(n)]
        hi.wait(60)
        elapsed = time.monotonic() - t0
        assert all(j.cache_hit for j in again)
        assert [j.result(0) for j in again] == [i * i for i in range(n)]
        assert h.worker_pids == []
    finally:
        h.shutdown(wait=False, cancel=True)
    assert calls(log, "cf_square") == n
    assert elapsed < 30  # generous: cache hits are cheap


def test_unsupported_argument_raises_at_run_and_names_its_place(cache, log):
    with hi.Config(job_cache=cache), pytest.raises(hi.SerializationError) as info:
        cf.cf_echo.run(x=[1, object(), 3])
    assert info.value.path == "kw['x'][1]"
    assert "kw['x'][1]" in str(info.value) and "object" in str(info.value)
    with hi.Config(job_cache=cache), pytest.raises(hi.SerializationError) as info:
        cf.cf_echo.run(x={"a": (1, {"b": [np.array([object()], dtype=object)]})})
    assert info.value.path == "kw['x']['a'][1]['b'][0]"
    # an argument that arrives later (next to a job) fails the job, naming the place too
    with hi.Config(job_cache=cache):
        up = cf.cf_add.run(a=1)
        job = cf.cf_add.run(a=up, b=[2, lambda: 3])
    err = job.exception(timeout=60)
    assert isinstance(err, hi.SerializationError) and err.path == "kw['b'][1]"
    assert calls(log, "cf_echo") == 0 and calls(log, "cf_add") == 1
    assert n_records(cache) == 1  # only the upstream job's


def test_explain_names_what_changed(cache, log):
    first = run(cf.cf_add, cache=cache)(a=1, b=2)
    second = run(cf.cf_add, cache=cache)(a=1, b=3)
    assert not second.cache_hit
    why = hi.explain(second)
    assert why.nearest_key == first.key
    assert why.differences == ["input 'b' changed: int 2 → int 3"]
    assert "input 'b' changed: int 2 → int 3" in why.to_text()
    arr = run(cf.cf_echo, cache=cache)(x=np.zeros(3))
    arr2 = run(cf.cf_echo, cache=cache)(x=np.ones(3))
    assert any("input 'x' changed" in d and "same description" in d
               for d in hi.explain(arr2).differences), hi.explain(arr2).differences
    assert arr.key != arr2.key


# ----------------------------------------------------------------------------- provenance
def test_records_hold_provenance(cache, log):
    up = run(cf.cf_console, cache=cache)(n=2)
    with hi.Config(job_cache=cache):
        down = cf.cf_add.run(a=up, b=40)
    assert down.result() == 42
    rec = cache.get_record(down.key)
    assert rec["key"] == down.key and rec["status"] == "finished"
    assert rec["result"] == 42 and rec["result_hash"] == down.result_hash
    prov = rec["provenance"]
    fn = prov["function"]
    assert fn["name"] == "cf_add" and fn["version"] == "1"
    assert fn["module"] == "tests.cachefuncs.funcs"
    assert fn["source"].startswith("def cf_add(a, b=0):") and "return a + b" in fn["source"]
    assert "@hi.function" not in fn["source"]
    assert "helper:log_call" not in fn["sources"]  # another module: not in the identity
    assert prov["runtime"] == {"kind": "host"}
    assert hashing.hash_struct(prov["key_parts"]) == down.key
    assert prov["key_parts"]["function"] == {"name": "cf_add", "version": "1",
                                             "code": fn["code"]}
    # inputs: a value (stored, digest) and a job's result (its key: the lineage)
    assert rec["inputs"]["b"]["digest"] == hashing.hash_value(40)
    assert rec["inputs"]["b"]["value"] == 40
    assert rec["inputs"]["a"]["job"] == up.key
    assert rec["inputs"]["a"]["digest"] == up.result_hash == hashing.hash_value(2)
    assert prov["key_parts"]["inputs"] == {"a": up.result_hash, "b": hashing.hash_value(40)}
    # timings, host, versions
    assert prov["start_time"] <= prov["end_time"] <= prov["recorded_at"] <= time.time()
    assert prov["elapsed_sec"] == pytest.approx(prov["end_time"] - prov["start_time"])
    assert prov["host"] == socket.gethostname()
    assert prov["hither_version"] == hi.__version__
    assert prov["label"] == "cf_add"
    # the console of the upstream run
    up_rec = cache.get_record(up.key)
    assert [(t, e) for _, t, e in up_rec["console"]] == [
        ("out line 0", False), ("out line 1", False), ("err line", True)]
    assert up_rec["provenance"]["function"]["name"] == "cf_console"


# ----------------------------------------------------------------------------- damage
@pytest.mark.parametrize("what", ["bytes", "npy", "file"])
@pytest.mark.parametrize("where", [0, -1])
def test_a_tampered_result_blob_is_a_miss_never_a_wrong_value(what, where, cache, log,
                                                              tmp_path):
    if what == "bytes":
        fn, kwargs, name = cf.cf_bytes, {"n": 50_000, "seed": 1}, "cf_bytes"
    elif what == "npy":
        fn, kwargs, name = cf.cf_array, {"n": 50_000}, "cf_array"
    else:
        out = tmp_path / "out"
        out.mkdir()
        fn, kwargs, name = cf.cf_write_file, {"outdir": str(out), "text": "x" * 9000}, \
            "cf_write_file"

    def value(job):
        v = job.result()
        return open(v, "rb").read() if isinstance(v, hi.File) else v

    first = run(fn, cache=cache)(**kwargs)
    expected = value(first)
    if what == "file":
        expected = (tmp_path / "out" / "out.txt").read_bytes()
    ref = cache.get_record(first.key)["result"]["ref"]
    blob = blob_path_of(cache.path, ref)
    st = blob.stat()
    flip_byte(blob, where)
    os.utime(blob, ns=(st.st_atime_ns, st.st_mtime_ns))  # hide the edit from the mtime
    with pytest.warns(UserWarning, match="cannot be used"):
        second = run(fn, cache=cache)(**kwargs)
    assert not second.cache_hit
    assert calls(log, name) == 2
    if what == "npy":
        strict_equal(second.result(), first.result())
    else:
        assert value(second) == expected
    # the damaged blob and its record were set aside, and the store repaired by the re-run
    assert sorted(p.name.split("-")[0] for p in (cache.path / "quarantine").iterdir()) == \
        ["blob", "record"]
    assert all(blob_is_intact(p) for p in blob_files(cache.path))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        third = run(fn, cache=cache)(**kwargs)
    assert third.cache_hit and calls(log, name) == 2
    if what == "npy":
        strict_equal(third.result(), first.result())
    else:
        assert value(third) == expected


def test_a_truncated_result_blob_is_a_miss(cache, log):
    first = run(cf.cf_bytes, cache=cache)(n=60_000)
    blob = blob_path_of(cache.path, cache.get_record(first.key)["result"]["ref"])
    os.chmod(blob, 0o644)
    os.truncate(blob, 1000)
    with pytest.warns(UserWarning, match="cannot be used"):
        second = run(cf.cf_bytes, cache=cache)(n=60_000)
    assert not second.cache_hit and second.result() == first.result()
    assert calls(log, "cf_bytes") == 2


def test_a_tampered_record_is_a_miss(cache, log):
    first = run(cf.cf_add, cache=cache)(a=20, b=22)
    path = cache.store.record_path(first.key)
    text = path.read_text()
    assert text.count('"result":42') == 1
    os.chmod(path, 0o644)
    path.write_text(text.replace('"result":42', '"result":43'))  # valid JSON, wrong value
    with pytest.warns(StoreWarning, match="checksum mismatch"):
        second = run(cf.cf_add, cache=cache)(a=20, b=22)
    assert not second.cache_hit and second.result() == 42
    assert calls(log, "cf_add") == 2
    third = run(cf.cf_add, cache=cache)(a=20, b=22)
    assert third.cache_hit and third.result() == 42


# ----------------------------------------------------------------------------- use_tempdir
@pytest.fixture
def tempdir(tmp_path, monkeypatch):
    """The system temp folder, here an empty folder of this test."""
    import tempfile

    base = tmp_path / "systemp"
    base.mkdir(mode=0o1777)
    os.chmod(base, 0o1777)
    monkeypatch.setattr(tempfile, "tempdir", str(base))
    return base


def test_use_tempdir_is_a_private_folder_of_the_caller(tempdir, log):
    cache = hi.JobCache(use_tempdir=True)
    assert cache.path == tempdir / f"hither_job_cache_{os.geteuid()}"
    st = os.lstat(cache.path)
    assert stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid()
    assert stat.S_IMODE(st.st_mode) == 0o700
    assert run(cf.cf_add, cache=cache)(a=1, b=2).result() == 3
    assert run(cf.cf_add, cache=hi.JobCache(use_tempdir=True))(a=1, b=2).cache_hit


def test_use_tempdir_makes_an_own_readable_folder_private(tempdir, log):
    own = tempdir / f"hither_job_cache_{os.geteuid()}"
    own.mkdir(mode=0o755)
    os.chmod(own, 0o755)
    assert hi.JobCache(use_tempdir=True).path == own
    assert stat.S_IMODE(os.lstat(own).st_mode) == 0o700


NOBODY = 65534


@pytest.mark.parametrize("how", ["other-owner", "symlink", "world-writable"])
def test_use_tempdir_never_uses_a_folder_planted_by_another_user(how, tempdir, tmp_path, log):
    """Another user creates the predictable name first and plants a wrong result for
    cf_add(a=1, b=2): the cache must not use that folder, nor touch it."""
    if how != "world-writable" and os.geteuid() != 0:
        pytest.skip("planting a folder of another user needs root")
    name = tempdir / f"hither_job_cache_{os.geteuid()}"
    planted = tmp_path / "attacker" if how == "symlink" else name
    poisoned = hi.JobCache(path=planted)
    job = run(cf.cf_add, cache=poisoned)(a=1, b=2)
    rec = poisoned.get_record(job.key)
    rec["result"] = 666
    poisoned.store.put_record(job.key, rec)
    assert run(cf.cf_add, cache=poisoned)(a=1, b=2).result() == 666  # the trap works
    if how == "symlink":
        name.symlink_to(planted)
    if how == "world-writable":
        os.chmod(planted, 0o777)
    else:
        for d, dirs, files in os.walk(planted):
            for n in [d, *(os.path.join(d, x) for x in dirs + files)]:
                os.lchown(n, NOBODY, NOBODY)
    before = store_files(planted)

    with pytest.warns(RuntimeWarning, match=re.escape(str(name))):
        cache = hi.JobCache(use_tempdir=True)
    assert os.path.realpath(cache.path) != os.path.realpath(planted)
    st = os.lstat(cache.path)
    assert st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) == 0o700
    job = run(cf.cf_add, cache=cache)(a=1, b=2)
    assert job.result() == 3 and not job.cache_hit
    assert store_files(planted) == before


# ----------------------------------------------------------------------------- read-only
def test_readonly_never_writes_anything_not_even_quarantine_or_folders(tmp_path, log):
    path = tmp_path / "store"
    writable = hi.JobCache(path=path)
    good = run(cf.cf_add, cache=writable)(a=1, b=2)
    bad = run(cf.cf_add, cache=writable)(a=2, b=2)
    rec_file = writable.store.record_path(bad.key)
    rec_file.write_bytes(rec_file.read_bytes()[:-20])  # damaged
    before = tree(path)
    ro = hi.JobCache(path=path, readonly=True)
    with pytest.warns(StoreWarning, match="left in place"):
        again = run(cf.cf_add, cache=ro)(a=2, b=2)
    assert again.result() == 4 and not again.cache_hit
    assert run(cf.cf_add, cache=ro)(a=1, b=2).cache_hit and good.result() == 3
    f = tmp_path / "input.txt"
    f.write_text("x" * 10_000)
    assert run(cf.cf_read_file, cache=ro)(f=hi.File(f)).result() == b"x" * 10_000
    assert tree(path) == before  # nothing moved to quarantine, no snapshot, nothing new

    missing = tmp_path / "never-created"
    nothing = hi.JobCache(path=missing, readonly=True)
    assert run(cf.cf_add, cache=nothing)(a=7, b=1).result() == 8
    assert not missing.exists()


def test_a_store_on_a_read_only_file_system_serves_hits_and_runs_misses(tmp_path, log):
    src = tmp_path / "store"
    writable = hi.JobCache(path=src)
    assert run(cf.cf_add, cache=writable)(a=1, b=2).result() == 3
    assert run(cf.cf_array, cache=writable)(n=5000).result().shape == (5000,)
    before = tree(src)
    with read_only_view(src, tmp_path / "ro") as ro_path:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            cache = hi.JobCache(path=ro_path)
            for handler in (hi.DefaultJobHandler(), hi.ParallelJobHandler(1)):
                with handler:
                    hit = run(cf.cf_array, handler, cache)(n=5000)
                    assert hit.cache_hit and hit.result().shape == (5000,)
                    assert run(cf.cf_add, handler, cache)(a=1, b=2).cache_hit
                    miss = run(cf.cf_array, handler, cache)(n=6000)
                    assert not miss.cache_hit and miss.result().shape == (6000,)
                    assert len(run(cf.cf_bytes, handler, cache)(n=100_000).result()) == 100_000
            hi.JobCache(path=ro_path)  # once per store, not per cache object
        texts = [str(w.message) for w in caught]
        assert len(texts) == 1, texts
        assert str(ro_path) in texts[0] and "read-only file system" in texts[0]
        assert cache.readonly and not cache.writable()
    assert tree(src) == before
