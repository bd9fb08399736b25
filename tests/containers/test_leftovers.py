"""What a killed driver leaves (the output folders of its runtime workers in the store,
its exchange store in the temp folder) is shown by ``hither cache info`` and removed by
``hither cache gc``; the folders of processes still running are kept."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time

import pytest
from hither_store import LocalStore

from hither.cli import main

from .conftest import HERE, make_case, remove_containers, wait_no_containers

pytestmark = pytest.mark.timeout(240)
DRIVER = os.path.join(HERE, "leftover_driver.py")


def cli(capsys, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().out


@pytest.fixture
def systemp(tmp_path, monkeypatch):
    base = tmp_path / "systemp"
    base.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(base))
    return base


@pytest.mark.parametrize("engine", ["docker", "podman"])
def test_folders_of_a_killed_driver_are_shown_and_collected(engine, tmp_path, systemp,
                                                            capsys):
    make_case(engine)  # the engine is there (or the test is skipped / fails in CI)
    root = tmp_path / "store"
    env = {**os.environ, "TMPDIR": str(systemp)}
    child = subprocess.Popen([sys.executable, DRIVER, str(root), engine], env=env,
                             stdout=subprocess.PIPE, text=True)
    try:
        line = child.stdout.readline()
        assert line.strip() == "READY", line
        outs = sorted((root / "tmp").glob("out-*"))
        exchanges = sorted(systemp.glob("hither-exchange-*"))
        assert len(outs) == 1 and len(exchanges) == 1, (outs, exchanges)
        # while the driver runs, its folders are in use: nothing is collected
        code, out = cli(capsys, "cache", "gc", "--store", str(root))
        assert code == 0 and "0 folders left by stopped processes" in out
        assert all(p.exists() for p in [*outs, *exchanges])
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(30)
    left = wait_no_containers(child.pid, 30)  # the workers exit with their parent
    remove_containers(left)
    assert not left

    store = LocalStore(root)
    mine = store.work_dir("out")  # a running process's folder: never collected
    other_host = root / "tmp" / "out-4242@elsewhere.example-0123456789ab"
    other_host.mkdir()
    code, out = cli(capsys, "cache", "info", "--store", str(root))
    assert code == 0 and "leftovers" in out
    assert "2 folders of stopped processes (1 in the store, 1 exchange stores" in out

    code, out = cli(capsys, "cache", "gc", "--store", str(root), "--dry-run")
    assert code == 0 and "2 folders left by stopped processes" in out
    assert all(p.exists() for p in [*outs, *exchanges])

    code, out = cli(capsys, "cache", "gc", "--store", str(root))
    assert code == 0 and "2 folders left by stopped processes" in out
    assert not any(p.exists() for p in [*outs, *exchanges])
    assert mine.is_dir() and other_host.is_dir()
    code, out = cli(capsys, "cache", "info", "--store", str(root))
    assert "leftovers" not in out

    day_ago = time.time() - 2 * 86400  # another host's folder: only after a day unchanged
    os.utime(other_host, (day_ago, day_ago))
    code, out = cli(capsys, "cache", "gc", "--store", str(root))
    assert "1 folders left by stopped processes" in out and not other_host.exists()
    assert mine.is_dir()
