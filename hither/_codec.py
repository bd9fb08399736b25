"""Values <-> JSON manifest plus blobs.

This module is shipped as *source* into containers and foreign Python environments, so it
uses only the standard library (numpy is imported lazily, only when an array or numpy scalar
is met), keeps to Python 3.8 syntax and imports nothing from ``hither``. It may be imported
as ``hither._codec`` or as a top-level ``_codec``.

Manifest format
---------------
Plain JSON stands for itself: ``None``, ``bool``, ``str`` of at most :data:`STR_INLINE_LIMIT`
characters, ``int`` with ``|v| < 2**63``, finite ``float``, ``list`` and ``dict`` whose keys
are such ``str``, already in sorted order (so canonical, key-sorted JSON keeps insertion
order) and never the tag key ``"~"``. Everything else is a *tagged node*, a JSON object
carrying the tag key ``"~"``::

    {"~": "int", "v": "-1f"}                      big int, hexadecimal
    {"~": "float", "v": "nan" | "inf" | "-inf"}   non-finite float ("nan:<hex bits>" for odd NaNs)
    {"~": "complex", "v": [re, im]}               re, im encoded as floats
    {"~": "tuple" | "set" | "frozenset", "v": [...]}
    {"~": "dict", "v": [[k, v], ...]}             any other dict, insertion order kept
    {"~": "b64", "v": "<base64>"}                 small bytes / bytearray (decoded as bytes)
    {"~": "bytes", "ref": ref, "size": n}         large bytes, stored as a blob
    {"~": "str", "ref": ref, "size": n}           long str, stored as a blob of n bytes (UTF-8,
                                                  lone surrogates kept with "surrogatepass")
    {"~": "npy", "ref" | "b64": ..., "dtype": ..., "shape": [...]}   numpy array as .npy
    {"~": "npscalar", "dtype": "<f8", "v": "<base64 raw bytes>"}     numpy scalar
    {"~": "npscalar", "npy": "<base64 .npy of a 0-d array>"}        structured numpy scalar
    {"~": "file", "ref": ref, "name": "data.csv"}                    a File, by content

A user dict is tagged as soon as one key is not a ``str`` or equals ``"~"``, so a dict that
merely looks like a tagged node is never mistaken for one.

Strings that are not valid UTF-8 (lone surrogates, as ``os.fsdecode`` makes of undecodable
file names) are plain ``str`` too: JSON text written with ``ensure_ascii`` escapes them.

Containers (lists, tuples, dicts, sets, frozensets) nested more than :data:`MAX_DEPTH` deep
are refused by :func:`encode` (:class:`EncodeError`) and by :func:`decode`
(:class:`DecodeError`), which raises nothing else whatever the manifest holds.
"""

from __future__ import annotations

import base64
import io
import json
import mmap
import os
import struct
import sys
from typing import Any, Callable, Dict, Iterator, List, Optional, Set, Tuple, Union

__all__ = [
    "BLOB_KINDS",
    "DecodeError",
    "EncodeError",
    "File",
    "MAX_DEPTH",
    "STR_INLINE_LIMIT",
    "SUPPORTED_TYPES",
    "TAG",
    "decode",
    "dumps_manifest",
    "encode",
    "loads_manifest",
    "render_path",
    "unsupported_type_message",
    "walk_refs",
]

TAG = "~"
"""The reserved key that marks a tagged manifest node."""

SUPPORTED_TYPES = (
    "None, bool, int, float, complex, str, bytes, bytearray, list, tuple, dict, set, "
    "frozenset, numpy arrays and scalars (non-object dtypes), hither.File"
)
"""Human-readable list of the value types the codec and the key hasher accept."""

MAX_DEPTH = 200
"""How deep containers may nest in a value that is hashed, stored or sent to a worker."""

STR_INLINE_LIMIT = 1 << 16
"""Longer ``str`` values are stored as blobs, not inside the manifest."""

BLOB_KINDS = ("npy", "bytes", "file", "str")
"""The tags of manifest nodes that reference a blob through their ``"ref"``."""

