"""The job record: what the cache stores under a key, as one typed object.

Written by :mod:`hither.cacheflow`, read by the cache lookup, ``hither explain``, the CLI
and the lineage page, all through :class:`Record`. A record file is untrusted input:
:meth:`Record.from_dict` checks every field it reads and raises :class:`BadRecord` for
anything that is not what hither writes (``strict=False`` only tolerates missing
descriptive fields, for displays of records written by older versions).

::

    {"format": 1, "key": "<key>", "status": "finished" | "error",
     "result": <manifest>, "result_hash": "<sha256 hex>",          (finished)
     "error": {"type", "message", "traceback", "args"?},           (error)
     "console": [[time, text, is_stderr], ...],
     "provenance": {"function": {"name", "version", "code", "module", "source", "sources",
                                 "external"},
                    "runtime", "key_parts", "label", "handler", "start_time", "end_time",
                    "elapsed_sec", "recorded_at", "host", "user", "hither_version", "python",
                    "platform", "worker", "code_bundle",
                    "code_entry": {"module", "function"}, "packages",
                    "runtime_lock", ...},
     "inputs": {name: {"digest", "desc", "job"? | "jobs"?, "value"?}}}
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

FORMAT = 1
_HEX64 = re.compile(r"[0-9a-f]{64}")
_MISSING: Any = object()


class BadRecord(ValueError):
    """A record that is not what hither writes; the message says why."""


def _str(d: dict[str, Any], name: str, *, default: Any = _MISSING) -> Any:
    v = d.get(name, default)
    if v is _MISSING:
        raise BadRecord(f"missing {name!r}")
    if v is not default and type(v) is not str:
        raise BadRecord(f"{name!r} is a {type(v).__name__}, not a string")
    return v


def _num(d: dict[str, Any], name: str) -> float | None:
    v = d.get(name)
    if v is None:
        return None
    if type(v) not in (int, float):
        raise BadRecord(f"{name!r} is a {type(v).__name__}, not a number")
    return float(v)


def _dict(d: dict[str, Any], name: str) -> dict[str, Any]:
    v = d.get(name)
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise BadRecord(f"{name!r} is a {type(v).__name__}, not an object")
    return v


@dataclass(frozen=True)
class FunctionInfo:
    """The function that ran: name, version, code identity digest and its sources."""

    name: str
    version: str
    code: str = ""
    module: str = ""
    source: str = ""
    sources: dict[str, str] = field(default_factory=dict)
    external: dict[str, str] = field(default_factory=dict)
    parts: dict[str, str] = field(default_factory=dict)
    """The pieces of the code identity (piece name -> sha256): ``code`` is their digest."""

    @classmethod
    def from_dict(cls, d: dict[str, Any], strict: bool = True) -> FunctionInfo:
        default = _MISSING if strict else "?"
        return cls(name=_str(d, "name", default=default),
                   version=_str(d, "version", default=default),
                   code=_str(d, "code", default=""), module=_str(d, "module", default=""),
                   source=_str(d, "source", default=""),
                   sources={str(k): str(v) for k, v in _dict(d, "sources").items()},
                   external={str(k): str(v) for k, v in _dict(d, "external").items()},
                   parts={str(k): str(v) for k, v in _dict(d, "parts").items()})

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "code": self.code,
                "module": self.module, "source": self.source, "sources": dict(self.sources),
                "external": dict(self.external), "parts": dict(self.parts)}


@dataclass(frozen=True)
class Provenance:
    """Where, when, by whom and with what a result was computed."""

    function: FunctionInfo
    runtime: dict[str, Any] = field(default_factory=dict)
    key_parts: dict[str, Any] = field(default_factory=dict)
    """Everything the key was computed from (``hither verify`` recomputes it)."""
    label: str = ""
    handler: str = ""
    start_time: float | None = None
    end_time: float | None = None
    elapsed_sec: float | None = None
    recorded_at: float | None = None
    host: str = ""
    user: str | None = None
    hither_version: str = ""
    python: str = ""
    platform: str = ""
    worker: Any = None
    code_bundle: str | None = None
    """The digest of the code bundle (``<store>/code/<digest>``): the function's module
    file, local modules and additional files, as shipped to a worker."""
    code_entry: dict[str, str] = field(default_factory=dict)
    """Where the function is in its code bundle: ``{"module", "function"}``."""
    packages: Any = None
    """The Python packages of the runtime (``name==version`` lines), a blob manifest."""
    runtime_lock: Any = None
    """A uv environment's requirements lock, a blob manifest (rebuilds the environment)."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Fields this version does not know (kept as they are)."""

    _KNOWN = ("function", "runtime", "key_parts", "label", "handler", "start_time",
              "end_time", "elapsed_sec", "recorded_at", "host", "user", "hither_version",
              "python", "platform", "worker", "code_bundle", "code_entry", "packages",
              "runtime_lock")

    @classmethod
    def from_dict(cls, d: dict[str, Any], strict: bool = True) -> Provenance:
        fn = d.get("function")
        if not isinstance(fn, dict):
            if strict:
                raise BadRecord("provenance has no function")
            fn = {}
        user = d.get("user")
        return cls(function=FunctionInfo.from_dict(fn, strict),
                   runtime=_dict(d, "runtime"), key_parts=_dict(d, "key_parts"),
                   label=str(d.get("label") or ""), handler=str(d.get("handler") or ""),
                   start_time=_num(d, "start_time"), end_time=_num(d, "end_time"),
                   elapsed_sec=_num(d, "elapsed_sec"), recorded_at=_num(d, "recorded_at"),
                   host=str(d.get("host") or ""), user=None if user is None else str(user),
                   hither_version=str(d.get("hither_version") or ""),
                   python=str(d.get("python") or ""), platform=str(d.get("platform") or ""),
                   worker=d.get("worker"), code_bundle=_str(d, "code_bundle", default=None),
                   code_entry={str(k): str(v) for k, v in _dict(d, "code_entry").items()},
                   packages=d.get("packages"), runtime_lock=d.get("runtime_lock"),
                   extra={k: v for k, v in d.items() if k not in cls._KNOWN})

    def to_dict(self) -> dict[str, Any]:
        return {**self.extra, "function": self.function.to_dict(), "runtime": self.runtime,
                "key_parts": self.key_parts, "label": self.label, "handler": self.handler,
                "start_time": self.start_time, "end_time": self.end_time,
                "elapsed_sec": self.elapsed_sec, "recorded_at": self.recorded_at,
                "host": self.host, "user": self.user, "hither_version": self.hither_version,
                "python": self.python, "platform": self.platform, "worker": self.worker,
                "code_bundle": self.code_bundle, "code_entry": dict(self.code_entry),
                "packages": self.packages, "runtime_lock": self.runtime_lock}


