"""Keys in Nix style, claims, and signature sidecars."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import pytest
from hither_store import PublicKey, SecretKey, Sidecar, TrustedKeys
from hither_store.signing import claim_message, make_claim

KEY = "rec-0123456789abcdef"
HEX = "ab" * 32


def test_key_text_round_trip(tmp_path: Path) -> None:
    k = SecretKey.generate("lab-a.example.org-1")
    path = tmp_path / "k.secret"
    k.write(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    text = path.read_text()
    name, _, b64 = text.strip().partition(":")
    assert name == "lab-a.example.org-1" and len(base64.b64decode(b64)) == 64
    again = SecretKey.load(path)
    assert str(again.public_key) == str(k.public_key)
    pub = PublicKey.parse(str(k.public_key))
    assert pub == k.public_key and len(pub.raw) == 32
    with pytest.raises(FileExistsError):
        k.write(path)  # never overwrites a key


@pytest.mark.parametrize("text", [
    "nocolon", "bad name:AAAA", ":AAAA", "n:!!!notbase64", "n:" + base64.b64encode(b"x" * 31).decode(),
])
def test_malformed_public_keys(text: str) -> None:
    with pytest.raises(ValueError):
        PublicKey.parse(text)


def test_secret_key_with_wrong_public_half(tmp_path: Path) -> None:
    k, other = SecretKey.generate("a"), SecretKey.generate("a")
    k.write(tmp_path / "k")
    seed = base64.b64decode((tmp_path / "k").read_text().split(":")[1])[:32]
    forged = "a:" + base64.b64encode(seed + other.public_key.raw).decode()
    with pytest.raises(ValueError, match="damaged"):
        SecretKey.parse(forged)


def test_trusted_keys_parse_and_verify() -> None:
    a, b = SecretKey.generate("a"), SecretKey.generate("b")
    trusted = TrustedKeys.parse(f" {a.public_key} , {b.public_key},")
    assert trusted.names() == ["a", "b"] and len(trusted) == 2
    msg = b"hello"
    assert trusted.verify("a", msg, a.sign(msg))
    assert not trusted.verify("b", msg, a.sign(msg))  # a's signature under b's name
    impostor = SecretKey.generate("a")  # same name, other key
    assert not trusted.verify("a", msg, impostor.sign(msg))
    assert not TrustedKeys().verify("a", msg, a.sign(msg))


def _sidecar(signer: SecretKey, body: dict, blobs: dict[str, int]) -> Sidecar:
    sc = Sidecar(make_claim(KEY, body, blobs))
    sc.sign(signer)
    return sc


def test_sidecar_round_trip_and_check() -> None:
    a = SecretKey.generate("a")
    body = {"result_hash": "r1", "result": {"~": "bytes", "ref": "sha256://" + HEX}}
    sc = Sidecar.decode(_sidecar(a, body, {HEX: 10}).encode())
    checksum = sc.claim["record_sha256"]
    trusted = TrustedKeys([a.public_key])
    assert sc.check(KEY, checksum, body, [HEX], trusted) is None
    assert "another version" in sc.check(KEY, "0" * 64, body, [HEX], trusted)
    assert "result hash" in sc.check(KEY, checksum, {**body, "result_hash": "r2"}, [HEX], trusted)
    assert "does not cover" in sc.check(KEY, checksum, body, [HEX, "cd" * 32], trusted)
    assert "for record" in sc.check("other-key-0000", checksum, body, [HEX], trusted)
    assert "trusted" in sc.check(KEY, checksum, body, [HEX], TrustedKeys(
        [SecretKey.generate("a").public_key]))
    assert "no trusted keys" in sc.check(KEY, checksum, body, [HEX], TrustedKeys())


def test_tampered_claim_fails_verification() -> None:
    a = SecretKey.generate("a")
    body = {"result_hash": "r1"}
    sc = _sidecar(a, body, {HEX: 10})
    sc.claim["blobs"][HEX] = 11  # a bigger blob than was signed
    assert sc.check(KEY, sc.claim["record_sha256"], body, [HEX],
                    TrustedKeys([a.public_key])) is not None


def test_multiple_signatures() -> None:
    a, b = SecretKey.generate("a"), SecretKey.generate("b")
    sc = _sidecar(a, {}, {})
    sc.sign(b)
    sc.sign(b)  # re-signing replaces, does not pile up
    assert len(sc.signatures) == 2
    assert sc.signed_by(a.public_key) and sc.signed_by(b.public_key)
    assert sc.check(KEY, sc.claim["record_sha256"], {}, [], TrustedKeys([b.public_key])) is None
    msg = claim_message(sc.claim)
    assert msg.startswith(b"hither-record-claim-v1\n")


@pytest.mark.parametrize("raw", [
    b"", b"not json", b"[]", b'{"format": 2}', b'{"format": 1, "claim": {}, "signatures": []}',
    b'{"format": 1, "claim": {"key": "../../etc", "record_sha256": "' + b"0" * 64
    + b'", "blobs": {}}, "signatures": []}',
    b'{"format": 1, "claim": {"key": "abcdefgh", "record_sha256": "' + b"0" * 64
    + b'", "blobs": {"xyz": 1}}, "signatures": []}',
    b'{"format": 1, "claim": {"key": "abcdefgh", "record_sha256": "' + b"0" * 64
    + b'", "blobs": {}}, "signatures": [{"key": "a", "sig": "%%%"}]}',
])
def test_malformed_sidecars_are_refused(raw: bytes) -> None:
    with pytest.raises(ValueError):
        Sidecar.decode(raw)
