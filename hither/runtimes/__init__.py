"""Runtimes: where a job's code runs (host env, uv env, Docker, Podman, Apptainer).

See :mod:`hither.runtimes.base` for the interface and :func:`runtime_for` for how a job's
runtime is chosen.
"""

from __future__ import annotations

from . import apptainer as _apptainer
from . import docker as _docker
from .apptainer import ApptainerRuntime
from .base import Mount, Runtime, WorkerSpec
from .docker import DockerRuntime, cleanup_orphans
from .select import container_engine, identity_of, runtime_for, runtime_for_image
from .venv import PythonEnv, VenvRuntime, clear_lock_cache


def clear_identity_cache() -> None:
    """Forget the container image identities resolved in this process (Docker, Podman,
    Apptainer), e.g. after an image was rebuilt under the same tag."""
    _docker.clear_identity_cache()
    _apptainer.clear_identity_cache()


__all__ = [
    "ApptainerRuntime",
    "DockerRuntime",
    "Mount",
    "PythonEnv",
    "Runtime",
    "VenvRuntime",
    "WorkerSpec",
    "cleanup_orphans",
    "clear_identity_cache",
    "clear_lock_cache",
    "container_engine",
    "identity_of",
    "runtime_for",
    "runtime_for_image",
]
