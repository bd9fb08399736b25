"""The handler contract over every handler x runtime of this repository.

Host x {inline, parallel-spawn, parallel-forkserver} and {docker, podman, apptainer,
venv} x {inline, parallel}: see :mod:`hither.testing`.
"""

from __future__ import annotations

import pytest

from hither.testing.cases import STANDARD_CASES, standard_case
from hither.testing.contract import *  # noqa: F403


@pytest.fixture(scope="module", params=STANDARD_CASES)
def hc(request):
    with standard_case(request.param) as case:
        yield case


@pytest.fixture(autouse=True)
def _hither_reset():
    """Replaces tests/conftest.py's ``hi.reset()`` after each test, which would stop the
    case's warm workers: the contract cancels what a test leaves (``contract_settle``)."""
    yield
