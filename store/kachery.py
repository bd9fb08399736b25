"""kachery-cloud: a closure of results published as one citable ``sha1://`` URI.

:func:`publish` writes the closure of some records as a bundle
(:mod:`hither_store.bundle`), stores it with kachery-cloud, then stores a small manifest
naming the bundle by sha1, sha256 and size; the manifest's ``sha1://`` URI is what one
cites. :func:`fetch` loads the manifest and the bundle back and checks every byte itself:
kachery-cloud verifies nothing it downloads (and keeps what it downloaded in its folder),
so the sha1 of each file, the sha256 and size of the bundle, every file inside it and the
records' signatures are all checked here before anything enters the store.

kachery-cloud is imported lazily (extras ``hither[share,kachery]``). Its folder,
``$KACHERY_CLOUD_DIR``, is set to a folder of hither's unless the user set it; its
``cache_locally`` option is never used (it is broken in 0.4.10). Its network calls have no
timeout of their own.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from ._atomic import remove_quietly
from .bundle import ImportReport, read_bundle, write_bundle
from .closure import GENERIC_REFS, RecordRefs, compute_closure
from .errors import StoreError
from .local import LocalStore
from .signing import SecretKey, TrustedKeys

__all__ = ["KacheryError", "default_kachery_dir", "fetch", "publish"]

ENV_DIR = "KACHERY_CLOUD_DIR"
MANIFEST_TYPE = "hither-kachery-publication"
MAX_MANIFEST_BYTES = 1 << 20
_URI_RE = re.compile(r"sha1://([0-9a-f]{40})(?:[?/].*)?")


class KacheryError(StoreError):
    """Publishing to or fetching from kachery-cloud failed; the message says why."""


def default_kachery_dir() -> Path:
    """hither's kachery-cloud folder: ``<user cache dir>/hither/kachery-cloud``."""
    import platformdirs

    return platformdirs.user_cache_path("hither") / "kachery-cloud"


def _kachery() -> Any:
    if not os.environ.get(ENV_DIR):
        os.environ[ENV_DIR] = str(default_kachery_dir())
    Path(os.environ[ENV_DIR]).mkdir(parents=True, exist_ok=True)
    try:
        import kachery_cloud
    except ImportError as e:
        raise KacheryError("kachery needs the kachery-cloud package: "
                           "pip install 'hither[share,kachery]'") from e
    return kachery_cloud


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """kachery-cloud prints progress on stdout; keep stdout for what hither prints."""
    with contextlib.redirect_stdout(sys.stderr):
        yield


