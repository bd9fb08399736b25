"""Container and environment overhead: warm in-container workers vs a container per job.

1. N tiny jobs (``x + 1``) in the image ``local/py3numpy:bookworm`` (Docker):

   * hither with warm container workers: ``hi.ParallelJobHandler(2)`` +
     ``hi.Config(container=True)``, first batch on a new handler (includes starting the 2
     worker containers) and later batches on the warm pool; and the inline default
     handler (one warm worker, sequential), first batch and warm batches;
   * "one container per job", the cost hither would pay if it started a fresh worker
     container for each job: one ``docker run --rm -i ... python3 -c ...`` per job, with
     the argv of ``DockerRuntime.worker_argv`` (same safety flags and mounts: ``--init``,
     ``--network none``, ``--user``, ``--cap-drop ALL``, ``no-new-privileges``, ``/tmp``
     tmpfs, the four ``/hither/*`` mounts) and its command replaced by a ``python3 -c``
     that reads x on stdin and prints x + 1; sequentially and 2 at a time;
   * a plain ``docker run --rm IMAGE python3 -c 'print(1+1)'`` loop (sequential).

   Targets: warm workers >= 30x faster per job than one container per job (2 workers vs
   2 containers at a time, and inline vs sequential), warm per-job overhead <= 5 ms.

2. The warm-worker measurement with Podman (``jhparams={"container_engine": "podman"}``,
   if ``$HITHER_PODMAN_SOCKET`` is set) and Apptainer on ``$HITHER_TEST_SANDBOX`` (if
   ``$HITHER_APPTAINER`` is set). Information, no targets.

3. uv environments: ``hi.PythonEnv(["numpy==1.26.4"])`` -> ``VenvRuntime(env).identity()``
   (resolution), build, first job (worker start + job), in a new process with a fresh
   ``$HITHER_ENV_DIR``; then again in a new process with the same ``$HITHER_ENV_DIR``
   (cached). Information, no targets.

Run ``source .ci/env.sh`` first (dockerd running, test images built).

    python benchmarks/containers.py [--quick] [--repeats N]
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from concurrent.futures import ThreadPoolExecutor

import _common as C

IMAGE = "local/py3numpy:bookworm"  # the image _cjobs.cinc declares
REQS = ["numpy==1.26.4"]
HERE = os.path.dirname(os.path.abspath(__file__))


def check(results, n: int) -> None:
    if sum(results) != n * (n + 1) // 2:
        raise RuntimeError(f"wrong results: sum {sum(results)}")


def show(row: C.Row) -> C.Row:
    """Print a row the way ``C.measure`` does (for rows timed by hand)."""
    if row.ok:
        print(f"  {row.tool}: best {C.fmt_s(row.best)}, median {C.fmt_s(row.median)} "
              f"({', '.join(f'{t:.3f}' for t in row.times)})", flush=True)
    else:
        print(f"  {row.tool}: SKIPPED ({row.skipped})", flush=True)
    return row


def _fail(rows: list[C.Row], e: Exception) -> list[C.Row]:
    why = f"{type(e).__name__}: {e}"[:200]
    if os.environ.get("BENCH_DEBUG"):
        import traceback

        traceback.print_exc()
    for r in rows:
        if not r.times:
            r.skipped = why
    return rows


# ---------------------------------------------------------------------------- 1. hither
def bench_hither(label: str, make_handler, cfg: dict, n: int, pools: int,
                 warm_batches: int) -> tuple[C.Row, C.Row]:
    """``pools`` new handlers; on each: one batch of ``n`` jobs on the cold pool (worker
    containers start inside it), then ``warm_batches`` batches on the warm pool.

    One extra untimed handler goes first (process warm-up: engine client, image
    identity, code bundle); its first batch is shown in the row's note.
    """
    from _cjobs import cinc

    import hither as hi

    first = C.Row(f"{label}, 1st batch", n=n)
    warm = C.Row(f"{label}, warm pool", n=n)

    def batch() -> float:
        t = C.now()
        jobs = [cinc.run(x=i) for i in range(n)]
        results = [j.result() for j in jobs]
        elapsed = C.now() - t
        check(results, n)
        return elapsed

    try:
        for p in range(pools + 1):
            jh = make_handler()
            try:
                with hi.Config(job_handler=jh, **cfg):
                    t = batch()
                    if p == 0:
                        first.note = f"(process's very first batch: {C.fmt_s(t)})"
                        continue
                    first.times.append(t)
                    for _ in range(warm_batches):
                        warm.times.append(batch())
            finally:
                jh.shutdown()
    except Exception as e:  # noqa: BLE001 - a failing engine is reported, not fatal
        _fail([first, warm], e)
    return show(first), show(warm)


# ---------------------------------------------------------------------------- 1. per job
class PerJobContainer:
    """``docker run --rm -i`` of a fresh container per job, with hither's worker argv."""

    def __init__(self) -> None:
        from hither.runtimes import DockerRuntime, Mount, WorkerSpec

        self._rt = DockerRuntime(IMAGE)
        self._Spec = WorkerSpec
        self.tmp = tempfile.mkdtemp(prefix="hither-bench-cpj-")
        self.mounts = []
        for sub, target, ro in (("worker", "/hither/worker", True),
                                ("code", "/hither/code", True),
                                ("blobs", "/hither/blobs", True),
                                ("out", "/hither/out", False)):
            d = os.path.join(self.tmp, sub)
            os.makedirs(d)
            os.chmod(d, 0o777)
            self.mounts.append(Mount(d, target, readonly=ro))
        self.docker = shutil.which("docker") or "docker"
        tail = self._rt.worker_argv(self._spec("probe"), cli=self.docker)[-4:]
        if tail[1:] != ["-u", "/hither/worker/_worker.py", "--stdio"]:
            self.close()
            raise RuntimeError(f"unexpected worker command {tail}")

    def _spec(self, name: str):
        return self._Spec(mounts=tuple(self.mounts), name=name,
                          env={"PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1"})

    def argv(self, name: str) -> list[str]:
        argv = self._rt.worker_argv(self._spec(name), cli=self.docker)
        # same container options; the worker command replaced by a one-shot x + 1
        return argv[:-4] + [self._rt.python(), "-c",
                            "import sys; print(int(sys.stdin.read()) + 1)"]

    def one(self, x: int) -> int:
        name = f"hither-bench-{os.getpid()}-{uuid.uuid4().hex[:10]}"
        r = subprocess.run(self.argv(name), input=str(x), capture_output=True, text=True,
                           timeout=120)
        if r.returncode != 0:
            raise RuntimeError(f"docker run failed ({r.returncode}): {r.stderr.strip()[:300]}")
        return int(r.stdout)

    def close(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


def raw_docker_run() -> int:
    r = subprocess.run([shutil.which("docker") or "docker", "run", "--rm", IMAGE, "python3",
                        "-c", "print(1+1)"], capture_output=True, text=True, timeout=120)
    if r.returncode != 0 or r.stdout.strip() != "2":
        raise RuntimeError(f"docker run failed ({r.returncode}): {r.stderr.strip()[:300]}")
    return 2


def bench_per_job(n: int, repeats: int) -> list[C.Row]:
    rows = [C.Row("one container per job, sequential", n=n),
            C.Row("one container per job, 2 at a time", n=n),
            C.Row("plain `docker run --rm` loop, sequential", n=n)]
    try:
        pj = PerJobContainer()
    except Exception as e:  # noqa: BLE001
        return [show(r) for r in _fail(rows, e)]
    try:
        for i in range(3):  # warm-up: page cache, docker's image and layer metadata
            pj.one(i)
            raw_docker_run()

        def seq() -> float:
            t = C.now()
            results = [pj.one(i) for i in range(n)]
            elapsed = C.now() - t
            check(results, n)
            return elapsed

        def two() -> float:
            with ThreadPoolExecutor(2) as ex:
                t = C.now()
                results = list(ex.map(pj.one, range(n)))
                elapsed = C.now() - t
            check(results, n)
            return elapsed

        def raw() -> float:
            t = C.now()
            for _ in range(n):
                raw_docker_run()
            return C.now() - t

        for row, fn in zip(rows, (seq, two, raw), strict=True):
            try:
                for _ in range(repeats):
                    row.times.append(fn())
            except Exception as e:  # noqa: BLE001
                _fail([row], e)
            show(row)
    finally:
        pj.close()
    return rows


# ---------------------------------------------------------------------------- 3. uv env
def uv_cache_state() -> str:
    """Whether numpy 1.26.4 is already in uv's cache (then nothing is downloaded)."""
    try:
        from hither.runtimes.venv import find_uv

        d = subprocess.run(find_uv() + ["cache", "dir"], capture_output=True, text=True,
                           timeout=30).stdout.strip()
    except Exception as e:  # noqa: BLE001
        return f"unknown ({e})"
    hits = glob.glob(os.path.join(d, "archive-v*", "*", "numpy-1.26.4.dist-info")) + \
        glob.glob(os.path.join(d, "wheels-v*", "*", "numpy", "1.26.4*"))
    return (f"WARM: numpy 1.26.4 already unpacked in {d}, nothing downloaded" if hits
            else f"cold for numpy 1.26.4 ({d}): the first build downloads the wheel")


def venv_child() -> None:
    """In a new process (``HITHER_ENV_DIR`` set by the parent): resolve, build, first job,
    second job; prints the timings as one JSON line."""
    t0 = C.now()
    import hither as hi
    from hither.runtimes import VenvRuntime

    sys.path.insert(0, HERE)
    from _cjobs import cinc, cnumpy

    t1 = C.now()
    env = hi.PythonEnv(REQS)
    rt = VenvRuntime(env)
    rt.identity()
    t2 = C.now()
    env.ensure()
    t3 = C.now()
    jh = hi.DefaultJobHandler()
    with hi.Config(environment=env, job_handler=jh):
        if cinc.run(x=1).result() != 2:
            raise RuntimeError("wrong result")
        t4 = C.now()
        if cinc.run(x=2).result() != 3:
            raise RuntimeError("wrong result")
        t5 = C.now()
        version = cnumpy.run().result()
    jh.shutdown()
    print(json.dumps({"import": t1 - t0, "identity": t2 - t1, "build": t3 - t2,
                      "first_job": t4 - t3, "next_job": t5 - t4, "numpy": version}))


def run_child(env_dir: str) -> dict:
    t = C.now()
    r = subprocess.run([sys.executable, os.path.abspath(__file__), "--venv-child"],
                       capture_output=True, text=True, timeout=1800,
                       env={**os.environ, "HITHER_ENV_DIR": env_dir})
    wall = C.now() - t
    if r.returncode != 0:
        raise RuntimeError(f"child failed: {(r.stderr or r.stdout).strip()[-400:]}")
    out = json.loads(r.stdout.strip().splitlines()[-1])
    if out["numpy"] != "1.26.4":
        raise RuntimeError(f"the env has numpy {out['numpy']}")
    out["process"] = wall
    return out


def bench_venv(fresh: int, cached: int) -> list[C.Row]:
    parts = [("identity", "resolve: identity() (uv pip compile)"),
             ("build", "build: ensure() (uv venv + uv pip install)"),
             ("first_job", "first job (worker start + job)"),
             ("next_job", "next job (warm worker)"),
             ("process", "whole process (python start to exit)")]
    cached_parts = [("identity", "cached: identity() (lock from disk)"),
                    ("build", "cached: ensure() (env found ready)"),
                    ("first_job", "cached: first job (worker start + job)"),
                    ("next_job", "cached: next job (warm worker)"),
                    ("process", "cached: whole process (python start to exit)")]
    rows = {k: C.Row(f"uv fresh env: {label}") for k, label in parts}
    crow = {k: C.Row(f"uv {label}") for k, label in cached_parts}
    try:
        for i in range(fresh):
            with tempfile.TemporaryDirectory(prefix="hither-bench-envs-") as d:
                out = run_child(d)
                for k in rows:
                    rows[k].times.append(out[k])
                if i == 0:  # the cached case: same HITHER_ENV_DIR, new processes
                    for _ in range(cached):
                        out = run_child(d)
                        for k in crow:
                            crow[k].times.append(out[k])
    except Exception as e:  # noqa: BLE001
        _fail(list(rows.values()) + list(crow.values()), e)
    return [show(r) for r in list(rows.values()) + list(crow.values())]


# ---------------------------------------------------------------------------- main
def engine_versions() -> str:
    def out(cmd: list[str]) -> str:
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
            return r.stdout.strip().splitlines()[0] if r.returncode == 0 else "-"
        except Exception:  # noqa: BLE001
            return "-"

    parts = [f"docker {out(['docker', 'version', '--format', '{{.Server.Version}}'])}"]
    if shutil.which("podman"):
        parts.append(f"podman {out(['podman', '--version']).split()[-1]}")
    if os.environ.get("HITHER_APPTAINER"):
        parts.append(out([os.environ["HITHER_APPTAINER"], "--version"]))
    try:
        from hither.runtimes.venv import find_uv

        parts.append(out(find_uv() + ["--version"]))
    except Exception:  # noqa: BLE001
        pass
    return ", ".join(parts)


def main() -> None:
    if sys.argv[1:2] == ["--venv-child"]:
        venv_child()
        return
    args = C.parse_args(__doc__.splitlines()[0])
    import hither as hi

    n = 20 if args.quick else 100
    C.quiet_logs()
    C.print_header(f"containers: {n} jobs of x + 1 in {IMAGE}; uv environments", args)
    print(engine_versions(), flush=True)
    # warm batches cost tens of ms: take more samples of those (noisy machine)
    pools = args.repeats
    warm_batches = 3
    # a container per job costs ~0.2 s x n per sample: fewer, each already an average
    slow = max(1, min(args.repeats, 2 if args.quick else 3))

    print(f"\n1. {n} jobs in docker image {IMAGE}", flush=True)
    dock = {"container": True, "jhparams": {"container_engine": "docker"}}
    p_first, p_warm = bench_hither("hither ParallelJobHandler(2)",
                                   lambda: hi.ParallelJobHandler(2), dock, n, pools,
                                   warm_batches)
    i_first, i_warm = bench_hither("hither inline handler",
                                   hi.DefaultJobHandler, dock, n, pools, warm_batches)
    per_job = bench_per_job(n, slow)
    rows = [p_warm, i_warm, p_first, i_first] + per_job
    C.print_table(f"{n} tiny jobs in {IMAGE} (docker); '1st batch' = on a new handler, "
                  "includes starting its worker container(s); 'vs hither' = tool time / "
                  "hither ParallelJobHandler(2) warm-pool time", rows)

    print("\n2. the same with other engines (information)", flush=True)
    other: list[C.Row] = []
    if os.environ.get("HITHER_PODMAN_SOCKET"):
        pod = {"container": True, "jhparams": {"container_engine": "podman"}}
        f, w = bench_hither("podman ParallelJobHandler(2)",
                            lambda: hi.ParallelJobHandler(2), pod, n, pools, warm_batches)
        other += [w, f]
    else:
        other.append(C.skipped("podman ParallelJobHandler(2)",
                               "HITHER_PODMAN_SOCKET is not set", n))
    sandbox = os.environ.get("HITHER_TEST_SANDBOX")
    if os.environ.get("HITHER_APPTAINER") and sandbox:
        app = {"container": sandbox}
        f, w = bench_hither("apptainer sandbox Parallel(2)",
                            lambda: hi.ParallelJobHandler(2), app, n, pools, warm_batches)
        other += [w, f]
    else:
        other.append(C.skipped("apptainer sandbox Parallel(2)",
                               "HITHER_APPTAINER or HITHER_TEST_SANDBOX is not set", n))
    C.print_table(f"{n} tiny jobs, other engines; 'vs hither' = tool time / podman warm "
                  "pool", other)

    print(f"\n3. uv environment {REQS} (new process each; information)", flush=True)
    print(f"  uv cache before the first build: {uv_cache_state()}", flush=True)
    venv_rows = bench_venv(fresh=1 if args.quick else 3, cached=args.repeats)
    print()
    print("uv environment, seconds per step (each sample is a new Python process)")
    head = f"{'step':<58} {'best':>10} {'median':>10}"
    print(head)
    print("-" * len(head))
    for r in venv_rows:
        if r.ok:
            print(f"{r.tool:<58} {C.fmt_s(r.best):>10} {C.fmt_s(r.median):>10}")
        else:
            print(f"{r.tool:<58} SKIPPED: {r.skipped}")

    ident = next(r for r in venv_rows if r.tool.startswith("uv cached: identity"))
    ens = next(r for r in venv_rows if r.tool.startswith("uv cached: ensure"))
    if ident.ok and ens.ok:
        print(f"  cached env creation in a new process, identity() + ensure(): "
              f"{C.fmt_s(ident.best + ens.best)} (best), no uv call")

    seq, two = per_job[0], per_job[1]
    C.print_targets([
        C.Target("one container per job (2 at a time) / warm ParallelJobHandler(2), "
                 "per job", two.per_job / p_warm.per_job if two.ok and p_warm.ok else None,
                 30.0, "x", at_least=True),
        C.Target("one container per job (sequential) / warm inline handler, per job",
                 seq.per_job / i_warm.per_job if seq.ok and i_warm.ok else None,
                 30.0, "x", at_least=True),
        C.Target("warm ParallelJobHandler(2) per-job overhead (wall / n)",
                 p_warm.per_job if p_warm.ok else None, 5e-3, "s"),
        C.Target("warm inline handler per-job overhead (wall / n)",
                 i_warm.per_job if i_warm.ok else None, 5e-3, "s"),
    ])


if __name__ == "__main__":
    main()
