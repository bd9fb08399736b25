"""Choosing the runtime of a job from its function and the settings in force.

Container first, as in hither 0.4.2: ``Config(container=True)`` uses the function's
declared image (none declared: no container), a string uses that image for every job,
``False``/``None`` means no container. Then the environment: ``Config(environment=...)``
overrides the function's declared one. Otherwise the job runs on the host (``None``).

The engine for ``docker://`` images is, by precedence: ``Config(jhparams={
"container_engine": ...})``, ``$HITHER_CONTAINER_ENGINE`` (``docker``, ``podman`` or
``apptainer``), ``$HITHER_USE_SINGULARITY=TRUE`` (apptainer, as in 0.4.2), else Docker.
``podman://image`` always means Podman; ``.sif`` files, existing folders and the other
apptainer URIs (``docker-daemon://``, ``oras://``, ``library://``, ``shub://``) mean
Apptainer.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .apptainer import ApptainerRuntime
from .base import Runtime
from .docker import DockerRuntime
from .venv import PythonEnv, VenvRuntime

if TYPE_CHECKING:
    from ..config import Settings

ENGINE_CHOICES = ("docker", "podman", "apptainer")
_APPTAINER_SCHEMES = ("docker-daemon", "oras", "library", "shub", "docker-archive",
                      "oci-archive", "sif")


def container_engine(settings: Settings | None = None) -> str:
    """The engine chosen for ``docker://`` images (see the module documentation)."""
    choice = None
    if settings is not None:
        choice = (settings.jhparams or {}).get("container_engine")
    if not choice:
        choice = os.environ.get("HITHER_CONTAINER_ENGINE")
    if not choice and os.environ.get("HITHER_USE_SINGULARITY", "").upper() == "TRUE":
        choice = "apptainer"
    choice = (choice or "docker").lower()
    if choice == "singularity":
        choice = "apptainer"
    if choice not in ENGINE_CHOICES:
        raise ValueError(f"unknown container engine {choice!r}: use one of {ENGINE_CHOICES}")
    return choice


def runtime_for_image(image: str, engine: str = "docker", *, network: bool = False,
                      gpus: bool = False) -> Runtime:
    """The runtime running ``image`` (a URI, an image name, a ``.sif`` or a folder)."""
    def docker(name: str, eng: str) -> Runtime:
        return DockerRuntime(name, engine=eng, network=network, gpus=gpus)

    def apptainer(name: str) -> Runtime:
        return ApptainerRuntime(name, network=network, gpus=gpus)

    if "://" in image:
        scheme, rest = image.split("://", 1)
        if scheme == "podman":
            return docker(rest, "podman")
        if scheme == "docker":
            return apptainer(image) if engine == "apptainer" else docker(rest, engine)
        if scheme == "file":
            return apptainer(rest)
        if scheme in _APPTAINER_SCHEMES:
            return apptainer(rest if scheme == "sif" else image)
        raise ValueError(f"unsupported container URI scheme {scheme!r} in {image!r}")
    if image.endswith(".sif") or os.path.isdir(image):
        return apptainer(image)
    if engine == "apptainer":
        return apptainer("docker://" + image)
    return docker(image, engine)


def runtime_for(fdef: Any, settings: Settings) -> Runtime | None:
    """The runtime a job of ``fdef`` (a :class:`~hither.function.FunctionDef`) runs in
    under ``settings``, or ``None`` for the host interpreter."""
    c = settings.container
    image: str | None = None
    if c is True:
        image = fdef.container
    elif isinstance(c, str) and c:
        image = c
    if image:
        network = settings.network if settings.network is not None else \
            bool(getattr(fdef, "network", False))
        gpus = settings.gpus if settings.gpus is not None else bool(getattr(fdef, "gpus", False))
        return runtime_for_image(image, container_engine(settings), network=network,
                                 gpus=gpus)
    env = settings.environment if settings.environment is not None else fdef.environment
    return _environment_runtime(env)


def _environment_runtime(env: Any) -> Runtime | None:
    if env is None or env is False:
        return None
    if isinstance(env, Runtime):
        return env
    if isinstance(env, PythonEnv):
        return VenvRuntime(env)
    if isinstance(env, Sequence) and not isinstance(env, str) and all(
            isinstance(r, str) for r in env):
        return VenvRuntime(PythonEnv(env))
    raise TypeError(f"environment must be a hi.PythonEnv, a runtime or a list of "
                    f"requirements, got {env!r}")


def identity_of(runtime: Runtime | None) -> dict[str, Any]:
    """The runtime's identity for job keys (``{"kind": "host"}`` for the host).

    Each runtime caches its own identity (image digests once per process, locks in memory
    and on disk), so this is cheap after the first call.
    """
    if runtime is None:
        return {"kind": "host"}
    return runtime.identity()
