"""Does preparing one job (hashing a 2 GB hi.File input) delay other jobs?

A handler's loop only moves bytes; a job's key is computed on the scheduler's own threads
when its inputs become known. This measures, on ``ParallelJobHandler(2)`` with a job cache:

* the overshoot of a 0.5 s ``job_timeout`` (time from the function's start to the job's
  end, minus 0.5 s), and
* the latency of tiny jobs (submit to result),

first with nothing else going on, then while another job's 2 GB File input is hashed and
snapshotted into the store (the job becomes ready when its upstream job finishes, so its key
is computed on a scheduler thread). Target: the hashing delays the timeout and the tiny
jobs by at most 50 ms. There is no peer tool for this: the reference is the same
measurement without the large input.

    python benchmarks/interference.py [--quick] [--size-gb 2]
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import Target, fmt_s, print_targets  # noqa: E402
from _jobs import file_size, inc, sleep_for  # noqa: E402

import hither as hi  # noqa: E402

TIMEOUT = 0.5


def make_big_file(path: str, size: int) -> None:
    block = os.urandom(1 << 20)
    with open(path, "wb") as f:
        for _ in range(size >> 20):
            f.write(block)


def one_round(handler: hi.ParallelJobHandler, timer: hi.ParallelJobHandler,
              cache: hi.JobCache, big: str | None,
              seed: int) -> tuple[float, list[float], float | None]:
    """(timeout overshoot, tiny job latencies, seconds the big job took to be planned)"""
    hashed_at: list[float] = []
    with hi.Config(job_handler=handler, job_cache=cache):
        if big is not None:
            up = inc.run(x=seed)  # the big job becomes ready when this one finishes
            t_up = time.perf_counter()
            bigjob = file_size.run(f=hi.File(big), after=up)
            bigjob.add_done_callback(lambda j: hashed_at.append(time.perf_counter()))
        with hi.Config(job_handler=timer, job_timeout=TIMEOUT, force_run=True):
            timed = sleep_for.run(seconds=5)
        latencies = []
        t_end = time.perf_counter() + 3.0
        i = 0
        while time.perf_counter() < t_end:
            t0 = time.perf_counter()
            with hi.Config(force_run=True):
                inc.run(x=seed * 100000 + i).result(timeout=60)
            latencies.append(time.perf_counter() - t0)
            i += 1
            time.sleep(0.02)
        try:
            timed.result(timeout=60)
        except hi.JobTimeoutError:
            pass
        info = timed.get_runtime_info()
        overshoot = info["end_time"] - info["start_time"] - TIMEOUT
        planned = None
        if big is not None:
            bigjob.result(timeout=600)
            planned = hashed_at[0] - t_up if hashed_at else None
    return overshoot, latencies, planned


def main() -> None:
    import argparse

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--size-gb", type=float, default=None)
    p.add_argument("--repeats", type=int, default=None)
    args = p.parse_args()
    size_gb = args.size_gb or (0.5 if args.quick else 2.0)
    repeats = args.repeats or (2 if args.quick else 3)
    tmp = tempfile.mkdtemp(prefix="hither-interference-")
    try:
        big = os.path.join(tmp, "big.bin")
        print(f"writing a {size_gb:g} GB input file ...", flush=True)
        make_big_file(big, int(size_gb * (1 << 30)))
        handler = hi.ParallelJobHandler(1)  # the tiny jobs and the big one
        timer = hi.ParallelJobHandler(1)  # the job with a timeout
        with hi.Config(job_handler=handler):  # warm: workers started
            inc.run(x=0).result()
        with hi.Config(job_handler=timer):
            inc.run(x=0).result()
        rows = {}
        for label, path in (("alone", None), ("while hashing", big)):
            overshoots, lats, planned = [], [], []
            for r in range(repeats):
                cache = hi.JobCache(path=os.path.join(tmp, f"store-{label[0]}-{r}"))
                from hither.hashing import clear_file_hash_memo

                clear_file_hash_memo(persistent=True)  # hash the file for real each round
                o, lat, pl = one_round(handler, timer, cache, path, r)
                overshoots.append(o)
                lats += lat
                if pl is not None:
                    planned.append(pl)
                shutil.rmtree(os.path.join(tmp, f"store-{label[0]}-{r}"), ignore_errors=True)
            rows[label] = (overshoots, lats, planned)
            print(f"  {label}: timeout overshoot best {fmt_s(min(overshoots))} worst "
                  f"{fmt_s(max(overshoots))}; tiny job latency median "
                  f"{fmt_s(statistics.median(lats))}, max {fmt_s(max(lats))}"
                  + (f"; big job ready after {fmt_s(min(planned))}" if planned else ""),
                  flush=True)
        handler.shutdown()
        timer.shutdown()
        alone, busy = rows["alone"], rows["while hashing"]
        d_timeout = max(busy[0]) - max(alone[0])
        d_latency = max(busy[1]) - max(alone[1])
        print()
        print(f"{size_gb:g} GB File input hashed and snapshotted while other jobs run "
              f"(two ParallelJobHandler(1), {repeats} rounds each)")
        print(f"{'':<24}{'timeout overshoot (worst)':>28}{'tiny job latency (max)':>26}")
        for label, (o, lat, _) in rows.items():
            print(f"{label:<24}{fmt_s(max(o)):>28}{fmt_s(max(lat)):>26}")
        print_targets([
            Target("extra delay of a 0.5 s job_timeout while hashing", d_timeout, 0.050, "s"),
            Target("extra latency of tiny jobs while hashing", d_latency, 0.050, "s"),
        ])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
