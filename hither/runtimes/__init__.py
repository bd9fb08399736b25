"""Runtimes: where a job's code runs (host env, uv env, Docker, Podman, Apptainer).

See :mod:`hither.runtimes.base` for the interface and :func:`runtime_for` for how a job's
runtime is chosen.

The runtimes are imported on first use (PEP 562): a host job that only publishes its code
bundle (:mod:`hither.runtimes.bundle`) does not load the container runtimes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .apptainer import ApptainerRuntime
    from .base import Mount, Runtime, WorkerSpec
    from .docker import DockerRuntime, cleanup_orphans
    from .select import container_engine, identity_of, runtime_for, runtime_for_image
    from .venv import PythonEnv, VenvRuntime, clear_lock_cache

_LAZY = {
    "ApptainerRuntime": ".apptainer",
    "DockerRuntime": ".docker",
    "Mount": ".base",
    "PythonEnv": ".venv",
    "Runtime": ".base",
    "VenvRuntime": ".venv",
    "WorkerSpec": ".base",
    "cleanup_orphans": ".docker",
    "clear_lock_cache": ".venv",
    "container_engine": ".select",
    "identity_of": ".select",
    "runtime_for": ".select",
    "runtime_for_image": ".select",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def clear_identity_cache() -> None:
    """Forget the container image identities resolved in this process (Docker, Podman,
    Apptainer), e.g. after an image was rebuilt under the same tag."""
    from . import apptainer, docker

    docker.clear_identity_cache()
    apptainer.clear_identity_cache()


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
