"""Apptainer (Singularity) runtime: workers started with ``apptainer exec``.

The image is a ``.sif`` file, a sandbox directory, or a URI apptainer can build from
(``docker://``, ``docker-daemon://``, ``oras://``, ``library://``...). A URI is built once
into a SIF in hither's cache (``$HITHER_SIF_DIR``, default ``<user cache>/hither/sif``) on
first use and reused afterwards; delete that file to rebuild (e.g. after the tag moved).

Identity: a SIF's digest is the sha256 of the file, memoized like every file hash
(:func:`hither.hashing.hash_file`: in this process and in a small sqlite file shared by
processes, by real path, device, inode, size, mtime and ctime). A sandbox
directory is hashed by its *file list* (relative paths, sizes, modification times and
symlink targets), not by content: an approximation that changes whenever a file is
rewritten, and that a same-size edit preserving the mtime would escape. Both are resolved
once per process (see :func:`clear_identity_cache`).

As a non-root user apptainer cannot make a private network namespace
(``--net --network none`` is then ignored by apptainer), so the worker has the host's
network and a warning says so.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import threading
import warnings
from dataclasses import KW_ONLY, dataclass
from pathlib import Path
from typing import Any

from ..errors import RuntimeUnavailableError
from ..hashing import hash_file
from ..utils import FileLock
from .base import Runtime, WorkerSpec, kill_process_group
from .docker import check_image_reference

_BUILD_TIMEOUT = float(os.environ.get("HITHER_APPTAINER_BUILD_TIMEOUT", "3600"))

# URI schemes whose rest is a registry image reference (Docker/OCI grammar)
_REGISTRY_SCHEMES = ("docker", "docker-daemon", "oras")

_lock = threading.Lock()
_identities: dict[str, dict[str, Any]] = {}


def clear_identity_cache() -> None:
    """Forget the apptainer image identities resolved in this process."""
    with _lock:
        _identities.clear()


def sif_dir() -> Path:
    """Where SIFs built from URIs live."""
    env = os.environ.get("HITHER_SIF_DIR")
    if env:
        return Path(env)
    import platformdirs

    return platformdirs.user_cache_path("hither") / "sif"


def find_apptainer(executable: str | None = None) -> str:
    """The apptainer executable: ``executable``, ``$HITHER_APPTAINER``, or ``apptainer`` /
    ``singularity`` on PATH. Raises :class:`RuntimeUnavailableError` with advice."""
    for cand in (executable, os.environ.get("HITHER_APPTAINER")):
        if cand:
            found = shutil.which(cand)
            if found is None:
                raise RuntimeUnavailableError(f"apptainer executable {cand!r} not found")
            return found
    for name in ("apptainer", "singularity"):
        found = shutil.which(name)
        if found:
            return found
    raise RuntimeUnavailableError(
        "Apptainer is not installed: no `apptainer` or `singularity` on PATH and "
        "HITHER_APPTAINER is unset. Install Apptainer "
        "(https://apptainer.org/docs/admin/main/installation.html), or pass "
        "ApptainerRuntime(executable=...)")


@dataclass(frozen=True)
class ApptainerRuntime(Runtime):
    """Workers in an Apptainer/Singularity container.

    Args:
        image: a ``.sif`` path, a sandbox directory, or a URI such as
            ``docker://image:tag`` (built to a cached SIF on first use).
        network: keep the host network (default: ``--net --network none``, root only).
        gpus: ``--nv``.
        executable: the apptainer/singularity binary (default: ``$HITHER_APPTAINER``, then
            PATH).

    Runs with ``--containall --no-home --cleanenv``: private /tmp, PID and IPC
    namespaces, no host home, no host environment; only the worker spec's mounts.
    """

    image: str
    _: KW_ONLY
    network: bool = False
    gpus: bool = False
    executable: str | None = None

    kind = "apptainer"

    def __post_init__(self) -> None:
        if not self.image:
            raise ValueError("image must be a .sif path, a sandbox folder or a URI")
        if not self.is_uri:
            object.__setattr__(self, "image", os.path.abspath(os.path.expanduser(self.image)))
            return
        scheme, rest = self.image.split("://", 1)
        if scheme in _REGISTRY_SCHEMES:
            check_image_reference(rest, self.image)
        elif not rest.strip() or rest != rest.strip():
            raise RuntimeUnavailableError(f"invalid apptainer image URI {self.image!r}")

    @property
    def is_uri(self) -> bool:
        """Whether the image is a URI built into a cached SIF."""
        return "://" in self.image

    def image_path(self) -> str:
        """The SIF file or sandbox folder apptainer runs (not built yet for a URI)."""
        if not self.is_uri:
            return self.image
        return str(sif_dir() / f"{hashlib.sha256(self.image.encode()).hexdigest()[:16]}.sif")

    def pool_key(self) -> str:
        return json.dumps(["apptainer", self.image, self.network, self.gpus, self.executable])

    def describe(self) -> str:
        return f"apptainer image {self.image}"

    def identity(self) -> dict[str, Any]:
        """``{"kind": "apptainer", "image": ..., "digest": ...}``: ``sha256:<hex>`` of a SIF,
        ``files-sha256:<hex>`` of a sandbox's file list. Builds a URI's SIF if needed."""
        with _lock:
            found = _identities.get(self.image)
        if found is None:
            path = self.ensure_image()
            if os.path.isdir(path):
                digest = "files-sha256:" + _tree_digest(path)
            else:
                digest = "sha256:" + _sif_digest(path)
            found = {"kind": "apptainer", "image": self.image, "digest": digest}
            with _lock:
                _identities[self.image] = found
        return dict(found)

    def ensure_image(self) -> str:
        """The local image path, building a URI's SIF (once, under a file lock) if absent."""
        path = self.image_path()
        if not self.is_uri:
            if not os.path.exists(path):
                raise RuntimeUnavailableError(f"apptainer image {path} does not exist")
            return path
        if os.path.exists(path):
            return path
        exe = find_apptainer(self.executable)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with FileLock(path + ".lock", timeout=_BUILD_TIMEOUT):
            if os.path.exists(path):
                return path
            fd, tmp = tempfile.mkstemp(suffix=".sif.tmp", dir=os.path.dirname(path))
            os.close(fd)
            try:
                r = subprocess.run([exe, "build", "--force", tmp, self.image],
                                   capture_output=True, text=True, timeout=_BUILD_TIMEOUT,
                                   stdin=subprocess.DEVNULL)
                if r.returncode != 0:
                    tail = "\n".join((r.stderr or r.stdout).strip().splitlines()[-5:])
                    raise RuntimeUnavailableError(
                        f"could not build a SIF from {self.image} (no registry reachable?): "
                        f"{tail}\nBuild it yourself (e.g. `apptainer build x.sif "
                        f"docker-daemon://IMAGE:TAG` from a local Docker image) and use the "
                        f".sif path")
                os.replace(tmp, path)
            except subprocess.TimeoutExpired as e:
                raise RuntimeUnavailableError(
                    f"building a SIF from {self.image} took over {_BUILD_TIMEOUT:.0f} s") from e
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        return path

    def worker_argv(self, spec: WorkerSpec, *, executable: str = "apptainer",
                    as_root: bool | None = None) -> list[str]:
        """The ``apptainer exec`` command for ``spec`` (a pure function of its inputs).

        The spec's variables are not in it: :meth:`worker_env` passes them.

        ``as_root`` (default: whether this process is root) decides whether a private
        network namespace can be asked for.
        """
        if as_root is None:
            as_root = os.geteuid() == 0
        argv = [executable, "exec", "--containall", "--no-home", "--cleanenv"]
        for m in spec.mounts:
            if ":" in m.host or ":" in m.target:
                raise ValueError(f"bind paths cannot contain ':' for apptainer: {m}")
            argv += ["-B", f"{m.host}:{m.target}:{'ro' if m.readonly else 'rw'}"]
        if any(m.target == "/hither/out" for m in spec.mounts):
            argv += ["--pwd", "/hither/out"]
        if self.gpus:
            argv.append("--nv")
        if not self.network and as_root:
            argv += ["--net", "--network", "none"]
        argv += [self.image_path(), self.python(), "-u", "/hither/worker/_worker.py",
                 "--stdio"]
        return argv

    def worker_env(self, spec: WorkerSpec, executable: str = "apptainer") -> dict[str, str]:
        """The environment of the ``apptainer`` process: this process's, plus the spec's
        variables as ``APPTAINERENV_<NAME>`` (``SINGULARITYENV_`` for singularity), which
        ``--cleanenv`` lets through. ``--env K=V`` would split values at commas."""
        prefix = ("SINGULARITYENV_" if os.path.basename(executable) == "singularity"
                  else "APPTAINERENV_")
        env = dict(os.environ)
        env.update({prefix + k: v for k, v in spec.env.items()})
        return env

    def start_worker(self, spec: WorkerSpec) -> subprocess.Popen:
        exe = find_apptainer(self.executable)
        self.ensure_image()
        as_root = os.geteuid() == 0
        if not self.network and not as_root:
            warnings.warn("apptainer cannot isolate the network for a non-root user: the "
                          "worker shares the host network", RuntimeWarning, stacklevel=2)
        argv = self.worker_argv(spec, executable=exe, as_root=as_root)
        return subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=self.worker_env(spec, exe),
                                start_new_session=True)

    def stop_worker(self, proc: subprocess.Popen, spec: WorkerSpec) -> None:
        """Kill the worker's process group; the container's PID namespace dies with it."""
        kill_process_group(proc)


def _tree_digest(root: str) -> str:
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        rel = os.path.relpath(dirpath, root)
        for name in sorted(filenames + [d for d in dirnames
                                        if os.path.islink(os.path.join(dirpath, d))]):
            full = os.path.join(dirpath, name)
            try:
                st = os.lstat(full)
            except OSError:
                continue
            extra = os.readlink(full) if os.path.islink(full) else ""
            h.update(f"{rel}/{name}\0{st.st_size}\0{st.st_mtime_ns}\0{extra}\n".encode())
    return h.hexdigest()


def _sif_digest(path: str) -> str:
    """sha256 of a SIF file, memoized like every file hash (:func:`hither.hashing.hash_file`)."""
    return hash_file(path)
