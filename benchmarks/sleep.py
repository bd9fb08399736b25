"""Scheduling of waiting jobs: 8 jobs of ``time.sleep(0.5)`` on 4 workers.

hither ``ParallelJobHandler(4)`` vs ``concurrent.futures.ProcessPoolExecutor(4)``. The
ideal wall time is 2 rounds x 0.5 s = 1.0 s; anything above is dispatch overhead or jobs
queued behind a busy worker while another is idle. Workers are warmed up first (short
jobs until all 4 processes run, then one untimed round).

Target: hither <= 1.05 s.

Also reported (information, no target): 4 jobs of 0.5 s on the same 4 workers (ideal
0.5 s): it shows whether every idle worker gets a job when there are no more jobs than
workers (a worker sent jobs ahead of time can hold two while another waits).

    python benchmarks/sleep.py [--quick] [--repeats N]
"""

from __future__ import annotations

import _common as C
from _jobs import sleep_for

WORKERS = 4


def bench_hither(jobs: int, seconds: float, repeats: int) -> C.Row:
    import hither as hi

    jh = hi.ParallelJobHandler(WORKERS)
    try:
        with hi.Config(job_handler=jh):
            for _ in range(20):  # until every worker process is up
                [j.result() for j in [sleep_for.run(seconds=0.05) for _ in range(2 * WORKERS)]]
                if len(jh.worker_pids) == WORKERS:
                    break

        def once() -> float:
            with hi.Config(job_handler=jh):
                t = C.now()
                js = [sleep_for.run(seconds=seconds) for _ in range(jobs)]
                [j.result() for j in js]
                elapsed = C.now() - t
            used = len({j.get_runtime_info().get("worker_pid") for j in js})
            row_note.append(used)
            return elapsed

        row_note: list[int] = []
        row = C.measure(f"hither ParallelJobHandler({WORKERS}, {jh.start_method})", once,
                        repeats=repeats, n=jobs)
        if row_note:
            row.note = f"workers used: {min(row_note)}-{max(row_note)} of {WORKERS}"
        return row
    finally:
        jh.shutdown()


def bench_ppe(jobs: int, seconds: float, repeats: int) -> C.Row:
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(WORKERS) as ex:
        [f.result() for f in [ex.submit(sleep_for, 0.05) for _ in range(2 * WORKERS)]]

        def once() -> float:
            t = C.now()
            [f.result() for f in [ex.submit(sleep_for, seconds) for _ in range(jobs)]]
            return C.now() - t

        return C.measure(f"ProcessPoolExecutor({WORKERS})", once, repeats=repeats, n=jobs)


def main() -> None:
    args = C.parse_args(__doc__.splitlines()[0])
    seconds = 0.5
    C.print_header(f"sleep: jobs of time.sleep({seconds}) on {WORKERS} worker processes",
                   args)
    jobs = 8
    rows = [bench_hither(jobs, seconds, args.repeats), bench_ppe(jobs, seconds, args.repeats)]
    C.print_table(f"{jobs} x sleep({seconds}) on {WORKERS} workers (ideal 1.0 s; "
                  "'vs hither' = tool time / hither time)", rows)
    few = [bench_hither(WORKERS, seconds, args.repeats),
           bench_ppe(WORKERS, seconds, args.repeats)]
    C.print_table(f"information: {WORKERS} x sleep({seconds}) on {WORKERS} workers "
                  "(ideal 0.5 s)", few)
    h = rows[0] if rows[0].ok else None
    C.print_targets([C.Target(f"hither wall time, {jobs} x sleep({seconds}) on {WORKERS} "
                              "workers", h.best if h else None, 1.05, "s")])


if __name__ == "__main__":
    main()
