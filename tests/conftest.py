"""Shared fixtures: a clean hither state after each test, and the job handlers to test."""

from __future__ import annotations

import os
import sys

import pytest

import hither as hi
from hither.handlers import host

# the S3 (moto) and static web servers, keys and buckets of the sharing tests
pytest_plugins = ["tests.servers"]

# jobs must be importable by worker processes (spawn/forkserver import them by name)
_HANDLERS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "handlers")
if _HANDLERS_DIR not in sys.path:
    sys.path.insert(0, _HANDLERS_DIR)

HANDLER_KINDS = ["inline", "parallel-spawn", "parallel-forkserver"]
WORKER_KINDS = ["parallel-spawn", "parallel-forkserver"]


def make_handler(kind: str) -> hi.JobHandler:
    if kind == "inline":
        return hi.DefaultJobHandler()
    method = kind.split("-", 1)[1]
    return hi.ParallelJobHandler(2, start_method=method)


@pytest.fixture(scope="session", autouse=True)
def _forkserver_started():
    """Start hither's fork server once, at the start of the session.

    Forkserver workers inherit the standard streams of the fork server, not those of the
    test; starting it here makes that the same for every test (whichever test happens to
    use forkserver first), so results do not depend on test order.
    """
    if host.default_start_method() == "forkserver":
        host.ensure_forkserver()
    yield


@pytest.fixture(autouse=True)
def _hither_reset():
    yield
    hi.reset()


@pytest.fixture(params=HANDLER_KINDS)
def handler(request):
    h = make_handler(request.param)
    yield h
    h.shutdown(wait=False, cancel=True)


@pytest.fixture(params=WORKER_KINDS)
def worker_handler(request):
    h = make_handler(request.param)
    yield h
    h.shutdown(wait=False, cancel=True)
