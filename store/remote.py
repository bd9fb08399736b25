"""Remote stores: the local store's layout on an object store or a static web server.

``s3://bucket/prefix`` (s3fs) and ``gs://bucket/prefix`` (gcsfs) go through fsspec;
``https://`` and ``http://`` are read-only and use the standard library. A remote moves
bytes only: it never decides what to believe. Whatever it returns is checked by the caller
(:mod:`hither_store.stack`) against hashes and signatures before use, and every read is
bounded, so a hostile server can neither feed a wrong value nor exhaust memory.

Writes are create-only: an object that exists is never replaced (S3 ``If-None-Match: *``,
GCS ``ifGenerationMatch=0``); "already there" is success, since same name means same
content for blobs, and records are paired with their signatures by the body's checksum.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import os
import time
import urllib.parse
from collections.abc import Callable
from typing import Any, Protocol

from .errors import StoreError

__all__ = ["RemoteBackend", "RemoteTooLargeError", "open_backend", "remote_scheme"]

#: objects up to this size are read with one request
SMALL_OBJECT = 8 << 20
#: files up to this size are uploaded from memory in one request, with their checksum
SMALL_UPLOAD = 64 << 20
_CONFLICT_RETRIES = 5

Sink = Callable[[bytes], object]


class RemoteTooLargeError(StoreError):
    """A remote object is larger than what may be read for it."""


class RemoteBackend(Protocol):
    """What a remote store must do; paths are relative to its root (``blobs/...``)."""

    url: str
    writable: bool

    def read(self, rel: str, limit: int) -> bytes | None:
        """The object's bytes, None when absent; RemoteTooLargeError above ``limit``."""

    def read_many(self, rels: list[str], limit: int) -> dict[str, bytes | None]:
        """The first ``limit + 1`` bytes (at most) of each object, None when absent;
        fetched concurrently where the backend can."""

    def stream(self, rel: str, size: int | None, sink: Sink, limit: int) -> int:
        """Pass the object's bytes to ``sink``; ``size`` bytes when given (a longer
        object is cut there), else up to ``limit``. Returns the count; FileNotFoundError
        when absent."""

    def create(self, rel: str, data: bytes) -> bool:
        """Create the object; False when it already existed (it is left as it was)."""

    def create_file(self, rel: str, path: str, size: int) -> bool:
        """Create the object from a local file of ``size`` bytes (large ones streamed)."""

    def exists(self, rel: str) -> bool:
        """Whether the object exists."""

    def ping(self) -> str:
        """A short description of the remote's state; raises OSError when unreachable."""


def remote_scheme(url: str) -> str:
    """The scheme of a remote store url; ValueError for anything else."""
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme in ("s3", "s3a"):
        return "s3"
    if scheme in ("gs", "gcs"):
        return "gs"
    if scheme in ("http", "https"):
        return scheme
    raise ValueError(f"unsupported remote store {url!r}: use s3://bucket/prefix, "
                     "gs://bucket/prefix or https://host/path (read-only); a shared "
                     "directory is a local store (hi.JobCache(path=..., shared_group=...))")


def open_backend(url: str, *, endpoint_url: str | None = None,
                 storage_options: dict[str, Any] | None = None,
                 timeout: float = 60.0) -> RemoteBackend:
    """The backend of a remote url (its libraries are imported here, lazily)."""
    scheme = remote_scheme(url)
    if scheme in ("http", "https"):
        return HttpBackend(url, timeout=timeout)
    return FsspecBackend(url, scheme, endpoint_url=endpoint_url,
                         storage_options=storage_options or {})


# ---------------------------------------------------------------------------- fsspec
def _is_conflict(e: BaseException) -> bool:
    """An S3 409 (a concurrent conditional write of the same key is in flight)."""
    cause = e.__cause__ or e
    resp = getattr(cause, "response", None)
    if isinstance(resp, dict):
        status = resp.get("ResponseMetadata", {}).get("HTTPStatusCode")
        code = resp.get("Error", {}).get("Code")
        return status == 409 or code in ("ConditionalRequestConflict", "OperationAborted")
    return getattr(e, "errno", None) == errno.EBUSY


