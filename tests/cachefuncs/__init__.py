"""Helpers of the job-cache tests: call logs, strict comparison, store inspection.

Job functions log each execution by appending their name to the file named by the
environment variable ``HITHER_TEST_CALL_LOG``. The variable is read *inside* the function,
so it is not part of any cache key (an argument would be), and worker processes started
with ``spawn`` inherit it.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections import Counter
from pathlib import Path
from typing import Any

CALL_LOG_ENV = "HITHER_TEST_CALL_LOG"


def log_call(name: str) -> None:
    """Append ``name`` to the call log (one ``write`` on an ``O_APPEND`` file: atomic)."""
    fd = os.open(os.environ[CALL_LOG_ENV], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, (name + "\n").encode())
    finally:
        os.close(fd)


def read_calls(path: str | os.PathLike[str]) -> Counter[str]:
    """How many times each function name was logged in ``path``."""
    try:
        with open(path) as f:
            return Counter(line.strip() for line in f if line.strip())
    except FileNotFoundError:
        return Counter()


def strict_equal(a: Any, b: Any, where: str = "value") -> None:
    """Assert ``a == b`` with types compared exactly at every level (numpy dtypes, shapes,
    dict key order and key types, float bit patterns incl. -0.0 and NaN)."""
    ta, tb = type(a), type(b)
    assert ta is tb, f"{where}: type {ta.__module__}.{ta.__qualname__} != " \
                     f"{tb.__module__}.{tb.__qualname__}"
    np = _numpy()
    if np is not None and isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.dtype.str == b.dtype.str, \
            f"{where}: dtype {a.dtype.str} != {b.dtype.str}"
        assert a.shape == b.shape, f"{where}: shape {a.shape} != {b.shape}"
        assert np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(b).tobytes(), \
            f"{where}: array content differs"
    elif np is not None and isinstance(a, np.generic):
        assert a.dtype.str == b.dtype.str, f"{where}: dtype {a.dtype.str} != {b.dtype.str}"
        assert a.tobytes() == b.tobytes(), f"{where}: {a!r} != {b!r}"
    elif ta is float:
        if math.isnan(a):
            assert math.isnan(b), f"{where}: {a!r} != {b!r}"
        else:
            assert a == b and math.copysign(1, a) == math.copysign(1, b), \
                f"{where}: {a!r} != {b!r}"
    elif ta is complex:
        strict_equal(a.real, b.real, f"{where}.real")
        strict_equal(a.imag, b.imag, f"{where}.imag")
    elif ta in (list, tuple):
        assert len(a) == len(b), f"{where}: length {len(a)} != {len(b)}"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            strict_equal(x, y, f"{where}[{i}]")
    elif ta is dict:
        ka, kb = list(a), list(b)
        assert len(ka) == len(kb), f"{where}: keys {ka!r} != {kb!r}"
        for x, y in zip(ka, kb, strict=True):  # order kept, key types exact
            strict_equal(x, y, f"{where}<key {x!r}>")
        for k in ka:
            strict_equal(a[k], b[k], f"{where}[{k!r}]")
    elif ta in (set, frozenset):
        assert a == b, f"{where}: {a!r} != {b!r}"
        assert sorted(map(_type_repr, a)) == sorted(map(_type_repr, b)), \
            f"{where}: element types differ"
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def _type_repr(x: Any) -> str:
    return f"{type(x).__qualname__}:{x!r}"


def _numpy() -> Any:
    try:
        import numpy
    except ImportError:  # pragma: no cover
        return None
    return numpy


def store_files(root: str | os.PathLike[str]) -> dict[str, tuple[int, int]]:
    """Relative path -> (size, mtime_ns) of every file under ``blobs/`` and ``records/``."""
    out = {}
    base = Path(root)
    for sub in ("blobs", "records"):
        for p in sorted((base / sub).rglob("*")):
            if p.is_file():
                st = p.stat()
                out[str(p.relative_to(base))] = (st.st_size, st.st_mtime_ns)
    return out


def blob_files(root: str | os.PathLike[str]) -> list[Path]:
    """Every blob file of the store at ``root``."""
    return sorted(p for p in (Path(root) / "blobs").rglob("*") if p.is_file())


def blob_is_intact(path: Path) -> bool:
    """Whether a blob file's content hashes to its name."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest() == path.name


def blob_path_of(root: str | os.PathLike[str], ref: str) -> Path:
    """The file of the blob ``sha256://<hex>`` in the store at ``root``."""
    hexdigest = ref.split("://", 1)[1]
    matches = [p for p in blob_files(root) if p.name == hexdigest]
    assert len(matches) == 1, f"blob {ref} not found once under {root}: {matches}"
    return matches[0]


def flip_byte(path: str | os.PathLike[str], offset: int) -> None:
    """Damage a (read-only) file in place: invert one byte at ``offset`` (from the end
    when negative)."""
    os.chmod(path, 0o644)
    size = os.path.getsize(path)
    pos = offset if offset >= 0 else size + offset
    with open(path, "r+b") as f:
        f.seek(pos)
        b = f.read(1)
        f.seek(pos)
        f.write(bytes([b[0] ^ 0xFF]))
