"""SlurmJobHandler: jobs on a Slurm cluster, in pilot batches or in job arrays.

Two modes, the same pipeline code:

``mode="pilot"`` (the default, hither 0.4.2's meaning)
    batches of warm workers inside one allocation: each batch is one ``srun -n
    num_workers_per_batch -c num_cores_per_job`` started by this process, each task a
    pilot worker that runs the jobs given to it, one after the other, on a warm worker
    (many small jobs). Workers end after ``idle_timeout`` seconds without a job; at most
    ``max_simultaneous_batches`` batches run at once. ``use_slurm=False`` runs the same
    workers on this machine (0.4.2's test mode).
``mode="array"``
    misses that become ready within a short window are packed into job arrays, one
    ``sbatch --array=0-N%P`` per batch (``P`` = ``num_workers_per_batch`` x
    ``max_simultaneous_batches``), split to respect ``MaxArraySize`` and the submit limit
    (``MaxSubmitJobs``); ``sbatch`` calls are throttled. Each task runs one job in its own
    process. Arrays do not depend on this process: killed, its arrays go on, and the
    next run of the pipeline takes their results from the job cache.

In both modes the job cache is the transport: the node looks the job up (a result
stored meanwhile is a hit), runs it, and writes its result and record into the store
itself (:mod:`hither.handlers.slurm_node`); this process sees completion through the
handler's working folder and asks Slurm's accounting about the jobs still out in one
``sacct`` (or ``squeue``) call per interval, from 2 s growing to 60 s while nothing
changes (:mod:`hither.handlers.slurm_watch`). A task that ended without an outcome is a
:class:`~hither.errors.WorkerCrashedError`, one that reached its time limit a
:class:`~hither.errors.JobTimeoutError`; a preempted task or a failed node is tried once
more; cancel is ``scancel`` of that task.
"""

from __future__ import annotations

import itertools
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, InvalidStateError, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from ..errors import JobCancelledException, JobTimeoutError, WorkerCrashedError
from ..launch import Launch, Outcome
from . import slurm_files as sf
from . import slurm_script as ss
from .base import JobHandler, completed_future, mark_io_thread
from .host import describe_exit
from .slurm_watch import SlurmCommands, SlurmError, Watcher

MODES = ("pilot", "array")
_names = itertools.count(1)


@dataclass(eq=False)
class _Task:
    launch: Launch
    future: Future[Outcome] = field(default_factory=Future)
    slurm: str | None = None
    """Array mode: the task id ``JOBID_INDEX`` running it."""
    pilot: _Pilot | None = None
    """Pilot mode: the worker it was given to."""
    inbox: Path | None = None
    spec_written: bool = False
    retries: int = 0
    ended: tuple[float, ss.TaskState] | None = None
    """When accounting first saw its task end without an outcome, and how."""


@dataclass(eq=False)
class _Pilot:
    batch: _Batch
    rank: int
    ready: bool = False
    gone: bool = False
    pid: int | None = None
    host: str = ""
    tasks: list[_Task] = field(default_factory=list)


@dataclass(eq=False)
class _Batch:
    name: str
    procs: list[subprocess.Popen] = field(default_factory=list)
    pilots: list[_Pilot] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    ready_at: float | None = None
    log: Any = None
    ended_at: float | None = None


