"""Child-process entry points of ``tests/test_cache_concurrency.py`` (started with spawn)."""

from __future__ import annotations

import json
import os
import time
import warnings
from typing import Any

N_CHAINS = 6
BIG_N = 200_000_000  # bytes of the large result that is being stored when the child is killed


def pipeline_jobs(cache: Any, force_run: bool = False) -> list[Any]:
    """The small cached pipeline every concurrent process runs: chains of dependent jobs,
    and results stored inline, as bytes blobs and as array blobs. With ``force_run`` every
    job runs and stores its result, hit or not."""
    import hither as hi
    from tests.cachefuncs import funcs as cf

    jobs = []
    with hi.Config(job_cache=cache, force_run=force_run):
        for i in range(N_CHAINS):
            a = cf.cf_add.run(a=i, b=1)
            b = cf.cf_square.run(x=a)
            c = cf.cf_bytes.run(n=20_000 + i, seed=i)
            d = cf.cf_array.run(n=3_000 + i)
            e = cf.cf_values.run(kind=cf.VALUE_KINDS[i])
            jobs += [a, b, c, d, e]
    return jobs


def expected_summary(job: Any) -> Any:
    """A small JSON description of a job's result, to compare across processes."""
    from hither.hashing import hash_value

    return [job.get_function_name(), job.key, hash_value(job.result(0))]


def run_pipeline(store_root: str, out_path: str, barrier: Any) -> None:
    """Run the pipeline against the shared store at the same moment as the others; write
    what was seen to ``out_path``."""
    import hither as hi
    import tests.cachefuncs.funcs  # noqa: F401 - imported before the start signal

    cache = hi.JobCache(path=store_root)
    out: dict[str, Any] = {"summary": [], "errors": [], "warnings": [], "hits": []}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # round 1: plain runs, hits and misses mixed; round 2: every process stores every key
        for force_run in (False, True):
            try:
                barrier.wait(timeout=120)
            except Exception:  # a broken barrier: run anyway, the test checks the outcome
                pass
            jobs = pipeline_jobs(cache, force_run)
            hi.wait()
            out["errors"] += [repr(j.exception(0)) for j in jobs if j.exception(0) is not None]
            out["summary"].append([expected_summary(j) for j in jobs
                                   if j.exception(0) is None])
            out["hits"].append(sum(j.cache_hit for j in jobs))
    out["warnings"] = [str(w.message) for w in caught]
    tmp = out_path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(out, f)
    os.replace(tmp, out_path)


def run_big_job(store_root: str, key_path: str) -> None:
    """Run one cached job with a 200 MB result; announce its key first."""
    import hither as hi
    from tests.cachefuncs import funcs as cf

    with hi.Config(job_cache=hi.JobCache(path=store_root)):
        job = cf.cf_bytes.run(n=BIG_N, seed=7)  # inline: it runs at .result()
    with open(key_path + ".tmp", "w") as f:
        f.write(job.key)
    os.replace(key_path + ".tmp", key_path)
    job.result()


def run_job_stalled_before_record_publish(store_root: str, key_path: str,
                                          marker: str) -> None:
    """Run a cached job whose record file is written but, when the parent kills this
    process, not yet renamed into place (the rename is held back by a wrapper)."""
    import hither_store._atomic as atomic

    import hither as hi
    from tests.cachefuncs import funcs as cf

    real_publish = atomic.publish  # what the record writer renames with

    def slow_publish(tmp_path, target):
        if os.path.basename(str(tmp_path)).startswith("record-"):
            with open(marker, "w") as f:
                f.write(str(tmp_path))
            time.sleep(60)  # killed here
        real_publish(tmp_path, target)

    atomic.publish = slow_publish
    with hi.Config(job_cache=hi.JobCache(path=store_root)):
        job = cf.cf_bytes.run(n=30_000, seed=11)
    with open(key_path, "w") as f:
        f.write(job.key)
    job.result()
