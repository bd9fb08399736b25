"""Per-job overhead: N jobs of ``x + 1`` on 2 worker processes.

hither ``ParallelJobHandler(2)`` (one ``.run()`` per task, then wait all; default start
method forkserver, plus spawn and fork; tiny jobs batched per worker message by default,
plus the forkserver pool with ``batch=False``) vs ``concurrent.futures.ProcessPoolExecutor(2)``
(one ``submit`` per task), joblib ``Parallel(n_jobs=2)`` (loky; auto batching and
``batch_size=1``) and dask.distributed ``LocalCluster(n_workers=2, threads_per_worker=1,
processes=True)`` with one ``client.submit`` per task. Pools are warmed up by one untimed
batch first; per-job time = best wall time / N. The process pools are timed at least 15
times (5 with --quick), dask ``--repeats`` times.

Targets: hither (batched, the default) <= 0.5x ProcessPoolExecutor's per-job time;
hither with ``batch=False`` <= 1.5x; dask >= 5x hither's. The batched rows also say how
many jobs each message to a worker carried (warm-up included).

    python benchmarks/tiny_jobs.py [--quick] [--repeats N]
"""

from __future__ import annotations

import _common as C
from _jobs import inc


def check(results, n: int) -> None:
    if sum(results) != n * (n + 1) // 2:
        raise RuntimeError("wrong results")


def bench_hither(n: int, repeats: int, start_method: str | None,
                 batch: bool = True) -> C.Row:
    import hither as hi

    jh = hi.ParallelJobHandler(2, start_method=start_method, batch=batch)
    name = f"hither ParallelJobHandler(2, {jh.start_method}{'' if batch else ', batch=False'})"

    def once() -> float:
        with hi.Config(job_handler=jh):
            t = C.now()
            jobs = [inc.run(x=i) for i in range(n)]
            results = [j.result() for j in jobs]
            elapsed = C.now() - t
        check(results, n)
        return elapsed

    try:
        row = C.measure(name, once, repeats=repeats, n=n)
        b = jh.batching
        if b["enabled"] and b["messages"]:
            row.note = (f"batched: {b['jobs'] / b['messages']:.1f} jobs per message "
                        f"({b['jobs']} in {b['messages']})")
        return row
    finally:
        jh.shutdown()


def bench_ppe(n: int, repeats: int) -> C.Row:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    method = multiprocessing.get_start_method()
    with ProcessPoolExecutor(2) as ex:
        def once() -> float:
            t = C.now()
            futs = [ex.submit(inc, i) for i in range(n)]
            results = [f.result() for f in futs]
            elapsed = C.now() - t
            check(results, n)
            return elapsed

        return C.measure(f"ProcessPoolExecutor(2) [{method}]", once, repeats=repeats, n=n)


def bench_joblib(n: int, repeats: int, batch_size) -> C.Row:
    try:
        from joblib import Parallel, delayed
    except ImportError as e:
        return C.skipped(f"joblib Parallel(2, batch_size={batch_size})", str(e), n)

    par = Parallel(n_jobs=2, batch_size=batch_size)

    def once() -> float:
        t = C.now()
        results = par(delayed(inc)(i) for i in range(n))
        elapsed = C.now() - t
        check(results, n)
        return elapsed

    return C.measure(f"joblib Parallel(n_jobs=2, batch_size={batch_size!r})", once,
                     repeats=repeats, n=n)


def bench_dask(n: int, repeats: int) -> C.Row:
    tool = "dask LocalCluster(2 procs x 1 thread) submit"
    try:
        from dask.distributed import Client, LocalCluster
    except ImportError as e:
        return C.skipped(tool, str(e), n)
    try:
        cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                               dashboard_address=None)
        client = Client(cluster)
    except Exception as e:  # noqa: BLE001
        return C.skipped(tool, f"cluster did not start: {e}", n)
    try:
        def once() -> float:
            t = C.now()
            futs = [client.submit(inc, i, pure=False) for i in range(n)]
            results = client.gather(futs)
            elapsed = C.now() - t
            check(results, n)
            del futs
            return elapsed

        return C.measure(tool, once, repeats=repeats, n=n)
    finally:
        client.close()
        cluster.close()


def main() -> None:
    args = C.parse_args(__doc__.splitlines()[0])
    n = 500 if args.quick else 2000
    C.quiet_logs()
    C.print_header(f"tiny_jobs: {n} jobs of x + 1 on 2 worker processes", args)
    # a batch costs ~0.1 s for the process pools: take more samples of those (the
    # ratio hither / ProcessPoolExecutor is the target and this machine is noisy)
    cheap = max(args.repeats, 5 if args.quick else 15)
    rows = [
        bench_hither(n, cheap, None),
        bench_hither(n, cheap, "spawn"),
        bench_hither(n, cheap, "fork"),
        bench_hither(n, cheap, None, batch=False),
        bench_ppe(n, cheap),
        bench_joblib(n, cheap, "auto"),
        bench_joblib(n, cheap, 1),
        bench_dask(n, args.repeats),
    ]
    C.print_table(f"{n} tiny jobs, 2 workers (times are wall time for all {n}; "
                  "'vs hither' = tool time / hither forkserver time)", rows)
    h = rows[0] if rows[0].ok else None
    unbatched = rows[3] if rows[3].ok else None
    ppe = next((r for r in rows if r.tool.startswith("ProcessPool") and r.ok), None)
    dask = next((r for r in rows if r.tool.startswith("dask") and r.ok), None)
    C.print_targets([
        C.Target("hither per-job (batched) / ProcessPoolExecutor per-job",
                 h.per_job / ppe.per_job if h and ppe else None, 0.5, "x"),
        C.Target("hither per-job (batch=False) / ProcessPoolExecutor per-job",
                 unbatched.per_job / ppe.per_job if unbatched and ppe else None, 1.5, "x"),
        C.Target("dask per-job / hither per-job",
                 dask.per_job / h.per_job if h and dask else None, 5.0, "x", at_least=True),
    ])


if __name__ == "__main__":
    main()
