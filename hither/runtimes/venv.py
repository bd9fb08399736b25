"""Python environments built with uv: :class:`PythonEnv` (what to install) and
:class:`VenvRuntime` (workers run by that environment's interpreter, on the host).

An environment is keyed by its **resolved lock**: ``uv pip compile`` turns the
requirements into pinned versions with hashes; the sha256 of that text is the
environment's identity, and the environment lives in
``<root>/<lock sha256[:16]>-py<version>`` where ``<root>`` is ``$HITHER_ENV_DIR`` or
``<user cache>/hither/envs``. Functions asking for the same set share one environment.

Resolution is cached in this process and on disk (``<root>/locks/``, with the date of the
resolution), keyed by the requirements and the Python: a new release on the index is
therefore *not* picked up until that cache is cleared (:func:`clear_lock_cache` or
deleting ``<root>/locks``); the next use then re-resolves, and a different lock means a
new environment and new job keys.

Builds go to a temporary folder that is renamed into place when complete (``uv venv
--relocatable``, so nothing refers to the temporary path), under a file lock: a killed
build never leaves a folder that looks valid, and two processes building the same
environment wait for each other. A process that finds the environment ready starts in
milliseconds: no uv call.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import RuntimeUnavailableError
from ..utils import FileLock
from .base import Runtime, WorkerSpec, kill_process_group

_MARKER = "hither-env.json"
_BUILD_TIMEOUT = float(os.environ.get("HITHER_ENV_BUILD_TIMEOUT", "3600"))

_lock = threading.Lock()
_resolved: dict[str, dict[str, Any]] = {}


def env_root() -> Path:
    """The folder holding the environments (``$HITHER_ENV_DIR`` or the user cache)."""
    env = os.environ.get("HITHER_ENV_DIR")
    if env:
        return Path(env)
    import platformdirs

    return platformdirs.user_cache_path("hither") / "envs"


def clear_lock_cache(*, on_disk: bool = False) -> None:
    """Forget resolved locks in this process (and on disk with ``on_disk=True``), so the
    next use of each :class:`PythonEnv` resolves its requirements again."""
    with _lock:
        _resolved.clear()
    if on_disk:
        shutil.rmtree(env_root() / "locks", ignore_errors=True)


def find_uv() -> list[str]:
    """The command running uv: the ``uv`` package's binary, else ``uv`` on PATH."""
    try:
        import uv

        return [uv.find_uv_bin()]
    except (ImportError, FileNotFoundError):
        pass
    exe = shutil.which("uv")
    if exe:
        return [exe]
    raise RuntimeUnavailableError(
        "uv is needed to build Python environments: pip install hither[uv] "
        "(or install uv: https://docs.astral.sh/uv/getting-started/installation/)")


def _uv_env() -> dict[str, str]:
    """uv's environment: the caller's, plus the system certificate store, which uv ignores
    by default (pip, curl and the rest use it; a site with its own CA or a TLS proxy needs
    it). ``UV_NATIVE_TLS=0`` in the caller's environment turns this off."""
    env = dict(os.environ)
    env.setdefault("UV_NATIVE_TLS", "1")
    return env


def _uv(args: list[str], what: str) -> subprocess.CompletedProcess:
    cmd = find_uv() + args
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=_BUILD_TIMEOUT,
                           stdin=subprocess.DEVNULL, env=_uv_env())
    except subprocess.TimeoutExpired as e:
        raise RuntimeUnavailableError(f"{what}: uv took over {_BUILD_TIMEOUT:.0f} s") from e
    if r.returncode != 0:
        raise RuntimeUnavailableError(f"{what} failed (uv {' '.join(args[:2])}):\n"
                                      f"{(r.stderr or r.stdout).strip()}")
    return r


