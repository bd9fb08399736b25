"""The first difference between two results: where, of what type, and by how much.

:func:`first_difference` walks two decoded values in the order of their canonical hash
(dict keys sorted) and returns the first place where they differ, as a path like
``result['traces'][2]``. Arrays are compared as a whole: shape, dtype, then values, with
the maximum absolute and relative difference and the count of differing elements (NaN
equal to NaN). Files are compared by content.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["Difference", "first_difference"]


@dataclass(frozen=True)
class Difference:
    """Where two values first differ, and how."""

    path: str
    type: str
    """The type at that path (``ndarray float64``, ``dict``, ``File``, ``int``...)."""
    detail: str
    max_abs: float | None = None
    max_rel: float | None = None
    count: int | None = None
    """Arrays: the number of differing elements."""
    size: int | None = None
    """Arrays: the number of elements."""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serializable form."""
        return asdict(self)

    def __str__(self) -> str:
        return f"{self.path} ({self.type}): {self.detail}"


def _short(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def _type_name(v: Any) -> str:
    if type(v).__module__ == "numpy" and hasattr(v, "dtype"):
        return f"{type(v).__name__} {v.dtype}"
    return type(v).__name__


def first_difference(old: Any, new: Any, path: str = "result") -> Difference | None:
    """The first difference between ``old`` and ``new`` (None: they are equal)."""
    from ._codec import File

    if type(old) is not type(new):
        return Difference(path, f"{_type_name(old)} → {_type_name(new)}", "the type changed")
    if isinstance(old, dict):
        ko, kn = set(old), set(new)
        if ko != kn:
            extra = sorted(map(str, kn - ko))[:3]
            gone = sorted(map(str, ko - kn))[:3]
            return Difference(path, "dict", f"keys added {extra}, removed {gone}")
        for k in sorted(old, key=lambda x: (type(x).__name__, str(x))):
            d = first_difference(old[k], new[k], f"{path}[{k!r}]")
            if d is not None:
                return d
        return None
    if isinstance(old, (list, tuple)):
        for i, (a, b) in enumerate(zip(old, new, strict=False)):
            d = first_difference(a, b, f"{path}[{i}]")
            if d is not None:
                return d
        if len(old) != len(new):
            return Difference(path, type(old).__name__, f"length {len(old)} → {len(new)}")
        return None
    if isinstance(old, File):
        a, b = _read(old.path), _read(new.path)
        if a == b:
            return None
        first = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y),
                     min(len(a), len(b)))
        return Difference(path, "File", f"contents differ ({len(a)} → {len(b)} bytes, first "
                          f"at byte {first})")
    if type(old).__module__ == "numpy":
        return _array_difference(old, new, path)
    if isinstance(old, float) and isinstance(new, float):
        if old == new or (old != old and new != new):
            return None
        return Difference(path, "float", f"{old!r} → {new!r}", max_abs=abs(new - old),
                          max_rel=abs(new - old) / abs(old) if old else None)
    if old == new:
        return None
    return Difference(path, _type_name(old), f"{_short(old)} → {_short(new)}")


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _array_difference(old: Any, new: Any, path: str) -> Difference | None:
    import numpy as np

    kind = _type_name(old)
    if not isinstance(old, np.ndarray):  # a numpy scalar
        old, new = np.asarray(old), np.asarray(new)
    if old.dtype != new.dtype:
        return Difference(path, kind, f"dtype {old.dtype} → {new.dtype}")
    if old.shape != new.shape:
        return Difference(path, kind, f"shape {old.shape} → {new.shape}")
    if old.dtype.kind not in "biufc":
        if np.array_equal(old, new):
            return None
        return Difference(path, kind, "values differ", size=int(old.size))
    both_nan = (np.isnan(old) & np.isnan(new)) if old.dtype.kind in "fc" else \
        np.zeros(old.shape, dtype=bool)
    differ = (old != new) & ~both_nan
    count = int(np.count_nonzero(differ))
    if count == 0:
        return None
    a = old[differ].astype(np.complex128 if old.dtype.kind == "c" else np.float64)
    b = new[differ].astype(a.dtype)
    diff = np.abs(b - a)
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = diff / np.abs(a)
    max_abs = float(np.nanmax(diff)) if diff.size else 0.0
    finite = rel[np.isfinite(rel)]
    max_rel = float(finite.max()) if finite.size else None
    detail = f"{count} of {old.size} elements differ, max abs diff {max_abs:.3g}"
    if max_rel is not None:
        detail += f", max rel diff {max_rel:.3g}"
    return Difference(path, f"ndarray {old.dtype} {old.shape}", detail, max_abs=max_abs,
                      max_rel=max_rel, count=count, size=int(old.size))
