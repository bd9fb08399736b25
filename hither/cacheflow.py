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

import hashlib
import json
import sys
import time
import warnings
import weakref
from collections.abc import Callable
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
from .hashing import canonical_json, describe_value, hash_struct, hash_value
from .launch import Outcome
from .record import FORMAT as RECORD_FORMAT
from .record import ErrorInfo, FunctionInfo, Hit, Record, hit_summary

KEY_FORMAT = 2  # 2: value digests from BLAKE3 (hashing scheme v2), never xxh3
#: failures that say something about the machine, not about the function: never cached
_TRANSIENT = (JobTimeoutError, WorkerCrashedError, HandlerClosedError, JobCancelledException)


class KeyInfo:
    """A job's key and everything that went into it (read it, do not change it).

    ``inputs`` (per argument: ``digest``, ``desc`` and, for a job's result, ``job`` or
    ``jobs``: the keys of those jobs) is made when first read: a cache hit never needs it,
    and a large pipeline keeps a KeyInfo per job. Until then the KeyInfo holds the
    arguments as hashed, which it lets go of once ``inputs`` is made."""

    __slots__ = ("key", "code", "function", "runtime", "digests", "_inputs", "_args",
                 "_links")

    def __init__(self, key: str, code: CodeIdentity, digests: dict[str, str],
                 function: dict[str, Any], runtime: dict[str, Any],
                 args: dict[str, Any] | None = None,
                 links: dict[str, str | None | tuple[str | None, ...]] | None = None, *,
                 inputs: dict[str, dict[str, Any]] | None = None) -> None:
        self.key = key
        self.code = code
        self.function = function
        self.runtime = runtime
        self.digests = digests
        """Per argument, its ``hash_value`` (an upstream job's: its result hash)."""
        self._inputs = inputs
        self._args = args
        self._links = links

    @property
    def inputs(self) -> dict[str, dict[str, Any]]:
        """Per argument: ``digest``, ``desc`` and, for a job's result, ``job`` (its key) or
        ``jobs`` (the keys of the jobs whose results it holds, inside lists, dicts, ...)."""
        inputs = self._inputs
        if inputs is None:
            args, links = self._args or {}, self._links or {}
            inputs = {}
            for name, digest in self.digests.items():
                entry: dict[str, Any] = {"digest": digest,
                                         "desc": describe_value(args.get(name))}
                link = links.get(name)
                if type(link) is tuple:
                    entry["jobs"] = list(link)
                elif link is not None or name in links:
                    entry["job"] = link
                inputs[name] = entry
            self._inputs, self._args = inputs, None
        return inputs

    @property
    def parts(self) -> dict[str, Any]:
        """The structure whose canonical JSON hashes to the key (made when asked: a large
        pipeline keeps a KeyInfo per job)."""
        return {"format": KEY_FORMAT, "function": self.function, "runtime": self.runtime,
                "inputs": dict(self.digests)}

    def packed(self) -> tuple[Any, ...]:
        """This KeyInfo as one flat tuple of plain values (see :func:`unpack_keyinfo`): how
        a finished job keeps it. The cyclic GC stops tracking such a tuple at its first
        collection, where a KeyInfo would be one more object to visit per job in every
        full collection of a large pipeline. Per argument: name, digest, whether the next
        item is the value itself (a number, string, ...: described when unpacked) or its
        description, and the lineage link (see :func:`_link_text`)."""
        code = self.code
        _CODES.setdefault(code.digest, code)
        runtime = None if self.runtime is _HOST else canonical_json(self.runtime).decode()
        out: list[Any] = [self.key, code.digest, self.function["name"],
                          self.function["version"], runtime]
        inputs = self._inputs
        if inputs is None:
            args, links = self._args or {}, self._links
            for name, digest in self.digests.items():
                value = args.get(name)
                link = None if not links or name not in links else _link_text(links[name])
                if type(value) in _PLAIN:
                    out += (name, digest, True, value, link)
                else:
                    out += (name, digest, False, describe_value(value), link)
        else:
            for name, e in inputs.items():
                link = _link_text(tuple(e["jobs"])) if "jobs" in e else \
                    _link_text(e["job"]) if "job" in e else None
                out += (name, e["digest"], False, e["desc"], link)
        return tuple(out)

    def __reduce__(self) -> tuple[Any, ...]:
        # pickled (to a cluster node) with its inputs made, never with the argument values
        return (KeyInfo, (self.key, self.code, self.digests, self.function, self.runtime),
                {"_inputs": self.inputs})

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple):  # slots state: (None, {slot: value})
            state = state[1]
        for name, value in state.items():
            setattr(self, name, value)

    def __repr__(self) -> str:
        return f"KeyInfo(key={self.key!r}, function={self.function!r})"


