"""Results read back by key, and keys re-derived from their records.

:func:`load` returns the value stored under a key, after checking every byte it read
against the record's result hash. :func:`verify` recomputes a key from its record alone:
the key from the recorded key parts, the code digest from the recorded code pieces, each
piece from the recorded normalized source or from the files of the stored code bundle,
each input digest from the recorded value (or from the result hash of the upstream record)
and the result hash from the result's blobs. Every field that goes into a key is in the
record (:mod:`hither.cacheflow`), so nothing else is needed.
"""

from __future__ import annotations

import ast
import os
from dataclasses import dataclass, field
from typing import Any

from hither_store import LocalStore, StoreError

from .errors import CacheError
from .explaining import StoreArg, open_store, resolve_key
from .record import BadRecord, Record

__all__ = ["Check", "VerifyReport", "load", "load_record", "verify"]


@dataclass(frozen=True)
class Check:
    """One check: what was checked, whether it held (None: could not be checked here),
    and a detail line."""

    name: str
    ok: bool | None
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serializable form."""
        return {"name": self.name, "ok": self.ok, "detail": self.detail}


@dataclass
class VerifyReport:
    """The checks of one record (see :func:`verify`)."""

    key: str
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no check failed (checks that could not be made do not fail)."""
        return all(c.ok is not False for c in self.checks)

    def failures(self) -> list[Check]:
        """The checks that failed."""
        return [c for c in self.checks if c.ok is False]

    def add(self, name: str, ok: bool | None, detail: str = "") -> None:
        """Append a check."""
        self.checks.append(Check(name, ok, detail))


def load_record(key: str, store: LocalStore) -> Record:
    """The typed record of ``key`` (a full key or a unique prefix) in ``store``.

    Raises:
        KeyLookupError: no record, or several, match.
        CacheError: the record is not what hither writes.
    """
    key = resolve_key(store, key)
    raw = store.get_record(key)
    if raw is None:
        raise CacheError(f"the record {key} cannot be read (damaged or removed)")
    try:
        return Record.from_dict(raw, key)
    except BadRecord as e:
        raise CacheError(f"the record {key} is not a hither record: {e}") from None


def _decode_checked(rec: Record, store: LocalStore) -> Any:
    from . import values
    from .hashing import hash_value

    try:
        value = values.decode(rec.result, store)
    except (StoreError, OSError, ValueError, TypeError) as e:
        raise CacheError(f"the result of {rec.key} cannot be read: {e}") from None
    actual = hash_value(value, path="result")
    if actual != rec.result_hash:
        raise CacheError(f"the result of {rec.key} does not match its record: hash "
                         f"{actual[:16]}, the record says {str(rec.result_hash)[:16]}")
    return value


def load(key: str, cache: StoreArg = None) -> Any:
    """The result stored under ``key`` (a full key or a unique prefix of at least 6 hex
    characters), read from ``cache`` (a ``hi.JobCache``, a store path, default: the default
    store) and checked against the record's result hash. Arrays come back memory-mapped
    from the store, files as :class:`hi.File` pointing into the store (read-only).

    Raises:
        KeyLookupError: no record matches ``key``.
        CacheError: the record or its blobs are damaged (nothing wrong is returned).
        Exception: the stored failure, when the job failed (rebuilt as ``job.wait()``
            would raise it).
    """
    store = open_store(cache, must_exist=True)
    rec = load_record(key, store)
    if not rec.ok:
        from .errors import rebuild_exception

        err = rec.error
        assert err is not None
        raise rebuild_exception(err.type, err.message, err.traceback, args=err.args)
    return _decode_checked(rec, store)


# ----------------------------------------------------------------------------- verify
def verify(key: str, cache: StoreArg = None) -> VerifyReport:
    """Recompute ``key`` from its record alone and check every part of it (see the module
    docstring); never raises for what it finds, only for a key that names no record."""
    store = open_store(cache, must_exist=True)
    full = resolve_key(store, key)
    report = VerifyReport(full)
    raw = store.get_record(full)
    try:
        rec = Record.from_dict(raw, full)
    except BadRecord as e:
        report.add("record", False, f"not a hither record: {e}")
        return report
    report.add("record", True, "well-formed")
    check_key(rec, report)
    check_code(rec, store, report)
    check_inputs(rec, store, report)
    if rec.ok:
        try:
            _decode_checked(rec, store)
            report.add("result", True, f"result hash {str(rec.result_hash)[:16]} matches")
        except CacheError as e:
            report.add("result", False, str(e))
    return report


def check_key(rec: Record, report: VerifyReport) -> None:
    """The key is the hash of the recorded key parts, which match the record's fields."""
    from .hashing import hash_struct

    parts = rec.provenance.key_parts
    if not parts:
        report.add("key", False, "the record has no key parts")
        return
    actual = hash_struct(parts)
    report.add("key", actual == rec.key, "recomputed from the key parts" if actual == rec.key
               else f"the key parts hash to {actual[:16]}, not to the key")
    fn = rec.function
    want = {"name": fn.name, "version": fn.version, "code": fn.code}
    report.add("function", parts.get("function") == want,
               f"{fn.name} {fn.version}, code {fn.code[:16]}")
    report.add("runtime", parts.get("runtime") == rec.provenance.runtime,
               "recorded identity is the one in the key"
               if parts.get("runtime") == rec.provenance.runtime
               else "the recorded runtime differs from the key's")


