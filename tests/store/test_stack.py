"""StoreStack against real remotes on 127.0.0.1: moto (S3) and http.server.

Hostile cases first: whatever a remote holds that fails a check is a miss with exactly one
warning, and nothing of it lands in the local store.
"""

from __future__ import annotations

import json
import threading
import warnings
from pathlib import Path
from typing import Any

import pytest
from hither_store import (
    LocalStore,
    LookupCache,
    Remote,
    RemoteStoreWarning,
    SecretKey,
    StoreStack,
    TrustedKeys,
)
from hither_store._paths import blob_relpath, record_relpath, sidecar_relpath
from hither_store._records import body_checksum
from hither_store.closure import RecordRefs

from tests.servers import s3_client

KEY = "job-0123456789abcdef"


def _upstream(rec: dict) -> list[str]:
    return [v["job"] for v in rec.get("inputs", {}).values() if "job" in v]


REFS = RecordRefs(upstream=_upstream)


class Counting:
    """Wraps a backend and counts its calls (how many round trips a lookup costs)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls: list[str] = []
        self.url = inner.url
        self.writable = inner.writable

    def __getattr__(self, name: str) -> Any:
        fn = getattr(self.inner, name)

        def call(*a: Any, **k: Any) -> Any:
            self.calls.append(name)
            return fn(*a, **k)
        return call


def record_with_blob(store: LocalStore, payload: bytes, **extra: Any) -> dict[str, Any]:
    uri = store.put_bytes(payload)
    return {"status": "finished", "result": {"~": "bytes", "ref": uri},
            "result_hash": "h-" + uri[-8:], **extra}


@pytest.fixture
def keys() -> dict[str, SecretKey]:
    return {"a": SecretKey.generate("lab-a"), "evil": SecretKey.generate("evil")}


def stack(tmp: Path, name: str, remotes: list[Remote], signer: SecretKey | None = None,
          lookup: Path | None = None) -> StoreStack:
    return StoreStack(LocalStore(tmp / name), remotes, refs=REFS, signer=signer,
                      lookup=LookupCache(lookup or tmp / f"lookup-{name}"))


def s3_remote(bucket: str, trusted: tuple[SecretKey, ...] | list[SecretKey] = (),
              **kw: Any) -> Remote:
    return Remote(f"s3://{bucket}/store", trusted_keys=[str(k.public_key) for k in trusted], **kw)


def fetch_one_warning(st: StoreStack, key: str) -> str:
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        assert st.fetch(key) is None
    msgs = [str(x.message) for x in w if issubclass(x.category, RemoteStoreWarning)]
    assert len(msgs) == 1, msgs
    return msgs[0]


def assert_nothing_copied(st: StoreStack, key: str, body: dict) -> None:
    assert st.local.get_record(key) is None
    assert not st.local.has_blob(body["result"]["ref"])


# ---------------------------------------------------------------------------- S3
def test_push_then_fetch_verified_copy(tmp_path: Path, bucket: str, keys: dict) -> None:
    a = stack(tmp_path, "a", [s3_remote(bucket)], signer=keys["a"])
    body = record_with_blob(a.local, b"x" * 5000)
    a.put_record(KEY, body)
    report = a.push([KEY], a.remotes[0])
    assert report.pushed == [KEY] and report.blobs_uploaded == 1 and not report.failed

    b = stack(tmp_path, "b", [s3_remote(bucket, [keys["a"]])])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = b.fetch(KEY)
    assert got == body
    assert b.local.get_record(KEY) == body
    assert b.local.get_bytes(body["result"]["ref"]) == b"x" * 5000
    checksum = body_checksum(body)
    assert (b.local.root / sidecar_relpath(KEY, checksum)).is_file()
    # what is on S3 has the local layout, and the upload carried its sha256
    s3 = s3_client(b.remotes[0].backend.endpoint)  # type: ignore[attr-defined]
    hexd = body["result"]["ref"][len("sha256://"):]
    head = s3.head_object(Bucket=bucket, Key="store/" + blob_relpath(hexd), ChecksumMode="ENABLED")
    assert head.get("ChecksumSHA256")
    assert s3.get_object(Bucket=bucket, Key="store/" + record_relpath(KEY))["Body"].read() == \
        a.local.record_path(KEY).read_bytes()


def test_endpoint_as_a_store_option(tmp_path: Path, bucket: str, s3_env: str, keys: dict,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """``Remote(endpoint_url=...)`` wins over ``$AWS_ENDPOINT_URL`` (here a dead port), and
    two remotes of one bucket url on different endpoints are different remotes."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    a = stack(tmp_path, "a", [s3_remote(bucket, endpoint_url=s3_env)], signer=keys["a"])
    body = record_with_blob(a.local, b"via the option " * 100)
    a.put_record(KEY, body)
    assert a.push([KEY], a.remotes[0]).pushed == [KEY]
    b = stack(tmp_path, "b", [s3_remote(bucket, [keys["a"]], endpoint_url=s3_env)])
    assert b.fetch(KEY) == body
    assert a.remotes[0].id != s3_remote(bucket).id


