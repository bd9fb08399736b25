"""Job keys, cache lookups and records with provenance.

A job's key is the sha256 of a small canonical structure::

    {"format": 2,
     "function": {"name", "version", "code": <code identity digest>},
     "runtime": <runtime identity: {"kind": "host"}, an image digest, an env lock hash>,
     "inputs": {<argument name>: <hash_value of the argument>}}

An argument that came from a job contributes that job's ``result_hash``, which is the
same ``hash_value`` of its result: a job re-run that gives the same result leaves every
downstream key unchanged (early cutoff). The record stored under the key holds the result
manifest, the console output and the provenance of the run.
"""

from __future__ import annotations

import getpass
import platform
import re
import socket
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hither_store import StoreError, StoreWarning

from . import values
from .codeid import CodeIdentity, code_identity
from .config import Settings
from .errors import (
    HandlerClosedError,
    JobCancelledException,
    JobFailedError,
    JobTimeoutError,
    WorkerCrashedError,
    rebuild_exception,
)
from .fdef import FunctionDef
from .hashing import describe_value, hash_struct, hash_value
from .launch import Outcome

KEY_FORMAT = 2  # 2: value digests from BLAKE3 (hashing scheme v2), never xxh3
RECORD_FORMAT = 1
#: failures that say something about the machine, not about the function: never cached
_TRANSIENT = (JobTimeoutError, WorkerCrashedError, HandlerClosedError, JobCancelledException)


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """A job's key and everything that went into it."""

    key: str
    parts: dict[str, Any]
    code: CodeIdentity
    inputs: dict[str, dict[str, Any]]
    """Per argument: ``digest``, ``desc`` and, for a job's result, ``job`` (its key)."""


def runtime_identity(runtime: Any) -> dict[str, Any]:
    """The identity of where the code runs: an image digest, an env lock hash, or
    ``{"kind": "host"}`` (the host interpreter has no further identity)."""
    if runtime is None:
        return {"kind": "host"}
    from .runtimes import identity_of

    return identity_of(runtime)


def compute_key(fdef: FunctionDef, kwargs: dict[str, Any], settings: Settings,
                runtime: Any = None, *, upstream: dict[str, list[str | None]] | None = None,
                direct: set[str] | frozenset[str] = frozenset()) -> KeyInfo:
    """The key of ``fdef(**kwargs)``, the arguments exactly as the job will see them.

    ``upstream`` names, per argument, the keys of the jobs whose results it holds (also
    inside lists, tuples and dicts): the lineage. ``direct`` names the arguments that are
    one job's result as a whole.
    """
    code = code_identity(fdef.fn, local_modules=fdef.local_modules,
                         additional_files=fdef.additional_files)
    upstream = upstream or {}
    inputs: dict[str, dict[str, Any]] = {}
    digests: dict[str, str] = {}
    for name in sorted(kwargs):
        value = kwargs[name]
        digest = hash_value(value, path=f"kw[{name!r}]")
        entry: dict[str, Any] = {"digest": digest, "desc": describe_value(value)}
        keys = upstream.get(name)
        if keys:
            if name in direct:
                entry["job"] = keys[0]
            else:
                entry["jobs"] = keys
        inputs[name] = entry
        digests[name] = digest
    parts = {
        "format": KEY_FORMAT,
        "function": {"name": fdef.name, "version": fdef.version, "code": code.digest},
        "runtime": runtime_identity(runtime),
        "inputs": digests,
    }
    return KeyInfo(key=hash_struct(parts), parts=parts, code=code, inputs=inputs)


# ------------------------------------------------------------------------ lookup
_HEX64 = re.compile(r"[0-9a-f]{64}")


class _BadRecord(ValueError):
    """A record that is not what hither writes."""