def unpack_keyinfo(packed: tuple[Any, ...]) -> KeyInfo:
    """The KeyInfo that :meth:`KeyInfo.packed` made ``packed`` of."""
    key, digest, name, version, runtime = packed[:5]
    inputs: dict[str, dict[str, Any]] = {}
    for i in range(5, len(packed), 5):
        arg, arg_digest, is_value, item, link = packed[i:i + 5]
        entry: dict[str, Any] = {"digest": arg_digest,
                                 "desc": describe_value(item) if is_value else item}
        if link is not None:
            if link[0] == "=":
                entry["job"] = link[1:] or None
            else:
                entry["jobs"] = [k or None for k in link[1:].split("\n")]
        inputs[arg] = entry
    return KeyInfo(key, _CODES[digest], {n: e["digest"] for n, e in inputs.items()},
                   {"name": name, "version": version, "code": digest},
                   _HOST if runtime is None else json.loads(runtime), inputs=inputs)


def _link_text(link: str | None | tuple[str | None, ...]) -> str:
    """The lineage of one argument as one string: ``=<key>`` for one job's result, ``*``
    and the keys joined by newlines for results inside a list, dict, ... (a key is never
    empty nor has a newline: an empty one stands for a job without a key)."""
    if isinstance(link, tuple):
        return "*" + "\n".join(k or "" for k in link)
    return "=" + (link or "")


#: values a packed KeyInfo keeps as they are (immutable, no references: not GC-tracked)
_PLAIN = (int, float, str, bytes, bool, complex, type(None))
#: the code identities of packed KeyInfos, by digest (one per version of a function's code)
_CODES: dict[str, CodeIdentity] = {}
_HOST: dict[str, Any] = {"kind": "host"}
_HOST_TAIL = b',"runtime":{"kind":"host"}}'
_FUNCTIONS: dict[tuple[str, str, str], tuple[dict[str, Any], bytes]] = {}


def runtime_identity(runtime: Any) -> dict[str, Any]:
    """The identity of where the code runs: an image digest, an env lock hash, or
    ``{"kind": "host"}`` (the host interpreter has no further identity)."""
    if runtime is None:
        return _HOST  # shared by every job's key parts: never changed
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
    digests: dict[str, str] = {}
    plain = True  # every name an identifier: its JSON is the name in quotes
    for name in sorted(kwargs):
        digests[name] = hash_value(kwargs[name], path=_arg_path(name))
        plain = plain and name.isidentifier()
    links: dict[str, str | None | tuple[str | None, ...]] | None = None
    if upstream:
        links = {}
        for name, keys in upstream.items():
            if keys:
                links[name] = keys[0] if name in direct else tuple(keys)
    fn_id = (fdef.name, fdef.version, code.digest)
    known = _FUNCTIONS.get(fn_id)
    if known is None:  # one dict per function, shared by its jobs (never changed)
        if len(_FUNCTIONS) > 4096:
            _FUNCTIONS.clear()
        function = {"name": fn_id[0], "version": fn_id[1], "code": fn_id[2]}
        # the canonical JSON of the parts up to the inputs (keys sorted: format, function,
        # inputs, runtime), the same for every job of the function
        head = (b'{"format":' + canonical_json(KEY_FORMAT) + b',"function":'
                + canonical_json(function) + b',"inputs":')
        known = _FUNCTIONS[fn_id] = (function, head)
    function, head = known
    identity = runtime_identity(runtime)
    if runtime is None:  # == hash_struct(parts), without encoding the same head again
        # canonical_json(digests) without the encoder when no name needs escaping
        # (identifiers and hex digests never do; the names are sorted already)
        body = ("{" + ",".join([f'"{n}":"{d}"' for n, d in digests.items()]) + "}"
                ).encode() if plain else canonical_json(digests)
        key = hashlib.sha256(head + body + _HOST_TAIL).hexdigest()
    else:
        key = hash_struct({"format": KEY_FORMAT, "function": function, "runtime": identity,
                           "inputs": digests})
    return KeyInfo(key, code, digests, function, identity, kwargs, links)


_ARG_PATHS: dict[str, str] = {}


def _arg_path(name: str) -> str:
    """``kw['name']``, the path an argument's errors name (made once per name)."""
    path = _ARG_PATHS.get(name)
    if path is None:
        if len(_ARG_PATHS) > 4096:
            _ARG_PATHS.clear()
        path = _ARG_PATHS[name] = f"kw[{name!r}]"
    return path


