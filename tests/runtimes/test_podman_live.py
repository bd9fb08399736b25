"""Podman runtime: through its API socket (``HITHER_PODMAN_SOCKET``) and through the local
CLI alone (no socket configured)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid

import pytest

from hither.errors import RuntimeUnavailableError
from hither.runtimes import DockerRuntime, cleanup_orphans

from .conftest import (
    TEST_IMAGE,
    TEST_IMAGE_ALT,
    check_hello_ping_stop,
    check_sandbox,
    make_folders,
    make_spec,
    require,
)

pytestmark = pytest.mark.podman


@pytest.fixture(params=["socket", "cli"])
def mode(request, monkeypatch):
    require("podman-cli")  # the tests look at containers with the local CLI
    if request.param == "socket":
        require("podman")
    else:
        monkeypatch.delenv("HITHER_PODMAN_SOCKET", raising=False)
        monkeypatch.delenv("CONTAINER_HOST", raising=False)
    return request.param


@pytest.fixture
def rt(mode):
    return DockerRuntime(TEST_IMAGE, engine="podman")


def podman(*args: str) -> str:
    """The podman CLI in local mode (needs CONTAINERS_CONF/CONTAINERS_STORAGE_CONF)."""
    return subprocess.run(["podman", *args], capture_output=True, text=True,
                          check=True).stdout


def manifest_digest(image: str) -> str:
    return podman("image", "inspect", "--format", "{{.Digest}}", image).strip()


def containers_named(name: str) -> list[str]:
    out = podman("ps", "-a", "--format", "json", "--filter", f"name=^{name}$")
    return [c["Names"][0] for c in json.loads(out or "[]")]


def test_identity(rt, mode):
    ident = rt.identity()
    assert ident["kind"] == "podman" and ident["image"] == TEST_IMAGE
    # an imported image has a manifest digest in podman (RepoDigests), unlike in docker
    assert ident["digest"] == manifest_digest(TEST_IMAGE)
    alt = DockerRuntime(TEST_IMAGE_ALT, engine="podman").identity()
    assert alt["digest"] == manifest_digest(TEST_IMAGE_ALT) != ident["digest"]


def test_socket_and_cli_agree(monkeypatch):
    require("podman")
    require("podman-cli")
    from hither.runtimes import clear_identity_cache

    via_socket = DockerRuntime(TEST_IMAGE, engine="podman").identity()
    monkeypatch.delenv("HITHER_PODMAN_SOCKET")
    monkeypatch.delenv("CONTAINER_HOST", raising=False)
    clear_identity_cache()
    assert DockerRuntime(TEST_IMAGE, engine="podman").identity() == via_socket


@pytest.mark.timeout(60)
def test_absent_image(rt, mode):
    image = f"local/hither-absent-{uuid.uuid4().hex[:8]}:x"
    with pytest.raises(RuntimeUnavailableError, match="not present locally") as info:
        DockerRuntime(image, engine="podman").identity()
    assert "podman build" in str(info.value)


def test_unreachable_socket():
    pytest.importorskip("docker")
    url = f"unix:///nonexistent/hither-{uuid.uuid4().hex[:6]}.sock"
    with pytest.raises(RuntimeUnavailableError) as info:
        DockerRuntime("local/x:1", engine="podman", base_url=url).identity()
    assert url in str(info.value) and "podman system service" in str(info.value)


def test_no_podman_at_all(monkeypatch):
    monkeypatch.delenv("HITHER_PODMAN_SOCKET", raising=False)
    monkeypatch.delenv("CONTAINER_HOST", raising=False)
    monkeypatch.setenv("PATH", "/nonexistent")
    from hither.runtimes import docker as docker_mod

    monkeypatch.setattr(docker_mod, "_clients", {})
    with pytest.raises(RuntimeUnavailableError, match="install it"):
        DockerRuntime(f"local/x{uuid.uuid4().hex[:6]}:1", engine="podman").identity()


def test_worker_hello_ping_stop(rt, mode, tmp_path, workers):
    t0 = time.monotonic()
    check_hello_ping_stop(rt, tmp_path, workers)
    print(f"podman ({mode}) worker start to stop: {time.monotonic() - t0:.2f} s")


def test_sandbox(rt, tmp_path, workers):
    check_sandbox(rt, tmp_path, workers)


def test_stop_removes_container_after_cli_was_killed(rt, tmp_path, workers):
    spec = make_spec(make_folders(tmp_path))
    w = workers(rt, spec)
    assert w.recv()["op"] == "hello"
    w.send({"op": "exec", "code": "import time\ntime.sleep(600)"})
    os.killpg(w.proc.pid, signal.SIGKILL)
    w.proc.wait(timeout=30)
    assert containers_named(spec.name) == [spec.name]
    rt.stop_worker(w.proc, spec)
    assert containers_named(spec.name) == []
    rt.stop_worker(w.proc, spec)


def test_cleanup_orphans(rt, mode, tmp_path, workers):
    dead = subprocess.Popen(["true"])
    dead.wait()
    spec = make_spec(make_folders(tmp_path))
    import socket

    argv = rt.worker_argv(spec, owner=(dead.pid, socket.gethostname()), cli="podman")
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    w = workers(rt, spec, proc)
    assert w.recv()["op"] == "hello"
    assert spec.name in cleanup_orphans("podman")
    assert containers_named(spec.name) == []
