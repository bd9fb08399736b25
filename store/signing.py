"""Ed25519 keys in Nix style and the signed sidecars of records.

Keys are written ``name:base64``: a public key holds the 32 raw key bytes, a secret key the
32-byte seed followed by the public key (64 bytes). The name says who signed; a reader
trusts a signature only when a key of that name *and* those bytes is in its trusted set.

A record is vouched for by a *claim*::

    {"key": <record key>, "record_sha256": <checksum of the record body>,
     "result_hash": <the body's result_hash or null>,
     "blobs": {<hex>: <size in bytes>, ...}}      every blob the record references

and a sidecar file ``records/<k0k1>/<key>.<record_sha256>.sig`` beside the record holds the
claim and one or more signatures of it. The claim pins the whole body through its checksum,
and the blobs by their hashes and sizes, so a verified record can only lead to verified bytes.
The record file itself is unchanged: a store reader that ignores signatures (the local hit
path) never opens a sidecar.

``cryptography`` is imported only when a key is used (extra ``hither[share]``).
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._paths import is_hexdigest, is_key
from ._records import body_checksum, canonical_json

__all__ = [
    "ENV_SIGNING_KEY",
    "ENV_TRUSTED_KEYS",
    "PublicKey",
    "SecretKey",
    "Sidecar",
    "TrustedKeys",
    "make_claim",
]

ENV_SIGNING_KEY = "HITHER_SIGNING_KEY"
ENV_TRUSTED_KEYS = "HITHER_TRUSTED_KEYS"

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")
_DOMAIN = b"hither-record-claim-v1\n"
SIDECAR_FORMAT = 1
MAX_SIDECAR_BYTES = 16 << 20
_MAX_SIGNATURES = 64


def _ed25519() -> Any:
    try:
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError as e:
        raise ImportError(
            "signing and verifying records needs the cryptography package: "
            "pip install 'hither[share]'") from e
    return ed25519


def check_key_name(name: str) -> str:
    """Return ``name`` if it can name a key (1-128 of ``[A-Za-z0-9._+-]``), else raise
    ValueError."""
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise ValueError(f"invalid key name {name!r}: use 1 to 128 characters from "
                         "[A-Za-z0-9._+-], starting with a letter or digit")
    return name


def _split(text: str, size: int, what: str) -> tuple[str, bytes]:
    text = text.strip()
    name, sep, b64 = text.partition(":")
    if not sep:
        raise ValueError(f"a {what} is written NAME:BASE64, got {text[:40]!r}")
    check_key_name(name)
    try:
        raw = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"the {what} {name!r} is not valid base64") from None
    if len(raw) != size:
        raise ValueError(f"the {what} {name!r} has {len(raw)} bytes, expected {size}")
    return name, raw


@dataclass(frozen=True)
class PublicKey:
    """A named Ed25519 public key, ``name:base64`` (32 bytes)."""

    name: str
    raw: bytes

    @classmethod
    def parse(cls, text: str) -> PublicKey:
        """Parse ``name:base64``; raise ValueError when malformed."""
        return cls(*_split(text, 32, "public key"))

    def verify(self, message: bytes, signature: bytes) -> bool:
        """Whether ``signature`` is this key's signature of ``message``."""
        ed = _ed25519()
        from cryptography.exceptions import InvalidSignature

        try:
            ed.Ed25519PublicKey.from_public_bytes(self.raw).verify(signature, message)
        except (InvalidSignature, ValueError):
            return False
        return True

    def __str__(self) -> str:
        return f"{self.name}:{base64.b64encode(self.raw).decode('ascii')}"