def check_code(rec: Record, store: LocalStore, report: VerifyReport) -> None:
    """The code digest from its pieces; the pieces from sources and the code bundle."""
    from .codeid import _digest, _sha

    fn = rec.function
    if not fn.parts:
        report.add("code", None, "the record has no code pieces (written by an older hither)")
        return
    report.add("code digest", _digest(fn.parts) == fn.code,
               f"{len(fn.parts)} pieces" if _digest(fn.parts) == fn.code
               else "the code pieces do not hash to the code digest")
    bad = [k for k, src in fn.sources.items() if fn.parts.get(k) != _sha("source", src)]
    report.add("sources", not bad, f"{len(fn.sources)} normalized sources match their pieces"
               if not bad else f"source of {bad[0]} does not match its piece")
    digest = rec.provenance.code_bundle
    if digest is None:
        report.add("code bundle", None, "no code bundle recorded (code without a file)")
        return
    problem = check_bundle(rec, store)
    report.add("code bundle", problem is None,
               f"{digest} holds the recorded code" if problem is None else problem)


def check_bundle(rec: Record, store: LocalStore) -> str | None:
    """Why the record's code bundle in ``store`` is not the recorded code (None: it is)."""
    from hither_store.closure import code_files

    from .codeid import _sha, _source_digest
    from .runtimes.bundle import bundle_digest

    digest = rec.provenance.code_bundle
    assert digest is not None
    try:
        files = code_files(store.root, digest)
    except ValueError as e:
        return str(e)
    if files is None:
        return f"code bundle {digest} is missing"
    if bundle_digest({rel: sha for rel, (sha, _) in files.items()}) != digest:
        return f"code bundle {digest}: its files do not hash to its name"
    base = store.root / "code" / digest
    parts = rec.function.parts
    for piece, want in parts.items():
        kind, _, rel = piece.partition(":")
        if kind not in ("local_module", "file"):
            continue
        if rel not in files:
            return f"code bundle {digest} lacks {rel}"
        data = (base / rel).read_bytes()
        got = _source_digest(data) if kind == "local_module" else _sha("raw", data)
        if got != want:
            return f"{rel} in code bundle {digest} is not the recorded {piece}"
    entry = rec.provenance.code_entry
    module, qualname = entry.get("module", ""), entry.get("function", "")
    src = rec.function.sources.get(f"fn:{qualname}")
    path = base / f"{module}.py"
    if not module or f"{module}.py" not in files:
        return f"code bundle {digest} lacks the function's module {module!r}"
    if src is not None and _function_source(path, qualname) != src:
        return (f"{qualname} in {module}.py of code bundle {digest} is not the recorded "
                "source")
    return None


def _function_source(path: os.PathLike[str], qualname: str) -> str | None:
    """The normalized source of the top-level ``qualname`` in the file (as code identity
    normalizes it: no decorators, no docstrings), or None."""
    from .codeid import _strip_docstrings

    try:
        tree = ast.parse(open(path, "rb").read())
    except (SyntaxError, ValueError, OSError):
        return None
    names = qualname.split(".")
    body: list[ast.stmt] = tree.body
    node: Any = None
    for name in names:
        node = next((n for n in body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                       ast.ClassDef)) and n.name == name), None)
        if node is None:
            return None
        body = node.body
    node.decorator_list = []
    _strip_docstrings(node)
    return ast.unparse(node)


def check_inputs(rec: Record, store: LocalStore, report: VerifyReport) -> None:
    """Every input digest of the key: from the recorded value, or the upstream result."""
    from . import values
    from .hashing import hash_value

    keyed = rec.provenance.key_parts.get("inputs")
    if not isinstance(keyed, dict) or set(keyed) != set(rec.inputs):
        report.add("inputs", False, "the recorded inputs are not the inputs of the key")
        return
    for name in sorted(rec.inputs):
        entry = rec.inputs[name]
        label = f"input {name}"
        if keyed[name] != entry.digest:
            report.add(label, False, "its digest is not the one in the key")
        elif entry.job is not None:
            up = store.get_record(entry.job) if store.has_record(entry.job) else None
            if up is None:
                report.add(label, None, f"from job {entry.job[:12]}, whose record is not here")
            elif up.get("result_hash") == entry.digest:
                report.add(label, True, f"the result of job {entry.job[:12]}")
            else:
                report.add(label, False, f"job {entry.job[:12]} has another result")
        elif entry.has_value:
            try:
                ok = hash_value(values.decode(entry.value, store)) == entry.digest
                report.add(label, ok, "value matches its digest" if ok
                           else "the recorded value does not hash to its digest")
            except (StoreError, OSError, ValueError, TypeError) as e:
                report.add(label, False, f"the recorded value cannot be read: {e}")
        else:
            report.add(label, None, "its value was not recorded")
