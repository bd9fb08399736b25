"""The code passes its linters: ``ruff check`` and ``mypy`` over the packages (CI runs
only the test command, so the standards are checked here)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _tool(module: str) -> None:
    if shutil.which(module) is None and subprocess.run(
            [sys.executable, "-m", module, "--version"], capture_output=True).returncode:
        why = f"{module} is not installed (pip install -e '.[test]')"
        pytest.fail(why) if os.environ.get("CI") == "true" else pytest.skip(why)


@pytest.mark.timeout(300)
def test_ruff_is_clean():
    _tool("ruff")
    out = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "."],
                         cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.timeout(600)
def test_mypy_is_clean():
    _tool("mypy")
    out = subprocess.run([sys.executable, "-m", "mypy", "hither", "store"],
                         cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
