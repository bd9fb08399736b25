"""Pipelines that cross runtimes, and the runtime as part of the cache key."""

from __future__ import annotations

import os

import numpy as np
import pytest

import hither as hi
from hither.testing.jobs import ht_np_double, ht_np_make

from .cfuncs import c_np_combine
from .conftest import IMAGE, IMAGE_ALT, IMAGE_NUMPY_VERSION, docker_case, require

WAIT = 120  # the first use of the numpy>=2 environment builds it
NUMPY2_ENV = hi.PythonEnv(["numpy>=2"])


@pytest.fixture
def docker_rt():
    require("docker")
    require("uv")
    return docker_case()


def run_pipeline(docker_rt, cache, handler):
    with hi.Config(job_cache=cache, job_handler=handler):
        with docker_rt.config():
            first = ht_np_make.run(n=5)
        with hi.Config(environment=NUMPY2_ENV):
            second = ht_np_double.run(data=first)
        third = c_np_combine.run(first=first, second=second)  # on the host
    jobs = [first, second, third]
    return jobs, [j.result(timeout=WAIT) for j in jobs]


@pytest.mark.timeout(300)
def test_pipeline_across_docker_venv_and_host(docker_rt, handler, tmp_path):
    cache = hi.JobCache(path=tmp_path / "cache")
    jobs, (r1, r2, r3) = run_pipeline(docker_rt, cache, handler)
    base = np.arange(5, dtype=np.int64) * 3
    # step 1: the image's numpy
    assert r1["version"] == IMAGE_NUMPY_VERSION
    assert r1["array"].dtype == np.int64 and np.array_equal(r1["array"], base)
    # step 2: the uv environment's numpy 2, given step 1's array as an ndarray
    assert int(r2["version"].split(".")[0]) >= 2, r2["version"]
    assert r2["got_type"] == "numpy.ndarray"
    assert r2["array"].dtype == np.int64 and np.array_equal(r2["array"], base * 2)
    # step 3: the host
    assert r3["versions"] == [IMAGE_NUMPY_VERSION, r2["version"]]
    assert r3["total"] == int(base.sum() * 3)
    assert np.array_equal(r3["array"], base)
    assert [j.cache_hit for j in jobs] == [False, False, False]
    runtimes = [j.get_runtime_info().get("runtime") for j in jobs]
    assert "docker" in str(runtimes[0]) and runtimes[2] is None, runtimes
    keys = [j.key for j in jobs]
    assert all(keys) and len(set(keys)) == 3

    # again: every job is a cache hit with the same key and the same values
    again, results = run_pipeline(docker_rt, cache, handler)
    assert [j.cache_hit for j in again] == [True, True, True]
    assert [j.key for j in again] == keys
    assert results[0]["version"] == IMAGE_NUMPY_VERSION
    assert results[1]["version"] == r2["version"]
    for got, want in zip(results, (r1, r2, r3), strict=True):
        assert np.array_equal(got["array"], want["array"])


@pytest.mark.timeout(120)
def test_image_digest_is_part_of_the_key(docker_rt, tmp_path):
    cache = hi.JobCache(path=tmp_path / "cache")

    def run(**config):
        with hi.Config(job_cache=cache, **config):
            job = ht_np_make.run(n=3)
        value = job.result(timeout=WAIT)
        return job, value

    main, v_main = run(container=f"docker://{IMAGE}")
    assert not main.cache_hit and v_main["version"] == IMAGE_NUMPY_VERSION
    # same software, different image id: a miss
    alt, v_alt = run(container=f"docker://{IMAGE_ALT}")
    assert not alt.cache_hit
    assert alt.key != main.key
    assert np.array_equal(v_alt["array"], v_main["array"])
    # the first image again: a hit under the first key
    hit, _ = run(container=f"docker://{IMAGE}")
    assert hit.cache_hit and hit.key == main.key
    # container=False: the same function on the host, with the host's numpy
    host, v_host = run(container=False)
    assert not host.cache_hit
    assert host.key not in (main.key, alt.key)
    assert v_host["version"] == np.__version__
    assert host.get_runtime_info().get("runtime") is None
    assert np.array_equal(v_host["array"], v_main["array"])


@pytest.mark.timeout(120)
@pytest.mark.parametrize("engine", ["docker", "podman"])
def test_engine_chosen_by_environment_variable(engine, monkeypatch):
    require(engine)
    monkeypatch.setenv("HITHER_CONTAINER_ENGINE", engine)
    with hi.Config(container=f"docker://{IMAGE}"):
        job = ht_np_make.run(n=2)
        assert job.result(timeout=WAIT)["version"] == IMAGE_NUMPY_VERSION
    assert job.get_runtime_info()["runtime"] == f"{engine} image {IMAGE}"


@pytest.mark.timeout(120)
def test_apptainer_sif_image():
    require("apptainer")
    sif = os.environ.get("HITHER_TEST_SIF")
    if not sif or not os.path.isfile(sif):
        if os.environ.get("CI") == "true":
            pytest.fail("CI needs a SIF image (HITHER_TEST_SIF)")
        pytest.skip("needs a SIF image (HITHER_TEST_SIF)")
    with hi.Config(container=sif):
        got = ht_np_double.run(data=ht_np_make.run(n=4)).result(timeout=WAIT)
    assert got["version"] == IMAGE_NUMPY_VERSION
    assert np.array_equal(got["array"], np.arange(4) * 6)


@pytest.mark.timeout(180)
def test_one_worker_slot_shared_by_many_runtimes():
    """num_workers=1 and jobs for five pools at once: idle workers of other pools are
    retired to make room, and every job completes with the right runtime."""
    require("docker")
    require("podman")
    require("uv")
    from .conftest import podman_case, venv_case

    cases = [docker_case(), docker_case(IMAGE_ALT), podman_case(), venv_case(), None]
    with hi.ParallelJobHandler(1) as h:
        jobs = []
        for i in range(15):
            case = cases[i % len(cases)]
            config = hi.Config(job_handler=h) if case is None else case.config(job_handler=h)
            with config:
                jobs.append((case, ht_np_make.run(n=i)))
        for case, job in jobs:
            got = job.result(timeout=WAIT)
            want = np.__version__ if case is None else case.numpy_version
            assert got["version"] == want
            assert np.array_equal(got["array"], np.arange(job.kwargs["n"]) * 3)