# ------------------------------------------------------------------------ lookup
def lookup(keyinfo: KeyInfo, settings: Settings) -> Outcome | None:
    """The cached outcome for ``keyinfo`` under ``settings``' flags, or None (a miss).

    A record is untrusted input: one that cannot be used for any reason (a result manifest
    that does not decode, a missing or damaged blob, fields of the wrong type) is a miss
    with one warning, and is moved to the store's quarantine. Never an exception.
    """
    if settings.force_run:
        return None
    cache = settings.job_cache
    key = keyinfo.key
    try:
        summary = cache.get_hit(key)  # the store's hit index: no full record to read
        raw = None if summary is not None else cache.get_record(key, summarize=hit_summary)
    except (StoreError, OSError, ValueError) as e:
        warnings.warn(f"job cache lookup failed, running the job: {e}", stacklevel=2)
        return None
    if summary is None and raw is None:
        return None
    try:
        hit = Hit.from_summary(summary, key) if summary is not None else \
            Hit.of_record(Record.from_dict(raw, key))
        return _outcome_of(hit, settings, cache.store)
    except Exception as e:  # noqa: BLE001 - whatever a record provokes, the job runs again
        _set_aside(cache, key, e)
        return None


_OWN_MANIFEST = (int, float, str, bool)  # as the codec decodes them: unchanged


def _outcome_of(rec: Hit, settings: Settings, store: Any) -> Outcome | None:
    info = {"result_hash": rec.result_hash, "cached_at": rec.recorded_at}
    if rec.status == "finished":
        m = rec.result  # a number, string, bool or None is its own manifest
        value = m if type(m) in _OWN_MANIFEST or m is None else values.decode(m, store)
        # positional (ok, value, error, traceback_text, console, start_time, end_time,
        # info): a call by keywords costs more, once per hit
        return Outcome(True, value, None, None, list(rec.console), rec.start_time,
                       rec.end_time, info)
    if not settings.cache_failing or settings.rerun_failing:
        return None
    err = rec.error
    assert err is not None
    return Outcome(False, error=rebuild_exception(err.type, err.message, err.traceback,
                                                 args=err.args),
                   traceback_text=err.traceback, console=list(rec.console),
                   start_time=rec.start_time, end_time=rec.end_time, info=info)


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
           fdef: FunctionDef, label: str, handler: str, inputs: InputSource,
           runtime: Any = None) -> str | None:
    """Store ``outcome`` under its key; returns the result hash (None for a failure or a
    result that cannot be stored). ``inputs()`` gives the job's inputs as they ran:
    ``("manifest", {name: manifest})`` or ``("values", {name: value})``; ``runtime`` is
    where the job ran (None: the host).

    An outcome with ``info["recorded"]`` was recorded where the job ran (a cluster node,
    through this same function): nothing more is stored."""
    if outcome.info.get("recorded"):
        return outcome.info.get("result_hash")
    result_hash = manifest = error = None
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
        plain = not isinstance(err, JobFailedError) and all(
            isinstance(a, (str, int, float, bool, type(None))) for a in err.args)
        # plain args rebuild e.g. KeyError('k'), whose str() is quoted
        error = ErrorInfo(type_name, str(message), outcome.traceback_text or "",
                          list(err.args) if plain else None)
    if cache.readonly:
        return result_hash
    store = cache.store
    # the stored form of a Record (see hither.record), built directly: this runs for every
    # job recorded, and the record's typed objects would only be turned into dicts again
    body: dict[str, Any] = {"format": RECORD_FORMAT, "key": keyinfo.key,
                            "status": "finished" if outcome.ok else "error"}
    if error is None:
        body["result"] = manifest
        body["result_hash"] = result_hash
    else:
        body["error"] = error.to_dict()
    body["console"] = [[float(t), str(x), bool(e)] for t, x, e in outcome.console]
    body["provenance"] = _provenance(keyinfo, outcome, fdef=fdef, label=label,
                                     handler=handler, store=store, runtime=runtime)
    body["inputs"] = _input_entries(keyinfo, inputs, store)
    cache.put_record(keyinfo.key, body, summary=hit_summary(body))
    return result_hash


def _input_entries(keyinfo: KeyInfo, inputs: InputSource, store: Any) -> dict[str, Any]:
    """The record's inputs (the stored form of :class:`InputEntry`). Inputs given as
    values are stored too, so the run can be reproduced from its key; an input that is
    one job's result is referenced by that job's key (the lineage)."""
    kind, given = inputs()
    out: dict[str, Any] = {}
    for name, meta in keyinfo.inputs.items():
        job = meta.get("job")
        entry: dict[str, Any] = {"digest": meta["digest"], "desc": meta.get("desc", "")}
        if job is not None:
            entry["job"] = job
        jobs = meta.get("jobs")
        if jobs:
            entry["jobs"] = list(jobs)
        if job is None and name in given:
            value = given[name] if kind == "manifest" else _encoded(given[name], store, name)
            if value is not _NOT_ENCODED:
                entry["value"] = value
        out[name] = entry
    return out


