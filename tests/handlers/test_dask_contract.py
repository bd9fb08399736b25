"""The handler contract (hither.testing) over DaskJobHandler: host jobs on a LocalCluster
of this process and on the cluster started with the dask CLI (.ci/setup-dask.sh); Docker
and Apptainer jobs on both (the CLI workers get .ci/env.sh's HITHER_APPTAINER, the
LocalCluster's inherit this process's environment); uv-environment jobs on the
LocalCluster."""

from __future__ import annotations

import os

import pytest

import hither as hi
from hither.testing.cases import Case, require_runtime
from hither.testing.contract import *  # noqa: F403
from tests.components import require

CASES = ["host-local", "host-cli", "docker-local", "docker-cli", "venv-local", "apptainer-local",
         "apptainer-cli"]


@pytest.fixture(scope="module")
def dask_clients():
    """Clients made on first use, closed at the end of the module."""
    made: dict[str, tuple] = {}

    def get(where: str):
        if where not in made:
            from distributed import Client, LocalCluster

            if where == "cli":
                require("dask")
                client = Client(scheduler_file=os.environ["HITHER_TEST_DASK_SCHEDULER_FILE"],
                                set_as_default=False, timeout=30)
                client.wait_for_workers(2, timeout=60)
                made[where] = (client, None)
            else:
                cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                       host="127.0.0.1", dashboard_address=None,
                                       scheduler_kwargs={"dashboard_address": "127.0.0.1:0"})
                made[where] = (Client(cluster, set_as_default=False), cluster)
        return made[where][0]

    yield get
    for client, cluster in made.values():
        client.close()
        if cluster is not None:
            cluster.close()


@pytest.fixture(scope="module", params=CASES)
def hc(request, dask_clients):
    runtime, _, where = request.param.partition("-")
    require_runtime(runtime)
    client = dask_clients(where)
    # the workers of an external cluster are not this process's children: count the
    # processes and containers below its dask worker processes
    roots = (lambda: client.run(os.getpid).values()) if where == "cli" else None
    with Case(lambda: hi.DaskJobHandler(client), runtime, name=request.param, slots=2,
              roots=roots) as case:
        yield case


@pytest.fixture(autouse=True)
def _hither_reset():
    """Replaces tests/conftest.py's ``hi.reset()`` after each test, which would stop the
    case's warm workers: the contract cancels what a test leaves (``contract_settle``)."""
    yield
