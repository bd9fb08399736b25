"""Why a job's key is what it is: ``explain`` a key, follow a record's ``lineage``.

A job's key is the hash of its function (name, version, code identity), its runtime
identity and the digests of its inputs (see :mod:`hither.cacheflow`). When a job misses the
cache, :func:`explain` finds the nearest other record of the same function and names the
key parts that differ: the version, a changed helper, the runtime, an input.

Keys may be given in full or as a unique prefix of at least 6 hex characters.
"""

from __future__ import annotations

import base64
import os
import re
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeAlias

from hither_store import LocalStore, default_store_path

from ._codec import TAG
from .cache import JobCache
from .errors import KeyLookupError
from .hashing import describe_value
from .record import BadRecord, InputEntry, Record

__all__ = [
    "Explanation",
    "InputInfo",
    "KeyLookupError",
    "LineageNode",
    "describe_manifest",
    "explain",
    "lineage",
    "open_store",
    "resolve_key",
]

MIN_PREFIX = 6
"""The shortest key prefix accepted."""

StoreArg: TypeAlias = "JobCache | LocalStore | str | os.PathLike[str] | None"
"""Where records are read: a ``JobCache``, a ``LocalStore``, a store path, or None (the default)."""

_HEX = re.compile(r"[0-9a-f]+")


# ----------------------------------------------------------------------------- stores
def open_store(cache: StoreArg = None, *, must_exist: bool = False) -> LocalStore:
    """The :class:`LocalStore` behind ``cache``: a ``JobCache``, a store, a path, or None
    for the default store (``$HITHER_STORE`` or the user cache directory).

    With ``must_exist``, a directory that does not exist raises :class:`KeyLookupError`
    instead of being created.
    """
    if isinstance(cache, LocalStore):
        return cache
    if isinstance(cache, JobCache):
        return cache.store
    root = default_store_path() if cache is None else Path(os.fspath(cache))
    root = root.expanduser()
    if must_exist and not (root / "records").is_dir():
        raise KeyLookupError(f"no hither store at {root}", reason="no-store")
    return LocalStore(root)


def resolve_key(store: LocalStore, text: str) -> str:
    """The full key of the record that ``text`` names: a full key, or a unique prefix of
    at least 6 hex characters (looked up among the record file names).

    Raises:
        KeyLookupError: no record matches, or several do.
    """
    text = text.strip().lower()
    if len(text) < MIN_PREFIX or not _HEX.fullmatch(text):
        raise KeyLookupError(f"not a key or key prefix: {text!r} (give at least "
                             f"{MIN_PREFIX} hex characters)", reason="invalid")
    if len(text) >= 8 and store.has_record(text):
        return text
    found = tuple(store.record_keys(text))
    if not found:
        empty = not store.record_keys()
        raise KeyLookupError(f"no record with key {text!r} in {store.root}"
                             + (" (the store is empty)" if empty else ""))
    if len(found) > 1:
        shown = ", ".join(k[:12] for k in found[:5]) + (", ..." if len(found) > 5 else "")
        raise KeyLookupError(f"key prefix {text!r} is ambiguous: {len(found)} records match "
                             f"({shown})", candidates=found, reason="ambiguous")
    return found[0]


# ----------------------------------------------------------------------------- describing
_DTYPE_RE = re.compile(r"[<>|=]?([biufcmM])(\d+)(\[\w+\])?")
_DTYPE_KINDS = {"i": "int", "u": "uint", "f": "float", "c": "complex"}


def dtype_name(label: str) -> str:
    """``<f8`` -> ``float64`` (other labels are returned as they are)."""
    m = _DTYPE_RE.fullmatch(label)
    if m is None:
        return label
    kind, size, unit = m.group(1), int(m.group(2)), m.group(3) or ""
    if kind == "b":
        return "bool" if size == 1 else label
    if kind in "mM":
        return ("datetime64" if kind == "M" else "timedelta64") + unit
    return f"{_DTYPE_KINDS[kind]}{size * 8}"


