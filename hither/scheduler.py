"""The scheduler: the path of one call, from ``.run()`` to a completed Job.

``f.run(**kw)`` creates a Job. When every job among its arguments has finished, the
arguments are resolved (jobs replaced by their results), the cache is consulted when one
is configured, and only a miss is given to the job's handler. The handler's outcome is
recorded in the cache *before* the job completes, so ``wait()`` returning means the
result is stored.

Where the work happens: a job without upstream jobs is planned (key, lookup, frozen
arguments) inside ``.run()``, so bad arguments raise there. A job whose last upstream job
finishes is planned in the thread that finished it when that is a caller's thread, and on
the scheduler's own pool when it is a handler's I/O thread: a handler's loop only moves
bytes, and hashing a large input never delays another job's result or timeout.
"""

from __future__ import annotations

import os
import pickle
import shutil
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from . import arguments
from . import config as _config
from ._codec import File
from .errors import JobCancelledException, SerializationError, UpstreamJobError
from .fdef import FunctionDef
from .handlers import inline as _inline
from .handlers.base import JobHandler, in_io_thread
from .handlers.inline import DefaultJobHandler
from .job import Job, JobStatus
from .launch import Launch, Outcome, Recording

_live: dict[int, Job] = {}
_live_lock = threading.Lock()
_inline_live = 0  # live jobs of inline handlers: waiting on any job may need to run them
_default_handler: DefaultJobHandler | None = None


def default_handler() -> DefaultJobHandler:
    """The handler used when ``Config(job_handler=...)`` is not set."""
    global _default_handler
    h = _default_handler
    if h is None or h.closed:
        h = _default_handler = DefaultJobHandler()
    return h


# ------------------------------------------------------------------------ the engine
class _Engine:
    """What jobs ask of the scheduler (injected into every Job)."""

    def cancel(self, job: Job) -> bool:
        return job.handler.cancel(job.job_id)

    def drive(self, job: Job, timeout: float | None) -> float | None:
        if not _inline_live:
            return timeout
        start = time.monotonic()
        _inline.drive(job.done, timeout)
        return None if timeout is None else max(0.0, timeout - (time.monotonic() - start))

    def interrupted(self) -> None:
        interrupted()


ENGINE = _Engine()

_planner: ThreadPoolExecutor | None = None
_planner_lock = threading.Lock()


def _plan_pool() -> ThreadPoolExecutor:
    global _planner
    with _planner_lock:
        if _planner is None:
            _planner = ThreadPoolExecutor(max_workers=4, thread_name_prefix="hither-plan")
        return _planner


_tls = threading.local()


def _soon(fn: Callable[..., None], *args: Any) -> None:
    """Run ``fn(*args)`` in this thread, after the work already running here: a cascade of
    jobs completing each other (cache hits down a chain) stays flat instead of recursing."""
    queue: deque | None = getattr(_tls, "queue", None)
    if queue is not None:
        queue.append((fn, args))
        return
    queue = _tls.queue = deque([(fn, args)])
    try:
        while queue:
            f, a = queue.popleft()
            f(*a)
    finally:
        _tls.queue = None


# ------------------------------------------------------------------------ exchange store
def exchange_store(settings: _config.Settings) -> Any:
    """The store values cross through to a runtime worker (see :mod:`hither.exchange`)."""
    from .exchange import exchange_store as _exchange_store

    return _exchange_store(settings.job_cache)


# ------------------------------------------------------------------------ creating jobs
def create_job(fdef: FunctionDef, kwargs: dict[str, Any]) -> Job:
    """Create the Job of ``fdef(**kwargs)`` with the settings in force now."""
    settings = _config.current()
    fdef.check_kwargs(kwargs)
    handler = settings.job_handler or default_handler()
    nested = arguments.upstream_by_name(kwargs)
    if nested:
        upstream = list({id(j): j for jobs in nested.values() for j in jobs}.values())
        # every upstream job already finished (a replay): plan now, as for a job without any
        ready = all(map(_finished, upstream))
    else:
        upstream, ready = [], True
    job = Job(fdef, kwargs, settings, handler, ENGINE, 0 if ready else len(upstream))
    plan: _Plan | _Hit | None = None
    failure: Exception | None = None
    if not upstream:
        plan = _plan(job, kwargs, nested)  # bad arguments raise here
    elif ready:
        try:
            plan = _plan(job, kwargs, nested)
        except Exception as e:  # noqa: BLE001 - as in _plan_and_dispatch: the job fails
            failure = e
    if type(plan) is tuple:
        # a cache hit known at once: completed here, never live nor given to the handler
        outcome, keyinfo = plan
        job._complete_new(keyinfo, outcome, outcome.info.get("result_hash"))
        if _show_progress(settings.progress):
            _progress().created()
            job.add_done_callback(_progress_done)
        return job
    global _inline_live
    with _live_lock:
        _live[id(job)] = job
        if handler.drives_in_caller:
            _inline_live += 1
    handler.adopt(job.job_id, job.cancel)
    job.add_done_callback(_forget)
    if _show_progress(settings.progress):
        _progress().created()
        job.add_done_callback(_progress_done)
    if failure is not None:
        job._complete(Outcome(False, error=failure), JobStatus.ERROR)
    elif isinstance(plan, _Plan):
        _dispatch(job, plan)
    else:
        for up in upstream:
            up.add_done_callback(partial(_upstream_done, job, nested))
    return job


