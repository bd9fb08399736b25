"""Slurm: N misses through SlurmJobHandler's array mode, and end to end vs submitit.

(a) Submission and polling: N misses of ``sleep(0)`` created at once go to Slurm in how
many ``sbatch`` calls (target: N = 1000 in <= 2), and the accounting check makes how many
calls per interval (target: <= 1; every call asks about all outstanding tasks at once).
The handler counts every Slurm command it runs (``SlurmJobHandler.calls``).

(b) End to end, N x ``sleep(0)`` as job arrays: hither ``SlurmJobHandler(mode="array")``
(``.run()`` per job, then wait all; no job cache, so every run runs) vs submitit's
``AutoExecutor.map_array`` (the same function object, ``slurm_array_parallelism`` equal to
hither's ``%P``), on the same cluster, one CPU per task. Report: best wall time of each
and the ratio hither / submitit (target <= 1.0).

    python benchmarks/cluster_slurm.py [--quick] [--repeats N]     # needs Slurm (sinfo)

Slurm starts about 8 tasks at once on the CI node (CPUs=8 over 2 real cores), each task a
fresh Python process: (b) measures mostly Slurm and process start-up.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time

import _common as C
from _jobs import sleep_for

PARALLEL = 8


def bench_submission(n: int, workdir: str) -> dict:
    import hither as hi

    jh = hi.SlurmJobHandler(working_dir=workdir, mode="array", num_workers_per_batch=PARALLEL,
                            num_cores_per_job=1)
    t0 = time.monotonic()
    with jh, hi.Config(job_handler=jh):
        jobs = [sleep_for.run(seconds=0) for _ in range(n)]
        created = time.monotonic() - t0
        results = [j.result() for j in jobs]
    elapsed = time.monotonic() - t0
    if results != [0] * n:
        raise RuntimeError("wrong results")
    acct = jh.calls.get("sacct", 0) + jh.calls.get("squeue", 0)
    times = jh.watcher.call_times
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    return {"sbatch": jh.calls.get("sbatch", 0), "arrays": [k for _j, k in jh.arrays],
            "accounting": acct, "elapsed": elapsed, "created": created,
            "min_gap": min(gaps) if gaps else None,
            "poll_start": jh.watcher.backoff.start}


def bench_hither(n: int, repeats: int, workdir: str) -> C.Row:
    import hither as hi

    def once() -> float:
        jh = hi.SlurmJobHandler(working_dir=workdir, mode="array",
                                num_workers_per_batch=PARALLEL, num_cores_per_job=1)
        with jh, hi.Config(job_handler=jh):
            t = C.now()
            jobs = [sleep_for.run(seconds=0) for _ in range(n)]
            results = [j.result() for j in jobs]
            elapsed = C.now() - t
        if results != [0] * n:
            raise RuntimeError("wrong results")
        return elapsed

    return C.measure(f"hither SlurmJobHandler(array, %{PARALLEL})", once, repeats=repeats,
                     n=n, warmup=0)


def bench_submitit(n: int, repeats: int, workdir: str) -> C.Row:
    try:
        import submitit
    except ImportError:
        return C.skipped("submitit map_array", "pip install submitit (hither[bench])", n)

    here = os.path.dirname(os.path.abspath(__file__))  # its tasks import _jobs from here
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [here, *filter(None, [os.environ.get("PYTHONPATH")])])

    def once() -> float:
        ex = submitit.AutoExecutor(folder=os.path.join(workdir, "submitit-%j"),
                                   cluster="slurm")
        ex.update_parameters(slurm_array_parallelism=PARALLEL, cpus_per_task=1,
                             timeout_min=30)
        t = C.now()
        jobs = ex.map_array(sleep_for, [0] * n)
        results = [j.result() for j in jobs]
        elapsed = C.now() - t
        if results != [0] * n:
            raise RuntimeError("wrong results")
        return elapsed

    return C.measure(f"submitit map_array (parallelism {PARALLEL})", once, repeats=repeats,
                     n=n, warmup=0)


def main(argv: list[str] | None = None) -> None:
    args = C.parse_args(__doc__.splitlines()[0], argv)
    if shutil.which("sinfo") is None:
        print("no Slurm here (sinfo): nothing to measure")
        return
    if args.repeats == 5 and not args.quick:
        args.repeats = 2  # each run is minutes long
    n = 200 if args.quick else 1000
    C.print_header(f"Slurm: {n} x sleep(0) as job arrays", args)
    workdir = tempfile.mkdtemp(prefix="hither-bench-slurm-", dir=os.path.expanduser("~"))
    try:
        print(f"(a) submission and polling of {n} misses")
        sub = bench_submission(n, workdir)
        print(f"  sbatch calls: {sub['sbatch']} (arrays of {sub['arrays']}); "
              f"accounting calls: {sub['accounting']} in {sub['elapsed']:.1f} s, shortest "
              f"gap between two {sub['min_gap'] if sub['min_gap'] is None else round(sub['min_gap'], 2)} s "
              f"(first interval {sub['poll_start']} s); {n} jobs created in "
              f"{sub['created']:.2f} s")
        print(f"(b) end to end, {n} x sleep(0)")
        rows = [bench_hither(n, args.repeats, workdir), bench_submitit(n, args.repeats, workdir)]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    C.print_table(f"{n} x sleep(0) on Slurm, one CPU per task", rows)
    h, s = rows
    gap = sub["min_gap"]
    per_interval = 0.0 if gap is None else sub["poll_start"] / gap
    targets = [C.Target(f"sbatch calls for {n} misses", float(sub["sbatch"]), 2.0),
               C.Target("accounting calls per interval (first interval / shortest gap)",
                        per_interval, 1.1)]
    targets.append(C.Target("hither / submitit end to end",
                            h.best / s.best if h.ok and s.ok else None, 1.0, "x"))
    C.print_targets(targets)


if __name__ == "__main__":
    main()
