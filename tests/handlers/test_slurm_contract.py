"""The handler contract (:mod:`hither.testing`) over SlurmJobHandler, both modes.

Pilot mode: host jobs on local pilot workers (``use_slurm=False``), host jobs and
Apptainer jobs on pilot workers inside a Slurm allocation; one batch of two workers,
which end after 3 s without a job, so that the contract's checks for leftovers see them
gone. Array mode: host, Apptainer and Docker jobs, each in an array task of its own, two at
a time. Slurm tasks of this process still in the queue count as the case's workers
(leftovers when the handler is shut down).
"""

from __future__ import annotations

import getpass
import os
import subprocess

import pytest

import hither as hi
from hither.testing.cases import Case, require_runtime
from hither.testing.components import require
from hither.testing.contract import *  # noqa: F403

CASES = ("host-local", "host-slurm", "apptainer-slurm", "host-array", "apptainer-array",
         "docker-array")


def slurm_tasks() -> frozenset[str]:
    """``slurm:<task>`` for every Slurm job or array task of this process still queued or
    running (its handlers name their jobs ``hither-<pid>-...``)."""
    r = subprocess.run(["squeue", "-h", "-r", "-u", getpass.getuser(), "-o", "%i|%j"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    mine = f"hither-{os.getpid()}-"
    return frozenset(f"slurm:{task}" for task, _, name in
                     (line.partition("|") for line in r.stdout.split())
                     if name.startswith(mine))


@pytest.fixture(scope="module", params=CASES)
def hc(request, tmp_path_factory):
    runtime, _, where = request.param.partition("-")
    if where != "local":
        require("slurm")
    require_runtime(runtime)
    folder = tmp_path_factory.mktemp("slurm-contract")

    def make() -> hi.SlurmJobHandler:
        if where == "array":
            return hi.SlurmJobHandler(working_dir=folder, mode="array",
                                      num_workers_per_batch=2, num_cores_per_job=1,
                                      max_simultaneous_batches=1, batch_window=0.1,
                                      sbatch_interval=0.2, poll_interval=(0.5, 2.0),
                                      outcome_grace=5)
        return hi.SlurmJobHandler(working_dir=folder, num_workers_per_batch=2,
                                  num_cores_per_job=1, use_slurm=where == "slurm",
                                  max_simultaneous_batches=1, idle_timeout=3)

    with Case(make, runtime, name=request.param, slots=2, reuses_workers=where != "array",
              remote_workers=None if where == "local" else slurm_tasks) as case:
        yield case


@pytest.fixture(autouse=True)
def _hither_reset():
    """The contract cancels what a test leaves (``contract_settle``); tests/conftest.py's
    ``hi.reset()`` would stop the case's warm workers."""
    yield
