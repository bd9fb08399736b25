"""The files a Slurm handler and its nodes exchange in the handler's working folder.

The working folder (mode 0700, on a filesystem the nodes share) holds, per handler::

    env.pkl                 the driver's sys.path and working directory
    specs/<job id>.pkl      what a node needs to run one job (a NodeSpec, pickled)
    out/<job id>.pkl        how it ended (an outcome file, pickled), written by the node
    cancel/<job id>         asks the node running the job to stop it
    <batch>/specs.txt       an array batch: task i runs the job named on line i
    <batch>/script.sh       its sbatch script; Slurm's log files beside it
    <batch>/limit           the time limit (seconds) the batch's tasks were given
    <batch>/<i>.timeout     written by task i when Slurm stops it at its time limit
                            (SIGTERM at or past its deadline): ``squeue`` does not say why
                            a task ended
    <batch>/p<rank>/inbox/  a pilot batch: the jobs given to worker <rank>, one empty file
                            ``<seq>.<job id>`` each, removed by the worker as it starts them
    <batch>/p<rank>/ready   written by worker <rank> when it serves (its host and pid)
    <batch>/p<rank>/gone    written by worker <rank> when it ends
    <batch>/stop            asks the batch's workers to end

Results and records do not travel here: the node writes them into the job cache's store
through :mod:`hither.cacheflow`, as the driver would. Files here are pickles written and
read by the same user (the folder is private to them), like the pipes of host workers.
Every file is written to a temp name and renamed, so a reader sees it whole or not at all.
"""

from __future__ import annotations

import os
import pickle
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

OUTCOME_FORMAT = 1
_ENV = "env.pkl"


@dataclass(frozen=True, slots=True)
class CacheSpec:
    """The job cache as the node uses it: where, and the flags of the job."""

    root: str
    readonly: bool
    keyinfo: Any
    force_run: bool
    rerun_failing: bool
    cache_failing: bool
    name: str
    version: str


@dataclass(frozen=True, slots=True)
class NodeSpec:
    """A job as a node runs it (what a :class:`~hither.launch.Launch` holds, minus what
    only lives in the driver)."""

    job_id: str
    label: str
    fid: str
    fn: bytes
    """The function, pickled as for a host worker."""
    kwargs_pickle: bytes | None
    args_manifest: Any
    timeout: float | None
    sys_path: tuple[str, ...]
    runtime: Any
    code: Any
    store_root: str | None
    cache: CacheSpec | None
    handler: str


class Layout:
    """Paths of one handler's working folder."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.specs = self.root / "specs"
        self.out = self.root / "out"
        self.cancels = self.root / "cancel"

    def create(self) -> None:
        """Make the folder and its subfolders (mode 0700)."""
        for d in (self.root, self.specs, self.out, self.cancels):
            os.makedirs(d, mode=0o700, exist_ok=True)

    def spec(self, job_id: str) -> Path:
        return self.specs / f"{job_id}.pkl"

    def outcome(self, job_id: str) -> Path:
        return self.out / f"{job_id}.pkl"

    def cancel(self, job_id: str) -> Path:
        return self.cancels / job_id

    def batch(self, name: str) -> Path:
        return self.root / name

    def pilot(self, batch: str, rank: int) -> Path:
        return self.root / batch / f"p{rank}"

    def inbox(self, batch: str, rank: int) -> Path:
        return self.pilot(batch, rank) / "inbox"

    def stop(self, batch: str) -> Path:
        return self.root / batch / "stop"

    # ---------------------------------------------------------------- env
    def write_env(self, sys_path: list[str], cwd: str) -> None:
        write_atomic(self.root / _ENV, pickle.dumps({"sys_path": sys_path, "cwd": cwd}))

    def read_env(self) -> dict[str, Any]:
        with open(self.root / _ENV, "rb") as f:
            return pickle.load(f)


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temp file in the same folder and a rename."""
    tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600)
    try:
        with open(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def create_empty(path: Path) -> None:
    """Create an empty file (it appears whole: no temp file needed)."""
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0),
                     0o600))


def touch(path: Path, text: str = "") -> None:
    """Create ``path`` with ``text`` (atomically)."""
    write_atomic(path, text.encode())


def write_spec(layout: Layout, spec: NodeSpec) -> None:
    write_atomic(layout.spec(spec.job_id), pickle.dumps(spec, protocol=pickle.HIGHEST_PROTOCOL))


def read_spec(path: Path) -> NodeSpec:
    with open(path, "rb") as f:
        spec = pickle.load(f)
    if not isinstance(spec, NodeSpec):
        raise ValueError(f"{path} is not a hither job spec")
    return spec


def write_outcome(layout: Layout, job_id: str, outcome: dict[str, Any]) -> None:
    """``outcome``: ``{"kind": "done"|"cached", "ok", "payload", "manifest", "lines",
    "start", "end", "info"}`` (see :mod:`hither.handlers.slurm_node`)."""
    data = {"format": OUTCOME_FORMAT, "job_id": job_id, **outcome}
    write_atomic(layout.outcome(job_id), pickle.dumps(data, protocol=pickle.HIGHEST_PROTOCOL))


def read_outcome(path: Path) -> dict[str, Any] | None:
    """An outcome file, or None when it is not one of ours (or not whole)."""
    try:
        with open(path, "rb") as f:
            data = pickle.load(f)
    except (OSError, EOFError, pickle.UnpicklingError, AttributeError, ImportError,
            IndexError, ValueError, TypeError):
        return None
    if not isinstance(data, dict) or data.get("format") != OUTCOME_FORMAT:
        return None
    return data


def write_limit(folder: Path, seconds: float) -> None:
    """Note the time limit of the batch in ``folder`` (driver)."""
    touch(folder / "limit", f"{seconds:.0f}\n")


def deadline(folder: Path, end_time: str | None = None) -> float | None:
    """When Slurm stops a task of the batch in ``folder`` that starts now (node): its
    ``end_time`` (Slurm's ``SLURM_JOB_END_TIME``, where Slurm sets it), else now plus the
    batch's limit; None when neither is known."""
    import time

    end = _number(end_time)
    if end is not None:
        return end
    limit = _number(_read_small(folder / "limit"))
    return None if limit is None else time.time() + limit


def mark_timed_out(folder: Path, index: int) -> None:
    """Note that task ``index`` of the batch in ``folder`` was stopped at its time limit."""
    touch(folder / f"{index}.timeout")


def timed_out(folder: Path, index: int) -> bool:
    """Whether task ``index`` of the batch in ``folder`` was stopped at its time limit."""
    return os.path.lexists(folder / f"{index}.timeout")


def _read_small(path: Path) -> str | None:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) |
                     getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return None
    with open(fd, "rb") as f:
        return f.read(64).decode("ascii", "replace")


def _number(text: str | None) -> float | None:
    import math

    try:
        value = float((text or "").strip())
    except ValueError:
        return None
    return value if math.isfinite(value) and value > 0 else None


def remove_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