def test_push_again_is_harmless(tmp_path: Path, bucket: str, keys: dict) -> None:
    a = stack(tmp_path, "a", [s3_remote(bucket)], signer=keys["a"])
    a.put_record(KEY, record_with_blob(a.local, b"data"))
    assert a.push([KEY], a.remotes[0]).pushed == [KEY]
    again = a.push([KEY], a.remotes[0])
    assert again.present == [KEY] and again.pushed == [] and again.blobs_uploaded == 0


def test_tampered_blob_is_a_miss(tmp_path: Path, bucket: str, keys: dict) -> None:
    a = stack(tmp_path, "a", [s3_remote(bucket)], signer=keys["a"])
    body = record_with_blob(a.local, b"genuine!" * 100)
    a.put_record(KEY, body)
    a.push([KEY], a.remotes[0])
    hexd = body["result"]["ref"][len("sha256://"):]
    s3_client(a.remotes[0].backend.endpoint).put_object(  # type: ignore[attr-defined]
        Bucket=bucket, Key="store/" + blob_relpath(hexd), Body=b"forged!!" * 100)
    b = stack(tmp_path, "b", [s3_remote(bucket, [keys["a"]])])
    assert "does not match its hash" in fetch_one_warning(b, KEY)
    assert_nothing_copied(b, KEY, body)
    assert b.fetch(KEY) is None  # remembered as a miss for a while: no second warning


def test_truncated_and_missing_blobs(tmp_path: Path, bucket: str, keys: dict) -> None:
    a = stack(tmp_path, "a", [s3_remote(bucket)], signer=keys["a"])
    s3 = s3_client(a.remotes[0].backend.endpoint)  # type: ignore[attr-defined]
    for i, (fate, why) in enumerate([("truncate", "truncated"), ("delete", "missing")]):
        key = f"{KEY}-{i}"
        body = record_with_blob(a.local, f"payload {i}".encode() * 50)
        a.put_record(key, body)
        a.push([key], a.remotes[0])
        obj = "store/" + blob_relpath(body["result"]["ref"][len("sha256://"):])
        if fate == "truncate":
            s3.put_object(Bucket=bucket, Key=obj, Body=b"pay")
        else:
            s3.delete_object(Bucket=bucket, Key=obj)
        b = stack(tmp_path, f"b{i}", [s3_remote(bucket, [keys["a"]])])
        assert why in fetch_one_warning(b, key)
        assert_nothing_copied(b, key, body)


def test_untrusted_and_unsigned_records_are_misses(tmp_path: Path, bucket: str,
                                                   keys: dict) -> None:
    evil = stack(tmp_path, "evil", [s3_remote(bucket)], signer=keys["evil"])
    body = record_with_blob(evil.local, b"evil result")
    evil.put_record(KEY, body)
    evil.push([KEY], evil.remotes[0])
    # no signer, and a remote that does not ask for signatures: pushes unsigned
    lax = stack(tmp_path, "lax", [s3_remote(bucket, require_signature=False)])
    body2 = record_with_blob(lax.local, b"unsigned result")
    lax.put_record(KEY + "-u", body2)
    assert lax.push([KEY + "-u"], lax.remotes[0]).pushed == [KEY + "-u"]

    b = stack(tmp_path, "b", [s3_remote(bucket, [keys["a"]])])
    assert "no valid signature by a trusted key (signed by: evil)" in fetch_one_warning(b, KEY)
    assert "not signed" in fetch_one_warning(b, KEY + "-u")
    assert_nothing_copied(b, KEY, body)
    assert_nothing_copied(b, KEY + "-u", body2)
    # a reader that does not require signatures takes the unsigned one
    c = stack(tmp_path, "c", [s3_remote(bucket, require_signature=False)])
    assert c.fetch(KEY + "-u") == body2


