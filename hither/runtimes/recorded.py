"""The runtime a record names, found again to re-run its job (``hither reproduce --run``).

- Docker/Podman: the image *by digest*, never by its (movable) name: a repository digest
  as ``repo@sha256:...``, an image ID as itself. Absent: an error naming the digest.
- uv environment: rebuilt from the lock stored with the record (same interpreter version).
- host: this interpreter, as a worker process fed the recorded code bundle (the record's
  package versions are the caller's to compare: the host is not pinned).
"""

from __future__ import annotations

import hashlib
import os
import sys
from dataclasses import dataclass
from typing import Any

from ..errors import RuntimeUnavailableError
from .base import Runtime, WorkerSpec
from .venv import PythonEnv, VenvRuntime

__all__ = ["HostWorkerRuntime", "LockedEnv", "recorded_runtime"]


@dataclass(frozen=True)
class HostWorkerRuntime(VenvRuntime):
    """Workers run by this interpreter (``sys.executable``), from a code bundle."""

    kind = "host"

    def identity(self) -> dict[str, Any]:
        return {"kind": "host"}

    def pool_key(self) -> str:
        return "host-worker:" + sys.executable

    def python(self) -> str:
        return sys.executable

    def describe(self) -> str:
        return f"this interpreter ({sys.executable})"

    def worker_env(self, spec: WorkerSpec) -> dict[str, str]:
        env = {k: os.environ[k] for k in ("PATH", "HOME", "LANG", "TMPDIR") if k in os.environ}
        env["PYTHONNOUSERSITE"] = "1"
        env.update(spec.env)
        return env

    def prepare(self) -> None:
        """Nothing to build: the workers run on this interpreter."""

class LockedEnv(PythonEnv):
    """A :class:`PythonEnv` whose resolution is a recorded lock (nothing is re-resolved)."""

    def __init__(self, lock: str, python_version: str) -> None:
        super().__init__([f"# lock {hashlib.sha256(lock.encode()).hexdigest()}"],
                         python=python_version)
        object.__setattr__(self, "_lock_text", lock)

    def resolved(self) -> dict[str, Any]:
        lock: str = self.__dict__["_lock_text"]
        version = str(self.python)
        import platform

        if platform.python_version() == version:
            interp = sys.executable
        else:
            from .venv import _uv

            interp = _uv(["python", "find", version], f"finding Python {version}"
                         ).stdout.strip()
        return {"key": self._key(), "requirements": list(self.requirements),
                "python": version, "interpreter": interp, "python_version": version,
                "lock": lock, "lock_sha256": hashlib.sha256(lock.encode()).hexdigest(),
                "resolved_at": ""}


def _docker_ref(identity: dict[str, Any]) -> str:
    """The reference that runs exactly the recorded image, if present locally."""
    from .docker import _engine, check_image_reference

    engine = str(identity.get("kind"))
    image, digest = str(identity.get("image") or ""), str(identity.get("digest") or "")
    if not digest.startswith("sha256:") or len(digest) != 71:
        raise RuntimeUnavailableError(f"the record names no image digest for {image!r}")
    url = None
    if engine == "podman":
        url = os.environ.get("HITHER_PODMAN_SOCKET") or os.environ.get("CONTAINER_HOST")
    repo = image.split("@", 1)[0]
    last = repo.rsplit("/", 1)[-1]
    if ":" in last:
        repo = repo[: len(repo) - len(last)] + last.split(":", 1)[0]
    candidates = [f"{repo}@{digest}", digest]
    client = _engine(engine, url)
    for ref in candidates:
        try:
            check_image_reference(ref)
            attrs = client.image(ref)
        except Exception:  # noqa: BLE001 - a reference the engine refuses: the next one
            continue
        if attrs is None:
            continue
        digests = {d.split("@", 1)[1] for d in attrs.get("RepoDigests") or [] if "@" in d}
        if attrs.get("Id") == digest or digest in digests:
            return ref
    raise RuntimeUnavailableError(
        f"the recorded {engine} image {image} with digest {digest} is not present: load it "
        f"(`{engine} load -i IMAGE.tar`, e.g. from a bundle exported with --with-image) or "
        f"pull {repo}@{digest}; an image of the same name with another digest is not used")


def recorded_runtime(identity: dict[str, Any], lock: str | None = None) -> Runtime:
    """The runtime of a recorded identity (see the module docstring).

    Raises:
        RuntimeUnavailableError: it cannot be found or rebuilt; the message says what is
            missing (the image digest, the lock) and what to do.
    """
    kind = identity.get("kind")
    if kind == "host":
        return HostWorkerRuntime(PythonEnv([]))
    if kind in ("docker", "podman"):
        from .docker import DockerRuntime

        return DockerRuntime(_docker_ref(identity), engine=str(kind))
    if kind == "venv":
        if lock is None:
            raise RuntimeUnavailableError("the record holds no lock of its environment: "
                                          "it cannot be rebuilt")
        if hashlib.sha256(lock.encode()).hexdigest() != identity.get("lock"):
            raise RuntimeUnavailableError("the stored lock does not match the environment's "
                                          "identity in the key")
        return VenvRuntime(LockedEnv(lock, str(identity.get("python"))))
    if kind == "apptainer":
        from .apptainer import ApptainerRuntime

        image = str(identity.get("image") or "")
        rt = ApptainerRuntime(image)
        if rt.identity().get("digest") != identity.get("digest"):
            raise RuntimeUnavailableError(f"the apptainer image {image} is not the recorded "
                                          f"one (digest {identity.get('digest')})")
        return rt
    raise RuntimeUnavailableError(f"unknown runtime kind {kind!r} in the record")