_INT_LIMIT = 1 << 63
_STR_CHUNK = 1 << 24  # characters encoded at a time when a long str is written to a blob

PutBlob = Callable[[str, Any], str]
GetBlob = Callable[[str, str], Any]

# A "trail" is the lazily rendered location of a value: either the root path string or a
# tuple (parent_trail, key, kind). Rendering only happens when an error is raised, so the
# common case does not build one path string per element.
_IDX, _KEY, _DICT_KEY, _SET_ITEM = 0, 1, 2, 3
Trail = Union[str, Tuple[Any, Any, int]]


def render_path(trail: Trail) -> str:
    """Render a trail (root path string or ``(parent, key, kind)`` tuple) as text.

    Produces paths like ``kw['cfg'][2]``; a dict key itself shows as ``<key 'k'>`` and a set
    element as ``<set element>``.
    """
    parts = []  # type: List[str]
    while not isinstance(trail, str):
        trail, key, kind = trail
        if kind == _IDX:
            parts.append("[%d]" % key)
        elif kind == _KEY:
            parts.append("[%s]" % _short_repr(key))
        elif kind == _DICT_KEY:
            parts.append("<key %s>" % _short_repr(key))
        else:
            parts.append("<set element>")
    parts.append(trail)
    return "".join(reversed(parts))


def _short_repr(value: Any, limit: int = 60) -> str:
    text = repr(value)
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return text


def unsupported_type_message(value: Any, path: str) -> str:
    """The error text for a value of an unsupported type found at ``path``."""
    name = type(value).__qualname__
    module = type(value).__module__
    if module == "numpy" or module.startswith("numpy."):
        name = "numpy." + name
    return "cannot encode value of type %r at %s: supported types are %s" % (
        name, path, SUPPORTED_TYPES)


class EncodeError(TypeError):
    """A value cannot be encoded; ``path`` names where it sits, e.g. ``kw['cfg'][2]``."""

    def __init__(self, message: str, path: str = "") -> None:
        super().__init__(message)
        self.path = path


class DecodeError(ValueError):
    """A manifest is malformed or refers to a blob of the wrong kind."""


class File:
    """A file passed into or out of a job *by content*.

    ``File(path)`` records the absolute path. Encoding stores the file's bytes as a blob;
    decoding gives back a ``File`` pointing at wherever the content now lives.
    """

    __slots__ = ("_path", "_sha256")
    _path: str
    _sha256: Optional[str]

    def __init__(self, path: Union[str, "os.PathLike[str]", bytes]) -> None:
        raw = os.fspath(path)
        if isinstance(raw, bytes):
            raw = os.fsdecode(raw)
        self._path = os.path.abspath(raw)
        self._sha256 = None

    @classmethod
    def _snapshot(cls, path: str, sha256: str) -> "File":
        """A File whose content is known to hash to ``sha256`` (an immutable snapshot in a
        store, made by the scheduler): hashing and storing it need not read it again."""
        f = cls(path)
        f._sha256 = sha256
        return f

    @property
    def path(self) -> str:
        """The absolute path of the file."""
        return self._path

    @property
    def name(self) -> str:
        """The file's base name."""
        return os.path.basename(self._path)

    def __fspath__(self) -> str:
        return self._path

    def __repr__(self) -> str:
        return "File(%r)" % self._path

    def __eq__(self, other: object) -> bool:
        if isinstance(other, File):
            return self._path == other._path
        return NotImplemented

    def __hash__(self) -> int:
        return hash(("hither.File", self._path))


# ---------------------------------------------------------------------------- plain fast path