class SecretKey:
    """A named Ed25519 secret key, written ``name:base64(seed + public key)``."""

    def __init__(self, name: str, seed: bytes) -> None:
        self.name = check_key_name(name)
        if len(seed) != 32:
            raise ValueError("an Ed25519 seed has 32 bytes")
        self._private = _ed25519().Ed25519PrivateKey.from_private_bytes(seed)
        self._seed = seed
        from cryptography.hazmat.primitives import serialization

        self.public_key = PublicKey(self.name, self._private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw))

    @classmethod
    def generate(cls, name: str) -> SecretKey:
        """A new random key."""
        check_key_name(name)
        return cls(name, os.urandom(32))

    @classmethod
    def parse(cls, text: str) -> SecretKey:
        """Parse ``name:base64`` (64 bytes); the embedded public key must match."""
        name, raw = _split(text, 64, "secret key")
        key = cls(name, raw[:32])
        if key.public_key.raw != raw[32:]:
            raise ValueError(f"the secret key {name!r} is damaged: its public half does "
                             "not match its seed")
        return key

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> SecretKey:
        """Read a secret key file (as written by :meth:`write`)."""
        try:
            text = Path(path).read_text("ascii")
        except UnicodeDecodeError:
            raise ValueError(f"{path} is not a secret key file") from None
        try:
            return cls.parse(text)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None

    def write(self, path: str | os.PathLike[str]) -> None:
        """Create ``path`` (mode 0600, never overwriting) holding this key."""
        text = f"{self.name}:{base64.b64encode(self._seed + self.public_key.raw).decode()}\n"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(text)

    def sign(self, message: bytes) -> bytes:
        """The 64-byte signature of ``message``."""
        return bytes(self._private.sign(message))

    def __repr__(self) -> str:
        return f"SecretKey(name={self.name!r}, public={str(self.public_key)!r})"


class TrustedKeys:
    """The public keys whose signatures are believed."""

    def __init__(self, keys: Iterable[PublicKey | str] = ()) -> None:
        self._keys: dict[str, set[bytes]] = {}
        for k in keys:
            self.add(k if isinstance(k, PublicKey) else PublicKey.parse(k))

    @classmethod
    def parse(cls, spec: str | Iterable[str] | None) -> TrustedKeys:
        """From ``"name:b64,name2:b64"`` or a list of such strings (None: none)."""
        if spec is None:
            return cls()
        items = spec.split(",") if isinstance(spec, str) else list(spec)
        return cls(s.strip() for s in items if s and s.strip())

    @classmethod
    def from_env(cls) -> TrustedKeys:
        """The keys listed in ``$HITHER_TRUSTED_KEYS`` (comma-separated)."""
        try:
            return cls.parse(os.environ.get(ENV_TRUSTED_KEYS))
        except ValueError as e:
            raise ValueError(f"${ENV_TRUSTED_KEYS}: {e}") from None

    def add(self, key: PublicKey) -> None:
        """Trust ``key``."""
        self._keys.setdefault(key.name, set()).add(key.raw)

    def union(self, other: TrustedKeys) -> TrustedKeys:
        """A new set holding the keys of both."""
        out = TrustedKeys()
        for src in (self, other):
            for name, raws in src._keys.items():
                out._keys.setdefault(name, set()).update(raws)
        return out

    def names(self) -> list[str]:
        """The names of the trusted keys."""
        return sorted(self._keys)

    def __len__(self) -> int:
        return sum(len(v) for v in self._keys.values())

    def __bool__(self) -> bool:
        return bool(self._keys)

    def verify(self, name: str, message: bytes, signature: bytes) -> bool:
        """Whether a trusted key called ``name`` made ``signature`` of ``message``."""
        for raw in self._keys.get(name, ()):
            if PublicKey(name, raw).verify(message, signature):
                return True
        return False

    def __repr__(self) -> str:
        return f"TrustedKeys({self.names()!r})"


# ---------------------------------------------------------------------------- claims
def make_claim(key: str, body: Mapping[str, Any], blob_sizes: Mapping[str, int],
               checksum: str | None = None) -> dict[str, Any]:
    """The claim a signature over record ``key`` covers (see the module docstring)."""
    result_hash = body.get("result_hash")
    return {
        "key": key,
        "record_sha256": checksum or body_checksum(dict(body)),
        "result_hash": result_hash if isinstance(result_hash, str) else None,
        "blobs": {h: int(blob_sizes[h]) for h in sorted(blob_sizes)},
    }


def claim_message(claim: Mapping[str, Any]) -> bytes:
    """The bytes that are signed: a domain tag, then the canonical JSON of the claim."""
    return _DOMAIN + canonical_json(dict(claim)).encode("utf-8")


