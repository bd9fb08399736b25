"""Slurm's commands as one handler uses them, and the batched accounting check.

:class:`SlurmCommands` runs ``sbatch``, ``scancel``, ``sacct``/``squeue`` and
``scontrol`` (found on ``PATH``) and counts every call, so that tests and benchmarks can
check how often the cluster was asked. :class:`Watcher` asks about every outstanding
job of its handler in **one** call per interval: ``sacct`` when accounting is on,
``squeue`` when it is off; the interval starts at 2 s and grows to 60 s while nothing
changes, and starts over when something does. Each handler owns its watcher.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterable

from . import slurm_script as ss


class SlurmError(RuntimeError):
    """A Slurm command failed."""


class SlurmCommands:
    """Runs Slurm's command-line tools; ``calls`` counts them by name."""

    def __init__(self, timeout: float = 120.0) -> None:
        self.timeout = timeout
        self.calls: Counter[str] = Counter()
        self.call_times: dict[str, list[float]] = {}
        """When each command was run (``time.monotonic()``), by name."""
        self._lock = threading.Lock()
        self._config: dict[str, str] | None = None

    def run(self, argv: list[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run ``argv``; raises :class:`SlurmError` (with its stderr) when it fails."""
        with self._lock:
            self.calls[argv[0]] += 1
            self.call_times.setdefault(argv[0], []).append(time.monotonic())
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=self.timeout,
                               stdin=subprocess.DEVNULL)
        except FileNotFoundError as e:
            raise SlurmError(f"{argv[0]} is not on PATH: is this a Slurm login node? ({e})") \
                from None
        except subprocess.TimeoutExpired:
            raise SlurmError(f"{argv[0]} did not answer within {self.timeout:.0f} s") from None
        if check and r.returncode != 0:
            raise SlurmError(f"{' '.join(argv[:3])}... failed (exit {r.returncode}): "
                             f"{(r.stderr or r.stdout).strip()[-500:]}")
        return r

    def config(self) -> dict[str, str]:
        """``scontrol show config``, read once."""
        if self._config is None:
            self._config = ss.parse_config(self.run(["scontrol", "show", "config"]).stdout)
        return self._config

    def accounting(self) -> bool:
        """Whether ``sacct`` can be used (accounting storage is configured)."""
        kind = self.config().get("AccountingStorageType", "accounting_storage/none")
        return not kind.endswith("/none")

    def max_submit_jobs(self) -> int | None:
        """The submit limit of this user (``MaxSubmitJobs`` of the configuration, or of the
        user's association when accounting tells it); None when unlimited or unknown."""
        limit = ss.config_int(self.config(), "MaxSubmitJobs")
        if limit is not None or not self.accounting():
            return limit
        try:
            user = os.environ.get("USER") or str(os.getuid())
            r = self.run(["sacctmgr", "-n", "-P", "show", "assoc", f"user={user}",
                          "format=MaxSubmitJobs"], check=False)
        except SlurmError:
            return None
        values = [int(x) for x in r.stdout.split() if x.strip().isdigit()]
        return min(values) if values else None

    def sbatch(self, script: str) -> str:
        """Submit a script file; its job id."""
        return ss.parse_sbatch(self.run(ss.sbatch_argv(script)).stdout)

    def scancel(self, tasks: Iterable[str]) -> None:
        """Cancel jobs or array tasks (``JOBID_TASK``); errors are ignored (already gone)."""
        tasks = list(tasks)
        if tasks:
            try:
                self.run(ss.scancel_argv(tasks), check=False)
            except SlurmError:
                pass

    def scancel_name(self, name: str) -> None:
        """Cancel this user's jobs called ``name``."""
        import getpass

        try:
            self.run(ss.scancel_name_argv(name, getpass.getuser()), check=False)
        except SlurmError:
            pass

    def states(self, job_ids: list[str], use_sacct: bool) -> dict[str, ss.TaskState]:
        """The state of every task of ``job_ids``, in one call. ``squeue`` lists only
        pending and running tasks: a task it does not list has ended."""
        if use_sacct:
            return ss.parse_sacct(self.run(ss.sacct_argv(job_ids)).stdout)
        r = self.run(ss.squeue_argv(job_ids), check=False)
        if r.returncode != 0 and "Invalid job id" not in r.stderr:
            raise SlurmError(f"squeue failed (exit {r.returncode}): {r.stderr.strip()[-500:]}")
        return ss.parse_squeue(r.stdout)


class Backoff:
    """An interval that grows from ``start`` to ``limit`` while nothing changes."""

    def __init__(self, start: float = 2.0, limit: float = 60.0, factor: float = 1.5) -> None:
        self.start, self.limit, self.factor = start, limit, factor
        self.interval = start
        self.next_at = time.monotonic() + start

    def due(self, now: float | None = None) -> bool:
        return (time.monotonic() if now is None else now) >= self.next_at

    def done(self, changed: bool) -> None:
        """A check was made; ``changed``: it saw something new."""
        self.interval = self.start if changed else min(self.interval * self.factor, self.limit)
        self.next_at = time.monotonic() + self.interval

    def reset(self) -> None:
        """Something happened elsewhere (a submission): check soon."""
        self.interval = self.start
        self.next_at = min(self.next_at, time.monotonic() + self.start)


class Watcher:
    """The accounting check of one handler: which of its tasks ended, and how."""

    UNSEEN_CHECKS = 3
    """Checks in a row ``sacct`` may miss a submitted task (its database lags behind the
    controller, often by seconds) before ``squeue`` is asked instead, if for at least
    :attr:`unseen_after` seconds too."""

    def __init__(self, commands: SlurmCommands, start: float = 2.0, limit: float = 60.0
                 ) -> None:
        self.commands = commands
        self.backoff = Backoff(start, limit)
        self.use_sacct: bool | None = None
        self._last: dict[str, ss.TaskState] = {}
        self._unseen: dict[str, tuple[int, float]] = {}
        self.unseen_after = 60.0
        self.call_times: list[float] = []
        """When each check was made (``time.monotonic()``): one per interval at most."""

    def check(self, tasks: list[str]) -> dict[str, ss.TaskState]:
        """One call for ``tasks`` (``JOBID`` or ``JOBID_TASK``): their states now. With
        ``squeue`` a task not listed is reported as ``GONE`` (ended, no more known)."""
        if self.use_sacct is None:
            try:
                self.use_sacct = self.commands.accounting()
            except SlurmError:
                self.use_sacct = False
        jobs = ss.unique_jobs(tasks)
        self.call_times.append(time.monotonic())
        try:
            states = self.commands.states(jobs, self.use_sacct)
        except SlurmError:
            if not self.use_sacct:
                raise
            self.use_sacct = False  # accounting configured but not answering: the queue
            states = self.commands.states(jobs, False)
        out: dict[str, ss.TaskState] = {}
        unseen: dict[str, tuple[int, float]] = {}
        now = time.monotonic()
        for t in tasks:
            st = states.get(t)
            if st is None and "_" not in t:
                st = next((v for k, v in states.items() if ss.job_of(k) == t), None)
            if st is None and not self.use_sacct:
                st = ss.TaskState("GONE")
            if st is not None:
                out[t] = st
            else:
                count, since = self._unseen.get(t, (0, now))
                unseen[t] = (count + 1, since)
        self._unseen = unseen
        if any(n >= self.UNSEEN_CHECKS and now - since >= self.unseen_after
               for n, since in unseen.values()):
            # accounting does not know tasks the controller took: from now on the queue
            # answers (a task it does not list has ended), never a task waited for forever
            self.use_sacct = False
        changed = out != {t: self._last.get(t) for t in out}
        self._last = out
        self.backoff.done(changed)
        return out