def _is_plain(value: Any, active: Set[int], depth: int = 0) -> bool:
    """True if ``value`` is its own manifest (plain JSON, nothing to tag)."""
    t = type(value)
    if t is str:
        return len(value) <= STR_INLINE_LIMIT
    if t is bool or value is None:
        return True
    if t is int:
        return -_INT_LIMIT < value < _INT_LIMIT
    if t is float:
        return value - value == 0.0  # false for nan and +-inf
    if t is list:
        items = value
    elif t is dict:
        prev = None
        for key in value:
            if type(key) is not str or key == TAG or (prev is not None and not prev < key) \
                    or len(key) > STR_INLINE_LIMIT:
                return False
            prev = key
        items = value.values()
    else:
        return False
    if id(value) in active or depth >= MAX_DEPTH:
        return False  # a cycle or too deep: let the full encoder report it with its path
    active.add(id(value))
    for x in items:
        tx = type(x)
        if tx is str:
            if len(x) <= STR_INLINE_LIMIT:
                continue
            return False
        if tx is bool or x is None:
            continue
        if tx is int:
            if -_INT_LIMIT < x < _INT_LIMIT:
                continue
            return False
        if tx is float:
            if x - x == 0.0:
                continue
            return False
        if not _is_plain(x, active, depth + 1):
            return False
    active.discard(id(value))
    return True


# ---------------------------------------------------------------------------- encoding

def encode(value: Any, put_blob: PutBlob, *, path: str = "value",
           inline_limit: int = 4096) -> Any:
    """Encode ``value`` as a JSON-able manifest, storing large parts through ``put_blob``.

    ``put_blob(kind, write)`` is called with ``kind`` ``"npy"`` or ``"bytes"`` and a callable
    that writes the content into a binary file object, or with ``kind`` ``"file"`` and a
    source path; it returns an opaque ref string. Bytes up to ``inline_limit`` long and arrays
    smaller than ``inline_limit`` bytes are inlined as base64; ``str`` longer than
    :data:`STR_INLINE_LIMIT` characters goes to a ``"bytes"`` blob. Raises
    :class:`EncodeError` naming ``path`` (extended as ``path[2]['key']``) for unsupported
    values, cycles and containers nested deeper than :data:`MAX_DEPTH`.
    """
    if _is_plain(value, set()):
        return value
    return _Encoder(put_blob, inline_limit).enc(value, path, 0)


def _float_node(value: float) -> Any:
    if value - value == 0.0:
        return value
    if value != value:
        bits = struct.unpack("<Q", struct.pack("<d", value))[0]
        canonical = struct.unpack("<Q", struct.pack("<d", float("nan")))[0]
        text = "nan" if bits == canonical else "nan:%016x" % bits
    else:
        text = "inf" if value > 0 else "-inf"
    return {TAG: "float", "v": text}


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _canonical_sort(nodes: List[Any]) -> List[Any]:
    return sorted(nodes, key=lambda node: json.dumps(
        node, sort_keys=True, separators=(",", ":"), ensure_ascii=False))