def _finished(job: Job) -> bool:
    """True when ``job`` completed with a result (not an error, not cancelled)."""
    return job._finished_ok()


_tracker: Any = None
_default_progress: bool | None = None


def _show_progress(setting: bool | None) -> bool:
    global _default_progress
    if setting is not None:
        return setting
    if _default_progress is None:
        from . import progress

        _default_progress = progress.enabled(None)
    return _default_progress


def _progress() -> Any:
    global _tracker
    if _tracker is None:
        from .progress import Tracker

        _tracker = Tracker(_running_count)
    return _tracker


def _running_count() -> int:
    return sum(j.get_status() is JobStatus.RUNNING for j in live_jobs())


def _progress_done(job: Future) -> None:
    assert isinstance(job, Job)
    _progress().completed(job.get_status().value, job.cache_hit)


def _forget(job: Future) -> None:
    global _inline_live
    assert isinstance(job, Job)
    with _live_lock:
        if _live.pop(id(job), None) is not None and job.handler.drives_in_caller:
            _inline_live -= 1
    job.handler.forget(job.job_id)
    _inline.notify_drivers()  # a thread running inline work may be waiting for this job


# ------------------------------------------------------------------------ planning
@dataclass(slots=True)
class _Plan:
    """What was decided for a job once its inputs were known."""

    runtime: Any = None
    kwargs_pickle: bytes | None = None
    kwargs: dict[str, Any] | None = None
    args_manifest: dict[str, Any] | None = None
    store: Any = None
    code: Any = None
    links: Path | None = None
    """Folder of the links to the snapshots of the job's File inputs (removed at the end)."""
    store_of_links: Any = None


_cacheflow_fns: tuple[Any, Any, Any] | None = None


def _cacheflow() -> tuple[Any, Any, Any]:
    """``cacheflow.compute_key``, ``lookup`` and ``record``, imported on first use (not by
    ``import hither``) and then without an import statement per job."""
    global _cacheflow_fns
    if _cacheflow_fns is None:
        from .cacheflow import compute_key, lookup, record

        _cacheflow_fns = (compute_key, lookup, record)
    return _cacheflow_fns


_Hit = tuple[Outcome, Any]
"""A cache hit found by ``_plan``: its Outcome and the job's KeyInfo."""


