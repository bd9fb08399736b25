"""Fixtures for running hither jobs in real container runtimes (and a uv environment).

``require(component)`` skips a test when a component is missing on a developer machine and
fails it in CI (``CI=true``), as in ``tests/runtimes``. After every test ``hi.reset()`` is
called and no worker container created by this process (label
``hither.owner_pid=<pid>``) may remain in Docker or Podman, nor any worker process started
by it. The runtimes, images and leftover checks are those of :mod:`hither.testing.cases`.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

import pytest

import hither as hi
from hither.testing.cases import (  # noqa: F401 - for the tests here
    IMAGE,
    IMAGE_ALT,
    IMAGE_NONUMPY,
    IMAGE_NUMPY_VERSION,
    OWNER_LABEL,
    VENV_REQUIREMENTS,
    containers_of,
    leftovers,
    remove_containers,
    runtime_settings,
    wait_no_containers,
    worker_processes,
)
from tests.components import require as _require

HERE = os.path.dirname(os.path.abspath(__file__))


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
    return RuntimeCase("docker", {**runtime_settings("docker"), "container": f"docker://{image}"},
                       IMAGE_NUMPY_VERSION)


def podman_case(image: str = IMAGE) -> RuntimeCase:
    return RuntimeCase("podman", {**runtime_settings("podman"), "container": f"docker://{image}"},
                       IMAGE_NUMPY_VERSION)


def apptainer_case() -> RuntimeCase:
    return RuntimeCase("apptainer", runtime_settings("apptainer"), IMAGE_NUMPY_VERSION)


def venv_case() -> RuntimeCase:
    return RuntimeCase("venv", runtime_settings("venv"),
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
