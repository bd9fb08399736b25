"""The handler contract (:mod:`hither.testing`) over SlurmJobHandler's pilot mode.

Cases: host jobs on local pilot workers (``use_slurm=False``), host jobs and Apptainer jobs
on pilot workers inside a Slurm allocation. One batch of two workers; workers end after
3 s without a job, so that the contract's checks for leftover processes see them gone.
"""

from __future__ import annotations

import pytest

import hither as hi

pytest.importorskip("hither.testing.contract", reason="the contract suite (hither.testing)")

from hither.testing.cases import Case, require_runtime  # noqa: E402
from hither.testing.components import require  # noqa: E402
from hither.testing.contract import *  # noqa: E402, F403

CASES = ("host-local", "host-slurm", "apptainer-slurm")


@pytest.fixture(scope="module", params=CASES)
def hc(request, tmp_path_factory):
    runtime, _, where = request.param.partition("-")
    if where == "slurm":
        require("slurm")
    require_runtime(runtime)
    folder = tmp_path_factory.mktemp("slurm-contract")

    def make() -> hi.SlurmJobHandler:
        return hi.SlurmJobHandler(working_dir=folder, num_workers_per_batch=2,
                                  num_cores_per_job=1, use_slurm=where == "slurm",
                                  max_simultaneous_batches=1, idle_timeout=3)

    with Case(make, runtime, name=request.param, slots=2) as case:
        yield case


@pytest.fixture(autouse=True)
def _hither_reset():
    """The contract cancels what a test leaves (``contract_settle``); tests/conftest.py's
    ``hi.reset()`` would stop the case's warm workers."""
    yield