def test_unsigned_push_refused_when_signatures_are_required(tmp_path: Path, bucket: str) -> None:
    a = stack(tmp_path, "a", [s3_remote(bucket)])
    a.put_record(KEY, record_with_blob(a.local, b"x"))
    report = a.push([KEY], a.remotes[0])
    assert KEY in report.failed and "HITHER_SIGNING_KEY" in report.failed[KEY]
    assert not a.remotes[0].backend.exists(record_relpath(KEY))


def test_tampered_record_and_swapped_sidecar(tmp_path: Path, bucket: str, keys: dict) -> None:
    a = stack(tmp_path, "a", [s3_remote(bucket)], signer=keys["a"])
    s3 = s3_client(a.remotes[0].backend.endpoint)  # type: ignore[attr-defined]
    good = record_with_blob(a.local, b"good")
    bad = record_with_blob(a.local, b"bad")
    a.put_record(KEY, good)
    a.put_record(KEY + "-2", bad)
    a.push([KEY, KEY + "-2"], a.remotes[0])
    # 1. the record's bytes altered: its checksum fails
    raw = s3.get_object(Bucket=bucket, Key="store/" + record_relpath(KEY))["Body"].read()
    s3.put_object(Bucket=bucket, Key="store/" + record_relpath(KEY),
                  Body=raw.replace(b'"finished"', b'"finishex"'))
    b = stack(tmp_path, "b", [s3_remote(bucket, [keys["a"]])])
    assert "damaged record" in fetch_one_warning(b, KEY)
    # 2. a consistent record rewritten by an attacker, with the genuine sidecar of another
    # record copied under the new record's checksum
    forged = dict(bad, result_hash=good["result_hash"])
    from hither_store._records import encode_record

    s3.put_object(Bucket=bucket, Key="store/" + record_relpath(KEY + "-2"),
                  Body=encode_record(KEY + "-2", forged))
    genuine_sc = s3.get_object(Bucket=bucket, Key="store/" + sidecar_relpath(
        KEY, body_checksum(good)))["Body"].read()
    s3.put_object(Bucket=bucket, Key="store/" + sidecar_relpath(KEY + "-2", body_checksum(forged)),
                  Body=genuine_sc)
    assert "signature is for record" in fetch_one_warning(b, KEY + "-2")
    assert b.local.get_record(KEY + "-2") is None


