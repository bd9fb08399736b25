"""Choosing a job's runtime from its function and the settings."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from hither.config import Settings
from hither.runtimes import (
    ApptainerRuntime,
    DockerRuntime,
    PythonEnv,
    VenvRuntime,
    container_engine,
    identity_of,
    runtime_for,
    runtime_for_image,
)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for var in ("HITHER_CONTAINER_ENGINE", "HITHER_USE_SINGULARITY"):
        monkeypatch.delenv(var, raising=False)


def fdef(container=None, environment=None):
    return SimpleNamespace(container=container, environment=environment)


ENV = PythonEnv(["numpy==1.26.4"])


def test_container_resolution_as_in_0_4_2():
    f = fdef("docker://local/f:1")
    assert runtime_for(f, Settings(container=True)) == DockerRuntime("local/f:1")
    assert runtime_for(f, Settings(container="docker://local/o:2")) == DockerRuntime("local/o:2")
    assert runtime_for(fdef(), Settings(container="docker://local/o:2")) == \
        DockerRuntime("local/o:2")
    for off in (False, None):
        assert runtime_for(f, Settings(container=off)) is None
    # container=True for a function without a container: the host
    assert runtime_for(fdef(), Settings(container=True)) is None


def test_environment_after_container():
    f = fdef("docker://local/f:1", environment=ENV)
    assert runtime_for(f, Settings(container=True)) == DockerRuntime("local/f:1")
    assert runtime_for(f, Settings()) == VenvRuntime(ENV)
    other = PythonEnv(["numpy>=2"])
    assert runtime_for(f, Settings(environment=other)) == VenvRuntime(other)
    assert runtime_for(fdef(environment=["numpy==1.26.4"]), Settings()) == VenvRuntime(ENV)
    rt = DockerRuntime("local/x:1", network=True)
    assert runtime_for(fdef(), Settings(environment=rt)) is rt
    with pytest.raises(TypeError, match="PythonEnv"):
        runtime_for(fdef(environment=42), Settings())


def test_engine_choice(monkeypatch):
    f = fdef("docker://local/f:1")
    assert container_engine() == "docker"
    monkeypatch.setenv("HITHER_USE_SINGULARITY", "TRUE")
    assert runtime_for(f, Settings(container=True)) == ApptainerRuntime("docker://local/f:1")
    monkeypatch.setenv("HITHER_CONTAINER_ENGINE", "podman")  # the newer variable wins
    assert runtime_for(f, Settings(container=True)) == DockerRuntime("local/f:1",
                                                                     engine="podman")
    s = Settings(container=True, jhparams={"container_engine": "docker"})
    assert runtime_for(f, s) == DockerRuntime("local/f:1")  # Config beats the environment
    monkeypatch.setenv("HITHER_CONTAINER_ENGINE", "lxc")
    with pytest.raises(ValueError, match="unknown container engine"):
        runtime_for(f, Settings(container=True))
    monkeypatch.setenv("HITHER_CONTAINER_ENGINE", "Singularity")
    assert container_engine() == "apptainer"


def test_image_forms(tmp_path):
    assert runtime_for_image("podman://local/x:1", "docker") == DockerRuntime(
        "local/x:1", engine="podman")
    assert runtime_for_image("local/x:1") == DockerRuntime("local/x:1")
    assert runtime_for_image("/images/x.sif", "docker") == ApptainerRuntime("/images/x.sif")
    assert runtime_for_image("sif:///images/x.sif") == ApptainerRuntime("/images/x.sif")
    assert runtime_for_image(str(tmp_path)) == ApptainerRuntime(str(tmp_path))
    assert runtime_for_image("docker-daemon://local/x:1") == ApptainerRuntime(
        "docker-daemon://local/x:1")
    assert runtime_for_image("local/x:1", "apptainer") == ApptainerRuntime("docker://local/x:1")
    with pytest.raises(ValueError, match="scheme"):
        runtime_for_image("ftp://x")


def test_identity_of_host_and_runtime(monkeypatch):
    assert identity_of(None) == {"kind": "host"}

    class Fake(DockerRuntime):
        def identity(self):
            return {"kind": "docker", "image": self.image, "digest": "sha256:00"}

    assert identity_of(Fake("local/x:1"))["digest"] == "sha256:00"


def test_with_real_function_and_config():
    import hither as hi
    from hither.config import current
    from hither.function import function_def

    @hi.function("runtimes_select_probe", "1", container="docker://local/f:1",
                 environment=ENV)
    def runtimes_select_probe(x):
        return x

    fd = function_def(runtimes_select_probe)
    assert runtime_for(fd, current()) == VenvRuntime(ENV)
    with hi.Config(container=True, jhparams={"container_engine": "podman"}):
        assert runtime_for(fd, current()) == DockerRuntime("local/f:1", engine="podman")
    with hi.Config(container=False, environment=PythonEnv(["numpy>=2"])):
        assert runtime_for(fd, current()) == VenvRuntime(PythonEnv(["numpy>=2"]))
