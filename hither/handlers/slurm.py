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

import os
import secrets
import shutil
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

from ..errors import JobTimeoutError, WorkerCrashedError
from ..launch import Launch, Outcome
from . import slurm_files as sf
from . import slurm_script as ss
from .base import JobHandler, completed_future, mark_io_thread
from .slurm_array import ArrayMode
from .slurm_pilot import PilotMode
from .slurm_task import Task, settle
from .slurm_watch import SlurmCommands, Watcher

MODES = ("pilot", "array")


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
        sbatch_interval: array mode: seconds from the end of one ``sbatch`` call to the next,
            at least.
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
            job_name=f"hither-{os.getpid()}-{secrets.token_hex(2)}",
            sbatch_opts=tuple(self.additional_sbatch_opts),
            srun_opts=tuple(self.additional_srun_opts), env=tuple(_node_env().items()))
        self.commands = SlurmCommands()
        self.watcher = Watcher(self.commands, *poll_interval)
        self._lock = threading.RLock()
        self._wake = threading.Event()
        self._tasks: dict[str, Task] = {}
        self._pending: deque[Task] = deque()
        self._first_pending: float | None = None
        self._last_pending = 0.0
        self._stop = False
        self._thread: threading.Thread | None = None
        self._io = ThreadPoolExecutor(max_workers=2, thread_name_prefix="hither-slurm-io",
                                      initializer=mark_io_thread)
        self.sbatch_calls = 0
        self.arrays: list[tuple[str, int]] = []
        """Array mode: ``(job id, tasks)`` of every array submitted (for diagnostics)."""
        self._array = ArrayMode(self, max_submit_jobs) if mode == "array" else None
        self._pilot = PilotMode(self) if mode == "pilot" else None

    # ---------------------------------------------------------------- the interface
    def submit(self, launch: Launch) -> Future[Outcome]:
        if self._closed:
            return completed_future(self._closed_outcome(launch))
        task = Task(launch)
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
        settle(task, out)
        return True

    def reset(self) -> None:
        """Cancel every job and stop every batch; the handler stays usable."""
        self._cancel_all("was cancelled by hi.reset()")
        if self._pilot is not None:
            self._pilot.stop(kill=True)

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
        if self._pilot is not None:
            self._pilot.stop(kill=cancel)
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
    def _drop(self, task: Task) -> None:
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
            settle(task, self._cancelled_outcome(task.launch, why))

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
            if self._array is not None:
                with self._lock:
                    due = self._array.wait(time.monotonic())
                if due is not None:
                    wait = min(wait, due)
            self._wake.wait(wait)
            self._wake.clear()

    def _turn(self) -> bool:
        changed = self._collect()
        if self._array is not None:
            changed |= self._array.turn()
        if self._pilot is not None:
            changed |= self._pilot.turn()
        return changed

    def _fail_all(self, error: BaseException) -> None:
        with self._lock:
            tasks = list(self._tasks.values())
            for task in tasks:
                self._drop(task)
        for task in tasks:
            settle(task, Outcome(False, error=error))

    # ---------------------------------------------------------------- outcomes
    def _collect(self) -> bool:
        """Outcomes written by the nodes (completion is seen through the working folder)."""
        try:
            names = os.listdir(self.layout.out)
        except OSError:
            return False
        done: list[tuple[Task, dict[str, Any]]] = []
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

    def _settle_later(self, task: Task, make: Callable[[], Outcome]) -> None:
        try:
            self._io.submit(settle, task, make)
        except RuntimeError:  # shutting down
            settle(task, make)

    def _clean(self, task: Task) -> None:
        sf.remove_quietly(self.layout.spec(task.launch.job_id))

    def _ended(self, task: Task, outcome: Outcome) -> None:
        """A task ended without an outcome: settle it (lock not held)."""
        with self._lock:
            if self._tasks.get(task.launch.job_id) is not task:
                return
            self._drop(task)
        self._clean(task)
        settle(task, outcome)

    # ---------------------------------------------------------------- specs
    def _write_spec(self, task: Task) -> None:
        if not task.spec_written:
            sf.write_spec(self.layout, node_spec(task.launch))
            task.spec_written = True

    def _recheck(self, task: Task) -> Outcome | None:
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

# ---------------------------------------------------------------------------- helpers
def _default_working_dir() -> Path:
    import platformdirs

    return platformdirs.user_cache_path("hither") / "slurm"


def _node_env() -> dict[str, str]:
    """Variables the nodes get from the driver, besides Slurm's own environment export:
    where SIFs built from image URIs are (they are built on the submitting host)."""
    from ..runtimes.apptainer import sif_dir

    return {"HITHER_SIF_DIR": str(sif_dir())}


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


def _decode(task: Task, data: dict[str, Any]) -> Outcome:
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
