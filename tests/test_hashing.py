"""Tests for hither.hashing: canonical value hashing, file hashing and its memo."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import blake3
import numpy as np
import pytest
from hither_store import _statmemo

from hither import hashing
from hither._codec import File
from hither.errors import SerializationError
from hither.hashing import (
    MAX_DEPTH,
    canonical_json,
    clear_file_hash_memo,
    describe_value,
    hash_file,
    hash_struct,
    hash_value,
)

HOUR_NS = 3600 * 10**9


@pytest.fixture(autouse=True)
def private_filehash_db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    db = tmp_path / "filehash.sqlite"
    monkeypatch.setenv("HITHER_FILEHASH_DB", str(db))
    clear_file_hash_memo()
    yield db
    clear_file_hash_memo()


@pytest.fixture
def settle_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Files count as settled as soon as they were changed before the read started.

    Every file a test writes has a fresh inode change time, which no call can date back, so
    without this a file is memoized only two seconds after it was written. The tests of that
    window do not use this fixture.
    """
    monkeypatch.setattr(_statmemo, "RACY_NS", 0)


def write_old(path: Path, data: bytes, age_ns: int = HOUR_NS) -> Path:
    """Write a file and date its modification time in the past."""
    path.write_bytes(data)
    old = time.time_ns() - age_ns
    os.utime(path, ns=(old, old))
    return path


class ReadCounter:
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.paths: list[str] = []
        real = hashing._read_file_sha256

        def counting(path: str) -> str:
            self.paths.append(path)
            return real(path)

        monkeypatch.setattr(hashing, "_read_file_sha256", counting)

    @property
    def count(self) -> int:
        return len(self.paths)


# ---------------------------------------------------------------------------- distinctness

def nan_with_bits(bits: int) -> float:
    return struct.unpack("<d", struct.pack("<Q", bits))[0]


def distinct_values(tmp_path: Path) -> list[Any]:
    a = write_old(tmp_path / "a.txt", b"content a")
    b = write_old(tmp_path / "b.txt", b"content b")
    return [
        None, "None", True, False, 1, 1.0, np.int64(1), np.int32(1), np.uint8(1),
        np.float64(1.0), np.float32(1.0), np.bool_(True), "1", b"1", 1 + 0j, np.complex128(1),
        0, 0.0, -0.0, np.float64(-0.0), float("nan"), np.float64("nan"), float("inf"),
        -float("inf"), 2**63, -(2**63), 2**63 - 1, 10**400, -(10**400),
        [1], (1,), {1}, frozenset({1}), {1: None}, [[1], 2], [[1, 2]], ("ab", "c"), ("a", "bc"),
        [], (), set(), frozenset(), {}, "", b"", [None], [[]],
        {1: 2}, {True: 2}, {1.0: 2}, {"1": 2}, {(1,): 2}, {1: (2,)}, {1: 2, 3: 4}, {1: 4, 3: 2},
        b"x" * 5000, b"x" * 5001, b"y" * 5000, "x" * 5000,
        np.arange(4), np.arange(4).astype(">i8"), np.arange(4).astype("<i4"),
        np.arange(4).reshape(2, 2), np.arange(4).reshape(4, 1), np.arange(4.0),
        np.zeros(0), np.zeros((0, 2)), np.zeros((2, 0)), np.array(0.0), np.zeros(1),
        np.array(["ab"]), np.array([b"ab"]), np.array(["2020-01-01"], dtype="M8[D]"),
        np.array(["2020-01-01"], dtype="M8[s]"), np.zeros(1, dtype=[("a", "<f8")]),
        np.zeros(1, dtype=[("b", "<f8")]),
        np.datetime64("2020-01-01"), np.datetime64("2020-01-01", "s"), np.str_("1"),
        np.bytes_(b"1"), File(a), File(b), [File(a)],
    ]


def test_all_distinct_values_hash_differently(tmp_path: Path) -> None:
    values = distinct_values(tmp_path)
    digests = [hash_value(v) for v in values]
    seen: dict[str, Any] = {}
    for value, digest in zip(values, digests, strict=True):
        assert digest not in seen, f"{value!r} collides with {seen[digest]!r}"
        seen[digest] = value
    assert all(len(d) == 64 and int(d, 16) >= 0 for d in digests)


