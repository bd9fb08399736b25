"""Cached replay, cold recording and driver memory: hither JobCache vs joblib.Memory.

Pipeline shape (as ``cache.py`` (b) at 10,000 keys): C two-stage chains, job 1 of chain c
is ``add(a=c, b=0)``, job 2 is ``add(a=<job 1>, b=c + 1)``; 2C distinct keys. Every
timed run happens in a **fresh Python process** and its wall time includes the
interpreter start and the imports (``python -c ...`` until exit); the child checks every
result (and, for hither, that all were cache hits) and fails otherwise.

1. replay: the store filled beforehand (untimed), then the whole pipeline re-run from a
   new process, for 1k / 10k / 100k keys (linear scaling shows in the per-job column).
2. cold: 10,000 jobs recorded into an empty store on the inline handler (hither) vs the
   same calls through ``joblib.Memory`` into an empty folder; time of the calls.
3. memory: peak RSS (``VmHWM``) of the driver of the 100k-key replay, and of a
   100,000-job pipeline without a cache, next to joblib's replay.

Targets: replay of 10k keys <= 0.4 s and >= 2.5x faster than joblib; 100k keys <= 3 s;
cold <= 1.0x joblib; driver peak RSS <= 500 MB at 100k jobs.

    python benchmarks/replay.py [--quick] [--repeats N]
"""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
import tempfile

import _common as C

HERE = os.path.dirname(os.path.abspath(__file__))

CHILD = r"""
import sys, time
t0 = time.perf_counter()
tool, path, chains, handler = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
sys.path.insert(0, {here!r})
from _jobs import add
want = [2 * c + 1 for c in range(chains)]
if tool == "hither":
    import hither as hi
    cache = None if path == "-" else hi.JobCache(path=path)
    with hi.Config(job_cache=cache):
        t1 = time.perf_counter()
        lasts = []
        for c in range(chains):
            lasts.append(add.run(a=add.run(a=c, b=0), b=c + 1))
        got = [j.result() for j in lasts]
        t2 = time.perf_counter()
    hits = all(j.cache_hit for j in lasts)
else:
    import joblib
    mem = joblib.Memory(path, verbose=0).cache(add)
    t1 = time.perf_counter()
    got = [mem(mem(c, 0), c + 1) for c in range(chains)]
    t2 = time.perf_counter()
    hits = None
if got != want:
    raise SystemExit("wrong results")
peak = 0
with open("/proc/self/status") as f:
    for line in f:
        if line.startswith("VmHWM:"):
            peak = int(line.split()[1]) * 1024
print("RESULT", t2 - t1, hits, peak)
"""


CPU: dict[str, list[float]] = {}


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def child(tool: str, path: str, chains: int, expect_hits: bool | None = None,
          ) -> tuple[float, float, int]:
    """Run the pipeline in a new process: (whole-process wall, calls only, peak RSS).

    The process's CPU time (user + system) goes to ``CPU[tool]``: on a loaded machine it
    moves less than the wall time."""
    code = CHILD.format(here=HERE)
    cpu = _children_cpu()
    t = C.now()
    out = subprocess.run([sys.executable, "-c", code, tool, path, str(chains), "inline"],
                         capture_output=True, text=True, cwd=HERE, check=False)
    wall = C.now() - t
    CPU.setdefault(tool, []).append(_children_cpu() - cpu)
    line = [x for x in out.stdout.splitlines() if x.startswith("RESULT")]
    if out.returncode != 0 or not line:
        raise RuntimeError(f"{tool} child failed: {out.stderr.strip()[-400:]}")
    _, calls, hits, peak = line[0].split()
    if expect_hits is not None and hits != str(expect_hits):
        raise RuntimeError(f"{tool}: expected all hits={expect_hits}, got {hits}")
    return wall, float(calls), int(peak)


def interpreter_start(repeats: int) -> tuple[float, float]:
    """The best wall time of ``python -c pass``, and of ``python -S -c pass`` (without
    ``site``: the difference is what this installation's ``.pth`` start-up hooks cost
    every process, hither's and joblib's alike)."""
    def best(*flags: str) -> float:
        times = []
        for _ in range(max(3, repeats)):
            t = C.now()
            subprocess.run([sys.executable, *flags, "-c", "pass"], check=True)
            times.append(C.now() - t)
        return min(times)

    return best(), best("-S")


