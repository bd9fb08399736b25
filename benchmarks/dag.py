"""A layered pipeline: LAYERS x WIDTH jobs on 2 workers, each job adds two parents.

Layer 0 is ``add(a=j, b=1)``; job ``j`` of layer ``L`` is ``add(a=P[j], b=P[(j+1) % W])``
where ``P`` is layer ``L-1``. Every tool gets the whole graph at once and resolves the
dependencies itself:

* hither: jobs as arguments of jobs on ``ParallelJobHandler(2)``; submit all, wait for
  the last layer;
* dask.distributed: ``client.submit`` with futures as arguments (LocalCluster, 2
  processes x 1 thread), gather the last layer;
* ray: ``ray.remote`` tasks with object refs as arguments (``ray.init(num_cpus=2,
  include_dashboard=False)``), ``ray.get`` the last layer;
* reference: ``concurrent.futures.ProcessPoolExecutor(2)`` driven layer by layer by the
  caller (submit a layer, wait for it, submit the next).

Pools/clusters are warmed up by one untimed run. Target: hither <= 0.5 s wall.

    python benchmarks/dag.py [--quick] [--repeats N]
"""

from __future__ import annotations

import os

import _common as C
from _jobs import add

HERE = os.path.dirname(os.path.abspath(__file__))


def expected(layers: int, width: int) -> list[int]:
    prev = [j + 1 for j in range(width)]
    for _ in range(layers - 1):
        prev = [prev[j] + prev[(j + 1) % width] for j in range(width)]
    return prev


def bench_hither(layers: int, width: int, repeats: int) -> C.Row:
    import hither as hi

    want = expected(layers, width)
    jh = hi.ParallelJobHandler(2)

    def once() -> float:
        with hi.Config(job_handler=jh):
            t = C.now()
            prev = [add.run(a=j, b=1) for j in range(width)]
            for _ in range(layers - 1):
                prev = [add.run(a=prev[j], b=prev[(j + 1) % width]) for j in range(width)]
            got = [j.result() for j in prev]
            elapsed = C.now() - t
        if got != want:
            raise RuntimeError("wrong results")
        return elapsed

    try:
        return C.measure(f"hither ParallelJobHandler(2, {jh.start_method})", once,
                         repeats=repeats, n=layers * width)
    finally:
        jh.shutdown()


def bench_dask(layers: int, width: int, repeats: int) -> C.Row:
    tool = "dask LocalCluster(2 procs x 1 thread), futures"
    n = layers * width
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
    want = expected(layers, width)

    def once() -> float:
        t = C.now()
        prev = [client.submit(add, j, 1, pure=False) for j in range(width)]
        for _ in range(layers - 1):
            prev = [client.submit(add, prev[j], prev[(j + 1) % width], pure=False)
                    for j in range(width)]
        got = client.gather(prev)
        elapsed = C.now() - t
        if got != want:
            raise RuntimeError("wrong results")
        return elapsed

    try:
        return C.measure(tool, once, repeats=repeats, n=n)
    finally:
        client.close()
        cluster.close()


def bench_ray(layers: int, width: int, repeats: int) -> C.Row:
    tool = "ray (num_cpus=2), object refs"
    n = layers * width
    try:
        import ray
    except Exception as e:  # noqa: BLE001
        return C.skipped(tool, f"ray not importable: {e}", n)
    # ray's workers are not children of this process: they find _jobs via PYTHONPATH
    os.environ["PYTHONPATH"] = HERE + os.pathsep + os.environ.get("PYTHONPATH", "")
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                 logging_level="ERROR")
    except Exception as e:  # noqa: BLE001
        return C.skipped(tool, f"ray did not start: {type(e).__name__}: {e}", n)
    want = expected(layers, width)
    radd = ray.remote(add)

    def once() -> float:
        t = C.now()
        prev = [radd.remote(j, 1) for j in range(width)]
        for _ in range(layers - 1):
            prev = [radd.remote(prev[j], prev[(j + 1) % width]) for j in range(width)]
        got = ray.get(prev)
        elapsed = C.now() - t
        if got != want:
            raise RuntimeError("wrong results")
        return elapsed

    try:
        return C.measure(tool, once, repeats=repeats, n=n)
    finally:
        ray.shutdown()


def bench_ppe_layers(layers: int, width: int, repeats: int) -> C.Row:
    from concurrent.futures import ProcessPoolExecutor

    want = expected(layers, width)
    with ProcessPoolExecutor(2) as ex:
        def once() -> float:
            t = C.now()
            vals = [f.result() for f in [ex.submit(add, j, 1) for j in range(width)]]
            for _ in range(layers - 1):
                futs = [ex.submit(add, vals[j], vals[(j + 1) % width]) for j in range(width)]
                vals = [f.result() for f in futs]
            elapsed = C.now() - t
            if vals != want:
                raise RuntimeError("wrong results")
            return elapsed

        return C.measure("ProcessPoolExecutor(2), layer by layer (ref.)", once,
                         repeats=repeats, n=layers * width)


def main() -> None:
    args = C.parse_args(__doc__.splitlines()[0])
    layers, width = (10, 30) if args.quick else (10, 100)
    n = layers * width
    C.quiet_logs()
    C.print_header(f"dag: {layers} layers x {width} jobs = {n} jobs (a + b of two parents), "
                   "2 workers", args)
    rows = [
        bench_hither(layers, width, args.repeats),
        bench_dask(layers, width, args.repeats),
        bench_ray(layers, width, args.repeats),
        bench_ppe_layers(layers, width, args.repeats),
    ]
    C.print_table(f"{n}-job layered DAG, 2 workers (wall time for the whole graph; "
                  "'vs hither' = tool time / hither time)", rows)
    h = rows[0] if rows[0].ok else None
    limit = 0.5 if not args.quick else 0.5 * n / 1000
    C.print_targets([C.Target(f"hither wall time for {n} jobs", h.best if h else None,
                              limit, "s")])


if __name__ == "__main__":
    main()
