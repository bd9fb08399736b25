"""Cluster handlers, Dask part: N tiny jobs through DaskJobHandler vs raw dask on the same
cluster.

hither ``DaskJobHandler(client)`` (one ``.run()`` per job, then every result) vs raw
``client.submit(inc, i, pure=False)`` per job on the same client, collected with
``as_completed(with_results=True)`` (what the handler does) and with one ``client.gather``
(information). The cluster is a ``LocalCluster`` of 2 worker processes of one thread on
127.0.0.1, or the one of ``--scheduler-file`` (e.g. the CLI cluster of .ci/setup-dask.sh;
its workers must import this hither). Tools are timed round robin (one batch each, in
turn) after an untimed batch, so load drifts of this shared machine hit all alike.

Target: hither per-job <= 1.3x raw dask's per-job (the faster raw pattern). Also measured:
how long after ``cancel()``, and after a 1 s ``job_timeout``, the process running a job
is gone (target <= 1 s; the cluster's workers must be on this machine).

    python benchmarks/cluster_dask.py [--quick] [--repeats N] [--scheduler-file FILE]

``bench_dask(client, n, repeats)`` returns the rows and targets for benchmarks/cluster.py.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import threading
import time
from collections.abc import Callable

import _common as C
from _jobs import inc, sleep_for


def check(results: list[int], n: int) -> None:
    if sorted(results) != list(range(1, n + 1)):
        raise RuntimeError("wrong results")


def hither_once(jh, n: int) -> float:
    import hither as hi

    with hi.Config(job_handler=jh):
        t = C.now()
        jobs = [inc.run(x=i) for i in range(n)]
        results = [j.result() for j in jobs]
        elapsed = C.now() - t
    check(results, n)
    return elapsed


def raw_as_completed_once(client, n: int) -> float:
    from distributed import as_completed

    results: list[int] = []
    ac = as_completed(loop=client.loop, with_results=True)
    t = C.now()
    consumer = threading.Thread(target=lambda: results.extend(r for _f, r in ac))
    for i in range(n):
        ac.add(client.submit(inc, i, pure=False))
        if i == 0:
            consumer.start()
    consumer.join()
    elapsed = C.now() - t
    check(results, n)
    return elapsed


def raw_gather_once(client, n: int) -> float:
    t = C.now()
    futs = [client.submit(inc, i, pure=False) for i in range(n)]
    results = client.gather(futs)
    elapsed = C.now() - t
    check(results, n)
    del futs
    return elapsed


def round_robin(tools: list[tuple[str, Callable[[], float]]], repeats: int,
                n: int) -> list[C.Row]:
    """Time each tool ``repeats`` times, in turn, after one untimed run of each."""
    rows = [C.Row(name, n=n) for name, _ in tools]
    for rep in range(repeats + 1):
        for row, (_name, once) in zip(rows, tools, strict=True):
            if row.skipped is not None:
                continue
            try:
                elapsed = once()
            except Exception as e:  # noqa: BLE001 - a failing tool is reported
                row.skipped = f"{type(e).__name__}: {e}"[:200]
                continue
            if rep:
                row.times.append(elapsed)
    for row in rows:
        if row.ok:
            print(f"  {row.tool}: best {C.fmt_s(row.best)}, median {C.fmt_s(row.median)} "
                  f"({', '.join(f'{t:.3f}' for t in row.times)})", flush=True)
        else:
            print(f"  {row.tool}: SKIPPED ({row.skipped})", flush=True)
    return rows


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _first_gone(pids: set[int], limit: float = 30.0) -> float:
    """time.time() when the first of ``pids`` (processes of this machine) is gone."""
    deadline = C.now() + limit
    while all(_alive(p) for p in pids):
        if C.now() > deadline:
            raise RuntimeError(f"no process of {sorted(pids)} stopped within {limit} s")
        time.sleep(0.002)
    return time.time()


def stop_latency(jh, how: str) -> float:
    """Seconds from ``job.cancel()`` (or from the end of a 1 s ``job_timeout``) until the
    process running the job is gone."""
    import hither as hi

    with hi.Config(job_handler=jh, job_timeout=1.0 if how == "timeout" else None):
        job = sleep_for.run(seconds=60.0 + random.random())
    deadline = C.now() + 60
    while job.get_status() is not hi.JobStatus.RUNNING:
        if C.now() > deadline:
            raise RuntimeError("the job did not start")
        time.sleep(0.005)
    pids = {p for ps in jh.worker_pids.values() for p in ps}
    if how == "cancel":
        t = time.time()
        job.cancel()
        return _first_gone(pids) - t
    gone = _first_gone(pids)
    job.exception(timeout=60)
    return gone - (job.get_runtime_info()["start_time"] + 1.0)


def bench_dask(client, n: int, repeats: int) -> tuple[list[C.Row], list[C.Target]]:
    """Rows (hither first) and the targets, on ``client``'s cluster."""
    import hither as hi

    jh = hi.DaskJobHandler(client)
    try:
        rows = round_robin([
            ("hither DaskJobHandler", lambda: hither_once(jh, n)),
            ("dask submit + as_completed", lambda: raw_as_completed_once(client, n)),
            ("dask submit + gather", lambda: raw_gather_once(client, n)),
        ], repeats, n)
        stops = {how: [stop_latency(jh, how) for _ in range(3)] for how in ("cancel", "timeout")}
        for how, times in stops.items():
            print(f"  {how} -> the job's process gone: "
                  f"{', '.join(C.fmt_s(t) for t in times)}", flush=True)
    finally:
        jh.shutdown()
    raw = [r for r in rows[1:] if r.ok]
    best_raw = min(raw, key=lambda r: r.best) if raw else None
    h = rows[0] if rows[0].ok else None
    targets = [C.Target(f"hither per-job / raw dask per-job ({best_raw.tool if best_raw else '-'})",
                        h.per_job / best_raw.per_job if h and best_raw else None, 1.3, "x"),
               C.Target("cancel: until the running job's process is gone (worst of 3)",
                        max(stops["cancel"]), 1.0, "s"),
               C.Target("job_timeout: past the timeout until the process is gone (worst of 3)",
                        max(stops["timeout"]), 1.0, "s")]
    return rows, targets


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--scheduler-file", default=None)
    ours, rest = p.parse_known_args(argv)
    args = C.parse_args(__doc__.splitlines()[0], rest)
    n = 500 if args.quick else 2000
    C.quiet_logs()
    from distributed import Client, LocalCluster

    cluster = None
    if ours.scheduler_file:
        client = Client(scheduler_file=ours.scheduler_file, set_as_default=False)
        # raw dask needs the job module on the workers (hither's workers get this sys.path)
        client.upload_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "_jobs.py"))
        where = f"the cluster of {ours.scheduler_file}"
    else:
        cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                               host="127.0.0.1", dashboard_address=None,
                               scheduler_kwargs={"dashboard_address": "127.0.0.1:0"})
        client = Client(cluster, set_as_default=False)
        where = "a LocalCluster (2 processes x 1 thread)"
    C.print_header(f"cluster_dask: {n} tiny jobs on {where}", args)
    try:
        rows, targets = bench_dask(client, n, args.repeats)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    C.print_table(f"{n} tiny jobs (times are wall time for all {n}; 'vs hither' = tool time "
                  "/ hither time)", rows)
    C.print_targets(targets)


if __name__ == "__main__":
    main(sys.argv[1:])
