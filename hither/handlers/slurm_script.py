"""Text for and from Slurm's commands, as pure functions (checked against golden files).

Nothing here runs a command or touches a file: the sbatch scripts of array and pilot
batches, the command lines of ``sbatch``/``sacct``/``squeue``/``scancel``, and the parsers
of their answers and of ``scontrol show config``. :mod:`hither.handlers.slurm_watch` runs
the commands; :mod:`hither.handlers.slurm` decides what to submit.
"""

from __future__ import annotations

import math
import re
import shlex
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

#: Slurm's default MaxArraySize: array indices 0..1000
DEFAULT_MAX_ARRAY_SIZE = 1001

#: states after which a Slurm job or array task runs no more
TERMINAL_STATES = frozenset({
    "BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL",
    "OUT_OF_MEMORY", "PREEMPTED", "REVOKED", "TIMEOUT",
})
#: terminal states worth one more try: the job itself was not at fault
RETRY_STATES = frozenset({"PREEMPTED", "NODE_FAIL"})


@dataclass(frozen=True, slots=True)
class ScriptOptions:
    """What every batch script of one handler shares."""

    python: tuple[str, ...]
    """The interpreter and its flags (the driver's ``sys.executable``)."""
    hither_root: str
    """The folder holding the ``hither`` package the driver imported (put first on the
    node's ``sys.path``, so that nodes run the driver's checkout)."""
    workdir: str
    """The handler's working folder on the shared filesystem."""
    cores: int = 1
    """CPUs per task (``--cpus-per-task``) and the thread-count variables."""
    time_limit: float | None = None
    """Seconds an allocation may run (``--time``, rounded up to minutes, plus one)."""
    job_name: str = "hither"
    sbatch_opts: tuple[str, ...] = ()
    """More ``#SBATCH`` options, e.g. ``("--partition=debug", "--mem=4G")``."""
    srun_opts: tuple[str, ...] = ()
    """More ``srun`` options (pilot batches: ``additional_srun_opts``)."""
    env: tuple[tuple[str, str], ...] = field(default_factory=tuple)
    """More variables exported by the script."""


def time_minutes(seconds: float) -> int:
    """Slurm's ``--time`` in whole minutes for a limit in seconds (rounded up, plus one
    minute for the start, as hither 0.4.2 did)."""
    return max(1, math.ceil(seconds / 60) + 1)


def _header(opts: ScriptOptions, lines: list[str]) -> list[str]:
    head = ["#!/bin/bash", f"#SBATCH --job-name={opts.job_name}",
            f"#SBATCH --cpus-per-task={int(opts.cores)}"]
    if opts.time_limit:
        head.append(f"#SBATCH --time={time_minutes(opts.time_limit)}")
    head += [f"#SBATCH {line}" for line in lines]
    head += [f"#SBATCH {o}" for o in opts.sbatch_opts]
    head.append("")
    env = [*thread_env(opts.cores).items(), *opts.env]
    head += [f"export {k}={shlex.quote(v)}" for k, v in env]
    return head


#: how a node starts: the driver's ``hither`` first on ``sys.path`` (not through PYTHONPATH,
#: which would leak into the job's runtimes)
_BOOT = ("import sys; sys.path.insert(0, sys.argv[1]); "
         "from hither.handlers.slurm_node import main; sys.exit(main(sys.argv[2:]))")


def _sbatch_quote(value: str) -> str:
    """A value on an ``#SBATCH`` line (sbatch splits them at blanks outside quotes)."""
    if '"' in value or "\n" in value:
        raise ValueError(f"a path for Slurm cannot hold a quote or a newline: {value!r}")
    return f'"{value}"' if any(c.isspace() for c in value) else value


def runner_argv(opts: ScriptOptions, *args: str) -> list[str]:
    """The node-side command (see :mod:`hither.handlers.slurm_node`)."""
    return [*opts.python, "-c", _BOOT, opts.hither_root, *args]


def _runner(opts: ScriptOptions, *args: str) -> str:
    return " ".join(shlex.quote(a) for a in runner_argv(opts, *args))