def _plan(job: Job, kwargs: dict[str, Any], nested: dict[str, list[Job]]) -> _Plan | _Hit:
    """Work that can fail on the arguments, done once they are known: the files snapshot,
    the cache key and lookup, then (on a miss) the arguments frozen for the run. A cache
    hit is its Outcome and KeyInfo, which the caller gives the job."""
    plain = True  # every argument a number, string, ... (no File to snapshot)
    leaves = arguments.LEAVES
    if nested:
        direct = set()  # the arguments that are one job's result as a whole
        upstream: dict[str, list[str | None]] = {}  # the keys of the jobs in each argument
        given, kwargs = kwargs, {}
        for name, value in given.items():
            jobs = nested.get(name)
            if jobs is not None:
                upstream[name] = [up.key for up in jobs]
                if value is jobs[0]:
                    direct.add(name)
                    value = value._result_now()
                else:
                    value = arguments.replace_jobs(value)
            kwargs[name] = value
            if type(value) not in leaves:
                plain = False
    else:  # validated here; jobs with upstream jobs were validated by create_job
        for name, value in kwargs.items():
            if type(value) not in leaves:
                plain = False
                for _ in arguments.walk(value, f"kw[{name!r}]"):
                    pass
    settings = job.get_settings()
    fdef = job.function_def
    runtime = _runtime_for(fdef, settings)
    cache = settings.job_cache
    snapshots: dict[str, str] = {}  # original path of each File input -> its sha256
    links = None
    if cache is not None:
        compute_key, lookup, _ = _cacheflow()
        if not plain and not cache.readonly:
            kwargs = arguments.snapshot_files(kwargs, cache.store, snapshots)
        if nested:
            keyinfo = compute_key(fdef, kwargs, settings, runtime, upstream=upstream,
                                  direct=direct)
        else:
            keyinfo = compute_key(fdef, kwargs, settings, runtime)
        hit = lookup(keyinfo, settings)
        if hit is not None:
            return hit, keyinfo  # nothing else is needed: the job completes at once
        job._keyed(keyinfo)
        if snapshots:
            kwargs, links = arguments.link_snapshots(kwargs, cache.store, snapshots)
    plan = _Plan(runtime=runtime, links=links,
                 store_of_links=cache.store if links is not None else None)
    if plan.runtime is not None:
        from . import values
        from ._codec import EncodeError

        store = plan.store = exchange_store(settings)
        plan.code = _bundle_of(fdef, store)
        try:
            plan.args_manifest = {name: values.encode(kwargs[name], store,
                                                      path=f"kw[{name!r}]")
                                  for name in sorted(kwargs)}
        except EncodeError as e:
            raise SerializationError(f"{e} (arguments of a job in a container or environment "
                                     "cross as data, not as pickled objects)", e.path) from e
    else:
        plan.kwargs_pickle, plan.kwargs = arguments.freeze(fdef, kwargs,
                                                           inline=job.handler.drives_in_caller)
        if job.handler.wants_store:
            plan.store = exchange_store(settings)
    return plan


def _bundle_of(fdef: FunctionDef, store: Any) -> Any:
    """The function's code bundle in ``store`` (see :meth:`FunctionDef.code_bundle`)."""
    return fdef.code_bundle(store.root)


def _runtime_for(fdef: FunctionDef, settings: _config.Settings) -> Any:
    if settings.container in (None, False) and settings.environment is None and \
            fdef.environment is None:
        return None  # the host: skip importing the runtimes
    from .runtimes import runtime_for

    return runtime_for(fdef, settings)


# ------------------------------------------------------------------------ dependencies
def _upstream_done(job: Job, nested: dict[str, list[Job]], upstream: Future) -> None:
    failed = upstream.cancelled() or Future.exception(upstream, 0) is not None
    if not job._upstream_finished(failed):
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
        job._complete(Outcome(False, error=e), JobStatus.ERROR)
        return
    if in_io_thread():  # a handler's loop or I/O thread: plan elsewhere
        _plan_pool().submit(_soon, _plan_and_dispatch, job, nested)
    else:
        _soon(_plan_and_dispatch, job, nested)


def _plan_and_dispatch(job: Job, nested: dict[str, list[Job]]) -> None:
    if job.done():
        return
    try:
        plan = _plan(job, job.kwargs, nested)
    except Exception as e:  # noqa: BLE001 - the job fails, the pipeline goes on
        job._complete(Outcome(False, error=e), JobStatus.ERROR)
        return
    if isinstance(plan, _Plan):
        _dispatch(job, plan)
    else:
        outcome, keyinfo = plan
        job._keyed(keyinfo)
        job._complete(outcome, JobStatus.FINISHED if outcome.ok else JobStatus.ERROR,
                      cache_hit=True, result_hash=outcome.info.get("result_hash"))


# ------------------------------------------------------------------------ dispatch
def _dispatch(job: Job, plan: _Plan) -> None:
    settings = job.get_settings()
    fdef = job.function_def
    launch = Launch(
        job_id=job.job_id,
        label=job.label,
        fid=fdef.fid,
        fn=fdef.fn,
        fn_pickle=fdef.pickled,
        kwargs_pickle=plan.kwargs_pickle,
        kwargs=plan.kwargs,
        args_manifest=plan.args_manifest,
        timeout=settings.job_timeout,
        echo_label=job.get_label if settings.show_console else None,
        runtime=plan.runtime,
        code=plan.code,
        store=plan.store,
        sys_path=tuple(fdef.local_module_paths()),
        recording=None if job.keyinfo is None else Recording(job.keyinfo, settings, fdef),
    )
    if job.done():  # cancelled while the launch was prepared
        _cleanup(plan)
        return
    try:
        hfut = job.handler.submit(launch)
    except Exception as e:  # noqa: BLE001 - a broken handler fails the job, never hangs it
        _cleanup(plan)
        job._complete(Outcome(False, error=e), JobStatus.ERROR)
        return
    if not job._dispatched(hfut):  # cancelled meanwhile: withdraw it
        job.handler.cancel(job.job_id)
        _cleanup(plan)
        return
    hfut.add_done_callback(partial(_on_outcome, job, plan))


