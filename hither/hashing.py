"""Canonical, tagged hashing of values for job keys (never pickle).

:func:`hash_value` feeds a prefix-free byte encoding of the value into sha256. Every item
starts with a one-byte type tag and every variable-length payload carries its length, so
distinct values give distinct streams:

* ``1``, ``1.0``, ``True`` and ``numpy.int64(1)`` differ (tags ``i``, ``f``, ``T``, ``g``);
  ``list`` and ``tuple`` differ; ``str`` and ``bytes`` differ (``bytearray`` hashes like
  ``bytes``, as the codec gives bytes back).
* floats hash their exact IEEE-754 bits (``-0.0`` != ``0.0``); every NaN hashes alike.
* dict items and set elements are sorted by the encoding of the key / element, so order
  does not matter; ``set`` and ``frozenset`` differ.
* numpy arrays hash dtype (with byte order), shape and an ``xxh3_128`` digest of the content
  in C order, read in place when the array is C-contiguous. Array NaN bit patterns are hashed
  as they are.
* :class:`~hither._codec.File` hashes the sha256 of its content (not its path or name).
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import stat
import struct
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import xxhash

from hither._codec import (
    _DICT_KEY,
    _IDX,
    _KEY,
    _SET_ITEM,
    File,
    Trail,
    render_path,
    unsupported_type_message,
)
from hither.errors import SerializationError

__all__ = [
    "canonical_json",
    "clear_file_hash_memo",
    "describe_value",
    "hash_file",
    "hash_struct",
    "hash_value",
]

_SCHEME = b"hither-key-v1\0"
_INT_LIMIT = 1 << 63
_SMALL_BYTES = 4096  # longer bytes are represented by their xxh3_128 digest
_ARRAY_CHUNK = 1 << 24  # bytes per copied chunk when hashing a non-contiguous array
_NAN_BITS = struct.pack("<d", float("nan"))
_pack_len = struct.Struct("<Q").pack
_pack_f64 = struct.Struct("<d").pack


# ---------------------------------------------------------------------------- hash_value

def hash_value(value: Any, *, path: str = "value") -> str:
    """Hex sha256 of the canonical tagged encoding of ``value`` (see the module docstring).

    Raises :class:`~hither.errors.SerializationError` naming the path of an unsupported
    value (e.g. ``kw['cfg'][2]``) or of a reference cycle.
    """
    out = [_SCHEME]
    _Hasher(out).add(value, path)
    return hashlib.sha256(b"".join(out)).hexdigest()


def _fail(trail: Trail, make_message: Callable[[str], str]) -> SerializationError:
    path = render_path(trail)
    return SerializationError(make_message(path), path)


def _unsupported(value: Any) -> Callable[[str], str]:
    return lambda path: unsupported_type_message(value, path).replace(
        "cannot encode", "cannot hash", 1)


def _float_bits(value: float) -> bytes:
    return _pack_f64(value) if value == value else _NAN_BITS


class _Hasher:
    def __init__(self, out: list[bytes]) -> None:
        self.out = out
        self.active: set[int] = set()

    def enter(self, value: Any, trail: Trail) -> None:
        if id(value) in self.active:
            name = type(value).__qualname__
            raise _fail(trail, lambda path: f"cannot hash value of type {name!r} at {path}: "
                        "reference cycle (the container contains itself)")
        self.active.add(id(value))

    def encoded(self, value: Any, trail: Trail) -> bytes:
        """The encoding of ``value`` alone, for sorting dict keys and set elements."""
        sub = _Hasher([])
        sub.active = self.active
        sub.add(value, trail)
        return b"".join(sub.out)

    def add(self, value: Any, trail: Trail) -> None:
        out = self.out
        t = type(value)
        if value is None:
            out.append(b"N")
        elif t is bool:
            out.append(b"T" if value else b"F")
        elif t is int:
            if -_INT_LIMIT <= value < _INT_LIMIT:
                out.append(b"i" + value.to_bytes(8, "little", signed=True))
            else:
                raw = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
                out.append(b"I" + _pack_len(len(raw)) + raw)
        elif t is float:
            out.append(b"f" + _float_bits(value))
        elif t is str:
            raw = value.encode("utf-8", "surrogatepass")
            out.append(b"s" + _pack_len(len(raw)) + raw)
        elif t is list or t is tuple:
            self.enter(value, trail)
            out.append((b"l" if t is list else b"t") + _pack_len(len(value)))
            add = self.add
            for i, x in enumerate(value):
                add(x, (trail, i, _IDX))
            self.active.discard(id(value))
        elif t is dict:
            self.enter(value, trail)
            pairs = []
            for key, x in value.items():
                pairs.append((self.encoded(key, (trail, key, _DICT_KEY)), key, x))
            pairs.sort(key=lambda pair: pair[0])
            out.append(b"d" + _pack_len(len(pairs)))
            for key_bytes, key, x in pairs:
                out.append(key_bytes)
                self.add(x, (trail, key, _KEY))
            self.active.discard(id(value))
        elif t is set or t is frozenset:
            self.enter(value, trail)
            items = sorted(self.encoded(x, (trail, None, _SET_ITEM)) for x in value)
            out.append((b"S" if t is set else b"Z") + _pack_len(len(items)))
            out.extend(items)
            self.active.discard(id(value))
        elif t is bytes or t is bytearray:
            if len(value) <= _SMALL_BYTES:
                out.append(b"b" + _pack_len(len(value)) + bytes(value))
            else:
                out.append(b"B" + _pack_len(len(value)) + xxhash.xxh3_128(value).digest())
        elif t is complex:
            out.append(b"c" + _float_bits(value.real) + _float_bits(value.imag))
        elif isinstance(value, File):
            known = value._sha256  # a snapshot: its content was hashed when it was made
            out.append(b"P" + bytes.fromhex(known or self.file_digest(value, trail)))
        else:
            np = sys.modules.get("numpy")
            if np is not None and isinstance(value, np.ndarray):
                self.array(np, value, trail)
            elif np is not None and isinstance(value, np.generic):
                self.np_scalar(np, value, trail)
            else:
                raise _fail(trail, _unsupported(value))

    def file_digest(self, value: File, trail: Trail) -> str:
        try:
            return hash_file(value.path)
        except OSError as exc:
            reason = str(exc)
            raise _fail(trail, lambda path: f"cannot hash File at {path}: {reason}") from exc

    def array(self, np: Any, arr: Any, trail: Trail) -> None:
        if type(arr) is not np.ndarray and not isinstance(arr, np.memmap):
            name = type(arr).__qualname__
            raise _fail(trail, lambda path: f"cannot hash numpy.ndarray subclass {name!r} at "
                        f"{path}: convert it with numpy.asarray() first")
        if arr.dtype.hasobject:
            raise _fail(trail, lambda path: f"cannot hash numpy array with dtype {arr.dtype} "
                        f"at {path}: object (and other pickled) dtypes are not supported")
        label = _dtype_key(arr.dtype)
        shape = b"".join(_pack_len(n) for n in arr.shape)
        self.out.append(b"a" + _pack_len(len(label)) + label + _pack_len(arr.ndim) + shape
                        + _array_digest(np, arr))

    def np_scalar(self, np: Any, value: Any, trail: Trail) -> None:
        dtype = value.dtype
        if dtype.hasobject:
            raise _fail(trail, _unsupported(value))
        arr = np.array(value)
        if dtype.kind in "fc":
            parts = arr.reshape(1).view(arr.real.dtype)
            if np.isnan(parts).any():
                parts[np.isnan(parts)] = np.nan  # one NaN, whatever the payload or sign
        label = _dtype_key(dtype)
        raw = arr.tobytes()
        self.out.append(b"g" + _pack_len(len(label)) + label + _pack_len(len(raw)) + raw)


def _dtype_key(dtype: Any) -> bytes:
    # dtype.str carries byte order and units ('<M8[ns]'); structured dtypes need the descr
    text = dtype.str if dtype.names is None and dtype.subdtype is None else repr(dtype.descr)
    return text.encode("utf-8")


def _array_digest(np: Any, arr: Any) -> bytes:
    """xxh3_128 of the array's bytes in C order, without copying a C-contiguous array."""
    if arr.nbytes == 0:
        return xxhash.xxh3_128(b"").digest()
    if arr.flags.c_contiguous:
        return xxhash.xxh3_128(arr.reshape(-1).view(np.uint8)).digest()
    hasher = xxhash.xxh3_128()
    # buffered C-order iteration copies at most one chunk at a time
    for chunk in np.nditer(arr, flags=["external_loop", "buffered", "zerosize_ok"],
                           buffersize=max(_ARRAY_CHUNK // arr.itemsize, 1), order="C"):
        hasher.update(np.ascontiguousarray(chunk).view(np.uint8))
    return hasher.digest()


# ---------------------------------------------------------------------------- small structures

def canonical_json(obj: Any) -> bytes:
    """Compact UTF-8 JSON with sorted keys; NaN and infinities raise ``ValueError``."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


def hash_struct(obj: Any) -> str:
    """Hex sha256 of :func:`canonical_json` of a small JSON-like structure."""
    return hashlib.sha256(canonical_json(obj)).hexdigest()


# ---------------------------------------------------------------------------- files

_RACY_NS = 2_000_000_000  # files modified this recently may change within one mtime tick
_MEMO_MAX = 8192
_memo: dict[tuple[str, int, int, int, int], str] = {}
_memo_lock = threading.Lock()


def _read_file_sha256(path: str) -> str:
    """Read the whole file and return its sha256 hex digest."""
    digest = hashlib.sha256()
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as fh:
        while True:
            n = fh.readinto(buf)
            if not n:
                break
            digest.update(view[:n])
    return digest.hexdigest()


def _signature(path: str) -> tuple[str, int, int, int, int]:
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        raise IsADirectoryError(f"not a regular file: {path!r}")
    return (path, st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)


def hash_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file's content, memoized by (realpath, size, mtime, inode, ctime).

    The memo lives in this process and in a small sqlite database shared by processes
    (``HITHER_FILEHASH_DB``, default in the user cache dir; set it to an empty string to
    disable), so an unchanged large file is read once. Files modified in the last two seconds
    are not memoized, as a rewrite within the filesystem's timestamp granularity would be
    invisible. Raises ``OSError`` if the file cannot be read.
    """
    real = os.path.realpath(os.fspath(path))
    sig = _signature(real)
    with _memo_lock:
        hit = _memo.get(sig)
    if hit is not None:
        return hit
    hit = _persistent.lookup(sig)
    if hit is not None:
        _remember(sig, hit)
        return hit
    started = time.time_ns()
    digest = _read_file_sha256(real)
    if _signature(real) == sig and started - sig[2] > _RACY_NS:
        _remember(sig, digest)
        _persistent.store(sig, digest)
    return digest


def _remember(sig: tuple[str, int, int, int, int], digest: str) -> None:
    with _memo_lock:
        if len(_memo) >= _MEMO_MAX:
            del _memo[next(iter(_memo))]
        _memo[sig] = digest


class _PersistentMemo:
    """The cross-process file-hash memo; any sqlite trouble silently disables it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._pid = -1
        self._disabled = False
        self._orphans: list[sqlite3.Connection] = []

    def reset(self, *, wipe: bool = False) -> None:
        with self._lock:
            conn = self._connect() if wipe else None
            if conn is not None:
                try:
                    conn.execute("DELETE FROM filehash")
                except sqlite3.Error:
                    pass
            if self._conn is not None and self._pid == os.getpid():
                self._conn.close()
            self._conn = None
            self._disabled = False

    def _connect(self) -> sqlite3.Connection | None:
        if self._disabled:
            return None
        if self._conn is not None:
            if self._pid == os.getpid():
                return self._conn
            # inherited through fork: never use (or close) the parent's connection
            self._orphans.append(self._conn)
            self._conn = None
        db = os.environ.get("HITHER_FILEHASH_DB")
        if db is None:
            import platformdirs

            db = str(platformdirs.user_cache_path("hither") / "filehash.sqlite")
        if not db:
            self._disabled = True
            return None
        try:
            os.makedirs(os.path.dirname(os.path.abspath(db)), exist_ok=True)
            conn = sqlite3.connect(db, timeout=2.0, isolation_level=None,
                                   check_same_thread=False)
            conn.execute("PRAGMA busy_timeout=2000")
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("CREATE TABLE IF NOT EXISTS filehash (path TEXT PRIMARY KEY, "
                         "sig TEXT NOT NULL, sha256 TEXT NOT NULL)")
        except (sqlite3.Error, OSError):
            self._disabled = True
            return None
        self._conn, self._pid = conn, os.getpid()
        return conn

    def lookup(self, sig: tuple[str, int, int, int, int]) -> str | None:
        with self._lock:
            try:
                conn = self._connect()
                if conn is None:
                    return None
                row = conn.execute("SELECT sig, sha256 FROM filehash WHERE path = ?",
                                   (sig[0],)).fetchone()
            except sqlite3.Error:
                self._disabled = True
                return None
        if row is None or row[0] != _sig_text(sig):
            return None
        return str(row[1])

    def store(self, sig: tuple[str, int, int, int, int], digest: str) -> None:
        with self._lock:
            try:
                conn = self._connect()
                if conn is not None:
                    conn.execute("INSERT OR REPLACE INTO filehash (path, sig, sha256) "
                                 "VALUES (?, ?, ?)", (sig[0], _sig_text(sig), digest))
            except sqlite3.Error:
                self._disabled = True


def _sig_text(sig: tuple[str, int, int, int, int]) -> str:
    # text, not integers: inode numbers may not fit a signed 64-bit sqlite INTEGER
    return ":".join(str(n) for n in sig[1:])


_persistent = _PersistentMemo()


def clear_file_hash_memo(*, persistent: bool = False) -> None:
    """Forget memoized file hashes in this process (for tests).

    The persistent database is re-opened on next use (so ``HITHER_FILEHASH_DB`` is read
    again); with ``persistent=True`` its rows are deleted as well.
    """
    with _memo_lock:
        _memo.clear()
    _persistent.reset(wipe=persistent)


# ---------------------------------------------------------------------------- describe

def describe_value(value: Any) -> str:
    """A short human description of a value, e.g. ``ndarray float64 (1000, 3)``."""
    t = type(value)
    np = sys.modules.get("numpy")
    if np is not None and isinstance(value, np.ndarray):
        return f"{t.__name__} {value.dtype} {value.shape}"
    if np is not None and isinstance(value, np.generic):
        return f"{t.__name__} {_clip(repr(value.item()) if value.dtype.kind != 'V' else '…')}"
    if t is str:
        if len(value) <= 24:
            return f"str {value!r}"
        text = repr(value[:24])
        return f"str {text[:-1]}…{text[-1]} ({len(value)} chars)"
    if t in (bytes, bytearray):
        return f"{t.__name__}({len(value)})"
    if t is int and not -(10**15) < value < 10**15:
        return f"int ({value.bit_length()} bits)"
    if value is None or t in (bool, int, float, complex):
        return repr(value)
    if t in (list, tuple, dict, set, frozenset):
        return f"{t.__name__}({len(value)})"
    if isinstance(value, File):
        return f"File {value.name!r}"
    return t.__qualname__


def _clip(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
