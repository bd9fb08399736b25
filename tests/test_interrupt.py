"""Ctrl-C: a real SIGINT to a process waiting anywhere in hither raises KeyboardInterrupt
at once; the jobs that process started are cancelled, their workers and containers
stopped, and nothing is cached for them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from .components import require

SCRIPT = os.path.join(os.path.dirname(__file__), "scripts", "interrupt_child.py")
pytestmark = pytest.mark.timeout(120)


def interrupt(mode: str, tmp_path, *, signals: int = 1) -> dict:
    store, ready = tmp_path / "store", tmp_path / "ready"
    ready.mkdir()
    proc = subprocess.Popen([sys.executable, SCRIPT, mode, str(store), str(ready)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        import selectors

        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        assert sel.select(60), "the child did not get ready in 60 s"
        line = proc.stdout.readline()
        assert line.strip() == "READY", line + proc.stderr.read()
        time.sleep(0.3)  # let the main thread block in its wait
        for _ in range(signals):
            proc.send_signal(signal.SIGINT)
            time.sleep(0.05)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    lines = [x for x in out.splitlines() if x.startswith("{")]
    assert lines, f"no report; stdout={out!r} stderr={err[-3000:]}"
    report = json.loads(lines[-1])
    report["stderr"] = err
    return report


@pytest.mark.parametrize("mode", ["wait-all", "job-wait", "result", "with-exit"])
def test_ctrl_c_while_waiting_on_worker_jobs(mode, tmp_path):
    report = interrupt(mode, tmp_path)
    assert report["interrupted"], report
    # the interrupt arrived while the jobs still had minutes to run
    assert report["latency"] is not None and report["latency"] < 30, report
    assert set(report["statuses"]) == {"cancelled"}, report
    assert report["alive"] == [], "worker processes outlived the interrupt"
    assert report["records"] == 0, "an interrupted job was cached"


def test_ctrl_c_in_an_inline_job(tmp_path):
    report = interrupt("inline", tmp_path)
    assert report["interrupted"], report
    assert report["statuses"] == ["cancelled"], report
    assert report["records"] == 0


def test_ctrl_c_twice_still_ends(tmp_path):
    report = interrupt("wait-all", tmp_path, signals=2)
    assert report["interrupted"], report


def test_ctrl_c_stops_the_container(tmp_path):
    require("docker")
    import docker

    client = docker.from_env()
    before = {c.id for c in client.containers.list(filters={"label": "hither.worker=1"})}
    report = interrupt("container", tmp_path)
    assert report["interrupted"], report
    assert report["statuses"] == ["cancelled"], report
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        now = {c.id for c in client.containers.list(filters={"label": "hither.worker=1"})}
        if not now - before:
            break
        time.sleep(0.2)
    assert not now - before, "the job's container outlived the interrupt"
    assert report["records"] == 0
