"""What a SlurmJobHandler keeps of one job: its launch, its future, where it went."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..launch import Launch, Outcome
from . import slurm_script as ss
from .base import complete_future


@dataclass(eq=False)
class Task:
    launch: Launch
    future: Future[Outcome] = field(default_factory=Future)
    slurm: str | None = None
    """Array mode: the task id ``JOBID_INDEX`` running it."""
    batch: Path | None = None
    """Array mode: the folder of its batch."""
    pilot: Any = None
    """Pilot mode: the worker it was given to (a ``slurm_pilot.Pilot``)."""
    inbox: Path | None = None
    spec_written: bool = False
    retries: int = 0
    ended: tuple[float, ss.TaskState] | None = None
    """When accounting first saw its task end without an outcome, and how."""


def mark_running(task: Task) -> None:
    """Note that the job left the driver (its future becomes RUNNING)."""
    try:
        if not task.future.running():
            task.future.set_running_or_notify_cancel()
    except RuntimeError:  # completed meanwhile
        pass


def settle(task: Task, outcome: Outcome | Callable[[], Outcome]) -> None:
    """Complete the job's future (an outcome made by a call is made here)."""
    complete_future(task.future, outcome)
