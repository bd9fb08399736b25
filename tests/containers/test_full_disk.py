"""A store on a full disk, with container jobs: an argument that does not fit fails at
``.run()`` and a result that does not fit fails the job, both saying "no space left on
device"; nothing is cached and no partial file is left in the store."""

from __future__ import annotations

import os

import numpy as np
import pytest

import hither as hi
from hither.testing.jobs import ht_np_make
from tests.mounts import small_filesystem

from .cfuncs import c_np_sum
from .conftest import make_case

WAIT = 90
pytestmark = pytest.mark.timeout(240)


def _tmp_files(root) -> list[str]:
    return [os.path.join(d, f) for d, _, fs in os.walk(root / "tmp") for f in fs]


def test_container_values_that_do_not_fit_say_no_space_left(tmp_path):
    case = make_case("docker")
    with small_filesystem(tmp_path / "disk", "2m") as disk:
        cache = hi.JobCache(path=disk / "store")
        with case.config(job_cache=cache):
            small = ht_np_make.run(n=10)
            assert small.result(timeout=WAIT)["array"].shape == (10,)
            with pytest.raises(OSError, match="No space left on device"):
                c_np_sum.run(a=np.zeros(400_000))  # 3.2 MB of arguments
            big = ht_np_make.run(n=400_000)  # 3.2 MB of result
            with pytest.raises(Exception, match="no space left on device") as info:
                big.result(timeout=WAIT)
            assert "cannot be sent back" in str(info.value)
            again = ht_np_make.run(n=10)
            assert again.result(timeout=WAIT)["array"].shape == (10,) and again.cache_hit
        hi.reset()
        assert not cache.store.has_record(big.key)
        assert _tmp_files(disk / "store") == []
