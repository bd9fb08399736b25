"""Values <-> JSON manifest plus blobs.

This module is shipped as *source* into containers and foreign Python environments, so it
uses only the standard library (numpy is imported lazily, only when an array or numpy scalar
is met), keeps to Python 3.8 syntax and imports nothing from ``hither``. It may be imported
as ``hither._codec`` or as a top-level ``_codec``.

Manifest format
---------------
Plain JSON stands for itself: ``None``, ``bool``, ``str``, ``int`` with ``|v| < 2**63``,
finite ``float``, ``list`` and ``dict`` whose keys are ``str``, already in sorted order
(so canonical, key-sorted JSON keeps insertion order) and never the tag key ``"~"``.
Everything else is a *tagged node*, a JSON object carrying the tag key ``"~"``::

    {"~": "int", "v": "-1f"}                      big int, hexadecimal
    {"~": "float", "v": "nan" | "inf" | "-inf"}   non-finite float ("nan:<hex bits>" for odd NaNs)
    {"~": "complex", "v": [re, im]}               re, im encoded as floats
    {"~": "tuple" | "set" | "frozenset", "v": [...]}
    {"~": "dict", "v": [[k, v], ...]}             any other dict, insertion order kept
    {"~": "b64", "v": "<base64>"}                 small bytes / bytearray (decoded as bytes)
    {"~": "bytes", "ref": ref, "size": n}         large bytes, stored as a blob
    {"~": "npy", "ref" | "b64": ..., "dtype": ..., "shape": [...]}   numpy array as .npy
    {"~": "npscalar", "dtype": "<f8", "v": "<base64 raw bytes>"}     numpy scalar
    {"~": "npscalar", "npy": "<base64 .npy of a 0-d array>"}        structured numpy scalar
    {"~": "file", "ref": ref, "name": "data.csv"}                    a File, by content

A user dict is tagged as soon as one key is not a ``str`` or equals ``"~"``, so a dict that
merely looks like a tagged node is never mistaken for one.
"""

from __future__ import annotations

import base64
import io
import json
import os
import struct
import sys
from typing import Any, Callable, Dict, Iterator, List, Set, Tuple, Union