_NOT_ENCODED = object()


def _encoded(value: Any, store: Any, name: str) -> Any:
    try:
        return values.encode(value, store, path=f"kw[{name!r}]")
    except (TypeError, ValueError):
        return _NOT_ENCODED


_USER: list[str | None] = []


def _user() -> str | None:
    """The user name, looked up once per process (a passwd lookup per record adds up)."""
    if not _USER:
        import getpass  # on the first record: a replay never needs it

        try:
            _USER.append(getpass.getuser())
        except Exception:  # noqa: BLE001
            _USER.append(None)
    return _USER[0]


#: functions without a code bundle (no source file: a notebook cell, exec'd code)
_NO_BUNDLE: weakref.WeakKeyDictionary[FunctionDef, str] = weakref.WeakKeyDictionary()


def _code_bundle(fdef: FunctionDef, store: Any, code: str) -> tuple[str | None, dict[str, str]]:
    """The job's code bundle in ``store`` (published once per code identity), so the job
    can be re-run from its record alone; none for code without a source file."""
    if _NO_BUNDLE.get(fdef) == code:
        return None, {}
    try:
        bundle = fdef.code_bundle(store.root)
    except (TypeError, ValueError, OSError):
        _NO_BUNDLE[fdef] = code
        return None, {}
    return bundle.digest, {"module": bundle.module, "function": bundle.function}


def _runtime_facts(runtime: Any, identity: dict[str, Any], store: Any,
                   reported: Any) -> dict[str, Any]:
    from .runtime_info import runtime_facts

    try:
        return runtime_facts(runtime, identity, store,
                             reported if isinstance(reported, str) else None)
    except Exception as e:  # noqa: BLE001 - descriptive only: the result is stored anyway
        warnings.warn(f"the runtime's package list is not recorded: {e}", stacklevel=3)
        return {}


_PROCESS: dict[str, Any] = {}


def _process_facts() -> dict[str, Any]:
    """The provenance fields that are the same for every record this process writes."""
    if not _PROCESS:
        import platform  # on the first record: a replay never needs these
        import socket

        from . import __version__

        _PROCESS.update(host=socket.gethostname(), user=_user(), hither_version=__version__,
                        python=sys.version.split()[0], platform=platform.platform())
    return _PROCESS


#: per (code identity, function, store root): the provenance fields that are the same for
#: every job of the function run on the host, with the objects the key's ids stand for
_STATIC: dict[tuple[int, int, str], tuple[CodeIdentity, FunctionDef, dict[str, Any]]] = {}


def _static_provenance(fdef: FunctionDef, code: CodeIdentity, store: Any, runtime: Any,
                       identity: dict[str, Any], reported: Any) -> dict[str, Any]:
    """The provenance fields that depend on the function, its code, the store and the
    runtime only (shared by the records of a function's jobs on the host: never
    changed)."""
    ident = (id(code), id(fdef), str(store.root))
    if runtime is None:
        known = _STATIC.get(ident)
        if known is not None and known[0] is code and known[1] is fdef:
            return known[2]
    info = FunctionInfo(name=fdef.name, version=fdef.version, code=code.digest,
                        module=code.module, source=code.source, sources=dict(code.sources),
                        external=dict(code.external), parts=dict(code.parts))
    bundle, entry = _code_bundle(fdef, store, code.digest)
    facts = _runtime_facts(runtime, identity, store, reported)
    static = {"function": info.to_dict(), "runtime": identity, "code_bundle": bundle,
              "code_entry": entry, "packages": facts.get("packages"),
              "runtime_lock": facts.get("lock"), **_process_facts()}
    if runtime is None and "packages" in facts:  # else later jobs may still learn them
        if len(_STATIC) > 256:
            _STATIC.clear()
        _STATIC[ident] = (code, fdef, static)  # holds them: their ids stay theirs
    return static


def _provenance(keyinfo: KeyInfo, outcome: Outcome, *, fdef: FunctionDef, label: str,
                handler: str, store: Any, runtime: Any = None) -> dict[str, Any]:
    """The record's provenance (the stored form of :class:`Provenance`)."""
    start, end = outcome.start_time, outcome.end_time
    info = outcome.info
    prov = dict(_static_provenance(fdef, keyinfo.code, store, runtime, keyinfo.runtime,
                                   info.get("runtime_packages")))
    prov["key_parts"] = keyinfo.parts
    prov["label"] = label
    prov["handler"] = handler
    prov["start_time"] = start
    prov["end_time"] = end
    prov["elapsed_sec"] = (end - start) if (start is not None and end is not None) else None
    prov["recorded_at"] = time.time()
    prov["worker"] = info.get("worker_pid")
    return prov
