"""Tests for hither._codec: values <-> JSON manifest + blobs."""

from __future__ import annotations

import ast
import base64
import hashlib
import io
import json
import math
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from hither import _codec
from hither._codec import (
    DecodeError,
    EncodeError,
    File,
    decode,
    dumps_manifest,
    encode,
    loads_manifest,
    walk_refs,
)

CODEC_SOURCE = Path(_codec.__file__)


# ---------------------------------------------------------------------------- blob stores

class MemoryStore:
    """put_blob/get_blob over a dict; get_blob returns bytes."""

    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {}
        self.kinds: list[str] = []

    def put(self, kind: str, write: Any) -> str:
        self.kinds.append(kind)
        if kind == "file":
            data = Path(write).read_bytes()
        else:
            buf = io.BytesIO()
            write(buf)
            data = buf.getvalue()
        ref = "sha256://" + hashlib.sha256(data).hexdigest()
        self.blobs[ref] = data
        return ref

    def get(self, ref: str, kind: str) -> Any:
        if kind == "file":
            raise AssertionError("files are tested with PathStore")
        return self.blobs[ref]


class PathStore:
    """put_blob/get_blob over a directory; get_blob returns paths (like the real store)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.calls: list[tuple[str, str]] = []

    def put(self, kind: str, write: Any) -> str:
        tmp = self.root / "incoming"
        if kind == "file":
            shutil.copyfile(write, tmp)
        else:
            with open(tmp, "wb") as fh:
                write(fh)
        digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
        os.replace(tmp, self.root / digest)
        return "sha256://" + digest

    def get(self, ref: str, kind: str) -> Any:
        self.calls.append((ref, kind))
        return str(self.root / ref.split("://", 1)[1])


def no_blobs(kind: str, write: Any) -> str:
    raise AssertionError(f"put_blob({kind!r}) called for a value that should be inline")


# ---------------------------------------------------------------------------- strict equality

def strict_equal(a: Any, b: Any) -> bool:
    """Equality that also checks types recursively, float bits and array dtypes/layout."""
    if type(a) is not type(b):
        return False
    if isinstance(a, np.ndarray):
        return (a.dtype == b.dtype and a.dtype.str == b.dtype.str and a.shape == b.shape
                and a.tobytes() == b.tobytes()
                and a.flags.f_contiguous == b.flags.f_contiguous)
    if isinstance(a, np.generic):
        return a.dtype == b.dtype and a.tobytes() == b.tobytes()
    if isinstance(a, float):
        return struct.pack("<d", a) == struct.pack("<d", b)
    if isinstance(a, complex):
        return strict_equal(a.real, b.real) and strict_equal(a.imag, b.imag)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(strict_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return len(a) == len(b) and all(
            strict_equal(ka, kb) and strict_equal(va, vb)
            for (ka, va), (kb, vb) in zip(a.items(), b.items(), strict=True))
    if isinstance(a, (set, frozenset)):
        return len(a) == len(b) and all(any(strict_equal(x, y) for y in b) for x in a)
    return a == b


def test_strict_equal_is_strict() -> None:
    assert not strict_equal(1, 1.0)
    assert not strict_equal(1, True)
    assert not strict_equal(0.0, -0.0)
    assert not strict_equal([1], (1,))
    assert not strict_equal({"a": 1, "b": 2}, {"b": 2, "a": 1})
    assert not strict_equal(np.zeros(2, "<f8"), np.zeros(2, ">f8"))
    assert not strict_equal(np.float32(1), np.float64(1))
    assert not strict_equal(np.zeros((2, 2)), np.asfortranarray(np.zeros((2, 2))))
    assert strict_equal(float("nan"), float("nan"))


# ---------------------------------------------------------------------------- tricky values

class Weird:
    pass


def tricky_values() -> list[Any]:
    nan = float("nan")
    neg_nan = struct.unpack("<d", struct.pack("<Q", 0xFFF8000000000001))[0]
    big = np.arange(3000, dtype=np.float64).reshape(100, 30)
    values: list[Any] = [
        None, True, False, 0, -1, 7, 2**63 - 1, -(2**63) + 1, 2**63, -(2**63), 2**200,
        -(10**5000), 10**5000 + 1,
        0.0, -0.0, 1.0, 1e308, 5e-324, 0.1, nan, neg_nan, math.inf, -math.inf,
        1 + 2j, complex(nan, -0.0), complex(-math.inf, 0.0),
        "", "plain", "~", "quote \" ' backslash \\ newline \n tab \t nul \x00",
        "unicode é ✓ 漢字 🧪", "\u2028\u2029",
        b"", b"\x00\xff" * 10, bytearray(b"mutable"), b"x" * 4096, b"y" * 4097,
        [], [1, [2, [3, []]]], (), (1,), ((1, 2), [3]), [None, True, 1, 1.0, "1", b"1"],
        {}, {"a": 1}, {"b": 1, "a": 2}, {1: "int key"}, {1.5: "float key", None: 0},
        {True: 1}, {(1, "a"): [1], b"k": 2, frozenset({1}): 3},
        {"~": "tuple", "v": [1, 2]},
        {"~": "npy", "ref": "sha256://not-a-ref", "dtype": "<f8", "shape": [2]},
        {"nested": {"~": 1, "x": {"~": "dict"}}},
        {"v": [[1, 2]], "~x": 1},
        set(), {1, 2, 3}, {"a", (1, 2), None}, frozenset(), frozenset({1.5, "x"}),
        {1, 1.5, -0.0, "s", b"b", (1,), frozenset({2})},
        np.arange(5), np.arange(6, dtype=">i4").reshape(2, 3),
        np.zeros((0, 3)), np.array(3.5), np.array([], dtype="U3"),
        np.array(["a", "bcd"]), np.array([b"xy", b""]), np.array([True, False]),
        np.array([1.5, nan, -0.0], dtype=np.float16),
        np.array([1 + 2j], dtype=np.complex64),
        np.array(["2020-01-01T00:00:00.123456789", "NaT"], dtype="M8[ns]"),
        np.array([1, -2], dtype="m8[s]"),
        np.zeros(3, dtype=[("a", "<i4"), ("b", ">f8", (2,)), ("c", "U2")]),
        np.asfortranarray(np.arange(12.0).reshape(3, 4)),
        np.arange(20)[::3],
        big, np.asfortranarray(big), big[::2, ::3],
        np.bool_(True), np.int8(-3), np.uint64(2**64 - 1), np.int64(1), np.float16(0.5),
        np.float32(nan), np.float64(-0.0), np.longdouble(1) / 3, np.complex128(1 - 1j),
        np.datetime64("2021-05-01"), np.datetime64("NaT"), np.timedelta64(5, "ms"),
        np.str_("numpy str"), np.bytes_(b"numpy bytes"), np.void(b"\x01\x02"),
        np.zeros(1, dtype=[("a", "<i4"), ("b", "U2")])[0],
        {"arrays": [np.ones(2), (np.int32(4), {np.float64(2.5): "np key"})]},
    ]
    shared = [1, 2]
    values.append([shared, shared, (shared,)])  # shared references are not cycles
    return values


def expected_after_roundtrip(value: Any) -> Any:
    """What a value decodes to: bytearray becomes bytes, views become plain arrays."""
    if type(value) is bytearray:
        return bytes(value)
    if isinstance(value, np.ndarray) and not (value.flags.c_contiguous
                                              or value.flags.f_contiguous):
        return np.ascontiguousarray(value)
    return value


@pytest.mark.parametrize("store_kind", ["memory", "path"])
def test_roundtrip_tricky_values(store_kind: str, tmp_path: Path) -> None:
    store = MemoryStore() if store_kind == "memory" else PathStore(tmp_path / "blobs")
    for value in tricky_values():
        manifest = encode(value, store.put, path="kw['x']")
        json.dumps(manifest, allow_nan=False)  # no bare NaN/inf: every float is tagged
        text = dumps_manifest(manifest)
        back = decode(loads_manifest(text), store.get)
        assert strict_equal(back, expected_after_roundtrip(value)), (value, text)
        # decoding the in-memory manifest (not re-parsed) also works
        assert strict_equal(decode(manifest, store.get), expected_after_roundtrip(value))


def test_roundtrip_all_tricky_values_at_once() -> None:
    store = MemoryStore()
    values = tricky_values()
    everything = {"list": values, "tuple": tuple(values[:20]), 3: {"deep": values}}
    back = decode(loads_manifest(dumps_manifest(encode(everything, store.put))), store.get)
    assert strict_equal(back["list"], [expected_after_roundtrip(v) for v in values])
    assert strict_equal(back["tuple"], tuple(values[:20]))
    assert strict_equal(back[3]["deep"][10], values[10])


def test_dict_insertion_order_survives_sorted_json() -> None:
    value = {"zeta": 1, "alpha": 2, "mid": {"b": 1, "a": 2}}
    manifest = encode(value, no_blobs)
    back = decode(loads_manifest(dumps_manifest(manifest)), no_blobs)
    assert list(back) == ["zeta", "alpha", "mid"]
    assert list(back["mid"]) == ["b", "a"]


def test_int_keys_come_back_as_ints() -> None:
    back = decode(loads_manifest(dumps_manifest(encode({1: "a", 2: "b"}, no_blobs))), no_blobs)
    assert back == {1: "a", 2: "b"}
    assert all(type(k) is int for k in back)


# ---------------------------------------------------------------------------- compact form

def test_plain_json_is_returned_as_is() -> None:
    ints = list(range(10_000))
    floats = {f"k{i:04d}": i * 0.25 for i in range(1000)}
    nested = {"a": [1, "x", None, True, 2.5, {"b": []}]}
    for value in (ints, floats, nested, "s", 3, None, 2.5):
        assert encode(value, no_blobs) is value


def test_compact_tagged_forms() -> None:
    assert encode((1, 2), no_blobs) == {"~": "tuple", "v": [1, 2]}
    assert encode({1: 2}, no_blobs) == {"~": "dict", "v": [[1, 2]]}
    assert encode({"~": 1}, no_blobs) == {"~": "dict", "v": [["~", 1]]}
    assert encode(float("inf"), no_blobs) == {"~": "float", "v": "inf"}
    assert encode(float("nan"), no_blobs) == {"~": "float", "v": "nan"}
    assert encode(-0.0, no_blobs) == -0.0
    assert encode(2**64, no_blobs) == {"~": "int", "v": "10000000000000000"}
    assert encode([1, (2,)], no_blobs) == [1, {"~": "tuple", "v": [2]}]


def test_plain_dict_with_tagged_values_keeps_plain_keys() -> None:
    manifest = encode({"a": (1,), "b": {2}}, no_blobs)
    assert manifest == {"a": {"~": "tuple", "v": [1]}, "b": {"~": "set", "v": [2]}}


def test_tag_lookalike_dicts_are_not_confused() -> None:
    lookalike = {"~": "file", "ref": "sha256://abc", "name": "x"}
    manifest = encode(lookalike, no_blobs)
    assert list(walk_refs(manifest)) == []
    back = decode(manifest, no_blobs)
    assert back == lookalike and type(back) is dict


def test_set_manifest_is_deterministic() -> None:
    a = {"x", "y", "z", (1, 2), 3}
    b = set(reversed(list(a)))
    assert dumps_manifest(encode(a, no_blobs)) == dumps_manifest(encode(b, no_blobs))


def test_dumps_manifest_is_canonical_and_compact() -> None:
    text = dumps_manifest({"b": 1, "a": ["é", 2]})
    assert text == '{"a":["é",2],"b":1}'
    assert loads_manifest(text) == {"a": ["é", 2], "b": 1}
    assert loads_manifest(text.encode("utf-8")) == {"a": ["é", 2], "b": 1}


# ---------------------------------------------------------------------------- blobs

def test_bytes_inline_limit() -> None:
    store = MemoryStore()
    assert encode(b"a" * 10, store.put, inline_limit=10)["~"] == "b64"
    node = encode(b"a" * 11, store.put, inline_limit=10)
    assert node["~"] == "bytes" and node["size"] == 11
    assert store.kinds == ["bytes"]
    assert decode(node, store.get) == b"a" * 11


def test_large_array_goes_to_npy_blob_and_small_is_inline() -> None:
    store = MemoryStore()
    small = encode(np.arange(4), store.put)
    assert "b64" in small and store.kinds == []
    big = encode(np.arange(10_000), store.put)
    assert big["ref"].startswith("sha256://") and store.kinds == ["npy"]
    assert big["dtype"] == np.arange(1).dtype.str and big["shape"] == [10_000]
    assert np.load(io.BytesIO(store.blobs[big["ref"]])).tolist() == list(range(10_000))


def test_npy_decoded_from_path_is_copy_on_write_mmap(tmp_path: Path) -> None:
    store = PathStore(tmp_path)
    original = np.arange(50_000, dtype=np.float64).reshape(500, 100)
    manifest = encode(original, store.put)
    blob = tmp_path / manifest["ref"].split("://")[1]
    before = blob.read_bytes()
    arr = decode(manifest, store.get)
    assert store.calls == [(manifest["ref"], "npy")]
    assert type(arr) is np.ndarray
    assert not arr.flags.owndata  # a view on the map, not a copy
    base = arr.base
    while base is not None and not isinstance(base, np.memmap):
        base = getattr(base, "base", None)
    assert isinstance(base, np.memmap) and base.mode == "c"
    assert arr.flags.writeable
    arr[0, 0] = -1.0
    assert blob.read_bytes() == before
    assert decode(manifest, store.get)[0, 0] == 0.0


def test_empty_and_0d_arrays_from_path(tmp_path: Path) -> None:
    store = PathStore(tmp_path)
    for value in (np.zeros((0, 5)), np.array(2.5), np.zeros((0,), dtype="U4")):
        back = decode(encode(value, store.put, inline_limit=0), store.get)
        assert strict_equal(back, value)


def test_npy_blob_write_streams_into_given_file_object(tmp_path: Path) -> None:
    arr = np.arange(5000, dtype="<i8")
    target = tmp_path / "x.npy"

    def put(kind: str, write: Any) -> str:
        assert kind == "npy" and callable(write)
        with open(target, "wb") as fh:
            write(fh)
        return "ref-1"

    assert encode(arr, put)["ref"] == "ref-1"
    assert np.array_equal(np.load(target), arr)


def test_file_roundtrip(tmp_path: Path) -> None:
    src = tmp_path / "data.csv"
    src.write_text("a,b\n1,2\n")
    store = PathStore(tmp_path / "blobs")
    manifest = encode({"f": File(src)}, store.put)
    node = manifest["f"]
    assert node["~"] == "file" and node["name"] == "data.csv"
    assert list(walk_refs(manifest)) == [node["ref"]]
    back = decode(loads_manifest(dumps_manifest(manifest)), store.get)["f"]
    assert type(back) is File
    assert Path(back.path).read_text() == "a,b\n1,2\n"
    assert store.calls == [(node["ref"], "file")]


def test_file_object_behaviour(tmp_path: Path) -> None:
    f = File(str(tmp_path / "sub" / ".." / "a.txt"))
    assert f.path == os.path.abspath(tmp_path / "a.txt")
    assert os.fspath(f) == f.path and f.name == "a.txt"
    assert f == File(tmp_path / "a.txt") and hash(f) == hash(File(tmp_path / "a.txt"))
    assert f != File(tmp_path / "b.txt") and f != f.path
    assert repr(f) == f"File({f.path!r})"
    assert File(f) == f
    rel = File("relative.txt")
    assert os.path.isabs(rel.path)


def test_missing_file_is_an_encode_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.bin"
    with pytest.raises(EncodeError) as info:
        encode([File(missing)], MemoryStore().put, path="kw['f']")
    assert info.value.path == "kw['f'][0]"
    assert str(missing) in str(info.value) and "does not exist" in str(info.value)
    with pytest.raises(EncodeError, match="not a regular file"):
        encode(File(tmp_path), MemoryStore().put)


def test_walk_refs_finds_every_blob(tmp_path: Path) -> None:
    src = tmp_path / "f.bin"
    src.write_bytes(b"123")
    store = PathStore(tmp_path / "blobs")
    value = {
        (1, b"k" * 50): {"inner": [np.arange(2000), {frozenset({b"z" * 60})}]},
        "file": File(src),
        "small": np.arange(2),
    }
    manifest = encode(value, store.put, inline_limit=32)
    refs = sorted(walk_refs(loads_manifest(dumps_manifest(manifest))))
    assert len(refs) == 4  # two bytes blobs, one array, one file; the small array is inline
    assert all(ref.startswith("sha256://") for ref in refs)
    assert list(walk_refs([1, "sha256://x", {"ref": "y"}])) == []


# ---------------------------------------------------------------------------- errors

def test_unsupported_type_names_path() -> None:
    with pytest.raises(EncodeError) as info:
        encode({"cfg": [1, 2, Weird()]}, no_blobs, path="kw")
    err = info.value
    assert isinstance(err, TypeError)
    assert err.path == "kw['cfg'][2]"
    assert "cannot encode value of type 'Weird' at kw['cfg'][2]: supported types are" in str(err)


@pytest.mark.parametrize("value, path", [
    ((1, [Weird()]), "v[1][0]"),
    ({3: {"k": Weird()}}, "v[3]['k']"),
    ({(1, Weird()): 1}, "v<key (1, "),
    ({Weird()}, "v<set element>"),
    ([{"a": 1}, {"~": [Weird()]}], "v[1]['~'][0]"),
    (np.array([1, "x"], dtype=object), "v"),
    (np.ma.array([1, 2]), "v"),
    (object, "v"),
    (lambda: 1, "v"),
])
def test_error_paths(value: Any, path: str) -> None:
    with pytest.raises(EncodeError) as info:
        encode(value, MemoryStore().put, path="v")
    assert info.value.path.startswith(path)
    assert f" at {info.value.path}" in str(info.value)


def test_object_dtype_message() -> None:
    with pytest.raises(EncodeError, match="object"):
        encode({"a": np.array([None, 1])}, no_blobs)


def test_subclasses_of_builtins_are_rejected() -> None:
    class MyStr(str):
        pass

    with pytest.raises(EncodeError, match="MyStr"):
        encode([MyStr("x")], no_blobs)


def test_cycles_are_detected() -> None:
    loop: list[Any] = [1]
    loop.append(loop)
    with pytest.raises(EncodeError, match="cycle") as info:
        encode({"a": loop}, no_blobs, path="kw")
    assert info.value.path == "kw['a'][1]"
    d: dict[str, Any] = {}
    d["self"] = (d,)
    with pytest.raises(EncodeError, match="cycle"):
        encode(d, no_blobs)


def test_malformed_manifests() -> None:
    with pytest.raises(DecodeError, match="unknown manifest tag"):
        decode({"~": "nope"}, no_blobs)
    with pytest.raises(DecodeError):
        decode({"~": "tuple"}, no_blobs)
    with pytest.raises(DecodeError):
        decode({"~": "float", "v": "1.5"}, no_blobs)


# ---------------------------------------------------------------------------- depth, hostile manifests

def _nested(depth: int, make: Any = lambda x: [x]) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = make(value)
    return value


@pytest.mark.parametrize("make", [lambda x: [x], lambda x: (x,), lambda x: {"k": x},
                                  lambda x: {2: x}, lambda x: frozenset([x])],
                         ids=["list", "tuple", "dict", "dict-nonstr", "frozenset"])
def test_nesting_limit_is_the_same_for_encode_and_decode(make: Any) -> None:
    ok = _nested(_codec.MAX_DEPTH, make)
    manifest = encode(ok, no_blobs, path="kw")
    back = decode(loads_manifest(dumps_manifest(manifest)), no_blobs)
    assert back == ok and type(back) is type(ok)
    too_deep = make(ok)
    with pytest.raises(EncodeError, match="nested more than 200") as info:
        encode(too_deep, no_blobs, path="kw")
    assert info.value.path.startswith("kw")
    # the same value, written by something else than encode, is refused by decode
    one_more = _nest_manifest(manifest, loads_manifest(dumps_manifest(encode(make(1),
                                                                             no_blobs))))
    with pytest.raises(DecodeError, match="more than 200 deep"):
        decode(one_more, no_blobs)


def _nest_manifest(inner: Any, outer_of_one: Any) -> Any:
    """``outer_of_one`` (the manifest of a container holding 1) with ``inner`` for the 1."""
    if outer_of_one == 1:
        return inner
    if isinstance(outer_of_one, list):
        return [_nest_manifest(inner, x) for x in outer_of_one]
    if isinstance(outer_of_one, dict):
        return {k: (v if k == "~" else _nest_manifest(inner, v)) for k, v in outer_of_one.items()}
    return outer_of_one


def test_a_400_deep_list_is_refused_and_its_manifest_is_a_decode_error() -> None:
    deep = _nested(400)
    with pytest.raises(EncodeError):
        encode(deep, no_blobs, path="result")
    with pytest.raises(DecodeError):  # as stored by a hither that accepted it
        decode(deep, no_blobs)
    with pytest.raises(DecodeError):  # far beyond the interpreter's recursion limit
        decode(_nested(100_000), no_blobs)


def _blob_store_with(data: bytes) -> tuple[MemoryStore, str]:
    store = MemoryStore()
    ref = store.put("bytes", lambda f: f.write(data))
    return store, ref


def _npy_bytes(arr: Any) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=True)
    return buf.getvalue()


def base64_text(data: bytes) -> str:
    return base64.b64encode(data).decode()


HOSTILE = {
    "unknown tag": {"~": "pickle", "v": "gASV"},
    "tag not a string": {"~": ["tuple"], "v": []},
    "tuple without v": {"~": "tuple"},
    "tuple v not a list": {"~": "tuple", "v": 3},
    "set of unhashables": {"~": "set", "v": [[1]]},
    "dict v not pairs": {"~": "dict", "v": [[1, 2, 3]]},
    "dict with unhashable key": {"~": "dict", "v": [[[1], 2]]},
    "int not hex": {"~": "int", "v": "xyz"},
    "int of wrong type": {"~": "int", "v": 12},
    "float text": {"~": "float", "v": "1.5"},
    "float nan bits": {"~": "float", "v": "nan:zz"},
    "complex of one": {"~": "complex", "v": [1.0]},
    "b64 not base64": {"~": "b64", "v": "***"},
    "b64 not a string": {"~": "b64", "v": 5},
    "bytes ref not a string": {"~": "bytes", "ref": 7, "size": 1},
    "missing blob": {"~": "bytes", "ref": "sha256://" + "0" * 64, "size": 3},
    "npy inline not npy": {"~": "npy", "b64": base64_text(b"not an npy file"), "dtype": "<f8",
                           "shape": [1]},
    "npy inline pickled": {"~": "npy", "b64": base64_text(_npy_bytes(np.array([None]))),
                           "dtype": "|O", "shape": [1]},
    "npy inline truncated": {"~": "npy", "b64": base64_text(_npy_bytes(np.arange(9))[:70]),
                             "dtype": np.arange(9).dtype.str, "shape": [9]},
    "npy dtype lies": {"~": "npy", "b64": base64_text(_npy_bytes(np.arange(3))),
                       "dtype": "<f8", "shape": [3]},
    "npy shape lies": {"~": "npy", "b64": base64_text(_npy_bytes(np.arange(3))),
                       "dtype": np.arange(3).dtype.str, "shape": [4]},
    "npscalar object dtype": {"~": "npscalar", "dtype": "|O", "v": base64_text(b"\0" * 8)},
    "npscalar short buffer": {"~": "npscalar", "dtype": "<f8", "v": base64_text(b"\0")},
    "npscalar bad dtype": {"~": "npscalar", "dtype": "nonsense", "v": ""},
    "str blob missing": {"~": "str", "ref": "sha256://" + "1" * 64, "size": 1},
    "unexpected type": {"a": object()},
    "file ref missing": {"~": "file"},
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_manifests_raise_decode_error_only(name: str) -> None:
    store = MemoryStore()
    with pytest.raises(DecodeError):
        decode(HOSTILE[name], store.get)


def test_blob_of_the_wrong_kind_or_size() -> None:
    store, ref = _blob_store_with(b"plain bytes, not a .npy file")
    with pytest.raises(DecodeError, match="npy"):
        decode({"~": "npy", "ref": ref, "dtype": "<f8", "shape": [2]}, store.get)
    with pytest.raises(DecodeError, match="holds 28 bytes"):
        decode({"~": "bytes", "ref": ref, "size": 29}, store.get)
    npz = io.BytesIO()
    np.savez(npz, a=np.arange(3))
    store2, ref2 = _blob_store_with(npz.getvalue())
    with pytest.raises(DecodeError):
        decode({"~": "npy", "ref": ref2, "dtype": "<i8", "shape": [3]}, store2.get)
    invalid_utf8 = b"\xff\xfe"
    store3, ref3 = _blob_store_with(invalid_utf8)
    with pytest.raises(DecodeError):
        decode({"~": "str", "ref": ref3, "size": 2}, store3.get)


def test_get_blob_failure_is_a_decode_error_naming_the_blob() -> None:
    def broken(ref: str, kind: str) -> Any:
        raise OSError(5, "Input/output error")

    with pytest.raises(DecodeError, match="Input/output error") as info:
        decode([{"~": "bytes", "ref": "sha256://ab", "size": 1}], broken)
    assert "sha256://ab" in str(info.value) and isinstance(info.value.__cause__, OSError)


# ---------------------------------------------------------------------------- text and size

SURROGATES = os.fsdecode(b"caf\xe9 \xff\xfe")  # lone surrogates, as os.fsdecode makes them


def test_strings_that_are_not_utf8_round_trip() -> None:
    value = {SURROGATES: [SURROGATES, (SURROGATES,)], "k": {SURROGATES}, 1: SURROGATES}
    manifest = encode(value, no_blobs)
    for text in (json.dumps(manifest), json.dumps(manifest, ensure_ascii=False)):
        assert strict_equal(decode(json.loads(text), no_blobs), value)
    ascii_text = json.dumps(manifest)  # what the worker protocol sends
    assert ascii_text.isascii()


@pytest.mark.parametrize("store_kind", ["memory", "path"])
def test_long_str_goes_to_a_blob(store_kind: str, tmp_path: Path) -> None:
    store = MemoryStore() if store_kind == "memory" else PathStore(tmp_path / "blobs")
    limit = _codec.STR_INLINE_LIMIT
    assert encode("x" * limit, no_blobs) == "x" * limit
    long = ("é" * limit) + SURROGATES + "\U0001F600"
    manifest = encode({"text": long, long: 1, "items": [long]}, store.put)
    nodes = [m for m in [manifest] + list(_all_nodes(manifest)) if isinstance(m, dict)
             and m.get("~") == "str"]
    assert len(nodes) == 3 and len(set(n["ref"] for n in nodes)) == 1
    assert nodes[0]["size"] == len(long.encode("utf-8", "surrogatepass"))
    assert len(dumps_manifest(manifest)) < 1000  # the text is not in the manifest
    assert len(list(walk_refs(manifest))) == 3
    back = decode(loads_manifest(dumps_manifest(manifest)), store.get)
    assert back == {"text": long, long: 1, "items": [long]}


def _all_nodes(node: Any) -> Any:
    if isinstance(node, list):
        for x in node:
            yield x
            yield from _all_nodes(x)
    elif isinstance(node, dict):
        for x in node.values():
            yield x
            yield from _all_nodes(x)


# ---------------------------------------------------------------------------- portability

def test_codec_source_is_python38_syntax() -> None:
    ast.parse(CODEC_SOURCE.read_text(encoding="utf-8"), feature_version=(3, 8))


def test_codec_imports_only_stdlib() -> None:
    tree = ast.parse(CODEC_SOURCE.read_text(encoding="utf-8"))
    top_level: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            top_level.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "no relative imports"
            top_level.add((node.module or "").split(".")[0])
    allowed = set(sys.stdlib_module_names) | {"__future__", "numpy"}
    assert top_level <= allowed, top_level - allowed


_STANDALONE_SCRIPT = r"""
import sys
sys.path.insert(0, sys.argv[1])
import _codec
value = {1: (2, b"x", {3.5}), "s": [float("inf"), 2**90, _codec.File(sys.argv[2])]}
refs = {}
def put(kind, write):
    refs[kind] = write
    return "ref"