@dataclass
class Sidecar:
    """A claim about one version of a record, and the signatures over it."""

    claim: dict[str, Any]
    signatures: list[tuple[str, bytes]] = field(default_factory=list)

    def sign(self, key: SecretKey) -> None:
        """Add ``key``'s signature (replacing an older one of the same key)."""
        sig = key.sign(claim_message(self.claim))
        pub = key.public_key
        self.signatures = [(n, s) for n, s in self.signatures
                           if not (n == pub.name and pub.verify(claim_message(self.claim), s))]
        self.signatures.append((key.name, sig))

    def signed_by(self, key: PublicKey) -> bool:
        """Whether a valid signature of ``key`` is present."""
        msg = claim_message(self.claim)
        return any(n == key.name and key.verify(msg, s) for n, s in self.signatures)

    def encode(self) -> bytes:
        """The bytes of the sidecar file."""
        doc = {"format": SIDECAR_FORMAT, "claim": self.claim,
               "signatures": [{"key": n, "sig": base64.b64encode(s).decode("ascii")}
                              for n, s in self.signatures]}
        return (canonical_json(doc) + "\n").encode("utf-8")

    @classmethod
    def decode(cls, raw: bytes) -> Sidecar:
        """Parse and validate the shape of a sidecar file; raise ValueError."""
        if len(raw) > MAX_SIDECAR_BYTES:
            raise ValueError(f"signature file too large ({len(raw)} bytes)")
        try:
            doc = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
            raise ValueError(f"signature file is not JSON: {e}") from None
        if not isinstance(doc, dict) or doc.get("format") != SIDECAR_FORMAT:
            raise ValueError("signature file of an unknown format")
        claim, sigs = doc.get("claim"), doc.get("signatures")
        if not isinstance(claim, dict) or not isinstance(sigs, list) \
                or len(sigs) > _MAX_SIGNATURES:
            raise ValueError("signature file without a claim or a list of signatures")
        _check_claim_shape(claim)
        out: list[tuple[str, bytes]] = []
        for s in sigs:
            if not isinstance(s, dict) or not isinstance(s.get("key"), str) \
                    or not isinstance(s.get("sig"), str):
                raise ValueError("malformed signature entry")
            try:
                out.append((s["key"], base64.b64decode(s["sig"], validate=True)))
            except (binascii.Error, ValueError):
                raise ValueError("a signature is not valid base64") from None
        return cls(claim, out)

    def check(self, key: str, checksum: str, body: Mapping[str, Any],
              blob_hexes: Iterable[str], trusted: TrustedKeys) -> str | None:
        """Why this sidecar does not vouch for record ``key`` with body checksum
        ``checksum`` referencing ``blob_hexes``; None when a trusted key signed it."""
        c = self.claim
        if c.get("key") != key:
            return f"the signature is for record {str(c.get('key'))[:16]!r}"
        if c.get("record_sha256") != checksum:
            return "the signature is for another version of the record"
        rh = body.get("result_hash")
        if c.get("result_hash") != (rh if isinstance(rh, str) else None):
            return "the signed result hash differs from the record's"
        missing = [h for h in blob_hexes if h not in c["blobs"]]
        if missing:
            return f"the record references {len(missing)} blob(s) the signature does not cover"
        if not self.signatures:
            return "the record is not signed"
        if not trusted:
            return "no trusted keys are configured ($HITHER_TRUSTED_KEYS)"
        msg = claim_message(c)
        for name, sig in self.signatures:
            if trusted.verify(name, msg, sig):
                return None
        names = ", ".join(sorted({n for n, _ in self.signatures}))
        return f"no valid signature by a trusted key (signed by: {names})"


def _check_claim_shape(claim: dict[str, Any]) -> None:
    key, checksum = claim.get("key"), claim.get("record_sha256")
    if not isinstance(key, str) or not is_key(key):
        raise ValueError("the claim names no valid record key")
    if not isinstance(checksum, str) or not is_hexdigest(checksum):
        raise ValueError("the claim names no record checksum")
    rh = claim.get("result_hash")
    if rh is not None and not isinstance(rh, str):
        raise ValueError("the claim's result hash is not a string")
    blobs = claim.get("blobs")
    if not isinstance(blobs, dict) or not all(
            isinstance(h, str) and is_hexdigest(h) and type(n) is int and n >= 0
            for h, n in blobs.items()):
        raise ValueError("the claim's blob list is malformed")
