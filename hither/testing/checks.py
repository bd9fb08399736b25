"""Helpers of the contract suite: exact comparison of values, polling, console capture."""

from __future__ import annotations

import concurrent.futures as cf
import math
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

import hither as hi

from .cases import Case

WAIT = 60
"""Seconds a test waits for a result: reached only when something hangs."""


def qualname(v: Any) -> str:
    """The module-qualified name of the type of ``v``."""
    return f"{type(v).__module__}.{type(v).__qualname__}"


def assert_same(got: Any, want: Any, where: str = "result") -> None:
    """Equal values of exactly the same types, recursively (a tuple stays a tuple, an
    int key stays an int, an array keeps its dtype, shape and order)."""
    assert type(got) is type(want), f"{where}: got {qualname(got)}, want {qualname(want)}"
    if isinstance(want, np.ndarray):
        assert (got.dtype, got.shape) == (want.dtype, want.shape), \
            f"{where}: {got.dtype}{got.shape} != {want.dtype}{want.shape}"
        assert np.array_equal(got, want), f"{where}: {got!r} != {want!r}"
    elif isinstance(want, dict):
        assert list(got) == list(want), f"{where}: keys {list(got)!r} != {list(want)!r}"
        for (kg, vg), (kw, vw) in zip(got.items(), want.items(), strict=True):
            assert type(kg) is type(kw), f"{where}: key {kg!r} is a {type(kg).__name__}"
            assert_same(vg, vw, f"{where}[{kw!r}]")
    elif isinstance(want, (list, tuple)):
        assert len(got) == len(want), f"{where}: length {len(got)} != {len(want)}"
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            assert_same(g, w, f"{where}[{i}]")
    elif isinstance(want, float) and math.isnan(want):
        assert math.isnan(got), f"{where}: {got!r} is not nan"
    else:
        assert got == want, f"{where}: {got!r} != {want!r}"


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0,
               interval: float = 0.02) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)


def started_and_running(job: hi.Job, case: Case, worker: bool = True) -> None:
    """Wait until ``job`` runs and (``worker``) its worker exists (the inline handler runs
    it only while a thread waits for it: one is started here)."""
    if case.inline:
        def wait() -> None:
            try:
                job.exception()
            except cf.CancelledError:
                pass

        threading.Thread(target=wait, daemon=True).start()
    assert wait_until(lambda: job.get_status() is hi.JobStatus.RUNNING, WAIT), \
        f"the job never started: {job.get_status()}"
    if worker and not case.in_process:
        assert wait_until(case.workers, WAIT, interval=0.2), "no worker was started for the job"


def streamed(capfd, want: int, timeout: float = 5.0) -> list[str]:
    """Lines written to this process's stdout/stderr; waits for ``want`` of them that
    contain "line" (a worker handler's threads print them a moment later)."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while True:
        out, err = capfd.readouterr()
        seen += (out + err).splitlines()
        if sum("line" in x for x in seen) >= want or time.monotonic() > deadline:
            return seen
        time.sleep(0.05)


def console(job: hi.Job) -> list[tuple[str, bool]]:
    """The job's captured console lines as (text, stderr) pairs."""
    return [(x["text"], x["stderr"]) for x in job.console_lines()]


