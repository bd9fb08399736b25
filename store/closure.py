"""The closure of results: every file needed to use, inspect and re-run them elsewhere.

The closure of a record is the record itself, the blobs it references (result, inputs,
console), the code bundles it names (``<store>/code/<digest>/``) and, recursively, the
records of its lineage. What a record references is a matter of the record's schema, which
this package does not know: the caller describes it with a :class:`RecordRefs`.

Pushing to a remote, pulling from one and bundles (:mod:`hither_store.bundle`) all move
closures.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import shutil
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._paths import is_key, parse_blob_uri
from ._shared import make_dirs, set_tree_modes
from ._verify import hash_stream
from .errors import BlobNotFoundError, StoreError
from .local import LocalStore

__all__ = ["Closure", "RecordRefs", "check_code_files", "code_files", "compute_closure",
           "install_code_dir"]

_CODE_DIGEST_RE = re.compile(r"[0-9a-f]{16,64}")
_REL_PART_RE = re.compile(r"[A-Za-z0-9_.+@=-][A-Za-z0-9_.+@= -]{0,254}")
_MAX_CODE_FILES = 10_000


def _blob_uris_anywhere(record: Mapping[str, Any]) -> Iterable[str]:
    stack: list[Any] = [record]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
        elif isinstance(node, str) and node.startswith("sha256://"):
            yield node


def _nothing(record: Mapping[str, Any]) -> Iterable[str]:
    return ()


@dataclass(frozen=True)
class RecordRefs:
    """How to find what a record references.

    Attributes:
        blobs: the blob uris (``sha256://<hex>``) a record references; by default every
            string of that form anywhere in the record.
        upstream: the keys of the records it was computed from (its lineage).
        code: the digests of the code bundles it names (``<store>/code/<digest>``).
        code_digest: the digest of a code bundle from its files (``{relative path: hex
            sha256}``), to check a bundle received from elsewhere; without it, received
            code bundles are refused.
    """

    blobs: Callable[[Mapping[str, Any]], Iterable[str]] = _blob_uris_anywhere
    upstream: Callable[[Mapping[str, Any]], Iterable[str]] = _nothing
    code: Callable[[Mapping[str, Any]], Iterable[str]] = _nothing
    code_digest: Callable[[Mapping[str, str]], str] | None = None

    def blob_hexes(self, record: Mapping[str, Any]) -> list[str]:
        """The hex digests of the record's well-formed blob uris (sorted, unique)."""
        out = set()
        for uri in self.blobs(record):
            try:
                out.add(parse_blob_uri(uri))
            except ValueError:
                continue
        return sorted(out)

    def code_digests(self, record: Mapping[str, Any]) -> list[str]:
        """The record's well-formed code bundle digests (sorted, unique)."""
        return sorted({d for d in self.code(record)
                       if isinstance(d, str) and _CODE_DIGEST_RE.fullmatch(d)})


GENERIC_REFS = RecordRefs()


@dataclass
class Closure:
    """What a set of records needs, as found in a local store."""

    records: dict[str, dict[str, Any]] = field(default_factory=dict)
    """key -> record body, each record after the records of its lineage."""
    blobs: dict[str, int] = field(default_factory=dict)
    """hex digest -> size of every blob present."""
    code: dict[str, dict[str, tuple[str, int]]] = field(default_factory=dict)
    """code bundle digest -> {relative path: (hex sha256, size)}."""
    missing_records: list[str] = field(default_factory=list)
    """keys named in a lineage without a record here."""
    missing_blobs: dict[str, list[str]] = field(default_factory=dict)
    """key -> hex digests of the blobs of that record that are not here."""
    missing_code: dict[str, list[str]] = field(default_factory=dict)
    """key -> code bundle digests of that record that are not here."""

    def complete(self, key: str) -> bool:
        """Whether the record ``key`` and everything it references are present."""
        return key in self.records and key not in self.missing_blobs \
            and key not in self.missing_code


def compute_closure(store: LocalStore, keys: Iterable[str], refs: RecordRefs = GENERIC_REFS,
                    *, lineage: bool = True) -> Closure:
    """The closure of ``keys`` in ``store`` (their lineage too, unless ``lineage=False``).

    Raises:
        KeyError: one of ``keys`` has no record in the store.
    """
    out = Closure()
    seen: set[str] = set()
    order: list[str] = []
    bodies: dict[str, dict[str, Any]] = {}

    def visit(key: str, root: bool) -> None:
        # iterative depth-first post-order: lineages can be thousands deep
        stack: list[tuple[str, bool, bool]] = [(key, root, False)]
        while stack:
            k, is_root, expanded = stack.pop()
            if expanded:
                order.append(k)
                continue
            if k in seen:
                continue
            seen.add(k)
            body = store.get_record(k)
            if body is None:
                if is_root:
                    raise KeyError(k)
                out.missing_records.append(k)
                continue
            bodies[k] = body
            stack.append((k, is_root, True))
            if lineage:
                for up in refs.upstream(body):
                    if not isinstance(up, str) or up in seen:
                        continue
                    if not is_key(up):  # cannot be in any store: missing, never a path
                        seen.add(up)
                        out.missing_records.append(up)
                        continue
                    stack.append((up, False, False))

    for k in keys:
        visit(k, True)
    for k in order:
        body = bodies[k]
        out.records[k] = body
        for h in refs.blob_hexes(body):
            if h in out.blobs:
                continue
            try:
                out.blobs[h] = store.blob_size("sha256://" + h)
            except BlobNotFoundError:
                out.missing_blobs.setdefault(k, []).append(h)
        for d in refs.code_digests(body):
            if d in out.code:
                continue
            files = code_files(store.root, d)
            if files is None:
                out.missing_code.setdefault(k, []).append(d)
            else:
                out.code[d] = files
    return out


# ---------------------------------------------------------------------------- code bundles
def check_code_relpath(rel: str) -> str:
    """``rel`` if it is a safe relative POSIX path inside a code bundle, else ValueError."""
    parts = rel.split("/") if isinstance(rel, str) else []
    if not parts or len(rel) > 1024 or not all(
            _REL_PART_RE.fullmatch(p) and p not in (".", "..") for p in parts):
        raise ValueError(f"unsafe path in a code bundle: {rel!r}")
    return rel


def check_code_digest(digest: str) -> str:
    """``digest`` if it can name a code bundle, else ValueError."""
    if not isinstance(digest, str) or not _CODE_DIGEST_RE.fullmatch(digest):
        raise ValueError(f"invalid code bundle digest {digest!r}")
    return digest


def code_files(root: Path, digest: str) -> dict[str, tuple[str, int]] | None:
    """``{relative path: (hex sha256, size)}`` of the code bundle ``digest`` in the store
    at ``root``; None when absent. Links and special files are not followed or listed."""
    base = root / "code" / check_code_digest(digest)
    if not base.is_dir() or base.is_symlink():
        return None
    out: dict[str, tuple[str, int]] = {}
    for dirpath, dirnames, filenames in os.walk(base, followlinks=False):
        for name in filenames:
            path = os.path.join(dirpath, name)
            if os.path.islink(path) or not os.path.isfile(path):
                continue
            rel = os.path.relpath(path, base).replace(os.sep, "/")
            with open(path, "rb", buffering=0) as f:
                out[rel] = hash_stream(f)
        dirnames[:] = [d for d in dirnames if not os.path.islink(os.path.join(dirpath, d))]
    return out


def check_code_files(digest: str, files: Mapping[str, Path | bytes],
                     code_digest: Callable[[Mapping[str, str]], str] | None) -> None:
    """Check that ``files`` (relative path -> content or file) make code bundle ``digest``.

    Raises:
        StoreError: they make another bundle, or there is no ``code_digest`` to tell.
        ValueError: an unsafe path or digest.
    """
    check_code_digest(digest)
    if len(files) > _MAX_CODE_FILES:
        raise StoreError(f"code bundle {digest} has too many files ({len(files)})")
    if code_digest is None:
        raise StoreError(f"cannot check code bundle {digest}: no digest function given")
    hashes: dict[str, str] = {}
    for rel, src in files.items():
        check_code_relpath(rel)
        if isinstance(src, bytes):
            hashes[rel] = hashlib.sha256(src).hexdigest()
        else:
            with open(src, "rb", buffering=0) as f:
                hashes[rel] = hash_stream(f)[0]
    actual = code_digest(hashes)
    if actual != digest:
        raise StoreError(f"code bundle {digest}: its files make bundle {actual}")


def install_code_dir(root: Path, digest: str, files: Mapping[str, Path | bytes],
                     code_digest: Callable[[Mapping[str, str]], str] | None) -> None:
    """Place a received code bundle at ``<root>/code/<digest>`` after checking that its
    files hash to ``digest``; an existing bundle of that digest is kept.

    Raises:
        StoreError: the files do not make the bundle ``digest``, or no ``code_digest``.
        ValueError: an unsafe path or digest.
    """
    check_code_files(digest, files, code_digest)
    code_root = root / "code"
    final = code_root / digest
    if final.is_dir():
        return
    tmp = code_root / f".{digest}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    make_dirs(code_root)
    try:
        for rel, src in files.items():
            target = tmp / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(src, bytes):
                target.write_bytes(src)
            else:
                shutil.copyfile(src, target)
        set_tree_modes(tmp, code_root)
        with contextlib.suppress(OSError):  # another process placed the same bundle
            os.rename(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