def test_oversized_record_is_refused(tmp_path: Path, bucket: str, keys: dict,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import hither_store.stack as stack_mod

    a = stack(tmp_path, "a", [s3_remote(bucket)], signer=keys["a"])
    a.put_record(KEY, {"padding": "x" * 5000})
    a.push([KEY], a.remotes[0])
    monkeypatch.setattr(stack_mod, "MAX_RECORD_BYTES", 1000)
    b = stack(tmp_path, "b", [s3_remote(bucket, [keys["a"]])])
    assert "larger than 1000 bytes" in fetch_one_warning(b, KEY)


def test_miss_is_remembered_for_its_ttl(tmp_path: Path, bucket: str, keys: dict) -> None:
    b = stack(tmp_path, "b", [s3_remote(bucket, [keys["a"]], miss_ttl=3600)])
    counting = Counting(b.remotes[0].backend)
    b.remotes[0]._backend = counting  # type: ignore[assignment]
    assert b.fetch(KEY) is None
    assert counting.calls == ["read"]
    # the record appears on the remote; within the ttl nobody asks again
    a = stack(tmp_path, "a", [s3_remote(bucket)], signer=keys["a"])
    a.put_record(KEY, record_with_blob(a.local, b"late"))
    a.push([KEY], a.remotes[0])
    assert b.fetch(KEY) is None
    assert counting.calls == ["read"]
    # an explicit pull does not use the miss memory
    assert b.pull([KEY], b.remotes[0]).fetched == [KEY]


def test_unreachable_remote_warns_once(tmp_path: Path, share_env: Path,
                                       monkeypatch: pytest.MonkeyPatch, keys: dict) -> None:
    import socket

    from tests.servers import S3_ENV

    for k, v in S3_ENV.items():
        monkeypatch.setenv(k, v)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once we leave: nothing listens there
    remote = Remote("s3://nobucket/x", endpoint_url=f"http://127.0.0.1:{port}",
                    trusted_keys=[str(keys["a"].public_key)],
                    storage_options={"config_kwargs": {"retries": {"max_attempts": 1},
                                                       "connect_timeout": 2}})
    b = stack(tmp_path, "b", [remote])
    assert "cannot use it" in fetch_one_warning(b, KEY)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert b.fetch(KEY + "x") is None  # down: left alone, silently


def test_on_finish_push(tmp_path: Path, bucket: str, keys: dict) -> None:
    a = stack(tmp_path, "a", [s3_remote(bucket, push="on_finish")], signer=keys["a"])
    body = record_with_blob(a.local, b"pushed at once")
    a.put_record(KEY, body)
    be = a.remotes[0].backend
    assert be.exists(record_relpath(KEY))
    assert be.exists(sidecar_relpath(KEY, body_checksum(body)))
    # a second record sharing the blob: the lookup cache knows the blob is there
    counting = Counting(be)
    a.remotes[0]._backend = counting  # type: ignore[assignment]
    a.put_record(KEY + "-2", dict(body, extra=1))
    assert counting.calls == ["create", "create"]  # sidecar and record only


def test_lineage_push_and_pull(tmp_path: Path, bucket: str, keys: dict) -> None:
    a = stack(tmp_path, "a", [s3_remote(bucket)], signer=keys["a"])
    up = record_with_blob(a.local, b"upstream")
    a.put_record("up-0000000001", up)
    down = record_with_blob(a.local, b"downstream", inputs={"x": {"job": "up-0000000001"}})
    a.put_record(KEY, down)
    report = a.push([KEY], a.remotes[0])
    assert sorted(report.pushed) == sorted(["up-0000000001", KEY])
    b = stack(tmp_path, "b", [s3_remote(bucket, [keys["a"]])])
    pulled = b.pull([KEY], b.remotes[0])
    assert sorted(pulled.fetched) == sorted([KEY, "up-0000000001"]) and not pulled.failed
    assert b.local.get_record("up-0000000001") == up


@pytest.mark.parametrize("bad", ["../../../etc/passwd", "short", 42, "a/b-0123456789"])
def test_pull_of_a_lineage_naming_bad_keys(tmp_path: Path, bucket: str, keys: dict,
                                           bad: Any) -> None:
    """A record (signed, so it passes) whose lineage names something that is not a key:
    that name fails, nothing raises, nothing outside the store is touched, and the remote
    stays in use."""
    a = stack(tmp_path, "a", [s3_remote(bucket)], signer=keys["a"])
    down = record_with_blob(a.local, b"downstream", inputs={"x": {"job": bad}})
    a.put_record(KEY, down)
    report = a.push([KEY], a.remotes[0])
    assert report.pushed == [KEY]
    assert report.missing_records == ([bad] if isinstance(bad, str) else [])
    b = stack(tmp_path, "b", [s3_remote(bucket, [keys["a"]])])
    pulled = b.pull([KEY], b.remotes[0])
    assert pulled.fetched == [KEY]
    if isinstance(bad, str):
        assert list(pulled.failed) == [bad] and "not a record key" in pulled.failed[bad]
    assert not b.remotes[0].is_down()


def test_concurrent_writers_of_the_same_keys(tmp_path: Path, bucket: str, keys: dict) -> None:
    """Two labs push different versions of the same records at once: each key ends with
    one complete, verifiable version."""
    lab2 = SecretKey.generate("lab-b")
    writers = []
    for name, signer in (("w1", keys["a"]), ("w2", lab2)):
        st = stack(tmp_path, name, [s3_remote(bucket, push="on_finish")], signer=signer)
        writers.append(st)
    n = 12
    errors: list[BaseException] = []

    def run(st: StoreStack, tag: str) -> None:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                for i in range(n):
                    st.put_record(f"{KEY}-{i:03d}", record_with_blob(
                        st.local, f"{tag} {i}".encode() * 30, who=tag))
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=run, args=(st, st.local.root.name)) for st in writers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    reader = stack(tmp_path, "r", [s3_remote(bucket, [keys["a"], lab2])])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for i in range(n):
            got = reader.fetch(f"{KEY}-{i:03d}")
            assert got is not None and got["who"] in ("w1", "w2")
            assert reader.local.get_bytes(got["result"]["ref"]) == \
                f"{got['who']} {i}".encode() * 30