@dataclass(frozen=True)
class InputEntry:
    """One argument of the job: its digest in the key, a short description, the jobs it
    came from (``job``: the argument is that job's result; ``jobs``: results nested in
    it), and its value as a manifest when it was given as a value."""

    digest: str
    desc: str = ""
    job: str | None = None
    jobs: tuple[str, ...] = ()
    value: Any = _MISSING

    @property
    def has_value(self) -> bool:
        """Whether the value itself is in the record."""
        return self.value is not _MISSING

    @property
    def upstream(self) -> list[str]:
        """The keys of the jobs this argument came from."""
        return [self.job] if self.job is not None else list(self.jobs)

    @classmethod
    def from_dict(cls, d: Any, strict: bool = True) -> InputEntry:
        if not isinstance(d, dict):
            raise BadRecord(f"an input is a {type(d).__name__}, not an object")
        job = d.get("job")
        if job is not None and type(job) is not str:
            raise BadRecord("an input's job is not a key")
        jobs = d.get("jobs") or []
        if not isinstance(jobs, list) or not all(type(k) is str for k in jobs):
            raise BadRecord("an input's jobs are not keys")
        return cls(digest=_str(d, "digest", default=_MISSING if strict else ""),
                   desc=str(d.get("desc") or ""), job=job, jobs=tuple(jobs),
                   value=d.get("value", _MISSING))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"digest": self.digest, "desc": self.desc}
        if self.job is not None:
            out["job"] = self.job
        if self.jobs:
            out["jobs"] = list(self.jobs)
        if self.has_value:
            out["value"] = self.value
        return out


