"""Publishing closures with kachery-cloud: its local mode, and the real client driven
against a fake of the gateway protocol on 127.0.0.1 (tests/kachery_gateway.py): tampered
bytes, 404s and pending uploads never import anything."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest
from hither_store import LocalStore, SecretKey, TrustedKeys
from hither_store.bundle import BundleError
from hither_store.closure import RecordRefs
from hither_store.kachery import KacheryError, fetch, parse_uri, publish

from tests.kachery_gateway import client_keys, fake_gateway

ROOT = "root-0123456789"
UP = "upst-0123456789"
REFS = RecordRefs(upstream=lambda r: [r["upstream"]] if "upstream" in r else [])


@pytest.fixture
def signer() -> SecretKey:
    return SecretKey.generate("lab-a")


@pytest.fixture
def published_store(tmp_path: Path, signer: SecretKey) -> LocalStore:
    st = LocalStore(tmp_path / "a")
    up = st.put_bytes(b"upstream " * 1000)
    st.put_record(UP, {"result": {"ref": up}, "result_hash": "u"})
    res = st.put_bytes(b"result " * 1000)
    st.put_record(ROOT, {"result": {"ref": res}, "result_hash": "r", "upstream": UP})
    return st


def _kdir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, name: str) -> Path:
    d = tmp_path / name
    monkeypatch.setenv("KACHERY_CLOUD_DIR", str(d))
    return d


def _sha1_file(kdir: Path, sha1: str) -> Path:
    return kdir / "sha1" / sha1[:2] / sha1[2:4] / sha1[4:6] / sha1


def test_local_mode_round_trip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                               published_store: LocalStore, signer: SecretKey) -> None:
    kdir = _kdir(monkeypatch, tmp_path, "kc")
    uri = publish(published_store, [ROOT], refs=REFS, signer=signer, local=True)
    assert uri.startswith("sha1://") and len(parse_uri(uri)) == 40
    b = LocalStore(tmp_path / "b")
    report = fetch(uri, b, trusted=TrustedKeys([signer.public_key]), local_only=True,
                   refs=REFS)
    assert report.roots == [ROOT] and sorted(report.records) == [ROOT, UP]
    assert report.blobs == 2
    assert b.get_record(ROOT) == published_store.get_record(ROOT)
    # tamper with the bundle kachery keeps in its folder: refused, and the bad copy dropped
    for path in (kdir / "sha1").rglob("*"):
        if path.is_file() and path.stat().st_size > 2000:
            bundle = path
    bundle.write_bytes(bundle.read_bytes()[:-1] + b"\1")
    c = LocalStore(tmp_path / "c")
    with pytest.raises(KacheryError, match="do not match its sha1"):
        fetch(uri, c, trusted=TrustedKeys([signer.public_key]), local_only=True)
    assert not bundle.exists() and c.get_record(ROOT) is None


def test_local_mode_untrusted_signer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     published_store: LocalStore, signer: SecretKey) -> None:
    _kdir(monkeypatch, tmp_path, "kc")
    uri = publish(published_store, [ROOT], refs=REFS, signer=signer, local=True)
    b = LocalStore(tmp_path / "b")
    with pytest.raises(BundleError, match="trusted"):
        fetch(uri, b, trusted=TrustedKeys([SecretKey.generate("lab-a").public_key]),
              local_only=True)
    assert b.get_record(ROOT) is None and b.get_record(UP) is None


def test_kachery_folder_is_hithers_unless_set(tmp_path: Path, published_store: LocalStore,
                                              signer: SecretKey) -> None:
    """Without $KACHERY_CLOUD_DIR, kachery-cloud keeps its files in hither's cache folder
    (never in the user's ~/.kachery-cloud); a folder the user set is used as it is."""
    import os
    import subprocess
    import sys

    script = (
        "import sys\n"
        "from hither_store import LocalStore, SecretKey\n"
        "from hither_store.kachery import publish\n"
        "st = LocalStore(sys.argv[1])\n"
        "print(publish(st, [sys.argv[2]], signer=SecretKey.generate('x'), local=True))\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("KACHERY_")}
    env.update(HOME=str(tmp_path / "home"), XDG_CACHE_HOME=str(tmp_path / "cache"))
    for user_dir in (None, tmp_path / "mine"):
        if user_dir is not None:
            env["KACHERY_CLOUD_DIR"] = str(user_dir)
        r = subprocess.run([sys.executable, "-c", script, str(published_store.root), ROOT],
                           env=env, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        sha1 = parse_uri(r.stdout.strip().splitlines()[-1])
        where = user_dir or tmp_path / "cache" / "hither" / "kachery-cloud"
        assert _sha1_file(where, sha1).is_file()
    assert not (tmp_path / "home" / ".kachery-cloud").exists()


def test_not_a_publication(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _kdir(monkeypatch, tmp_path, "kc")
    import kachery_cloud as kcl

    uri = kcl.store_text("just text", local=True)
    with pytest.raises(KacheryError, match="not JSON|not a hither publication"):
        fetch(uri, LocalStore(tmp_path / "b"), local_only=True)
    with pytest.raises(ValueError):
        fetch("sha1://nothex", LocalStore(tmp_path / "b"))


@pytest.fixture
def gateway(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    pub, priv = client_keys()
    with fake_gateway() as gw:
        gw.clients.add(pub)
        monkeypatch.setenv("KACHERY_GATEWAY_URL", gw.base)
        monkeypatch.setenv("KACHERY_CLOUD_CLIENT_ID", pub)
        monkeypatch.setenv("KACHERY_CLOUD_PRIVATE_KEY", priv)
        yield gw


def _publish(gw, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, st: LocalStore,
             signer: SecretKey) -> tuple[str, str]:
    _kdir(monkeypatch, tmp_path, "kc-publisher")
    uri = publish(st, [ROOT], refs=REFS, signer=signer)
    manifest = gw.files[parse_uri(uri)]
    import json

    return uri, json.loads(manifest)["bundle"]["sha1"]


def _reader(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[LocalStore, Path]:
    kdir = _kdir(monkeypatch, tmp_path, f"kc-reader-{secrets.token_hex(3)}")
    return LocalStore(tmp_path / f"b-{secrets.token_hex(3)}"), kdir


def test_gateway_round_trip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, gateway,
                            published_store: LocalStore, signer: SecretKey) -> None:
    uri, bundle_sha1 = _publish(gateway, tmp_path, monkeypatch, published_store, signer)
    assert gateway.requests.count("initiateFileUpload") == 2
    assert gateway.requests.count("finalizeFileUpload") == 2
    assert not any((tmp_path / "kc-publisher").rglob("sha1/*/*/*/*"))  # never cached locally
    b, _ = _reader(tmp_path, monkeypatch)
    report = fetch(uri, b, trusted=TrustedKeys([signer.public_key]), refs=REFS)
    assert sorted(report.records) == sorted([ROOT, UP])
    assert b.get_record(ROOT) == published_store.get_record(ROOT)
    # publishing again uploads nothing new
    n = len(gateway.files)
    _kdir(monkeypatch, tmp_path, "kc-publisher")
    assert publish(published_store, [ROOT], refs=REFS, signer=signer) == uri
    assert len(gateway.files) == n


def test_gateway_tampered_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, gateway,
                                published_store: LocalStore, signer: SecretKey) -> None:
    uri, bundle_sha1 = _publish(gateway, tmp_path, monkeypatch, published_store, signer)
    trusted = TrustedKeys([signer.public_key])
    for victim in (parse_uri(uri), bundle_sha1):
        gateway.tamper = {victim}
        b, kdir = _reader(tmp_path, monkeypatch)
        with pytest.raises(KacheryError, match="do not match its sha1"):
            fetch(uri, b, trusted=trusted)
        assert b.get_record(ROOT) is None and b.get_record(UP) is None
        assert not _sha1_file(kdir, victim).exists()  # kachery's bad copy was dropped
        # the server behaves again: the same reader now succeeds (nothing stale kept)
        gateway.tamper = set()
        assert fetch(uri, b, trusted=trusted).roots == [ROOT]


def test_gateway_404_and_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, gateway,
                                 published_store: LocalStore, signer: SecretKey) -> None:
    uri, bundle_sha1 = _publish(gateway, tmp_path, monkeypatch, published_store, signer)
    gateway.url_404.add(bundle_sha1)
    b, _ = _reader(tmp_path, monkeypatch)
    with pytest.raises(KacheryError, match="download failed"):
        fetch(uri, b, trusted=TrustedKeys([signer.public_key]))
    with pytest.raises(KacheryError, match="not found"):
        fetch("sha1://" + "0" * 40, b)
    assert b.get_record(ROOT) is None


def test_gateway_pending_uploads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, gateway,
                                 published_store: LocalStore, signer: SecretKey) -> None:
    uri, bundle_sha1 = _publish(gateway, tmp_path, monkeypatch, published_store, signer)
    # a reader while the bundle's upload is still in progress: not found, nothing imported
    data = gateway.files.pop(bundle_sha1)
    gateway.pending.add(bundle_sha1)
    b, _ = _reader(tmp_path, monkeypatch)
    with pytest.raises(KacheryError, match="pending"):
        fetch(uri, b, trusted=TrustedKeys([signer.public_key]))
    assert b.get_record(ROOT) is None
    gateway.files[bundle_sha1] = data
    gateway.pending.clear()
    # a writer told once that another upload of the same file is pending waits and retries
    new = LocalStore(tmp_path / "n")
    ref = new.put_bytes(b"fresh " * 2000)
    new.put_record(ROOT, {"result": {"ref": ref}})
    from hither_store.bundle import write_bundle
    from hither_store.closure import compute_closure

    info = write_bundle(new, compute_closure(new, [ROOT]), [ROOT], tmp_path / "probe.tar",
                        signer=signer)
    gateway.pending_once.add(info.sha1)
    _kdir(monkeypatch, tmp_path, "kc-publisher")
    uri2 = publish(new, [ROOT], signer=signer)
    assert info.sha1 in gateway.files and gateway.requests.count("initiateFileUpload") >= 5
    assert fetch(uri2, LocalStore(tmp_path / "m"), trusted=TrustedKeys([signer.public_key]))


def test_gateway_refuses_unknown_clients(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         gateway, published_store: LocalStore,
                                         signer: SecretKey) -> None:
    pub, priv = client_keys()  # not registered with the gateway
    monkeypatch.setenv("KACHERY_CLOUD_CLIENT_ID", pub)
    monkeypatch.setenv("KACHERY_CLOUD_PRIVATE_KEY", priv)
    _kdir(monkeypatch, tmp_path, "kc")
    with pytest.raises(KacheryError, match="403"):
        publish(published_store, [ROOT], refs=REFS, signer=signer)
    monkeypatch.delenv("KACHERY_CLOUD_CLIENT_ID")
    monkeypatch.delenv("KACHERY_CLOUD_PRIVATE_KEY")
    with pytest.raises(KacheryError, match="kachery-cloud-init"):
        publish(published_store, [ROOT], refs=REFS, signer=signer)
