"""Fixtures for running hither jobs in real container runtimes (and a uv environment).

``require(component)`` skips a test when a component is missing on a developer machine and
fails it in CI (``CI=true``), as in ``tests/runtimes``. After every test ``hi.reset()`` is
called and no worker container created by this process (label
``hither.owner_pid=<pid>``) may remain in Docker or Podman, nor any worker process
(``_worker.py --stdio``) started by it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import pytest

import hither as hi
from tests.components import require as _require

HERE = os.path.dirname(os.path.abspath(__file__))
IMAGE = os.environ.get("HITHER_TEST_IMAGE", "local/py3numpy:bookworm")
IMAGE_ALT = os.environ.get("HITHER_TEST_IMAGE_ALT", "local/py3numpy:alt")
IMAGE_NONUMPY = os.environ.get("HITHER_TEST_IMAGE_NONUMPY", "local/py3:bookworm")
IMAGE_NUMPY_VERSION = "1.24.2"
VENV_REQUIREMENTS = ["numpy==1.26.4"]
OWNER_LABEL = "hither.owner_pid"


# ------------------------------------------------------------------ availability
def require(component: str) -> None:
    """Skip (developer machine) or fail (CI) unless ``component`` is usable here, with the
    three test images in a Docker or Podman engine."""
    _require(component, (IMAGE, IMAGE_ALT, IMAGE_NONUMPY))


# ------------------------------------------------------------------ runtimes
@dataclass
class RuntimeCase:
    """How to make jobs run in one runtime: ``with rt.config(...)``."""

    name: str
    kwargs: dict[str, Any]
    numpy_version: str
    container: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    def config(self, **more: Any) -> hi.Config:
        return hi.Config(**{**self.kwargs, **more})

    def __repr__(self) -> str:
        return f"<runtime {self.name}>"


def docker_case(image: str = IMAGE) -> RuntimeCase:
    return RuntimeCase("docker", {"container": f"docker://{image}",
                                  "jhparams": {"container_engine": "docker"}},
                       IMAGE_NUMPY_VERSION)


def podman_case(image: str = IMAGE) -> RuntimeCase:
    return RuntimeCase("podman", {"container": f"docker://{image}",
                                  "jhparams": {"container_engine": "podman"}},
                       IMAGE_NUMPY_VERSION)


def apptainer_case() -> RuntimeCase:
    return RuntimeCase("apptainer", {"container": os.environ["HITHER_TEST_SANDBOX"]},
                       IMAGE_NUMPY_VERSION)


def venv_case() -> RuntimeCase:
    return RuntimeCase("venv", {"environment": hi.PythonEnv(VENV_REQUIREMENTS)},
                       VENV_REQUIREMENTS[0].split("==")[1], container=False)


def make_case(name: str) -> RuntimeCase:
    if name == "docker":
        require("docker")
        return docker_case()
    if name == "podman":
        require("podman")
        return podman_case()
    if name == "apptainer":
        require("apptainer")
        return apptainer_case()
    if name == "venv":
        require("uv")
        return venv_case()
    raise ValueError(name)


RUNTIMES = ["docker", "podman", "apptainer", "venv"]
ENGINES = ["docker", "podman"]


@pytest.fixture(params=RUNTIMES)
def runtime_config(request) -> RuntimeCase:
    """One runtime; ``with runtime_config.config(job_handler=...)`` runs jobs there."""
    return make_case(request.param)


@pytest.fixture(params=ENGINES)
def engine_config(request) -> RuntimeCase:
    """Docker or Podman."""
    return make_case(request.param)


def make_handler(kind: str) -> hi.JobHandler:
    if kind == "inline":
        return hi.DefaultJobHandler()
    return hi.ParallelJobHandler(2)


@pytest.fixture(params=["inline", "parallel"])
def handler(request):
    h = make_handler(request.param)
    yield h
    h.shutdown(wait=False, cancel=True)


@pytest.fixture
def parallel_handler():
    h = hi.ParallelJobHandler(2)
    yield h
    h.shutdown(wait=False, cancel=True)


# ------------------------------------------------------------------ leftovers
def containers_of(pid: int) -> dict[str, list[str]]:
    """Worker containers labelled with owner ``pid``, per engine (only engines present)."""
    found: dict[str, list[str]] = {}
    flt = ["--filter", "label=hither.worker=1", "--filter", f"label={OWNER_LABEL}={pid}"]
    for engine in ("docker", "podman"):
        if not _cli_usable(engine):
            continue
        r = subprocess.run([engine, "ps", "-a", *flt, "-q"], capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        found[engine] = r.stdout.split()
    return found


@cache
def _cli_usable(engine: str) -> bool:
    """Whether ``docker ps`` / ``podman ps`` (local CLI, with CONTAINERS_CONF) answers."""
    if shutil.which(engine) is None:
        return False
    try:
        r = subprocess.run([engine, "ps", "-q"], capture_output=True, timeout=60)
    except subprocess.TimeoutExpired:
        return False
    return r.returncode == 0


def leftovers(pid: int) -> dict[str, list[str]]:
    return {k: v for k, v in containers_of(pid).items() if v}


def wait_no_containers(pid: int, timeout: float) -> dict[str, list[str]]:
    """Poll until no container of ``pid`` remains; returns what is left at the end."""
    deadline = time.monotonic() + timeout
    while True:
        left = leftovers(pid)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.5)


def remove_containers(found: dict[str, list[str]]) -> None:
    for engine, ids in found.items():
        if ids:
            # podman would first wait 10 s for a worker (PID 1) to obey SIGTERM
            now = ["-t", "0"] if engine == "podman" else []
            subprocess.run([engine, "rm", "-f", *now, *ids], capture_output=True, timeout=120)


def worker_processes(parent: int) -> list[tuple[int, str]]:
    """Live (non-zombie) children of ``parent`` running a hither stdio worker."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        state, ppid = fields[0], int(fields[1])
        if ppid == parent and state != "Z" and "_worker.py --stdio" in cmd:
            out.append((int(entry), cmd))
    return out


@pytest.fixture(autouse=True)
def _no_orphans():
    """After each test: hi.reset(), then no container or worker process of ours remains."""
    yield
    hi.reset()
    pid = os.getpid()
    # stopping a worker removes its container before returning: allow only a moment
    left = wait_no_containers(pid, 5)
    procs = []
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        procs = worker_processes(pid)
        if not procs:
            break
        time.sleep(0.2)
    if left:
        remove_containers(left)  # do not let one failure spill into the next tests
    assert not left, f"worker containers left behind after hi.reset(): {left}"
    assert not procs, f"worker processes left behind after hi.reset(): {procs}"