@dataclass(frozen=True)
class PythonEnv:
    """A Python environment described by its requirements, built with uv when used.

    Args:
        requirements: requirement strings (``"numpy==1.26.4"``, ``"scipy>=1.11"``); the
            order and duplicates do not matter.
        python: the interpreter: a version (``"3.12"``, found or fetched by uv) or a path;
            default: the interpreter running hither.

    Example::

        @hi.function("fit", "1", environment=hi.PythonEnv(["numpy==1.26.4"]))
        def fit(x): ...
    """

    requirements: tuple[str, ...]
    python: str | None = None

    def __init__(self, requirements: Iterable[str] | str, *, python: str | None = None):
        if isinstance(requirements, str):
            requirements = [requirements]
        reqs = tuple(sorted({r.strip() for r in requirements if r and r.strip()}))
        object.__setattr__(self, "requirements", reqs)
        object.__setattr__(self, "python", python)

    def _key(self) -> str:
        # the running interpreter's version is free to read, and keys out a Python
        # upgraded in place at the same path
        interp = (self.python if self.python is not None
                  else f"{sys.executable} {platform.python_version()}")
        text = json.dumps({"requirements": list(self.requirements), "python": interp})
        return hashlib.sha256(text.encode()).hexdigest()

    def resolved(self) -> dict[str, Any]:
        """The resolution: ``{"lock", "lock_sha256", "interpreter", "python_version",
        "resolved_at", ...}``, from the in-process or on-disk cache, else ``uv pip
        compile``."""
        key = self._key()
        with _lock:
            found = _resolved.get(key)
        if found is not None:
            return found
        path = env_root() / "locks" / f"{key[:24]}.json"
        try:
            found = json.loads(path.read_text())
            if found.get("key") != key:
                found = None
        except (OSError, ValueError):
            found = None
        if found is None:
            found = self._resolve(key)
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".json.tmp")
            with os.fdopen(fd, "w") as f:
                json.dump(found, f, indent=1)
            os.replace(tmp, path)
        with _lock:
            _resolved[key] = found
        return found

    def _resolve(self, key: str) -> dict[str, Any]:
        if self.python is None:
            interp, version = sys.executable, platform.python_version()
        else:
            interp = _uv(["python", "find", self.python], f"finding Python {self.python}"
                         ).stdout.strip()
            try:
                version = subprocess.run(
                    [interp, "-c", "import platform; print(platform.python_version())"],
                    capture_output=True, text=True, check=True, timeout=60).stdout.strip()
            except (OSError, subprocess.SubprocessError) as e:
                raise RuntimeUnavailableError(f"cannot run Python {interp}: {e}") from e
        with tempfile.TemporaryDirectory(prefix="hither-lock-") as tmp:
            req_in = os.path.join(tmp, "requirements.in")
            lock_out = os.path.join(tmp, "requirements.lock")
            with open(req_in, "w") as f:
                f.write("".join(r + "\n" for r in self.requirements))
            _uv(["pip", "compile", req_in, "-o", lock_out, "--python", interp, "--quiet",
                 "--no-header", "--no-annotate", "--generate-hashes"],
                f"resolving {list(self.requirements)}")
            lock = Path(lock_out).read_text()
        return {"key": key, "requirements": list(self.requirements), "python": self.python,
                "interpreter": interp, "python_version": version, "lock": lock,
                "lock_sha256": hashlib.sha256(lock.encode()).hexdigest(),
                "resolved_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}

    def lock(self) -> str:
        """The resolved lock text (pinned versions with hashes)."""
        return str(self.resolved()["lock"])

    def identity(self) -> dict[str, Any]:
        """``{"kind": "venv", "lock": <sha256 of the lock>, "python": "<version>"}``."""
        r = self.resolved()
        return {"kind": "venv", "lock": r["lock_sha256"], "python": r["python_version"]}

    def path(self) -> Path:
        """Where the environment lives (whether or not it is built yet)."""
        r = self.resolved()
        return env_root() / f"{r['lock_sha256'][:16]}-py{r['python_version']}"

    def is_ready(self) -> bool:
        """Whether the environment is built and complete."""
        p = self.path()
        return (p / _MARKER).is_file() and os.path.exists(p / "bin" / "python")

    def ensure(self) -> Path:
        """Build the environment if needed; returns its folder."""
        final = self.path()
        if self.is_ready():
            return final
        r = self.resolved()
        final.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(final) + ".lock", timeout=_BUILD_TIMEOUT):
            if self.is_ready():
                return final
            # holding the lock, any temporary build of this env is a dead one
            for stale in final.parent.glob(f".tmp-{final.name}-*"):
                shutil.rmtree(stale, ignore_errors=True)
            if final.exists():  # incomplete (no marker): never trust it
                shutil.rmtree(final)
            tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=final.parent))
            try:
                tmp.chmod(0o755)  # mkdtemp's 0700 would hide a shared env from other users
                _build(tmp, r)
                os.rename(tmp, final)
            finally:
                if tmp.exists():
                    shutil.rmtree(tmp, ignore_errors=True)
        return final


