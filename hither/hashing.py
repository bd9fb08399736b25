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
* numpy arrays hash dtype (with byte order), shape and a BLAKE3 digest of the content in C
  order, read in place when the array is C-contiguous. Array NaN bit patterns are hashed as
  they are. ``bytes`` and ``str`` longer than 4 KiB (UTF-8) are hashed by their BLAKE3 digest
  too: every digest in a key comes from a collision-resistant hash.
* :class:`~hither._codec.File` hashes the sha256 of its content (not its path or name).
* containers nested deeper than :data:`~hither._codec.MAX_DEPTH` and reference cycles raise
  :class:`~hither.errors.SerializationError` naming the path.

Hashing 100 MB with BLAKE3 takes ~25 ms here (two threads), more than twice the budget of
a cached call, so the digests of large buffers are memoized in this process: the memo is
keyed by a seeded ``xxh3_128`` of the buffer (5 ms per 100 MB) and its length, with a seed
drawn at random per process, so a collision cannot be prepared in advance. xxh3 only finds
a digest computed earlier in this process; it never enters a key. A digest is memoized only
when the buffer hashed to the same xxh3 before and after BLAKE3 read it, so a buffer
another thread changes meanwhile does not leave a wrong entry behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import struct
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import blake3
import xxhash
from hither_store import FileMemo, PersistentStatMemo

from hither._codec import (
    _DICT_KEY,
    _IDX,
    _KEY,
    _SET_ITEM,
    MAX_DEPTH,
    File,
    Trail,
    render_path,
    unsupported_type_message,
)
from hither.errors import SerializationError

__all__ = [
    "MAX_DEPTH",
    "canonical_json",
    "clear_file_hash_memo",
    "describe_value",
    "hash_file",
    "hash_struct",
    "hash_value",
]

_SCHEME = b"hither-key-v2\0"
_INT_LIMIT = 1 << 63
_SMALL_BYTES = 4096  # longer bytes and str are represented by their BLAKE3 digest
_ARRAY_CHUNK = 1 << 24  # bytes per copied chunk when hashing a non-contiguous array
_NAN_BITS = struct.pack("<d", float("nan"))
_pack_len = struct.Struct("<Q").pack
_pack_f64 = struct.Struct("<d").pack


# ---------------------------------------------------------------------------- hash_value

def hash_value(value: Any, *, path: str = "value") -> str:
    """Hex sha256 of the canonical tagged encoding of ``value`` (see the module docstring).

    Raises :class:`~hither.errors.SerializationError` naming the path of an unsupported
    value (e.g. ``kw['cfg'][2]``), of a reference cycle or of containers nested deeper than
    :data:`MAX_DEPTH`.
    """
    t = type(value)
    if t is int and -_INT_LIMIT <= value < _INT_LIMIT:  # the common small case, directly
        return hashlib.sha256(_INT_HEAD + value.to_bytes(8, "little", signed=True)).hexdigest()
    out = [_SCHEME]
    _Hasher(out).add(value, path, 0)
    return hashlib.sha256(b"".join(out)).hexdigest()


_INT_HEAD = _SCHEME + b"i"


def _fail(trail: Trail, make_message: Callable[[str], str]) -> SerializationError:
    path = render_path(trail)
    return SerializationError(make_message(path), path)


def _unsupported(value: Any) -> Callable[[str], str]:
    return lambda path: unsupported_type_message(value, path).replace(
        "cannot encode", "cannot hash", 1)


def _too_deep(path: str) -> str:
    return (f"containers nested more than {MAX_DEPTH} deep (the limit for values hither "
            f"hashes, stores or sends to a worker) at {path}: flatten the structure, or pass "
            "it as an array or a File")


def _cycle(value: Any) -> Callable[[str], str]:
    name = type(value).__qualname__
    return lambda path: (f"cannot use value of type {name!r} at {path}: reference cycle "
                         "(the container contains itself)")


def _float_bits(value: float) -> bytes:
    return _pack_f64(value) if value == value else _NAN_BITS


