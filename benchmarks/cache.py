"""The job cache vs joblib.Memory (and diskcache for a raw lookup); all in temp dirs.

(a) big argument: a cached call of ``array_mean(a)`` with a 100 MB float64 array,
    ``hi.Config(job_cache=hi.JobCache(path=tmp))`` and the default inline handler; the
    first call fills the cache (untimed), the later calls are timed (at least 20 of them). Peer: the
    second and later calls of ``joblib.Memory(tmp).cache(array_mean)``. Also reported:
    hither's ``hash_value`` of the array alone (one read of the 100 MB, the floor of a
    hit). Targets: hither <= 10 ms, and >= 10x faster than joblib.Memory.
(b) a fully cached pipeline: CHAINS chains of STEPS jobs ``add(a=<previous job>, b=<unique
    int>)`` (10,000 distinct keys at full size), run once to fill the cache, then re-run
    end to end (create every job, wait for the last of each chain) and timed. Peer: the
    same chains through ``joblib.Memory``. Also reported (information): the re-run with
    ``ParallelJobHandler(2)`` and the re-run in a fresh Python process. Target: hither
    <= 2 s.
(c) lookup of a small job: microseconds per cache hit of ``add(a=1, b=2)`` for hither
    (``.run().result()``), ``joblib.Memory`` and ``diskcache.Cache.get`` of a small value;
    plus hither's raw ``JobCache.get_record`` for comparison. No target.
(d) big results: a cache hit of ``make_text(mb=300, kind)`` whose result is a 300 MB ``str``
    or ``bytes``, in this process (the blob was written and verified here) and in a fresh
    Python process (the blob is hashed once there: the cost of a first hit); also the
    store's size on disk over the value's size, and the fresh process's peak memory. Peer:
    ``joblib.Memory`` hits of the same function. Targets: a hit <= 0.5 s, disk <= 1.2x.

    python benchmarks/cache.py [--quick] [--repeats N]
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import warnings

import _common as C
from _jobs import add, array_mean, make_text

HERE = os.path.dirname(os.path.abspath(__file__))


# ------------------------------------------------------------------------ (a) big argument
def bench_big_arg(tmp: str, mb: int, repeats: int) -> list[C.Row]:
    import numpy as np

    # each call costs ~10 ms (hither) to ~0.2 s (joblib) and the memory bandwidth of a
    # shared machine is noisy: take more samples than the other benchmarks
    repeats = max(repeats, 20)

    import hither as hi

    arr = np.random.default_rng(0).random(mb * 1024 * 1024 // 8)
    want = float(arr.mean())
    rows = []
    cache = hi.JobCache(path=os.path.join(tmp, "hither_a"))

    def hither_once() -> float:
        with hi.Config(job_cache=cache):
            t = C.now()
            j = array_mean.run(a=arr)
            v = j.result()
            elapsed = C.now() - t
        if not j.cache_hit or v != want:
            raise RuntimeError(f"expected a cache hit (hit={j.cache_hit})")
        return elapsed

    with hi.Config(job_cache=cache):  # fill
        t = C.now()
        array_mean.run(a=arr).result()
        print(f"  (hither first call, filling the cache: {C.fmt_s(C.now() - t)})")
    rows.append(C.measure(f"hither JobCache hit, {mb} MB array arg", hither_once,
                          repeats=repeats, n=1))

    from hither.hashing import hash_value

    rows.append(C.measure("  ref.: hither hash_value(array) alone",
                          C.timed(lambda: hash_value(arr)), repeats=repeats, n=1,
                          note="(information: one read of 100 MB)"))
    try:
        import joblib
    except ImportError as e:
        rows.append(C.skipped("joblib.Memory second call", str(e)))
        return rows
    mem = joblib.Memory(os.path.join(tmp, "joblib_a"), verbose=0)
    f = mem.cache(array_mean)
    f(arr)  # fill
    rows.append(C.measure(f"joblib.Memory cached call, {mb} MB array arg",
                          C.timed(lambda: f(arr)), repeats=repeats, n=1))
    return rows


# ------------------------------------------------------------------------ (b) pipeline
def run_pipeline(chains: int, steps: int):
    """Build the whole pipeline (hither jobs), wait for the last job of every chain."""
    lasts = []
    for c in range(chains):
        j = add.run(a=c, b=0)
        for s in range(1, steps):
            j = add.run(a=j, b=c * 1_000_000 + s)
        lasts.append(j)
    return [j.result() for j in lasts], lasts


def expected_pipeline(chains: int, steps: int) -> list[int]:
    out = []
    for c in range(chains):
        v = c
        for s in range(1, steps):
            v = v + c * 1_000_000 + s
        out.append(v)
    return out


def child_rerun(path: str, chains: int, steps: int) -> None:
    """Entry point of the fresh-process re-run: prints the pipeline time in seconds."""
    import hither as hi

    with hi.Config(job_cache=hi.JobCache(path=path)):
        t = C.now()
        got, lasts = run_pipeline(chains, steps)
        elapsed = C.now() - t
    if got != expected_pipeline(chains, steps) or not all(j.cache_hit for j in lasts):
        raise SystemExit("fresh-process re-run: wrong results or misses")
    print(f"PIPELINE_SECONDS {elapsed}")


def bench_pipeline(tmp: str, chains: int, steps: int, repeats: int) -> list[C.Row]:
    import hither as hi

    n = chains * steps
    want = expected_pipeline(chains, steps)
    path = os.path.join(tmp, "hither_b")
    cache = hi.JobCache(path=path)
    rows = []
    with hi.Config(job_cache=cache):
        t = C.now()
        got, _ = run_pipeline(chains, steps)
        print(f"  (hither first run, {n} misses filling the cache: {C.fmt_s(C.now() - t)})")
    if got != want:
        raise RuntimeError("wrong pipeline results")

    def rerun(handler) -> float:
        with hi.Config(job_cache=cache, job_handler=handler):
            t = C.now()
            got, lasts = run_pipeline(chains, steps)
            elapsed = C.now() - t
        if got != want or not all(j.cache_hit for j in lasts):
            raise RuntimeError("expected cache hits")
        return elapsed

    rows.append(C.measure("hither re-run, all hits (inline handler)",
                          lambda: rerun(None), repeats=repeats, n=n, warmup=0))
    jh = hi.ParallelJobHandler(2)
    try:
        rows.append(C.measure("hither re-run, all hits (ParallelJobHandler(2))",
                              lambda: rerun(jh), repeats=repeats, n=n, warmup=0,
                              note="(information)"))
    finally:
        jh.shutdown()

    pipe_times, walls = [], []

    def fresh_once() -> float:
        t = C.now()
        out = subprocess.run([sys.executable, os.path.abspath(__file__), "--child-rerun",
                              path, str(chains), str(steps)], capture_output=True, text=True,
                             cwd=HERE, check=False)
        wall = C.now() - t
        line = [x for x in out.stdout.splitlines() if x.startswith("PIPELINE_SECONDS")]
        if out.returncode != 0 or not line:
            raise RuntimeError(f"child failed: {out.stderr.strip()[-300:]}")
        pipe_times.append(float(line[0].split()[1]))
        walls.append(wall)
        return pipe_times[-1]

    row = C.measure("hither re-run in a fresh process (pipeline only)", fresh_once,
                    repeats=repeats, n=n, warmup=0)
    if walls:
        row.note = f"(information; whole process incl. imports: best {C.fmt_s(min(walls))})"
    rows.append(row)

    try:
        import joblib
    except ImportError as e:
        rows.append(C.skipped("joblib.Memory re-run", str(e), n))
        return rows
    mem = joblib.Memory(os.path.join(tmp, "joblib_b"), verbose=0)
    madd = mem.cache(add)

    def joblib_pipeline() -> list[int]:
        out = []
        for c in range(chains):
            v = madd(c, 0)
            for s in range(1, steps):
                v = madd(v, c * 1_000_000 + s)
            out.append(v)
        return out

    t = C.now()
    joblib_pipeline()
    print(f"  (joblib first run, {n} misses: {C.fmt_s(C.now() - t)})")

    def joblib_once() -> float:
        t = C.now()
        got = joblib_pipeline()
        elapsed = C.now() - t
        if got != want:
            raise RuntimeError("wrong joblib results")
        return elapsed

    rows.append(C.measure("joblib.Memory re-run, all hits", joblib_once,
                          repeats=repeats, n=n, warmup=0))
    return rows


# ------------------------------------------------------------------------ (c) small hit
def bench_small_hit(tmp: str, calls: int, repeats: int) -> list[C.Row]:
    import hither as hi

    rows = []
    cache = hi.JobCache(path=os.path.join(tmp, "hither_c"))
    with hi.Config(job_cache=cache):
        j0 = add.run(a=1, b=2)
        j0.result()
    key = j0.key

    def hither_once() -> float:
        with hi.Config(job_cache=cache):
            t = C.now()
            for _ in range(calls):
                j = add.run(a=1, b=2)
                j.result()
            elapsed = C.now() - t
        if not j.cache_hit:
            raise RuntimeError("expected a hit")
        return elapsed

    rows.append(C.measure("hither add.run(a=1, b=2).result(), hit", hither_once,
                          repeats=repeats, n=calls))

    def record_once() -> float:
        t = C.now()
        for _ in range(calls):
            cache.get_record(key)
        return C.now() - t

    rows.append(C.measure("  ref.: hither JobCache.get_record(key) alone", record_once,
                          repeats=repeats, n=calls, note="(information)"))
    try:
        import joblib

        mem = joblib.Memory(os.path.join(tmp, "joblib_c"), verbose=0)
        madd = mem.cache(add)
        madd(1, 2)

        def joblib_once() -> float:
            t = C.now()
            for _ in range(calls):
                madd(1, 2)
            return C.now() - t

        rows.append(C.measure("joblib.Memory madd(1, 2), hit", joblib_once,
                              repeats=repeats, n=calls))
    except ImportError as e:
        rows.append(C.skipped("joblib.Memory", str(e), calls))
    try:
        import diskcache

        dc = diskcache.Cache(os.path.join(tmp, "diskcache_c"))
        dc.set("small", 3)

        def dc_once() -> float:
            t = C.now()
            for _ in range(calls):
                dc.get("small")
            return C.now() - t

        rows.append(C.measure("diskcache.Cache.get('small')", dc_once, repeats=repeats,
                              n=calls))
        dc.close()
    except ImportError as e:
        rows.append(C.skipped("diskcache", str(e), calls))
    return rows


# ------------------------------------------------------------------------ (d) big results
def child_big_hit(path: str, mb: int, kind: str) -> None:
    """Entry point of the fresh-process hit: prints the hit's time and the peak memory."""
    import hither as hi

    with hi.Config(job_cache=hi.JobCache(path=path)):
        t = C.now()
        j = make_text.run(mb=mb, kind=kind)
        v = j.result()
        elapsed = C.now() - t
    if not j.cache_hit or len(v) != mb * 1_000_000:
        raise SystemExit("fresh-process hit: a miss or a wrong value")
    # VmHWM, not ru_maxrss: on Linux the latter keeps the parent's peak across fork + exec
    # (file pages of the memory-mapped blob count too: they are the page cache, shared)
    peak = 0
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                peak = int(line.split()[1]) * 1024
    print(f"HIT_SECONDS {elapsed} PEAK_BYTES {peak}")


