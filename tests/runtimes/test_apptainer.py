"""Apptainer runtime: sandbox folder and SIF (live when ``HITHER_APPTAINER`` works), plus
identity and error paths."""

from __future__ import annotations

import hashlib
import os
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from hither.errors import RuntimeUnavailableError
from hither.hashing import clear_file_hash_memo
from hither.runtimes import ApptainerRuntime, clear_identity_cache
from hither.runtimes import apptainer as app_mod

from .conftest import check_hello_ping_stop, check_sandbox, make_folders, make_spec, require

pytestmark = pytest.mark.apptainer


@pytest.fixture
def sandbox():
    require("apptainer")
    return ApptainerRuntime(os.environ["HITHER_TEST_SANDBOX"])


@pytest.fixture
def sif(tmp_path, monkeypatch):
    require("apptainer-sif")
    monkeypatch.setenv("HITHER_SIF_DIR", str(tmp_path / "sifcache"))
    return ApptainerRuntime(os.environ["HITHER_TEST_SIF"])


def test_sandbox_worker(sandbox, tmp_path, workers):
    t0 = time.monotonic()
    check_hello_ping_stop(sandbox, tmp_path, workers)
    print(f"apptainer sandbox worker start to stop: {time.monotonic() - t0:.2f} s")


def test_sif_worker(sif, tmp_path, workers):
    t0 = time.monotonic()
    check_hello_ping_stop(sif, tmp_path, workers)
    print(f"apptainer SIF worker start to stop: {time.monotonic() - t0:.2f} s")


def test_sandbox_isolation(sandbox, tmp_path, workers):
    if os.geteuid() != 0:
        pytest.skip("a private network namespace needs root")
    check_sandbox(sandbox, tmp_path, workers)


def test_sif_isolation_with_network(sif, tmp_path, workers):
    check_sandbox(ApptainerRuntime(sif.image, network=True), tmp_path, workers,
                  private_net=False)


def test_stop_kills_everything_started_inside(sandbox, tmp_path, workers):
    spec = make_spec(make_folders(tmp_path))
    w = workers(sandbox, spec)
    assert w.recv()["op"] == "hello"
    tag = f"{uuid.uuid4().int % 100000 + 100000}"
    # a grandchild in its own session, as a job's subprocess could start
    r = w.exec(f"import subprocess\nsubprocess.Popen(['setsid', 'sleep', '{tag}'])\n"
               "result = 1")
    assert r["ok"], r

    def sleepers() -> list[int]:
        out = []
        for pid in os.listdir("/proc"):
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except (OSError, ValueError):
                continue
            if cmd[:2] == [b"sleep", tag.encode()]:
                out.append(int(pid))
        return out

    deadline = time.monotonic() + 10
    while not sleepers() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sleepers(), "the sleep never started"
    sandbox.stop_worker(w.proc, spec)
    deadline = time.monotonic() + 10
    while sleepers() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sleepers() == []
    sandbox.stop_worker(w.proc, spec)


def test_sif_identity_is_file_sha256(sif):
    clear_identity_cache()
    h = hashlib.sha256(Path(sif.image).read_bytes()).hexdigest()
    assert sif.identity() == {"kind": "apptainer", "image": sif.image,
                              "digest": f"sha256:{h}"}
    clear_identity_cache()
    assert sif.identity()["digest"] == f"sha256:{h}"


def test_sif_digest_memo_follows_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("HITHER_SIF_DIR", str(tmp_path / "cache"))
    f = tmp_path / "x.sif"
    f.write_bytes(b"one")
    assert app_mod._sif_digest(str(f)) == hashlib.sha256(b"one").hexdigest()
    f.write_bytes(b"two")
    os.utime(f, ns=(1, 1))  # a new mtime (and content): the memo entry is stale
    assert app_mod._sif_digest(str(f)) == hashlib.sha256(b"two").hexdigest()


def test_sif_digest_sees_a_restore_keeping_size_and_mtime(tmp_path, monkeypatch):
    # the SIF digest is memoized like every file hash: by a signature that includes the
    # ctime, so a same-size image restored with cp -p (mtime kept) is hashed again
    monkeypatch.setenv("HITHER_FILEHASH_DB", str(tmp_path / "filehash.sqlite"))
    monkeypatch.setattr("hither_store._statmemo.RACY_NS", 0)
    clear_file_hash_memo()
    f, backup = tmp_path / "x.sif", tmp_path / "backup.sif"
    f.write_bytes(b"image one")
    backup.write_bytes(b"image two")
    for p in (f, backup):
        os.utime(p, ns=(10**18, 10**18))
    assert app_mod._sif_digest(str(f)) == hashlib.sha256(b"image one").hexdigest()
    subprocess.run(["cp", "-p", str(backup), str(f)], check=True)
    assert app_mod._sif_digest(str(f)) == hashlib.sha256(b"image two").hexdigest()
    clear_file_hash_memo()


def test_sandbox_identity_follows_its_file_list(tmp_path):
    root = tmp_path / "sb"
    (root / "usr").mkdir(parents=True)
    (root / "usr" / "a").write_text("a")
    (root / "lib").symlink_to("usr")
    rt = ApptainerRuntime(str(root))
    d1 = rt.identity()["digest"]
    assert d1.startswith("files-sha256:")
    assert app_mod._tree_digest(str(root)) == app_mod._tree_digest(str(root))
    (root / "usr" / "b").write_text("b")
    assert rt.identity()["digest"] == d1  # once per process
    clear_identity_cache()
    d2 = rt.identity()["digest"]
    assert d2 != d1
    (root / "usr" / "b").write_text("bb")
    clear_identity_cache()
    assert rt.identity()["digest"] not in (d1, d2)


def test_missing_image_file(tmp_path):
    with pytest.raises(RuntimeUnavailableError, match="does not exist"):
        ApptainerRuntime(str(tmp_path / "none.sif")).identity()


def test_missing_executable(monkeypatch, tmp_path):
    monkeypatch.delenv("HITHER_APPTAINER", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(RuntimeUnavailableError, match="Install Apptainer"):
        app_mod.find_apptainer()
    sif = tmp_path / "x.sif"
    sif.write_bytes(b"x")
    with pytest.raises(RuntimeUnavailableError, match="Install Apptainer"):
        ApptainerRuntime(str(sif)).start_worker(make_spec(make_folders(tmp_path)))
    with pytest.raises(RuntimeUnavailableError, match="not found"):
        app_mod.find_apptainer("/nonexistent/apptainer")


@pytest.mark.timeout(120)
def test_docker_uri_without_registry_fails_clearly(tmp_path, monkeypatch):
    require("apptainer")
    monkeypatch.setenv("HITHER_SIF_DIR", str(tmp_path))
    rt = ApptainerRuntime(f"docker://local/hither-absent-{uuid.uuid4().hex[:6]}:x")
    with pytest.raises(RuntimeUnavailableError, match="could not build a SIF") as info:
        rt.identity()
    assert "docker-daemon://" in str(info.value)
    assert not any(p.suffix in (".sif", ".tmp") for p in tmp_path.iterdir())