def lookup(keyinfo: KeyInfo, settings: Settings) -> Outcome | None:
    """The cached outcome for ``keyinfo`` under ``settings``' flags, or None (a miss).

    A record is untrusted input: one that cannot be used for any reason (a result manifest
    that does not decode, a missing or damaged blob, fields of the wrong type) is a miss
    with one warning, and is moved to the store's quarantine. Never an exception.
    """
    if settings.force_run:
        return None
    cache = settings.job_cache
    try:
        rec = cache.get_record(keyinfo.key)
    except (StoreError, OSError, ValueError) as e:
        warnings.warn(f"job cache lookup failed, running the job: {e}", stacklevel=2)
        return None
    if rec is None:
        return None
    try:
        return _outcome_of(rec, keyinfo, settings, cache.store)
    except Exception as e:  # noqa: BLE001 - whatever a record provokes, the job runs again
        _set_aside(cache, keyinfo.key, e)
        return None


def _outcome_of(rec: dict[str, Any], keyinfo: KeyInfo, settings: Settings,
                store: Any) -> Outcome | None:
    if rec.get("format") != RECORD_FORMAT or rec.get("key") != keyinfo.key:
        raise _BadRecord(f"format {rec.get('format')!r}, key {str(rec.get('key'))[:16]!r}")
    status = rec.get("status")
    if status == "finished":
        result_hash = rec.get("result_hash")
        if type(result_hash) is not str or not _HEX64.fullmatch(result_hash):
            raise _BadRecord(f"result_hash {result_hash!r} is not a sha256 hex digest")
        if "result" not in rec:
            raise _BadRecord("no result")
        out = Outcome(True, value=values.decode(rec["result"], store))
    elif status == "error":
        if not settings.cache_failing or settings.rerun_failing:
            return None
        err = rec.get("error")
        if not isinstance(err, dict) or type(err.get("type")) is not str \
                or type(err.get("message")) is not str \
                or not isinstance(err.get("traceback"), (str, type(None))) \
                or not isinstance(err.get("args"), (list, type(None))):
            raise _BadRecord(f"malformed error {err!r:.200}")
        out = Outcome(False, error=rebuild_exception(err["type"], err["message"],
                                                    err.get("traceback"), args=err.get("args")),
                      traceback_text=err.get("traceback"))
        result_hash = None
    else:
        raise _BadRecord(f"unknown status {status!r:.100}")
    prov = rec.get("provenance", {})
    console = rec.get("console", [])
    if not isinstance(prov, dict) or not isinstance(console, list) or not all(
            type(x) is list and len(x) == 3 and isinstance(x[0], (int, float))
            and type(x[1]) is str and type(x[2]) is bool for x in console):
        raise _BadRecord("malformed provenance or console")
    times = [prov.get(k) for k in ("start_time", "end_time", "recorded_at")]
    if not all(t is None or (isinstance(t, (int, float)) and type(t) is not bool) for t in times):
        raise _BadRecord(f"malformed times {times!r:.200}")
    out.console = [tuple(x) for x in console]  # type: ignore[misc]
    out.start_time, out.end_time = times[0], times[1]
    out.info["result_hash"] = result_hash
    out.info["cached_at"] = times[2]
    return out


def _set_aside(cache: Any, key: str, error: BaseException) -> None:
    """One warning for an unusable record, which goes to quarantine (unless read-only)."""
    reason = f"{type(error).__name__}: {error}"
    if len(reason) > 300:
        reason = reason[:299] + "…"
    fate = "left in place (read-only cache)"
    if not cache.readonly:
        try:
            moved = cache.store.quarantine_record(key)
            fate = f"moved to {moved}" if moved is not None else "already gone"
        except (OSError, ValueError) as e:
            fate = f"could not be moved aside ({e})"
    warnings.warn(f"cached record {key[:12]} cannot be used ({reason}); it was {fate}, and "
                  "the job runs again", StoreWarning, stacklevel=3)


# ------------------------------------------------------------------------ record
InputSource = Callable[[], tuple[str, dict[str, Any]]]


