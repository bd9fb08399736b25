"""A read-only job cache never gets anything written, for container jobs too: no blobs,
code bundles, worker files or output folders (values cross through a private temp store).
On a read-only file system hits are served and misses run without storing, with one
warning; ``.run()`` never raises OSError."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import hither as hi
from hither.testing.jobs import ht_add, ht_np_make
from tests.mounts import read_only_view, tree

from .cfuncs import c_np_sum
from .conftest import make_case, make_handler

WAIT = 90
pytestmark = pytest.mark.timeout(240)


@pytest.fixture(params=["docker", "podman", "apptainer"])
def case(request):
    return make_case(request.param)


def fill(case, path) -> None:
    """A store with the results of a few container jobs."""
    with case.config(job_cache=hi.JobCache(path=path)):
        assert ht_add.run(x=1, y=2).result(timeout=WAIT) == 3
        assert ht_np_make.run(n=3000).result(timeout=WAIT)["array"].shape == (3000,)


def use(case, cache, kind: str) -> None:
    """Hits and misses of container jobs, and a host job, under ``cache``."""
    with make_handler(kind) as h, case.config(job_cache=cache, job_handler=h):
        hit = ht_np_make.run(n=3000)
        assert hit.result(timeout=WAIT)["array"][-1] == 2999 * 3 and hit.cache_hit
        assert ht_add.run(x=1, y=2).result(timeout=WAIT) == 3
        miss = ht_add.run(x=40, y=2)
        assert miss.result(timeout=WAIT) == 42 and not miss.cache_hit
        big = c_np_sum.run(a=np.ones(10_000, dtype=np.int64))  # arguments cross as blobs
        assert big.result(timeout=WAIT) == 10_000 and not big.cache_hit
        made = ht_np_make.run(n=4000)
        assert made.result(timeout=WAIT)["array"].shape == (4000,)
    with hi.Config(job_cache=cache):  # a host job next to them
        assert ro_host_add.run(a=5, b=5).result(timeout=WAIT) == 10


@hi.function("ro_host_add", "1")
def ro_host_add(a, b):
    return a + b


@pytest.mark.parametrize("kind", ["inline", "parallel"])
def test_readonly_cache_writes_nothing_for_container_jobs(case, kind, tmp_path):
    path = tmp_path / "store"
    fill(case, path)
    before = tree(path)
    use(case, hi.JobCache(path=path, readonly=True), kind)
    assert tree(path) == before


@pytest.mark.parametrize("kind", ["inline", "parallel"])
def test_a_store_on_a_read_only_file_system_works_for_container_jobs(case, kind, tmp_path):
    src = tmp_path / "store"
    fill(case, src)
    before = tree(src)
    with read_only_view(src, tmp_path / "ro") as ro:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            use(case, hi.JobCache(path=ro), kind)
        texts = [str(w.message) for w in caught if not issubclass(w.category,
                                                                    DeprecationWarning)]
        assert len(texts) == 1, texts
        assert str(ro) in texts[0] and "read-only file system" in texts[0]
    assert tree(src) == before
