"""Closures and bundles: what a result needs, written as a tar, checked on the way in.

Hostile bundles first: each one is refused as a whole, and the store is left untouched.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path
from typing import Any

import pytest
from hither_store import LocalStore, SecretKey, TrustedKeys, compute_closure
from hither_store._paths import blob_relpath, record_relpath, sidecar_relpath
from hither_store._records import body_checksum, encode_record
from hither_store.bundle import BundleError, read_bundle, write_bundle
from hither_store.closure import RecordRefs, code_files


def _bundle_digest(files: dict[str, str]) -> str:
    h = hashlib.sha256()
    for rel in sorted(files):
        h.update(rel.encode() + b"\0" + bytes.fromhex(files[rel]))
    return h.hexdigest()[:32]


REFS = RecordRefs(upstream=lambda r: [r["up"]] if "up" in r else [],
                  code=lambda r: [r["code"]] if "code" in r else [],
                  code_digest=_bundle_digest)
ROOT, MID, LEAF = "root-00000001", "mid-000000001", "leaf-00000001"


@pytest.fixture
def signer() -> SecretKey:
    return SecretKey.generate("lab-a")


@pytest.fixture
def src(tmp_path: Path) -> LocalStore:
    st = LocalStore(tmp_path / "src")
    code = st.root / "code"
    files = {"mod.py": b"def f():\n    return 1\n", "pkg/util.py": b"X = 2\n"}
    digest = _bundle_digest({k: hashlib.sha256(v).hexdigest() for k, v in files.items()})
    for rel, data in files.items():
        (code / digest / rel).parent.mkdir(parents=True, exist_ok=True)
        (code / digest / rel).write_bytes(data)
    st.put_record(LEAF, {"result": {"ref": st.put_bytes(b"leaf" * 2000)}, "result_hash": "l"})
    st.put_record(MID, {"result": {"ref": st.put_bytes(b"mid" * 2000)}, "up": LEAF,
                        "code": digest, "result_hash": "m"})
    st.put_record(ROOT, {"result": {"ref": st.put_bytes(b"root" * 2000)}, "up": MID,
                         "inputs": {"x": st.put_bytes(b"input" * 3000)}, "result_hash": "r"})
    return st


def snapshot(st: LocalStore) -> list[str]:
    return sorted(str(p.relative_to(st.root)) for p in st.root.rglob("*")
                  if p.is_file() and "tmp" not in p.parts)


# ---------------------------------------------------------------------------- closure
def test_closure_follows_lineage(src: LocalStore) -> None:
    c = compute_closure(src, [ROOT], REFS)
    assert list(c.records) == [LEAF, MID, ROOT]  # lineage first
    assert len(c.blobs) == 4 and len(c.code) == 1
    assert not c.missing_records and not c.missing_blobs
    assert list(compute_closure(src, [ROOT], REFS, lineage=False).records) == [ROOT]
    with pytest.raises(KeyError):
        compute_closure(src, ["nope-00000000"], REFS)


def test_closure_reports_what_is_missing(src: LocalStore) -> None:
    src.delete_record(LEAF)
    body = src.get_record(MID)
    src.delete_blob(body["result"]["ref"])
    c = compute_closure(src, [ROOT], REFS)
    assert c.missing_records == [LEAF]
    assert c.missing_blobs == {MID: [body["result"]["ref"][9:]]}
    assert c.complete(ROOT) and not c.complete(MID)


# ---------------------------------------------------------------------------- round trip
def test_bundle_round_trip(tmp_path: Path, src: LocalStore, signer: SecretKey) -> None:
    info = write_bundle(src, compute_closure(src, [ROOT], REFS), [ROOT], tmp_path / "b.tar",
                        signer=signer, refs=REFS)
    assert info.sha256 == hashlib.sha256((tmp_path / "b.tar").read_bytes()).hexdigest()
    dst = LocalStore(tmp_path / "dst")
    rep = read_bundle(dst, tmp_path / "b.tar", trusted=TrustedKeys([signer.public_key]),
                      refs=REFS)
    assert sorted(rep.records) == sorted([ROOT, MID, LEAF]) and rep.blobs == 4
    for k in (ROOT, MID, LEAF):
        assert dst.get_record(k) == src.get_record(k)
        assert (dst.root / sidecar_relpath(k, body_checksum(dst.get_record(k)))).is_file()
    digest = src.get_record(MID)["code"]
    assert code_files(dst.root, digest) == code_files(src.root, digest)
    assert list(dst.tmp_dir.iterdir()) == []


def test_incomplete_root_cannot_be_bundled(tmp_path: Path, src: LocalStore) -> None:
    src.delete_blob(src.get_record(ROOT)["result"]["ref"])
    with pytest.raises(BundleError, match="not complete"):
        write_bundle(src, compute_closure(src, [ROOT], REFS), [ROOT], tmp_path / "b.tar")


# ---------------------------------------------------------------------------- hostile
def make_tar(path: Path, members: list[tuple[str, bytes]], manifest: dict[str, Any] | None = None,
             *, extra: list[tarfile.TarInfo] = (), manifest_first: bool = True) -> Path:  # type: ignore[assignment]
    if manifest is None:
        manifest = {"format": 1, "type": "hither-bundle", "roots": [ROOT],
                    "files": {n: {"sha256": hashlib.sha256(d).hexdigest(), "size": len(d)}
                              for n, d in members}}
    raw = json.dumps(manifest).encode()
    entries = [("hither-bundle.json", raw)] + members if manifest_first else \
        members + [("hither-bundle.json", raw)]
    with tarfile.open(path, "w") as tar:
        for name, data in entries:
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tar.addfile(ti, io.BytesIO(data))
        for ti in extra:
            tar.addfile(ti)
    return path


def genuine_members(st: LocalStore, signer: SecretKey | None = None,
                    payload: bytes = b"value" * 1000) -> list[tuple[str, bytes]]:
    uri = st.put_bytes(payload)
    body = {"result": {"ref": uri}, "result_hash": "h"}
    out = [(blob_relpath(uri[9:]), payload), (record_relpath(ROOT), encode_record(ROOT, body))]
    if signer is not None:
        from hither_store import Sidecar
        from hither_store.signing import make_claim

        sc = Sidecar(make_claim(ROOT, body, {uri[9:]: len(payload)}))
        sc.sign(signer)
        out.insert(1, (sidecar_relpath(ROOT, body_checksum(body)), sc.encode()))
    st.delete_blob(uri)
    return out


def refused(dst: LocalStore, path: Path, match: str, trusted: TrustedKeys | None = None,
            require_signature: bool = True) -> None:
    before = snapshot(dst)
    with pytest.raises(BundleError, match=match):
        read_bundle(dst, path, trusted=trusted, require_signature=require_signature)
    assert snapshot(dst) == before
    assert list(dst.tmp_dir.iterdir()) == []


def test_genuine_handmade_bundle_is_accepted(tmp_path: Path, signer: SecretKey) -> None:
    dst = LocalStore(tmp_path / "dst")
    path = make_tar(tmp_path / "ok.tar", genuine_members(dst, signer))
    rep = read_bundle(dst, path, trusted=TrustedKeys([signer.public_key]))
    assert rep.records == [ROOT]


@pytest.mark.parametrize("attack", [
    "not in manifest", "duplicate", "wrong size", "wrong sha", "missing member",
    "manifest not first", "blob under another name", "traversal", "absolute",
    "damaged record", "symlink", "directory", "root absent",
])
def test_hostile_bundles_are_refused(tmp_path: Path, signer: SecretKey, attack: str) -> None:
    dst = LocalStore(tmp_path / "dst")
    members = genuine_members(dst, signer)
    trusted = TrustedKeys([signer.public_key])
    path = tmp_path / "bad.tar"
    manifest = None
    extra: list[tarfile.TarInfo] = []
    first = True
    match = ""
    if attack == "not in manifest":
        manifest = _manifest(members)
        members = members + [(blob_relpath("0" * 64), b"")]
        match = "not in the manifest"
    elif attack == "duplicate":
        manifest = _manifest(members)
        members = members + [members[0]]
        match = "appears twice"
    elif attack == "wrong size":
        manifest = _manifest(members)
        manifest["files"][members[0][0]]["size"] += 1
        match = "manifest says"
    elif attack == "wrong sha":
        manifest = _manifest(members)
        members = [(members[0][0], b"X" + members[0][1][1:])] + members[1:]
        match = "does not match its sha256"
    elif attack == "missing member":
        manifest = _manifest(members)
        members = members[1:]
        match = "missing from the bundle"
    elif attack == "manifest not first":
        first = False
        match = "first member"
    elif attack == "blob under another name":
        data = b"other content"
        name = blob_relpath(hashlib.sha256(b"something else").hexdigest())
        members = members + [(name, data)]
        match = "does not hash to its name"
    elif attack in ("traversal", "absolute"):
        name = "../escape.txt" if attack == "traversal" else "/tmp/escape.txt"
        members = members + [(name, b"x")]
        match = "unexpected file"
    elif attack == "damaged record":
        members = [(n, d.replace(b'"h"', b'"H"') if n.endswith(".json") else d)
                   for n, d in members]
        match = "damaged"
    elif attack == "symlink":
        manifest = _manifest(members)
        ti = tarfile.TarInfo(members[0][0])
        ti.type = tarfile.SYMTYPE
        ti.linkname = "/etc/passwd"
        extra = [ti]
        members = members[1:]
        match = "not a regular file"
    elif attack == "directory":
        ti = tarfile.TarInfo("records")
        ti.type = tarfile.DIRTYPE
        extra = [ti]
        match = "not a regular file"
    elif attack == "root absent":
        members = [m for m in members if not m[0].startswith("records/")]
        match = "lacks the record of its root"
    make_tar(path, members, manifest, extra=extra, manifest_first=first)
    refused(dst, path, match, trusted)


def _manifest(members: list[tuple[str, bytes]]) -> dict[str, Any]:
    return {"format": 1, "type": "hither-bundle", "roots": [ROOT],
            "files": {n: {"sha256": hashlib.sha256(d).hexdigest(), "size": len(d)}
                      for n, d in members}}


def test_signature_rules(tmp_path: Path, signer: SecretKey) -> None:
    dst = LocalStore(tmp_path / "dst")
    unsigned = make_tar(tmp_path / "u.tar", genuine_members(dst))
    refused(dst, unsigned, "not signed", TrustedKeys([signer.public_key]))
    signed = make_tar(tmp_path / "s.tar", genuine_members(dst, signer))
    refused(dst, signed, "trusted", TrustedKeys([SecretKey.generate("lab-a").public_key]))
    refused(dst, signed, "no trusted keys", TrustedKeys())
    # explicitly not requiring signatures imports the unsigned bundle
    assert read_bundle(dst, unsigned, require_signature=False).records == [ROOT]


def test_record_without_its_blob(tmp_path: Path, signer: SecretKey) -> None:
    dst = LocalStore(tmp_path / "dst")
    members = [m for m in genuine_members(dst, signer) if not m[0].startswith("blobs/")]
    refused(dst, make_tar(tmp_path / "b.tar", members), "neither in the bundle nor",
            TrustedKeys([signer.public_key]))


def test_tampered_code_bundle(tmp_path: Path, src: LocalStore, signer: SecretKey) -> None:
    digest = src.get_record(MID)["code"]
    (src.root / "code" / digest / "mod.py").write_bytes(b"import os; os.system('evil')\n")
    write_bundle(src, compute_closure(src, [ROOT], REFS), [ROOT], tmp_path / "b.tar",
                 signer=signer, refs=REFS)
    dst = LocalStore(tmp_path / "dst")
    with pytest.raises(BundleError, match="make bundle"):
        read_bundle(dst, tmp_path / "b.tar", trusted=TrustedKeys([signer.public_key]),
                    refs=REFS)
    assert snapshot(dst) == [] and list(dst.tmp_dir.iterdir()) == []


def test_truncated_bundle(tmp_path: Path, src: LocalStore, signer: SecretKey) -> None:
    write_bundle(src, compute_closure(src, [ROOT], REFS), [ROOT], tmp_path / "b.tar",
                 signer=signer, refs=REFS)
    raw = (tmp_path / "b.tar").read_bytes()
    (tmp_path / "t.tar").write_bytes(raw[: len(raw) // 2])
    dst = LocalStore(tmp_path / "dst")
    refused(dst, tmp_path / "t.tar", "not a readable bundle|missing from the bundle",
            TrustedKeys([signer.public_key]))
