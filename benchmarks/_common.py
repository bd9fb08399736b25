"""Timing helpers and table printing shared by the benchmark scripts.

Every benchmark times each tool several times (``--repeats``) and reports the best and
the median: the machine these run on is shared and noisy, the best run is the closest to
what the code costs, the median says how stable that is. Benchmarks report, they never
gate: scripts exit 0 even when a target is missed.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field

now = time.perf_counter


# ---------------------------------------------------------------------------- arguments
def parse_args(description: str, argv: list[str] | None = None) -> argparse.Namespace:
    """``--quick`` (smaller, faster run) and ``--repeats N`` (default 5, quick: 3)."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="a smaller, faster run")
    p.add_argument("--repeats", type=int, default=None,
                   help="timed repeats per tool (default 5, with --quick 3)")
    args = p.parse_args(argv)
    if args.repeats is None:
        args.repeats = 3 if args.quick else 5
    args.repeats = max(1, args.repeats)
    return args


# ---------------------------------------------------------------------------- environment
def _version(mod: str) -> str:
    try:
        from importlib.metadata import version

        return version(mod)
    except Exception:  # noqa: BLE001
        return "-"


def machine_speed(rounds: int = 5) -> float:
    """Best time, in seconds, of a fixed pure-Python workload (calls, dict and string
    work, as a cache hit does). On a shared virtual machine the speed of one core moves
    by up to 2x from one hour to the next; printed beside the figures of a run, it says
    how fast one core ran Python then. It does not see a slow disk or time spent waiting
    (the wall time of a replay can exceed its CPU time while this stays low): compare
    the CPU times a benchmark prints as well."""
    def work() -> None:
        d: dict[str, int] = {}
        for i in range(100_000):
            k = f"k{i % 997}"
            d[k] = d.get(k, 0) + len(k)

    best = float("inf")
    for _ in range(rounds):
        t = now()
        work()
        best = min(best, now() - t)
    return best


def print_header(title: str, args: argparse.Namespace) -> None:
    """Title, sizes, the versions that matter for reading the figures and the machine's
    speed at the start of the run (see :func:`machine_speed`)."""
    print("=" * 78)
    print(title + ("   [--quick]" if args.quick else ""))
    print(f"python {platform.python_version()} on {platform.system()} {platform.machine()}, "
          f"{os.cpu_count()} cores; repeats={args.repeats} (best and median reported)")
    vers = ", ".join(f"{m} {_version(m)}" for m in
                     ("hither", "joblib", "distributed", "ray", "diskcache", "numpy"))
    print(vers)
    print(f"machine speed reference (see _common.machine_speed): {fmt_s(machine_speed())}")
    print("=" * 78, flush=True)


def quiet_logs() -> None:
    """Silence the chatty loggers of dask/ray so the tables stay readable."""
    import logging
    import warnings

    for name in ("distributed", "ray", "tornado", "asyncio"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=ResourceWarning)
    warnings.filterwarnings("ignore", message=".*Port 8787.*")


# ---------------------------------------------------------------------------- timing
@dataclass
class Row:
    """One tool's timings for a benchmark of ``n`` jobs."""

    tool: str
    n: int = 1
    times: list[float] = field(default_factory=list)
    note: str = ""
    skipped: str | None = None

    @property
    def best(self) -> float:
        return min(self.times)

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def per_job(self) -> float:
        """Best total time / number of jobs."""
        return self.best / self.n

    @property
    def ok(self) -> bool:
        return self.skipped is None and bool(self.times)


def measure(tool: str, once: Callable[[], float], *, repeats: int, n: int = 1,
            warmup: int = 1, note: str = "", verbose: bool = True) -> Row:
    """Call ``once()`` ``warmup`` + ``repeats`` times; it returns the seconds it timed.

    ``once`` does its own timing so setup/teardown can be left out. An exception turns
    the row into a skipped one with the reason (the benchmark goes on).
    """
    row = Row(tool, n=n, note=note)
    try:
        for _ in range(warmup):
            once()
        for _ in range(repeats):
            row.times.append(float(once()))
    except Exception as e:  # noqa: BLE001 - a failing peer is reported, not fatal
        row.skipped = f"{type(e).__name__}: {e}"[:200]
        if os.environ.get("BENCH_DEBUG"):
            traceback.print_exc()
    if verbose:
        if row.ok:
            print(f"  {tool}: best {fmt_s(row.best)}, median {fmt_s(row.median)} "
                  f"({', '.join(f'{t:.3f}' for t in row.times)})", flush=True)
        else:
            print(f"  {tool}: SKIPPED ({row.skipped})", flush=True)
    return row


def skipped(tool: str, why: str, n: int = 1) -> Row:
    print(f"  {tool}: SKIPPED ({why})", flush=True)
    return Row(tool, n=n, skipped=why)


def timed(fn: Callable[[], object]) -> Callable[[], float]:
    """Wrap ``fn`` so that calling it returns its wall time."""
    def once() -> float:
        t = now()
        fn()
        return now() - t

    return once


# ---------------------------------------------------------------------------- formatting
def fmt_s(seconds: float) -> str:
    """A duration with a unit that keeps 3 significant figures readable."""
    if seconds >= 1.0:
        return f"{seconds:.3f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds * 1e6:.1f} µs"


def print_table(title: str, rows: list[Row], baseline: str | None = None,
                per_job_label: str = "per job") -> None:
    """tool | best | median | per job | ratio vs the baseline row (default: the first).

    The ratio is tool time / baseline time on the best runs: > 1 means slower than the
    baseline (hither), < 1 faster.
    """
    base = None
    for r in rows:
        if r.ok and (baseline is None or r.tool == baseline):
            base = r
            break
    print()
    print(title)
    head = (f"{'tool':<46} {'best':>10} {'median':>10} {per_job_label:>11} "
            f"{'vs hither':>9}")
    print(head)
    print("-" * len(head))
    for r in rows:
        if not r.ok:
            print(f"{r.tool:<46} SKIPPED: {r.skipped}")
            continue
        ratio = f"{r.best / base.best:.2f}x" if base is not None and base.best > 0 else "-"
        print(f"{r.tool:<46} {fmt_s(r.best):>10} {fmt_s(r.median):>10} "
              f"{fmt_s(r.per_job):>11} {ratio:>9}" + (f"  {r.note}" if r.note else ""))
    sys.stdout.flush()


@dataclass
class Target:
    """A performance target: ``measured <= limit`` (or ``>=`` when ``at_least``)."""

    name: str
    measured: float | None
    limit: float
    unit: str = ""
    at_least: bool = False

    @property
    def status(self) -> str:
        if self.measured is None:
            return "N/A"
        ok = self.measured >= self.limit if self.at_least else self.measured <= self.limit
        return "PASS" if ok else "FAIL"


def _fmt_val(v: float, unit: str) -> str:
    if unit == "s":
        return fmt_s(v)
    if unit == "x":
        return f"{v:.2f}x"
    return f"{v:.4g}{unit}"


def print_targets(targets: list[Target]) -> None:
    """One line per target with the measured value and PASS / FAIL (N/A: peer skipped)."""
    print()
    print("Targets")
    for t in targets:
        op = ">=" if t.at_least else "<="
        meas = "n/a" if t.measured is None else _fmt_val(t.measured, t.unit)
        print(f"  [{t.status}] {t.name}: measured {meas} (target {op} "
              f"{_fmt_val(t.limit, t.unit)})")
    print(flush=True)


def find(rows: list[Row], tool: str) -> Row | None:
    for r in rows:
        if r.tool == tool and r.ok:
            return r
    return None
