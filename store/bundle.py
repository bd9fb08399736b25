"""Bundles: a closure of results as one tar file, checked file by file on the way in.

A bundle is an uncompressed tar whose first member is ``hither-bundle.json``::

    {"format": 1, "type": "hither-bundle", "roots": [<key>, ...],
     "files": {"<path in the store layout>": {"sha256": <hex>, "size": <bytes>}, ...}}

followed by exactly those files, at the paths they have in a store: ``blobs/sha256/...``,
``records/<k0k1>/<key>.json``, their ``.sig`` sidecars and ``code/<digest>/...``.

Importing reads the tar as a stream, never extracts it: every member must be a regular
file listed in the manifest, with its size and sha256; blobs must hash to their names,
records must pass their checksum, signatures must come from trusted keys (unless told
otherwise) and every blob a record references must arrive or be present already. Only when
all of that holds is anything placed in the store (blobs, code, signatures, then records).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, BinaryIO, cast

from ._atomic import TempFile, remove_quietly
from ._paths import (
    SIDECAR_SUFFIX,
    blob_relpath,
    is_hexdigest,
    is_key,
    record_relpath,
    sidecar_relpath,
)
from ._records import BadRecord, body_checksum, decode_record
from ._verify import hash_stream
from .closure import (
    GENERIC_REFS,
    Closure,
    RecordRefs,
    check_code_digest,
    check_code_files,
    check_code_relpath,
    install_code_dir,
)
from .errors import StoreError
from .local import LocalStore
from .sidecars import ensure_signed, write_sidecar
from .signing import MAX_SIDECAR_BYTES, SecretKey, Sidecar, TrustedKeys

__all__ = ["BundleError", "BundleInfo", "ImportReport", "read_bundle", "write_bundle"]

MANIFEST_NAME = "hither-bundle.json"
BUNDLE_FORMAT = 1
MAX_MANIFEST_BYTES = 256 << 20
_MAX_RECORD_BYTES = 64 << 20
_BLOB_RE = re.compile(r"blobs/sha256/([0-9a-f]{2})/([0-9a-f]{2})/([0-9a-f]{64})")
_RECORD_RE = re.compile(r"records/([0-9A-Za-z_-]{2})/([0-9A-Za-z_-]{8,128})\.json")
_SIDECAR_RE = re.compile(r"records/([0-9A-Za-z_-]{2})/([0-9A-Za-z_-]{8,128})\.([0-9a-f]{64})"
                         + re.escape(SIDECAR_SUFFIX))
_CODE_RE = re.compile(r"code/([0-9a-f]{16,64})/(.+)")


class BundleError(StoreError):
    """A bundle is malformed, damaged or untrusted; nothing of it was imported."""


@dataclass(frozen=True)
class BundleInfo:
    """A written bundle: its hashes, size and roots."""

    path: Path
    sha256: str
    sha1: str
    size: int
    roots: tuple[str, ...]
    files: int


@dataclass
class ImportReport:
    """What :func:`read_bundle` placed in the store."""

    roots: list[str] = field(default_factory=list)
    records: list[str] = field(default_factory=list)
    blobs: int = 0
    code: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------- writing
def write_bundle(store: LocalStore, closure: Closure, roots: Iterable[str],
                 dest: str | os.PathLike[str], *, signer: SecretKey | None = None,
                 refs: RecordRefs = GENERIC_REFS) -> BundleInfo:
    """Write ``closure`` (from :func:`~hither_store.closure.compute_closure`) as a bundle
    at ``dest``. With ``signer``, every record is signed (its sidecar in the store too).

    Raises:
        BundleError: a root is not complete in the closure.
    """
    roots = tuple(roots)
    for key in roots:
        if not closure.complete(key):
            raise BundleError(f"record {key} is not complete in the store: cannot bundle it")
    files: dict[str, Path] = {}
    for hexdigest in sorted(closure.blobs):
        files[blob_relpath(hexdigest)] = store.blob_path("sha256://" + hexdigest)
    for digest in sorted(closure.code):
        for rel in sorted(closure.code[digest]):
            files[f"code/{digest}/{rel}"] = store.root / "code" / digest / rel
    records: dict[str, bytes] = {}
    for key, body in closure.records.items():
        if not closure.complete(key):
            continue  # an incomplete lineage record is left out; its descendants still work
        checksum = body_checksum(body)
        sizes = {h: closure.blobs[h] for h in refs.blob_hexes(body)}
        sidecar = ensure_signed(store, key, body, checksum, sizes, signer)
        if sidecar is not None:
            records[sidecar_relpath(key, checksum)] = sidecar.encode()
        records[record_relpath(key)] = store.record_path(key).read_bytes()
    manifest_files: dict[str, dict[str, Any]] = {}
    for rel, path in files.items():
        with open(path, "rb", buffering=0) as f:
            sha, size = hash_stream(f)
        manifest_files[rel] = {"sha256": sha, "size": size}
    for rel, data in records.items():
        manifest_files[rel] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    manifest = json.dumps({"format": BUNDLE_FORMAT, "type": "hither-bundle",
                           "roots": list(roots), "files": manifest_files},
                          sort_keys=True, separators=(",", ":")).encode()
    dest = Path(dest)
    sha256, sha1 = hashlib.sha256(), hashlib.sha1()
    with open(dest, "wb") as raw:
        out = _HashingWriter(raw, (sha256, sha1))
        with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            _add_bytes(tar, MANIFEST_NAME, manifest)
            for rel, path in files.items():
                with open(path, "rb") as f:
                    info = tarfile.TarInfo(rel)
                    info.size = manifest_files[rel]["size"]
                    info.mode = 0o444
                    tar.addfile(info, f)
            for rel in sorted(records, key=lambda r: (r.endswith(".json"), r)):
                _add_bytes(tar, rel, records[rel])
        size = out.count
    return BundleInfo(dest, sha256.hexdigest(), sha1.hexdigest(), size, roots,
                      len(manifest_files))


class _HashingWriter(io.RawIOBase):
    def __init__(self, raw: IO[bytes], hashes: tuple[Any, ...]) -> None:
        self._raw = raw
        self._hashes = hashes
        self.count = 0

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        data = bytes(b)
        for h in self._hashes:
            h.update(data)
        self._raw.write(data)
        self.count += len(data)
        return len(data)


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o444
    tar.addfile(info, io.BytesIO(data))


# ---------------------------------------------------------------------------- reading
def read_bundle(store: LocalStore, src: str | os.PathLike[str] | IO[bytes], *,
                trusted: TrustedKeys | None = None, require_signature: bool = True,
                refs: RecordRefs = GENERIC_REFS) -> ImportReport:
    """Import a bundle into ``store`` after checking all of it (see the module docstring).

    Raises:
        BundleError: anything is wrong; then nothing was placed in the store.
    """
    trusted = trusted or TrustedKeys()
    staged: dict[str, Path] = {}
    small: dict[str, bytes] = {}
    try:
        with contextlib.ExitStack() as stack:
            fileobj = stack.enter_context(open(src, "rb")) if isinstance(
                src, (str, os.PathLike)) else src
            try:
                tar = stack.enter_context(tarfile.open(fileobj=fileobj, mode="r|"))
                manifest = _read_members(tar, store, staged, small)
            except (tarfile.TarError, EOFError, OSError) as e:
                raise BundleError(f"not a readable bundle: {type(e).__name__}: {e}") from None
        return _commit(store, manifest, staged, small, trusted, require_signature, refs)
    finally:
        for path in staged.values():
            remove_quietly(path)


def _read_members(tar: tarfile.TarFile, store: LocalStore, staged: dict[str, Path],
                  small: dict[str, bytes]) -> dict[str, Any]:
    first = tar.next()
    if first is None or first.name != MANIFEST_NAME or not first.isfile() \
            or first.size > MAX_MANIFEST_BYTES:
        raise BundleError(f"the first member of a bundle must be {MANIFEST_NAME}")
    f = tar.extractfile(first)
    assert f is not None
    manifest = _parse_manifest(f.read())
    files: dict[str, dict[str, Any]] = manifest["files"]
    seen: set[str] = set()
    while (member := tar.next()) is not None:
        name = member.name
        if not member.isfile():
            raise BundleError(f"bundle member {name!r} is not a regular file")
        if name in seen:
            raise BundleError(f"bundle member {name!r} appears twice")
        meta = files.get(name)
        if meta is None:
            raise BundleError(f"bundle member {name!r} is not in the manifest")
        if member.size != meta["size"]:
            raise BundleError(f"bundle member {name!r} has {member.size} bytes, the "
                              f"manifest says {meta['size']}")
        seen.add(name)
        data = tar.extractfile(member)
        assert data is not None
        if name.startswith("blobs/") or name.startswith("code/"):
            with TempFile(store.tmp_dir, "import", False) as tmp:
                sha, size = hash_stream(cast(BinaryIO, data), tmp.file.write)
                tmp.finish()
            staged[name] = tmp.path
        else:
            content = data.read()
            sha, size = hashlib.sha256(content).hexdigest(), len(content)
            small[name] = content
        if sha != meta["sha256"] or size != meta["size"]:
            raise BundleError(f"bundle member {name!r} does not match its sha256 in the "
                              "manifest (damaged or tampered with)")
    absent = sorted(set(files) - seen)
    if absent:
        raise BundleError(f"{len(absent)} file(s) of the manifest are missing from the "
                          f"bundle, e.g. {absent[0]!r}")
    return manifest


def _parse_manifest(raw: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise BundleError("the bundle manifest is not JSON") from None
    if not isinstance(doc, dict) or doc.get("type") != "hither-bundle" \
            or doc.get("format") != BUNDLE_FORMAT:
        raise BundleError("not a hither bundle of a known format")
    roots, files = doc.get("roots"), doc.get("files")
    if not isinstance(roots, list) or not all(isinstance(k, str) and is_key(k) for k in roots):
        raise BundleError("the bundle manifest has no valid list of roots")
    if not isinstance(files, dict):
        raise BundleError("the bundle manifest lists no files")
    for name, meta in files.items():
        _check_member_name(name)
        if not isinstance(meta, dict) or not isinstance(meta.get("sha256"), str) \
                or not is_hexdigest(meta["sha256"]) or type(meta.get("size")) is not int \
                or meta["size"] < 0:
            raise BundleError(f"bad manifest entry for {name!r}")
    return doc


def _check_member_name(name: str) -> None:
    m = _BLOB_RE.fullmatch(name)
    if m:
        if m.group(1) != m.group(3)[:2] or m.group(2) != m.group(3)[2:4]:
            raise BundleError(f"misplaced blob {name!r}")
        return
    for rx in (_RECORD_RE, _SIDECAR_RE):
        m = rx.fullmatch(name)
        if m:
            if m.group(1) != m.group(2)[:2]:
                raise BundleError(f"misplaced record {name!r}")
            return
    m = _CODE_RE.fullmatch(name)
    if m:
        try:
            check_code_digest(m.group(1))
            check_code_relpath(m.group(2))
        except ValueError as e:
            raise BundleError(str(e)) from None
        return
    raise BundleError(f"unexpected file in a bundle: {name!r}")


def _commit(store: LocalStore, manifest: dict[str, Any], staged: dict[str, Path],
            small: dict[str, bytes], trusted: TrustedKeys, require_signature: bool,
            refs: RecordRefs) -> ImportReport:
    # blobs: the content must hash to the name (the manifest sha256 was checked already)
    blobs = set()
    for name, meta in manifest["files"].items():
        m = _BLOB_RE.fullmatch(name)
        if m:
            if meta["sha256"] != m.group(3):
                raise BundleError(f"blob {name!r} does not hash to its name")
            blobs.add(m.group(3))
    bodies: dict[str, dict[str, Any]] = {}
    sidecars: dict[str, bytes] = {}
    for name, content in small.items():
        m = _RECORD_RE.fullmatch(name)
        if m:
            key = m.group(2)
            if len(content) > _MAX_RECORD_BYTES:
                raise BundleError(f"record {key} is too large")
            try:
                bodies[key] = decode_record(key, content)
            except BadRecord as e:
                raise BundleError(f"record {key} is damaged: {e}") from None
        else:
            if len(content) > MAX_SIDECAR_BYTES:
                raise BundleError(f"{name!r} is too large")
            sidecars[name] = content
    for key in manifest["roots"]:
        if key not in bodies:
            raise BundleError(f"the bundle lacks the record of its root {key}")
    code: dict[str, dict[str, Path]] = {}
    for name, path in staged.items():
        m = _CODE_RE.fullmatch(name)
        if m:
            code.setdefault(m.group(1), {})[m.group(2)] = path
    keep_sidecars: dict[str, bytes] = {}
    for key, body in bodies.items():
        checksum = body_checksum(body)
        hexes = refs.blob_hexes(body)
        sc_name = sidecar_relpath(key, checksum)
        if require_signature:
            raw = sidecars.get(sc_name)
            if raw is None:
                raise BundleError(f"record {key} is not signed")
            try:
                sc = Sidecar.decode(raw)
            except ValueError as e:
                raise BundleError(f"record {key}: {e}") from None
            why = sc.check(key, checksum, body, hexes, trusted)
            if why is not None:
                raise BundleError(f"record {key}: {why}")
        if sc_name in sidecars:
            keep_sidecars[sc_name] = sidecars[sc_name]
        # refreshed, not just seen: gc keeps a blob a new record is about to reference
        missing = [h for h in hexes if h not in blobs and not store.refresh_blob("sha256://" + h)]
        if missing:
            raise BundleError(f"record {key} references {len(missing)} blob(s) that are "
                              f"neither in the bundle nor in the store, e.g. {missing[0]}")
        for d in refs.code_digests(body):
            if d not in code and not (store.root / "code" / d).is_dir():
                raise BundleError(f"record {key} names code bundle {d}, which is missing")
    for digest, files in code.items():
        try:
            check_code_files(digest, files, refs.code_digest)
        except (StoreError, ValueError) as e:
            raise BundleError(str(e)) from None
    # everything checks out: place it, records last
    report = ImportReport(roots=list(manifest["roots"]))
    for name, path in staged.items():
        if name.startswith("blobs/"):
            store.put_file(path, move=True)
            report.blobs += 1
    for digest, files in code.items():
        try:
            install_code_dir(store.root, digest, files, refs.code_digest)
        except (StoreError, ValueError) as e:
            raise BundleError(f"code bundle {digest}: {e}") from None
        report.code.append(digest)
    for name, content in keep_sidecars.items():
        m = _SIDECAR_RE.fullmatch(name)
        assert m is not None
        write_sidecar(store, m.group(2), m.group(3), Sidecar.decode(content))
    for key, body in bodies.items():
        store.put_record(key, body)
        report.records.append(key)
    return report
