"""The first difference between two results: path, type, and for arrays by how much."""

from __future__ import annotations

from pathlib import Path

import numpy as np

import hither as hi
from hither.compare import first_difference


def test_equal_values_have_no_difference(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"xyz")
    (tmp_path / "b").write_bytes(b"xyz")
    a = {"x": [1, 2.5, np.arange(4.0)], "f": hi.File(str(tmp_path / "a")), "n": float("nan")}
    b = {"x": [1, 2.5, np.arange(4.0)], "f": hi.File(str(tmp_path / "b")), "n": float("nan")}
    assert first_difference(a, b) is None


def test_first_difference_in_hash_order() -> None:
    a = {"b": [1, 2, 3], "a": {"z": "same", "y": 1}}
    b = {"b": [1, 5, 3], "a": {"z": "same", "y": 2}}
    d = first_difference(a, b)
    assert d is not None and d.path == "result['a']['y']" and d.type == "int"
    assert "1 → 2" in d.detail


def test_arrays_max_abs_rel_and_count() -> None:
    a = np.array([[1.0, 2.0], [4.0, np.nan]])
    b = np.array([[1.0, 2.5], [3.0, np.nan]])
    d = first_difference({"k": [0, a]}, {"k": [0, b]})
    assert d is not None and d.path == "result['k'][1]"
    assert d.type == "ndarray float64 (2, 2)"
    assert d.count == 2 and d.size == 4
    assert d.max_abs == 1.0 and d.max_rel == 0.25
    assert first_difference(a, b.astype(np.float32)).detail == "dtype float64 → float32"
    assert first_difference(a, a[:1]).detail == "shape (2, 2) → (1, 2)"


def test_type_length_and_file_differences(tmp_path: Path) -> None:
    assert first_difference([1, 2], (1, 2)).detail == "the type changed"
    assert first_difference([1, 2], [1, 2, 3]).detail == "length 2 → 3"
    (tmp_path / "a").write_bytes(b"abcd")
    (tmp_path / "b").write_bytes(b"abXd")
    d = first_difference(hi.File(str(tmp_path / "a")), hi.File(str(tmp_path / "b")))
    assert d is not None and d.type == "File" and "first at byte 2" in d.detail
