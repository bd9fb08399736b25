"""A local store in front of remote stores: read-through, verified copies, pushes.

Reads go to the local store first, then to each remote in order. A remote hit is the
record, its signature and every blob it references; all of it is checked (the record's
checksum, a signature by a trusted key over the record's key, body checksum, result hash
and blobs, each blob's hash while it streams) and copied into the local store, and only
then returned. Anything that fails a check is a miss with one warning.

Writes go to the local store (signed when a signing key is set) and, for remotes whose
push policy is ``"on_finish"``, to those remotes at once; ``"explicit"`` remotes receive
results only through :meth:`StoreStack.push`.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from ._paths import blob_relpath, is_key, record_relpath, sidecar_relpath
from ._records import BadRecord, body_checksum, decode_record, encode_record
from .closure import (
    GENERIC_REFS,
    RecordRefs,
    check_code_relpath,
    code_files,
    compute_closure,
    install_code_dir,
)
from .errors import BlobNotFoundError, RemoteStoreWarning, StoreError
from .local import LocalStore
from .lookupcache import LookupCache
from .remote import SMALL_OBJECT, RemoteBackend, open_backend, remote_scheme
from .sidecars import ensure_signed, write_sidecar
from .signing import MAX_SIDECAR_BYTES, SecretKey, Sidecar, TrustedKeys

__all__ = ["PUSH_POLICIES", "PullReport", "PushReport", "Remote", "StoreStack",
           "remotes_from_env"]

PUSH_POLICIES = ("never", "on_finish", "explicit")
ENV_REMOTES = "HITHER_REMOTES"
ENV_PUSH = "HITHER_PUSH"
MAX_RECORD_BYTES = 64 << 20
MAX_BLOB_BYTES = 1 << 40
#: blobs up to this size are fetched together with the record's signature
PREFETCH = 1 << 20
PREFETCH_COUNT = 32
#: a remote that failed to answer is left alone this long
DOWN_FOR = 30.0


class _Rejected(Exception):
    """A remote entry failed a check; the message says which."""


# ---------------------------------------------------------------------------- remotes
class Remote:
    """A remote store and how to use it.

    Args:
        url: ``s3://bucket/prefix``, ``gs://bucket/prefix`` or ``https://host/path``.
        push: ``"never"``, ``"on_finish"`` (every result recorded is pushed at once) or
            ``"explicit"`` (only ``hither push``); default ``"explicit"``, ``"never"``
            for http(s).
        trusted_keys: public keys (``name:base64``, a list or comma-separated) whose
            signatures this remote's records may carry; None: ``$HITHER_TRUSTED_KEYS``.
        read_only: never write (always so for http(s)).
        require_signature: refuse records without a trusted signature (default).
        endpoint_url: the S3 endpoint (default ``$AWS_ENDPOINT_URL``).
        storage_options: further options of the fsspec filesystem (s3fs, gcsfs).
        miss_ttl: seconds during which a record found missing is not asked for again.
        timeout: seconds to wait for an http(s) server.
    """

    def __init__(self, url: str, *, push: str | None = None,
                 trusted_keys: str | Iterable[str] | TrustedKeys | None = None,
                 read_only: bool | None = None, require_signature: bool = True,
                 endpoint_url: str | None = None,
                 storage_options: Mapping[str, Any] | None = None,
                 miss_ttl: float = 60.0, timeout: float = 60.0) -> None:
        if not isinstance(url, str):
            raise TypeError(f"a remote is a url string or a Remote, got {type(url).__name__}")
        self.scheme = remote_scheme(url)
        self.url = url.rstrip("/")
        http = self.scheme in ("http", "https")
        if read_only is False and http:
            raise ValueError(f"{url}: an http(s) store is read-only")
        self.read_only = True if http else bool(read_only)
        if push is None:
            push = "never" if self.read_only else "explicit"
        if push not in PUSH_POLICIES:
            raise ValueError(f"push must be one of {', '.join(PUSH_POLICIES)}, got {push!r}")
        if push != "never" and self.read_only:
            raise ValueError(f"{url} is read-only: push={push!r} is impossible")
        self.push = push
        if isinstance(trusted_keys, TrustedKeys):
            self.trusted = trusted_keys
        elif trusted_keys is None:
            self.trusted = TrustedKeys.from_env()
        else:
            self.trusted = TrustedKeys.parse(trusted_keys)
        self.require_signature = bool(require_signature)
        self.endpoint_url = endpoint_url
        self.storage_options = dict(storage_options or {})
        self.miss_ttl = float(miss_ttl)
        self.timeout = float(timeout)
        self._backend: RemoteBackend | None = None
        self._lock = threading.Lock()
        self._down_until = 0.0

    @classmethod
    def of(cls, spec: str | Remote) -> Remote:
        """A Remote from a url or a Remote."""
        return spec if isinstance(spec, Remote) else cls(spec)

    @property
    def id(self) -> str:
        """What identifies the remote's content (its url and endpoint)."""
        endpoint = self.endpoint_url or (
            os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
            if self.scheme == "s3" else None)
        return f"{self.url}@{endpoint}" if endpoint else self.url

    @property
    def backend(self) -> RemoteBackend:
        """The remote's backend (opened on first use)."""
        if self._backend is None:
            with self._lock:
                if self._backend is None:
                    self._backend = open_backend(
                        self.url, endpoint_url=self.endpoint_url,
                        storage_options=self.storage_options, timeout=self.timeout)
        return self._backend

    def check_available(self) -> None:
        """Raise ImportError (with install advice) when the remote's library is missing."""
        mod = {"s3": "s3fs", "gs": "gcsfs"}.get(self.scheme)
        if mod is not None:
            import importlib.util

            if importlib.util.find_spec(mod) is None:
                extra = "pip install 'hither[share,s3]'" if mod == "s3fs" \
                    else "pip install 'hither[share,gs]'"
                raise ImportError(f"{self.url} needs {mod}: {extra}")

    def is_down(self) -> bool:
        """Whether the remote failed to answer a short while ago."""
        return time.monotonic() < self._down_until

    def mark_down(self) -> bool:
        """Leave the remote alone for a while; True when it was not down already."""
        was_up = not self.is_down()
        self._down_until = time.monotonic() + DOWN_FOR
        return was_up

    def __repr__(self) -> str:
        return f"Remote({self.url!r}, push={self.push!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Remote) and other.id == self.id \
            and other.push == self.push and other.read_only == self.read_only

    def __hash__(self) -> int:
        return hash((Remote, self.id, self.push, self.read_only))

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_backend"] = None
        state["_lock"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()


def remotes_from_env() -> list[Remote]:
    """The remotes named in ``$HITHER_REMOTES`` (urls separated by spaces), with the push
    policy ``$HITHER_PUSH`` (default ``explicit``; ``never`` for http(s))."""
    urls = os.environ.get(ENV_REMOTES, "").split()
    push = os.environ.get(ENV_PUSH) or None
    out = []
    for url in urls:
        http = remote_scheme(url) in ("http", "https")
        out.append(Remote(url, push=None if http else push))
    return out


# ---------------------------------------------------------------------------- reports
@dataclass
class PushReport:
    """What :meth:`StoreStack.push` did."""

    pushed: list[str] = field(default_factory=list)
    """records written to the remote"""
    present: list[str] = field(default_factory=list)
    """records the remote had already"""
    blobs_uploaded: int = 0
    failed: dict[str, str] = field(default_factory=dict)
    """key -> why it was not pushed"""
    missing_records: list[str] = field(default_factory=list)
    """lineage records absent from the local store"""


@dataclass
class PullReport:
    """What :meth:`StoreStack.pull` did."""

    fetched: list[str] = field(default_factory=list)
    present: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    """key -> why it could not be pulled (absent, unsigned, damaged...)"""


# ---------------------------------------------------------------------------- the stack
class StoreStack:
    """A :class:`LocalStore` with remote stores behind it.

    Args:
        local: the local store (always read first, always written).
        remotes: the remotes, in the order they are asked.
        refs: how to find what a record references (blobs, lineage, code bundles).
        signer: signs every record written and pushed (its public key is trusted too).
        lookup: what is known about the remotes (default: the user's lookup cache).
    """

    def __init__(self, local: LocalStore, remotes: Sequence[Remote | str] = (), *,
                 refs: RecordRefs = GENERIC_REFS, signer: SecretKey | None = None,
                 lookup: LookupCache | None = None, max_workers: int = 8) -> None:
        self.local = local
        self.remotes = [Remote.of(r) for r in remotes]
        self.refs = refs
        self.signer = signer
        self.lookup = lookup if lookup is not None else LookupCache()
        self._max_workers = max_workers
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()

    def trusted_for(self, remote: Remote) -> TrustedKeys:
        """The keys whose signatures count for records of ``remote``."""
        if self.signer is None:
            return remote.trusted
        return remote.trusted.union(TrustedKeys([self.signer.public_key]))

    # ------------------------------------------------------------------ reading
    def fetch(self, key: str) -> dict[str, Any] | None:
        """The record ``key`` from the first remote that has a valid copy, after copying
        it (and its blobs) into the local store; None when none has. Never raises for
        what a remote holds or fails to do: a bad entry is one :class:`RemoteStoreWarning`."""
        if self.local.readonly:
            return None  # a hit could not be copied in (said once, when configured)
        for remote in self.remotes:
            if remote.require_signature and not self.trusted_for(remote):
                continue  # nothing it holds could be believed (said once, when configured)
            body, why = self.fetch_from(remote, key)
            if body is not None:
                return body
            if why is not None:
                warnings.warn(f"remote store {remote.url}: record {key[:16]} not used: {why}; "
                              "treated as a cache miss", RemoteStoreWarning, stacklevel=3)
        return None

    def fetch_from(self, remote: Remote, key: str, *, use_lookup: bool = True
                   ) -> tuple[dict[str, Any] | None, str | None]:
        """``(record, None)`` when ``remote`` has a valid copy of ``key`` (now also in the
        local store); ``(None, None)`` when it has none; ``(None, why)`` when what it has
        cannot be used, or it cannot be reached (said once while it stays down)."""
        if not isinstance(key, str) or not is_key(key):
            return None, "not a record key"
        if remote.is_down():
            return None, None
        if use_lookup and self.lookup.recent_miss(remote.id, key):
            return None, None
        try:
            body = self._copy_in(remote, key)
        except FileNotFoundError:
            self.lookup.add_miss(remote.id, key, remote.miss_ttl)
            return None, None
        except _Rejected as e:
            self.lookup.add_miss(remote.id, key, remote.miss_ttl)
            return None, str(e)
        except Exception as e:  # noqa: BLE001 - network, credentials, a broken client
            if remote.mark_down():
                return None, f"cannot use it ({type(e).__name__}: {e}); not asked again " \
                             f"for {DOWN_FOR:g} s"
            return None, None
        return body, None

    def _copy_in(self, remote: Remote, key: str) -> dict[str, Any]:
        be = remote.backend
        raw = be.read(record_relpath(key), MAX_RECORD_BYTES)
        if raw is None:
            raise FileNotFoundError(key)
        try:
            body = decode_record(key, raw)
        except BadRecord as e:
            raise _Rejected(f"damaged record ({e})") from None
        checksum = body_checksum(body)
        hexes = self.refs.blob_hexes(body)
        # refreshed, not just seen: gc keeps a blob the record about to be written references
        need = [h for h in hexes if not self.local.refresh_blob("sha256://" + h)]
        sidecar: Sidecar | None = None
        if not remote.require_signature:
            self._run_all([lambda h=h: self._copy_blob(remote, h, None) for h in need])
        else:
            # the signature and the start of every blob in one round of requests; nothing
            # is stored before the signature is checked
            sc_rel = sidecar_relpath(key, checksum)
            early = need[:PREFETCH_COUNT]
            got = be.read_many([sc_rel] + [blob_relpath(h) for h in early], PREFETCH)
            raw_sig = got[sc_rel]
            if raw_sig is not None and len(raw_sig) > PREFETCH:
                raw_sig = be.read(sc_rel, MAX_SIDECAR_BYTES)
            if raw_sig is None:
                raise _Rejected("it is not signed")
            try:
                sidecar = Sidecar.decode(raw_sig)
            except ValueError as e:
                raise _Rejected(f"bad signature file ({e})") from None
            why = sidecar.check(key, checksum, body, hexes, self.trusted_for(remote))
            if why is not None:
                raise _Rejected(why)
            large = []
            for h in need:
                size = sidecar.claim["blobs"][h]
                if size > PREFETCH or blob_relpath(h) not in got:
                    large.append((h, size))
                    continue
                self._place_small_blob(h, size, got[blob_relpath(h)])
            self._run_all([lambda h=h, n=n: self._copy_blob(remote, h, n) for h, n in large])
        for digest in self.refs.code_digests(body):
            if code_files(self.local.root, digest) is None:
                self._copy_code(remote, digest)
        if sidecar is not None:
            write_sidecar(self.local, key, checksum, sidecar)
        self.local.put_record(key, body)
        return body

    def _place_small_blob(self, hexdigest: str, size: int, data: bytes | None) -> None:
        if data is None:
            raise _Rejected(f"blob {hexdigest[:16]} is missing on the remote")
        if len(data) < size:
            raise _Rejected(f"blob {hexdigest[:16]} is truncated ({len(data)} of {size} bytes)")
        data = data[:size]
        actual = hashlib.sha256(data).hexdigest()
        if actual != hexdigest:
            raise _Rejected(f"blob {hexdigest[:16]} does not match its hash "
                            f"(got sha256 {actual[:16]})")
        self.local.put_bytes(data)

    def _copy_blob(self, remote: Remote, hexdigest: str, size: int | None) -> None:
        be = remote.backend

        def write(f: BinaryIO) -> None:
            h = hashlib.sha256()

            def sink(chunk: bytes) -> None:
                h.update(chunk)
                f.write(chunk)

            try:
                n = be.stream(blob_relpath(hexdigest), size, sink, MAX_BLOB_BYTES)
            except FileNotFoundError:
                raise _Rejected(f"blob {hexdigest[:16]} is missing on the remote") from None
            except StoreError as e:  # too large
                raise _Rejected(str(e)) from None
            if size is not None and n != size:
                raise _Rejected(f"blob {hexdigest[:16]} is truncated ({n} of {size} bytes)")
            if h.hexdigest() != hexdigest:
                raise _Rejected(f"blob {hexdigest[:16]} does not match its hash "
                                f"(got sha256 {h.hexdigest()[:16]})")

        self.local.put_writer(write)

    def _copy_code(self, remote: Remote, digest: str) -> None:
        be = remote.backend
        raw = be.read(f"code/{digest}.json", MAX_SIDECAR_BYTES)
        if raw is None:
            raise _Rejected(f"code bundle {digest} is missing on the remote")
        try:
            index = _decode_code_index(raw)
        except ValueError as e:
            raise _Rejected(f"code bundle {digest}: {e}") from None
        files: dict[str, bytes] = {}
        for rel, (sha, size) in index.items():
            data = be.read(f"code/{digest}/{rel}", size)
            if data is None or hashlib.sha256(data).hexdigest() != sha:
                raise _Rejected(f"code bundle {digest}: {rel} is missing or damaged")
            files[rel] = data
        try:
            install_code_dir(self.local.root, digest, files, self.refs.code_digest)
        except (StoreError, ValueError) as e:
            raise _Rejected(str(e)) from None

    def _run_all(self, calls: list[Any]) -> None:
        """Run the calls, concurrently when there are several; re-raise the first error."""
        if len(calls) <= 1:
            for c in calls:
                c()
            return
        if self._pool is None:
            with self._pool_lock:
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(self._max_workers,
                                                    thread_name_prefix="hither-remote")
        futures = [self._pool.submit(c) for c in calls]
        errors = [f.exception() for f in futures]
        for e in errors:
            if e is not None:
                raise e

    # ------------------------------------------------------------------ signatures
    def _sizes(self, hexes: Iterable[str]) -> dict[str, int]:
        return {h: self.local.blob_size("sha256://" + h) for h in hexes}

    # ------------------------------------------------------------------ writing
    def put_record(self, key: str, body: dict[str, Any]) -> None:
        """Store a record locally (its signature first, when there is a signing key), then
        push it to the ``on_finish`` remotes (a failure there is a warning)."""
        checksum = None
        if self.signer is not None:
            checksum = body_checksum(body)
            try:
                ensure_signed(self.local, key, body, checksum,
                              self._sizes(self.refs.blob_hexes(body)), self.signer)
            except BlobNotFoundError as e:
                warnings.warn(f"record {key[:16]} is stored unsigned: {e}",
                              RemoteStoreWarning, stacklevel=3)
        self.local.put_record(key, body)
        for remote in self.remotes:
            if remote.push != "on_finish" or remote.is_down():
                continue
            try:
                self._push_one(remote, key, body, checksum=checksum, use_lookup=True)
            except _Rejected as e:
                warnings.warn(f"record {key[:16]} not pushed to {remote.url}: {e}",
                              RemoteStoreWarning, stacklevel=3)
            except (OSError, StoreError) as e:
                if remote.mark_down():
                    warnings.warn(f"cannot push to {remote.url} ({type(e).__name__}: {e}); "
                                  f"not tried again for {DOWN_FOR:g} s ('hither push' "
                                  "catches up later)", RemoteStoreWarning, stacklevel=3)

    def _push_one(self, remote: Remote, key: str, body: dict[str, Any], *,
                  checksum: str | None = None, use_lookup: bool) -> tuple[bool, int]:
        """Push one record with its blobs and code bundles; returns whether the record
        was written (False: the remote had it) and the number of blobs uploaded. Raises
        _Rejected when it cannot be pushed."""
        if remote.read_only:
            raise _Rejected(f"{remote.url} is read-only")
        be = remote.backend
        rid = remote.id
        checksum = checksum or body_checksum(body)
        if use_lookup and self.lookup.has_record(rid, key, checksum):
            return False, 0
        hexes = self.refs.blob_hexes(body)
        try:
            sizes = self._sizes(hexes)
        except BlobNotFoundError as e:
            raise _Rejected(f"incomplete in the local store: {e}") from None
        sidecar = ensure_signed(self.local, key, body, checksum, sizes, self.signer)
        if remote.require_signature and (sidecar is None or not sidecar.signatures):
            raise _Rejected("it is not signed and the remote requires signatures: set "
                            "HITHER_SIGNING_KEY (see 'hither key generate')")
        uploaded = 0
        for h in hexes:
            if use_lookup and self.lookup.has_blob(rid, h):
                continue
            uploaded += self._upload_blob(be, h, sizes[h])
            self.lookup.add_blob(rid, h)
        for digest in self.refs.code_digests(body):
            self._upload_code(be, digest)
        if sidecar is not None:
            be.create(sidecar_relpath(key, checksum), sidecar.encode())
        created = be.create(record_relpath(key), encode_record(key, body))
        self.lookup.add_record(rid, key, checksum)
        self.lookup.forget_miss(rid, key)
        return created, uploaded

    def _upload_blob(self, be: RemoteBackend, hexdigest: str, size: int) -> bool:
        rel = blob_relpath(hexdigest)
        if size > SMALL_OBJECT and be.exists(rel):
            return False  # do not send a large body only to hear that it is there
        path = self.local.blob_path("sha256://" + hexdigest)  # verified
        return be.create_file(rel, str(path), size)

    def _upload_code(self, be: RemoteBackend, digest: str) -> None:
        files = code_files(self.local.root, digest)
        if files is None:
            raise _Rejected(f"code bundle {digest} is missing in the local store")
        if be.exists(f"code/{digest}.json"):
            return
        base = self.local.root / "code" / digest
        for rel in sorted(files):
            be.create(f"code/{digest}/{rel}", (base / rel).read_bytes())
        be.create(f"code/{digest}.json", _encode_code_index(files))

    def push(self, keys: Iterable[str], remote: Remote | str, *, lineage: bool = True
             ) -> PushReport:
        """Push records and their closure (lineage, blobs, code bundles) to ``remote``.

        Raises:
            KeyError: a key has no local record.
            OSError: the remote cannot be reached or refuses writes.
        """
        remote = Remote.of(remote)
        closure = compute_closure(self.local, keys, self.refs, lineage=lineage)
        report = PushReport(missing_records=list(closure.missing_records))
        for key, body in closure.records.items():
            if not closure.complete(key):
                what = closure.missing_blobs.get(key) or closure.missing_code.get(key) or []
                report.failed[key] = f"incomplete in the local store ({len(what)} missing)"
                continue
            try:
                created, uploaded = self._push_one(remote, key, body, use_lookup=False)
            except _Rejected as e:
                report.failed[key] = str(e)
                continue
            (report.pushed if created else report.present).append(key)
            report.blobs_uploaded += uploaded
        return report

    def pull(self, keys: Iterable[str], remote: Remote | str, *, lineage: bool = True
             ) -> PullReport:
        """Copy records and their closure from ``remote`` into the local store, checking
        everything as a cache lookup does."""
        remote = Remote.of(remote)
        report = PullReport()
        queue = list(keys)
        seen: set[str] = set()
        while queue:
            key = queue.pop(0)
            if key in seen:
                continue
            seen.add(key)
            if not isinstance(key, str) or not is_key(key):  # e.g. a lineage entry of a record that came from the remote
                report.failed[str(key)] = "not a record key (8 to 128 characters from " \
                                     "[0-9a-zA-Z_-])"
                continue
            body = self.local.get_record(key)
            if body is not None:
                report.present.append(key)
            else:
                body, why = self.fetch_from(remote, key, use_lookup=False)
                if body is None:
                    report.failed[key] = why or "not on the remote"
                    continue
                report.fetched.append(key)
            if lineage:
                queue.extend(k for k in self.refs.upstream(body) if isinstance(k, str))
        return report

    def close(self) -> None:
        """Stop the download threads."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


# ---------------------------------------------------------------------------- code index
def _encode_code_index(files: Mapping[str, tuple[str, int]]) -> bytes:
    doc = {"format": 1, "files": {rel: {"sha256": s, "size": n}
                                  for rel, (s, n) in sorted(files.items())}}
    return (json.dumps(doc, sort_keys=True, separators=(",", ":")) + "\n").encode()


def _decode_code_index(raw: bytes) -> dict[str, tuple[str, int]]:
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise ValueError("its index is not JSON") from None
    files = doc.get("files") if isinstance(doc, dict) else None
    if not isinstance(files, dict):
        raise ValueError("its index lists no files")
    out: dict[str, tuple[str, int]] = {}
    for rel, meta in files.items():
        check_code_relpath(rel)
        if not isinstance(meta, dict) or not isinstance(meta.get("sha256"), str) \
                or type(meta.get("size")) is not int or not 0 <= meta["size"] <= MAX_RECORD_BYTES:
            raise ValueError(f"bad index entry for {rel!r}")
        out[rel] = (meta["sha256"], meta["size"])
    return out
