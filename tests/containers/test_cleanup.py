"""No worker container outlives what ended it: reset, a handler's ``with``, a cancel, a
timeout, Ctrl-C or SIGTERM of the program; and a missing image fails plainly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

import hither as hi
from hither.testing.jobs import ht_add, ht_sleep

from .conftest import (
    HERE,
    docker_case,
    leftovers,
    make_handler,
    podman_case,
    remove_containers,
    require,
    wait_no_containers,
)

WAIT = 60
SCRIPT = os.path.join(HERE, "long_job_script.py")
pytestmark = pytest.mark.timeout(120)


def mine(engine: str, pid: int | None = None) -> list[str]:
    return leftovers(os.getpid() if pid is None else pid).get(engine, [])


def wait_for(cond, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def wait_running(job: hi.Job, engine: str, count: int = 1) -> None:
    wait_for(lambda: job.get_status() is hi.JobStatus.RUNNING, WAIT, "the job to run")
    wait_for(lambda: len(mine(engine)) >= count, WAIT, "its container")


@pytest.mark.parametrize("kind", ["inline", "parallel"])
def test_handler_with_exit_removes_its_containers(engine_config, kind):
    engine = engine_config.name
    with make_handler(kind) as h, engine_config.config(job_handler=h):
        jobs = [ht_add.run(x=i, y=1) for i in range(4)]
        assert [j.result(timeout=WAIT) for j in jobs] == [1, 2, 3, 4]
        assert mine(engine), "the warm worker's container should exist inside the block"
    # no hi.reset() here: leaving the block is enough
    assert wait_no_containers(os.getpid(), 5) == {}


def test_reset_removes_running_and_idle_workers(engine_config):
    engine = engine_config.name
    inline, parallel = hi.DefaultJobHandler(), hi.ParallelJobHandler(2)
    with engine_config.config(job_handler=inline):
        assert ht_add.run(x=1, y=1).result(timeout=WAIT) == 2  # leaves a warm worker
    with engine_config.config(job_handler=parallel):
        running = ht_sleep.run(seconds=60)
    wait_running(running, engine, count=2)
    hi.reset()
    assert wait_no_containers(os.getpid(), 5) == {}
    with pytest.raises(hi.JobCancelledException):
        running.result(timeout=WAIT)


def test_cancelled_job_leaves_no_container(engine_config, parallel_handler):
    engine = engine_config.name
    with engine_config.config(job_handler=parallel_handler):
        a = ht_sleep.run(seconds=60)
        b = ht_sleep.run(seconds=60)
    wait_running(a, engine)
    wait_running(b, engine, count=2)
    before = set(mine(engine))
    assert len(before) == 2
    assert a.cancel()
    with pytest.raises(hi.JobCancelledException):
        a.result(timeout=WAIT)
    wait_for(lambda: len(mine(engine)) == 1, 10, "the cancelled job's container to go")
    assert set(mine(engine)) < before  # the other job's container is untouched
    assert b.get_status() is hi.JobStatus.RUNNING
    assert b.cancel()
    wait_for(lambda: not mine(engine), 10, "the second container to go")


@pytest.mark.parametrize("kind", ["inline", "parallel"])
def test_timed_out_job_leaves_no_container(engine_config, kind):
    h = make_handler(kind)
    try:
        with engine_config.config(job_handler=h, job_timeout=2):
            job = ht_sleep.run(seconds=60)
            with pytest.raises(hi.JobTimeoutError):
                job.result(timeout=WAIT)
        # no hi.reset(): the timeout itself removed the container
        assert wait_no_containers(os.getpid(), 5) == {}
    finally:
        h.shutdown(wait=False, cancel=True)


@pytest.mark.parametrize("kind", ["inline", "parallel"])
def test_podman_without_api_socket(kind, monkeypatch):
    """Podman through its local CLI alone: jobs run, cancel and reset remove containers."""
    require("podman")
    monkeypatch.delenv("HITHER_PODMAN_SOCKET", raising=False)
    monkeypatch.delenv("CONTAINER_HOST", raising=False)
    h = make_handler(kind)
    try:
        with podman_case().config(job_handler=h):
            assert ht_add.run(x=2, y=2).result(timeout=WAIT) == 4
            assert mine("podman"), "the worker's container should be listed by the CLI"
            job = ht_sleep.run(seconds=60)
            if kind == "parallel":
                wait_running(job, "podman")
                assert job.cancel()
                with pytest.raises(hi.JobCancelledException):
                    job.result(timeout=WAIT)
                wait_for(lambda: not mine("podman"), 10, "the cancelled job's container")
        hi.reset()
        assert wait_no_containers(os.getpid(), 5) == {}
    finally:
        h.shutdown(wait=False, cancel=True)


# ----------------------------------------------------------------------------- signals
def _read_line(proc: subprocess.Popen, timeout: float) -> str:
    box: list[str] = []
    t = threading.Thread(target=lambda: box.append(proc.stdout.readline()), daemon=True)
    t.start()
    t.join(timeout)
    return box[0].strip() if box else ""




@pytest.mark.parametrize(("sig", "kind"), [("SIGINT", "parallel"), ("SIGINT", "inline"),
                                         ("SIGTERM", "parallel")])
def test_no_orphan_after_the_program_is_interrupted(engine_config, sig, kind, request):
    engine = engine_config.name
    proc = subprocess.Popen([sys.executable, SCRIPT, engine, kind], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=dict(os.environ))
    try:
        line = _read_line(proc, WAIT)
        assert line == "READY", f"{line!r}; stderr: {proc.stderr.read() if proc.poll() else ''}"
        wait_for(lambda: mine(engine, proc.pid), WAIT, "the script's container")
        time.sleep(0.5)
        proc.send_signal(getattr(signal, sig))
        proc.wait(WAIT)
        stderr = proc.stderr.read()
        if sig == "SIGINT":
            assert "KeyboardInterrupt" in stderr, stderr
        left = wait_no_containers(proc.pid, 20)
        assert not left, f"containers of pid {proc.pid} left after {sig}: {left}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        remove_containers(leftovers(proc.pid))


# ----------------------------------------------------------------------------- images
@pytest.mark.parametrize("engine", ["docker", "podman"])
@pytest.mark.parametrize("kind", ["inline", "parallel", "inline+cache"])
def test_missing_image_fails_quickly_and_plainly(engine, kind, tmp_path):
    """Without a cache the job fails; with one the image is resolved for the job key
    while ``.run()`` plans the job, so ``.run()`` itself raises: both are accepted."""
    require(engine)
    case = docker_case if engine == "docker" else podman_case
    h = make_handler(kind.split("+")[0])
    cache = hi.JobCache(path=tmp_path / "cache") if kind.endswith("+cache") else None
    try:
        t0 = time.monotonic()
        job = None
        with case("local/does-not-exist:1").config(job_handler=h, job_cache=cache):
            try:
                job = ht_add.run(x=1, y=2)
            except hi.HitherError as e:
                err = e
            else:
                err = job.exception(timeout=WAIT)
        elapsed = time.monotonic() - t0
        assert err is not None
        assert isinstance(err, hi.RuntimeUnavailableError) or \
            "not present locally" in str(err), repr(err)
        assert "local/does-not-exist:1" in str(err)
        assert len(str(err)) < 2000, str(err)
        assert elapsed < 45, f"took {elapsed:.0f} s"
        if job is not None:
            assert job.get_status() is hi.JobStatus.ERROR
        assert mine(engine) == []
    finally:
        h.shutdown(wait=False, cancel=True)
