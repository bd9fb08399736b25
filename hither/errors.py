"""The one exception tree of hither.

::

    HitherError (Exception)
    ├── DuplicateFunctionException      a name registered twice with different versions
    ├── FunctionNotRegisteredError      hi.get_function / hi.run of an unknown name (also KeyError)
    ├── SerializationError (TypeError)  a value that cannot be hashed, stored or sent; names its path
    ├── JobError                        a job ended without a result
    │   ├── JobFailedError              the function raised; carries the remote type and traceback
    │   ├── UpstreamJobError            a job this one depends on failed or was cancelled
    │   ├── JobTimeoutError             the job ran past ``job_timeout`` and was stopped
    │   ├── WorkerCrashedError          the process running the job died (signal, OOM, os._exit)
    │   └── HandlerClosedError          the job's handler was shut down before it could run
    ├── JobCancelledException           the job was cancelled (also concurrent.futures.CancelledError)
    ├── DeserializationException        a value could not be read back (a worker's answer)
    ├── CacheError                      the job cache or store cannot be used
    └── RuntimeUnavailableError         a runtime (container engine, env builder) is missing

A job that fails keeps the *original* exception type on every handler (so ``except
ValueError`` works): built-in types always, a custom class when it can be imported in the
caller (it is found among the modules the caller has imported, never imported on a
worker's word). Otherwise it is a :class:`JobFailedError` that names the original type and
carries its traceback text.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from concurrent.futures import CancelledError
from typing import Any


class HitherError(Exception):
    """Base class of every error hither raises on its own account."""


class DuplicateFunctionException(HitherError):
    """A function name was registered from two files with different versions."""


class FunctionNotRegisteredError(HitherError, KeyError):
    """No hither function is registered under that name."""

    def __str__(self) -> str:  # KeyError quotes its argument; keep the message readable
        return str(self.args[0]) if self.args else ""


class SerializationError(HitherError, TypeError):
    """A value cannot be hashed, stored or sent to a worker.

    ``path`` names where the value sits inside the arguments, e.g. ``kw['cfg'][2]``.
    """

    def __init__(self, message: str, path: str = "") -> None:
        super().__init__(message)
        self.path = path


class JobError(HitherError):
    """A job ended without a result. ``job_label`` names the job when known."""

    def __init__(self, message: str, *, job_label: str | None = None,
                 traceback_text: str | None = None) -> None:
        super().__init__(message)
        self.job_label = job_label
        self.traceback_text = traceback_text

    def __reduce__(self):
        return (_rebuild_job_error, (type(self), self.args, self.__dict__))


def _rebuild_job_error(cls, args, state):
    err = cls.__new__(cls)
    Exception.__init__(err, *args)
    err.__dict__.update(state)
    return err


class JobFailedError(JobError):
    """The function raised an exception that could not be brought back as itself.

    ``remote_type`` is the qualified name of the original exception type.
    """

    def __init__(self, message: str, *, remote_type: str = "Exception",
                 job_label: str | None = None, traceback_text: str | None = None) -> None:
        super().__init__(message, job_label=job_label, traceback_text=traceback_text)
        self.remote_type = remote_type

    def __str__(self) -> str:
        text = f"{self.remote_type}: {self.args[0]}" if self.args else self.remote_type
        if self.traceback_text:
            text += "\n\nRemote traceback:\n" + self.traceback_text.rstrip()
        return text


class UpstreamJobError(JobError):
    """A job given as an argument failed or was cancelled, so this one could not run."""

    def __init__(self, message: str, *, upstream_label: str | None = None,
                 upstream_id: str | None = None, job_label: str | None = None) -> None:
        super().__init__(message, job_label=job_label)
        self.upstream_label = upstream_label
        self.upstream_id = upstream_id


class JobTimeoutError(JobError, TimeoutError):
    """The job ran longer than its ``job_timeout``; its worker was stopped."""


class WorkerCrashedError(JobError):
    """The worker process running the job died before answering."""


class HandlerClosedError(JobError):
    """The job's handler was shut down before the job could run."""


class JobCancelledException(HitherError, CancelledError):
    """The job was cancelled (by ``job.cancel()``, ``hi.reset()`` or a handler shutdown)."""


