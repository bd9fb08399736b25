"""Job keys, cache lookups and records with provenance.

A job's key is the sha256 of a small canonical structure::

    {"format": 1,
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
import socket
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hither_store import StoreError

from . import _codec, values
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

KEY_FORMAT = 1
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
def lookup(keyinfo: KeyInfo, settings: Settings) -> Outcome | None:
    """The cached outcome for ``keyinfo`` under ``settings``' flags, or None (a miss)."""
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
    status = rec.get("status")
    if status == "finished":
        try:
            value = values.decode(rec["result"], cache.store)
        except (StoreError, OSError, _codec.DecodeError, KeyError, ValueError) as e:
            warnings.warn(f"cached result {keyinfo.key[:12]} cannot be read ({e}); the job "
                          "runs again", stacklevel=2)
            return None
        out = Outcome(True, value=value)
    elif status == "error":
        if not settings.cache_failing or settings.rerun_failing:
            return None
        err = rec.get("error") or {}
        out = Outcome(False, error=rebuild_exception(err.get("type", "Exception"),
                                                    err.get("message", ""), err.get("traceback"),
                                                    args=err.get("args")),
                      traceback_text=err.get("traceback"))
    else:
        return None
    prov = rec.get("provenance", {})
    out.console = [tuple(x) for x in rec.get("console", [])]  # type: ignore[misc]
    out.start_time = prov.get("start_time")
    out.end_time = prov.get("end_time")
    out.info["result_hash"] = rec.get("result_hash")
    out.info["cached_at"] = prov.get("recorded_at")
    return out


# ------------------------------------------------------------------------ record
InputSource = Callable[[], tuple[str, dict[str, Any]]]


def record(cache: Any, keyinfo: KeyInfo, outcome: Outcome, *, settings: Settings,
           fdef: FunctionDef, label: str, handler: str, inputs: InputSource) -> str | None:
    """Store ``outcome`` under its key; returns the result hash (None for a failure or a
    result that cannot be stored). ``inputs()`` gives the job's inputs as they ran:
    ``("manifest", {name: manifest})`` or ``("values", {name: value})``."""
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
