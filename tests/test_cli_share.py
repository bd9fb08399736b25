"""The sharing commands: hither key, push, pull, publish, remote ls."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

import pytest

import hither as hi
from hither.cli import main
from tests.servers import s3_client
from tests.sharefuncs.pipeline import run


@pytest.fixture
def key(tmp_path: Path, share_env: Path, capsys: pytest.CaptureFixture[str]) -> tuple[Path, str]:
    path = tmp_path / "keys" / "lab-a.secret"
    assert main(["key", "generate", "lab-a", "--out", str(path)]) == 0
    out, err = capsys.readouterr()
    assert str(path) in err
    return path, out.strip()


def filled_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, list[dict]]:
    monkeypatch.setenv("HITHER_TEST_CALL_LOG", str(tmp_path / "calls.log"))
    store = tmp_path / "A"
    with hi.Config(job_cache=hi.JobCache(path=store, remotes=[])):
        results, _ = run(2)
    return store, results


def test_key_generate(tmp_path: Path, key: tuple[Path, str],
                      capsys: pytest.CaptureFixture[str]) -> None:
    path, pub = key
    assert pub.startswith("lab-a:") and len(pub) == len("lab-a:") + 44
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert main(["key", "public", str(path)]) == 0
    assert capsys.readouterr().out.strip() == pub
    assert main(["key", "generate", "lab-a", "--out", str(path)]) == 1
    assert "not overwritten" in capsys.readouterr().err
    assert main(["key", "generate", "bad name", "--out", str(tmp_path / "x")]) == 2


def test_push_and_pull_through_s3(tmp_path: Path, bucket: str, key: tuple[Path, str],
                                  monkeypatch: pytest.MonkeyPatch,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    store, results = filled_store(tmp_path, monkeypatch)
    url = f"s3://{bucket}/shared"
    assert main(["push", "--all", "--to", url, "--store", str(store)]) == 1
    assert "HITHER_SIGNING_KEY" in capsys.readouterr().err
    monkeypatch.setenv("HITHER_SIGNING_KEY", str(key[0]))
    assert main(["push", "--all", "--to", url, "--store", str(store)]) == 0
    # 2 results and the host's package list (one blob for every record of a runtime)
    assert "pushed 4 records (3 blobs)" in capsys.readouterr().out
    assert main(["push", "--all", "--to", url, "--store", str(store)]) == 0
    assert "4 were there already" in capsys.readouterr().out
    monkeypatch.delenv("HITHER_SIGNING_KEY")

    roots = [k for k, r in hi.JobCache(path=store, remotes=[]).store.iter_records()
             if r["provenance"]["function"]["name"] == "share_digest"]
    b = tmp_path / "B"
    assert main(["pull", *roots, "--from", url, "--store", str(b)]) == 1
    assert "no trusted keys" in capsys.readouterr().err
    assert main(["pull", *roots, "--from", url, "--store", str(b), "--trust", key[1]]) == 0
    assert "pulled 4 records" in capsys.readouterr().out  # the roots and their lineage
    (tmp_path / "calls.log").unlink()
    with hi.Config(job_cache=hi.JobCache(path=b, remotes=[])):
        again, hits = run(2)
    assert again == results and all(hits) and not (tmp_path / "calls.log").exists()


def test_pull_of_tampered_or_untrusted_results(tmp_path: Path, bucket: str, s3_env: str,
                                               key: tuple[Path, str],
                                               monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    store, _ = filled_store(tmp_path, monkeypatch)
    url = f"s3://{bucket}/shared"
    monkeypatch.setenv("HITHER_SIGNING_KEY", str(key[0]))
    assert main(["push", "--all", "--to", url, "--store", str(store), "--no-lineage"]) == 0
    monkeypatch.delenv("HITHER_SIGNING_KEY")
    recs = dict(hi.JobCache(path=store, remotes=[]).store.iter_records())
    make_key = next(k for k, r in recs.items()
                    if r["provenance"]["function"]["name"] == "share_make")
    s3 = s3_client(s3_env)
    ref = recs[make_key]["result"]["ref"][len("sha256://"):]
    s3.put_object(Bucket=bucket, Key=f"shared/blobs/sha256/{ref[:2]}/{ref[2:4]}/{ref}",
                  Body=b"evil" * 1600)
    capsys.readouterr()
    b = tmp_path / "B"
    assert main(["pull", make_key, "--from", url, "--store", str(b), "--trust", key[1]]) == 1
    assert "does not match its hash" in capsys.readouterr().err
    other = hi.JobCache(path=b, remotes=[]).store
    assert other.get_record(make_key) is None
    from hither_store import SecretKey

    stranger = str(SecretKey.generate("lab-a").public_key)
    assert main(["pull", make_key, "--from", url, "--store", str(b), "--trust", stranger]) == 1
    assert "no valid signature by a trusted key" in capsys.readouterr().err


def test_publish_and_pull_kachery_local(tmp_path: Path, key: tuple[Path, str],
                                        monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("KACHERY_CLOUD_DIR", str(tmp_path / "kachery"))
    store, results = filled_store(tmp_path, monkeypatch)
    roots = [k for k, r in hi.JobCache(path=store, remotes=[]).store.iter_records()
             if r["provenance"]["function"]["name"] == "share_digest"]
    assert main(["publish", roots[0], "--to", "kachery", "--local", "--store", str(store)]) == 1
    assert "HITHER_SIGNING_KEY" in capsys.readouterr().err
    monkeypatch.setenv("HITHER_SIGNING_KEY", str(key[0]))
    assert main(["publish", roots[0], "--to", "kachery", "--local", "--store", str(store)]) == 0
    uri = capsys.readouterr().out.strip()
    assert uri.startswith("sha1://") and "\n" not in uri
    monkeypatch.delenv("HITHER_SIGNING_KEY")
    b = tmp_path / "B"
    assert main(["pull", uri, "--local", "--store", str(b), "--trust", key[1]]) == 0
    # the result and the host's package list
    assert "imported 2 records and 2 blobs" in capsys.readouterr().out
    assert hi.JobCache(path=b, remotes=[]).store.get_record(roots[0]) is not None
    assert main(["publish", roots[0], "--to", "zenodo", "--store", str(store)]) == 2


def test_remote_ls(tmp_path: Path, bucket: str, key: tuple[Path, str],
                   monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["remote", "ls"]) == 1
    assert "no remotes configured" in capsys.readouterr().err
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HITHER_REMOTES", f"s3://{bucket}/x http://127.0.0.1:{port}/store")
    monkeypatch.setenv("HITHER_TRUSTED_KEYS", key[1])
    assert main(["remote", "ls"]) == 1  # one of them does not answer
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[1:]}
    s3_row, http_row = rows[f"s3://{bucket}/x"], rows[f"http://127.0.0.1:{port}/store"]
    assert "lab-a" in s3_row and "reachable (no records yet)" in s3_row
    assert "unreachable" not in s3_row and "unreachable" in http_row