def bench_replay(tmp: str, keys: int, repeats: int, peaks: dict[str, int]) -> list[C.Row]:
    chains = keys // 2
    hpath, jpath = os.path.join(tmp, f"h{keys}"), os.path.join(tmp, f"j{keys}")
    fill_h = child("hither", hpath, chains, expect_hits=False)
    fill_j = child("joblib", jpath, chains)
    print(f"  ({keys} keys: filling took hither {C.fmt_s(fill_h[1])}, joblib "
          f"{C.fmt_s(fill_j[1])})", flush=True)
    rows = []
    for tool, path, hits in (("hither", hpath, True), ("joblib", jpath, None)):
        mem: list[int] = []

        cpus: list[float] = []

        def once(tool=tool, path=path, hits=hits, mem=mem, cpus=cpus) -> float:
            wall, _, peak = child(tool, path, chains, expect_hits=hits)
            mem.append(peak)
            cpus.append(CPU[tool][-1])
            return wall

        name = "hither JobCache" if tool == "hither" else "joblib.Memory"
        row = C.measure(f"{name} replay, {keys} keys (whole process)", once,
                        repeats=repeats, n=keys, warmup=0)
        if mem:
            peaks[f"{tool} replay {keys}"] = min(mem)
            row.note = f"(CPU best {min(cpus):.3f} s; peak RSS {min(mem) / 1e6:.0f} MB)"
        rows.append(row)
    return rows


def bench_cold(tmp: str, keys: int, repeats: int) -> list[C.Row]:
    chains = keys // 2
    rows = []
    for tool, name in (("hither", "hither JobCache, inline handler"),
                       ("joblib", "joblib.Memory")):
        cpus: list[float] = []

        def once(tool=tool, cpus=cpus) -> float:
            path = tempfile.mkdtemp(dir=tmp)
            try:
                _, calls, _ = child(tool, path, chains,
                                    expect_hits=False if tool == "hither" else None)
                cpus.append(CPU[tool][-1])
            finally:
                shutil.rmtree(path, ignore_errors=True)
            return calls

        row = C.measure(f"{name}: record {keys} new results (calls)", once,
                        repeats=repeats, n=keys, warmup=0)
        if cpus:
            row.note = f"(CPU of the whole process, best {min(cpus):.3f} s)"
        rows.append(row)
    return rows


def main() -> None:
    args = C.parse_args(__doc__.splitlines()[0])
    sizes = (1_000, 10_000) if args.quick else (1_000, 10_000, 100_000)
    if os.environ.get("BENCH_SIZES"):  # e.g. BENCH_SIZES=10000,100000
        sizes = tuple(int(x) for x in os.environ["BENCH_SIZES"].split(","))
    C.print_header("replay: hither JobCache vs joblib.Memory, fresh processes", args)
    tmp = tempfile.mkdtemp(prefix="hither-bench-replay-")
    peaks: dict[str, int] = {}
    try:
        start, bare = interpreter_start(args.repeats)
        print("1. replay of a filled store (fresh process, interpreter start included)")
        print(f"  (interpreter start, `python -c pass`: {C.fmt_s(start)}; without site "
              f"(-S): {C.fmt_s(bare)})", flush=True)
        replay: dict[int, list[C.Row]] = {}
        for keys in sizes:
            reps = args.repeats if keys <= 10_000 else max(1, min(args.repeats, 2))
            replay[keys] = bench_replay(tmp, keys, reps, peaks)
        cold_keys = 2_000 if args.quick else 10_000
        print(f"2. cold: {cold_keys} new results recorded", flush=True)
        cold = bench_cold(tmp, cold_keys, max(1, min(args.repeats, 3)))
        big = sizes[-1]
        print(f"3. memory: {big}-job pipeline without a cache", flush=True)
        _, _, nocache_peak = child("hither", "-", big // 2, expect_hits=False)
        peaks[f"hither no cache {big}"] = nocache_peak
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for keys, rows in replay.items():
        C.print_table(f"1. replay of {keys} cached keys, whole fresh process", rows)
    C.print_table(f"2. cold: record {cold_keys} new results (time of the calls)", cold)
    print("\n3. driver peak RSS (VmHWM):")
    for what, peak in peaks.items():
        print(f"  {what:32s} {peak / 1e6:8.0f} MB")
    targets = []
    ten = {r.tool.split()[0]: r for r in replay.get(10_000, []) if r.ok}
    if "hither" in ten:
        targets.append(C.Target("1. hither replay, 10k keys, whole process",
                                ten["hither"].best, 0.4, "s"))
        if "joblib.Memory" in ten:
            targets.append(C.Target("1. joblib / hither, replay of 10k keys",
                                    ten["joblib.Memory"].best / ten["hither"].best, 2.5,
                                    "x", at_least=True))
    hundred = [r for r in replay.get(100_000, []) if r.ok and r.tool.startswith("hither")]
    if hundred:
        targets.append(C.Target("1. hither replay, 100k keys, whole process",
                                hundred[0].best, 3.0, "s"))
    if len(cold) == 2 and all(r.ok for r in cold):
        targets.append(C.Target("2. hither / joblib, cold recording",
                                cold[0].best / cold[1].best, 1.0, "x"))
    for what in (f"hither replay {big}", f"hither no cache {big}"):
        if what in peaks and big >= 100_000:
            targets.append(C.Target(f"3. driver peak RSS, {what}", peaks[what] / 1e6,
                                    500, "MB"))
    C.print_targets(targets)
    print(f"machine speed reference at the end of the run: {C.fmt_s(C.machine_speed())}")


if __name__ == "__main__":
    main()