def test_hash_is_deterministic_across_processes() -> None:
    script = (
        "import numpy as np; from hither.hashing import hash_value; "
        "print(hash_value({'s': {'a', 'b', 'c', ('x', 1)}, 'd': {'q': 1, 'p': [2.5, None]},"
        " 'arr': np.arange(6).reshape(2, 3), 'f': frozenset({'z', 'y'})}))"
    )
    outs = set()
    for seed in ("1", "2", "3"):
        env = dict(os.environ, PYTHONHASHSEED=seed)
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                             env=env, timeout=120)
        assert out.returncode == 0, out.stderr
        outs.add(out.stdout.strip())
    assert len(outs) == 1


def test_golden_digest_pins_the_scheme() -> None:
    # Changing this digest invalidates every user's cache: bump the scheme on purpose only.
    value = {"a": [1, 2.5, "x", None, True], "b": (b"\x00", {3}), 4: np.arange(3, dtype="<i8")}
    assert hash_value(value) == GOLDEN


GOLDEN = "5bc08ab9fa328384d62b025476002e98c80afd23c99d5cbb6f207ec8b95f4285"  # scheme v2


def _expected(*parts: bytes) -> str:
    return hashlib.sha256(b"hither-key-v2\0" + b"".join(parts)).hexdigest()


def test_large_values_are_keyed_by_blake3() -> None:
    # keys are shared between labs: every digest in them must be collision-resistant
    n = struct.Struct("<Q").pack
    raw = os.urandom(5000)
    assert hash_value(raw) == _expected(b"B", n(5000), blake3.blake3(raw).digest())
    assert hash_value(bytearray(raw)) == hash_value(raw)
    text = "é" + "x" * 5000 + "\udcff"
    encoded = text.encode("utf-8", "surrogatepass")
    assert hash_value(text) == _expected(b"U", n(len(encoded)), blake3.blake3(encoded).digest())
    big = np.random.default_rng(0).random((512, 600))  # 2.4 MB: over the memo threshold
    want = _expected(b"a", n(3), b"<f8", n(2), n(512), n(600),
                     blake3.blake3(big.tobytes()).digest())
    assert hash_value(big) == want
    assert hash_value(big) == want  # the second time through the in-process memo
    assert hash_value(np.asfortranarray(big)) == want  # chunked, not contiguous
    big[0, 0] += 1.0
    assert hash_value(big) != want


def test_buffer_changed_while_hashed_leaves_no_memo_entry(
        monkeypatch: pytest.MonkeyPatch) -> None:
    arr = np.zeros(1 << 18)  # 2 MiB
    real = hashing.blake3.blake3

    def changing(data: Any = b"", **kw: Any) -> Any:
        arr[7] = 5.0  # another thread writes while BLAKE3 reads
        return real(data, **kw)

    hashing._digests.clear()
    monkeypatch.setattr(hashing.blake3, "blake3", changing)
    hash_value(arr)
    assert len(hashing._digests) == 0
    monkeypatch.setattr(hashing.blake3, "blake3", real)
    arr[7] = 0.0
    assert hash_value(arr) == hash_value(np.zeros(1 << 18))