def test_conflict_409_is_retried(tmp_path: Path, bucket: str) -> None:
    import errno

    from hither_store.remote import FsspecBackend

    be = Remote(f"s3://{bucket}/c").backend
    assert isinstance(be, FsspecBackend)
    real = be.fs.pipe_file
    calls = []

    def flaky(path: str, data: bytes, **kw: Any) -> Any:
        calls.append(path)
        if len(calls) < 3:
            raise OSError(errno.EBUSY, "ConditionalRequestConflict")
        return real(path, data, **kw)

    be.fs.pipe_file = flaky  # type: ignore[method-assign]
    assert be.create("x/y", b"data") is True
    assert len(calls) == 3
    assert be.create("x/y", b"data") is False  # 412: already there


# ---------------------------------------------------------------------------- http
def test_read_only_http_store(tmp_path: Path, share_env: Path, keys: dict,
                              http_store: tuple[Path, str]) -> None:
    """A store published as static files: a local store's folder, served as it is."""
    folder, url = http_store
    pub = StoreStack(LocalStore(folder), [], refs=REFS, signer=keys["a"],
                     lookup=LookupCache(tmp_path / "lp"))
    body = record_with_blob(pub.local, b"published" * 1000)
    pub.put_record(KEY, body)
    remote = Remote(url, trusted_keys=[str(keys["a"].public_key)])
    assert remote.read_only and remote.push == "never"
    with pytest.raises(ValueError):
        Remote(url, push="on_finish")
    b = stack(tmp_path, "b", [remote])
    assert b.fetch(KEY) == body
    assert b.local.get_bytes(body["result"]["ref"]) == b"published" * 1000
    # a tampered file on the web server
    blob = pub.local.root / blob_relpath(body["result"]["ref"][len("sha256://"):])
    blob.chmod(0o644)
    blob.write_bytes(b"tampered!" * 1000)
    c = stack(tmp_path, "c", [Remote(url, trusted_keys=[str(keys["a"].public_key)])])
    assert "does not match its hash" in fetch_one_warning(c, KEY)
    assert_nothing_copied(c, KEY, body)
    assert "reachable" in remote.backend.ping()


def test_http_blob_stream_is_bounded(tmp_path: Path, share_env: Path, keys: dict,
                                     http_store: tuple[Path, str]) -> None:
    """A server sending more bytes than the signed size cannot make us store them."""
    folder, url = http_store
    pub = StoreStack(LocalStore(folder), [], refs=REFS, signer=keys["a"],
                     lookup=LookupCache(tmp_path / "lp"))
    body = record_with_blob(pub.local, b"small")
    pub.put_record(KEY, body)
    blob = pub.local.root / blob_relpath(body["result"]["ref"][len("sha256://"):])
    blob.chmod(0o644)
    blob.write_bytes(b"small" + b"\0" * 100_000)
    b = stack(tmp_path, "b", [Remote(url, trusted_keys=[str(keys["a"].public_key)])])
    # the first 5 bytes are right: only they are used, and they verify
    assert b.fetch(KEY) == body
    assert b.local.get_bytes(body["result"]["ref"]) == b"small"


