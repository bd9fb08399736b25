"""SlurmJobHandler's array mode on the real Slurm cluster (``.ci/setup-slurm.sh``): how
tasks end, cancel, and a driver killed mid-pipeline. Few tests, each batching its jobs
(Slurm starts a job about a second after it is submitted)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import hither as hi
from hither.handlers.slurm_watch import SlurmCommands
from tests.components import require

from .slurmfuncs import sl_add, sl_exit, sl_kill9, sl_raise, sl_sleep, sl_where

DRIVER = Path(__file__).parent / "scripts" / "slurm_driver.py"


@pytest.fixture(autouse=True)
def _slurm():
    require("slurm")
    require("sacct")


def _states(job_id: str) -> dict[str, str]:
    from hither.handlers.slurm_script import parse_sacct

    out = SlurmCommands().run(["sacct", "-X", "-n", "-P", "--format=JobID,State,ExitCode",
                               "-j", job_id]).stdout
    return {k: v.state for k, v in parse_sacct(out).items()}


def _queue_state(jh: hi.SlurmJobHandler, job: hi.Job) -> str | None:
    """The state squeue gives the job's array task (None before it is submitted)."""
    task = jh._tasks.get(job.job_id)
    if task is None or task.slurm is None:
        return None
    r = subprocess.run(["squeue", "-h", "-r", "-o", "%T", "-j", task.slurm],
                       capture_output=True, text=True)
    return r.stdout.strip() or None


def test_array_mode_results_failures_timeout_cancel(tmp_path):
    cache = hi.JobCache(path=tmp_path / "store")
    jh = hi.SlurmJobHandler(working_dir=tmp_path / "work", mode="array",
                            num_workers_per_batch=8, num_cores_per_job=1,
                            poll_interval=(0.5, 2.0), outcome_grace=5)
    with jh, hi.Config(job_handler=jh, job_cache=cache):
        where = [sl_where.run(i=i) for i in range(4)]
        chained = sl_add.run(x=sl_add.run(x=1, y=2), y=10)
        raised = sl_raise.run(message="bad value")
        exited, killed = sl_exit.run(code=3), sl_kill9.run()
        running = sl_sleep.run(seconds=120)
        with hi.Config(job_timeout=2):
            timed = sl_sleep.run(seconds=120, value="late")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and _queue_state(jh, running) != "RUNNING":
            time.sleep(0.2)
        assert running.cancel() is True
        hi.wait(120)
    assert chained.result() == 13
    tasks = [w.result()["task"] for w in where]
    assert sorted(tasks) == ["0", "1", "2", "3"]  # one array task each
    assert len({w.result()["pid"] for w in where}) == 4
    with pytest.raises(ValueError, match="bad value"):
        raised.result()
    with pytest.raises(hi.WorkerCrashedError, match="exited with code 3"):
        exited.result()
    with pytest.raises(hi.WorkerCrashedError, match="SIGKILL"):
        killed.result()
    with pytest.raises(hi.JobTimeoutError):
        timed.result()
    assert ("sleeping", True) in [(x["text"], x["stderr"]) for x in
                                  timed.get_runtime_info()["console_out"]["lines"]]
    assert running.get_status() is hi.JobStatus.CANCELLED
    task = running.get_runtime_info()["slurm_task"]  # scancel'ed
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # sacct rows come a moment after the end
        states = _states(task.partition("_")[0])
        if states.get(task) == "CANCELLED":
            break
        time.sleep(1)
    assert states.get(task) == "CANCELLED", (task, states)
    assert cache.get_record(chained.key)["provenance"]["handler"] == "SlurmJobHandler"
    assert jh.calls["sbatch"] <= 3  # the first wave, then each chained job


def test_a_killed_driver_leaves_its_arrays_running_and_a_rerun_takes_their_results(
        tmp_path):
    n = 6
    args = [sys.executable, str(DRIVER), str(tmp_path / "work"), str(tmp_path / "store"),
            str(n), "3"]
    driver = subprocess.Popen(args, stdout=subprocess.PIPE, text=True,
                              start_new_session=True)
    line = driver.stdout.readline()
    assert line.startswith("SUBMITTED"), line
    job_id = line.split()[1]
    time.sleep(0.5)
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait(30)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:  # the arrays go on without their driver
        states = _states(job_id)
        if len(states) == n and all(s == "COMPLETED" for s in states.values()):
            break
        time.sleep(1)
    assert len(states) == n and set(states.values()) == {"COMPLETED"}, states
    r = subprocess.run(args, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr[-2000:]
    got = json.loads(r.stdout.splitlines()[-1])
    assert got["first"] == list(range(n))
    assert got["second"] == [1000 + i for i in range(n)]
    assert got["first_hits"] == n and got["second_hits"] == 0
    assert got["calls"]["sbatch"] == 1 and [a[1] for a in got["arrays"]] == [n]


def test_array_mode_runs_apptainer_jobs_and_records_them(tmp_path):
    require("apptainer")
    image = os.environ["HITHER_TEST_SANDBOX"]
    cache = hi.JobCache(path=tmp_path / "store")
    jh = hi.SlurmJobHandler(working_dir=tmp_path / "work", mode="array",
                            num_workers_per_batch=4, num_cores_per_job=1,
                            poll_interval=(0.5, 2.0))
    with jh, hi.Config(job_handler=jh, job_cache=cache, container=image):
        jobs = [sl_add.run(x=sl_add.run(x=i, y=1), y=10) for i in range(3)]
        bad = sl_raise.run(message="in the container")
        assert [j.result(timeout=120) for j in jobs] == [11, 12, 13]
        with pytest.raises(ValueError, match="in the container"):
            bad.result(timeout=120)
    assert jobs[0].get_runtime_info()["runtime"].startswith("apptainer")
    with hi.Config(job_cache=cache, container=image):  # the records are the local ones
        again = sl_add.run(x=sl_add.run(x=0, y=1), y=10)
        assert again.result() == 11 and again.cache_hit
