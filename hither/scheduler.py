"""The scheduler: the path of one call, from ``.run()`` to a completed Job.

``f.run(**kw)`` creates a Job. When every job among its arguments has finished, the
arguments are resolved (jobs replaced by their results), the cache is consulted when one
is configured, and only a miss is given to the job's handler. The handler's outcome is
recorded in the cache *before* the job completes, so ``wait()`` returning means the
result is stored.
"""

from __future__ import annotations

import copy
import pickle
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from functools import partial
from typing import Any

from . import config as _config
from .errors import (
    JobCancelledException,
    JobError,
    SerializationError,
    UpstreamJobError,
)
from .function import FunctionDef
from .handlers import inline as _inline
from .handlers.base import JobHandler
from .handlers.inline import DefaultJobHandler
from .job import Job, JobStatus
from .launch import Launch, Outcome

_live: dict[int, Job] = {}
_live_lock = threading.Lock()
_inline_live = 0  # live jobs of inline handlers: waiting on any job may need to run them
_default_handler: DefaultJobHandler | None = None
_JOB_LEAVES = (str, int, float, bool, type(None), bytes)


def default_handler() -> DefaultJobHandler:
    """The handler used when ``Config(job_handler=...)`` is not set."""
    global _default_handler
    h = _default_handler
    if h is None or h.closed:
        h = _default_handler = DefaultJobHandler()
    return h


def exchange_store(settings: _config.Settings) -> Any:
    """The store values cross through to a runtime worker (see :mod:`hither.exchange`)."""
    from .exchange import exchange_store as _exchange_store

    return _exchange_store(settings.job_cache)


def resolve_container(fdef: FunctionDef, settings: _config.Settings) -> str | None:
    """The image a job runs in: the function's with ``container=True``, a string
    overrides it, ``False``/``None`` means the host."""
    c = settings.container
    if c is True:
        return fdef.container
    if isinstance(c, str):
        return c
    return None


# ------------------------------------------------------------------------ creating jobs
def create_job(fdef: FunctionDef, kwargs: dict[str, Any]) -> Job:
    """Create the Job of ``fdef(**kwargs)`` with the settings in force now."""
    settings = _config.current()
    fdef.check_kwargs(kwargs)
    handler = settings.job_handler or default_handler()
    upstream = _find_jobs(kwargs)
    job = Job(fdef, kwargs, settings, handler)
    plan = None
    if not upstream:
        # arguments are known now: problems with them are raised by .run() itself
        plan = _plan(job, kwargs)
    global _inline_live
    with _live_lock:
        _live[id(job)] = job
        if handler.drives_in_caller:
            _inline_live += 1
    job.add_done_callback(_forget)
    if upstream:
        job._waiting_on = len(upstream)  # type: ignore[attr-defined]
        job._wait_lock = threading.Lock()  # type: ignore[attr-defined]
        for up in upstream:
            up.add_done_callback(partial(_upstream_done, job))
    else:
        _execute(job, kwargs, plan)
    return job


def _forget(job: Future) -> None:
    global _inline_live
    with _live_lock:
        if _live.pop(id(job), None) is not None and job._handler.drives_in_caller:
            _inline_live -= 1


def _find_jobs(value: Any) -> list[Job]:
    found: dict[int, Job] = {}

    def walk(v: Any) -> None:
        if isinstance(v, Job):
            found[id(v)] = v
        elif isinstance(v, dict):
            for x in v.values():
                if not isinstance(x, _JOB_LEAVES):
                    walk(x)
        elif isinstance(v, (list, tuple)):
            for x in v:
                if not isinstance(x, _JOB_LEAVES):
                    walk(x)

    walk(value)
    return list(found.values())