def record(cache: Any, keyinfo: KeyInfo, outcome: Outcome, *, settings: Settings,
           fdef: FunctionDef, label: str, handler: str, inputs: InputSource) -> str | None:
    """Store ``outcome`` under its key; returns the result hash (None for a failure or a
    result that cannot be stored). ``inputs()`` gives the job's inputs as they ran:
    ``("manifest", {name: manifest})`` or ``("values", {name: value})``.

    An outcome with ``info["recorded"]`` was recorded where the job ran (a cluster node,
    through this same function): nothing more is stored."""
    if outcome.info.get("recorded"):
        return outcome.info.get("result_hash")
    rec: dict[str, Any] = {"format": RECORD_FORMAT, "key": keyinfo.key}
    result_hash = None
    if outcome.ok:
        try:
            result_hash = hash_value(outcome.value, path="result")
            if cache.readonly:
                return result_hash
            manifest = outcome.info.get("result_manifest")  # a runtime worker stored it
            if manifest is None:
                manifest = values.encode(outcome.value, cache.store, path="result")
        except (TypeError, ValueError) as e:
            warnings.warn(f"the result of job {label!r} is not stored in the job cache: "
                          f"{e}", stacklevel=2)
            return None
        rec.update(status="finished", result=manifest, result_hash=result_hash)
    else:
        err = outcome.error
        # only what the function itself raised says something about its inputs; a missing
        # image, a store error or a crash says something about the machine
        if not settings.cache_failing or err is None or isinstance(err, _TRANSIENT) \
                or not outcome.info.get("raised"):
            return None
        type_name = getattr(err, "remote_type", None) or \
            f"{type(err).__module__}.{type(err).__qualname__}"
        message = err.args[0] if isinstance(err, JobFailedError) and err.args else str(err)
        error = {"type": type_name, "message": message, "traceback": outcome.traceback_text or ""}
        if not isinstance(err, JobFailedError) and all(
                isinstance(a, (str, int, float, bool, type(None))) for a in err.args):
            error["args"] = list(err.args)  # e.g. KeyError('k'): its str() is quoted
        rec.update(status="error", error=error)
    if cache.readonly:
        return result_hash
    rec["console"] = [list(x) for x in outcome.console]
    rec["provenance"] = _provenance(keyinfo, outcome, fdef=fdef, label=label, handler=handler)
    rec["inputs"] = _input_manifests(keyinfo, inputs, cache.store)
    cache.put_record(keyinfo.key, rec)
    return result_hash


def _input_manifests(keyinfo: KeyInfo, inputs: InputSource, store: Any) -> dict[str, Any]:
    """Inputs given as values are stored too, so the run can be reproduced from its key;
    an input that is one job's result is referenced by that job's key (the lineage)."""
    kind, given = inputs()
    out: dict[str, Any] = {}
    for name, meta in keyinfo.inputs.items():
        entry = dict(meta)
        if "job" not in meta and name in given:
            if kind == "manifest":
                entry["value"] = given[name]
            else:
                try:
                    entry["value"] = values.encode(given[name], store, path=f"kw[{name!r}]")
                except (TypeError, ValueError):
                    pass
        out[name] = entry
    return out


def _provenance(keyinfo: KeyInfo, outcome: Outcome, *, fdef: FunctionDef, label: str,
                handler: str) -> dict[str, Any]:
    from . import __version__

    code = keyinfo.code
    start, end = outcome.start_time, outcome.end_time
    try:
        user = getpass.getuser()
    except Exception:  # noqa: BLE001
        user = None
    return {
        "function": {"name": fdef.name, "version": fdef.version,
                     "code": code.digest, "module": code.module, "source": code.source,
                     "sources": dict(code.sources), "external": dict(code.external)},
        "runtime": keyinfo.parts["runtime"],
        "key_parts": keyinfo.parts,
        "label": label,
        "handler": handler,
        "start_time": start,
        "end_time": end,
        "elapsed_sec": (end - start) if (start is not None and end is not None) else None,
        "recorded_at": time.time(),
        "host": socket.gethostname(),
        "user": user,
        "hither_version": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "worker": outcome.info.get("worker_pid"),
    }
