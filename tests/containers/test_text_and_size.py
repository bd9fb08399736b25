"""Text and size across the worker protocol of real runtimes, with a job cache.

Strings that are not valid UTF-8 (lone surrogates from ``os.fsdecode``) go to and from the
worker and are cached; long strings and bytes travel and are stored as blobs; a result
nested deeper than hither's limit fails clearly and is not stored.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import hither as hi
from hither.hashing import MAX_DEPTH
from hither.testing.jobs import ht_identity

from .cfuncs import c_len, c_nested, c_text

WAIT = 120
SURROGATES = os.fsdecode(b"caf\xe9-\xff\xfe")

pytestmark = pytest.mark.timeout(300)


def _nest(depth):
    value = 1
    for _ in range(depth):
        value = [value]
    return value


def test_strings_that_are_not_utf8_cross_the_worker_and_are_cached(runtime_config, tmp_path):
    cache = hi.JobCache(path=tmp_path / "store")
    value = {SURROGATES: [SURROGATES, (SURROGATES,)], "k": SURROGATES}
    h = hi.DefaultJobHandler()
    try:
        with runtime_config.config(job_handler=h, job_cache=cache):
            first = ht_identity.run(x=value)
            assert first.result(timeout=WAIT) == value and not first.cache_hit
            again = ht_identity.run(x=value)
            assert again.result(timeout=WAIT) == value and again.cache_hit
    finally:
        h.shutdown(wait=False, cancel=True)


@pytest.mark.parametrize("kind", ["str", "bytes"])
def test_long_text_travels_and_is_stored_as_a_blob(runtime_config, tmp_path, kind):
    cache = hi.JobCache(path=tmp_path / "store")
    unit, n = "αβ" + SURROGATES, 500_000  # 5.5 MB of UTF-8
    expected = unit * n if kind == "str" else (unit * n).encode("utf-8", "surrogatepass")
    size = len(expected if kind == "bytes" else expected.encode("utf-8", "surrogatepass"))
    h = hi.DefaultJobHandler()
    try:
        with runtime_config.config(job_handler=h, job_cache=cache):
            made = c_text.run(unit=unit, n=n, kind=kind)
            assert made.result(timeout=WAIT) == expected
            seen = c_len.run(x=made)  # the long value as an argument, into the runtime
            assert seen.result(timeout=WAIT) == [len(expected), kind]
            hit = c_text.run(unit=unit, n=n, kind=kind)
            assert hit.result(timeout=WAIT) == expected and hit.cache_hit
    finally:
        h.shutdown(wait=False, cancel=True)
    records = list((Path(cache.path) / "records").rglob("*.json"))
    assert records and all(p.stat().st_size < 20_000 for p in records)
    blobs = [p for p in (Path(cache.path) / "blobs").rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in blobs) <= 1.2 * size


def test_too_deep_result_fails_clearly_and_is_not_stored(runtime_config, tmp_path):
    cache = hi.JobCache(path=tmp_path / "store")
    h = hi.DefaultJobHandler()
    try:
        with runtime_config.config(job_handler=h, job_cache=cache):
            ok = c_nested.run(depth=MAX_DEPTH)
            assert ok.result(timeout=WAIT) == _nest(MAX_DEPTH)
            for _ in range(2):
                job = c_nested.run(depth=400)
                err = job.exception(timeout=WAIT)
                assert err is not None and "nested more than 200" in str(err), repr(err)
                assert not job.cache_hit
    finally:
        h.shutdown(wait=False, cancel=True)
