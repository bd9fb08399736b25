"""Array mode of :class:`~hither.handlers.slurm.SlurmJobHandler`: misses packed into job
arrays (one ``sbatch --array=0-N%P`` per batch), and what Slurm's accounting says of
the tasks: how a task that ended without an outcome ended."""

from __future__ import annotations

import dataclasses
import itertools
import os
import time
import warnings
from typing import TYPE_CHECKING

from ..errors import JobCancelledException, JobTimeoutError, WorkerCrashedError
from ..launch import Outcome
from . import slurm_files as sf
from . import slurm_script as ss
from .host import describe_exit
from .slurm_task import Task, mark_running
from .slurm_watch import SlurmError

if TYPE_CHECKING:
    from .slurm import SlurmJobHandler

_names = itertools.count(1)

#: seconds Slurm may refuse arrays for a submit limit, while none of the handler's own
#: tasks are out, before their jobs fail
SUBMIT_PATIENCE = 600.0



class ArrayMode:
    """The array batches of one handler ``h`` (its lock guards this state too)."""

    def __init__(self, h: SlurmJobHandler, max_submit: int | None) -> None:
        self.h = h
        self._max_submit = max_submit
        self._limits: tuple[int, int | None] | None = None
        self._last_sbatch = 0.0
        self._refused_since: float | None = None

    def turn(self) -> bool:
        """Submit what is due; map the tasks that ended without an outcome."""
        return self._flush_array() | self._account()

    def wait(self, now: float) -> float | None:
        """Seconds until the misses waiting here are due (None: none wait); lock held."""
        if self.h._first_pending is None or self._room() == 0:
            return None  # nothing waits, or it waits for tasks to end (the loop's pace)
        return max(0.0, self._flush_at(now) - now)

    def _room(self) -> int | None:
        """How many tasks the next array may hold (lock held; None: limits not read yet)."""
        if self._limits is None:
            return None
        max_size, max_submit = self._limits
        if max_submit is None:
            return max_size
        queued = sum(1 for t in self.h._tasks.values() if t.slurm is not None)
        return max(0, min(max_size, max_submit - queued))

    def _flush_at(self, now: float) -> float:
        """When the misses waiting here go to Slurm (lock held): once none came for
        ``batch_window`` (at the latest ``4 x batch_window`` after the first), at once when
        they fill an array, and never sooner than ``sbatch_interval`` after the last
        ``sbatch``."""
        h = self.h
        first = h._first_pending if h._first_pending is not None else now
        quiet = min(h._last_pending + h.batch_window, first + 4 * h.batch_window)
        if self._limits is not None and len(h._pending) >= self._limits[0]:
            quiet = now
        return max(quiet, self._last_sbatch + h.sbatch_interval)

    def _limits_now(self) -> tuple[int, int | None]:
        h = self.h
        if self._limits is None:
            try:
                config = h.commands.config()
            except SlurmError:
                config = {}
            size = ss.config_int(config, "MaxArraySize") or ss.DEFAULT_MAX_ARRAY_SIZE
            submit = self._max_submit
            if submit is None:
                try:
                    submit = h.commands.max_submit_jobs()
                except SlurmError:
                    submit = None
            total = ss.config_int(config, "MaxJobCount")
            if total is not None:
                submit = total if submit is None else min(submit, total)
            self._limits = (size, submit)
        return self._limits

    def _flush_array(self) -> bool:
        h = self.h
        with h._lock:
            if not h._pending:
                return False
        self._limits_now()  # scontrol, once: not under the lock .run() needs
        with h._lock:
            if not h._pending:
                return False
            now = time.monotonic()
            if now < self._flush_at(now):
                return False
            room = self._room() or 0
            if room <= 0:
                return False
            batch: list[Task] = []
            while h._pending and len(batch) < room:
                batch.append(h._pending.popleft())
            if not h._pending:
                h._first_pending = None
        hits: list[tuple[Task, Outcome]] = []
        todo: list[Task] = []
        for task in batch:
            if task.future.done():
                continue
            hit = h._recheck(task)
            if hit is not None:
                hits.append((task, hit))
            else:
                try:
                    h._write_spec(task)
                except Exception as e:  # noqa: BLE001 - e.g. a runtime that cannot be pickled
                    hits.append((task, Outcome(False, error=e)))
                    continue
                todo.append(task)
        for task, out in hits:
            h._ended(task, out)
        if todo:
            self._submit_array(todo)
        return True

    def _submit_array(self, todo: list[Task]) -> None:
        h = self.h
        name = f"a{next(_names):05d}"
        folder = h.layout.batch(name)
        folder.mkdir(mode=0o700)
        (folder / "specs.txt").write_text("".join(t.launch.job_id + "\n" for t in todo))
        parallel = h.num_workers_per_batch * (h.max_simultaneous_batches or 1)
        timeouts = [t.launch.timeout for t in todo]
        opts = h._opts
        if not h.time_limit_per_batch and all(timeouts):
            # a backstop: a job is stopped at its job_timeout by its own process
            opts = dataclasses.replace(opts, time_limit=max(t for t in timeouts if t) + 60)
        if opts.time_limit:
            sf.write_limit(folder, 60 * ss.time_minutes(opts.time_limit))
        script = folder / "script.sh"
        script.write_text(ss.array_script(opts, name, len(todo), parallel))
        try:
            job = h.commands.sbatch(str(script))
        except SlurmError as e:
            self._last_sbatch = time.monotonic()  # the interval counts from a call's end
            if ss.is_submit_limit(str(e)) and self._requeue(todo):
                return
            for task in todo:
                h._ended(task, Outcome(False, error=WorkerCrashedError(
                    f"job {task.launch.label!r} could not be submitted to Slurm: {e}",
                    job_label=task.launch.label)))
            return
        self._last_sbatch = time.monotonic()
        h.sbatch_calls += 1
        self._refused_since = None
        h.arrays.append((job, len(todo)))
        cancelled = []
        with h._lock:
            for i, task in enumerate(todo):
                task.slurm = ss.task_id(job, i)
                task.batch = folder
                if h._tasks.get(task.launch.job_id) is not task:
                    cancelled.append(task.slurm)  # cancelled while being submitted
                else:
                    mark_running(task)
        h.commands.scancel(cancelled) if cancelled else None
        h.watcher.backoff.reset()

    def _requeue(self, todo: list[Task]) -> bool:
        """Slurm refused an array for a submit limit: the array waits for jobs to end
        and is tried again, smaller (no larger than this handler's tasks out now, or half
        the refused array). False when Slurm has refused for ``SUBMIT_PATIENCE`` seconds
        while none of this handler's tasks were out: the jobs fail."""
        h = self.h
        now = time.monotonic()
        with h._lock:
            out = sum(1 for t in h._tasks.values() if t.slurm is not None)
            # at most what Slurm holds of this handler now, or half the refused array
            self._limits = (self._limits_now()[0], out or max(1, len(todo) // 2))
            if out:
                self._refused_since = None
            elif self._refused_since is None:
                self._refused_since = now
            elif now - self._refused_since > SUBMIT_PATIENCE:
                return False
            for task in reversed(todo):
                if h._tasks.get(task.launch.job_id) is task:
                    h._pending.appendleft(task)
            h._first_pending = h._first_pending or now
            h._last_pending = now
        self._last_sbatch = time.monotonic() + max(1.0, 4 * h.sbatch_interval)  # not at once
        return True

    # ---------------------------------------------------------------- accounting
    def _account(self) -> bool:
        """One accounting call for every task still out, when due; maps how they ended."""
        h = self.h
        with h._lock:
            tasks = [t for t in h._tasks.values() if t.slurm is not None]
        if not tasks or not h.watcher.backoff.due():
            return self._graceful_ends(tasks)
        try:
            states = h.watcher.check([t.slurm for t in tasks if t.slurm])
        except SlurmError as e:
            warnings.warn(f"SlurmJobHandler: cannot ask Slurm about its jobs: {e}",
                          RuntimeWarning, stacklevel=1)
            return False
        now = time.monotonic()
        retry: list[Task] = []
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
                h._ended(task, out)
        if retry:
            with h._lock:
                for task in retry:
                    task.retries += 1
                    task.slurm, task.ended = None, None
                    if h._tasks.get(task.launch.job_id) is task:
                        h._pending.appendleft(task)
                if h._first_pending is None:
                    h._first_pending = time.monotonic()
                h._last_pending = time.monotonic()
        return self._graceful_ends(tasks) or bool(retry)

    def _graceful_ends(self, tasks: list[Task]) -> bool:
        """Tasks that ended cleanly without an outcome, past the grace period."""
        h = self.h
        now = time.monotonic()
        changed = False
        for task in tasks:
            if task.ended is None or task.ended[1].state not in ("COMPLETED", "GONE"):
                continue
            if now - task.ended[0] < h.outcome_grace:
                continue
            if h.layout.outcome(task.launch.job_id).exists():
                continue  # collected next turn
            st = task.ended[1]
            if st.state == "GONE" and self._timed_out(task):
                # the queue does not say how a task ended; its node does
                timed_out = self._state_outcome(task, ss.TaskState("TIMEOUT"))
                if timed_out is not None:
                    h._ended(task, timed_out)
                    changed = True
                    continue
            h._ended(task, Outcome(False, error=WorkerCrashedError(
                f"the Slurm task {task.slurm} running job {task.launch.label!r} ended "
                f"({st.state}) without an outcome: the process running the job died. "
                f"The task's log: {self._task_log(task)}",
                job_label=task.launch.label)))
            changed = True
        return changed

    def _timed_out(self, task: Task) -> bool:
        """Whether the node noted that Slurm stopped the task at its time limit."""
        if task.batch is None or task.slurm is None:
            return False
        index = task.slurm.partition("_")[2]
        return index.isdigit() and sf.timed_out(task.batch, int(index))

    def _state_outcome(self, task: Task, st: ss.TaskState) -> Outcome | None:
        h = self.h
        label, tid = task.launch.label, task.slurm
        if st.state in ("COMPLETED", "GONE"):
            return None  # the outcome may still be on its way (see _graceful_ends)
        if h.layout.outcome(task.launch.job_id).exists():
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

    def _task_log(self, task: Task) -> str:
        h = self.h
        job, _, index = (task.slurm or "").partition("_")
        for name in sorted(os.listdir(h.layout.root)):
            log = h.layout.batch(name) / f"{job}_{index}.log"
            if name.startswith("a") and log.exists():
                return str(log)
        return f"{h.layout.root}/a*/{job}_{index}.log"