class _Encoder:
    def __init__(self, put_blob: PutBlob, inline_limit: int) -> None:
        self.put_blob = put_blob
        self.inline_limit = inline_limit
        self.active = set()  # type: Set[int]

    def fail(self, make_message: Callable[[str], str], trail: Trail) -> EncodeError:
        path = render_path(trail)
        return EncodeError(make_message(path), path)

    def enter(self, value: Any, trail: Trail, depth: int) -> None:
        if depth >= MAX_DEPTH:
            raise self.fail(lambda path: "cannot encode containers nested more than %d "
                            "deep at %s" % (MAX_DEPTH, path), trail)
        if id(value) in self.active:
            name = type(value).__qualname__
            raise self.fail(lambda path: "cannot encode value of type %r at %s: reference "
                            "cycle (the container contains itself)" % (name, path), trail)
        self.active.add(id(value))

    def items(self, values: Any, trail: Trail, depth: int) -> List[Any]:
        out = []  # type: List[Any]
        append = out.append
        for i, x in enumerate(values):
            t = type(x)
            if t is str and len(x) <= STR_INLINE_LIMIT:
                append(x)
            elif t is bool or x is None:
                append(x)
            elif t is int and -_INT_LIMIT < x < _INT_LIMIT:
                append(x)
            elif t is float and x - x == 0.0:
                append(x)
            else:
                append(self.enc(x, (trail, i, _IDX), depth))
        return out

    def enc(self, value: Any, trail: Trail, depth: int) -> Any:
        t = type(value)
        if t is str:
            return value if len(value) <= STR_INLINE_LIMIT else self.long_str(value)
        if t is bool or value is None:
            return value
        if t is int:
            if -_INT_LIMIT < value < _INT_LIMIT:
                return value
            return {TAG: "int", "v": format(value, "x")}
        if t is float:
            return _float_node(value)
        if t is list or t is tuple:
            self.enter(value, trail, depth)
            out = self.items(value, trail, depth + 1)
            self.active.discard(id(value))
            return out if t is list else {TAG: "tuple", "v": out}
        if t is dict:
            return self.dict(value, trail, depth)
        if t is bytes or t is bytearray:
            return self.bytes(bytes(value), trail)
        if t is set or t is frozenset:
            self.enter(value, trail, depth)
            nodes = [self.enc(x, (trail, None, _SET_ITEM), depth + 1) for x in value]
            self.active.discard(id(value))
            return {TAG: t.__name__, "v": _canonical_sort(nodes)}
        if t is complex:
            return {TAG: "complex", "v": [_float_node(value.real), _float_node(value.imag)]}
        if isinstance(value, File):
            return self.file(value, trail)
        np = sys.modules.get("numpy")
        if np is not None:
            if isinstance(value, np.ndarray):
                return self.array(np, value, trail)
            if isinstance(value, np.generic):
                return self.np_scalar(np, value, trail)
        raise self.fail(lambda path: unsupported_type_message(value, path), trail)

    def dict(self, value: Dict[Any, Any], trail: Trail, depth: int) -> Any:
        self.enter(value, trail, depth)
        plain = True
        prev = None
        for key in value:
            if type(key) is not str or key == TAG or (prev is not None and not prev < key) \
                    or len(key) > STR_INLINE_LIMIT:
                plain = False
                break
            prev = key
        if plain:
            out = {}  # type: Any
            for key, x in value.items():
                out[key] = self.enc(x, (trail, key, _KEY), depth + 1)
        else:
            pairs = []
            for key, x in value.items():
                pairs.append([self.enc(key, (trail, key, _DICT_KEY), depth + 1),
                              self.enc(x, (trail, key, _KEY), depth + 1)])
            out = {TAG: "dict", "v": pairs}
        self.active.discard(id(value))
        return out

    def bytes(self, data: bytes, trail: Trail) -> Any:
        if len(data) <= self.inline_limit:
            return {TAG: "b64", "v": _b64(data)}

        def write(fileobj: Any) -> None:
            fileobj.write(data)

        return {TAG: "bytes", "ref": self.put_blob("bytes", write), "size": len(data)}

    def long_str(self, text: str) -> Any:
        size = [0]

        def write(fileobj: Any) -> None:
            size[0] = 0
            for i in range(0, len(text), _STR_CHUNK):
                chunk = text[i:i + _STR_CHUNK].encode("utf-8", "surrogatepass")
                fileobj.write(chunk)
                size[0] += len(chunk)

        ref = self.put_blob("bytes", write)
        return {TAG: "str", "ref": ref, "size": size[0]}

    def file(self, value: File, trail: Trail) -> Any:
        if not os.path.isfile(value.path):
            what = "does not exist" if not os.path.exists(value.path) else "is not a regular file"
            raise self.fail(lambda path: "cannot encode File at %s: %r %s" % (
                path, value.path, what), trail)
        return {TAG: "file", "ref": self.put_blob("file", value), "name": value.name}

    def array(self, np: Any, arr: Any, trail: Trail) -> Any:
        if type(arr) is not np.ndarray and not isinstance(arr, np.memmap):
            raise self.fail(lambda path: "cannot encode numpy.ndarray subclass %r at %s: "
                            "convert it with numpy.asarray() first"
                            % (type(arr).__qualname__, path), trail)
        if arr.dtype.hasobject:
            raise self.fail(lambda path: "cannot encode numpy array with dtype %s at %s: "
                            "object (and other pickled) dtypes are not supported"
                            % (arr.dtype, path), trail)
        node = {TAG: "npy", "dtype": _dtype_label(arr.dtype),
                "shape": list(arr.shape)}  # type: Dict[str, Any]

        def write(fileobj: Any) -> None:
            np.lib.format.write_array(fileobj, arr, allow_pickle=False)

        if arr.nbytes < self.inline_limit:
            buf = io.BytesIO()
            write(buf)
            node["b64"] = _b64(buf.getvalue())
        else:
            node["ref"] = self.put_blob("npy", write)
        return node

    def np_scalar(self, np: Any, value: Any, trail: Trail) -> Any:
        dtype = value.dtype
        if dtype.hasobject:
            raise self.fail(lambda path: unsupported_type_message(value, path), trail)
        if dtype.names is None and dtype.subdtype is None:
            return {TAG: "npscalar", "dtype": dtype.str, "v": _b64(value.tobytes())}
        buf = io.BytesIO()
        np.lib.format.write_array(buf, np.array(value), allow_pickle=False)
        return {TAG: "npscalar", "npy": _b64(buf.getvalue())}