def describe_manifest(manifest: Any) -> str:
    """A short description of an encoded value, read from its manifest alone (no blob is
    loaded): ``ndarray float64 (1000, 3)``, ``dict(4)``, ``str 'abc'``, ``3``."""
    if manifest is None or isinstance(manifest, (bool, int, float, str)):
        return describe_value(manifest)
    if isinstance(manifest, list):
        return f"list({len(manifest)})"
    if not isinstance(manifest, dict):
        return type(manifest).__name__
    tag = manifest.get(TAG)
    if tag is None:
        return f"dict({len(manifest)})"
    try:
        if tag == "npy":
            shape = tuple(manifest.get("shape", ()))
            return f"ndarray {dtype_name(str(manifest.get('dtype', '?')))} {shape}"
        if tag in ("tuple", "set", "frozenset", "dict"):
            return f"{tag}({len(manifest['v'])})"
        if tag == "int":
            return describe_value(int(manifest["v"], 16))
        if tag == "float":
            return str(manifest["v"]).split(":")[0]
        if tag == "b64":
            return f"bytes({len(base64.b64decode(manifest['v']))})"
        if tag == "bytes":
            return f"bytes({manifest.get('size', '?')})"
        if tag == "str":
            return f"str ({manifest.get('size', '?')} bytes of UTF-8)"
        if tag == "file":
            return f"File {manifest.get('name')!r}"
        if tag == "npscalar":
            return f"{dtype_name(str(manifest.get('dtype', 'numpy')))} scalar"
        if tag == "complex":
            return "complex"
    except (KeyError, TypeError, ValueError):
        pass
    return f"<{tag}>"


def format_time(t: float | None) -> str:
    """A local date and time, ``2026-01-31 14:05:09`` (``-`` when unknown)."""
    if not isinstance(t, (int, float)) or isinstance(t, bool):
        return "-"
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))
    except (OverflowError, OSError, ValueError):  # a record's absurd time
        return "-"