class SlurmJobHandler(JobHandler):
    """Run jobs on a Slurm cluster (see the module docstring for the two modes).

    Args:
        working_dir: a folder on a filesystem the nodes share, for the handler's files
            (job specs, outcomes, scripts, Slurm's logs); a private subfolder is made for
            each handler and removed by :meth:`shutdown`. Default: ``hither/slurm`` in
            the user cache folder (``~/.cache``, shared on most clusters).
        num_workers_per_batch: pilot mode: workers (``srun`` tasks) per batch; array mode:
            with ``max_simultaneous_batches``, how many tasks of an array run at once.
        num_cores_per_job: CPUs per worker or task (``-c``), also set as
            ``OMP_NUM_THREADS``, ``MKL_NUM_THREADS``, ``NUMEXPR_NUM_THREADS``.
        use_slurm: False runs pilot workers on this machine (pilot mode only).
        time_limit_per_batch: seconds an allocation may run (``--time``); a job whose
            ``job_timeout`` does not fit in a batch's remaining time waits for a new one.
        max_simultaneous_batches: batches (allocations) at once; None: no limit.
        additional_srun_opts: more ``srun`` options (pilot mode), e.g.
            ``["--partition=debug"]``.
        mode: ``"pilot"`` or ``"array"``.
        additional_sbatch_opts: more ``#SBATCH`` options (array mode).
        idle_timeout: seconds a pilot worker waits for a job before it ends.
        batch_window: array mode: a batch is submitted once no new miss came for this many
            seconds (and at the latest ``4 x batch_window`` after its first).
        sbatch_interval: array mode: seconds between two ``sbatch`` calls, at least.
        max_submit_jobs: array mode: tasks out at once (default: Slurm's ``MaxSubmitJobs``
            for this user, when set).
        poll_interval: ``(first, longest)`` seconds between two accounting calls.
        outcome_grace: seconds an ended task's outcome may take to appear (a shared
            filesystem's caches) before the job is declared crashed.
    """

    def __init__(self, *, working_dir: str | os.PathLike[str] | None = None,
                 num_workers_per_batch: int = 14, num_cores_per_job: int = 2,
                 use_slurm: bool = True, time_limit_per_batch: float | None = None,
                 max_simultaneous_batches: int | None = None,
                 additional_srun_opts: Sequence[str] = (), mode: str = "pilot",
                 additional_sbatch_opts: Sequence[str] = (), idle_timeout: float = 30.0,
                 batch_window: float = 0.25, sbatch_interval: float = 1.0,
                 max_submit_jobs: int | None = None,
                 poll_interval: tuple[float, float] = (2.0, 60.0),
                 outcome_grace: float = 30.0) -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if not use_slurm and mode == "array":
            raise ValueError("use_slurm=False runs pilot workers on this machine; array mode "
                             "needs Slurm")
        if int(num_workers_per_batch) < 1 or int(num_cores_per_job) < 1:
            raise ValueError("num_workers_per_batch and num_cores_per_job must be at least 1")
        if max_simultaneous_batches is not None and int(max_simultaneous_batches) < 1:
            raise ValueError("max_simultaneous_batches must be at least 1 or None")
        self.mode = mode
        self.use_slurm = bool(use_slurm)
        self.num_workers_per_batch = int(num_workers_per_batch)
        self.num_cores_per_job = int(num_cores_per_job)
        self.time_limit_per_batch = time_limit_per_batch
        self.max_simultaneous_batches = max_simultaneous_batches
        self.additional_srun_opts = list(additional_srun_opts)
        self.additional_sbatch_opts = list(additional_sbatch_opts)
        self.idle_timeout = float(idle_timeout)
        self.batch_window = float(batch_window)
        self.sbatch_interval = float(sbatch_interval)
        self.outcome_grace = float(outcome_grace)
        self._max_submit = max_submit_jobs
        base = Path(working_dir) if working_dir is not None else _default_working_dir()
        base.mkdir(parents=True, exist_ok=True)
        self.working_dir = base
        self.layout = sf.Layout(base / f"hither-{socket.gethostname()}-{os.getpid()}-"
                                       f"{secrets.token_hex(4)}")
        self.layout.create()
        self.layout.write_env(list(sys.path), os.getcwd())
        from .hostproc import _interpreter

        self._opts = ss.ScriptOptions(
            python=tuple(_interpreter()), hither_root=str(Path(__file__).resolve().parents[2]),
            workdir=str(self.layout.root), cores=self.num_cores_per_job,
            time_limit=time_limit_per_batch,
            job_name=f"hither-{os.getpid()}-{secrets.token_hex(2)}", sbatch_opts=tuple(self.additional_sbatch_opts),
            srun_opts=tuple(self.additional_srun_opts), env=tuple(_node_env().items()))
        self.commands = SlurmCommands()
        self.watcher = Watcher(self.commands, *poll_interval)
        self._lock = threading.RLock()
        self._wake = threading.Event()
        self._tasks: dict[str, _Task] = {}
        self._pending: deque[_Task] = deque()
        self._first_pending: float | None = None
        self._last_pending = 0.0
        self._last_sbatch = 0.0
        self._batches: list[_Batch] = []
        self._seq = itertools.count()
        self._stop = False
        self._thread: threading.Thread | None = None
        self._io = ThreadPoolExecutor(max_workers=2, thread_name_prefix="hither-slurm-io",
                                      initializer=mark_io_thread)
        self._limits: tuple[int, int | None] | None = None
        self.sbatch_calls = 0
        self.arrays: list[tuple[str, int]] = []
        """Array mode: ``(job id, tasks)`` of every array submitted (for diagnostics)."""

    # ---------------------------------------------------------------- the interface
    def submit(self, launch: Launch) -> Future[Outcome]:
        if self._closed:
            return completed_future(self._closed_outcome(launch))
        task = _Task(launch)
        limit = self.time_limit_per_batch
        if self.mode == "pilot" and limit and launch.timeout and launch.timeout > limit:
            return completed_future(Outcome(False, error=JobTimeoutError(
                f"job {launch.label!r} has a job_timeout of {launch.timeout} s, longer than "
                f"the time_limit_per_batch of {limit} s of its SlurmJobHandler: no batch "
                "can take it. Raise time_limit_per_batch or lower job_timeout.",
                job_label=launch.label)))
        now = time.monotonic()
        with self._lock:
            self._tasks[launch.job_id] = task
            self._pending.append(task)
            if self._first_pending is None:
                self._first_pending = now
            self._last_pending = now
            self._start_thread()
        self._wake.set()
        return task.future

    def cancel(self, job_id: str) -> bool:
        with self._lock:
            task = self._tasks.get(job_id)
            if task is None or task.future.done():
                return False
            self._drop(task)
            slurm = task.slurm
            if task.slurm is not None or task.pilot is not None or task.spec_written:
                sf.touch(self.layout.cancel(job_id))
            if task.inbox is not None:
                sf.remove_quietly(task.inbox)
        out = self._cancelled_outcome(task.launch)
        if slurm is not None:
            self.commands.scancel([slurm])
            out.info["slurm_task"] = slurm
        _settle(task, out)
        return True

    def reset(self) -> None:
        """Cancel every job and stop every batch; the handler stays usable."""
        self._cancel_all("was cancelled by hi.reset()")
        self._stop_batches(kill=True)

    def shutdown(self, wait: bool = True, *, cancel: bool = False) -> None:
        self._closed = True
        if cancel:
            self._cancel_all("was cancelled: its handler was shut down")
        elif wait:
            while True:
                with self._lock:
                    if not self._tasks:
                        break
                time.sleep(0.05)
        with self._lock:
            self._stop = True
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(10)
        self._stop_batches(kill=cancel)
        self._io.shutdown(wait=False)
        with self._lock:
            outstanding = any(not t.future.done() for t in self._tasks.values())
        if not outstanding:
            shutil.rmtree(self.layout.root, ignore_errors=True)

    def __repr__(self) -> str:
        return (f"<SlurmJobHandler mode={self.mode!r} use_slurm={self.use_slurm} "
                f"workers={self.num_workers_per_batch}{' closed' if self._closed else ''}>")

    @property
    def calls(self) -> dict[str, int]:
        """How many times each Slurm command was run by this handler."""
        return dict(self.commands.calls)

    # ---------------------------------------------------------------- bookkeeping (lock held)
    def _drop(self, task: _Task) -> None:
        self._tasks.pop(task.launch.job_id, None)
        try:
            self._pending.remove(task)
        except ValueError:
            pass
        if task.pilot is not None and task in task.pilot.tasks:
            task.pilot.tasks.remove(task)

    def _cancel_all(self, why: str) -> None:
        with self._lock:
            tasks = list(self._tasks.values())
            for task in tasks:
                self._drop(task)
                if task.slurm is not None or task.pilot is not None:
                    sf.touch(self.layout.cancel(task.launch.job_id))
            slurm = [t.slurm for t in tasks if t.slurm is not None]
        self.commands.scancel(slurm) if slurm else None
        for task in tasks:
            _settle(task, self._cancelled_outcome(task.launch, why))

    def _start_thread(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="hither-slurm", daemon=True)
            self._thread.start()

    # ---------------------------------------------------------------- the loop
    def _run(self) -> None:
        mark_io_thread()
        poll = 0.02
        while True:
            with self._lock:
                if self._stop:
                    return
            try:
                changed = self._turn()
            except Exception as e:  # noqa: BLE001 - keep serving; fail what was in hand
                import traceback

                traceback.print_exc()
                self._fail_all(e)
                changed = True
            poll = 0.02 if changed else min(poll * 1.5, 0.5)
            wait = poll
            with self._lock:
                if self._first_pending is not None and self.mode == "array":
                    now = time.monotonic()
                    wait = min(wait, max(0.0, self._flush_at(now) - now))
            self._wake.wait(wait)
            self._wake.clear()

    def _turn(self) -> bool:
        changed = self._collect()
        if self.mode == "array":
            changed |= self._flush_array()
        else:
            changed |= self._pilots()
        changed |= self._account()
        return changed

    def _fail_all(self, error: BaseException) -> None:
        with self._lock:
            tasks = list(self._tasks.values())
            for task in tasks:
                self._drop(task)
        for task in tasks:
            _settle(task, Outcome(False, error=error))

    # ---------------------------------------------------------------- outcomes
    def _collect(self) -> bool:
        """Outcomes written by the nodes (completion is seen through the working folder)."""
        try:
            names = os.listdir(self.layout.out)
        except OSError:
            return False
        done: list[tuple[_Task, dict[str, Any]]] = []
        for name in names:
            if not name.endswith(".pkl"):
                continue
            path = self.layout.out / name
            job_id = name[:-4]
            with self._lock:
                task = self._tasks.get(job_id)
            if task is None:
                sf.remove_quietly(path)  # a cancelled job's, or a stale one
                continue
            data = sf.read_outcome(path)
            if data is None:
                continue  # not whole yet
            sf.remove_quietly(path)
            with self._lock:
                if self._tasks.get(job_id) is not task:
                    continue
                self._drop(task)
            self._clean(task)
            done.append((task, data))
        for task, data in done:
            self._settle_later(task, partial(_decode, task, data))
        return bool(done)

    def _settle_later(self, task: _Task, make: Callable[[], Outcome]) -> None:
        try:
            self._io.submit(_settle, task, make)
        except RuntimeError:  # shutting down
            _settle(task, make)

    def _clean(self, task: _Task) -> None:
        sf.remove_quietly(self.layout.spec(task.launch.job_id))

    def _ended(self, task: _Task, outcome: Outcome) -> None:
        """A task ended without an outcome: settle it (lock not held)."""
        with self._lock:
            if self._tasks.get(task.launch.job_id) is not task:
                return
            self._drop(task)
        self._clean(task)
        _settle(task, outcome)

    # ---------------------------------------------------------------- specs
    def _write_spec(self, task: _Task) -> None:
        if not task.spec_written:
            sf.write_spec(self.layout, node_spec(task.launch))
            task.spec_written = True

    def _recheck(self, task: _Task) -> Outcome | None:
        """The job cache's answer for a job about to be submitted (a hit: it was stored
        meanwhile, e.g. by an earlier run's array)."""
        rec = task.launch.recording
        if rec is None or rec.settings.force_run:
            return None
        from ..cacheflow import lookup

        hit = lookup(rec.keyinfo, rec.settings)
        if hit is not None:
            hit.info.update(cache_hit=True, recorded=True)
        return hit

    # ---------------------------------------------------------------- array mode
    def _flush_at(self, now: float) -> float:
        """When the misses waiting here go to Slurm (lock held): once none came for
        ``batch_window`` (at the latest ``4 x batch_window`` after the first), at once when
        they fill an array, and never sooner than ``sbatch_interval`` after the last
        ``sbatch``."""
        first = self._first_pending if self._first_pending is not None else now
        quiet = min(self._last_pending + self.batch_window, first + 4 * self.batch_window)
        if self._limits is not None and len(self._pending) >= self._limits[0]:
            quiet = now
        return max(quiet, self._last_sbatch + self.sbatch_interval)

    def _limits_now(self) -> tuple[int, int | None]:
        if self._limits is None:
            try:
                config = self.commands.config()
            except SlurmError:
                config = {}
            size = ss.config_int(config, "MaxArraySize") or ss.DEFAULT_MAX_ARRAY_SIZE
            submit = self._max_submit
            if submit is None:
                try:
                    submit = self.commands.max_submit_jobs()
                except SlurmError:
                    submit = None
            total = ss.config_int(config, "MaxJobCount")
            if total is not None:
                submit = total if submit is None else min(submit, total)
            self._limits = (size, submit)
        return self._limits

    def _flush_array(self) -> bool:
        with self._lock:
            if not self._pending:
                return False
            max_size, max_submit = self._limits_now()
            now = time.monotonic()
            if now < self._flush_at(now):
                return False
            queued = sum(1 for t in self._tasks.values() if t.slurm is not None)
            room = max_size if max_submit is None else min(max_size, max_submit - queued)
            if room <= 0:
                return False
            batch: list[_Task] = []
            while self._pending and len(batch) < room:
                batch.append(self._pending.popleft())
            if not self._pending:
                self._first_pending = None
        hits: list[tuple[_Task, Outcome]] = []
        todo: list[_Task] = []
        for task in batch:
            if task.future.done():
                continue
            hit = self._recheck(task)
            if hit is not None:
                hits.append((task, hit))
            else:
                try:
                    self._write_spec(task)
                except Exception as e:  # noqa: BLE001 - e.g. a runtime that cannot be pickled
                    hits.append((task, Outcome(False, error=e)))
                    continue
                todo.append(task)
        for task, out in hits:
            self._ended(task, out)
        if todo:
            self._submit_array(todo)
        return True

    def _submit_array(self, todo: list[_Task]) -> None:
        name = f"a{next(_names):05d}"
        folder = self.layout.batch(name)
        folder.mkdir(mode=0o700)
        (folder / "specs.txt").write_text("".join(t.launch.job_id + "\n" for t in todo))
        parallel = self.num_workers_per_batch * (self.max_simultaneous_batches or 1)
        timeouts = [t.launch.timeout for t in todo]
        opts = self._opts
        if not self.time_limit_per_batch and all(timeouts):
            # a backstop: a job is stopped at its job_timeout by its own process
            opts = _replace(opts, time_limit=max(t for t in timeouts if t) + 60)
        script = folder / "script.sh"
        script.write_text(ss.array_script(opts, name, len(todo), parallel))
        self._last_sbatch = time.monotonic()
        try:
            job = self.commands.sbatch(str(script))
        except SlurmError as e:
            for task in todo:
                self._ended(task, Outcome(False, error=WorkerCrashedError(
                    f"job {task.launch.label!r} could not be submitted to Slurm: {e}",
                    job_label=task.launch.label)))
            return
        self.sbatch_calls += 1
        self.arrays.append((job, len(todo)))
        cancelled = []
        with self._lock:
            for i, task in enumerate(todo):
                task.slurm = ss.task_id(job, i)
                if self._tasks.get(task.launch.job_id) is not task:
                    cancelled.append(task.slurm)  # cancelled while being submitted
                else:
                    _mark_running(task)
        self.commands.scancel(cancelled) if cancelled else None
        self.watcher.backoff.reset()

    # ---------------------------------------------------------------- accounting
    def _account(self) -> bool:
        """One accounting call for every task still out, when due; maps how they ended."""
        with self._lock:
            tasks = [t for t in self._tasks.values() if t.slurm is not None]
        if not tasks or not self.watcher.backoff.due():
            return self._graceful_ends(tasks)
        try:
            states = self.watcher.check([t.slurm for t in tasks if t.slurm])
        except SlurmError as e:
            import warnings

            warnings.warn(f"SlurmJobHandler: cannot ask Slurm about its jobs: {e}",
                          RuntimeWarning, stacklevel=1)
            return False
        now = time.monotonic()
        retry: list[_Task] = []
        for task in tasks:
            st = states.get(task.slurm or "")
            if st is None or not (st.terminal or st.state == "GONE"):
                continue
            if task.ended is None:
                task.ended = (now, st)
            if st.state in ss.RETRY_STATES and task.retries < 1:
                retry.append(task)
                continue
            out = self._state_outcome(task, st)
            if out is not None:
                self._ended(task, out)
        if retry:
            with self._lock:
                for task in retry:
                    task.retries += 1
                    task.slurm, task.ended = None, None
                    if self._tasks.get(task.launch.job_id) is task:
                        self._pending.appendleft(task)
                if self._first_pending is None:
                    self._first_pending = time.monotonic()
                self._last_pending = time.monotonic()
        return self._graceful_ends(tasks) or bool(retry)

    def _graceful_ends(self, tasks: list[_Task]) -> bool:
        """Tasks that ended cleanly without an outcome, past the grace period."""
        now = time.monotonic()
        changed = False
        for task in tasks:
            if task.ended is None or task.ended[1].state not in ("COMPLETED", "GONE"):
                continue
            if now - task.ended[0] < self.outcome_grace:
                continue
            if self.layout.outcome(task.launch.job_id).exists():
                continue  # collected next turn
            st = task.ended[1]
            self._ended(task, Outcome(False, error=WorkerCrashedError(
                f"the Slurm task {task.slurm} running job {task.launch.label!r} ended "
                f"({st.state}) without an outcome: the process running the job died. "
                f"The task's log: {self._task_log(task)}",
                job_label=task.launch.label)))
            changed = True
        return changed

    def _state_outcome(self, task: _Task, st: ss.TaskState) -> Outcome | None:
        label, tid = task.launch.label, task.slurm
        if st.state in ("COMPLETED", "GONE"):
            return None  # the outcome may still be on its way (see _graceful_ends)
        if self.layout.outcome(task.launch.job_id).exists():
            return None  # it ended after writing its outcome: collected next turn
        info = {"slurm_task": tid, "slurm_state": st.state, "exit_code": st.exit_code}
        if st.state == "TIMEOUT":
            return Outcome(False, error=JobTimeoutError(
                f"the Slurm task {tid} running job {label!r} reached its time limit and was "
                "stopped. Raise time_limit_per_batch (or the job_timeout it follows).",
                job_label=label), info=info)
        if st.state == "CANCELLED":
            return Outcome(False, error=JobCancelledException(
                f"job {label!r} was cancelled outside hither: its Slurm task {tid} was "
                "cancelled (scancel, or an administrator)"), info=info)
        if st.state == "FAILED":
            code = -st.signal if st.signal else st.exit_code
            why = describe_exit(code)
        elif st.state == "OUT_OF_MEMORY":
            why = ("it ran out of memory: ask Slurm for more (additional_sbatch_opts="
                   "['--mem=...'])")
        elif st.state in ss.RETRY_STATES:
            why = f"{st.state} twice (it was submitted again after the first)"
        else:
            why = f"Slurm ended it ({st.state})"
        return Outcome(False, error=WorkerCrashedError(
            f"the Slurm task {tid} running job {label!r} ended {st.state}: {why}. Other jobs "
            f"go on. The task's log: {self._task_log(task)}", job_label=label), info=info)

    def _task_log(self, task: _Task) -> str:
        job, _, index = (task.slurm or "").partition("_")
        for name in sorted(os.listdir(self.layout.root)):
            log = self.layout.batch(name) / f"{job}_{index}.log"
            if name.startswith("a") and log.exists():
                return str(log)
        return f"{self.layout.root}/a*/{job}_{index}.log"

    # ---------------------------------------------------------------- pilot mode
    def _pilots(self) -> bool:
        changed = self._watch_batches()
        with self._lock:
            if not self._pending:
                return changed
            live = [b for b in self._batches if any(not p.gone for p in b.pilots)]
            ready = [p for b in live for p in b.pilots if p.ready and not p.gone]
            now = time.monotonic()
            assign: list[tuple[_Task, _Pilot]] = []
            for task in list(self._pending):
                candidates = [p for p in ready if len(p.tasks) < 2 and self._fits(p, task, now)]
                if not candidates:
                    continue
                pilot = min(candidates, key=lambda p: len(p.tasks))
                self._pending.remove(task)
                pilot.tasks.append(task)
                task.pilot = pilot
                assign.append((task, pilot))
            starting = any(not any(p.ready for p in b.pilots) for b in live)
            need = bool(self._pending) and not starting and (
                self.max_simultaneous_batches is None
                or len(live) < self.max_simultaneous_batches)
            if not self._pending:
                self._first_pending = None
        for task, pilot in assign:
            self._give(task, pilot)
        if need:
            self._start_batch()
        return changed or bool(assign) or need

    def _fits(self, pilot: _Pilot, task: _Task, now: float) -> bool:
        limit, timeout = self.time_limit_per_batch, task.launch.timeout
        if not limit or not timeout or pilot.batch.ready_at is None:
            return True
        return timeout + (now - pilot.batch.ready_at) <= limit + 5

    def _give(self, task: _Task, pilot: _Pilot) -> None:
        hit = self._recheck(task)
        if hit is not None:
            self._ended(task, hit)
            return
        try:
            self._write_spec(task)
        except Exception as e:  # noqa: BLE001
            self._ended(task, Outcome(False, error=e))
            return
        inbox = self.layout.inbox(pilot.batch.name, pilot.rank)
        path = inbox / f"{next(self._seq):09d}.{task.launch.job_id}"
        with self._lock:
            if self._tasks.get(task.launch.job_id) is not task:
                return  # cancelled meanwhile
            task.inbox = path
        try:
            sf.create_empty(path)
        except OSError:  # the worker's batch is gone: the job waits for another worker
            with self._lock:
                if task in pilot.tasks:
                    pilot.tasks.remove(task)
                task.pilot = task.inbox = None
                if self._tasks.get(task.launch.job_id) is task:
                    self._pending.appendleft(task)
            return
        _mark_running(task)

    def _start_batch(self) -> None:
        name = f"b{next(_names):05d}"
        folder = self.layout.batch(name)
        folder.mkdir(mode=0o700)
        batch = _Batch(name)
        n = self.num_workers_per_batch
        for rank in range(n):
            os.makedirs(self.layout.inbox(name, rank), mode=0o700)
            batch.pilots.append(_Pilot(batch, rank))
        env = {**os.environ, **ss.thread_env(self.num_cores_per_job)}
        batch.log = open(folder / "pilots.log", "ab")  # noqa: SIM115 - closed with the batch
        try:
            if self.use_slurm:
                argvs = [ss.srun_argv(self._opts, name, n, self.idle_timeout)]
            else:
                argvs = [ss.local_pilot_argv(self._opts, name, r, self.idle_timeout)
                         for r in range(n)]
            for argv in argvs:
                batch.procs.append(subprocess.Popen(
                    argv, stdin=subprocess.DEVNULL, stdout=batch.log, stderr=batch.log,
                    env=env, start_new_session=True))
        except OSError as e:
            batch.log.close()
            for p in batch.pilots:
                p.gone = True
            for proc in batch.procs:
                _kill(proc)
            self._fail_pending(WorkerCrashedError(
                f"could not start a batch of workers ({'srun' if self.use_slurm else 'local'})"
                f": {e}"))
            return
        with self._lock:
            self._batches.append(batch)

    def _fail_pending(self, error: BaseException) -> None:
        with self._lock:
            tasks = list(self._pending)
            for task in tasks:
                self._drop(task)
        for task in tasks:
            _settle(task, Outcome(False, error=error))

    def _watch_batches(self) -> bool:
        """Workers that became ready or ended; jobs of ended workers are given again
        (not started) or fail (started, no outcome)."""
        changed = False
        with self._lock:
            batches = list(self._batches)
        for batch in batches:
            alive = [p.poll() is None for p in batch.procs]
            for pilot in batch.pilots:
                if pilot.gone:
                    continue
                folder = self.layout.pilot(batch.name, pilot.rank)
                if not pilot.ready and (folder / "ready").exists():
                    pilot.ready, changed = True, True
                    batch.ready_at = batch.ready_at or time.monotonic()
                    words = (folder / "ready").read_text().split()
                    pilot.host = words[0] if words else ""
                proc_alive = alive[0] if self.use_slurm else alive[pilot.rank]
                if (folder / "gone").exists() or not proc_alive:
                    pilot.gone, changed = True, True
                    self._pilot_gone(pilot, batch)
            if all(p.gone for p in batch.pilots):
                if batch.ended_at is None:
                    batch.ended_at = time.monotonic()
                if any(alive) and time.monotonic() - batch.ended_at < 10:
                    continue  # srun ends once its tasks have ended
                with self._lock:
                    if batch in self._batches:
                        self._batches.remove(batch)
                self._end_batch(batch, kill=True)
        return changed

    def _pilot_gone(self, pilot: _Pilot, batch: _Batch) -> None:
        again: list[_Task] = []
        crashed: list[_Task] = []
        with self._lock:
            for task in list(pilot.tasks):
                if self._tasks.get(task.launch.job_id) is not task:
                    continue
                if self.layout.outcome(task.launch.job_id).exists():
                    continue
                if task.inbox is not None and task.inbox.exists():
                    sf.remove_quietly(task.inbox)
                    again.append(task)
                else:
                    crashed.append(task)
            pilot.tasks.clear()
            for task in reversed(again):
                task.pilot, task.inbox = None, None
                self._pending.appendleft(task)
        for task in crashed:
            code = batch.procs[0].poll() if self.use_slurm else batch.procs[pilot.rank].poll()
            self._ended(task, Outcome(False, error=WorkerCrashedError(
                f"the pilot worker {pilot.rank} of batch {batch.name} (on {pilot.host or '?'})"
                f" ended while running job {task.launch.label!r}: "
                f"{describe_exit(code) if code is not None else 'it stopped'}. Other jobs "
                "go on.", job_label=task.launch.label)))

    def _stop_batches(self, kill: bool) -> None:
        """Tell every batch to stop; with ``kill``, cancel them at once."""
        with self._lock:
            batches = list(self._batches)
            self._batches.clear()
        for batch in batches:
            try:
                sf.touch(self.layout.stop(batch.name))
            except OSError:
                pass
        deadline = time.monotonic() + (0.2 if kill else 5.0)
        for batch in batches:
            for proc in batch.procs:
                try:
                    proc.wait(max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    pass
            self._end_batch(batch, kill=True)

    def _end_batch(self, batch: _Batch, kill: bool) -> None:
        """Make sure a batch's processes and allocation are gone. An ``srun`` is never
        killed by a signal alone: its allocation would stay (its job is cancelled)."""
        if any(p.poll() is None for p in batch.procs) and kill:
            if self.use_slurm:
                self.commands.scancel_name(f"{self._opts.job_name}-{batch.name}")
            for proc in batch.procs:
                if not self.use_slurm:
                    _kill(proc)
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    _kill(proc)
        if batch.log is not None:
            batch.log.close()
            batch.log = None


# ---------------------------------------------------------------------------- helpers
def _default_working_dir() -> Path:
    import platformdirs

    return platformdirs.user_cache_path("hither") / "slurm"


def _node_env() -> dict[str, str]:
    """Variables the nodes get from the driver, besides Slurm's own environment export:
    where SIFs built from image URIs are (they are built on the submitting host)."""
    from ..runtimes.apptainer import sif_dir

    return {"HITHER_SIF_DIR": str(sif_dir())}


def _replace(opts: ss.ScriptOptions, **changes: Any) -> ss.ScriptOptions:
    import dataclasses

    return dataclasses.replace(opts, **changes)


def _kill(proc: subprocess.Popen) -> None:
    """SIGKILL a batch process and its process group, and reap it."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except OSError:
        pass
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        pass


def node_spec(launch: Launch) -> sf.NodeSpec:
    """What a node needs to run ``launch`` and record its result."""
    cache = None
    rec = launch.recording
    if rec is not None and rec.settings.job_cache is not None:
        jc = rec.settings.job_cache
        s = rec.settings
        cache = sf.CacheSpec(root=str(jc.path), readonly=bool(jc.readonly),
                             keyinfo=rec.keyinfo, force_run=s.force_run,
                             rerun_failing=s.rerun_failing, cache_failing=s.cache_failing,
                             name=rec.fdef.name, version=rec.fdef.version)
    return sf.NodeSpec(
        job_id=launch.job_id, label=launch.label, fid=launch.fid, fn=launch.fn_pickle(),
        kwargs_pickle=launch.pickled_kwargs() if launch.runtime is None else None,
        args_manifest=launch.args_manifest, timeout=launch.timeout,
        sys_path=tuple(launch.sys_path), runtime=launch.runtime, code=launch.code,
        store_root=str(launch.store.root) if launch.store is not None else None,
        cache=cache, handler="SlurmJobHandler")


def _decode(task: _Task, data: dict[str, Any]) -> Outcome:
    """The Outcome of an outcome file (on an I/O thread: decoding may take a while)."""
    launch = task.launch
    info = dict(data.get("info") or {})
    if task.slurm:
        info["slurm_task"] = task.slurm
    if data.get("kind") == "cached":
        rec = launch.recording
        from ..cacheflow import lookup

        hit = lookup(rec.keyinfo, rec.settings) if rec is not None else None
        if hit is None:
            return Outcome(False, error=WorkerCrashedError(
                f"the node found job {launch.label!r} in the job cache, but this process "
                "cannot read that result; run the job again", job_label=launch.label))
        hit.info.update(info, cache_hit=True, recorded=True)
        return hit
    lines = [tuple(x) for x in data.get("lines") or []]
    if data.get("ok") and data.get("manifest") is not None:
        from .. import values

        value = values.decode(data["manifest"], launch.store)
        out = Outcome(True, value=value, console=lines, start_time=data.get("start"),
                      end_time=data.get("end"))
    else:
        from .host import decode_outcome

        out = decode_outcome(launch, bool(data.get("ok")), data.get("payload"), lines,
                             data.get("start") or 0.0, data.get("end") or 0.0)
    out.info.update(info)
    prefix = launch.stream_prefix()
    if prefix is not None:  # show_console: the lines of a job come when it ends
        from ..progress import echo

        for _t, text, _err in out.console:
            echo(prefix + text + "\n")
    return out


def _mark_running(task: _Task) -> None:
    try:
        if not task.future.running():
            task.future.set_running_or_notify_cancel()
    except RuntimeError:  # completed meanwhile
        pass


def _settle(task: _Task, outcome: Outcome | Callable[[], Outcome]) -> None:
    if callable(outcome):
        try:
            outcome = outcome()
        except Exception as e:  # noqa: BLE001 - a result that cannot be read fails the job
            outcome = Outcome(False, error=e)
    try:
        task.future.set_result(outcome)
    except InvalidStateError:
        pass