def array_script(opts: ScriptOptions, batch: str, size: int, parallel: int | None) -> str:
    """The sbatch script of an array batch: task ``i`` runs the ``i``-th spec listed in
    ``<workdir>/<batch>/specs.txt``. ``parallel`` caps the tasks running at once (``%P``)."""
    if size < 1:
        raise ValueError(f"an array needs at least one task, got {size}")
    spec = f"0-{size - 1}" + (f"%{int(parallel)}" if parallel else "")
    log = f"{opts.workdir}/{batch}/%A_%a.log"
    lines = _header(opts, [f"--array={spec}", f"--output={_sbatch_quote(log)}",
                           "--open-mode=append"])
    lines.append(f"exec {_runner(opts, 'array', opts.workdir, batch)}")
    return "\n".join(lines) + "\n"


def thread_env(cores: int) -> dict[str, str]:
    """The thread-count variables of a job with ``cores`` CPUs (as hither 0.4.2 set them)."""
    n = str(int(cores))
    return {"OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n, "NUMEXPR_NUM_THREADS": n,
            "NUM_WORKERS": n}


def srun_argv(opts: ScriptOptions, batch: str, workers: int, idle: float) -> list[str]:
    """The command of a pilot batch: one ``srun`` (an allocation of ``workers`` tasks), each
    task a pilot worker taking jobs from ``<workdir>/<batch>/p<rank>/inbox``."""
    argv = ["srun", f"--job-name={opts.job_name}-{batch}", *opts.srun_opts, "-n", str(int(workers)),
            "-c", str(int(opts.cores))]
    if opts.time_limit:
        argv += ["--time", str(time_minutes(opts.time_limit))]
    return argv + runner_argv(opts, "pilot", opts.workdir, batch, "--idle", f"{idle:g}")


def local_pilot_argv(opts: ScriptOptions, batch: str, rank: int, idle: float) -> list[str]:
    """The command of one pilot worker on this machine (``use_slurm=False``)."""
    return runner_argv(opts, "pilot", opts.workdir, batch, "--rank", str(int(rank)),
                       "--idle", f"{idle:g}")


# ----------------------------------------------------------------------- command lines
def sbatch_argv(script_path: str) -> list[str]:
    """Submit a script; ``--parsable`` prints ``JOBID[;CLUSTER]``."""
    return ["sbatch", "--parsable", script_path]


def sacct_argv(job_ids: Iterable[str]) -> list[str]:
    """One accounting query for every job id (array tasks are listed one by one)."""
    return ["sacct", "-X", "-n", "-P", "--format=JobID,State,ExitCode",
            "-j", ",".join(job_ids)]


def squeue_argv(job_ids: Iterable[str]) -> list[str]:
    """One queue query for every job id (``-r``: one line per array task)."""
    return ["squeue", "-h", "-r", "-o", "%i|%T", "-j", ",".join(job_ids)]


def scancel_argv(task_ids: Iterable[str]) -> list[str]:
    """Cancel jobs or single array tasks (``JOBID_TASK``)."""
    return ["scancel", *task_ids]


def scancel_name_argv(name: str, user: str) -> list[str]:
    """Cancel the jobs of ``user`` called ``name`` (a pilot batch, pending or running)."""
    return ["scancel", f"--name={name}", f"--user={user}"]


# ----------------------------------------------------------------------- parsing
def parse_sbatch(output: str) -> str:
    """The job id printed by ``sbatch --parsable``."""
    first = output.strip().splitlines()[-1] if output.strip() else ""
    job_id = first.split(";", 1)[0].strip()
    if not job_id.isdigit():
        raise ValueError(f"sbatch printed {output.strip()[:200]!r}, not a job id")
    return job_id


def parse_config(output: str) -> dict[str, str]:
    """``scontrol show config`` as a dict (``"MaxArraySize": "1001"``)."""
    out: dict[str, str] = {}
    for line in output.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() and " " not in key.strip():
            out[key.strip()] = value.strip()
    return out