def _is_range_unsatisfiable(e: BaseException) -> bool:
    cause = e.__cause__ or e
    resp = getattr(cause, "response", None)
    if isinstance(resp, dict):
        return resp.get("ResponseMetadata", {}).get("HTTPStatusCode") == 416
    return "416" in str(e) or "InvalidRange" in str(e)


class FsspecBackend:
    """An object store (S3, GCS) through its fsspec filesystem."""

    def __init__(self, url: str, scheme: str, *, endpoint_url: str | None,
                 storage_options: dict[str, Any]) -> None:
        self.url = url.rstrip("/")
        self.writable = True
        self.scheme = scheme
        parts = urllib.parse.urlsplit(url)
        if not parts.netloc:
            raise ValueError(f"no bucket in remote store url {url!r}")
        self.root = (parts.netloc + "/" + parts.path.strip("/")).rstrip("/")
        opts = dict(storage_options)
        if scheme == "s3":
            try:
                import s3fs
            except ImportError as e:
                raise ImportError("s3:// remotes need s3fs: pip install 'hither[share,s3]'") from e
            endpoint = endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") \
                or os.environ.get("AWS_ENDPOINT_URL")
            if endpoint:
                opts.setdefault("endpoint_url", endpoint)
            self.endpoint = endpoint
            # skip_instance_cache: a fresh client per remote, never one shared with (and
            # closed by) other code in the process
            self.fs = s3fs.S3FileSystem(skip_instance_cache=True, **opts)
        else:
            try:
                import gcsfs
            except ImportError as e:
                raise ImportError("gs:// remotes need gcsfs: pip install 'hither[share,gs]'") from e
            if endpoint_url:
                opts.setdefault("endpoint_url", endpoint_url)
            self.endpoint = endpoint_url
            self.fs = gcsfs.GCSFileSystem(skip_instance_cache=True, **opts)

    def _path(self, rel: str) -> str:
        return f"{self.root}/{rel}"

    def _cat(self, rel: str, start: int, end: int) -> bytes:
        # a ranged read is one GET (an open-ended one would first ask for the size)
        try:
            return bytes(self.fs.cat_file(self._path(rel), start=start, end=end))
        except OSError as e:
            if _is_range_unsatisfiable(e):  # an empty object has no byte 0
                return b""
            raise

    def read(self, rel: str, limit: int) -> bytes | None:
        try:
            data = self._cat(rel, 0, limit + 1)
        except FileNotFoundError:
            return None
        if len(data) > limit:
            raise RemoteTooLargeError(f"{self.url}/{rel} is larger than {limit} bytes")
        return data

    def read_many(self, rels: list[str], limit: int) -> dict[str, bytes | None]:
        from fsspec.asyn import sync

        async def one(rel: str) -> bytes | None:
            try:
                return bytes(await self.fs._cat_file(self._path(rel), start=0, end=limit + 1))
            except FileNotFoundError:
                return None
            except OSError as e:
                if _is_range_unsatisfiable(e):
                    return b""
                raise

        async def all_of() -> list[bytes | None]:
            import asyncio

            return list(await asyncio.gather(*(one(r) for r in rels)))

        # one round trip of concurrent requests on fsspec's event loop
        return dict(zip(rels, sync(self.fs.loop, all_of), strict=True))

    def stream(self, rel: str, size: int | None, sink: Sink, limit: int) -> int:
        want = limit + 1 if size is None else size
        total = 0
        while total < want:
            end = min(total + SMALL_OBJECT, want)
            chunk = self._cat(rel, total, end)
            total += len(chunk)
            if size is None and total > limit:
                raise RemoteTooLargeError(f"{self.url}/{rel} is larger than {limit} bytes")
            if chunk:
                sink(chunk)
            if total < end:
                break  # the object ends here
        return total

    def create(self, rel: str, data: bytes) -> bool:
        kwargs: dict[str, Any] = {}
        if self.scheme == "s3":
            digest = base64.b64encode(hashlib.sha256(data).digest()).decode("ascii")
            kwargs = {"ChecksumAlgorithm": "SHA256", "ChecksumSHA256": digest}
        for attempt in range(_CONFLICT_RETRIES):
            try:
                self.fs.pipe_file(self._path(rel), data, mode="create", **kwargs)
                return True
            except FileExistsError:
                return False
            except OSError as e:
                if not _is_conflict(e) or attempt == _CONFLICT_RETRIES - 1:
                    raise
                time.sleep(0.05 * 2 ** attempt)
        return False  # pragma: no cover - the loop returns or raises

    def create_file(self, rel: str, path: str, size: int) -> bool:
        if size <= SMALL_UPLOAD:
            with open(path, "rb") as f:
                return self.create(rel, f.read())
        # a multipart upload streamed from the file; S3 checksums parts, not the whole
        try:
            self.fs.put_file(path, self._path(rel), mode="create")
        except FileExistsError:
            return False
        return True

    def exists(self, rel: str) -> bool:
        return bool(self.fs.exists(self._path(rel)))

    def ping(self) -> str:
        bucket = self.root.split("/", 1)[0]
        if not self.fs.exists(bucket):
            raise FileNotFoundError(f"no bucket {bucket!r} at {self.url}")
        return "reachable" + ("" if self.exists("records") else " (no records yet)")


