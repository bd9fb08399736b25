"""hi.JobCache with remote stores: configuration, read-through, pushes, hostile remotes.

Everything runs against a real S3 endpoint (moto on 127.0.0.1) and a real pipeline; what
ran is counted through the call log of tests/sharefuncs/pipeline.py.
"""

from __future__ import annotations

import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from hither_store import RemoteStoreWarning
from hither_store._paths import blob_relpath

import hither as hi
from tests.cachefuncs import read_calls
from tests.servers import new_key, s3_client
from tests.sharefuncs.pipeline import run

N = 4


@pytest.fixture
def calls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    log = tmp_path / "calls.log"
    monkeypatch.setenv("HITHER_TEST_CALL_LOG", str(log))
    return log


@pytest.fixture
def lab_a(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, str]:
    """Lab A's signing key, set in the environment; returns (key file, public key)."""
    path, pub = new_key(tmp_path, "lab-a")
    monkeypatch.setenv("HITHER_SIGNING_KEY", str(path))
    return path, pub


def counted(log: Path) -> Counter[str]:
    c = read_calls(log)
    log.unlink(missing_ok=True)
    return c


def replay(cache: hi.JobCache) -> tuple[list[dict], list[bool], list[str]]:
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        with hi.Config(job_cache=cache):
            results, hits = run(N)
    return results, hits, [str(x.message) for x in w if issubclass(x.category, Warning)]


def publish_lab_a(tmp_path: Path, bucket: str, calls: Path, monkeypatch: pytest.MonkeyPatch,
                  lab_a: tuple[Path, str]) -> list[dict]:
    cache = hi.JobCache(path=tmp_path / "A", remotes=[hi.Remote(f"s3://{bucket}/lab",
                                                                push="on_finish")])
    results, hits, warns = replay(cache)
    assert not any(hits) and not warns
    assert counted(calls) == {"make": N, "digest": N}
    monkeypatch.delenv("HITHER_SIGNING_KEY")
    return results