def get(ref, kind):
    return refs[kind]
text = _codec.dumps_manifest(_codec.encode(value, put))
back = _codec.decode(_codec.loads_manifest(text), get)
assert back == value, back
assert "numpy" not in sys.modules, "numpy imported without arrays"
assert not [m for m in sys.modules if m.startswith("hither")]
print("ok")
"""


def _run_standalone(python: str) -> None:
    out = subprocess.run([python, "-I", "-c", _STANDALONE_SCRIPT, str(CODEC_SOURCE.parent),
                          str(CODEC_SOURCE)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_codec_works_as_top_level_module_without_numpy() -> None:
    _run_standalone(sys.executable)


def _python38() -> str | None:
    for candidate in (os.environ.get("HITHER_TEST_PY38"), shutil.which("python3.8")):
        if not candidate:
            continue
        try:
            out = subprocess.run([candidate, "-c", "import sys; print(sys.version_info[:2])"],
                                 capture_output=True, text=True, timeout=60)
        except OSError:
            continue
        if out.returncode == 0 and out.stdout.strip() == "(3, 8)":
            return candidate
    return None


def test_codec_runs_under_python38() -> None:
    python = _python38()
    if python is None:
        pytest.skip("no working python3.8 (set HITHER_TEST_PY38)")
    _run_standalone(python)