def _call(what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        with _quiet():
            return fn(*args, **kwargs)
    except KacheryError:
        raise
    except Exception as e:  # noqa: BLE001 - kachery-cloud raises bare Exception
        msg = str(e)
        if "Client keys not found" in msg:
            msg = (f"this kachery-cloud client is not registered: run kachery-cloud-init with "
                   f"{ENV_DIR}={os.environ.get(ENV_DIR)} (or set KACHERY_CLOUD_CLIENT_ID and "
                   "KACHERY_CLOUD_PRIVATE_KEY)")
        raise KacheryError(f"kachery-cloud {what} failed: {type(e).__name__}: {msg}") from e


def _hashes(path: Path) -> tuple[str, str, int]:
    sha1, sha256 = hashlib.sha1(), hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            sha1.update(chunk)
            sha256.update(chunk)
            size += len(chunk)
    return sha1.hexdigest(), sha256.hexdigest(), size


def parse_uri(uri: str) -> str:
    """The sha1 hex digest of a ``sha1://<40 hex>[?...]`` URI; ValueError otherwise."""
    m = _URI_RE.fullmatch(uri.strip()) if isinstance(uri, str) else None
    if m is None:
        raise ValueError(f"not a kachery URI (sha1://<40 hex characters>): {uri!r}")
    return m.group(1)


# ---------------------------------------------------------------------------- publish
def publish(store: LocalStore, keys: Iterable[str], *, refs: RecordRefs = GENERIC_REFS,
            signer: SecretKey | None = None, local: bool = False,
            label: str | None = None) -> str:
    """Publish the closure of ``keys``; return the ``sha1://`` URI of its manifest.

    ``local=True`` stores into the local kachery-cloud folder only (offline use, tests).

    Raises:
        KeyError: a key has no record in ``store``.
        KacheryError: kachery-cloud failed, or returned a URI for other bytes.
        BundleError: a record is incomplete in the store.
    """
    kcl = _kachery()
    keys = list(keys)
    closure = compute_closure(store, keys, refs)
    work = store.tmp_dir / f"kachery-{os.getpid()}-{secrets.token_hex(6)}"
    work.mkdir(parents=True)
    try:
        info = write_bundle(store, closure, keys, work / "bundle.tar", signer=signer, refs=refs)
        bundle_uri = _call("upload", kcl.store_file, str(info.path),
                           label=f"{label or keys[0][:16]}.hither.tar", local=local)
        if parse_uri(bundle_uri) != info.sha1:
            raise KacheryError(f"kachery-cloud named the bundle {bundle_uri}, expected sha1 "
                               f"{info.sha1}")
        doc = {"format": 1, "type": MANIFEST_TYPE, "roots": keys,
               "signer": str(signer.public_key) if signer is not None else None,
               "bundle": {"sha1": info.sha1, "sha256": info.sha256, "size": info.size}}
        man = work / "hither.json"
        man.write_text(json.dumps(doc, sort_keys=True, indent=1) + "\n")
        sha1, _, _ = _hashes(man)
        uri = _call("upload", kcl.store_file, str(man), label="hither.json", local=local)
        if parse_uri(uri) != sha1:
            raise KacheryError(f"kachery-cloud named the manifest {uri}, expected sha1 {sha1}")
        return str(uri)
    finally:
        for p in work.glob("*"):
            remove_quietly(p)
        with contextlib.suppress(OSError):
            work.rmdir()


# ---------------------------------------------------------------------------- fetch
def fetch(uri: str, store: LocalStore, *, trusted: TrustedKeys | None = None,
          require_signature: bool = True, refs: RecordRefs = GENERIC_REFS,
          local_only: bool = False) -> ImportReport:
    """Load a publication and import it into ``store`` after checking every byte.

    Raises:
        ValueError: ``uri`` is not a ``sha1://`` URI.
        KacheryError: not found, damaged or tampered with (nothing was imported).
        BundleError: the bundle fails a check (nothing was imported).
    """
    kcl = _kachery()
    sha1 = parse_uri(uri)
    work = store.tmp_dir / f"kachery-{os.getpid()}-{secrets.token_hex(6)}"
    work.mkdir(parents=True)
    try:
        man_path = _load(kcl, sha1, work / "hither.json", local_only, MAX_MANIFEST_BYTES)
        doc = _parse_manifest(man_path.read_bytes())
        b = doc["bundle"]
        bundle = _load(kcl, b["sha1"], work / "bundle.tar", local_only, b["size"],
                       sha256=b["sha256"])
        report = read_bundle(store, bundle, trusted=trusted,
                             require_signature=require_signature, refs=refs)
        if sorted(report.roots) != sorted(doc["roots"]):
            raise KacheryError("the bundle's roots differ from the publication's")
        return report
    finally:
        for p in work.glob("*"):
            remove_quietly(p)
        with contextlib.suppress(OSError):
            work.rmdir()


def _load(kcl: Any, sha1: str, dest: Path, local_only: bool, max_size: int,
          sha256: str | None = None) -> Path:
    got = _call("download", kcl.load_file, f"sha1://{sha1}", local_only=local_only,
                dest=str(dest))
    if got is None or not dest.is_file():
        where = "the local kachery-cloud folder" if local_only else "kachery-cloud"
        raise KacheryError(f"sha1://{sha1} was not found in {where} (or its upload is "
                           "still pending)")
    actual1, actual256, size = _hashes(dest)
    if actual1 != sha1 or size > max_size or (sha256 is not None and actual256 != sha256):
        _forget_download(sha1)
        what = "its sha1" if actual1 != sha1 else ("its size" if size > max_size
                                                   else "the sha256 its manifest gives")
        raise KacheryError(f"sha1://{sha1}: the downloaded bytes do not match {what} "
                           "(damaged or tampered with); nothing was imported")
    return dest


def _forget_download(sha1: str) -> None:
    """Remove kachery-cloud's cached copy of a file that failed its check, so that a
    later attempt downloads it again instead of reusing the bad bytes."""
    base = os.environ.get(ENV_DIR)
    if base:
        remove_quietly(Path(base) / "sha1" / sha1[:2] / sha1[2:4] / sha1[4:6] / sha1)


def _parse_manifest(raw: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise KacheryError("the publication manifest is not JSON") from None
    b = doc.get("bundle") if isinstance(doc, dict) else None
    if not isinstance(doc, dict) or doc.get("type") != MANIFEST_TYPE \
            or doc.get("format") != 1 or not isinstance(b, dict):
        raise KacheryError("not a hither publication (wrong manifest type)")
    if not (isinstance(b.get("sha1"), str) and re.fullmatch(r"[0-9a-f]{40}", b["sha1"])
            and isinstance(b.get("sha256"), str) and re.fullmatch(r"[0-9a-f]{64}", b["sha256"])
            and type(b.get("size")) is int and b["size"] >= 0):
        raise KacheryError("the publication manifest names no valid bundle")
    roots = doc.get("roots")
    if not isinstance(roots, list) or not all(isinstance(k, str) for k in roots):
        raise KacheryError("the publication manifest has no list of roots")
    return doc
