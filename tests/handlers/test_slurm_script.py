"""Golden-file tests of the sbatch scripts and srun command lines, and the parsers of
Slurm's answers (no Slurm needed).

Set ``HITHER_UPDATE_GOLDEN=1`` to rewrite the files in ``golden/`` after an intended
change, then review the diff.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from hither.handlers import slurm_script as ss

GOLDEN = Path(__file__).parent / "golden"

OPTS = ss.ScriptOptions(
    python=("/opt/py/bin/python3.11", "-s"), hither_root="/home/u/src/hither",
    workdir="/shared/hither work/h-1", cores=4, time_limit=None, job_name="hither-42-ab12",
    sbatch_opts=("--partition=debug", "--mem=4G"), srun_opts=("--partition=gpu",),
    env=(("HITHER_SIF_DIR", "/shared/sif dir"),))


def golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("HITHER_UPDATE_GOLDEN") == "1":
        GOLDEN.mkdir(exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"no golden file {path}: run with HITHER_UPDATE_GOLDEN=1"
    assert text == path.read_text()


def test_array_script():
    golden("slurm_array.sh", ss.array_script(OPTS, "a00001", 1000, 28))


def test_array_script_with_time_limit_and_no_cap():
    import dataclasses

    opts = dataclasses.replace(OPTS, time_limit=125, sbatch_opts=(), cores=1)
    golden("slurm_array_time.sh", ss.array_script(opts, "a00002", 1, None))


def test_srun_and_local_pilot_commands():
    import dataclasses

    timed = dataclasses.replace(OPTS, time_limit=3600)
    golden("slurm_pilot.json", json.dumps({
        "srun": ss.srun_argv(OPTS, "b00001", 14, 30),
        "srun_timed": ss.srun_argv(timed, "b00002", 2, 2.5),
        "local": ss.local_pilot_argv(OPTS, "b00003", 1, 30),
    }, indent=1) + "\n")


def test_array_needs_a_task():
    with pytest.raises(ValueError):
        ss.array_script(OPTS, "a", 0, None)


def test_time_minutes_round_up_plus_one():
    assert [ss.time_minutes(s) for s in (1, 60, 61, 1200)] == [2, 2, 3, 21]


def test_command_lines():
    assert ss.sbatch_argv("/w/s.sh") == ["sbatch", "--parsable", "/w/s.sh"]
    assert ss.sacct_argv(["12", "13"])[-2:] == ["-j", "12,13"]
    assert ss.squeue_argv(["12"]) == ["squeue", "-h", "-r", "-o", "%i|%T", "-j", "12"]
    assert ss.scancel_argv(["12_3"]) == ["scancel", "12_3"]


def test_parse_sbatch():
    assert ss.parse_sbatch("4242\n") == "4242"
    assert ss.parse_sbatch("4242;cluster1\n") == "4242"
    with pytest.raises(ValueError):
        ss.parse_sbatch("sbatch: error: Batch job submission failed")


def test_parse_config():
    cfg = ss.parse_config("Configuration data as of ...\nMaxArraySize            = 1001\n"
                          "AccountingStorageType   = accounting_storage/slurmdbd\n"
                          "MaxJobCount = 10000\nMaxSubmitJobs = UNLIMITED\n")
    assert ss.config_int(cfg, "MaxArraySize") == 1001
    assert ss.config_int(cfg, "MaxSubmitJobs") is None
    assert ss.config_int(cfg, "Missing") is None
    assert cfg["AccountingStorageType"] == "accounting_storage/slurmdbd"


def test_parse_sacct_expands_pending_ranges_and_reads_exit_codes():
    out = ("52_0|COMPLETED|0:0\n52_1|FAILED|3:0\n52_2|CANCELLED by 0|0:15\n"
           "52_[3-5,8%2]|PENDING|0:0\n60|TIMEOUT|0:0\n61|RUNNING|0:0\n62_7|FAILED|0:9\n"
           "63|CANCELLED+|0:0\n")
    got = ss.parse_sacct(out)
    assert got["52_0"] == ss.TaskState("COMPLETED", 0, 0)
    assert got["52_1"].state == "FAILED" and got["52_1"].exit_code == 3
    assert got["52_2"].state == "CANCELLED" and got["52_2"].terminal
    assert {k for k, v in got.items() if v.state == "PENDING"} == {"52_3", "52_4", "52_5",
                                                                   "52_8"}
    assert got["60"].state == "TIMEOUT" and got["61"].terminal is False
    assert got["62_7"].signal == 9 and got["63"].state == "CANCELLED"


def test_parse_squeue():
    got = ss.parse_squeue("52_2|PENDING\n52_0|RUNNING\n53|RUNNING\n54_[1-2]|PENDING\n")
    assert set(got) == {"52_2", "52_0", "53", "54_1", "54_2"}
    assert got["52_0"].state == "RUNNING"


def test_split_batches():
    assert ss.split_batches(2500, 1001) == [1001, 1001, 498]
    assert ss.split_batches(1000, 1001) == [1000]
    assert ss.split_batches(0, 5) == []
    with pytest.raises(ValueError):
        ss.split_batches(3, 0)


def test_task_ids():
    assert ss.task_id("12", 3) == "12_3" and ss.task_id("12", None) == "12"
    assert ss.unique_jobs(["12_0", "12_1", "13", "12_2"]) == ["12", "13"]


def test_submit_limit_errors():
    assert ss.is_submit_limit("sbatch: error: AssocMaxSubmitJobLimit")
    assert ss.is_submit_limit("sbatch: error: QOSMaxSubmitJobPerUserLimit")
    assert ss.is_submit_limit("Batch job submission failed: Job violates accounting/QOS "
                              "policy (job submit limit, user's size and/or time limits)")
    assert not ss.is_submit_limit("sbatch: error: invalid partition specified: gpu")
    assert not ss.is_submit_limit("Batch job submission failed: Invalid job array "
                                  "specification")