def config_int(config: dict[str, str], key: str) -> int | None:
    """An integer setting (None when absent, unlimited or not a number)."""
    value = config.get(key, "").split()[0] if config.get(key) else ""
    return int(value) if value.isdigit() else None


@dataclass(frozen=True, slots=True)
class TaskState:
    """What accounting says of one job or array task."""

    state: str
    """``PENDING``, ``RUNNING``, ``COMPLETED``, ``FAILED``, ``TIMEOUT``, ... (the first
    word of Slurm's state, without ``+``)."""
    exit_code: int | None = None
    signal: int | None = None

    @property
    def terminal(self) -> bool:
        """The task runs no more."""
        return self.state in TERMINAL_STATES


_ARRAY_RANGE = re.compile(r"^(\d+)_\[([0-9,\-]+)(?:%\d+)?\]$")


def _expand(ranges: str) -> list[int]:
    out: list[int] = []
    for part in ranges.split(","):
        lo, _, hi = part.partition("-")
        if lo.isdigit() and (not hi or hi.isdigit()):
            out.extend(range(int(lo), int(hi or lo) + 1))
    return out


def _state_of(state: str, exit_code: str = "") -> TaskState:
    word = state.split()[0].rstrip("+") if state.split() else "UNKNOWN"
    code, _, sig = exit_code.partition(":")
    return TaskState(word, int(code) if code.isdigit() else None,
                     int(sig) if sig.isdigit() else None)


def parse_sacct(output: str) -> dict[str, TaskState]:
    """``sacct -X -n -P --format=JobID,State,ExitCode`` rows by task id (``123``,
    ``123_4``); pending array ranges (``123_[5-9%2]``) are expanded."""
    out: dict[str, TaskState] = {}
    for line in output.splitlines():
        parts = line.strip().split("|")
        if len(parts) < 2 or not parts[0]:
            continue
        ts = _state_of(parts[1], parts[2] if len(parts) > 2 else "")
        m = _ARRAY_RANGE.match(parts[0])
        if m:
            for i in _expand(m.group(2)):
                out.setdefault(f"{m.group(1)}_{i}", ts)
        else:
            out[parts[0].split(".")[0]] = ts
    return out


def parse_squeue(output: str) -> dict[str, TaskState]:
    """``squeue -h -r -o '%i|%T'`` lines by task id."""
    out: dict[str, TaskState] = {}
    for line in output.splitlines():
        task, _, state = line.strip().partition("|")
        if task:
            m = _ARRAY_RANGE.match(task)
            for tid in ([f"{m.group(1)}_{i}" for i in _expand(m.group(2))] if m else [task]):
                out[tid] = _state_of(state)
    return out


_SUBMIT_LIMIT = re.compile(r"MaxSubmitJob|submit limit|MaxJobCount|temporarily unable|"
                           r"Resource temporarily unavailable", re.I)


def is_submit_limit(message: str) -> bool:
    """Whether ``sbatch``'s error says a submit limit (``MaxSubmitJobs`` of the user's
    association or QOS, the controller's ``MaxJobCount``) was reached: the job may be
    submitted once others have left."""
    return bool(_SUBMIT_LIMIT.search(message))


def split_batches(count: int, max_size: int) -> list[int]:
    """Sizes of the arrays for ``count`` tasks when one array holds at most ``max_size``."""
    if max_size < 1:
        raise ValueError(f"max_size must be at least 1, got {max_size}")
    sizes = [max_size] * (count // max_size)
    if count % max_size:
        sizes.append(count % max_size)
    return sizes


def task_id(job_id: str, index: int | None) -> str:
    """``JOBID_INDEX`` for an array task, ``JOBID`` for a plain job."""
    return job_id if index is None else f"{job_id}_{index}"


def job_of(task: str) -> str:
    """The job id of a task id (``123_4`` -> ``123``)."""
    return task.partition("_")[0]


def unique_jobs(tasks: Sequence[str]) -> list[str]:
    """The job ids of ``tasks``, each once, in order."""
    return list(dict.fromkeys(job_of(t) for t in tasks))