class DeserializationException(HitherError):
    """A value could not be read back: e.g. the result a worker sent (0.4.2's name)."""


class UnreadableResultError(JobFailedError, DeserializationException):
    """The job ran, but its result could not be read back from the worker."""


class CacheError(HitherError):
    """The job cache or its store cannot be used."""


class RuntimeUnavailableError(HitherError):
    """A runtime the job needs (container engine, env builder, image) is not available."""


_PLAIN = (str, int, float, bool, type(None))


def find_exception_class(type_name: str, modules: Mapping[str, str] | None = None
                         ) -> type[Exception] | None:
    """The exception class called ``type_name`` (``module.Qual.Name``) among the modules
    this process has *already imported*, or None.

    Nothing is imported and no module ``__getattr__`` hook runs: the name may come from a
    worker or a record, which are untrusted. ``modules`` maps a module name as a worker
    knew it to this process's name for it (a job's file ``jobs`` imported by file name in a
    container is ``hither.testing.jobs`` or ``__main__`` here); a mapped name is looked up
    only under its mapping. hither's own errors are never rebuilt from a description.
    """
    import builtins

    parts = type_name.split(".")
    if len(parts) == 1:
        parts = ["builtins", *parts]
    if any(not p.isidentifier() or p.startswith("__") for p in parts):
        return None  # "<locals>", "__class__", empty parts
    for cut in range(len(parts) - 1, 0, -1):
        name = ".".join(parts[:cut])
        if modules is not None and name in modules:
            name = modules[name]
        module = builtins if name == "builtins" else sys.modules.get(name)
        if module is None:
            continue
        obj: Any = module
        for attr in parts[cut:]:
            obj = vars(obj).get(attr) if hasattr(obj, "__dict__") else None
            if obj is None:
                break
        if isinstance(obj, type) and issubclass(obj, Exception) and \
                not issubclass(obj, HitherError):
            return obj
    return None


def rebuild_exception(type_name: str, message: str, traceback_text: str | None = None, *,
                      job_label: str | None = None, args: list | None = None,
                      modules: Mapping[str, str] | None = None) -> BaseException:
    """An exception described by name, message and arguments, without unpickling anything.

    A class found by :func:`find_exception_class` (built-in types, and classes of modules
    already imported here, ``modules`` mapping the worker's module names) comes back as
    itself, constructed from ``args`` when they are plain values (str, int, float, bool,
    None), else from ``message``. Any other type, or one that cannot be constructed that
    way, comes back as a :class:`JobFailedError` naming it.
    """
    cls = find_exception_class(type_name, modules)
    if cls is not None:
        plain = isinstance(args, list) and all(isinstance(a, _PLAIN) for a in args)
        try:
            exc = cls(*args) if plain and args is not None else cls(message)
        except Exception:  # noqa: BLE001 - e.g. a class that needs other arguments
            pass
        else:
            if type(exc) is cls:
                return exc
    return JobFailedError(message, remote_type=type_name, job_label=job_label,
                          traceback_text=traceback_text)


class KeyLookupError(HitherError, LookupError):
    """A key or key prefix that names no record, or several (``candidates``).

    ``reason`` is ``"unknown"``, ``"ambiguous"``, ``"invalid"`` (not a hex prefix of at
    least 6 characters), ``"no-store"`` or ``"no-key"`` (a job without a key).
    """

    def __init__(self, message: str, candidates: tuple[str, ...] = (), *,
                 reason: str = "unknown") -> None:
        super().__init__(message)
        self.candidates = candidates
        self.reason = reason

    def __str__(self) -> str:  # LookupError subclasses may quote their argument
        return str(self.args[0]) if self.args else ""


__all__ = [
    "CacheError",
    "DeserializationException",
    "DuplicateFunctionException",
    "FunctionNotRegisteredError",
    "HandlerClosedError",
    "HitherError",
    "JobCancelledException",
    "JobError",
    "JobFailedError",
    "JobTimeoutError",
    "KeyLookupError",
    "RuntimeUnavailableError",
    "SerializationError",
    "UnreadableResultError",
    "UpstreamJobError",
    "WorkerCrashedError",
    "find_exception_class",
    "rebuild_exception",
]
