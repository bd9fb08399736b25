"""CPU instructions per cached replay job, hither JobCache vs joblib.Memory, under callgrind.

Wall and CPU times on a shared virtual machine move by tens of percent from one minute to
the next; the number of instructions a process executes barely moves. This benchmark runs
the replay of ``replay.py`` (C two-stage chains ``add(a=add(a=c, b=0), b=c + 1)``, every
job a cache hit) under valgrind's callgrind, once with N chains and once with 2N, after the
same untimed warm-up (imports, the first shards of the hit index, code identity). The
difference of the two counts, divided by the 2N jobs it adds, is what one cache hit costs:
start-up and exit cancel out. Each run checks its results (and, for hither, that every job
was a cache hit).

valgrind emulates some instructions (SHA extensions among them) with many of its own, so
the counts are for comparing versions and tools here, not a cycle count. Needs valgrind
(``apt-get install valgrind``); prints SKIPPED without it.

    python benchmarks/instructions.py [--quick] [--chains N]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
WARM = 200  # untimed warm-up chains, replayed before the measured ones

CHILD = r"""
import os, sys
sys.path.insert(0, {here!r})
from _jobs import add
tool, path, first, count = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
filling = len(sys.argv) > 5
if tool == "hither":
    import hither as hi
    with hi.Config(job_cache=hi.JobCache(path=path)):
        warm = [add.run(a=add.run(a=c, b=0), b=c + 1) for c in range({warm})]
        lasts = [add.run(a=add.run(a=c, b=0), b=c + 1) for c in range(first, first + count)]
        got = [j.result() for j in lasts]
    if not filling and not all(j.cache_hit for j in warm + lasts):
        raise SystemExit("not all cache hits")
else:
    import joblib
    mem = joblib.Memory(path, verbose=0).cache(add)
    warm = [mem(mem(c, 0), c + 1) for c in range({warm})]
    got = [mem(mem(c, 0), c + 1) for c in range(first, first + count)]
if got != [2 * c + 1 for c in range(first, first + count)]:
    raise SystemExit("wrong results")
"""


def _run(code: str, *args: str, valgrind: str | None = None, out: str = "") -> int | None:
    cmd = [sys.executable, "-c", code, *args]
    if valgrind:
        cmd = [valgrind, "--tool=callgrind", f"--callgrind-out-file={out}", *cmd]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=HERE, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"child failed: {proc.stderr.strip()[-400:]}")
    if not valgrind:
        return None
    found = re.search(r"Collected : (\d+)", proc.stderr)
    if found is None:
        raise RuntimeError(f"no instruction count from callgrind: {proc.stderr[-300:]}")
    return int(found.group(1))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="100 chains instead of 300")
    p.add_argument("--chains", type=int, default=None, help="N (default 300)")
    args = p.parse_args()
    n = args.chains or (100 if args.quick else 300)
    print("=" * 78)
    print(f"instructions per cache hit (callgrind), {n} and {2 * n} chains after {WARM} "
          "warm-up chains")
    print("=" * 78, flush=True)
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        print("SKIPPED: valgrind is not installed (apt-get install valgrind)")
        return
    code = CHILD.format(here=HERE, warm=WARM)
    tmp = tempfile.mkdtemp(prefix="hither-bench-instr-")
    per_job: dict[str, float] = {}
    try:
        for tool in ("hither", "joblib"):
            path = os.path.join(tmp, tool)
            _run(code, tool, path, "0", str(WARM + 2 * n), "fill")  # (untimed)
            counts = []
            for count in (n, 2 * n):
                out = os.path.join(tmp, f"{tool}.{count}.cg")
                counts.append(_run(code, tool, path, str(WARM), str(count),
                                   valgrind=valgrind, out=out))
            assert counts[0] is not None and counts[1] is not None
            per_job[tool] = (counts[1] - counts[0]) / (2 * n)
            print(f"  {tool:8s} {counts[0]:>14,d} instructions ({n} chains), "
                  f"{counts[1]:>14,d} ({2 * n}): {per_job[tool]:>10,.0f} per job", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\njoblib.Memory / hither JobCache, instructions per cache hit: "
          f"{per_job['joblib'] / per_job['hither']:.2f}x")


if __name__ == "__main__":
    main()