def _on_outcome(job: Job, plan: _Plan, hfut: Future) -> None:
    try:
        outcome: Outcome = hfut.result()
    except BaseException as e:  # noqa: BLE001 - a broken handler must not hang the job
        outcome = Outcome(False, error=e)
    if plan.links is not None and outcome.ok:
        outcome.value = arguments.map_files(outcome.value, partial(_unlinked, plan))
    _cleanup(plan)
    if isinstance(outcome.error, JobCancelledException):
        job._complete(outcome, JobStatus.CANCELLED)
        return
    keyinfo = job.keyinfo
    if keyinfo is not None:
        _record(job, plan, keyinfo, outcome)
    remote = not job.handler.drives_in_caller or "runtime" in outcome.info
    job._complete(outcome, JobStatus.FINISHED if outcome.ok else JobStatus.ERROR,
                  remote=remote, cache_hit=bool(outcome.info.get("cache_hit")))


def _unlinked(plan: _Plan, f: File) -> File:
    """A File of the result that is one of the job's input links (removed when the job
    ends): the snapshot in the store it links to."""
    sha = f._sha256
    if sha is None or plan.links is None or not f.path.startswith(str(plan.links) + os.sep):
        return f
    store = plan.store_of_links
    return File._snapshot(str(store.blob_path("sha256://" + sha)), sha)


def _record(job: Job, plan: _Plan, keyinfo: Any, outcome: Outcome) -> None:
    record = _cacheflow()[2]
    settings = job.get_settings()
    try:
        job._set_result_hash(record(
            settings.job_cache, keyinfo, outcome, settings=settings,
            fdef=job.function_def, label=job.label, handler=type(job.handler).__name__,
            inputs=lambda: _input_values(plan), runtime=plan.runtime))
    except Exception as e:  # noqa: BLE001 - a cache failure must not lose the result
        import warnings

        warnings.warn(f"could not store the result of job {job.label!r} in the job "
                      f"cache: {type(e).__name__}: {e}", stacklevel=1)


def _input_values(plan: _Plan) -> tuple[str, dict[str, Any]]:
    """The job's inputs as they ran: ``("manifest", {name: manifest})`` for a runtime job,
    else ``("values", {name: value})`` (a private copy of the frozen arguments)."""
    if plan.args_manifest is not None:
        return "manifest", plan.args_manifest
    if plan.kwargs_pickle is not None:
        return "values", pickle.loads(plan.kwargs_pickle)
    return "values", plan.kwargs or {}


def _cleanup(plan: _Plan) -> None:
    if plan.links is not None:
        shutil.rmtree(plan.links, ignore_errors=True)
        plan.links = None


# ------------------------------------------------------------------------ control
def live_jobs() -> list[Job]:
    """Jobs not completed yet."""
    with _live_lock:
        return list(_live.values())


def wait_all(timeout: float | None = None, jobs: list[Job] | None = None) -> None:
    """Wait until every job (or every job of ``jobs``) is complete; failures do not raise.

    Ctrl-C while waiting cancels the jobs this thread started and raises
    ``KeyboardInterrupt``."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        pending = [j for j in (live_jobs() if jobs is None else jobs) if not j.done()]
        if not pending:
            if _tracker is not None:  # its last frame is drawn before the caller prints
                _tracker.settle()
            return
        for j in pending:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return
            try:
                j.exception(remaining)
            except TimeoutError:
                return
            except JobCancelledException:
                pass  # complete
        if jobs is not None:
            return


def interrupted() -> None:
    """Ctrl-C reached this thread while it waited: cancel the jobs it started (their
    workers and containers are stopped). A second Ctrl-C skips the rest of the cleanup."""
    me = threading.get_ident()
    try:
        for job in reversed(live_jobs()):  # downstream first: they end cancelled too
            if job.created_by == me:
                job.cancel()
    except KeyboardInterrupt:
        pass


def reset() -> None:
    """Cancel every job, stop every handler's workers and restore default settings."""
    def cancelled(job: Job) -> Outcome:
        return Outcome(False, error=JobCancelledException(
            f"job {job.label!r} was cancelled by hi.reset()"))

    for job in live_jobs():
        if job.get_status() is JobStatus.PENDING:
            job._complete(cancelled(job), JobStatus.CANCELLED)
    for handler in list(JobHandler._instances):
        handler.reset()
    for job in live_jobs():  # anything a handler did not report
        job._complete(cancelled(job), JobStatus.CANCELLED)
    _config._set_defaults()
