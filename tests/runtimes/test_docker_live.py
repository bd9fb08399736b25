"""Docker runtime against the real engine and the local test images."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid

import pytest

from hither.errors import RuntimeUnavailableError
from hither.runtimes import DockerRuntime, cleanup_orphans, clear_identity_cache
from hither.runtimes import docker as docker_mod

from .conftest import (
    TEST_IMAGE,
    TEST_IMAGE_ALT,
    check_hello_ping_stop,
    check_sandbox,
    make_folders,
    make_spec,
    require,
)

pytestmark = pytest.mark.docker


@pytest.fixture
def rt():
    require("docker")
    return DockerRuntime(TEST_IMAGE)


def inspect_id(image: str) -> str:
    return subprocess.run(["docker", "image", "inspect", "--format", "{{.Id}}", image],
                          capture_output=True, text=True, check=True).stdout.strip()


def containers_named(name: str) -> list[str]:
    out = subprocess.run(["docker", "ps", "-a", "--filter", f"name=^/{name}$", "--format",
                          "{{.Names}}"], capture_output=True, text=True, check=True).stdout
    return out.split()


def test_identity_is_the_image_id(rt):
    ident = rt.identity()
    assert ident == {"kind": "docker", "image": TEST_IMAGE, "digest": inspect_id(TEST_IMAGE)}
    assert ident["digest"].startswith("sha256:")
    alt = DockerRuntime(TEST_IMAGE_ALT).identity()
    assert alt["digest"] == inspect_id(TEST_IMAGE_ALT) != ident["digest"]
    # network/gpus do not change what the image is
    assert DockerRuntime(TEST_IMAGE, network=True).identity() == ident


def test_rebuilt_image_gets_new_digest_after_clear(rt, tmp_path):
    tag = "local/hither-test-rebuild:t"
    built: list[str] = []

    def build(value: str) -> None:
        (tmp_path / "Dockerfile").write_text(f"FROM {TEST_IMAGE}\nENV HITHER_REBUILD={value}\n")
        subprocess.run(["docker", "build", "-q", "-t", tag, str(tmp_path)], check=True,
                       capture_output=True, env={**os.environ, "DOCKER_BUILDKIT": "0"})
        built.append(inspect_id(tag))

    try:
        build(uuid.uuid4().hex)
        first = DockerRuntime(tag).identity()["digest"]
        assert first == inspect_id(tag)
        build(uuid.uuid4().hex)
        assert DockerRuntime(tag).identity()["digest"] == first  # resolved once per process
        clear_identity_cache()
        second = DockerRuntime(tag).identity()["digest"]
        assert second == inspect_id(tag) != first
    finally:
        # the first build loses its tag to the second: remove both, leave nothing dangling
        subprocess.run(["docker", "rmi", "-f", tag, *built], capture_output=True)
        left = subprocess.run(["docker", "images", "-q", "--no-trunc"], capture_output=True,
                              text=True).stdout.split()
        assert not set(built) & set(left)


@pytest.mark.timeout(60)
def test_absent_image_is_reported_not_pulled_forever(rt):
    image = f"local/hither-absent-{uuid.uuid4().hex[:8]}:x"
    t0 = time.monotonic()
    with pytest.raises(RuntimeUnavailableError, match="not present locally") as info:
        DockerRuntime(image).identity()
    assert time.monotonic() - t0 < 60
    msg = str(info.value)
    assert image in msg and "docker build" in msg and "docker load" in msg


def test_unreachable_engine_names_socket_and_remedy():
    pytest.importorskip("docker")
    url = f"unix:///nonexistent/hither-{uuid.uuid4().hex[:6]}.sock"
    with pytest.raises(RuntimeUnavailableError) as info:
        DockerRuntime("local/x:1", base_url=url).identity()
    msg = str(info.value)
    assert url in msg and "Docker engine is not reachable" in msg and "dockerd" in msg


def test_missing_sdk_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "docker", None)  # makes `import docker` fail
    url = f"unix:///nonexistent/hither-{uuid.uuid4().hex[:6]}.sock"
    with pytest.raises(RuntimeUnavailableError, match=r"pip install hither\[docker\]"):
        DockerRuntime("local/x:1", base_url=url).identity()


def test_worker_hello_ping_stop(rt, tmp_path, workers):
    t0 = time.monotonic()
    check_hello_ping_stop(rt, tmp_path, workers)
    print(f"docker worker start to stop: {time.monotonic() - t0:.2f} s")


def test_sandbox(rt, tmp_path, workers):
    check_sandbox(rt, tmp_path, workers)


def test_network_when_asked(tmp_path, workers):
    require("docker")
    check_sandbox(DockerRuntime(TEST_IMAGE, network=True), tmp_path, workers, private_net=False)


def test_user_override_owns_outputs(rt, tmp_path, workers):
    dirs = make_folders(tmp_path)
    os.chmod(dirs["out"], 0o777)
    spec = make_spec(dirs)
    proc = subprocess.Popen(rt.worker_argv(spec, user=(1234, 4321)), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    w = workers(rt, spec, proc)
    assert w.recv()["op"] == "hello"
    r = w.exec("import os\nopen('f', 'w').write('x')\nresult = [os.getuid(), os.getgid()]")
    assert r["value"] == [1234, 4321]
    st = (dirs["out"] / "f").stat()
    assert (st.st_uid, st.st_gid) == (1234, 4321)


def test_stop_removes_container_after_cli_was_killed(rt, tmp_path, workers):
    dirs = make_folders(tmp_path)
    spec = make_spec(dirs)
    w = workers(rt, spec)
    assert w.recv()["op"] == "hello"
    w.send({"op": "exec", "code": "import time\ntime.sleep(600)"})
    os.killpg(w.proc.pid, signal.SIGKILL)
    w.proc.wait(timeout=30)
    assert containers_named(spec.name) == [spec.name]  # the busy container outlives its CLI
    rt.stop_worker(w.proc, spec)
    assert containers_named(spec.name) == []
    rt.stop_worker(w.proc, spec)  # twice is fine


def test_stop_of_a_running_worker(rt, tmp_path, workers):
    spec = make_spec(make_folders(tmp_path))
    w = workers(rt, spec)
    assert w.recv()["op"] == "hello"
    assert containers_named(spec.name) == [spec.name]
    rt.stop_worker(w.proc, spec)
    assert w.proc.returncode is not None
    assert containers_named(spec.name) == []


def test_cleanup_orphans_removes_only_dead_owners(rt, tmp_path, workers):
    dead = subprocess.Popen(["true"])
    dead.wait()
    specs = {}
    for owner in ("dead", "alive"):
        spec = make_spec(make_folders(tmp_path / owner))
        pid = dead.pid if owner == "dead" else os.getpid()
        argv = rt.worker_argv(spec, owner=(pid, docker_mod.socket.gethostname()))
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True)
        w = workers(rt, spec, proc)
        assert w.recv()["op"] == "hello"
        specs[owner] = spec
    assert cleanup_orphans("docker", older_than=3600) == []  # too young
    removed = cleanup_orphans("docker")
    assert specs["dead"].name in removed and specs["alive"].name not in removed
    assert containers_named(specs["dead"].name) == []
    assert containers_named(specs["alive"].name) == [specs["alive"].name]
