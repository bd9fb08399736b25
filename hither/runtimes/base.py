"""The runtime interface: WHERE a job's code runs, and how a worker is started there.

A runtime starts long-lived *workers*: processes running ``hither/_worker.py`` in its
standard-input/output mode (see that module), which run many jobs each. The handler owns
the workers; the runtime knows how to start one (``docker run -i ...``,
``podman run -i ...``, ``apptainer exec ...``, ``<env>/bin/python ...``) and how to make
sure it is gone.

Inside every worker the same paths are used (containers mount them; a host env sees
them at their host paths, through :meth:`Runtime.path_in_worker`):

==========================  ===============================================  =========
``/hither/worker``          ``_worker.py``, ``_codec.py`` and the ``hither``  read-only
                            stand-in package the job's module imports
``/hither/code``            the function's source files and local modules     read-only
``/hither/blobs``           the store's blob folder (arguments, by content)   read-only
``/hither/out``             where the worker writes result blobs              writable
==========================  ===============================================  =========
"""

from __future__ import annotations

import os
import signal
import subprocess
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Mount:
    """A host folder made visible to a worker."""

    host: str
    target: str
    readonly: bool = True


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """What a worker needs besides its runtime: the mounts and environment variables."""

    mounts: tuple[Mount, ...]
    env: dict[str, str] = field(default_factory=dict)
    name: str = "hither-worker"
    """A unique name (containers are named after it, so they can be found and removed)."""


class Runtime:
    """Base class of runtimes. Subclasses are immutable and compare by value."""

    #: "docker", "podman", "apptainer", "venv"
    kind: str = "host"

    def identity(self) -> dict[str, Any]:
        """The runtime's identity for job keys: e.g. ``{"kind": "docker", "image":
        "local/x:tag", "digest": "sha256:..."}``; resolved once and cached. Raises
        :class:`~hither.errors.RuntimeUnavailableError` when the engine or image is
        missing, with advice."""
        raise NotImplementedError

    def pool_key(self) -> str:
        """Workers started for equal pool keys can run each other's jobs."""
        raise NotImplementedError

    def python(self) -> str:
        """The Python command inside the runtime (``python3`` by default)."""
        return "python3"

    def path_in_worker(self, target: str, spec: WorkerSpec) -> str:
        """Where the worker sees a mount's ``target`` (the host path for non-containers)."""
        return target

    def start_worker(self, spec: WorkerSpec) -> subprocess.Popen:
        """Start a worker: a process whose stdin/stdout are pipes speaking the worker
        protocol and whose stderr is a pipe; it runs
        ``<python> -u /hither/worker/_worker.py --stdio``."""
        raise NotImplementedError

    def stop_worker(self, proc: subprocess.Popen, spec: WorkerSpec) -> None:
        """Make sure the worker and everything it started are gone (container removed).
        Must be safe to call twice and on a worker that already exited."""
        raise NotImplementedError

    def describe(self) -> str:
        """A short text naming the runtime in error messages (``docker image X``)."""
        return self.kind


def kill_process_group(proc: subprocess.Popen, timeout: float = 30) -> bool:
    """SIGKILL a worker started with ``start_new_session=True`` and its whole process group,
    then reap it. Returns whether it was still running. Safe on an exited process."""
    was_running = proc.poll() is None
    if was_running:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pass
    return was_running