# ---------------------------------------------------------------------------- configuration
def test_remotes_from_the_environment(tmp_path: Path, share_env: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HITHER_STORE", str(tmp_path / "default"))
    monkeypatch.setenv("HITHER_REMOTES", "s3://b1/x  https://example.org/store")
    monkeypatch.setenv("HITHER_PUSH", "on_finish")
    monkeypatch.setenv("HITHER_TRUSTED_KEYS", "k:" + "A" * 43 + "=")
    cache = hi.JobCache()
    assert [(r.url, r.push, r.read_only) for r in cache.remotes] == [
        ("s3://b1/x", "on_finish", False), ("https://example.org/store", "never", True)]
    assert cache.remotes[0].trusted.names() == ["k"]
    assert hi.JobCache(remotes=[]).remotes == []
    assert "remotes=" in repr(cache)


@pytest.mark.parametrize("remotes, match", [
    (["ftp://x/y"], "unsupported remote store"),
    ([hi.Remote("s3://b/p")] + ["/local/dir"], "unsupported remote store"),
    ([42], "url string or a Remote"),
])
def test_bad_remotes(tmp_path: Path, share_env: Path, remotes: list[Any], match: str) -> None:
    with pytest.raises(hi.CacheError, match=match):
        hi.JobCache(path=tmp_path / "s", remotes=remotes)


def test_gs_remote_without_gcsfs_names_the_extra(tmp_path: Path, share_env: Path) -> None:
    """gs:// goes through gcsfs, an extra: without it the cache cannot be made, and the
    error says what to install (never an ImportError from a job later)."""
    import importlib.util

    if importlib.util.find_spec("gcsfs") is not None:
        pytest.skip("gcsfs is installed here")
    with pytest.raises(hi.CacheError, match=r"gcsfs.*hither\[share,gs\]"):
        hi.JobCache(path=tmp_path / "s", remotes=["gs://bucket/prefix"])


def test_bad_push_policy_and_key_settings(tmp_path: Path, share_env: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="push must be one of"):
        hi.Remote("s3://b/p", push="sometimes")
    monkeypatch.setenv("HITHER_SIGNING_KEY", str(tmp_path / "absent.secret"))
    with pytest.raises(hi.CacheError, match="HITHER_SIGNING_KEY"):
        hi.JobCache(path=tmp_path / "s")
    monkeypatch.delenv("HITHER_SIGNING_KEY")
    monkeypatch.setenv("HITHER_TRUSTED_KEYS", "not a key")
    with pytest.raises(hi.CacheError, match="HITHER_TRUSTED_KEYS"):
        hi.JobCache(path=tmp_path / "s", remotes=["s3://b/p"])


def test_no_trusted_keys_warns_once_and_never_reads(tmp_path: Path, bucket: str) -> None:
    with pytest.warns(RemoteStoreWarning, match="no keys are trusted"):
        cache = hi.JobCache(path=tmp_path / "s", remotes=[f"s3://{bucket}/x"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert cache.get_record("k" * 64) is None


# ---------------------------------------------------------------------------- sharing
def test_lab_b_gets_everything_from_the_remote(tmp_path: Path, bucket: str, calls: Path,
                                               monkeypatch: pytest.MonkeyPatch,
                                               lab_a: tuple[Path, str]) -> None:
    expected = publish_lab_a(tmp_path, bucket, calls, monkeypatch, lab_a)
    monkeypatch.setenv("HITHER_TRUSTED_KEYS", lab_a[1])
    b = hi.JobCache(path=tmp_path / "B", remotes=[f"s3://{bucket}/lab"])
    results, hits, warns = replay(b)
    assert results == expected and all(hits) and not warns
    assert counted(calls) == {}
    # the hits were copied: the local store alone now answers, without asking the remote
    local_only = hi.JobCache(path=tmp_path / "B", remotes=[])
    results, hits, _ = replay(local_only)
    assert results == expected and all(hits)


def test_warm_replay_makes_no_remote_calls(tmp_path: Path, bucket: str, calls: Path,
                                           monkeypatch: pytest.MonkeyPatch,
                                           lab_a: tuple[Path, str]) -> None:
    from tests.store.test_stack import Counting

    publish_lab_a(tmp_path, bucket, calls, monkeypatch, lab_a)
    monkeypatch.setenv("HITHER_TRUSTED_KEYS", lab_a[1])
    b = hi.JobCache(path=tmp_path / "B", remotes=[hi.Remote(f"s3://{bucket}/lab",
                                                            push="on_finish")])
    replay(b)
    counting = Counting(b.remotes[0].backend)
    b.remotes[0]._backend = counting  # type: ignore[assignment]
    results, hits, warns = replay(b)
    assert all(hits) and counting.calls == [] and not warns


@pytest.mark.parametrize("attack", ["tampered blob", "untrusted key", "unsigned record"])
def test_bad_remote_entries_rerun(tmp_path: Path, bucket: str, s3_env: str, calls: Path,
                                  monkeypatch: pytest.MonkeyPatch, lab_a: tuple[Path, str],
                                  attack: str) -> None:
    expected = publish_lab_a(tmp_path, bucket, calls, monkeypatch, lab_a)
    a = hi.JobCache(path=tmp_path / "A", remotes=[])
    key = sorted(k for k, r in a.store.iter_records()
                 if r["provenance"]["function"]["name"] == "share_make")[0]
    rec = a.store.get_record(key)
    s3 = s3_client(s3_env)
    prefix = "lab/"
    trusted = lab_a[1]
    if attack == "tampered blob":
        ref = rec["result"]["ref"]
        s3.put_object(Bucket=bucket, Key=prefix + blob_relpath(ref[len("sha256://"):]),
                      Body=b"\0" * 6400)
    elif attack == "untrusted key":
        trusted = new_key(tmp_path, "someone-else")[1]
    else:  # the record's sidecars removed: unsigned
        for obj in s3.list_objects_v2(Bucket=bucket, Prefix=prefix + "records/")["Contents"]:
            if obj["Key"].endswith(".sig") and key in obj["Key"]:
                s3.delete_object(Bucket=bucket, Key=obj["Key"])
    monkeypatch.setenv("HITHER_TRUSTED_KEYS", trusted)
    b = hi.JobCache(path=tmp_path / "B", remotes=[f"s3://{bucket}/lab"])
    results, hits, warns = replay(b)
    assert results == expected  # never a wrong value
    ran = counted(calls)
    if attack == "untrusted key":
        assert ran == {"make": N, "digest": N} and len(warns) == 2 * N
    else:
        # only the attacked job re-ran; its downstream job is still a (verified) hit,
        # since the re-run gave the same result hash
        assert ran == {"make": 1} and len(warns) == 1, (ran, warns)
    assert all(w.startswith(f"remote store s3://{bucket}/lab: record ") for w in warns)


def test_explicit_push_and_pull_api(tmp_path: Path, bucket: str, s3_env: str, calls: Path,
                                    monkeypatch: pytest.MonkeyPatch,
                                    lab_a: tuple[Path, str]) -> None:
    a = hi.JobCache(path=tmp_path / "A", remotes=[f"s3://{bucket}/x"])
    assert a.remotes[0].push == "explicit"
    with hi.Config(job_cache=a):
        expected, _ = run(2)
    assert not s3_client(s3_env).list_objects_v2(Bucket=bucket).get("Contents")
    keys = [k for k, _ in a.store.iter_records()]
    report = a.push(keys)
    assert sorted(report.pushed) == sorted(keys) and not report.failed
    monkeypatch.delenv("HITHER_SIGNING_KEY")
    monkeypatch.setenv("HITHER_TRUSTED_KEYS", lab_a[1])
    b = hi.JobCache(path=tmp_path / "B", remotes=[])
    pulled = b.pull(keys, f"s3://{bucket}/x")
    assert sorted(pulled.fetched) == sorted(keys) and not pulled.failed
    counted(calls)
    with hi.Config(job_cache=b):
        results, hits = run(2)
    assert results == expected and all(hits) and counted(calls) == {}


def test_push_never_reads_but_never_writes(tmp_path: Path, bucket: str, s3_env: str,
                                           calls: Path, monkeypatch: pytest.MonkeyPatch,
                                           lab_a: tuple[Path, str]) -> None:
    """A remote with push="never" is read like any other, and receives nothing: neither
    when results are recorded nor from cache.push() without a target."""
    expected = publish_lab_a(tmp_path, bucket, calls, monkeypatch, lab_a)
    monkeypatch.setenv("HITHER_TRUSTED_KEYS", lab_a[1])
    s3 = s3_client(s3_env)
    before = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"])
    b = hi.JobCache(path=tmp_path / "B", remotes=[hi.Remote(f"s3://{bucket}/lab",
                                                            push="never")])
    results, hits, warns = replay(b)
    assert results == expected and all(hits) and not warns and counted(calls) == {}
    with hi.Config(job_cache=b):  # two new results: they stay local
        run(N + 2)
    assert counted(calls) == {"make": 2, "digest": 2}
    with pytest.raises(hi.CacheError, match="no remote to push to"):
        b.push([k for k, _ in b.store.iter_records()])
    assert sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]) == before


def test_readonly_cache_does_not_read_remotes(tmp_path: Path, bucket: str, calls: Path,
                                              monkeypatch: pytest.MonkeyPatch,
                                              lab_a: tuple[Path, str]) -> None:
    """A read-only store never gets written, so remote hits could not be copied into it:
    remotes are not read (said once), the jobs run, nothing is stored."""
    expected = publish_lab_a(tmp_path, bucket, calls, monkeypatch, lab_a)
    monkeypatch.setenv("HITHER_TRUSTED_KEYS", lab_a[1])
    hi.JobCache(path=tmp_path / "B", remotes=[])  # create the store
    with pytest.warns(RemoteStoreWarning, match="read-only"):
        b = hi.JobCache(path=tmp_path / "B", readonly=True, remotes=[f"s3://{bucket}/lab"])
    results, hits, warns = replay(b)
    assert results == expected and not any(hits) and not warns
    assert counted(calls) == {"make": N, "digest": N}
    assert list(b.store.iter_records()) == []


def test_record_path_for_local_hits_is_unchanged(tmp_path: Path, bucket: str,
                                                 monkeypatch: pytest.MonkeyPatch,
                                                 lab_a: tuple[Path, str], calls: Path) -> None:
    """A local hit never touches a remote, and signing adds a sidecar, nothing else."""
    from tests.store.test_stack import Counting

    cache = hi.JobCache(path=tmp_path / "A", remotes=[hi.Remote(f"s3://{bucket}/y")])
    counting = Counting(cache.remotes[0].backend)
    cache.remotes[0]._backend = counting  # type: ignore[assignment]
    with hi.Config(job_cache=cache):
        run(1)
        assert counting.calls == ["read", "read"]  # two misses, asked once each
        run(1)
    assert counting.calls == ["read", "read"]
    files = sorted(p.suffix for p in (tmp_path / "A" / "records").rglob("*") if p.is_file())
    assert files == [".json", ".json", ".sig", ".sig"]
    for k, _ in cache.store.iter_records():
        assert cache.store.record_path(k).read_bytes().startswith(b'{"format":1,')


def test_lineage_of_nested_jobs_is_pushed(tmp_path: Path, bucket: str,
                                          monkeypatch: pytest.MonkeyPatch,
                                          lab_a: tuple[Path, str], calls: Path) -> None:
    """An argument holding several jobs' results (a list of jobs) is lineage too."""
    from tests.sharefuncs.pipeline import share_digest, share_make

    a = hi.JobCache(path=tmp_path / "A", remotes=[])
    with hi.Config(job_cache=a):
        parts = [share_make.run(seed=i) for i in range(3)]
        joined = share_digest.run(data=parts, tag="all")
        joined.wait()
    report = a.push([joined.key], f"s3://{bucket}/nested")
    assert sorted(report.pushed) == sorted([joined.key] + [p.key for p in parts])