def _dtype_label(dtype: Any) -> str:
    """Short dtype text for manifests (informational; the .npy header is authoritative)."""
    return dtype.str if dtype.names is None and dtype.subdtype is None else str(dtype)


# ---------------------------------------------------------------------------- decoding

def decode(manifest: Any, get_blob: GetBlob) -> Any:
    """Rebuild the value encoded in ``manifest``.

    ``get_blob(ref, kind)`` returns the blob's bytes or a filesystem path. Arrays given by
    path are memory-mapped copy-on-write (no copy, writable, the file is never modified).
    Raises :class:`DecodeError`, and nothing else, for whatever cannot be decoded: a
    malformed or too deeply nested manifest, an unknown tag, a blob that cannot be read
    (the error of ``get_blob`` is the cause) or that is not of the kind its node says.
    """
    try:
        return _Decoder(get_blob).dec(manifest, 0)
    except DecodeError:
        raise
    except RecursionError:
        raise DecodeError("manifest nested too deeply") from None
    except Exception as exc:  # noqa: BLE001 - anything a hostile manifest can provoke
        raise DecodeError("malformed manifest: %s: %s" % (type(exc).__name__, exc)) from exc


class _Decoder:
    def __init__(self, get_blob: GetBlob) -> None:
        self.get_blob = get_blob

    def dec(self, node: Any, depth: int) -> Any:
        t = type(node)
        if t is str or t is int or t is float or t is bool or node is None:
            return node
        if t is list:
            _check_depth(depth)
            return self.items(node, depth + 1)
        if t is dict:
            if TAG not in node:
                _check_depth(depth)
                return {key: self.dec(x, depth + 1) for key, x in node.items()}
            tag = node[TAG]
            handler = _DECODERS.get(tag) if type(tag) is str else None
            if handler is None:
                raise DecodeError("unknown manifest tag %r" % (tag,))
            try:
                return handler(self, node, depth)
            except DecodeError:
                raise
            except (KeyError, TypeError, IndexError, ValueError, AttributeError,
                    OverflowError, struct.error) as exc:
                raise DecodeError("malformed %r node in manifest: %s: %s"
                                  % (tag, type(exc).__name__, exc)) from exc
        raise DecodeError("unexpected %s in manifest" % t.__name__)

    def items(self, nodes: Any, depth: int) -> List[Any]:
        if type(nodes) is not list:
            raise DecodeError("expected a JSON array in manifest, got %s" % type(nodes).__name__)
        dec = self.dec
        return [x if (type(x) is str or type(x) is int or type(x) is float) else dec(x, depth)
                for x in nodes]

    def blob(self, node: Any, kind: str) -> Any:
        """What ``get_blob`` gives for the node's ref; its failures become DecodeError."""
        ref = node["ref"]
        if type(ref) is not str:
            raise DecodeError("blob ref %r is not a string" % (ref,))
        try:
            return self.get_blob(ref, kind)
        except Exception as exc:  # noqa: BLE001 - any failure to read is a failure to decode
            raise DecodeError("%s blob %s cannot be read: %s" % (kind, ref, exc)) from exc

    def blob_bytes(self, node: Any) -> bytes:
        got = self.blob(node, "bytes")
        if isinstance(got, (bytes, bytearray, memoryview)):
            data = bytes(got)
        else:
            try:
                with open(os.fspath(got), "rb") as fh:
                    data = fh.read()
            except OSError as exc:
                raise DecodeError("bytes blob %s cannot be read: %s" % (node["ref"], exc)) \
                    from exc
        _check_size(node, len(data))
        return data

    def d_tuple(self, node: Any, depth: int) -> Any:
        _check_depth(depth)
        return tuple(self.items(node["v"], depth + 1))

    def d_set(self, node: Any, depth: int) -> Any:
        _check_depth(depth)
        return set(self.items(node["v"], depth + 1))

    def d_frozenset(self, node: Any, depth: int) -> Any:
        _check_depth(depth)
        return frozenset(self.items(node["v"], depth + 1))

    def d_dict(self, node: Any, depth: int) -> Any:
        _check_depth(depth)
        out = {}
        pairs = node["v"]
        if type(pairs) is not list:
            raise DecodeError("malformed 'dict' node in manifest: 'v' is not a list")
        for pair in pairs:
            if type(pair) is not list or len(pair) != 2:
                raise DecodeError("malformed 'dict' node in manifest: an item is not a pair")
            out[self.dec(pair[0], depth + 1)] = self.dec(pair[1], depth + 1)
        return out

    def d_int(self, node: Any, depth: int) -> Any:
        text = node["v"]
        if type(text) is not str:
            raise DecodeError("malformed 'int' node in manifest")
        return int(text, 16)

    def d_float(self, node: Any, depth: int) -> Any:
        return _decode_float(node)

    def d_complex(self, node: Any, depth: int) -> Any:
        re, im = node["v"]
        return complex(_decode_float(re), _decode_float(im))

    def d_b64(self, node: Any, depth: int) -> Any:
        return base64.b64decode(_text(node, "v"), validate=True)

    def d_bytes(self, node: Any, depth: int) -> Any:
        return self.blob_bytes(node)

    def d_str(self, node: Any, depth: int) -> Any:
        got = self.blob(node, "str")
        if isinstance(got, (bytes, bytearray, memoryview)):
            data = bytes(got)
            _check_size(node, len(data))
            return data.decode("utf-8", "surrogatepass")
        # decoded straight from the page cache: no second copy of a text of hundreds of MB
        with open(os.fspath(got), "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            _check_size(node, size)
            if size == 0:
                return ""
            try:
                mapped = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
            except (OSError, ValueError):  # filesystems that cannot mmap
                return fh.read().decode("utf-8", "surrogatepass")
        try:
            with memoryview(mapped) as view:
                return str(view, "utf-8", "surrogatepass")
        finally:
            mapped.close()

    def d_file(self, node: Any, depth: int) -> Any:
        got = self.blob(node, "file")
        if isinstance(got, (bytes, bytearray, memoryview)):
            raise DecodeError("get_blob must return a path for a 'file' blob, got bytes")
        return File(got)

    def d_npy(self, node: Any, depth: int) -> Any:
        import numpy as np

        if "b64" in node:
            arr = np.load(io.BytesIO(base64.b64decode(_text(node, "b64"), validate=True)),
                          allow_pickle=False)
        else:
            got = self.blob(node, "npy")
            if isinstance(got, (bytes, bytearray, memoryview)):
                arr = np.load(io.BytesIO(bytes(got)), allow_pickle=False)
            else:
                path = os.fspath(got)
                try:
                    arr = np.load(path, mmap_mode="c", allow_pickle=False)
                except OSError:
                    arr = np.load(path, allow_pickle=False)  # filesystems that cannot mmap
                # a plain ndarray view whose base keeps the copy-on-write map alive
                arr = arr.view(np.ndarray)
        if type(arr) is not np.ndarray:  # np.load gives an NpzFile for a zip archive
            raise DecodeError("'npy' node does not hold a .npy array")
        # structured dtypes print differently across numpy versions: their shape is checked
        simple = arr.dtype.names is None
        if node.get("shape") != list(arr.shape) or (simple and node.get("dtype") != arr.dtype.str):
            raise DecodeError("'npy' node says %s %r, its data holds %s %r" % (
                node.get("dtype"), node.get("shape"), _dtype_label(arr.dtype), list(arr.shape)))
        return arr

    def d_npscalar(self, node: Any, depth: int) -> Any:
        import numpy as np

        if "npy" in node:
            arr = np.load(io.BytesIO(base64.b64decode(_text(node, "npy"), validate=True)),
                          allow_pickle=False)
            if type(arr) is not np.ndarray or arr.shape != ():
                raise DecodeError("'npscalar' node does not hold a 0-d array")
            return arr[()]
        dtype = np.dtype(_text(node, "dtype"))
        if dtype.hasobject:
            raise DecodeError("'npscalar' node has an object dtype")
        raw = base64.b64decode(_text(node, "v"), validate=True)
        return np.ndarray(shape=(), dtype=dtype, buffer=raw)[()]


def _check_size(node: Any, actual: int) -> None:
    size = node["size"]
    if type(size) is not int or size != actual:
        raise DecodeError("blob %s holds %d bytes, its node says %r" % (node["ref"], actual, size))


def _check_depth(depth: int) -> None:
    if depth >= MAX_DEPTH:
        raise DecodeError("manifest nests containers more than %d deep" % MAX_DEPTH)


def _text(node: Any, field: str) -> str:
    value = node[field]
    if type(value) is not str:
        raise DecodeError("field %r of a %r node is not a string" % (field, node.get(TAG)))
    return value


def _decode_float(node: Any) -> float:
    if type(node) is float or type(node) is int:
        return float(node)
    text = _text(node, "v")
    if text.startswith("nan:"):
        return struct.unpack("<d", struct.pack("<Q", int(text[4:], 16)))[0]
    if text not in ("nan", "inf", "-inf"):
        raise DecodeError("bad float %r in manifest" % (text,))
    return float(text)


_DECODERS = {
    "tuple": _Decoder.d_tuple,
    "set": _Decoder.d_set,
    "frozenset": _Decoder.d_frozenset,
    "dict": _Decoder.d_dict,
    "int": _Decoder.d_int,
    "float": _Decoder.d_float,
    "complex": _Decoder.d_complex,
    "b64": _Decoder.d_b64,
    "bytes": _Decoder.d_bytes,
    "str": _Decoder.d_str,
    "file": _Decoder.d_file,
    "npy": _Decoder.d_npy,
    "npscalar": _Decoder.d_npscalar,
}  # type: Dict[str, Callable[[_Decoder, Any, int], Any]]


# ---------------------------------------------------------------------------- helpers

def walk_refs(manifest: Any) -> Iterator[str]:
    """Yield every blob ref in ``manifest`` (for the store's garbage collector)."""
    stack = [manifest]
    while stack:
        node = stack.pop()
        t = type(node)
        if t is list:
            stack.extend(node)
        elif t is dict:
            if node.get(TAG) in BLOB_KINDS and "ref" in node:
                yield node["ref"]
            else:
                stack.extend(node.values())


def dumps_manifest(manifest: Any) -> str:
    """Canonical compact JSON text of a manifest (sorted keys, no ASCII escaping)."""
    return json.dumps(manifest, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=True)


def loads_manifest(text: Union[str, bytes]) -> Any:
    """Parse manifest JSON text produced by :func:`dumps_manifest`."""
    return json.loads(text)

