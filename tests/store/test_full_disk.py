"""A full disk: writing into a store on a file system with no space left fails with an
error that says "no space left on device", leaves no partial file behind, and never
stores a record; a host job's result is still returned (with one warning)."""

from __future__ import annotations

import errno
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
from hither_store import LocalStore

import hither as hi
from tests.mounts import small_filesystem


def _files(root: Path) -> list[str]:
    return sorted(os.path.relpath(os.path.join(d, f), root)
                  for d, _, fs in os.walk(root) for f in fs)


def test_a_blob_that_does_not_fit_says_no_space_left(tmp_path):
    with small_filesystem(tmp_path / "disk", "1m") as disk:
        store = LocalStore(disk / "store")
        ok = store.put_bytes(b"small")
        with pytest.raises(OSError) as info:  # numpy's short write has no errno of its own
            store.put_writer(lambda f: np.lib.format.write_array(f, np.zeros(400_000)))
        assert info.value.errno == errno.ENOSPC
        assert "No space left on device" in str(info.value) and str(store.root) in str(info.value)
        with pytest.raises(OSError) as info:
            store.put_bytes(b"x" * 3_000_000)
        assert info.value.errno == errno.ENOSPC
        assert store.get_bytes(ok) == b"small"
        assert [f for f in _files(store.root) if f.startswith("tmp")] == []


@hi.function("fd_make", "1")
def fd_make(n):
    return b"y" * n


def test_a_host_job_whose_result_does_not_fit_is_returned_and_not_cached(tmp_path):
    with small_filesystem(tmp_path / "disk", "1m") as disk:
        cache = hi.JobCache(path=disk / "store")
        with hi.Config(job_cache=cache):
            assert fd_make.run(n=10).result() == b"y" * 10
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                job = fd_make.run(n=3_000_000)
                assert job.result() == b"y" * 3_000_000
            texts = [str(w.message) for w in caught]
            assert len(texts) == 1 and "No space left on device" in texts[0], texts
            with pytest.warns(UserWarning, match="No space left on device"):
                again = fd_make.run(n=3_000_000)
                again.result()
            assert not again.cache_hit  # nothing was stored under its key
            assert fd_make.run(n=10).result() == b"y" * 10
        assert [f for f in _files(disk / "store") if f.startswith("tmp")] == []