def test_sidecar_json_is_canonical(tmp_path: Path, keys: dict, share_env: Path) -> None:
    a = stack(tmp_path, "a", [], signer=keys["a"])
    body = record_with_blob(a.local, b"q")
    a.put_record(KEY, body)
    raw = (a.local.root / sidecar_relpath(KEY, body_checksum(body))).read_bytes()
    doc = json.loads(raw)
    assert doc["claim"]["key"] == KEY and doc["signatures"][0]["key"] == "lab-a"
    trusted = TrustedKeys([keys["a"].public_key])
    from hither_store import Sidecar

    assert Sidecar.decode(raw).check(KEY, body_checksum(body), body,
                                     [body["result"]["ref"][9:]], trusted) is None


def test_code_bundles_travel_with_their_records(tmp_path: Path, bucket: str,
                                                keys: dict) -> None:
    import hashlib

    from hither_store.closure import code_files

    def digest_of(files: dict[str, str]) -> str:
        h = hashlib.sha256()
        for rel in sorted(files):
            h.update(rel.encode() + b"\0" + bytes.fromhex(files[rel]))
        return h.hexdigest()[:32]

    refs = RecordRefs(code=lambda r: [r["code"]] if "code" in r else [], code_digest=digest_of)
    a = StoreStack(LocalStore(tmp_path / "a"), [s3_remote(bucket)], refs=refs,
                   signer=keys["a"], lookup=LookupCache(tmp_path / "la"))
    files = {"m.py": b"def f():\n    return 41\n", "sub/h.py": b"Y = 1\n"}
    digest = digest_of({k: hashlib.sha256(v).hexdigest() for k, v in files.items()})
    for rel, data in files.items():
        p = a.local.root / "code" / digest / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    body = record_with_blob(a.local, b"with code", code=digest)
    a.put_record(KEY, body)
    assert a.push([KEY], a.remotes[0]).pushed == [KEY]
    b = StoreStack(LocalStore(tmp_path / "b"), [s3_remote(bucket, [keys["a"]])], refs=refs,
                   lookup=LookupCache(tmp_path / "lb"))
    assert b.fetch(KEY) == body
    assert code_files(b.local.root, digest) == code_files(a.local.root, digest)
    # a code file altered on the remote: the record is not used, the bundle not installed
    s3 = s3_client(a.remotes[0].backend.endpoint)  # type: ignore[attr-defined]
    s3.put_object(Bucket=bucket, Key=f"store/code/{digest}/m.py", Body=b"evil()\n")
    c = StoreStack(LocalStore(tmp_path / "c"), [s3_remote(bucket, [keys["a"]])], refs=refs,
                   lookup=LookupCache(tmp_path / "lc"))
    assert "missing or damaged" in fetch_one_warning(c, KEY)
    assert code_files(c.local.root, digest) is None and c.local.get_record(KEY) is None


def test_large_blobs_stream_both_ways(tmp_path: Path, bucket: str, keys: dict,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Blobs above the one-request sizes go up as a streamed upload and come down in
    ranged pieces, checked against their signed size and hash."""
    import hither_store.remote as remote_mod
    import hither_store.stack as stack_mod

    monkeypatch.setattr(remote_mod, "SMALL_UPLOAD", 1000)
    monkeypatch.setattr(remote_mod, "SMALL_OBJECT", 4096)
    monkeypatch.setattr(stack_mod, "SMALL_OBJECT", 4096)
    monkeypatch.setattr(stack_mod, "PREFETCH", 2048)
    payload = bytes(range(256)) * 100  # 25,600 bytes: 7 ranged reads of 4096
    a = stack(tmp_path, "a", [s3_remote(bucket)], signer=keys["a"])
    body = record_with_blob(a.local, payload)
    a.put_record(KEY, body)
    assert a.push([KEY], a.remotes[0]).blobs_uploaded == 1
    b = stack(tmp_path, "b", [s3_remote(bucket, [keys["a"]])])
    counting = Counting(b.remotes[0].backend)
    b.remotes[0]._backend = counting  # type: ignore[assignment]
    assert b.fetch(KEY) == body
    assert b.local.get_bytes(body["result"]["ref"]) == payload
    assert counting.calls == ["read", "read_many", "stream"]