def _replace_jobs(value: Any) -> Any:
    """``value`` with every job replaced by its result; container types are kept
    (an OrderedDict or a defaultdict stays one, a namedtuple stays one)."""
    if isinstance(value, Job):
        return value.result(0)
    if isinstance(value, dict):
        if type(value) is dict:
            return {k: _replace_jobs(v) for k, v in value.items()}
        new = copy.copy(value)
        for k, v in value.items():
            new[k] = _replace_jobs(v)
        return new
    if isinstance(value, list):
        items = [_replace_jobs(v) for v in value]
        if type(value) is list:
            return items
        new = copy.copy(value)
        new[:] = items
        return new
    if isinstance(value, tuple):
        items = [_replace_jobs(v) for v in value]
        if type(value) is tuple:
            return tuple(items)
        return type(value)(*items) if hasattr(value, "_fields") else type(value)(items)
    return value


def _plan(job: Job, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Work that can fail on the arguments, done once they are known: the cache key and
    lookup, then (on a miss) pickling the arguments for a worker process."""
    plan: dict[str, Any] = {}
    settings = job._settings
    fdef = job._fdef
    runtime = plan["runtime"] = _runtime_for(fdef, settings)
    if settings.job_cache is not None:
        from .cacheflow import compute_key, lookup

        keyinfo = plan["key"] = compute_key(fdef, job._kwargs, kwargs, settings, runtime)
        plan["hit"] = lookup(keyinfo, settings)
        if plan["hit"] is not None:
            return plan
    if runtime is not None:
        store = plan["store"] = exchange_store(settings)
        plan["code"] = _bundle_of(fdef, store)
    elif not job._handler.drives_in_caller:
        plan["kwargs_pickle"] = pickle_kwargs(fdef, kwargs)
    return plan


def _bundle_of(fdef: FunctionDef, store: Any) -> Any:
    """The function's code bundle in ``store``, published once per code identity: an edit
    of a local module or an additional file (which changes the job key) ships anew."""
    from .codeid import code_identity

    code = code_identity(fdef.fn, local_modules=fdef.local_modules,
                         additional_files=fdef.additional_files)
    bundles = fdef.__dict__.setdefault("_bundles", {})
    root = (str(store.root), code.digest)
    bundle = bundles.get(root)
    if bundle is None:
        from .runtimes.bundle import code_bundle

        bundle = bundles[root] = code_bundle(fdef.fn, store.root,
                                             local_modules=fdef.local_modules,
                                             additional_files=fdef.additional_files)
    return bundle


def _runtime_for(fdef: FunctionDef, settings: _config.Settings) -> Any:
    if settings.container in (None, False) and settings.environment is None and \
            fdef.environment is None:
        return None  # the host: skip importing the runtimes
    from .runtimes import runtime_for

    return runtime_for(fdef, settings)


def pickle_kwargs(fdef: FunctionDef, kwargs: dict[str, Any]) -> bytes:
    """Pickle arguments for a worker process; name the argument that cannot be."""
    try:
        return pickle.dumps(kwargs, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:  # noqa: BLE001 - try harder, then explain
        pass
    import cloudpickle

    try:
        return cloudpickle.dumps(kwargs, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as e:  # noqa: BLE001
        path, bad = _find_unpicklable(kwargs)
        raise SerializationError(
            f"argument {path} of {fdef.name}() (type {type(bad).__module__}."
            f"{type(bad).__qualname__}) cannot be sent to a worker process: "
            f"{type(e).__name__}: {e}. Pass plain data (numbers, strings, lists, dicts, "
            "numpy arrays) or run with the inline DefaultJobHandler.", path) from e


def _find_unpicklable(kwargs: dict[str, Any]) -> tuple[str, Any]:
    import cloudpickle

    def ok(v: Any) -> bool:
        try:
            cloudpickle.dumps(v)
            return True
        except Exception:  # noqa: BLE001
            return False

    def walk(v: Any, path: str) -> tuple[str, Any]:
        items: Iterator[tuple[str, Any]] = iter(())
        if isinstance(v, dict):
            items = ((f"{path}[{k!r}]", x) for k, x in v.items())
        elif isinstance(v, (list, tuple)):
            items = ((f"{path}[{i}]", x) for i, x in enumerate(v))
        for p, x in items:
            if not ok(x):
                return walk(x, p)
        return path, v

    for name, v in kwargs.items():
        if not ok(v):
            return walk(v, f"kw[{name!r}]")
    return "kw", kwargs


# ------------------------------------------------------------------------ dependencies
def _upstream_done(job: Job, upstream: Future) -> None:
    with job._wait_lock:  # type: ignore[attr-defined]
        if job.done() or job._status is not JobStatus.PENDING:
            return
        failed = upstream.cancelled() or Future.exception(upstream, 0) is not None
        if failed:
            job._waiting_on = -1  # type: ignore[attr-defined]
        else:
            job._waiting_on -= 1  # type: ignore[attr-defined]
            if job._waiting_on:  # type: ignore[attr-defined]
                return
    if failed:
        assert isinstance(upstream, Job)
        err = Future.exception(upstream, 0)  # also the JobCancelledException of a cancel
        what = "was cancelled" if upstream.cancelled() else f"failed: {err}"
        e = UpstreamJobError(
            f"job {job.label!r} did not run because the job it depends on, "
            f"{upstream.label!r} ({upstream.job_id}), {what}",
            upstream_label=upstream.label, upstream_id=upstream.job_id, job_label=job.label)
        e.__cause__ = err
        _finish(job, Outcome(False, error=e), JobStatus.ERROR)
        return
    try:
        kwargs = _replace_jobs(job._kwargs)
        plan = _plan(job, kwargs)
    except Exception as e:  # noqa: BLE001 - the job fails, the pipeline goes on
        _finish(job, Outcome(False, error=e), JobStatus.ERROR)
        return
    _execute(job, kwargs, plan)


# ------------------------------------------------------------------------ dispatch
def _execute(job: Job, kwargs: dict[str, Any], plan: dict[str, Any]) -> None:
    if job.done():  # cancelled meanwhile
        return
    settings = job._settings
    fdef = job._fdef
    keyinfo = plan.get("key")
    if keyinfo is not None:
        job.key = keyinfo.key
        job._keyinfo = keyinfo  # type: ignore[attr-defined]
        hit = plan.get("hit")
        if hit is not None:
            job.result_hash = hit.info.get("result_hash")
            _finish(job, hit, JobStatus.FINISHED if hit.ok else JobStatus.ERROR, cache_hit=True)
            return
    launch = Launch(
        job_id=job.job_id,
        label=job.label,
        fid=fdef.fid,
        fn=fdef.fn,
        kwargs=kwargs,
        fn_pickle=fdef.pickled,
        kwargs_pickle=plan.get("kwargs_pickle"),
        timeout=settings.job_timeout,
        stream_prefix=f"[{job.label}] " if settings.show_console else None,
        runtime=plan.get("runtime"),
        code=plan.get("code"),
        store=plan.get("store"),
        sys_path=tuple(fdef.local_module_paths()),
    )
    if job.done():  # cancelled while the launch was prepared
        return
    job._status = JobStatus.QUEUED
    hfut = job._handler.submit(launch)
    job._hfuture = hfut
    hfut.add_done_callback(partial(_on_outcome, job))


def _on_outcome(job: Job, hfut: Future) -> None:
    try:
        outcome: Outcome = hfut.result()
    except BaseException as e:  # noqa: BLE001 - a broken handler must not hang the job
        outcome = Outcome(False, error=e)
    if isinstance(outcome.error, JobCancelledException):
        _finish(job, outcome, JobStatus.CANCELLED)
        return
    keyinfo = getattr(job, "_keyinfo", None)
    if keyinfo is not None:
        from .cacheflow import record

        try:
            job.result_hash = record(job, keyinfo, outcome)
        except Exception as e:  # noqa: BLE001 - a cache failure must not lose the result
            import warnings

            warnings.warn(f"could not store the result of job {job.label!r} in the job "
                          f"cache: {type(e).__name__}: {e}", stacklevel=1)
    _finish(job, outcome, JobStatus.FINISHED if outcome.ok else JobStatus.ERROR)


def _finish(job: Job, outcome: Outcome, status: JobStatus, *, cache_hit: bool = False) -> None:
    """Complete ``job`` with ``outcome`` (idempotent: the first completion wins)."""
    if job.done():
        return
    start, end = outcome.start_time, outcome.end_time
    if start is None:
        start = end = time.time()
    info: dict[str, Any] = {
        "start_time": start,
        "end_time": end,
        "elapsed_sec": (end or start) - start,
        "cache_hit": cache_hit,
        "status": status.value,
        "console_out": {"label": job.label, "lines": [
            {"timestamp": t, "text": text, "stderr": err} for t, text, err in outcome.console]},
    }
    info.update(outcome.info)
    if outcome.traceback_text:
        info["traceback"] = outcome.traceback_text
    job._runtime_info = info
    job.cache_hit = cache_hit
    job._status = status
    if status is JobStatus.CANCELLED:
        job._cancelled = True
    try:
        if outcome.ok:
            Future.set_result(job, outcome.value)
        else:
            err = outcome.error
            if err is None:
                err = JobError(f"job {job.label!r} failed", job_label=job.label)
            remote = not job._handler.drives_in_caller or "runtime" in outcome.info
            if outcome.traceback_text and err.__cause__ is None and remote:
                err.__cause__ = RemoteTraceback(outcome.traceback_text)
            Future.set_exception(job, err)
    except Exception:  # noqa: BLE001 - InvalidStateError: completed concurrently
        pass
    _inline.notify_drivers()


class RemoteTraceback(Exception):
    """Carries the traceback text of an exception raised in a worker (its ``__cause__``)."""

    def __str__(self) -> str:
        return "\n\n" + str(self.args[0]).rstrip()


# ------------------------------------------------------------------------ control
def cancel_job(job: Job) -> bool:
    """Cancel ``job`` (see :meth:`Job.cancel`)."""
    if job.done():
        return False
    lock = getattr(job, "_wait_lock", None)
    if job._hfuture is None:
        if lock is not None:  # not while its last upstream is handing it over
            with lock:
                job._waiting_on = -1  # type: ignore[attr-defined]
        _finish(job, Outcome(False, error=JobCancelledException(
            f"job {job.label!r} was cancelled")), JobStatus.CANCELLED)
        return True
    return job._handler.cancel(job.job_id)


def drive_until_done(job: Job, timeout: float | None) -> float | None:
    """Run inline work in this thread until ``job`` is done, when any job of an inline
    handler is still live (the job may wait for it); returns the time left of ``timeout``."""
    if not _inline_live:
        return timeout
    start = time.monotonic()
    _inline.drive(job.done, timeout)
    return None if timeout is None else max(0.0, timeout - (time.monotonic() - start))


def live_jobs() -> list[Job]:
    """Jobs not completed yet."""
    with _live_lock:
        return list(_live.values())


def wait_all(timeout: float | None = None, jobs: list[Job] | None = None) -> None:
    """Wait until every job (or every job of ``jobs``) is complete; failures do not raise."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        pending = [j for j in (live_jobs() if jobs is None else jobs) if not j.done()]
        if not pending:
            return
        for j in pending:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return
            try:
                j.exception(remaining)
            except TimeoutError:
                return
            except BaseException:  # noqa: BLE001 - cancelled: fine, it is complete
                pass
        if jobs is not None:
            return


def _wait_for_handler(handler: JobHandler) -> None:
    wait_all(jobs=[j for j in live_jobs() if j._handler is handler])


JobHandler._wait_for_jobs_hook = staticmethod(_wait_for_handler)  # type: ignore[assignment]


def reset() -> None:
    """Cancel every job, stop every handler's workers and restore default settings."""
    def cancelled(job: Job) -> Outcome:
        return Outcome(False, error=JobCancelledException(
            f"job {job.label!r} was cancelled by hi.reset()"))

    for job in live_jobs():
        if job._hfuture is None:
            _finish(job, cancelled(job), JobStatus.CANCELLED)
    for handler in list(JobHandler._instances):
        handler.reset()
    for job in live_jobs():  # anything a handler did not report
        _finish(job, cancelled(job), JobStatus.CANCELLED)
    _config._set_defaults()
