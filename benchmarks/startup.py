"""Worker start-up: time to the first result of a trivial job on a fresh pool of 2 workers.

Each sample is a new Python process that imports the tool, then times (1) a new pool of 2
workers up to the result of one ``x + 1`` job ("new process": includes starting hither's
fork server for forkserver) and, after shutting that pool down, (2) the same again in the
same process ("2nd pool": the per-worker start once the process is warm). Import time of
the tool is not included.

hither ``ParallelJobHandler(2, start_method=...)`` for spawn, forkserver and fork, from this
tree ("new") and from ``--baseline REF`` ("old": a git ref of this repository, extracted
with ``git archive``; default ``29e14b2``, the last commit whose host workers were
``multiprocessing`` children), vs ``concurrent.futures.ProcessPoolExecutor(2)`` with each
``multiprocessing`` context and loky's ``ProcessPoolExecutor(2)`` (what joblib uses), plus
``joblib.Parallel(n_jobs=2)`` (its first call only: later calls reuse the executor).

Target: hither new / old <= 1.5x for every start method, both measures.

    python benchmarks/startup.py [--quick] [--repeats N] [--baseline REF|none]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

import _common as C

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
METHODS = ("forkserver", "spawn", "fork")

# run in a fresh interpreter: prints {"first": s, "second": s}
DRIVER = r'''
import json, sys, time
sys.path.insert(0, BENCH)
from _jobs import inc

def hither_pool(method):
    import hither as hi
    handler = hi.ParallelJobHandler  # imported on first use: outside the timing too
    t = time.perf_counter()
    jh = handler(2, start_method=method)
    with hi.Config(job_handler=jh):
        assert inc.run(x=1).result() == 2
    elapsed = time.perf_counter() - t
    jh.shutdown()
    return elapsed

def ppe_pool(method):
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    t = time.perf_counter()
    ex = ProcessPoolExecutor(2, mp_context=multiprocessing.get_context(method))
    assert ex.submit(inc, 1).result() == 2
    elapsed = time.perf_counter() - t
    ex.shutdown()
    return elapsed

def loky_pool(method):
    from joblib.externals.loky.process_executor import ProcessPoolExecutor
    t = time.perf_counter()
    ex = ProcessPoolExecutor(2)
    assert ex.submit(inc, 1).result() == 2
    elapsed = time.perf_counter() - t
    ex.shutdown()
    return elapsed

def joblib_parallel(method):
    from joblib import Parallel, delayed
    t = time.perf_counter()
    assert Parallel(n_jobs=2)(delayed(inc)(1) for _ in range(2)) == [2, 2]
    return time.perf_counter() - t

if __name__ == "__main__":
    fn = globals()[TOOL]
    if TOOL in ("ppe_pool", "loky_pool", "joblib_parallel"):
        import hither  # imported by _jobs anyway: keep the same work outside the timing
    first = fn(METHOD)
    second = fn(METHOD) if TOOL != "joblib_parallel" else None
    print("RESULT " + json.dumps({"first": first, "second": second}))
'''


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a smaller, faster run")
    p.add_argument("--repeats", type=int, default=None,
                   help="new processes per tool (default 7, with --quick 3)")
    p.add_argument("--baseline", default="29e14b2",
                   help="git ref of the old code to compare with ('none': skip)")
    args = p.parse_args()
    if args.repeats is None:
        args.repeats = 3 if args.quick else 7
    args.repeats = max(1, args.repeats)
    return args


def extract(ref: str, dest: str) -> str | None:
    """The hither of git ``ref`` in ``dest`` (importable from there), or None."""
    try:
        archive = subprocess.run(["git", "-C", ROOT, "archive", ref, "hither", "store"],
                                 capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", dest], input=archive, check=True)
    except (OSError, subprocess.CalledProcessError) as e:
        print(f"  baseline {ref!r} not available: {e}")
        return None
    os.symlink("store", os.path.join(dest, "hither_store"))
    return dest


def sample(tool: str, method: str, pythonpath: str) -> tuple[float, float | None]:
    """One new process: (first pool, second pool) seconds."""
    code = (f"BENCH = {HERE!r}; TOOL = {tool!r}; METHOD = {method!r}\n" + DRIVER)
    with tempfile.TemporaryDirectory() as tmp:
        script = os.path.join(tmp, "driver.py")  # a file: spawn re-imports the main module
        with open(script, "w") as f:
            f.write(code)
        env = dict(os.environ, PYTHONPATH=pythonpath)
        proc = subprocess.run([sys.executable, script], capture_output=True, text=True,
                              env=env, timeout=120, cwd=tmp)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            data = json.loads(line[len("RESULT "):])
            return data["first"], data["second"]
    raise RuntimeError((proc.stderr or proc.stdout).strip().splitlines()[-1:] or "no output")


def measure_all(tools: list[tuple[str, str, str, str]], repeats: int) -> list[tuple[C.Row, C.Row]]:
    """Sample every tool ``repeats`` times, round robin (the load of a shared machine
    drifts: each tool gets its share of every phase). A tool = (name, kind, method,
    PYTHONPATH); returns (new process, 2nd pool) rows per tool."""
    rows = [(C.Row(name), C.Row(name)) for name, *_ in tools]
    for rnd in range(repeats + 1):  # round 0 warms the disk caches, untimed
        for (_name, kind, method, path), (first, second) in zip(tools, rows, strict=True):
            if first.skipped is not None:
                continue
            try:
                a, b = sample(kind, method, path)
            except Exception as e:  # noqa: BLE001 - a failing peer is reported, not fatal
                first.skipped = second.skipped = f"{type(e).__name__}: {e}"[:200]
                continue
            if rnd:
                first.times.append(a)
                if b is not None:
                    second.times.append(b)
        print(f"  round {rnd}/{repeats} done", flush=True)
    for _first, second in rows:
        if not second.times and second.skipped is None:
            second.skipped = "not measured (its later calls reuse the first executor)"
    return rows


def main() -> None:
    args = parse_args()
    C.print_header("startup: time to the first result on a fresh pool of 2 workers", args)
    tmp = tempfile.mkdtemp(prefix="hither-startup-")
    try:
        base = None if args.baseline == "none" else extract(args.baseline, tmp)
        tools = []
        for method in METHODS:
            tools.append((f"hither new ParallelJobHandler(2, {method})", "hither_pool",
                          method, ROOT))
            if base is not None:
                tools.append((f"hither old ParallelJobHandler(2, {method})", "hither_pool",
                               method, base))
        tools += [(f"ProcessPoolExecutor(2) [{m}]", "ppe_pool", m, ROOT) for m in METHODS]
        tools.append(("loky ProcessPoolExecutor(2)", "loky_pool", "-", ROOT))
        tools.append(("joblib Parallel(n_jobs=2), 1st call", "joblib_parallel", "-", ROOT))
        rows = measure_all(tools, args.repeats)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    by_name = {t[0]: r for t, r in zip(tools, rows, strict=True)}
    empty = (C.Row("-"), C.Row("-"))
    new = {m: by_name[f"hither new ParallelJobHandler(2, {m})"] for m in METHODS}
    old = {m: by_name.get(f"hither old ParallelJobHandler(2, {m})", empty) for m in METHODS}
    if base is not None:
        print(f"(old = git ref {args.baseline})")
    C.print_table("time to the first result, pool created in a new process "
                  "('vs hither' = tool time / hither new forkserver)",
                  [r[0] for r in rows], per_job_label="(1 job)")
    C.print_table("time to the first result, 2nd pool of the same process "
                  "(per-worker start; 'vs hither' as above)",
                  [r[1] for r in rows], per_job_label="(1 job)")
    targets = []
    for method in METHODS:
        for i, what in enumerate(("new process", "2nd pool")):
            n, o = new[method][i], old[method][i]
            targets.append(C.Target(f"hither new / old, {method}, {what}",
                                    n.best / o.best if n.ok and o.ok else None, 1.5, "x"))
    C.print_targets(targets)
    medians = [f"{m} {new[m][i].median / old[m][i].median:.2f}x ({what})"
               for m in METHODS for i, what in enumerate(("new process", "2nd pool"))
               if new[m][i].ok and old[m][i].ok]
    if medians:
        print("On medians, new / old: " + ", ".join(medians))


if __name__ == "__main__":
    main()