@dataclass(frozen=True)
class ErrorInfo:
    """A failure the function raised: its type name, message, traceback and plain args."""

    type: str
    message: str
    traceback: str = ""
    args: list[Any] | None = None

    @property
    def short_type(self) -> str:
        """The type's name without its module."""
        return self.type.rpartition(".")[2]

    @classmethod
    def from_dict(cls, d: Any) -> ErrorInfo:
        if not isinstance(d, dict):
            raise BadRecord("malformed error")
        tb = d.get("traceback") or ""
        args = d.get("args")
        if type(tb) is not str or not isinstance(args, (list, type(None))):
            raise BadRecord("malformed error")
        return cls(type=_str(d, "type"), message=_str(d, "message"), traceback=tb, args=args)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type, "message": self.message,
                               "traceback": self.traceback}
        if self.args is not None:
            out["args"] = list(self.args)
        return out


@dataclass(frozen=True)
class Record:
    """A job's record (see the module docstring for the stored form)."""

    key: str
    status: str
    provenance: Provenance
    result: Any = None
    result_hash: str | None = None
    error: ErrorInfo | None = None
    console: tuple[tuple[float, str, bool], ...] = ()
    inputs: dict[str, InputEntry] = field(default_factory=dict)
    format: int = FORMAT

    @property
    def ok(self) -> bool:
        """True for a finished job (a result), False for a stored failure."""
        return self.status == "finished"

    @property
    def function(self) -> FunctionInfo:
        """The function that ran."""
        return self.provenance.function

    def upstream(self) -> dict[str, list[str]]:
        """Per argument, the keys of the jobs it came from (arguments given as values are
        left out)."""
        return {name: e.upstream for name, e in self.inputs.items() if e.upstream}

    @classmethod
    def from_dict(cls, d: Any, key: str | None = None, *, strict: bool = True) -> Record:
        """Read a stored record; raises :class:`BadRecord` for anything that is not what
        hither writes. ``strict=False`` tolerates missing descriptive fields (displays)."""
        if not isinstance(d, dict):
            raise BadRecord(f"a record is a {type(d).__name__}, not an object")
        if d.get("format") != FORMAT:
            raise BadRecord(f"unknown record format {d.get('format')!r:.40}")
        rec_key = d.get("key")
        if type(rec_key) is not str or (key is not None and rec_key != key):
            raise BadRecord(f"record of key {str(rec_key)[:16]!r}, not {str(key)[:16]!r}")
        status, result_hash, error, console = _outcome_fields(d)
        prov = d.get("provenance")
        if not isinstance(prov, dict):
            if strict:
                raise BadRecord("malformed provenance")
            prov = {}
        inputs = d.get("inputs") or {}
        if not isinstance(inputs, dict):
            raise BadRecord("malformed inputs")
        return cls(key=rec_key, status=status, provenance=Provenance.from_dict(prov, strict),
                   result=d.get("result"), result_hash=result_hash, error=error,
                   console=console,
                   inputs={str(n): InputEntry.from_dict(e, strict) for n, e in inputs.items()})

    def to_dict(self) -> dict[str, Any]:
        """The stored form."""
        out: dict[str, Any] = {"format": self.format, "key": self.key, "status": self.status}
        if self.ok:
            out["result"] = self.result
            out["result_hash"] = self.result_hash
        elif self.error is not None:
            out["error"] = self.error.to_dict()
        out["console"] = [list(x) for x in self.console]
        out["provenance"] = self.provenance.to_dict()
        out["inputs"] = {n: e.to_dict() for n, e in self.inputs.items()}
        return out


def _outcome_fields(d: dict[str, Any]) -> tuple[str, str | None, ErrorInfo | None,
                                               tuple[tuple[float, str, bool], ...]]:
    """The checked status, result hash, error and console of a record (or a summary)."""
    return _checked_outcome(d.get("status"), d.get("result_hash"), "result" in d,
                            d.get("error"), d.get("console"))


