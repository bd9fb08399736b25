"""Tests of hither.utils.TemporaryDirectory."""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

import pytest

import hither.utils.tempdir as tempdir_mod
from hither.utils import TemporaryDirectory


def test_created_and_removed(tmp_path: Path) -> None:
    with TemporaryDirectory(dir=str(tmp_path)) as path:
        assert isinstance(path, str)
        assert os.path.isdir(path)
        assert Path(path).parent == tmp_path
        assert os.path.basename(path).startswith("tmp")
        os.makedirs(os.path.join(path, "a", "b"))
        Path(path, "a", "b", "f.txt").write_text("x")
    assert not os.path.exists(path)


def test_remove_false_keeps(tmp_path: Path) -> None:
    td = TemporaryDirectory(remove=False, prefix="keep_", dir=str(tmp_path))
    with td as path:
        Path(path, "f.txt").write_text("x")
    assert os.path.basename(path).startswith("keep_")
    assert Path(path, "f.txt").read_text() == "x"
    assert td.path == path
    assert td.cleanup() is True
    assert not os.path.exists(path)


def test_removed_when_block_raises(tmp_path: Path) -> None:
    with pytest.raises(KeyError):
        with TemporaryDirectory(dir=str(tmp_path)) as path:
            raise KeyError("x")
    assert not os.path.exists(path)


def test_hither_tmpdir_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    base = tmp_path / "not" / "yet"
    monkeypatch.setenv("HITHER_TMPDIR", str(base))
    with TemporaryDirectory() as path:
        assert Path(path).parent == base


def test_system_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HITHER_TMPDIR", raising=False)
    with TemporaryDirectory() as path:
        assert os.path.dirname(path) == tempfile.gettempdir()
    assert not os.path.exists(path)


def test_explicit_dir_wins_over_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HITHER_TMPDIR", str(tmp_path / "env"))
    with TemporaryDirectory(dir=str(tmp_path / "explicit")) as path:
        assert Path(path).parent == tmp_path / "explicit"


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root ignores modes")
def test_read_only_content_removed(tmp_path: Path) -> None:
    with TemporaryDirectory(dir=str(tmp_path)) as path:
        sub = Path(path, "ro")
        sub.mkdir()
        (sub / "f.txt").write_text("x")
        os.chmod(sub, stat.S_IRUSR | stat.S_IXUSR)
    assert not os.path.exists(path)


def test_read_only_content_removed_any_user(tmp_path: Path) -> None:
    with TemporaryDirectory(dir=str(tmp_path)) as path:
        f = Path(path, "f.txt")
        f.write_text("x")
        os.chmod(f, stat.S_IRUSR)
    assert not os.path.exists(path)


def test_removal_retried_then_succeeds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = tempdir_mod._rmtree
    calls: list[str] = []

    def flaky(path: str) -> None:
        calls.append(path)
        if len(calls) < 3:
            raise OSError(16, "Device or resource busy")
        real(path)

    monkeypatch.setattr(tempdir_mod, "_rmtree", flaky)
    with TemporaryDirectory(dir=str(tmp_path)) as path:
        pass
    assert len(calls) == 3
    assert not os.path.exists(path)


def test_removal_failure_warns_not_raises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    def broken(path: str) -> None:
        calls.append(path)
        raise OSError(16, "Device or resource busy")

    monkeypatch.setattr(tempdir_mod, "_rmtree", broken)
    monkeypatch.setattr(tempdir_mod.time, "sleep", lambda s: None)
    with pytest.warns(RuntimeWarning, match="could not remove"):
        with TemporaryDirectory(dir=str(tmp_path)) as path:
            pass
    assert len(calls) > 1
    assert os.path.isdir(path)


def test_already_removed_is_fine(tmp_path: Path) -> None:
    with TemporaryDirectory(dir=str(tmp_path)) as path:
        os.rmdir(path)
    assert not os.path.exists(path)