def _build(tmp: Path, r: dict[str, Any]) -> None:
    what = f"building the environment for {r['requirements']}"
    _uv(["venv", str(tmp), "--python", r["interpreter"], "--relocatable", "--quiet",
         "--allow-existing"], what)
    lock_file = tmp / "hither-requirements.lock"
    lock_file.write_text(r["lock"])
    _install(tmp, lock_file, what)
    (tmp / _MARKER).write_text(json.dumps(
        {k: r[k] for k in ("requirements", "python_version", "lock_sha256", "resolved_at")},
        indent=1))


def _install(env: Path, lock_file: Path, what: str) -> None:
    _uv(["pip", "install", "--python", str(env / "bin" / "python"), "--quiet",
         "-r", str(lock_file)], what)


@dataclass(frozen=True)
class VenvRuntime(Runtime):
    """Workers run by a :class:`PythonEnv`'s interpreter on the host.

    The worker sees the spec's mounts at their host paths (:meth:`path_in_worker`) and gets
    a minimal environment: ``PATH`` (the env's ``bin`` first), ``HOME``, ``LANG``,
    ``TMPDIR`` when set, ``PYTHONNOUSERSITE=1``, plus the spec's variables.
    """

    env: PythonEnv

    kind = "venv"

    def identity(self) -> dict[str, Any]:
        return self.env.identity()

    def pool_key(self) -> str:
        return "venv:" + self.env._key()

    def python(self) -> str:
        return str(self.env.path() / "bin" / "python")

    def describe(self) -> str:
        return f"Python environment [{', '.join(self.env.requirements)}]"

    def path_in_worker(self, target: str, spec: WorkerSpec) -> str:
        best = None
        for m in spec.mounts:
            t = m.target.rstrip("/")
            if target == t or target.startswith(t + "/"):
                if best is None or len(t) > len(best.target.rstrip("/")):
                    best = m
        if best is None:
            return target
        return best.host.rstrip("/") + target[len(best.target.rstrip("/")):]

    def worker_argv(self, spec: WorkerSpec) -> list[str]:
        """The command that starts a worker (builds nothing: see :meth:`start_worker`)."""
        return [self.python(), "-u", self.path_in_worker("/hither/worker/_worker.py", spec),
                "--stdio"]

    def worker_env(self, spec: WorkerSpec) -> dict[str, str]:
        """The worker's environment variables."""
        env_bin = str(self.env.path() / "bin")
        env = {"PATH": env_bin + os.pathsep + os.environ.get("PATH", os.defpath),
               "HOME": os.environ.get("HOME", os.path.expanduser("~")),
               "LANG": os.environ.get("LANG", "C.UTF-8"),
               "PYTHONNOUSERSITE": "1"}
        if "TMPDIR" in os.environ:
            env["TMPDIR"] = os.environ["TMPDIR"]
        env.update(spec.env)
        return env

    def prepare(self) -> None:
        """Make what the workers run on (the environment, built on first use)."""
        self.env.ensure()

    def start_worker(self, spec: WorkerSpec) -> subprocess.Popen:
        self.prepare()
        out = self.path_in_worker("/hither/out", spec)
        return subprocess.Popen(self.worker_argv(spec), stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env=self.worker_env(spec),
                                cwd=out if os.path.isdir(out) else None,
                                start_new_session=True)

    def stop_worker(self, proc: subprocess.Popen, spec: WorkerSpec) -> None:
        """Kill the worker and everything it started."""
        kill_process_group(proc)