def _checked_outcome(status: Any, result_hash: Any, has_result: bool, error: Any,
                     console: Any) -> tuple[str, str | None, ErrorInfo | None,
                                            tuple[tuple[float, str, bool], ...]]:
    if status == "finished":
        if type(result_hash) is not str or not _HEX64.fullmatch(result_hash):
            raise BadRecord(f"result_hash {result_hash!r:.80} is not a sha256 hex digest")
        if not has_result:
            raise BadRecord("no result")
        error = None
    elif status == "error":
        result_hash, error = None, ErrorInfo.from_dict(error)
    else:
        raise BadRecord(f"unknown status {status!r:.80}")
    if not console:  # the common case: no output (as before, any false value is none)
        return status, result_hash, error, ()
    if not isinstance(console, list) or not all(
            type(x) is list and len(x) == 3 and type(x[0]) in (int, float)
            and type(x[1]) is str and type(x[2]) is bool for x in console):
        raise BadRecord("malformed console")
    return status, result_hash, error, tuple((float(t), s, e) for t, s, e in console)


def _time(t: Any) -> float | None:
    if t is None or type(t) is float:
        return t
    if type(t) is int:
        return float(t)
    raise BadRecord("malformed times")


_SUMMARY_TIMES = ("start_time", "end_time", "recorded_at")


def hit_summary(d: dict[str, Any]) -> list[Any] | None:
    """The part of a stored record that a cache hit needs (what the store's hit index
    keeps): no sources, inputs or other provenance. A JSON array in a fixed order, which
    reads faster than an object: ``[format, key, status, result_hash, result, error,
    console, start_time, end_time, recorded_at]``. None for what is not a record."""
    if not isinstance(d, dict) or (d.get("status") == "finished" and "result" not in d):
        return None  # (a record without its result is read in full, and fails there)
    prov = d.get("provenance")
    times = prov if isinstance(prov, dict) else {}
    return [d.get("format"), d.get("key"), d.get("status"), d.get("result_hash"),
            d.get("result"), d.get("error"), d.get("console"), times.get("start_time"),
            times.get("end_time"), times.get("recorded_at")]


@dataclass(slots=True)
class Hit:
    """What a cache hit needs of a record: status, result or error, console, times.

    Not frozen: a frozen dataclass pays an ``object.__setattr__`` per field, and one Hit
    is made per cache hit."""

    key: str
    status: str
    result: Any = None
    result_hash: str | None = None
    error: ErrorInfo | None = None
    console: tuple[tuple[float, str, bool], ...] = ()
    start_time: float | None = None
    end_time: float | None = None
    recorded_at: float | None = None

    @property
    def ok(self) -> bool:
        """True for a finished job (a result), False for a stored failure."""
        return self.status == "finished"

    @classmethod
    def from_summary(cls, d: Any, key: str) -> Hit:
        """Read a summary made by :func:`hit_summary` (or, in index rows written by earlier
        versions, the same fields as a JSON object); raises :class:`BadRecord`."""
        if type(d) is list:
            if len(d) != 10:
                raise BadRecord(f"a summary of {len(d)} items, not 10")
            fmt, found, status, result_hash, result, error, console, start, end, recorded = d
            has_result = True
        elif isinstance(d, dict):
            fmt, found, result = d.get("format"), d.get("key"), d.get("result")
            times = d.get("times")
            if type(times) is not list or len(times) != len(_SUMMARY_TIMES):
                raise BadRecord("malformed times")
            start, end, recorded = times
            status, result_hash, has_result = d.get("status"), d.get("result_hash"), \
                "result" in d
            error, console = d.get("error"), d.get("console")
        else:
            raise BadRecord(f"a summary is a {type(d).__name__}, not an array")
        if fmt != FORMAT or found != key:
            raise BadRecord(f"summary of format {fmt!r:.20} and key {str(found)[:16]!r}, "
                            f"not {key[:16]!r}")
        if not (type(start) is float and type(end) is float and type(recorded) is float):
            start, end, recorded = _time(start), _time(end), _time(recorded)
        status, result_hash, error, console = _checked_outcome(status, result_hash,
                                                               has_result, error, console)
        # positional (the fields' order): a call by keywords costs more, once per hit
        return cls(key, status, result, result_hash, error, console, start, end, recorded)

    @classmethod
    def of_record(cls, rec: Record) -> Hit:
        """The hit part of a full record."""
        prov = rec.provenance
        return cls(key=rec.key, status=rec.status, result=rec.result,
                   result_hash=rec.result_hash, error=rec.error, console=rec.console,
                   start_time=prov.start_time, end_time=prov.end_time,
                   recorded_at=prov.recorded_at)
