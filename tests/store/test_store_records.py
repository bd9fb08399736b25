"""Records of LocalStore: keys, round trips, checksums, damaged files."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import pytest
from hither_store import LocalStore, StoreWarning

KEY = "job-0123456789abcdef"


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "store")


def quarantined(store: LocalStore) -> list[Path]:
    return list((store.root / "quarantine").iterdir())


def test_record_round_trip(store: LocalStore) -> None:
    body = {
        "status": "finished",
        "result": {"manifest": [1, 2.5, None, True, "ü€"], "nested": {"b": 1, "a": 2}},
        "nan": math.inf,
    }
    assert store.get_record(KEY) is None
    assert not store.has_record(KEY)
    store.put_record(KEY, body)
    assert store.has_record(KEY)
    assert store.get_record(KEY) == body
    assert store.record_path(KEY) == store.root / "records" / "jo" / f"{KEY}.json"
    assert list((store.root / "tmp").iterdir()) == []


def test_nan_survives(store: LocalStore) -> None:
    store.put_record(KEY, {"x": math.nan})
    got = store.get_record(KEY)
    assert got is not None and math.isnan(got["x"])


def test_record_file_embeds_checksum(store: LocalStore) -> None:
    store.put_record(KEY, {"b": 2, "a": 1})
    doc = json.loads(store.record_path(KEY).read_text("utf-8"))
    assert doc["format"] == 1
    assert doc["key"] == KEY
    assert doc["body"] == {"a": 1, "b": 2}
    assert len(doc["sha256"]) == 64


def test_last_writer_wins(store: LocalStore) -> None:
    store.put_record(KEY, {"v": 1})
    store.put_record(KEY, {"v": 2, "extra": "longer body"})
    assert store.get_record(KEY) == {"v": 2, "extra": "longer body"}


def test_delete_record(store: LocalStore) -> None:
    store.put_record(KEY, {"v": 1})
    assert store.delete_record(KEY) is True
    assert store.get_record(KEY) is None
    assert store.delete_record(KEY) is False


@pytest.mark.parametrize(
    "key",
    [
        "short",
        "x" * 129,
        "has space!",
        "../escape-x",
        "dot.dot.dot",
        "slash/slash",
        "ünïcödé-key",
        "",
        12345678,
    ],
)
def test_invalid_keys_are_rejected(store: LocalStore, key: object) -> None:
    for call in (
        lambda: store.put_record(key, {}),  # type: ignore[arg-type]
        lambda: store.get_record(key),  # type: ignore[arg-type]
        lambda: store.has_record(key),  # type: ignore[arg-type]
        lambda: store.delete_record(key),  # type: ignore[arg-type]
        lambda: store.record_path(key),  # type: ignore[arg-type]
    ):
        with pytest.raises(ValueError, match="invalid record key"):
            call()


def test_boundary_keys_are_accepted(store: LocalStore) -> None:
    for key in ("a" * 8, "Z_-9" * 32):
        store.put_record(key, {"k": key})
        assert store.get_record(key) == {"k": key}


def test_non_dict_and_non_json_records_are_rejected(store: LocalStore) -> None:
    with pytest.raises(TypeError):
        store.put_record(KEY, [1, 2])  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        store.put_record(KEY, {"obj": object()})
    with pytest.raises(TypeError):  # unsortable mixed key types
        store.put_record(KEY, {1: "int key", "1": "str key"})  # type: ignore[dict-item]
    # two distinct NaN keys both become "NaN": the record could never read back
    with pytest.raises(ValueError, match="round trip"):
        store.put_record(KEY, {float("nan"): 1, float("nan"): 2})  # type: ignore[dict-item]
    assert not store.has_record(KEY)
    assert list((store.root / "tmp").iterdir()) == []


def _expect_rejected(store: LocalStore, key: str = KEY) -> None:
    with pytest.warns(StoreWarning, match="corrupt record"):
        assert store.get_record(key) is None
    assert not store.record_path(key).exists()
    assert len(quarantined(store)) == 1


def test_tampered_record_body_is_rejected(store: LocalStore) -> None:
    store.put_record(KEY, {"result": 41})
    path = store.record_path(KEY)
    path.write_text(path.read_text("utf-8").replace('"result":41', '"result":42'), "utf-8")
    _expect_rejected(store)


def test_truncated_record_is_rejected(store: LocalStore) -> None:
    store.put_record(KEY, {"result": list(range(100))})
    path = store.record_path(KEY)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    _expect_rejected(store)


@pytest.mark.parametrize(
    "content",
    [b"", b"not json at all", b"\xff\xfe\x00garbage", b"[1, 2, 3]", b'{"format": 1}'],
)
def test_garbage_record_files_are_rejected(store: LocalStore, content: bytes) -> None:
    path = store.record_path(KEY)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    _expect_rejected(store)


def test_record_copied_under_another_key_is_rejected(store: LocalStore) -> None:
    other = "other-key-000000"
    store.put_record(KEY, {"v": 1})
    target = store.record_path(other)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(store.record_path(KEY).read_bytes())
    _expect_rejected(store, other)
    assert store.get_record(KEY) == {"v": 1}


def test_rewriting_a_quarantined_record_repairs_it(store: LocalStore) -> None:
    store.put_record(KEY, {"v": 1})
    store.record_path(KEY).write_bytes(b"{")
    with pytest.warns(StoreWarning):
        assert store.get_record(KEY) is None
    store.put_record(KEY, {"v": 1})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert store.get_record(KEY) == {"v": 1}


def test_iter_records_skips_damaged_ones(store: LocalStore) -> None:
    bodies = {f"key-{i:08d}": {"i": i} for i in range(10)}
    for key, body in bodies.items():
        store.put_record(key, body)
    store.record_path("key-00000003").write_bytes(b"{broken")
    # files that are not records are ignored
    (store.root / "records" / "ke" / "notes.txt").write_text("hello")
    (store.root / "records" / "ke" / "bad key.json").write_text("{}")

    with pytest.warns(StoreWarning):
        got = dict(store.iter_records())
    expected = {k: v for k, v in bodies.items() if k != "key-00000003"}
    assert got == expected
    assert list(got) == sorted(got)


def _round_trips(body: dict) -> bool:
    import json

    from hither_store._records import _canonical_bytes

    data = _canonical_bytes(body)
    return _canonical_bytes(json.loads(data)) == data


def test_str_keys_shortcut_agrees_with_the_round_trip() -> None:
    """encode_record skips the JSON round trip when every key is a str: such a body must
    always round-trip, and every body the shortcut sends to the round trip is checked."""
    from collections import OrderedDict

    from hither_store._records import _str_keys_only

    nan = float("nan")
    bodies = [
        {}, {"a": 1}, {"a": [1, 2.5, nan, float("inf"), -0.0, 2**80, None, True]},
        {"s": "\ud800 lone surrogate", "u": "é ✓ \x00 \"quoted\" \\"},
        {"t": (1, (2, {"x": "y"})), "l": [[[]], {}]},
        {"n": {"deep": [{"k": {"j": [1]}}]}},
        {"a": {2: "x", 10: "y"}},          # int keys: sorted as numbers, then as text
        {"a": [{1: "one"}]},               # a single int key round-trips, but is checked
        {"a": OrderedDict([("b", 1)])},    # a dict subclass: checked
        {"a": OrderedDict([(2, 1), (10, 2)])},
        {"a": ({None: 1},)},
        {True: 1},
    ]
    for body in bodies:
        if _str_keys_only(body):
            assert _round_trips(body), body
    assert not _str_keys_only(bodies[6]) and not _round_trips(bodies[6])
    assert not _str_keys_only(bodies[9]) and not _round_trips(bodies[9])
    assert not _str_keys_only(bodies[8]) and _round_trips(bodies[8])


def test_a_nested_body_that_would_not_read_back_is_refused(store: LocalStore) -> None:
    """Keys that collide or reorder once they are JSON strings are refused at any depth,
    inside lists, tuples and dict subclasses too."""
    from collections import OrderedDict

    for body in ({"a": {"b": [{2: "x", 10: "y"}]}},
                 {"a": ({2: "x", 10: "y"},)},
                 {"a": OrderedDict([(2, "x"), (10, "y")])}):
        with pytest.raises(ValueError, match="round trip"):
            store.put_record(KEY, body)  # type: ignore[arg-type]
    assert not store.has_record(KEY)


def test_every_str_keyed_body_round_trips() -> None:
    """Property: whatever a body with str keys holds (numbers, any text, nesting), the
    round trip that encode_record skips for it would have passed."""
    from hither_store._records import _str_keys_only
    from hypothesis import given, settings
    from hypothesis import strategies as st

    leaves = st.none() | st.booleans() | st.integers() | st.floats() | st.text()
    trees = st.recursive(leaves, lambda inner: st.lists(inner) | st.tuples(inner, inner)
                         | st.dictionaries(st.text(), inner), max_leaves=20)

    @settings(max_examples=100, deadline=None)
    @given(st.dictionaries(st.text(), trees))
    def check(body: dict) -> None:
        assert _str_keys_only(body)
        assert _round_trips(body)

    check()


def test_a_forked_writer_names_its_temp_files_apart(store: LocalStore) -> None:
    """Temp names are a pid, a token drawn per process and a counter: a forked child
    draws its own, so parent and child never write the same temp file."""
    import os

    from hither_store import _atomic

    parent = _atomic._NAMES.stem
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its stem, write a record, leave at once
        try:
            os.write(w, _atomic._NAMES.stem.encode())
            store.put_record(KEY + "-child", {"from": "child"})
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        child = f.read()
    os.waitpid(pid, 0)
    store.put_record(KEY, {"from": "parent"})
    assert child and child != parent and str(os.getpid()) in parent
    assert store.get_record(KEY + "-child") == {"from": "child"}
    assert store.get_record(KEY) == {"from": "parent"}
    assert list((store.root / "tmp").iterdir()) == []


def test_a_failed_record_write_leaves_no_temp_file(store: LocalStore,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A write that fails (a full disk) leaves neither a record nor a temp file."""
    import errno
    import os

    def full(fd: int, data: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(OSError, match="No space"):
        store.put_record(KEY, {"x": 1})
    monkeypatch.undo()
    assert store.get_record(KEY) is None
    assert list((store.root / "tmp").iterdir()) == []
