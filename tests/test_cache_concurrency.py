"""The job cache shared by processes: concurrent writers of the same keys, and writers
killed with SIGKILL in the middle of storing a result."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import time
import warnings
from pathlib import Path

import pytest
from hither_store import LocalStore

import hither as hi
from hither import hashing
from tests.cachefuncs import CALL_LOG_ENV, blob_files, blob_is_intact, procs, read_calls
from tests.cachefuncs import funcs as cf

pytestmark = pytest.mark.timeout(180)

N_PROCESSES = 16


@pytest.fixture
def log(tmp_path, monkeypatch):
    path = tmp_path / "calls.log"
    monkeypatch.setenv(CALL_LOG_ENV, str(path))  # spawned children inherit it
    monkeypatch.setenv("HITHER_FILEHASH_DB", str(tmp_path / "filehash.sqlite"))
    hashing.clear_file_hash_memo()
    yield path
    hashing.clear_file_hash_memo()


def _wait_for(predicate, timeout: float, interval: float = 0.002) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True


def _assert_store_sound(store: LocalStore, keys) -> None:
    """Every key has a record that reads as valid, nothing was quarantined, every blob
    hashes to its name and every blob a record refers to exists."""
    from hither._codec import walk_refs

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a StoreWarning (corrupt record) fails the test
        for key in keys:
            rec = store.get_record(key)
            assert rec is not None, key
            assert rec["status"] == "finished"
            for ref in walk_refs(rec["result"]):
                assert store.has_blob(ref), ref
    assert list((store.root / "quarantine").iterdir()) == []
    assert all(blob_is_intact(p) for p in blob_files(store.root))


def test_many_processes_storing_the_same_keys(tmp_path, log):
    root = tmp_path / "store"
    hi.JobCache(path=root)  # created once, before the race
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(N_PROCESSES)
    outs = [str(tmp_path / f"out-{i}.json") for i in range(N_PROCESSES)]
    children = [ctx.Process(target=procs.run_pipeline, args=(str(root), out, barrier))
                for out in outs]
    for c in children:
        c.start()
    for c in children:
        c.join(timeout=150)
    for c in children:
        if c.exitcode is None:
            c.kill()
    assert [c.exitcode for c in children] == [0] * N_PROCESSES
    results = [json.loads(Path(out).read_text()) for out in outs]
    for r in results:
        assert r["errors"] == [] and r["warnings"] == []
    # every process saw the same keys and the same results (fresh or from another's
    # record), in both rounds
    summaries = [s for r in results for s in r["summary"]]
    assert len(summaries) == 2 * N_PROCESSES
    assert all(s == summaries[0] for s in summaries)
    keys = [key for _, key, _ in summaries[0]]
    n_jobs = len(keys)
    assert n_jobs == 5 * procs.N_CHAINS and len(set(keys)) == n_jobs
    assert all(r["hits"][1] == 0 for r in results)  # round 2 was forced
    calls = read_calls(log)
    assert N_PROCESSES * n_jobs <= sum(calls.values()) <= 2 * N_PROCESSES * n_jobs

    store = LocalStore(root)
    _assert_store_sound(store, keys)
    assert sum(1 for _ in store.iter_records()) == n_jobs
    # a further run is all hits, with the same results
    log.unlink()
    jobs = procs.pipeline_jobs(hi.JobCache(path=root))
    hi.wait()
    assert all(j.cache_hit for j in jobs)
    assert [procs.expected_summary(j) for j in jobs] == summaries[0]
    assert read_calls(log) == {}


def test_a_writer_killed_while_storing_a_large_result_leaves_no_valid_record(tmp_path, log):
    root = tmp_path / "store"
    store = LocalStore(root)
    key_path = str(tmp_path / "key")
    ctx = multiprocessing.get_context("spawn")
    child = ctx.Process(target=procs.run_big_job, args=(str(root), key_path))
    child.start()
    try:
        assert _wait_for(lambda: os.path.exists(key_path), 60)

        def writing() -> bool:  # a temp file of the result blob, well under way
            return any(p.stat().st_size > 20_000_000 for p in (root / "tmp").iterdir()
                       if p.exists())

        assert _wait_for(writing, 60), "the child never started storing its result"
        os.kill(child.pid, signal.SIGKILL)
        child.join(timeout=30)
    finally:
        if child.exitcode is None:
            child.kill()
            child.join()
    assert child.exitcode == -signal.SIGKILL
    key = Path(key_path).read_text()
    assert read_calls(log) == {"cf_bytes": 1}
    # nothing reads as valid: no record, no partial blob under a blob name
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert store.get_record(key) is None
        assert list(store.iter_records()) == []
    assert all(blob_is_intact(p) for p in blob_files(root))
    assert store.info()["tmp_files"] >= 1  # the killed write's left-over
    # a re-run computes and stores the result properly
    cache = hi.JobCache(path=root)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with hi.Config(job_cache=cache):
            job = cf.cf_bytes.run(n=procs.BIG_N, seed=7)
        value = job.result()
    assert job.key == key and not job.cache_hit
    assert read_calls(log) == {"cf_bytes": 2}
    assert len(value) == procs.BIG_N
    expected_hash = job.result_hash
    del value
    _assert_store_sound(store, [key])
    with hi.Config(job_cache=cache):
        again = cf.cf_bytes.run(n=procs.BIG_N, seed=7)
    assert again.cache_hit and read_calls(log) == {"cf_bytes": 2}
    assert hashing.hash_value(again.result()) == expected_hash
    # the left-over temp file is garbage, collected as such
    assert store.gc(older_than=0)["tmp_removed"] >= 1
    assert store.info()["tmp_files"] == 0


def test_a_writer_killed_before_its_record_is_published_leaves_no_record(tmp_path, log):
    root = tmp_path / "store"
    store = LocalStore(root)
    key_path, marker = str(tmp_path / "key"), str(tmp_path / "stalled")
    ctx = multiprocessing.get_context("spawn")
    child = ctx.Process(target=procs.run_job_stalled_before_record_publish,
                        args=(str(root), key_path, marker))
    child.start()
    try:
        assert _wait_for(lambda: os.path.exists(marker), 60)
        os.kill(child.pid, signal.SIGKILL)
        child.join(timeout=30)
    finally:
        if child.exitcode is None:
            child.kill()
            child.join()
    assert child.exitcode == -signal.SIGKILL
    key = Path(key_path).read_text()
    record_tmp = Path(Path(marker).read_text())
    assert record_tmp.exists() and record_tmp.stat().st_size > 0  # the complete temp file
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert store.get_record(key) is None
        assert not store.has_record(key)
    cache = hi.JobCache(path=root)
    with hi.Config(job_cache=cache):
        job = cf.cf_bytes.run(n=30_000, seed=11)
    assert job.result() == cf.cf_bytes(n=30_000, seed=11)
    assert job.key == key and not job.cache_hit
    # the direct call above logs too: 1 in the child, 1 re-run, 1 direct call
    assert read_calls(log) == {"cf_bytes": 3}
    _assert_store_sound(store, [key])
    with hi.Config(job_cache=cache):
        assert cf.cf_bytes.run(n=30_000, seed=11).cache_hit
