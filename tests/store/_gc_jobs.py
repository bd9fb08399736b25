"""Child-process entry points for the ``hither cache gc`` concurrency test: real hither
jobs writing to a store, and a process running the real CLI's gc in a loop."""

from __future__ import annotations

import contextlib
import io
import re
import time
import warnings
from typing import Any

import numpy as np

import hither as hi

N_KEYS = 3
N_VALUES = 8


@hi.function("gc_rotating", "1")
def gc_rotating(k):
    """An array that depends on the time, not on ``k``: force_run keeps re-pointing the
    record of ``k`` at a different one of a few arrays, each stored again and again."""
    phase = int(time.time() / 0.5)
    return np.full(2000, float((phase + k) % N_VALUES))


def job_writer(root: str, seed: int, seconds: float) -> None:
    import random

    rng = random.Random(seed)
    cache = hi.JobCache(path=root)
    end = time.monotonic() + seconds
    with hi.Config(job_cache=cache, force_run=True):
        while time.monotonic() < end:
            gc_rotating.run(k=rng.randrange(N_KEYS)).result()


def missing_blobs(root: str) -> list[str]:
    from hither_store import LocalStore

    from hither._codec import walk_refs

    store = LocalStore(root)
    return [f"{key[:12]}: {ref}" for key, rec in store.iter_records()
            for ref in walk_refs(rec) if not store.has_blob(ref)]


def cli_collector(root: str, seconds: float, report: Any) -> None:
    from hither.cli import main

    end = time.monotonic() + seconds
    rounds = removed = 0
    bad: list[str] = []
    while time.monotonic() < end:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            assert main(["cache", "gc", "--store", root, "--min-age", "1"]) == 0
        m = re.search(r"(\d+) unreferenced blobs", out.getvalue())
        removed += int(m.group(1)) if m else 0
        bad += missing_blobs(root)
        rounds += 1
    report.put((rounds, bad, removed))


def all_cached_results_load(root: str) -> int:
    """How many of the keys are cache hits whose result loads (warnings are errors)."""
    n = 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with hi.Config(job_cache=hi.JobCache(path=root)):
            for k in range(N_KEYS):
                job = gc_rotating.run(k=k)
                value = job.result(timeout=60)
                assert value.shape == (2000,)
                n += job.cache_hit
    return n


def stalled_result_writer(root: str, key: str, value: Any, stored: Any, go: Any) -> None:
    """Store ``value`` the way a job's result is stored (its blobs first), signal
    ``stored``, wait for ``go``, then write the record that references them."""
    from hither_store import LocalStore

    from hither import values

    store = LocalStore(root)
    manifest = values.encode(value, store, path="result")
    stored.set()
    assert go.wait(120)
    store.put_record(key, {"status": "finished", "result": manifest})