def test_a_forked_child_hashes_large_buffers() -> None:
    # BLAKE3's thread pool does not survive fork: a child using it would wait forever
    script = (
        "import os, sys, time\n"
        "import numpy as np\n"
        "from hither.hashing import hash_value\n"
        "hash_value(np.ones(1 << 22))  # 32 MB: the parent starts the thread pool\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    hash_value(np.full(1 << 22, 2.0))\n"
        "    os._exit(0)\n"
        "deadline = time.monotonic() + 60\n"
        "while time.monotonic() < deadline:\n"
        "    done, status = os.waitpid(pid, os.WNOHANG)\n"
        "    if done:\n"
        "        sys.exit(os.waitstatus_to_exitcode(status))\n"
        "    time.sleep(0.05)\n"
        "os.kill(pid, 9)\n"
        "sys.exit('the forked child hung')\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr


def test_buffer_memo_is_bounded_and_keyed_by_content() -> None:
    a = np.zeros(1 << 18)  # 2 MiB
    first = hash_value(a)
    a[12345] = 1.0  # same object, same size, new content: never the memoized digest
    assert hash_value(a) != first
    a[12345] = 0.0
    assert hash_value(a) == first
    for i in range(hashing._MEMO_MAX + 10):
        hashing._buffer_digest(np.full(1 << 17, float(i)))
    assert len(hashing._digests) == hashing._MEMO_MAX


# ---------------------------------------------------------------------------- equalities

def test_dict_order_is_irrelevant() -> None:
    assert hash_value({"a": 1, "b": 2, 3: 4}) == hash_value({3: 4, "b": 2, "a": 1})
    assert hash_value({"x": {"p": 1, "q": 2}}) == hash_value({"x": {"q": 2, "p": 1}})


def test_set_order_is_irrelevant() -> None:
    items = [("k", i) for i in range(50)] + ["a", "b", 3.5, b"z"]
    assert hash_value(set(items)) == hash_value(set(reversed(items)))
    assert hash_value(frozenset(items)) == hash_value(frozenset(reversed(items)))


def test_nan_hashes_consistently() -> None:
    odd_nans = [float("nan"), nan_with_bits(0xFFF8000000000000), nan_with_bits(0x7FF0000000000001),
                float("inf") - float("inf")]
    assert len({hash_value(x) for x in odd_nans}) == 1
    assert len({hash_value(complex(x, 1.0)) for x in odd_nans}) == 1
    assert len({hash_value(np.float64(x)) for x in odd_nans}) == 1
    assert len({hash_value(np.float32(x)) for x in odd_nans}) == 1
    assert hash_value(np.float64("nan")) != hash_value(np.float32("nan"))


def test_bytearray_hashes_like_bytes() -> None:
    assert hash_value(bytearray(b"abc")) == hash_value(b"abc")
    assert hash_value(bytearray(b"q" * 9000)) == hash_value(b"q" * 9000)


def test_memmap_hashes_like_ndarray(tmp_path: Path) -> None:
    arr = np.arange(100, dtype=np.float32).reshape(10, 10)
    np.save(tmp_path / "a.npy", arr)
    mm = np.load(tmp_path / "a.npy", mmap_mode="r")
    assert isinstance(mm, np.memmap)
    assert hash_value(mm) == hash_value(arr)


def test_str_uses_exact_text() -> None:
    assert hash_value("é") != hash_value("e\u0301")
    assert hash_value("\ud800") != hash_value("\ud801")  # lone surrogates are hashable too


# ---------------------------------------------------------------------------- arrays

@pytest.mark.parametrize("make_view", [
    lambda a: a[::2],
    lambda a: a.T,
    lambda a: a[:, 1:3],
    lambda a: a[::-1, ::3],
    lambda a: np.asfortranarray(a),
    lambda a: a.reshape(6, 4, 5)[:, ::2, 1:],
])
def test_non_contiguous_views_hash_like_their_copy(make_view: Any) -> None:
    base = np.arange(120, dtype=np.float64).reshape(12, 10)
    view = make_view(base)
    assert hash_value(view) == hash_value(np.ascontiguousarray(view))
    assert hash_value(view) == hash_value(view.copy(order="C"))


def test_non_contiguous_hashing_in_many_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    arr = np.arange(30_000, dtype=np.int64).reshape(300, 100)
    expected = hash_value(np.ascontiguousarray(arr.T))
    monkeypatch.setattr(hashing, "_ARRAY_CHUNK", 64)
    assert hash_value(arr.T) == expected
    cols = arr[:, ::7]
    assert hash_value(cols) == hash_value(np.ascontiguousarray(cols))


def test_structured_and_datetime_arrays_hash_like_their_copy() -> None:
    rec = np.zeros(6, dtype=[("a", "<i4"), ("b", ">f8", (2,))])
    rec["a"] = np.arange(6)
    assert hash_value(rec[::2]) == hash_value(rec[::2].copy())
    days = np.arange(10).astype("M8[D]")
    assert hash_value(days[::3]) == hash_value(days[::3].copy())


def test_contiguous_array_is_hashed_in_place(monkeypatch: pytest.MonkeyPatch) -> None:
    arr = np.arange(1 << 16, dtype=np.float64).reshape(256, 256)
    seen: list[Any] = []
    real = hashing.blake3.blake3

    def spy(data: Any = b"", **kw: Any) -> Any:
        seen.append(data)
        return real(data, **kw)

    monkeypatch.setattr(hashing.blake3, "blake3", spy)
    hash_value(arr)
    assert len(seen) == 1
    assert np.shares_memory(np.asarray(seen[0]), arr)


def test_array_content_change_changes_hash() -> None:
    arr = np.zeros(10_000)
    before = hash_value(arr)
    arr[-1] = 1e-300
    assert hash_value(arr) != before


def test_large_array_hash_is_memory_speed_not_python_speed() -> None:
    # no timing assertion: just make sure a big array goes through without a copy or error
    arr = np.ones((2000, 1000))
    assert hash_value(arr) == hash_value(arr.copy())


# ---------------------------------------------------------------------------- errors

class Opaque:
    pass


def test_unsupported_type_error_names_nested_path() -> None:
    with pytest.raises(SerializationError) as info:
        hash_value({"cfg": [1, 2, Opaque()]}, path="kw")
    err = info.value
    assert isinstance(err, TypeError)
    assert err.path == "kw['cfg'][2]"
    assert "cannot hash value of type 'Opaque' at kw['cfg'][2]: supported types are" in str(err)


@pytest.mark.parametrize("value, path", [
    ((1, (2, Opaque())), "x[1][1]"),
    ({"a": {5: Opaque()}}, "x['a'][5]"),
    ({Opaque(): 1}, "x<key "),
    ({1, Opaque()}, "x<set element>"),
    (np.array([object()]), "x"),
    (np.ma.array([1.0]), "x"),
    ([print], "x[0]"),
])
def test_error_paths(value: Any, path: str) -> None:
    with pytest.raises(SerializationError) as info:
        hash_value(value, path="x")
    assert info.value.path.startswith(path)
    assert f" at {info.value.path}" in str(info.value)


def test_cycles_raise() -> None:
    loop: list[Any] = []
    loop.append({"again": loop})
    with pytest.raises(SerializationError, match="cycle") as info:
        hash_value(loop, path="kw['x']")
    assert info.value.path == "kw['x'][0]['again']"
    shared = [1]
    hash_value([shared, shared])  # shared, not cyclic


def _nested(depth: int, leaf: Any = 1, make: Any = lambda x: [x]) -> Any:
    value = leaf
    for _ in range(depth):
        value = make(value)
    return value


@pytest.mark.parametrize("make", [lambda x: [x], lambda x: (x,), lambda x: {"k": x},
                                  lambda x: {1: x}, lambda x: frozenset([x])],
                         ids=["list", "tuple", "dict", "dict-nonstr", "frozenset"])
def test_nesting_limit(make: Any) -> None:
    assert MAX_DEPTH == 200
    hash_value(_nested(MAX_DEPTH, make=make))
    for deep in (_nested(MAX_DEPTH + 1, make=make), _nested(5000, make=make)):
        with pytest.raises(SerializationError, match="nested more than 200") as info:
            hash_value(deep, path="kw['x']")
        assert info.value.path.startswith("kw['x']")


def test_missing_file_raises_serialization_error(tmp_path: Path) -> None:
    with pytest.raises(SerializationError) as info:
        hash_value({"f": File(tmp_path / "missing")}, path="kw")
    assert info.value.path == "kw['f']"


def test_file_hash_is_by_content(tmp_path: Path) -> None:
    a = write_old(tmp_path / "a.bin", b"same")
    b = write_old(tmp_path / "b.dat", b"same")
    c = write_old(tmp_path / "c.bin", b"different")
    assert hash_value(File(a)) == hash_value(File(b))
    assert hash_value(File(a)) != hash_value(File(c))


# ---------------------------------------------------------------------------- structs

def test_canonical_json_and_hash_struct() -> None:
    assert canonical_json({"b": [1, 2], "a": "é"}) == '{"a":"é","b":[1,2]}'.encode()
    assert hash_struct({"b": 1, "a": 2}) == hash_struct({"a": 2, "b": 1})
    assert hash_struct({"a": 1}) == hashlib.sha256(b'{"a":1}').hexdigest()
    assert hash_struct([1]) != hash_struct([1.0])
    with pytest.raises(ValueError):
        canonical_json({"x": float("nan")})
    with pytest.raises(ValueError):
        hash_struct([float("inf")])


# ---------------------------------------------------------------------------- hash_file

def test_hash_file_matches_sha256(tmp_path: Path) -> None:
    data = os.urandom(3 * (1 << 20) + 17)
    path = write_old(tmp_path / "big.bin", data)
    assert hash_file(path) == hashlib.sha256(data).hexdigest()
    assert hash_file(str(path)) == hashlib.sha256(data).hexdigest()
    empty = write_old(tmp_path / "empty", b"")
    assert hash_file(empty) == hashlib.sha256(b"").hexdigest()


@pytest.mark.usefixtures("settle_at_once")
def test_hash_file_memo_hit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reads = ReadCounter(monkeypatch)
    path = write_old(tmp_path / "f.bin", b"hello")
    first = hash_file(path)
    assert hash_file(path) == first
    assert hash_file(tmp_path / "." / "f.bin") == first
    assert reads.count == 1


@pytest.mark.usefixtures("settle_at_once")
def test_hash_file_symlink_shares_memo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reads = ReadCounter(monkeypatch)
    path = write_old(tmp_path / "f.bin", b"hello")
    link = tmp_path / "link.bin"
    link.symlink_to(path)
    assert hash_file(link) == hash_file(path)
    assert reads.count == 1


def test_content_change_changes_hash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reads = ReadCounter(monkeypatch)
    path = write_old(tmp_path / "f.bin", b"version 1", age_ns=2 * HOUR_NS)
    first = hash_file(path)
    write_old(path, b"version 2")  # same size, different mtime
    second = hash_file(path)
    assert second != first and second == hashlib.sha256(b"version 2").hexdigest()
    assert reads.count == 2


@pytest.mark.usefixtures("settle_at_once")
def test_touch_rereads_but_same_hash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reads = ReadCounter(monkeypatch)
    path = write_old(tmp_path / "f.bin", b"stable", age_ns=2 * HOUR_NS)
    first = hash_file(path)
    newer = time.time_ns() - HOUR_NS
    os.utime(path, ns=(newer, newer))
    assert hash_file(path) == first
    assert reads.count == 2
    assert hash_file(path) == first
    assert reads.count == 2


def test_recently_modified_file_is_not_memoized(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    reads = ReadCounter(monkeypatch)
    path = tmp_path / "fresh.bin"
    path.write_bytes(b"fresh")
    future = time.time_ns() + HOUR_NS  # deterministically inside the racy window
    os.utime(path, ns=(future, future))
    hash_file(path)
    hash_file(path)
    assert reads.count == 2


@pytest.mark.usefixtures("settle_at_once")
def test_persistent_memo_survives_in_process_clear(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   private_filehash_db: Path) -> None:
    path = write_old(tmp_path / "f.bin", b"persist me")
    digest = hash_file(path)
    assert private_filehash_db.exists()
    clear_file_hash_memo()
    reads = ReadCounter(monkeypatch)
    assert hash_file(path) == digest
    assert reads.count == 0
    clear_file_hash_memo(persistent=True)
    assert hash_file(path) == digest
    assert reads.count == 1


@pytest.mark.usefixtures("settle_at_once")
def test_persistent_memo_is_used_by_a_new_process(tmp_path: Path,
                                                  private_filehash_db: Path) -> None:
    path = write_old(tmp_path / "f.bin", b"x" * 1000)
    digest = hash_file(path)
    script = (
        "import sys; from hither import hashing\n"
        "def boom(path): raise AssertionError('file was re-read')\n"
        "hashing._read_file_sha256 = boom\n"
        "print(hashing.hash_file(sys.argv[1]))\n"
    )
    out = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True,
                         text=True, timeout=120,
                         env=dict(os.environ, HITHER_FILEHASH_DB=str(private_filehash_db)))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == digest
    with sqlite3.connect(private_filehash_db) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_concurrent_processes_share_the_db(tmp_path: Path, private_filehash_db: Path) -> None:
    files = [write_old(tmp_path / f"f{i}.bin", f"file {i}".encode()) for i in range(20)]
    time.sleep(_statmemo.RACY_NS / 1e9 + 0.2)  # the child processes memoize settled files only
    script = (
        "import sys; from hither.hashing import hash_file\n"
        "print(','.join(hash_file(p) for p in sys.argv[1:]))\n"
    )
    env = dict(os.environ, HITHER_FILEHASH_DB=str(private_filehash_db))
    procs = [subprocess.Popen([sys.executable, "-c", script, *map(str, files)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(4)]
    expected = ",".join(hashlib.sha256(f.read_bytes()).hexdigest() for f in files)
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        assert out.strip() == expected
    with sqlite3.connect(private_filehash_db) as conn:
        assert conn.execute("SELECT COUNT(*) FROM statmemo_v3").fetchone()[0] == 20


def test_threads_hash_concurrently(tmp_path: Path) -> None:
    files = [write_old(tmp_path / f"t{i}.bin", os.urandom(1000)) for i in range(8)]
    results: dict[int, list[str]] = {}

    def worker(n: int) -> None:
        results[n] = [hash_file(f) for f in files]

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    expected = [hashlib.sha256(f.read_bytes()).hexdigest() for f in files]
    assert all(results[n] == expected for n in range(4))


@pytest.mark.usefixtures("settle_at_once")
@pytest.mark.parametrize("bad", ["dir", "under_file", "empty"])
def test_unusable_db_falls_back_to_in_process(bad: str, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    if bad == "dir":
        target = tmp_path / "a_directory"
        target.mkdir()
    elif bad == "under_file":
        (tmp_path / "plain").write_bytes(b"")
        target = tmp_path / "plain" / "db.sqlite"
    else:
        target = ""
    monkeypatch.setenv("HITHER_FILEHASH_DB", str(target))
    clear_file_hash_memo()
    reads = ReadCounter(monkeypatch)
    path = write_old(tmp_path / "f.bin", b"data")
    assert hash_file(path) == hashlib.sha256(b"data").hexdigest()
    assert hash_file(path) == hashlib.sha256(b"data").hexdigest()
    assert reads.count == 1


def test_corrupt_db_falls_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "corrupt.sqlite"
    db.write_bytes(b"this is not a database" * 100)
    monkeypatch.setenv("HITHER_FILEHASH_DB", str(db))
    clear_file_hash_memo()
    path = write_old(tmp_path / "f.bin", b"data")
    assert hash_file(path) == hashlib.sha256(b"data").hexdigest()


@pytest.mark.usefixtures("settle_at_once")
def test_hash_file_of_a_name_that_is_not_utf8(tmp_path: Path) -> None:
    path = write_old(tmp_path / os.fsdecode(b"caf\xe9-\xff.bin"), b"bytes")
    want = hashlib.sha256(b"bytes").hexdigest()
    assert hash_file(path) == want
    clear_file_hash_memo()  # the next one comes from the persistent memo
    assert hash_file(path) == want
    assert hash_value(File(path)) == hash_value(File(write_old(tmp_path / "b", b"bytes")))


def test_hash_file_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        hash_file(tmp_path / "missing")
    with pytest.raises(OSError):
        hash_file(tmp_path)


# ---------------------------------------------------------------------------- describe

@pytest.mark.parametrize("value, expected", [
    (np.zeros((1000, 3)), "ndarray float64 (1000, 3)"),
    (np.zeros(4, dtype=np.int32), "ndarray int32 (4,)"),
    ("abc", "str 'abc'"),
    ("a" * 30, "str '" + "a" * 24 + "…' (30 chars)"),
    ({1: 2, 3: 4, 5: 6}, "dict(3)"),
    ([1, 2], "list(2)"),
    ((1,), "tuple(1)"),
    ({1}, "set(1)"),
    (b"xyz", "bytes(3)"),
    (None, "None"),
    (1.5, "1.5"),
    (True, "True"),
    (2**100, "int (101 bits)"),
    (np.float32(1.5), "float32 1.5"),
    (Opaque(), "Opaque"),
])
def test_describe_value(value: Any, expected: str) -> None:
    assert describe_value(value) == expected


def test_describe_file(tmp_path: Path) -> None:
    assert describe_value(File(tmp_path / "data.csv")) == "File 'data.csv'"


def test_canonical_json_output_is_json() -> None:
    assert json.loads(canonical_json({"z": [1, {"y": None}]})) == {"z": [1, {"y": None}]}


@pytest.mark.parametrize("n", [0, 1, -1, 2**63 - 1, -(2**63), 2**63, -(2**63) - 1, 10**30])
def test_small_int_fast_path_hashes_as_the_general_encoding(n):
    out = [hashing._SCHEME]
    hashing._Hasher(out).add(n, "value", 0)
    assert hashing.hash_value(n) == hashlib.sha256(b"".join(out)).hexdigest()


def key_parts_fn(**kw):
    """A function whose keys the next test computes."""
    return kw


def test_a_host_key_is_the_hash_of_its_canonical_parts():
    import hither as hi
    from hither.cacheflow import compute_key
    from hither.config import current

    fn = hi.function("key_parts_fn", "1.2.3")(key_parts_fn)
    odd = os.fsdecode(b"caf\xe9")  # a lone surrogate: not an identifier
    for kwargs in ({"a": 1, "b": 2}, {"é": "x", "z": [1, 2.5, None]}, {}, {"b": 1, "a": 2},
                   {'a"b': 1, "a b": 2, "back\\slash": 3, "new\nline": 4, odd: 5, "_": 6},
                   {"ok": 1, "\x00": 2}):
        info = compute_key(fn._hither, kwargs, current())
        assert info.key == hashing.hash_struct(info.parts)
        assert info.key == compute_key(fn._hither, kwargs, current()).key
