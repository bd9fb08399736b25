"""Invalid image names fail at ``.run()`` with RuntimeUnavailableError naming the image,
on the real engines, never with an engine's raw APIError or a failed SIF build."""

from __future__ import annotations

import tempfile

import pytest

import hither as hi
from hither.errors import RuntimeUnavailableError
from hither.runtimes import ApptainerRuntime, DockerRuntime
from hither.runtimes.docker import clear_identity_cache
from tests.components import require

from .conftest import TEST_IMAGE

pytestmark = pytest.mark.timeout(120)

BAD_NAMES = ["UPPER/Case::bad", "local/py3numpy:bookworm@sha256:zz", " spaced", "a//b",
             "x:tag with space", "ok/name:" + "t" * 200, "-leading/dash"]


@hi.function("img_identity", "1")
def img_identity(x):
    return x


@pytest.mark.parametrize("engine", ["docker", "podman", "apptainer"])
@pytest.mark.parametrize("bad", BAD_NAMES)
@pytest.mark.parametrize("cached", [True, False], ids=["cache", "nocache"])
def test_run_with_an_invalid_image_name_names_the_image(engine, bad, cached, tmp_path):
    require(engine)
    cache = hi.JobCache(path=tmp_path / "store") if cached else None
    with hi.Config(container=f"docker://{bad}", jhparams={"container_engine": engine},
                   job_cache=cache):
        with pytest.raises(RuntimeUnavailableError) as info:
            img_identity.run(x=1)
    assert bad in str(info.value)
    assert "invalid container image name" in str(info.value)


@pytest.mark.parametrize("good", [TEST_IMAGE, "python:3.12-slim", "ghcr.io/org/img:1.0",
                                  "localhost:5000/a/b@sha256:" + "a" * 64,
                                  "docker.io/library/python", "sha256:" + "b" * 64])
def test_valid_names_are_accepted(good):
    assert DockerRuntime(good).image == good
    assert DockerRuntime("docker://" + good, engine="podman").image == good
    ApptainerRuntime("docker://" + good)


@pytest.mark.parametrize("engine", ["docker", "podman"])
def test_an_engine_refusing_a_name_is_a_runtime_error_naming_it(engine):
    """A name the engine rejects beyond the grammar checked here (bypassed on purpose)
    still gives RuntimeUnavailableError, not the SDK's APIError."""
    require(engine)
    rt = DockerRuntime("local/x:1", engine=engine)
    object.__setattr__(rt, "image", "UPPER/Case::bad")
    clear_identity_cache()
    with pytest.raises(RuntimeUnavailableError, match=r"UPPER/Case::bad"):
        rt.identity()


def test_apptainer_does_not_try_to_build_an_invalid_name(monkeypatch):
    monkeypatch.setenv("HITHER_SIF_DIR", tempfile.mkdtemp())
    with pytest.raises(RuntimeUnavailableError, match=r"docker://UPPER/Case::bad"):
        ApptainerRuntime("docker://UPPER/Case::bad")