# ---------------------------------------------------------------------------- http
class HttpBackend:
    """A store published as static files on a web server: read-only."""

    def __init__(self, url: str, *, timeout: float) -> None:
        self.url = url.rstrip("/")
        self.writable = False
        self.timeout = timeout

    def _open(self, rel: str) -> Any | None:
        import urllib.error
        import urllib.request

        quoted = urllib.parse.quote(rel)
        req = urllib.request.Request(f"{self.url}/{quoted}", headers={
            "User-Agent": "hither-store", "Accept-Encoding": "identity"})
        try:
            return urllib.request.urlopen(req, timeout=self.timeout)  # noqa: S310 - http(s) only
        except urllib.error.HTTPError as e:
            e.close()
            if e.code in (404, 410):
                return None
            raise OSError(f"{self.url}/{rel}: HTTP {e.code} {e.reason}") from None
        except urllib.error.URLError as e:
            raise OSError(f"{self.url}: {e.reason}") from None

    def read(self, rel: str, limit: int) -> bytes | None:
        resp = self._open(rel)
        if resp is None:
            return None
        with resp:
            data = resp.read(limit + 1)
        if len(data) > limit:
            raise RemoteTooLargeError(f"{self.url}/{rel} is larger than {limit} bytes")
        return bytes(data)

    def read_many(self, rels: list[str], limit: int) -> dict[str, bytes | None]:
        out: dict[str, bytes | None] = {}
        for rel in rels:
            resp = self._open(rel)
            if resp is None:
                out[rel] = None
                continue
            with resp:
                out[rel] = bytes(resp.read(limit + 1))
        return out

    def stream(self, rel: str, size: int | None, sink: Sink, limit: int) -> int:
        resp = self._open(rel)
        if resp is None:
            raise FileNotFoundError(f"{self.url}/{rel}")
        want = limit + 1 if size is None else size
        total = 0
        with resp:
            while total < want:
                chunk = resp.read(min(1 << 20, want - total))
                if not chunk:
                    break
                total += len(chunk)
                if size is None and total > limit:
                    raise RemoteTooLargeError(f"{self.url}/{rel} is larger than {limit} bytes")
                sink(chunk)
        return total

    def create(self, rel: str, data: bytes) -> bool:
        raise PermissionError(f"{self.url} is a read-only store (published over http)")

    def create_file(self, rel: str, path: str, size: int) -> bool:
        return self.create(rel, b"")

    def exists(self, rel: str) -> bool:
        resp = self._open(rel)
        if resp is None:
            return False
        resp.close()
        return True

    def ping(self) -> str:
        import urllib.error
        import urllib.request

        req = urllib.request.Request(self.url + "/", method="HEAD",
                                     headers={"User-Agent": "hither-store"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout):  # noqa: S310
                pass
        except urllib.error.HTTPError as e:
            e.close()
            return f"reachable (HTTP {e.code} for the root)"
        except urllib.error.URLError as e:
            raise OSError(f"{self.url}: {e.reason}") from None
        return "reachable (read-only)"
