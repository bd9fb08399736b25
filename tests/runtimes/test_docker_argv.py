"""Golden-file tests of the worker command lines (no engine needed).

Set ``HITHER_UPDATE_GOLDEN=1`` to rewrite the files in ``golden/`` after an intended
change, then review the diff.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from hither.runtimes import (
    ApptainerRuntime,
    DockerRuntime,
    Mount,
    PythonEnv,
    VenvRuntime,
    WorkerSpec,
)

GOLDEN = Path(__file__).parent / "golden"

SPEC = WorkerSpec(
    mounts=(Mount("/data/w", "/hither/worker"), Mount("/data/c", "/hither/code"),
            Mount("/data/b", "/hither/blobs"), Mount("/data/o", "/hither/out", readonly=False)),
    env={"PYTHONPATH": "/hither/code", "OMP_NUM_THREADS": "2"},
    name="hither-w-0001",
)
FIXED = {"user": (1000, 100), "owner": (4242, "node1")}


def golden(name: str, argv: list[str]) -> None:
    path = GOLDEN / f"{name}.json"
    if os.environ.get("HITHER_UPDATE_GOLDEN") == "1":
        GOLDEN.mkdir(exist_ok=True)
        path.write_text(json.dumps(argv, indent=1) + "\n")
    assert path.exists(), f"no golden file {path}: run with HITHER_UPDATE_GOLDEN=1"
    assert argv == json.loads(path.read_text())


@pytest.fixture(autouse=True)
def _no_podman_socket(monkeypatch):
    monkeypatch.delenv("HITHER_PODMAN_SOCKET", raising=False)
    monkeypatch.delenv("CONTAINER_HOST", raising=False)


def test_docker_default():
    golden("docker_default", DockerRuntime("local/x:1").worker_argv(SPEC, cli="docker", **FIXED))


def test_docker_network_gpus_extra_base_url():
    rt = DockerRuntime("docker://local/x:1", network=True, gpus=True,
                       base_url="tcp://10.0.0.5:2375", extra_args=("--memory", "2g"))
    golden("docker_options", rt.worker_argv(SPEC, cli="/usr/bin/docker", **FIXED))


def test_podman_local_cli():
    rt = DockerRuntime("local/x:1", engine="podman")
    golden("podman_local", rt.worker_argv(SPEC, cli="podman", **FIXED))


def test_podman_socket(monkeypatch):
    monkeypatch.setenv("HITHER_PODMAN_SOCKET", "unix:///run/p.sock")
    rt = DockerRuntime("local/x:1", engine="podman", gpus=True)
    golden("podman_socket", rt.worker_argv(SPEC, cli="podman", **FIXED))
    # without the podman CLI the docker CLI talks to the same socket
    golden("podman_socket_docker_cli", rt.worker_argv(SPEC, cli="docker", **FIXED))


def test_apptainer_root_and_user():
    rt = ApptainerRuntime("/images/x.sif")
    golden("apptainer_root", rt.worker_argv(SPEC, executable="apptainer", as_root=True))
    # a non-root user cannot have a private network namespace: no --net flags
    golden("apptainer_user", rt.worker_argv(SPEC, executable="apptainer", as_root=False))
    rt = ApptainerRuntime("/images/sandbox", network=True, gpus=True)
    golden("apptainer_options", rt.worker_argv(SPEC, executable="/opt/bin/singularity",
                                               as_root=True))


def test_apptainer_uri_runs_cached_sif(monkeypatch, tmp_path):
    monkeypatch.setenv("HITHER_SIF_DIR", str(tmp_path))
    argv = ApptainerRuntime("docker://local/x:1").worker_argv(SPEC, as_root=True)
    image = argv[-5]
    assert image.startswith(str(tmp_path)) and image.endswith(".sif")
    other = ApptainerRuntime("docker://local/x:2").worker_argv(SPEC, as_root=True)[-5]
    assert image != other


def test_docker_argv_defaults_to_caller():
    argv = DockerRuntime("local/x:1").worker_argv(SPEC)
    assert argv[argv.index("--user") + 1] == f"{os.getuid()}:{os.getgid()}"
    assert f"hither.owner_pid={os.getpid()}" in argv
    assert argv[0] == "docker"


def test_docker_safe_defaults():
    argv = DockerRuntime("local/x:1").worker_argv(SPEC, cli="docker", **FIXED)
    joined = " ".join(argv)
    assert "--network none" in joined
    assert "/etc/passwd" not in joined and ":/tmp" not in joined
    volumes = [argv[i + 1] for i, a in enumerate(argv) if a == "-v"]
    assert volumes == ["/data/w:/hither/worker:ro", "/data/c:/hither/code:ro",
                       "/data/b:/hither/blobs:ro", "/data/o:/hither/out:rw"]
    assert argv[-4:] == ["python3", "-u", "/hither/worker/_worker.py", "--stdio"]


def test_workdir_without_out_mount():
    spec = WorkerSpec(mounts=(Mount("/data/w", "/hither/worker"),), name="w")
    argv = DockerRuntime("local/x:1", engine="podman").worker_argv(spec, cli="podman")
    assert argv[argv.index("-w") + 1] == "/tmp"
    assert "--pwd" not in ApptainerRuntime("/x.sif").worker_argv(spec)


def test_mount_paths_with_separators_are_refused():
    bad = WorkerSpec(mounts=(Mount("/data/a:b", "/hither/code"),))
    with pytest.raises(ValueError, match="cannot contain"):
        DockerRuntime("local/x:1").worker_argv(bad)
    with pytest.raises(ValueError, match="cannot contain"):
        ApptainerRuntime("/x.sif").worker_argv(bad)


def test_value_semantics_and_pool_keys():
    a = DockerRuntime("docker://local/x:1")
    assert a == DockerRuntime("local/x:1") and hash(a) == hash(DockerRuntime("local/x:1"))
    assert a.image == "local/x:1" and a.kind == "docker"
    keys = {a.pool_key(),
            DockerRuntime("local/x:1", engine="podman").pool_key(),
            DockerRuntime("local/x:1", network=True).pool_key(),
            DockerRuntime("local/x:1", gpus=True).pool_key(),
            DockerRuntime("local/x:1", base_url="unix:///s").pool_key(),
            DockerRuntime("local/x:1", extra_args=("--cpus", "1")).pool_key(),
            DockerRuntime("local/x:2").pool_key()}
    assert len(keys) == 7
    assert a.describe() == "docker image local/x:1"
    with pytest.raises(ValueError, match="engine"):
        DockerRuntime("local/x:1", engine="lxc")
    with pytest.raises(TypeError):
        DockerRuntime("local/x:1", "podman")  # options are keyword-only
    assert ApptainerRuntime("x.sif").image == os.path.abspath("x.sif")
    assert ApptainerRuntime("/a.sif").pool_key() != ApptainerRuntime("/a.sif",
                                                                      gpus=True).pool_key()


def test_venv_argv_uses_host_paths(monkeypatch, tmp_path):
    monkeypatch.setenv("HITHER_ENV_DIR", str(tmp_path))
    env = PythonEnv(["numpy==1.26.4"])
    # a resolved lock without calling uv: the argv only needs the env folder's name
    from hither.runtimes import venv as venv_mod

    monkeypatch.setitem(venv_mod._resolved, env._key(), {
        "lock": "numpy==1.26.4\n", "lock_sha256": "ab" * 32, "python_version": "3.11.7",
        "interpreter": "/usr/bin/python3", "requirements": ["numpy==1.26.4"]})
    rt = VenvRuntime(env)
    argv = rt.worker_argv(SPEC)
    assert argv == [str(tmp_path / f"{'ab' * 8}-py3.11.7" / "bin" / "python"), "-u",
                    "/data/w/_worker.py", "--stdio"]
    assert rt.path_in_worker("/hither/out", SPEC) == "/data/o"
    assert rt.path_in_worker("/hither/blobs/ab/cd", SPEC) == "/data/b/ab/cd"
    assert rt.path_in_worker("/hither/outside", SPEC) == "/hither/outside"
    assert rt.path_in_worker("/elsewhere", SPEC) == "/elsewhere"
    env_vars = rt.worker_env(SPEC)
    assert env_vars["PATH"].startswith(str(tmp_path))
    assert env_vars["PYTHONPATH"] == "/hither/code"
    assert set(env_vars) <= {"PATH", "HOME", "LANG", "TMPDIR", "PYTHONNOUSERSITE",
                             "PYTHONPATH", "OMP_NUM_THREADS"}


def test_apptainer_env_goes_through_the_process_environment():
    env = ApptainerRuntime("/x.sif").worker_env(SPEC, "/usr/bin/apptainer")
    assert env["APPTAINERENV_PYTHONPATH"] == "/hither/code"
    assert env["APPTAINERENV_OMP_NUM_THREADS"] == "2"
    env = ApptainerRuntime("/x.sif").worker_env(SPEC, "/usr/bin/singularity")
    assert env["SINGULARITYENV_PYTHONPATH"] == "/hither/code"
