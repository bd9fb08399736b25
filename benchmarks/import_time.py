"""Start-up: ``import hither`` and ``hither --help`` in a fresh interpreter, next to peers.

Each sample is a new Python process (byte code compiled beforehand, as after an install).
Rows: the bare interpreter (``python -c pass``), ``import hither``, ``hither --help`` (what
the installed ``hither`` script runs: ``from hither.cli import main; main()``), and the
imports of peers (joblib, dask.distributed, submitit, ray) for scale. Each run also checks
that neither ``import hither`` nor ``hither --help`` loaded rich, docker or numpy.

Targets: ``import hither`` <= 60 ms over the bare interpreter; ``hither --help`` <= 150 ms
wall, interpreter start included.

    python benchmarks/import_time.py [--quick] [--repeats N]
"""

from __future__ import annotations

import os
import subprocess
import sys

import _common as C

HEAVY = ("rich", "docker", "numpy")
CHECK = (
    "import sys\n"
    "bad = [m for m in {heavy!r} if m in sys.modules]\n"
    "assert not bad, f'loaded at start-up: {{bad}}'\n"
)
CASES = {
    "python -c pass (interpreter)": "pass",
    "import hither": "import hither\n" + CHECK.format(heavy=HEAVY),
    "hither --help": (
        "import contextlib, io\n"
        "from hither.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    assert main(['--help']) == 0\n" + CHECK.format(heavy=HEAVY)
    ),
    "import joblib": "import joblib",
    "import dask.distributed": "import dask.distributed",
    "import submitit": "import submitit",
    "import ray": "import ray",
}


def run_once(code: str) -> float:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    t = C.now()
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True)
    elapsed = C.now() - t
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["failed"])[-1]
        raise RuntimeError(last)
    return elapsed


def main() -> None:
    args = C.parse_args(__doc__.splitlines()[0])
    C.print_header("Start-up: import and --help in a fresh interpreter", args)
    repeats = args.repeats * 4  # each sample is short: more of them
    rows = [C.measure(name, lambda code=code: run_once(code), repeats=repeats, warmup=2)
            for name, code in CASES.items()]
    C.print_table("fresh interpreter, wall time", rows, baseline="import hither")
    base = C.find(rows, "python -c pass (interpreter)")
    imp = C.find(rows, "import hither")
    helps = C.find(rows, "hither --help")
    joblib = C.find(rows, "import joblib")
    if base and imp:
        print(f"\nimport hither over the bare interpreter: {C.fmt_s(imp.best - base.best)}")
    if base and joblib and imp:
        print(f"import joblib over the bare interpreter: {C.fmt_s(joblib.best - base.best)}")
    C.print_targets([
        C.Target("import hither over the interpreter",
                 (imp.best - base.best) if imp and base else None, 0.060, "s"),
        C.Target("hither --help, wall", helps.best if helps else None, 0.150, "s"),
    ])


if __name__ == "__main__":
    main()
