"""``hither reproduce``, ``export`` and ``import`` end to end: a figure made by one user in
a container is checked and re-run by another user from a bundle alone, byte for byte; a
tampered bundle, a nondeterministic function and a missing image are each named.

The author and the reader are separate processes (the reader another uid, through setpriv
as in tests/test_sharing_labs.py); the containers are the CI's test images.
"""

from __future__ import annotations

import io
import json
import os
import pwd
import shutil
import subprocess
import sys
import tarfile
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hither_store import SecretKey

import hither as hi
from hither.cli import main
from tests.components import TEST_IMAGE, require
from tests.reprofuncs import figure

SCRIPT = Path(figure.__file__)


def hither_cli(*args: str, env: dict[str, str] | None = None, user: str | None = None,
               cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``hither ARGS`` in its own process (as ``user`` when given)."""
    cmd = [sys.executable, "-m", "hither.cli", *args]
    if user is not None:
        cmd = ["setpriv", "--reuid", user, "--regid", user, "--init-groups", "--", *cmd]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, cwd=cwd)


def owned_dir(path: Path, user: str) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    pw = pwd.getpwnam(user)
    os.chown(path, pw.pw_uid, pw.pw_gid)
    return path


@pytest.fixture
def shared() -> Iterator[Path]:
    """A folder the test users can enter (pytest's tmp_path is root's alone)."""
    require("users")
    d = Path(tempfile.mkdtemp(prefix="hither-repro-", dir=os.environ["HITHER_TEST_SHARED_TMP"]))
    d.chmod(0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_a_reader_reproduces_a_figure_from_a_bundle(shared: Path, share_env: Path) -> None:
    require("apptainer-sif")
    sif = os.environ["HITHER_TEST_SIF"]
    reader = os.environ["HITHER_TEST_USERS"].split()[1]
    # the author: a pipeline in a container, records signed as they are written
    author_key = SecretKey.generate("paper-author")
    key_file = shared / "author.secret"
    author_key.write(key_file)
    author_env = {**os.environ, "HITHER_SIGNING_KEY": str(key_file)}
    store_a = shared / "author-store"
    r = subprocess.run([sys.executable, str(SCRIPT), str(store_a), "--image", sif],
                       env=author_env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    key = json.loads(r.stdout.strip().splitlines()[-1])["figure"]
    original = Path(hi.load(key, store_a).path).read_bytes()
    assert original.startswith(b"\x89PNG")
    bundle = shared / "figure.tar"
    r = hither_cli("export", key, "-o", str(bundle), "--store", str(store_a), env=author_env)
    assert r.returncode == 0, r.stderr
    bundle.chmod(0o644)

    # the reader: another uid, a fresh store, trusting the author's public key
    home = owned_dir(shared / "reader", reader)
    env = {"PATH": os.environ["PATH"], "HOME": str(home), "PYTHONDONTWRITEBYTECODE": "1",
           "HITHER_LOOKUP_CACHE": str(home / "lookup"),
           "HITHER_APPTAINER": os.environ["HITHER_APPTAINER"],
           "APPTAINER_TMPDIR": str(owned_dir(home / "apptainer-tmp", reader)),
           "APPTAINER_CACHEDIR": str(owned_dir(home / "apptainer-cache", reader)),
           "HITHER_SIF_DIR": str(home / "sif")}
    trust = ["--trust", str(author_key.public_key)]
    store_b = home / "store"
    r = hither_cli("import", str(bundle), "--store", str(store_b), *trust, env=env,
                   user=reader, cwd=home)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[-1] == key
    assert os.stat(store_b / "records").st_uid == pwd.getpwnam(reader).pw_uid

    imported = sorted(report_keys(store_b))
    assert key in imported and len(imported) == 4
    out = home / "out"
    r = hither_cli("reproduce", key[:12], "--store", str(store_b), "--run", "--out", str(out),
                   "--json", *trust, env=env, user=reader, cwd=home)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    report = json.loads(r.stdout)
    assert report["status"] == "identical"
    assert report["signers"] == ["paper-author"] and report["trusted"] is True
    assert report["runtime"]["kind"] == "apptainer"
    assert [x["status"] for x in report["runs"]] == ["identical"]
    assert (out / "figure.png").read_bytes() == original
    # the reader's store holds only what was imported: the re-run went to a scratch store
    assert sorted(report_keys(store_b)) == imported

    # without the author's key, the signature is reported as untrusted: the check fails
    r = hither_cli("reproduce", key, "--store", str(store_b), env=env, user=reader, cwd=home)
    assert r.returncode == 1
    assert "signed by paper-author" in r.stdout and "no trusted keys" in r.stdout


def report_keys(store: Path) -> list[str]:
    return [k for k, _ in hi.JobCache(path=store).store.iter_records()]


@pytest.fixture
def host_store(tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    store = tmp_path / "store"
    with hi.Config(job_cache=hi.JobCache(path=store)):
        keys = figure.run()
    return store, keys


def test_a_tampered_bundle_names_the_bad_blob(host_store: tuple[Path, dict],
                                              tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    store, keys = host_store
    bundle = tmp_path / "fig.tar"
    assert main(["export", keys["figure"], "-o", str(bundle), "--store", str(store)]) == 0
    png = Path(hi.load(keys["figure"], store).path).name
    member = f"blobs/sha256/{png[:2]}/{png[2:4]}/{png}"
    data = bytearray(bundle.read_bytes())
    with tarfile.open(fileobj=io.BytesIO(bytes(data))) as tar:
        offset = tar.getmember(member).offset_data
    data[offset + 40] ^= 0xFF
    bundle.write_bytes(bytes(data))
    capsys.readouterr()
    assert main(["reproduce", "--bundle", str(bundle), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["status"] == "check-failed"
    assert member in report["checks"][0]["detail"]
    assert "tampered" in report["checks"][0]["detail"]
    fresh = tmp_path / "fresh"
    assert main(["import", str(bundle), "--store", str(fresh), "--unsigned"]) == 1
    assert member in capsys.readouterr().err
    assert not list((fresh / "records").rglob("*.json"))


def test_host_runtime_warns_and_lists_the_recorded_packages(
        host_store: tuple[Path, dict], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    store, keys = host_store
    before = sorted(report_keys(store))
    capsys.readouterr()
    assert main(["reproduce", keys["figure"], "--store", str(store), "--run", "--deep",
                 "--out", str(tmp_path / "out"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["status"] == "identical" and len(report["runs"]) == 4
    assert any("not pinned" in w for w in report["warnings"])
    assert any(p.startswith("numpy==") for p in report["packages"])
    assert (tmp_path / "out" / "figure.png").read_bytes() == \
        Path(hi.load(keys["figure"], store).path).read_bytes()
    assert sorted(report_keys(store)) == before  # nothing written to the source store
    # the text report says the same
    assert main(["reproduce", keys["figure"], "--store", str(store)]) == 0
    text = capsys.readouterr().out
    assert "check passed" in text and "not pinned" in text and "numpy==" in text


def test_a_hostile_code_entry_is_refused(host_store: tuple[Path, dict], tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    store, keys = host_store
    local = hi.JobCache(path=store).store
    body = local.get_record(keys["signals"][0])
    body["provenance"]["code_entry"] = {"module": "../../x", "function": "repro_signal"}
    local.put_record(keys["signals"][0], body)
    capsys.readouterr()
    assert main(["reproduce", keys["signals"][0], "--store", str(store), "--run",
                 "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["status"] == "check-failed" and not report["runs"]
    bad = {c["name"]: c["detail"] for c in report["checks"] if c["ok"] is False}
    assert "lacks the function's module '../../x'" in bad["code bundle"]
    # and the runner refuses it by itself
    from hither.record import Record
    from hither.reproducing import _Runner

    runner = _Runner(local, hi.JobCache(path=tmp_path / "scratch").store, None)
    try:
        run = runner.run(Record.from_dict(body, keys["signals"][0]))
    finally:
        runner.close()
    assert run.status == "failed" and "is not a module and function name" in str(run.error)


def test_usage_errors(host_store: tuple[Path, dict], tmp_path: Path) -> None:
    store, keys = host_store
    assert main(["reproduce", "--store", str(store)]) == 2
    assert main(["reproduce", keys["figure"], "--store", str(store), "--deep"]) == 2
    assert main(["reproduce", keys["figure"], "--remote", "s3://b/p", "--bundle", "x"]) == 2
    assert main(["reproduce", keys["figure"], "--store", str(store), "--run",
                 "--scratch", str(store)]) == 1


def test_a_nondeterministic_function_shows_its_first_difference(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    require("docker")
    store = tmp_path / "store"
    with hi.Config(job_cache=hi.JobCache(path=store)):
        keys = figure.run(TEST_IMAGE, noisy=True)
    noise = keys["signals"][-1]
    capsys.readouterr()
    assert main(["reproduce", noise, "--store", str(store), "--run", "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["status"] == "differs"
    assert report["runtime"]["kind"] == "docker"
    # the image's packages, as its worker reported them, are in the record
    assert any(p.startswith("numpy==") for p in report["packages"])
    diff = report["runs"][0]["difference"]
    assert diff["path"] == "result" and diff["type"] == "ndarray float64 (64,)"
    assert diff["count"] == 64 and diff["size"] == 64 and diff["max_abs"] > 0
    # --deep re-runs each job from its own recorded inputs: only the noise differs
    assert main(["reproduce", keys["figure"], "--store", str(store), "--run", "--deep",
                 "--json"]) == 1
    runs = {r["key"]: r["status"] for r in json.loads(capsys.readouterr().out)["runs"]}
    assert runs.pop(noise) == "differs"
    assert set(runs.values()) == {"identical"} and len(runs) == 4
    # the text report names the first difference
    main(["reproduce", noise, "--store", str(store), "--run"])
    assert "first difference at result (ndarray float64 (64,)): 64 of 64 elements differ" \
        in capsys.readouterr().out


def test_a_missing_image_is_named_by_its_digest(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    require("docker")
    tag = f"local/hither-repro-test:{uuid.uuid4().hex[:12]}"
    build = subprocess.run(["docker", "build", "-q", "-t", tag, "-"], capture_output=True,
                           text=True, timeout=300,
                           input=f"FROM {TEST_IMAGE}\nLABEL hither.test={tag}\n")
    assert build.returncode == 0, build.stderr
    try:
        store = tmp_path / "store"
        with hi.Config(job_cache=hi.JobCache(path=store), container=tag):
            job = figure.repro_signal.run(n=16, freq=2)
            job.wait()
        digest = hi.JobCache(path=store).store.get_record(job.key)["provenance"]["runtime"][
            "digest"]
        bundle = tmp_path / "sig.tar"
        assert main(["export", job.key, "-o", str(bundle), "--store", str(store),
                     "--with-image"]) == 0
        archive = bundle.with_name(f"sig.tar.{digest[7:23]}.image.tar")
        assert archive.is_file()
        hi.reset()  # the warm worker's container would keep the image
        subprocess.run(["docker", "rmi", "-f", tag], check=True, capture_output=True)
        assert subprocess.run(["docker", "image", "inspect", digest],
                              capture_output=True).returncode != 0
        capsys.readouterr()
        assert main(["reproduce", "--bundle", str(bundle), "--run", "--json"]) == 1
        report = json.loads(capsys.readouterr().out)
        assert report["status"] == "failed"
        assert digest in report["runs"][0]["error"]
        assert "is not present" in report["runs"][0]["error"]
        assert any(str(archive) in w for w in report["warnings"])
        # loading the exported image makes it reproducible again
        fresh = tmp_path / "fresh"
        assert main(["import", str(bundle), "--store", str(fresh), "--unsigned",
                     "--with-image"]) == 0
        assert main(["reproduce", job.key, "--store", str(fresh), "--run"]) == 0
    finally:
        subprocess.run(["docker", "rmi", "-f", tag], capture_output=True)
        ids = subprocess.run(["docker", "images", "-q", "--filter", f"label=hither.test={tag}"],
                             capture_output=True, text=True).stdout.split()
        if ids:
            subprocess.run(["docker", "rmi", "-f", *ids], capture_output=True)


def test_reproduce_from_a_remote_store(host_store: tuple[Path, dict], tmp_path: Path,
                                       bucket: str, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    store, keys = host_store
    author = SecretKey.generate("lab-a")
    author.write(tmp_path / "secret")
    url = f"s3://{bucket}/paper"
    monkeypatch.setenv("HITHER_SIGNING_KEY", str(tmp_path / "secret"))
    assert main(["push", keys["figure"], "--to", url, "--store", str(store)]) == 0
    monkeypatch.delenv("HITHER_SIGNING_KEY")
    capsys.readouterr()
    assert main(["reproduce", keys["figure"], "--remote", url, "--run", "--json",
                 "--trust", str(author.public_key)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["status"] == "identical" and report["signers"] == ["lab-a"]
    assert report["source"] == f"remote {url}"
    # untrusted: nothing is read from the remote
    assert main(["reproduce", keys["figure"], "--remote", url]) == 1
    assert "no trusted keys" in capsys.readouterr().err


def test_a_uv_environment_is_rebuilt_from_the_stored_lock(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    require("uv")
    from hither.runtimes import clear_lock_cache

    monkeypatch.setenv("HITHER_ENV_DIR", str(tmp_path / "envs-author"))
    clear_lock_cache()
    store = tmp_path / "store"
    with hi.Config(job_cache=hi.JobCache(path=store), environment=["numpy==1.26.4"]):
        job = figure.repro_signal.run(n=32, freq=3)
        job.wait()
    hi.reset()
    # the reader has neither the environment nor its lock: only the record
    monkeypatch.setenv("HITHER_ENV_DIR", str(tmp_path / "envs-reader"))
    clear_lock_cache()
    capsys.readouterr()
    assert main(["reproduce", job.key, "--store", str(store), "--run", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["status"] == "identical" and report["runtime"]["kind"] == "venv"
    assert "numpy==1.26.4" in report["packages"]
    built = [p for p in (tmp_path / "envs-reader").iterdir() if p.is_dir()]
    assert len(built) == 1 and (built[0] / "hither-requirements.lock").is_file()
    assert built[0].name.startswith(report["runtime"]["lock"][:16])  # nothing re-resolved
    clear_lock_cache()


def test_reproduce_a_bundle_from_a_web_server_and_from_kachery(
        host_store: tuple[Path, dict], tmp_path: Path, http_store: tuple[Path, str],
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    store, keys = host_store
    folder, url = http_store
    folder.mkdir(parents=True, exist_ok=True)
    author = SecretKey.generate("lab-a")
    author.write(tmp_path / "secret")
    monkeypatch.setenv("HITHER_SIGNING_KEY", str(tmp_path / "secret"))
    assert main(["export", keys["figure"], "-o", str(folder / "fig.tar"),
                 "--store", str(store)]) == 0
    (folder / "fig.tar").chmod(0o644)
    monkeypatch.setenv("KACHERY_CLOUD_DIR", str(tmp_path / "kachery"))
    assert main(["publish", keys["figure"], "--to", "kachery", "--local",
                 "--store", str(store)]) == 0
    uri = capsys.readouterr().out.strip().splitlines()[-1]
    monkeypatch.delenv("HITHER_SIGNING_KEY")
    trust = ["--trust", str(author.public_key)]
    for source in ([f"{url}/fig.tar"], [uri, "--local"]):
        assert main(["reproduce", "--bundle", *source, "--run", "--json", *trust]) == 0
        report = json.loads(capsys.readouterr().out)
        assert report["status"] == "identical" and report["key"] == keys["figure"]
        assert report["trusted"] is True


def test_import_refuses_unsigned_records_unless_told(host_store: tuple[Path, dict],
                                                     tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    store, keys = host_store
    bundle = tmp_path / "fig.tar"
    assert main(["export", keys["figure"], "-o", str(bundle), "--store", str(store)]) == 0
    fresh = tmp_path / "fresh"
    capsys.readouterr()
    assert main(["import", str(bundle), "--store", str(fresh)]) == 1
    assert "is not signed (nothing was imported)" in capsys.readouterr().err
    assert not list((fresh / "records").rglob("*.json"))
    assert main(["import", str(bundle), "--store", str(fresh), "--unsigned"]) == 0
    assert capsys.readouterr().out.split()[-1] == keys["figure"]
    assert hi.load(keys["figure"], fresh).path.startswith(str(fresh))
    assert main(["verify", keys["figure"], "--store", str(fresh)]) == 0