def format_elapsed(sec: Any) -> str:
    """A duration for people: ``350 µs``, ``12.5 ms``, ``3.20 s``, ``2m 05s``, ``1h 02m 05s``."""
    if not isinstance(sec, (int, float)):
        return "-"
    if sec < 1e-3:
        return f"{sec * 1e6:.0f} µs"
    if sec < 1:
        return f"{sec * 1e3:.1f} ms"
    if sec < 60:
        return f"{sec:.2f} s"
    minutes, s = divmod(int(sec), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m {s:02d}s" if hours else f"{minutes}m {s:02d}s"


def format_runtime(runtime: Any) -> str:
    """A runtime identity in one line: ``host``, ``docker image=sha256:0123456789ab``."""
    if not isinstance(runtime, dict):
        return str(runtime)
    kind = str(runtime.get("kind", "?"))
    if kind == "host" and len(runtime) == 1:
        return "host"
    rest = [f"{k}={_clip_hash(v)}" for k, v in sorted(runtime.items()) if k != "kind"]
    return " ".join([kind, *rest])


def _clip_hash(value: Any) -> str:
    text = str(value)
    m = re.fullmatch(r"(sha256:)?([0-9a-f]{40,})", text)
    return (m.group(1) or "") + m.group(2)[:12] if m else text


def _typed(desc: str, typename: str | None) -> str:
    """``3`` -> ``int 3``: descriptions of numbers are bare reprs; name their type."""
    if typename in ("int", "float", "complex") and not desc.startswith(typename):
        return f"{typename} {desc}"
    return desc


def _manifest_type(manifest: Any) -> str | None:
    if isinstance(manifest, bool) or manifest is None:
        return None
    if isinstance(manifest, (int, float)):
        return type(manifest).__name__
    if isinstance(manifest, dict) and manifest.get(TAG) in ("int", "float", "complex"):
        return str(manifest[TAG])
    return None


# ----------------------------------------------------------------------------- subjects
@dataclass(frozen=True)
class InputInfo:
    """One input of a job, as it entered the key."""

    name: str
    digest: str
    desc: str
    """A short description of the value, e.g. ``int 3`` or ``ndarray float64 (10,)``."""
    job: str | None = None
    """The key of the job whose result this input was (its lineage), if any."""


@dataclass
class _Subject:
    """What is known of one key, from a record or from a job that has none."""

    key: str
    name: str
    version: str
    code: str
    runtime: Any
    key_format: Any
    inputs: dict[str, InputInfo]
    sources: dict[str, str]
    status: str | None
    recorded_at: float | None
    label: str | None
    has_record: bool


def _from_record(key: str, raw: dict[str, Any]) -> _Subject:
    rec = Record.from_dict(raw, key, strict=False)
    prov = rec.provenance
    parts = prov.key_parts
    inputs: dict[str, InputInfo] = {}
    found = parts.get("inputs")
    digests: dict[str, Any] = found if isinstance(found, dict) else {}
    for name in sorted(rec.inputs or digests):
        e = rec.inputs.get(name) or InputEntry(digest=str(digests.get(name, "")))
        desc = e.desc or (describe_manifest(e.value) if e.has_value else "?")
        inputs[name] = InputInfo(name, e.digest or str(digests.get(name, "")),
                                 _typed(desc, _manifest_type(e.value if e.has_value else None)),
                                 e.job)
    fn = prov.function
    return _Subject(
        key=key, name=fn.name, version=fn.version, code=fn.code,
        runtime=prov.runtime or parts.get("runtime"), key_format=parts.get("format"),
        inputs=inputs, sources=dict(fn.sources), status=rec.status,
        recorded_at=prov.recorded_at, label=prov.label or None, has_record=True)


def _from_job(job: Any) -> _Subject:
    info = job.keyinfo
    if info is None:
        raise KeyLookupError(f"job {job.label!r} has no key: it ran without a job cache, "
                             "or its inputs are not known yet", reason="no-key")
    parts = info.parts
    kwargs = job.kwargs
    inputs = {}
    for name in sorted(info.inputs):
        e = info.inputs[name]
        raw = kwargs.get(name)
        typename = type(raw).__name__ if type(raw) in (int, float, complex) else None
        inputs[name] = InputInfo(name, str(e.get("digest", "")),
                                 _typed(str(e.get("desc", "?")), typename), e.get("job"))
    fn = parts.get("function") or {}
    return _Subject(
        key=info.key, name=str(fn.get("name")), version=str(fn.get("version")),
        code=str(fn.get("code")), runtime=parts.get("runtime"),
        key_format=parts.get("format"), inputs=inputs, sources=dict(info.code.sources),
        status=job.get_status().value, recorded_at=None, label=job.label, has_record=False)


# ----------------------------------------------------------------------------- differences
def _code_change(new: dict[str, str], old: dict[str, str]) -> str:
    groups: dict[str, list[str]] = {}
    for piece in sorted(set(new) | set(old)):
        a, b = new.get(piece), old.get(piece)
        if a == b:
            continue
        kind, _, name = piece.partition(":")
        label = name or piece
        if b is None:
            label += " (added)"
        elif a is None:
            label += " (removed)"
        groups.setdefault(kind, []).append(label)
    if not groups:
        return ("code changed (outside the function and helper sources: a constant, "
                "closure value, local module or additional file)")
    names = {"fn": "function", "helper": "helpers", "closure": "closures"}
    text = "; ".join(f"{names.get(k, k)}: {', '.join(v)}" for k, v in groups.items())
    return f"code changed ({text})"


def _input_change(name: str, new: InputInfo | None, old: InputInfo | None) -> str:
    if old is None and new is not None:
        return f"input {name!r} added: {new.desc}"
    if new is None and old is not None:
        return f"input {name!r} removed (was {old.desc})"
    assert new is not None and old is not None
    if new.desc != old.desc:
        text = f"input {name!r} changed: {old.desc} → {new.desc}"
    else:
        text = f"input {name!r} changed: {new.desc} (same description, other content)"
    if new.job != old.job and (new.job or old.job):
        text += f"; from job {_short(old.job)} → {_short(new.job)}"
    return text


def _short(key: str | None) -> str:
    return key[:12] if key else "none (a value)"


def _differences(new: _Subject, old: _Subject) -> list[str]:
    out = []
    if new.key_format != old.key_format:
        out.append(f"key format {old.key_format} → {new.key_format}")
    if new.version != old.version:
        out.append(f"version {old.version} → {new.version}")
    if new.code != old.code:
        out.append(_code_change(new.sources, old.sources))
    if new.runtime != old.runtime:
        out.append(f"runtime changed: {format_runtime(old.runtime)} → "
                   f"{format_runtime(new.runtime)}")
    for name in sorted(set(new.inputs) | set(old.inputs)):
        a, b = new.inputs.get(name), old.inputs.get(name)
        if a is None or b is None or a.digest != b.digest:
            out.append(_input_change(name, a, b))
    return out


def nearest_among(subject: _Subject, candidates: Iterable[_Subject]
                  ) -> tuple[_Subject, list[str]] | None:
    """The candidate record that explains ``subject`` best, and the differences: the
    same inputs first (after a code edit: the previous code's run on these inputs, so the
    answer is "code changed"), then the fewest differing parts, the same version, the most
    recent. Records of other functions and the subject's own record are skipped."""
    best: tuple[tuple[int, int, bool, float], _Subject, list[str]] | None = None
    for other in candidates:
        if other.key == subject.key or other.name != subject.name:
            continue
        diffs = _differences(subject, other)
        inputs_differ = sum(
            1 for n in set(subject.inputs) | set(other.inputs)
            if (subject.inputs.get(n) and subject.inputs[n].digest)
            != (other.inputs.get(n) and other.inputs[n].digest))
        rank = (inputs_differ, len(diffs), other.version != subject.version,
                -(other.recorded_at or 0.0))
        if best is None or rank < best[0]:
            best = (rank, other, diffs)
    return None if best is None else (best[1], best[2])


def subjects(store: LocalStore, names: set[str] | None = None) -> Iterator[_Subject]:
    """The records of ``store`` as subjects of explanations (those of functions ``names``
    only, when given); records that are not what hither writes are skipped."""
    for key, raw in store.iter_records():
        try:
            subject = _from_record(key, raw)
        except BadRecord:
            continue
        if names is None or subject.name in names:
            yield subject


def _nearest(store: LocalStore, subject: _Subject) -> tuple[_Subject, list[str]] | None:
    """The earlier record of the same function that explains this key best."""
    return nearest_among(subject, subjects(store, {subject.name}))


# ----------------------------------------------------------------------------- explain
@dataclass
class Explanation:
    """What went into a key, and how it differs from the nearest other record of the
    same function. :meth:`to_text` renders it."""

    key: str
    function: str
    version: str
    code_digest: str
    runtime: Any
    inputs: list[InputInfo]
    has_record: bool
    status: str | None = None
    """The record's status, or the job's status when it has no record."""
    label: str | None = None
    recorded_at: float | None = None
    nearest_key: str | None = None
    """The key of the nearest other record of the same function (None: there is none)."""
    nearest_version: str | None = None
    nearest_recorded_at: float | None = None
    differences: list[str] = field(default_factory=list)
    """One line per key part that differs from the nearest record."""

    def to_text(self) -> str:
        """A readable, multi-line account of the key."""
        lines = [
            f"key       {self.key}",
            f"function  {self.function} {self.version}  (code {self.code_digest[:12]})",
            f"runtime   {format_runtime(self.runtime)}",
        ]
        if self.has_record:
            lines.append(f"record    {self.status}, recorded {format_time(self.recorded_at)}")
        else:
            lines.append(f"record    none: the job missed the cache (job is {self.status})")
        lines.append("inputs" if self.inputs else "inputs    none")
        width = max((len(i.name) for i in self.inputs), default=0)
        for i in self.inputs:
            src = f"  from job {i.job[:12]}" if i.job else ""
            lines.append(f"  {i.name:<{width}}  {i.desc}  [{i.digest[:12]}]{src}")
        if self.nearest_key is None:
            lines.append(f"no other record of {self.function!r} in the store: nothing to "
                         "compare with (first run, or the store was cleared)")
            return "\n".join(lines)
        lines.append(f"nearest other record of {self.function!r}: {self.nearest_key[:12]} "
                     f"(version {self.nearest_version}, recorded "
                     f"{format_time(self.nearest_recorded_at)})")
        if self.differences:
            lines.append("differences:")
            lines.extend(f"  - {d}" for d in self.differences)
        else:
            lines.append("differences: none in the key parts")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.to_text()

    def _repr_html_(self) -> str:
        from .explain_html import explanation_html

        return explanation_html(self)


def explain(target: Any, cache: StoreArg = None) -> Explanation:
    """Explain a key: ``target`` is a :class:`hither.Job` or a key (or unique key prefix).

    ``cache`` is a ``JobCache``, a ``LocalStore`` or a store path; by default the job's own
    cache, else the default store. A job that has no record (it missed and is running, or
    failed) is explained from what went into its key.

    Raises:
        KeyLookupError: an unknown or ambiguous key, or a job without a key.
    """
    from .job import Job

    if isinstance(target, Job):
        if cache is None:
            cache = target.get_settings().job_cache
        store = open_store(cache)
        rec = store.get_record(target.key) if target.key else None
        subject = _from_record(target.key, rec) if rec and target.key else _from_job(target)
    else:
        store = open_store(cache)
        key = resolve_key(store, str(target))
        rec = store.get_record(key)
        if rec is None:
            raise KeyLookupError(f"the record {key[:12]} cannot be read")
        subject = _from_record(key, rec)
    out = Explanation(
        key=subject.key, function=subject.name, version=subject.version,
        code_digest=subject.code, runtime=subject.runtime, inputs=list(subject.inputs.values()),
        has_record=subject.has_record, status=subject.status, label=subject.label,
        recorded_at=subject.recorded_at)
    near = _nearest(store, subject)
    if near is not None:
        other, diffs = near
        out.nearest_key = other.key
        out.nearest_version = other.version
        out.nearest_recorded_at = other.recorded_at
        out.differences = diffs
    return out


# ----------------------------------------------------------------------------- lineage
@dataclass
class LineageNode:
    """A record and the records of the inputs that came from jobs, recursively."""

    key: str
    input_name: str | None = None
    """The name of the input of the parent this record fed (None at the root)."""
    function: str | None = None
    version: str | None = None
    status: str | None = None
    """``finished`` or ``error``; None when there is no record."""
    result: str | None = None
    """A description of the result, or the error type."""
    note: str | None = None
    """``no record``, ``cycle``, ``depth limit`` or ``shown above`` when not expanded."""
    values: list[tuple[str, str]] = field(default_factory=list)
    """Inputs given as values: (name, description)."""
    children: list[LineageNode] = field(default_factory=list)

    def walk(self) -> Iterator[LineageNode]:
        """This node and all below it, depth first."""
        yield self
        for c in self.children:
            yield from c.walk()

    def _repr_html_(self) -> str:
        from .explain_html import lineage_tree_html

        return lineage_tree_html(self)


def lineage(key: str, cache: StoreArg = None, *, max_depth: int = 50) -> LineageNode:
    """The lineage tree of record ``key`` (a key or unique prefix): its inputs' records,
    followed through ``inputs[*].job`` and ``inputs[*].jobs`` recursively. Cycles and records already shown are
    not expanded again; nothing deeper than ``max_depth`` is read."""
    store = open_store(cache)
    full = resolve_key(store, key)
    seen: set[str] = set()
    return _visit(store, full, None, 0, (), seen, max_depth)


def _visit(store: LocalStore, key: str, input_name: str | None, depth: int,
           ancestors: tuple[str, ...], seen: set[str], max_depth: int) -> LineageNode:
    node = LineageNode(key=key, input_name=input_name)
    if key in ancestors:
        node.note = "cycle"
        return node
    try:
        raw = store.get_record(key)
        rec = None if raw is None else Record.from_dict(raw, key, strict=False)
    except ValueError:  # a bad key, or a record that is not what hither writes
        rec = None
    if rec is None:
        node.note = "no record"
        return node
    node.function, node.version, node.status = rec.function.name, rec.function.version, \
        rec.status
    if rec.ok:
        node.result = describe_manifest(rec.result)
    else:
        node.result = rec.error.short_type if rec.error else "error"
    if key in seen:
        node.note = "shown above"
        return node
    seen.add(key)
    for name in sorted(rec.inputs):
        entry = rec.inputs[name]
        ups = entry.upstream
        if entry.job is None:  # a value (perhaps holding job results)
            desc = entry.desc or (describe_manifest(entry.value) if entry.has_value else "?")
            value = entry.value if entry.has_value else None
            node.values.append((name, _typed(desc, _manifest_type(value))))
        for i, up in enumerate(ups):
            label = name if entry.job is not None else f"{name}[{i}]"
            if depth + 1 > max_depth:
                node.children.append(LineageNode(key=up, input_name=label, note="depth limit"))
            else:
                node.children.append(_visit(store, up, label, depth + 1, (*ancestors, key),
                                            seen, max_depth))
    return node
