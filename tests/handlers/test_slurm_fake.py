"""SlurmJobHandler's array mode against a fake Slurm on PATH (fast; no cluster needed).

The fake (``fakeslurm/fake.py``) runs each array task with bash on this machine, as a node
would, logs every command, and can make chosen tasks end PREEMPTED, TIMEOUT, ... .
"""

from __future__ import annotations

import os
import stat
import sys
import time
from pathlib import Path

import pytest

import hither as hi
from hither.cacheflow import compute_key
from hither.config import Settings
from hither.function import function_def

from .slurmfuncs import sl_add, sl_exit, sl_kill9, sl_raise, sl_sleep

FAKE = Path(__file__).parent / "fakeslurm" / "fake.py"
COMMANDS = ("sbatch", "sacct", "squeue", "scancel", "scontrol", "sacctmgr")


class Fake:
    def __init__(self, root: Path) -> None:
        self.root = root

    def calls(self, command: str | None = None) -> list[list[str]]:
        log = self.root / "calls.log"
        lines = log.read_text().splitlines() if log.exists() else []
        return [x.split(" ") for x in lines if command is None or x.split(" ")[0] == command]


@pytest.fixture
def fake(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in COMMANDS:
        path = bin_dir / name
        path.write_text(f'#!/bin/sh\nexec {sys.executable} {FAKE} {name} "$@"\n')
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SLURM_DIR", str(tmp_path / "state"))
    (tmp_path / "state").mkdir()
    return Fake(tmp_path / "state")


def handler(tmp_path, **kw) -> hi.SlurmJobHandler:
    # a long window: jobs created in a loop go in one array even on a loaded machine
    args = dict(working_dir=tmp_path / "work", mode="array", num_workers_per_batch=4,
                num_cores_per_job=1, batch_window=1.0, sbatch_interval=0.1,
                poll_interval=(0.2, 1.0), outcome_grace=1.0)
    args.update(kw)
    return hi.SlurmJobHandler(**args)


def test_arrays_split_at_max_array_size_records_written_by_the_node_hit_locally(
        fake, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_MAX_ARRAY", "4")
    cache = hi.JobCache(path=tmp_path / "store")
    with handler(tmp_path) as jh, hi.Config(job_handler=jh, job_cache=cache):
        jobs = [sl_add.run(x=i, y=100) for i in range(10)]
        assert [j.result(timeout=60) for j in jobs] == [i + 100 for i in range(10)]
    sizes = [n for _job, n in jh.arrays]
    assert sum(sizes) == 10 and max(sizes) == 4 and len(sizes) >= 3
    assert len(fake.calls("sbatch")) == len(sizes)
    assert all(not j.cache_hit for j in jobs)
    assert jobs[3].get_runtime_info()["console_out"]["lines"][0]["text"] == "adding 3 and 100"
    # the records were written on the "node", as the local engine writes them
    rec = cache.get_record(jobs[0].key)
    assert rec["provenance"]["handler"] == "SlurmJobHandler"
    assert rec["provenance"]["worker"] != os.getpid()
    # a later local run takes them from the cache
    with hi.Config(job_handler=hi.DefaultJobHandler(), job_cache=cache):
        again = [sl_add.run(x=i, y=100) for i in range(10)]
        assert [j.result() for j in again] == [i + 100 for i in range(10)]
    assert all(j.cache_hit for j in again)
    # and the same job run locally writes the same record, but for where and when
    other = hi.JobCache(path=tmp_path / "store2")
    with hi.Config(job_handler=hi.DefaultJobHandler(), job_cache=other):
        sl_add.run(x=0, y=100).wait()
    local = other.get_record(jobs[0].key)
    volatile = {"host", "start_time", "end_time", "elapsed_sec", "recorded_at", "worker",
                "handler"}
    strip = {k: v for k, v in rec["provenance"].items() if k not in volatile}
    assert strip == {k: v for k, v in local["provenance"].items() if k not in volatile}
    assert {k: v for k, v in rec.items() if k not in ("provenance", "console")} == \
        {k: v for k, v in local.items() if k not in ("provenance", "console")}


def test_task_states_map_to_errors_and_preempted_is_retried_once(fake, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_STATES", "1=PREEMPTED,2=TIMEOUT,3=OUT_OF_MEMORY,4=CANCELLED")
    with handler(tmp_path) as jh, hi.Config(job_handler=jh):
        jobs = [sl_add.run(x=i) for i in range(5)]
        hi.wait(60)
    assert jobs[0].result() == 0
    assert jobs[1].result() == 1  # preempted, submitted again, ran
    with pytest.raises(hi.JobTimeoutError, match="time limit"):
        jobs[2].result()
    with pytest.raises(hi.WorkerCrashedError, match="OUT_OF_MEMORY"):
        jobs[3].result()
    with pytest.raises(hi.JobCancelledException, match="outside hither"):
        jobs[4].result()
    assert jobs[4].get_status() is hi.JobStatus.CANCELLED
    arrays = [a for a in fake.calls("sbatch")]
    assert len(arrays) == 2 and [n for _j, n in jh.arrays] == [5, 1]


def test_a_task_that_dies_is_a_crash_naming_its_cause(fake, tmp_path):
    with handler(tmp_path) as jh, hi.Config(job_handler=jh):
        exited, killed, raised = sl_exit.run(code=3), sl_kill9.run(), sl_raise.run(message="m")
        hi.wait(60)
    with pytest.raises(hi.WorkerCrashedError, match="exited with code 3"):
        exited.result()
    with pytest.raises(hi.WorkerCrashedError, match="SIGKILL"):
        killed.result()
    with pytest.raises(ValueError, match="m"):
        raised.result()
    assert "_0" in exited.exception().args[0] or "Slurm task" in str(exited.exception())


def test_without_accounting_squeue_is_asked_and_a_vanished_task_is_a_crash(
        fake, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_ACCOUNTING", "0")
    with handler(tmp_path) as jh, hi.Config(job_handler=jh):
        ok, crashed = sl_add.run(x=1, y=1), sl_exit.run(code=5)
        hi.wait(60)
    assert ok.result() == 2
    with pytest.raises(hi.WorkerCrashedError, match="without an outcome"):
        crashed.result()
    assert fake.calls("squeue") and not fake.calls("sacct")


def test_cancel_of_a_running_job_scancels_its_task(fake, tmp_path):
    with handler(tmp_path) as jh, hi.Config(job_handler=jh):
        job = sl_sleep.run(seconds=60)
        other = sl_add.run(x=2)
        deadline = time.monotonic() + 30
        while not jh.arrays and time.monotonic() < deadline:
            time.sleep(0.05)
        assert job.cancel() is True
        assert job.get_status() is hi.JobStatus.CANCELLED
        assert other.result(timeout=60) == 2
    job_id = jh.arrays[0][0]
    assert ["scancel", f"{job_id}_0"] in fake.calls("scancel")


def test_one_accounting_call_per_interval_for_all_tasks(fake, tmp_path):
    t0 = time.monotonic()
    with handler(tmp_path, poll_interval=(0.3, 1.0)) as jh, hi.Config(job_handler=jh):
        jobs = [sl_sleep.run(seconds=1.5, value=i) for i in range(12)]
        assert [j.result(timeout=60) for j in jobs] == list(range(12))
    elapsed = time.monotonic() - t0
    sacct = fake.calls("sacct")
    assert 1 <= len(sacct) <= elapsed / 0.3 + 1
    (job_id, n), = jh.arrays
    assert n == 12 and all(c[-1] == job_id for c in sacct)  # one -j list per call
    assert jh.calls["sbatch"] == 1


def test_the_store_is_checked_again_before_submitting(fake, tmp_path):
    cache = hi.JobCache(path=tmp_path / "store")
    with handler(tmp_path, batch_window=2.0) as jh, hi.Config(job_handler=jh, job_cache=cache):
        job = sl_add.run(x=7, y=7)
        with hi.Config(job_handler=hi.DefaultJobHandler()):  # stored meanwhile
            assert sl_add.run(x=7, y=7).result() == 14
        assert job.result(timeout=60) == 14
    assert job.cache_hit and not fake.calls("sbatch")


def test_the_node_checks_the_store_before_running(fake, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_DELAY", "1.5")
    cache = hi.JobCache(path=tmp_path / "store")
    with handler(tmp_path) as jh, hi.Config(job_handler=jh, job_cache=cache):
        job = sl_add.run(x=8, y=8)
        deadline = time.monotonic() + 30
        while not jh.arrays and time.monotonic() < deadline:
            time.sleep(0.05)
        with hi.Config(job_handler=hi.DefaultJobHandler()):
            assert sl_add.run(x=8, y=8).result() == 16
        assert job.result(timeout=60) == 16
    assert job.cache_hit and len(fake.calls("sbatch")) == 1
    assert job.get_runtime_info()["console_out"]["lines"] == \
        [{"timestamp": job.get_runtime_info()["console_out"]["lines"][0]["timestamp"],
          "text": "adding 8 and 8", "stderr": False}]


def test_a_job_timeout_longer_than_the_batch_limit_fails_the_job(tmp_path):
    jh = hi.SlurmJobHandler(working_dir=tmp_path, time_limit_per_batch=60, use_slurm=False,
                            num_workers_per_batch=1)
    with jh, hi.Config(job_handler=jh, job_timeout=120):
        job = sl_add.run(x=1)
        err = job.exception(timeout=10)
    assert isinstance(err, hi.JobTimeoutError) and "time_limit_per_batch" in str(err)


def test_constructor_checks_its_arguments(tmp_path):
    with pytest.raises(ValueError, match="mode"):
        hi.SlurmJobHandler(working_dir=tmp_path, mode="bulk")
    with pytest.raises(ValueError, match="array mode needs Slurm"):
        hi.SlurmJobHandler(working_dir=tmp_path, mode="array", use_slurm=False)
    with pytest.raises(ValueError):
        hi.SlurmJobHandler(working_dir=tmp_path, num_workers_per_batch=0)


def test_key_of_a_slurm_job_is_the_local_key(fake, tmp_path):
    """The node records under the key the driver computed (the local engine's key)."""
    cache = hi.JobCache(path=tmp_path / "store")
    with handler(tmp_path) as jh, hi.Config(job_handler=jh, job_cache=cache):
        job = sl_add.run(x=1, y=2)
        job.wait(60)
    want = compute_key(function_def(sl_add), {"x": 1, "y": 2}, Settings(job_cache=cache)).key
    assert job.key == want and cache.get_record(want) is not None


@pytest.mark.parametrize("told", [True, False], ids=["limit-told", "limit-hidden"])
def test_arrays_respect_the_submit_limit(fake, tmp_path, monkeypatch, told):
    """Told by sacctmgr, arrays never pass MaxSubmitJobs; not told, an array sbatch refuses
    waits for the handler's own tasks to end and goes again (no job fails)."""
    monkeypatch.setenv("FAKE_MAX_SUBMIT", "3")
    monkeypatch.setenv("FAKE_LIMIT_HIDDEN", "0" if told else "1")
    with handler(tmp_path, sbatch_interval=0.05) as jh, hi.Config(job_handler=jh):
        jobs = [sl_sleep.run(seconds=0.5, value=i) for i in range(7)]
        assert [j.result(timeout=90) for j in jobs] == list(range(7))
    assert sum(n for _j, n in jh.arrays) == 7
    assert max(n for _j, n in jh.arrays) <= 3
    if told:  # the first array is the limit's size (later ones may race with ends)
        assert jh.arrays[0] == ("100", 3)
    else:  # the first, of 7, was refused; later ones went smaller
        assert len(fake.calls("sbatch")) > len(jh.arrays)


def test_sbatch_calls_are_throttled(fake, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_MAX_ARRAY", "2")
    with handler(tmp_path, sbatch_interval=0.6) as jh, hi.Config(job_handler=jh):
        jobs = [sl_add.run(x=i) for i in range(6)]
        assert [j.result(timeout=60) for j in jobs] == list(range(6))
    times = jh.commands.call_times["sbatch"]  # when each call started
    assert len(times) == 3 and [n for _j, n in jh.arrays] == [2, 2, 2]
    # a lower bound only: the handler waits sbatch_interval from a call's end to the next
    assert all(b - a >= 0.6 for a, b in zip(times, times[1:], strict=False)), times


def test_a_task_failing_its_node_twice_is_a_crash(fake, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_STATES", "0=NODE_FAIL")
    monkeypatch.setenv("FAKE_STATES_EVERY", "1")
    with handler(tmp_path) as jh, hi.Config(job_handler=jh):
        job = sl_add.run(x=1)
        err = job.exception(timeout=60)
    assert isinstance(err, hi.WorkerCrashedError) and "NODE_FAIL twice" in str(err), err
    assert len(jh.arrays) == 2  # one retry, no more


def test_tasks_accounting_never_lists_are_asked_of_the_queue(fake, tmp_path, monkeypatch):
    """sacct that does not know the tasks (a lagging or broken database) is not waited on
    forever: squeue answers, and a task that is gone without an outcome is a crash."""
    monkeypatch.setenv("FAKE_SACCT_BLIND", "1")
    with handler(tmp_path) as jh, hi.Config(job_handler=jh):
        jh.watcher.unseen_after = 1.0
        ok, crashed = sl_add.run(x=1, y=1), sl_exit.run(code=5)
        assert ok.result(timeout=60) == 2
        err = crashed.exception(timeout=60)
    assert isinstance(err, hi.WorkerCrashedError) and "without an outcome" in str(err), err
    assert fake.calls("sacct") and fake.calls("squeue")


def test_without_accounting_a_task_stopped_at_its_time_limit_is_a_timeout(fake, tmp_path,
                                                                          monkeypatch):
    """``squeue`` only stops listing a task: its node notes that Slurm stopped it at its
    time limit, and a task that died otherwise stays a crash."""
    monkeypatch.setenv("FAKE_ACCOUNTING", "0")
    monkeypatch.setenv("FAKE_TIME_LIMIT", "2")
    with handler(tmp_path) as jh, hi.Config(job_handler=jh):
        slow, killed = sl_sleep.run(seconds=60), sl_kill9.run()
        hi.wait(60)
    with pytest.raises(hi.JobTimeoutError, match="time limit"):
        slow.result()
    with pytest.raises(hi.WorkerCrashedError):
        killed.result()
    assert not fake.calls("sacct")
