"""Pilot mode of :class:`~hither.handlers.slurm.SlurmJobHandler`: batches of warm workers,
each batch one ``srun`` (or, with ``use_slurm=False``, processes on this machine) started
by the driver; jobs are given to the workers through their inbox folders."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import WorkerCrashedError
from ..launch import Outcome
from . import slurm_files as sf
from . import slurm_script as ss
from .host import describe_exit
from .slurm_task import Task, mark_running, settle

if TYPE_CHECKING:
    from .slurm import SlurmJobHandler

_names = itertools.count(1)


@dataclass(eq=False)
class Pilot:
    batch: Batch
    rank: int
    ready: bool = False
    gone: bool = False
    pid: int | None = None
    host: str = ""
    tasks: list[Task] = field(default_factory=list)


@dataclass(eq=False)
class Batch:
    name: str
    procs: list[subprocess.Popen] = field(default_factory=list)
    pilots: list[Pilot] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    ready_at: float | None = None
    log: Any = None
    ended_at: float | None = None


class PilotMode:
    """The pilot batches of one handler ``h`` (its lock guards this state too)."""

    def __init__(self, h: SlurmJobHandler) -> None:
        self.h = h
        self._batches: list[Batch] = []
        self._seq = itertools.count()

    def turn(self) -> bool:
        """Watch the batches, give waiting jobs to free workers, start a batch if needed."""
        return self._pilots()

    def stop(self, kill: bool) -> None:
        """Tell every batch to stop; with ``kill``, cancel them at once."""
        self._stop_batches(kill)

    def _pilots(self) -> bool:
        h = self.h
        changed = self._watch_batches()
        with h._lock:
            if not h._pending:
                return changed
            live = [b for b in self._batches if any(not p.gone for p in b.pilots)]
            ready = [p for b in live for p in b.pilots if p.ready and not p.gone]
            now = time.monotonic()
            assign: list[tuple[Task, Pilot]] = []
            for task in list(h._pending):
                candidates = [p for p in ready if len(p.tasks) < 2 and self._fits(p, task, now)]
                if not candidates:
                    continue
                pilot = min(candidates, key=lambda p: len(p.tasks))
                h._pending.remove(task)
                pilot.tasks.append(task)
                task.pilot = pilot
                assign.append((task, pilot))
            starting = any(not any(p.ready for p in b.pilots) for b in live)
            need = bool(h._pending) and not starting and (
                h.max_simultaneous_batches is None
                or len(live) < h.max_simultaneous_batches)
            if not h._pending:
                h._first_pending = None
        for task, pilot in assign:
            self._give(task, pilot)
        if need:
            self._start_batch()
        return changed or bool(assign) or need

    def _fits(self, pilot: Pilot, task: Task, now: float) -> bool:
        h = self.h
        limit, timeout = h.time_limit_per_batch, task.launch.timeout
        if not limit or not timeout or pilot.batch.ready_at is None:
            return True
        return timeout + (now - pilot.batch.ready_at) <= limit + 5

    def _give(self, task: Task, pilot: Pilot) -> None:
        h = self.h
        hit = h._recheck(task)
        if hit is not None:
            h._ended(task, hit)
            return
        try:
            h._write_spec(task)
        except Exception as e:  # noqa: BLE001
            h._ended(task, Outcome(False, error=e))
            return
        inbox = h.layout.inbox(pilot.batch.name, pilot.rank)
        path = inbox / f"{next(self._seq):09d}.{task.launch.job_id}"
        with h._lock:
            if h._tasks.get(task.launch.job_id) is not task:
                return  # cancelled meanwhile
            task.inbox = path
        try:
            sf.create_empty(path)
        except OSError:  # the worker's batch is gone: the job waits for another worker
            with h._lock:
                if task in pilot.tasks:
                    pilot.tasks.remove(task)
                task.pilot = task.inbox = None
                if h._tasks.get(task.launch.job_id) is task:
                    h._pending.appendleft(task)
            return
        mark_running(task)

    def _start_batch(self) -> None:
        h = self.h
        name = f"b{next(_names):05d}"
        folder = h.layout.batch(name)
        folder.mkdir(mode=0o700)
        batch = Batch(name)
        n = h.num_workers_per_batch
        for rank in range(n):
            os.makedirs(h.layout.inbox(name, rank), mode=0o700)
            batch.pilots.append(Pilot(batch, rank))
        env = {**os.environ, **ss.thread_env(h.num_cores_per_job)}
        batch.log = open(folder / "pilots.log", "ab")  # noqa: SIM115 - closed with the batch
        try:
            if h.use_slurm:
                argvs = [ss.srun_argv(h._opts, name, n, h.idle_timeout)]
            else:
                argvs = [ss.local_pilot_argv(h._opts, name, r, h.idle_timeout)
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
                f"could not start a batch of workers ({'srun' if h.use_slurm else 'local'})"
                f": {e}"))
            return
        with h._lock:
            self._batches.append(batch)

    def _fail_pending(self, error: BaseException) -> None:
        h = self.h
        with h._lock:
            tasks = list(h._pending)
            for task in tasks:
                h._drop(task)
        for task in tasks:
            settle(task, Outcome(False, error=error))

    def _watch_batches(self) -> bool:
        """Workers that became ready or ended; jobs of ended workers are given again
        (not started) or fail (started, no outcome)."""
        h = self.h
        changed = False
        with h._lock:
            batches = list(self._batches)
        for batch in batches:
            alive = [p.poll() is None for p in batch.procs]
            for pilot in batch.pilots:
                if pilot.gone:
                    continue
                folder = h.layout.pilot(batch.name, pilot.rank)
                if not pilot.ready and (folder / "ready").exists():
                    pilot.ready, changed = True, True
                    batch.ready_at = batch.ready_at or time.monotonic()
                    words = (folder / "ready").read_text().split()
                    pilot.host = words[0] if words else ""
                proc_alive = alive[0] if h.use_slurm else alive[pilot.rank]
                if (folder / "gone").exists() or not proc_alive:
                    pilot.gone, changed = True, True
                    self._pilot_gone(pilot, batch)
            if all(p.gone for p in batch.pilots):
                if batch.ended_at is None:
                    batch.ended_at = time.monotonic()
                if any(alive) and time.monotonic() - batch.ended_at < 10:
                    continue  # srun ends once its tasks have ended
                with h._lock:
                    if batch in self._batches:
                        self._batches.remove(batch)
                self._end_batch(batch, kill=True)
        return changed

    def _pilot_gone(self, pilot: Pilot, batch: Batch) -> None:
        h = self.h
        again: list[Task] = []
        crashed: list[Task] = []
        with h._lock:
            for task in list(pilot.tasks):
                if h._tasks.get(task.launch.job_id) is not task:
                    continue
                if h.layout.outcome(task.launch.job_id).exists():
                    continue
                if task.inbox is not None and task.inbox.exists():
                    sf.remove_quietly(task.inbox)
                    again.append(task)
                else:
                    crashed.append(task)
            pilot.tasks.clear()
            for task in reversed(again):
                task.pilot, task.inbox = None, None
                h._pending.appendleft(task)
        for task in crashed:
            code = batch.procs[0].poll() if h.use_slurm else batch.procs[pilot.rank].poll()
            h._ended(task, Outcome(False, error=WorkerCrashedError(
                f"the pilot worker {pilot.rank} of batch {batch.name} (on {pilot.host or '?'})"
                f" ended while running job {task.launch.label!r}: "
                f"{describe_exit(code) if code is not None else 'it stopped'}. Other jobs "
                "go on.", job_label=task.launch.label)))

    def _stop_batches(self, kill: bool) -> None:
        """Tell every batch to stop; with ``kill``, cancel them at once."""
        h = self.h
        with h._lock:
            batches = list(self._batches)
            self._batches.clear()
        for batch in batches:
            try:
                sf.touch(h.layout.stop(batch.name))
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

    def _end_batch(self, batch: Batch, kill: bool) -> None:
        """Make sure a batch's processes and allocation are gone. An ``srun`` is never
        killed by a signal alone: its allocation would stay (its job is cancelled)."""
        h = self.h
        if any(p.poll() is None for p in batch.procs) and kill:
            if h.use_slurm:
                h.commands.scancel_name(f"{h._opts.job_name}-{batch.name}")
            for proc in batch.procs:
                if not h.use_slurm:
                    _kill(proc)
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    _kill(proc)
        if batch.log is not None:
            batch.log.close()
            batch.log = None


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