def _disk_bytes(root: str) -> int:
    total = 0
    for d, _, files in os.walk(root):
        for name in files:
            total += os.path.getsize(os.path.join(d, name))
    return total


def bench_big_results(tmp: str, mb: int, repeats: int) -> tuple[list[C.Row], dict[str, float]]:
    rows: list[C.Row] = []
    facts: dict[str, float] = {}
    for kind in ("str", "bytes"):
        rows += _big_result(tmp, mb, kind, repeats, facts)
    return rows, facts


def _big_result(tmp: str, mb: int, kind: str, repeats: int,
                facts: dict[str, float]) -> list[C.Row]:
    import hither as hi

    rows = []
    size = mb * 1_000_000
    path = os.path.join(tmp, f"hither_d_{kind}")
    cache = hi.JobCache(path=path)
    with hi.Config(job_cache=cache):
        t = C.now()
        make_text.run(mb=mb, kind=kind).result()
        print(f"  (hither first call, {mb} MB {kind} result: {C.fmt_s(C.now() - t)})")
    facts[f"disk_{kind}"] = _disk_bytes(path) / size

    def hither_once() -> float:
        with hi.Config(job_cache=cache):
            t = C.now()
            j = make_text.run(mb=mb, kind=kind)
            v = j.result()
            elapsed = C.now() - t
        if not j.cache_hit or len(v) != size:
            raise RuntimeError("expected a cache hit")
        return elapsed

    rows.append(C.measure(f"hither hit, {mb} MB {kind} result", hither_once,
                          repeats=repeats, n=1))
    peaks: list[int] = []

    def fresh_once() -> float:
        out = subprocess.run([sys.executable, os.path.abspath(__file__), "--child-big-hit",
                              path, str(mb), kind], capture_output=True, text=True,
                             cwd=HERE, check=False)
        line = [x for x in out.stdout.splitlines() if x.startswith("HIT_SECONDS")]
        if out.returncode != 0 or not line:
            raise RuntimeError(f"child failed: {out.stderr.strip()[-300:]}")
        parts = line[0].split()
        peaks.append(int(parts[3]))
        return float(parts[1])

    row = C.measure(f"hither hit in a fresh process, {mb} MB {kind}", fresh_once,
                    repeats=max(1, min(repeats, 3)), n=1, warmup=0)
    if peaks:
        facts[f"peak_{kind}"] = min(peaks)
        row.note = f"(peak memory of the process {min(peaks) / 1e6:.0f} MB)"
    rows.append(row)
    try:
        import joblib
    except ImportError as e:
        rows.append(C.skipped(f"joblib.Memory hit, {mb} MB {kind}", str(e)))
        return rows
    mem = joblib.Memory(os.path.join(tmp, f"joblib_d_{kind}"), verbose=0)
    f = mem.cache(make_text)
    f(mb, kind)
    rows.append(C.measure(f"joblib.Memory hit, {mb} MB {kind}",
                          C.timed(lambda: f(mb, kind)), repeats=repeats, n=1))
    return rows


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--child-rerun":
        child_rerun(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
        return
    if len(sys.argv) == 5 and sys.argv[1] == "--child-big-hit":
        child_big_hit(sys.argv[2], int(sys.argv[3]), sys.argv[4])
        return
    args = C.parse_args(__doc__.splitlines()[0])
    warnings.simplefilter("ignore")
    mb = 100
    chains, steps = (20, 50) if args.quick else (100, 100)
    calls = 500 if args.quick else 2000
    big_mb = 30 if args.quick else 300
    C.print_header("cache: hither JobCache vs joblib.Memory / diskcache (temp dirs)", args)
    tmp = tempfile.mkdtemp(prefix="hither-bench-cache-")
    try:
        print(f"(a) cached call with a {mb} MB float64 argument")
        a = bench_big_arg(tmp, mb, args.repeats)
        print(f"(b) fully cached pipeline: {chains} chains x {steps} jobs")
        b = bench_pipeline(tmp, chains, steps, args.repeats)
        print(f"(c) small cache hit, {calls} lookups per timing")
        c = bench_small_hit(tmp, calls, args.repeats)
        print(f"(d) cache hit of a {big_mb} MB str / bytes result")
        d, facts = bench_big_results(tmp, big_mb, args.repeats)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    C.print_table(f"(a) cached call, {mb} MB float64 argument (time per call; "
                  "'vs hither' = tool time / hither time)", a)
    C.print_table(f"(b) re-run of a fully cached {chains * steps}-job pipeline (total; "
                  "per job)", b)
    C.print_table(f"(c) small cache hit ({calls} lookups; 'per hit' column)", c,
                  per_job_label="per hit")
    C.print_table(f"(d) cache hit of a {big_mb} MB result", d)
    print("  store size on disk / value size: " + ", ".join(
        f"{kind} {facts[f'disk_{kind}']:.3f}x" for kind in ("str", "bytes")
        if f"disk_{kind}" in facts))
    ha = a[0] if a and a[0].ok else None
    ja = C.find(a, f"joblib.Memory cached call, {mb} MB array arg") if ha else None
    hb = b[0] if b and b[0].ok else None
    big = {r.tool: r for r in d if r.ok}
    limit_b = 2.0 * chains * steps / 10_000
    C.print_targets([
        C.Target(f"(a) hither cached call with a {mb} MB argument",
                 ha.best if ha else None, 0.010, "s"),
        C.Target(f"(a) joblib.Memory / hither, cached call with a {mb} MB argument",
                 ja.best / ha.best if ja and ha else None, 10.0, "x", at_least=True),
        C.Target(f"(b) hither re-run of the cached {chains * steps}-job pipeline",
                 hb.best if hb else None, limit_b, "s"),
        *(C.Target(f"(d) hither hit{where}, {big_mb} MB {kind} result",
                   big[tool].best if tool in big else None, 0.5, "s")
          for kind in ("str", "bytes") for where, tool in (
              ("", f"hither hit, {big_mb} MB {kind} result"),
              (" in a fresh process", f"hither hit in a fresh process, {big_mb} MB {kind}"))),
        *(C.Target(f"(d) store size / value size, {big_mb} MB {kind}",
                   facts.get(f"disk_{kind}"), 1.2, "x") for kind in ("str", "bytes")),
    ])


if __name__ == "__main__":
    main()
