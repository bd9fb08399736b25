"""A fake Slurm for fast tests: sbatch, sacct, squeue, scancel, scontrol, sacctmgr.

``python fake.py COMMAND ARGS...`` (the test puts one wrapper per command on PATH). State
lives in ``$FAKE_SLURM_DIR``: ``calls.log`` (one line per call), ``next_id``, and
``tasks/<JOBID>_<INDEX>`` (``STATE|EXIT:SIGNAL|PID``). ``sbatch`` runs each array task of
the script on this machine with bash, as Slurm would on a node, all at once. Settings:
``FAKE_MAX_ARRAY`` (MaxArraySize, default 1001), ``FAKE_ACCOUNTING`` (``0``: no
accounting, ``sacct`` fails), ``FAKE_STATES`` (``INDEX=STATE,...``: tasks of the *first*
array end in that state without running, e.g. ``1=PREEMPTED,2=TIMEOUT``; of *every* array
with ``FAKE_STATES_EVERY=1``), ``FAKE_DELAY`` (seconds before a task starts),
``FAKE_MAX_SUBMIT`` (the user's MaxSubmitJobs, told by ``sacctmgr``; ``sbatch`` refuses an
array that would pass it; ``FAKE_LIMIT_HIDDEN=1``: ``sacctmgr`` does not tell it),
``FAKE_SACCT_BLIND=1`` (``sacct`` knows no job), ``FAKE_TIME_LIMIT`` (seconds a task may
run: its ``SLURM_JOB_END_TIME``; then its processes get SIGTERM and it ends ``TIMEOUT``).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

D = Path(os.environ["FAKE_SLURM_DIR"])
TASKS = D / "tasks"


def write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def sbatch(args: list[str]) -> int:
    script = args[-1]
    text = Path(script).read_text()
    m = re.search(r"^#SBATCH --array=0-(\d+)", text, re.M)
    n = int(m.group(1)) + 1 if m else 1
    if n > int(os.environ.get("FAKE_MAX_ARRAY", "1001")):
        print("sbatch: error: Batch job submission failed: Invalid job array specification",
              file=sys.stderr)
        return 1
    counter = D / "next_id"
    job = int(counter.read_text()) if counter.exists() else 100
    write(counter, str(job + 1))
    limit = os.environ.get("FAKE_MAX_SUBMIT")
    if limit and n + len(rows(None, ("RUNNING", "PENDING"))) > int(limit):
        print("sbatch: error: AssocMaxSubmitJobLimit", file=sys.stderr)
        print("sbatch: error: Batch job submission failed: Job violates accounting/QOS "
              "policy (job submit limit, user's size and/or time limits)", file=sys.stderr)
        return 1
    first = not any(TASKS.iterdir()) or os.environ.get("FAKE_STATES_EVERY") == "1"
    forced = dict(x.split("=") for x in os.environ.get("FAKE_STATES", "").split(",") if x)
    for i in range(n):
        tid = f"{job}_{i}" if m else str(job)
        if first and str(i) in forced:
            write(TASKS / tid, f"{forced[str(i)]}|0:0|0")
            continue
        write(TASKS / tid, "RUNNING|0:0|0")
        subprocess.Popen([sys.executable, __file__, "_task", tid, str(i), script],
                         start_new_session=True, stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    print(job)
    return 0


def task(tid: str, index: str, script: str) -> int:
    time.sleep(float(os.environ.get("FAKE_DELAY", "0")))
    env = {**os.environ, "SLURM_ARRAY_TASK_ID": index, "SLURM_JOB_ID": tid}
    limit = float(os.environ.get("FAKE_TIME_LIMIT", "0"))
    if limit:  # as Slurm >= 23.02 tells a job when it will be stopped
        env["SLURM_JOB_END_TIME"] = f"{time.time() + limit:.0f}"
    log = open(Path(script).parent / f"{tid}.log", "ab")
    proc = subprocess.Popen(["bash", script], env=env, stdout=log, stderr=log,
                            start_new_session=bool(limit))
    write(TASKS / tid, f"RUNNING|0:0|{proc.pid}")
    try:
        code = proc.wait(timeout=limit or None)
    except subprocess.TimeoutExpired:  # the time limit: SIGTERM to the task, then SIGKILL
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        write(TASKS / tid, "TIMEOUT|0:15|0")
        return 0
    state = (TASKS / tid).read_text().split("|")[0]
    if state == "CANCELLED":
        return 0
    exit_code = f"{code}:0" if code >= 0 else f"0:{-code}"
    write(TASKS / tid, f"{'COMPLETED' if code == 0 else 'FAILED'}|{exit_code}|0")
    return 0


def rows(ids: list[str] | None, states: tuple[str, ...] = ()) -> list[tuple[str, str, str]]:
    out = []
    for f in sorted(TASKS.iterdir()):
        if (ids is None or f.name.split("_")[0] in ids) and ".tmp" not in f.name:
            state, code, _pid = f.read_text().split("|")
            if not states or state in states:
                out.append((f.name, state, code))
    return out


def arg(args: list[str], flag: str) -> list[str]:
    return args[args.index(flag) + 1].split(",") if flag in args else []


def main(argv: list[str]) -> int:
    TASKS.mkdir(parents=True, exist_ok=True)
    cmd, args = argv[1], argv[2:]
    if cmd != "_task":
        with open(D / "calls.log", "a") as f:
            f.write(" ".join([cmd, *args]) + "\n")
    if cmd == "sbatch":
        return sbatch(args)
    if cmd == "_task":
        return task(*args)
    if cmd == "scontrol":
        acct = "none" if os.environ.get("FAKE_ACCOUNTING") == "0" else "slurmdbd"
        print(f"AccountingStorageType   = accounting_storage/{acct}")
        print(f"MaxArraySize            = {os.environ.get('FAKE_MAX_ARRAY', '1001')}")
        print("MaxJobCount             = 10000")
        return 0
    if cmd == "sacctmgr":
        if os.environ.get("FAKE_MAX_SUBMIT") and os.environ.get("FAKE_LIMIT_HIDDEN") != "1":
            print(os.environ["FAKE_MAX_SUBMIT"])
        return 0
    if cmd == "sacct":
        if os.environ.get("FAKE_ACCOUNTING") == "0":
            print("Slurm accounting storage is disabled", file=sys.stderr)
            return 1
        if os.environ.get("FAKE_SACCT_BLIND") == "1":
            return 0
        for tid, state, code in rows(arg(args, "-j")):
            print(f"{tid}|{state}|{code}")
        return 0
    if cmd == "squeue":
        for tid, state, _code in rows(arg(args, "-j")):
            if state in ("RUNNING", "PENDING"):
                print(f"{tid}|{state}")
        return 0
    if cmd == "scancel":
        for tid in args:
            f = TASKS / tid
            if not f.exists():
                continue
            state, code, pid = f.read_text().split("|")
            if state in ("RUNNING", "PENDING"):
                write(f, "CANCELLED|0:15|0")
                if int(pid):
                    try:
                        os.killpg(int(pid), signal.SIGKILL)
                    except OSError:
                        try:
                            os.kill(int(pid), signal.SIGKILL)
                        except OSError:
                            pass
        return 0
    print(f"fake slurm: unknown command {cmd}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