__all__ = [
    "DecodeError",
    "EncodeError",
    "File",
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

_INT_LIMIT = 1 << 63
_BLOB_KINDS = ("npy", "bytes", "file")

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

def _is_plain(value: Any, active: Set[int]) -> bool:
    """True if ``value`` is its own manifest (plain JSON, nothing to tag)."""
    t = type(value)
    if t is str or t is bool or value is None:
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
            if type(key) is not str or key == TAG or (prev is not None and not prev < key):
                return False
            prev = key
        items = value.values()
    else:
        return False
    if id(value) in active:
        return False  # a cycle: let the full encoder report it with its path
    active.add(id(value))
    for x in items:
        tx = type(x)
        if tx is str or tx is bool or x is None:
            continue
        if tx is int:
            if -_INT_LIMIT < x < _INT_LIMIT:
                continue
            return False
        if tx is float:
            if x - x == 0.0:
                continue
            return False
        if not _is_plain(x, active):
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
    smaller than ``inline_limit`` bytes are inlined as base64. Raises :class:`EncodeError`
    naming ``path`` (extended as ``path[2]['key']``) for unsupported values and cycles.
    """
    if _is_plain(value, set()):
        return value
    return _Encoder(put_blob, inline_limit).enc(value, path)


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

    def enter(self, value: Any, trail: Trail) -> None:
        if id(value) in self.active:
            name = type(value).__qualname__
            raise self.fail(lambda path: "cannot encode value of type %r at %s: reference "
                            "cycle (the container contains itself)" % (name, path), trail)
        self.active.add(id(value))

    def items(self, values: Any, trail: Trail) -> List[Any]:
        out = []
        append = out.append
        for i, x in enumerate(values):
            t = type(x)
            if t is str or t is bool or x is None:
                append(x)
            elif t is int and -_INT_LIMIT < x < _INT_LIMIT:
                append(x)
            elif t is float and x - x == 0.0:
                append(x)
            else:
                append(self.enc(x, (trail, i, _IDX)))
        return out

    def enc(self, value: Any, trail: Trail) -> Any:
        t = type(value)
        if t is str or t is bool or value is None:
            return value
        if t is int:
            if -_INT_LIMIT < value < _INT_LIMIT:
                return value
            return {TAG: "int", "v": format(value, "x")}
        if t is float:
            return _float_node(value)
        if t is list or t is tuple:
            self.enter(value, trail)
            out = self.items(value, trail)
            self.active.discard(id(value))
            return out if t is list else {TAG: "tuple", "v": out}
        if t is dict:
            return self.dict(value, trail)
        if t is bytes or t is bytearray:
            return self.bytes(bytes(value), trail)
        if t is set or t is frozenset:
            self.enter(value, trail)
            nodes = [self.enc(x, (trail, None, _SET_ITEM)) for x in value]
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

    def dict(self, value: Dict[Any, Any], trail: Trail) -> Any:
        self.enter(value, trail)
        plain = True
        prev = None
        for key in value:
            if type(key) is not str or key == TAG or (prev is not None and not prev < key):
                plain = False
                break
            prev = key
        if plain:
            out = {}  # type: Any
            for key, x in value.items():
                out[key] = self.enc(x, (trail, key, _KEY))
        else:
            pairs = []
            for key, x in value.items():
                pairs.append([self.enc(key, (trail, key, _DICT_KEY)),
                              self.enc(x, (trail, key, _KEY))])
            out = {TAG: "dict", "v": pairs}
        self.active.discard(id(value))
        return out

    def bytes(self, data: bytes, trail: Trail) -> Any:
        if len(data) <= self.inline_limit:
            return {TAG: "b64", "v": _b64(data)}

        def write(fileobj: Any) -> None:
            fileobj.write(data)

        return {TAG: "bytes", "ref": self.put_blob("bytes", write), "size": len(data)}

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
    Raises :class:`DecodeError` for malformed manifests.
    """
    return _Decoder(get_blob).dec(manifest)


class _Decoder:
    def __init__(self, get_blob: GetBlob) -> None:
        self.get_blob = get_blob

    def dec(self, node: Any) -> Any:
        t = type(node)
        if t is list:
            return self.items(node)
        if t is dict:
            if TAG not in node:
                return {key: self.dec(x) for key, x in node.items()}
            tag = node[TAG]
            handler = _DECODERS.get(tag) if type(tag) is str else None
            if handler is None:
                raise DecodeError("unknown manifest tag %r" % (tag,))
            try:
                return handler(self, node)
            except (KeyError, TypeError, IndexError) as exc:
                raise DecodeError("malformed %r node in manifest: %s" % (tag, exc)) from exc
        if t is str or t is int or t is float or t is bool or node is None:
            return node
        raise DecodeError("unexpected %s in manifest" % t.__name__)

    def items(self, nodes: Any) -> List[Any]:
        if type(nodes) is not list:
            raise DecodeError("expected a JSON array in manifest, got %s" % type(nodes).__name__)
        dec = self.dec
        return [x if (type(x) is str or type(x) is int or type(x) is float) else dec(x)
                for x in nodes]

    def blob_bytes(self, ref: str, kind: str) -> bytes:
        got = self.get_blob(ref, kind)
        if isinstance(got, (bytes, bytearray, memoryview)):
            return bytes(got)
        with open(os.fspath(got), "rb") as fh:
            return fh.read()

    def d_tuple(self, node: Any) -> Any:
        return tuple(self.items(node["v"]))

    def d_set(self, node: Any) -> Any:
        return set(self.items(node["v"]))

    def d_frozenset(self, node: Any) -> Any:
        return frozenset(self.items(node["v"]))

    def d_dict(self, node: Any) -> Any:
        out = {}
        for key, x in node["v"]:
            out[self.dec(key)] = self.dec(x)
        return out

    def d_int(self, node: Any) -> Any:
        return int(node["v"], 16)

    def d_float(self, node: Any) -> Any:
        return _decode_float(node)

    def d_complex(self, node: Any) -> Any:
        re, im = node["v"]
        return complex(_decode_float(re), _decode_float(im))

    def d_b64(self, node: Any) -> Any:
        return base64.b64decode(node["v"])

    def d_bytes(self, node: Any) -> Any:
        return self.blob_bytes(node["ref"], "bytes")

    def d_file(self, node: Any) -> Any:
        got = self.get_blob(node["ref"], "file")
        if isinstance(got, (bytes, bytearray, memoryview)):
            raise DecodeError("get_blob must return a path for a 'file' blob, got bytes")
        return File(got)

    def d_npy(self, node: Any) -> Any:
        import numpy as np

        if "b64" in node:
            return np.load(io.BytesIO(base64.b64decode(node["b64"])), allow_pickle=False)
        got = self.get_blob(node["ref"], "npy")
        if isinstance(got, (bytes, bytearray, memoryview)):
            return np.load(io.BytesIO(bytes(got)), allow_pickle=False)
        path = os.fspath(got)
        try:
            arr = np.load(path, mmap_mode="c", allow_pickle=False)
        except OSError:
            return np.load(path, allow_pickle=False)  # filesystems that cannot mmap
        # a plain ndarray view whose base keeps the copy-on-write map alive
        return arr.view(np.ndarray)

    def d_npscalar(self, node: Any) -> Any:
        import numpy as np

        if "npy" in node:
            arr = np.load(io.BytesIO(base64.b64decode(node["npy"])), allow_pickle=False)
            return arr[()]
        raw = base64.b64decode(node["v"])
        return np.ndarray(shape=(), dtype=np.dtype(node["dtype"]), buffer=raw)[()]


def _decode_float(node: Any) -> float:
    if type(node) is float or type(node) is int:
        return float(node)
    text = node["v"]
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
    "file": _Decoder.d_file,
    "npy": _Decoder.d_npy,
    "npscalar": _Decoder.d_npscalar,
}  # type: Dict[str, Callable[[_Decoder, Any], Any]]


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
            if node.get(TAG) in _BLOB_KINDS and "ref" in node:
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