class _Hasher:
    def __init__(self, out: list[bytes]) -> None:
        self.out = out
        self.active: set[int] = set()

    def enter(self, value: Any, trail: Trail, depth: int) -> None:
        if depth >= MAX_DEPTH:
            raise _fail(trail, _too_deep)
        if id(value) in self.active:
            raise _fail(trail, _cycle(value))
        self.active.add(id(value))

    def encoded(self, value: Any, trail: Trail, depth: int) -> bytes:
        """The encoding of ``value`` alone, for sorting dict keys and set elements."""
        sub = _Hasher([])
        sub.active = self.active
        sub.add(value, trail, depth)
        return b"".join(sub.out)

    def add(self, value: Any, trail: Trail, depth: int) -> None:
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
            if len(raw) <= _SMALL_BYTES:
                out.append(b"s" + _pack_len(len(raw)) + raw)
            else:
                out.append(b"U" + _pack_len(len(raw)) + _buffer_digest(raw))
        elif t is list or t is tuple:
            self.enter(value, trail, depth)
            out.append((b"l" if t is list else b"t") + _pack_len(len(value)))
            add = self.add
            for i, x in enumerate(value):
                add(x, (trail, i, _IDX), depth + 1)
            self.active.discard(id(value))
        elif t is dict:
            self.enter(value, trail, depth)
            pairs = []
            for key, x in value.items():
                pairs.append((self.encoded(key, (trail, key, _DICT_KEY), depth + 1), key, x))
            pairs.sort(key=lambda pair: pair[0])
            out.append(b"d" + _pack_len(len(pairs)))
            for key_bytes, key, x in pairs:
                out.append(key_bytes)
                self.add(x, (trail, key, _KEY), depth + 1)
            self.active.discard(id(value))
        elif t is set or t is frozenset:
            self.enter(value, trail, depth)
            items = sorted(self.encoded(x, (trail, None, _SET_ITEM), depth + 1) for x in value)
            out.append((b"S" if t is set else b"Z") + _pack_len(len(items)))
            out.extend(items)
            self.active.discard(id(value))
        elif t is bytes or t is bytearray:
            if len(value) <= _SMALL_BYTES:
                out.append(b"b" + _pack_len(len(value)) + bytes(value))
            else:
                out.append(b"B" + _pack_len(len(value)) + _buffer_digest(value))
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
    """BLAKE3 of the array's bytes in C order, without copying a C-contiguous array."""
    if arr.flags.c_contiguous:
        return _buffer_digest(arr.reshape(-1).view(np.uint8))
    hasher = blake3.blake3(max_threads=_threads())
    # buffered C-order iteration copies at most one chunk at a time
    for chunk in np.nditer(arr, flags=["external_loop", "buffered", "zerosize_ok"],
                           buffersize=max(_ARRAY_CHUNK // arr.itemsize, 1), order="C"):
        hasher.update(np.ascontiguousarray(chunk).view(np.uint8))
    return hasher.digest()


# ---------------------------------------------------------------------------- large buffers

_MEMO_MIN = 1 << 20  # smaller buffers are hashed with BLAKE3 directly (<= 0.3 ms)
_MEMO_MAX = 1024
_SEED = int.from_bytes(os.urandom(8), "little")
_digests: OrderedDict[bytes, bytes] = OrderedDict()
_digests_lock = threading.Lock()
_multithreaded = {"ok": True}


def _no_threads_after_fork() -> None:
    # BLAKE3's worker threads (a Rust thread pool) do not survive fork: a child that used
    # the pool inherited from its parent would wait forever
    _multithreaded["ok"] = False


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_no_threads_after_fork)


_AUTO_THREADS = blake3.blake3.AUTO


def _threads() -> int:
    return _AUTO_THREADS if _multithreaded["ok"] else 1


def _buffer_digest(buf: Any) -> bytes:
    """The 32-byte BLAKE3 digest of a C-contiguous buffer (memoized for large buffers)."""
    view = memoryview(buf)
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    buf, size = view, view.nbytes
    if size < _MEMO_MIN:
        return blake3.blake3(buf).digest()
    probe = xxhash.xxh3_128(buf, seed=_SEED).digest() + _pack_len(size)
    with _digests_lock:
        hit = _digests.get(probe)
        if hit is not None:
            _digests.move_to_end(probe)
            return hit
    digest = blake3.blake3(buf, max_threads=_threads()).digest()
    if xxhash.xxh3_128(buf, seed=_SEED).digest() + _pack_len(size) == probe:
        with _digests_lock:
            _digests[probe] = digest
            while len(_digests) > _MEMO_MAX:
                _digests.popitem(last=False)
    return digest


# ---------------------------------------------------------------------------- small structures

def canonical_json(obj: Any) -> bytes:
    """Compact UTF-8 JSON with sorted keys; NaN and infinities raise ``ValueError``.

    Lone surrogates (from ``os.fsdecode`` of names that are not UTF-8) are kept, encoded
    with ``surrogatepass``.
    """
    return _CANONICAL.encode(obj).encode("utf-8", "surrogatepass")


# one encoder: json.dumps with options builds a new one per call
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                              allow_nan=False)


def hash_struct(obj: Any) -> str:
    """Hex sha256 of :func:`canonical_json` of a small JSON-like structure."""
    return hashlib.sha256(canonical_json(obj)).hexdigest()


# ---------------------------------------------------------------------------- files

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


def _filehash_db() -> str | None:
    db = os.environ.get("HITHER_FILEHASH_DB")
    if db is None:
        import platformdirs

        db = str(platformdirs.user_cache_path("hither") / "filehash.sqlite")
    return db


_files = FileMemo(8192, PersistentStatMemo(_filehash_db))


def hash_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file's content, memoized by its real path and stat signature.

    The signature is (device, inode, size, mtime, ctime): an edit restoring the mtime
    (``cp -p``, ``rsync -t``) still changes the ctime. The memo lives in this process and in
    a small sqlite database shared by processes (``HITHER_FILEHASH_DB``, default in the user
    cache dir; set it to an empty string to disable), so an unchanged large file is read
    once. Files changed in the two seconds before they are read are not memoized, as a
    rewrite within the filesystem's timestamp granularity would be invisible (see
    :mod:`hither_store._statmemo`). Raises ``OSError`` if the file cannot be read.
    """
    real = os.path.realpath(os.fspath(path))
    st = os.stat(real)
    if not stat.S_ISREG(st.st_mode):
        raise IsADirectoryError(f"not a regular file: {real!r}")
    return _files.get(real, _read_file_sha256, st)


def clear_file_hash_memo(*, persistent: bool = False) -> None:
    """Forget memoized file hashes in this process (for tests).

    The persistent database is re-opened on next use (so ``HITHER_FILEHASH_DB`` is read
    again); with ``persistent=True`` its rows are deleted as well.
    """
    _files.clear(persistent=persistent)


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
