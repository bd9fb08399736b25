"""DaskJobHandler: jobs as tasks on a dask.distributed cluster.

The same pipeline code runs on a laptop and on a cluster: only the handler changes. Cache
lookups stay in the client (only misses are submitted); each miss is one dask task (a
unique key, ``pure=False``) that runs the job on a warm worker process kept on the dask
worker by hither's plugin (see :mod:`hither.handlers._dask_worker`).

Values travel through the store, not through the scheduler: arguments and replies larger
than ``inline_limit`` bytes are written to a private transfer folder in the job cache's
store (the exchange store without a cache), and container and environment jobs read and
write their values as store blobs. The client and every dask worker must therefore see the
store under the same path: one machine, or a shared filesystem (see docs/clusters.md).
Each job's reply (up to 4 KiB pickled; or the note that it was spilled) comes back with
its task's "done" event, ahead of dask's own completion notice: the job is settled from
it, nothing is fetched, and the dask future is only held until dask says the task ended
(a claim file guards against dask running it again meanwhile). A collector thread looks
at the held futures every 0.1 s for tasks that failed, were cancelled or lost, whose
results are then fetched.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import pickle
import re
import shutil
import sys
import threading
import time
import traceback
import uuid
import weakref
from concurrent.futures import Future, InvalidStateError, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ..launch import Launch, Outcome
from ..progress import echo
from . import _dask_wire as W
from ._dask_client import (
    FromEvent,
    Task,
    collect,
    exit_hook,
    hand_out,
    submit_loop,
    task_outcome,
)
from .base import JobHandler, completed_future, in_io_thread, mark_io_thread

_INSTALL = ("hi.DaskJobHandler needs dask.distributed, which is not installed: "
            "pip install 'hither[dask]' (the same version on the client and every worker)")
_LABEL_CHARS = re.compile(r"[^A-Za-z0-9_.]+")
_CONTAINER_KINDS = ("docker", "podman", "apptainer")
#: answers received with events between two trims of the scheduler's event log
_TRIM_EVERY = 2048
#: seconds between two rounds of settling jobs answered by events, when answers keep coming
_FLUSH_EVERY = 0.002


def _distributed() -> Any:
    try:
        import distributed
    except ImportError as e:
        raise ImportError(_INSTALL) from e
    return distributed


class DaskJobHandler(JobHandler):
    """Run jobs as tasks on a dask.distributed cluster.

    Give one of ``client`` (a ``distributed.Client``, or a cluster object such as a
    ``LocalCluster`` or a dask-jobqueue ``SLURMCluster``), ``address`` (the scheduler's,
    ``"tcp://host:8786"``) or ``scheduler_file`` (written by ``dask scheduler
    --scheduler-file``). With none, the handler starts its own ``LocalCluster`` on
    127.0.0.1 (``n_workers`` processes of one thread each, no dashboard), closed at
    shutdown; a client or cluster given to it is left open.

    Each job runs in a warm worker process of hither's on the dask worker: a fresh
    interpreter for host jobs, a container or environment worker for runtime jobs (one per
    thread, kept between jobs and removed with the dask worker or at shutdown). Cancel and
    ``job_timeout`` (counted from the function's start) stop the job's process at once. A
    dask worker that dies mid-job fails the job with
    :class:`~hither.errors.WorkerCrashedError`: the job is never run a second time, whatever
    the scheduler's ``allowed-failures``.

    ``resources`` are dask resources every job asks for; ``container_resources`` are asked
    for by container jobs on top of them: start workers with ``dask worker --resources
    "containers=2"`` and pass ``container_resources={"containers": 1}`` to run at most two
    containers at once on each such worker, and none on the others. ``inline_limit`` is the
    size (bytes) above which arguments and replies go through the store rather than with the
    task (0: always through the store).
    """

    wants_store = True

    def __init__(self, client: Any = None, *, address: str | None = None,
                 scheduler_file: str | os.PathLike[str] | None = None,
                 n_workers: int | None = None, resources: dict[str, float] | None = None,
                 container_resources: dict[str, float] | None = None,
                 inline_limit: int = 16384, timeout: float = 30) -> None:
        super().__init__()
        if sum(x is not None for x in (client, address, scheduler_file)) > 1:
            raise ValueError("give at most one of client=, address= and scheduler_file=")
        if int(inline_limit) < 0:
            raise ValueError(f"inline_limit must be >= 0, got {inline_limit!r}")
        distributed = _distributed()
        from . import _dask_worker

        self._remote = _dask_worker  # what runs on the workers
        self.inline_limit = int(inline_limit)
        self.resources = dict(resources or {})
        self.container_resources = {**self.resources, **(container_resources or {})}
        self._cluster: Any = None
        self._owns_client = client is None
        if client is None:
            if address is None and scheduler_file is None:
                n = int(n_workers) if n_workers is not None else (os.cpu_count() or 1)
                if n < 1:
                    raise ValueError(f"n_workers must be at least 1, got {n_workers!r}")
                self._cluster = distributed.LocalCluster(
                    n_workers=n, threads_per_worker=1, processes=True, host="127.0.0.1",
                    dashboard_address=None,
                    # no dashboard; the scheduler's own HTTP server (health checks) on any
                    # free port of loopback rather than 8787, which may be taken
                    scheduler_kwargs={"dashboard": False, "dashboard_address": "127.0.0.1:0"})
                client = distributed.Client(self._cluster, set_as_default=False,
                                            timeout=timeout)
            elif address is not None:
                client = distributed.Client(address, set_as_default=False, timeout=timeout)
            else:
                assert scheduler_file is not None
                client = distributed.Client(scheduler_file=os.fspath(scheduler_file),
                                            set_as_default=False, timeout=timeout)
        elif not isinstance(client, distributed.Client):  # a cluster object
            client = distributed.Client(client, set_as_default=False, timeout=timeout)
            self._owns_client = True
        self.client = client
        self.name = f"hither-{uuid.uuid4().hex[:16]}"
        from .. import __version__

        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._tasks: dict[str, Task] = {}  # job id -> task not settled yet
        self._by_key: dict[str, Task] = {}  # dask key -> task whose dask future is out
        self._xfer: dict[Any, Path] = {}  # store -> transfer folder
        self._functions: set[tuple[str, str]] = set()
        # placement: jobs follow the dask worker that ran the last one while it is free, so
        # that its warm worker process is reused (dask itself would go round robin)
        self._unstarted = 0
        self._busy: dict[str, int] = {}
        self._nthreads: dict[str, int] = {}
        self._recent: str | None = None
        self._stopped = False
        self._replies = 0
        # tasks answered by their "done" events (dask's loop), settled after each batch
        self._answered: list[Task] = []
        self._flush_due = False
        self._last_flush = 0.0
        self._scan_wake = threading.Condition(self._lock)
        # submissions: jobs made ready meanwhile go to dask together, in one graph update
        self._pending: list[tuple[Task, W.Spec, dict[str, float], list[str] | None]] = []
        self._wake = threading.Condition(self._lock)
        try:
            plugin = self._remote.HitherPlugin(self.name, __version__, self.name, os.getcwd(),
                                    list(sys.path))
            client.register_plugin(plugin, name=self.name)
            client.subscribe_topic(self.name, self._on_event)
        except BaseException:
            self._close_client()
            raise
        self._io = ThreadPoolExecutor(max_workers=2, thread_name_prefix="hither-dask-io",
                                      initializer=mark_io_thread)
        self._collector = threading.Thread(target=collect, args=(weakref.ref(self), client),
                                           name="hither-dask", daemon=True)
        self._collector.start()
        self._submitter = threading.Thread(target=submit_loop, args=(weakref.ref(self),),
                                           name="hither-dask-submit", daemon=True)
        self._submitter.start()
        # before dask's own exit handlers (registered earlier, run later) close the client
        self._at_exit = exit_hook(weakref.ref(self))
        atexit.register(self._at_exit)
        if self.container_resources:
            self._check_resources(self.container_resources)

    # ---------------------------------------------------------------- public interface
    def submit(self, launch: Launch) -> Future[Outcome]:
        if self._closed:
            return completed_future(self._closed_outcome(launch))
        key = f"hither-{_LABEL_CHARS.sub('_', launch.label)[:40]}-{uuid.uuid4().hex}"
        try:
            xfer = self._xfer_dir(launch.store)
            task = Task(launch, key, str(xfer))
            spec = self._spec(task)
        except Exception as e:  # noqa: BLE001 - the job fails, the pipeline goes on
            return completed_future(Outcome(False, error=e))
        kind = getattr(launch.runtime, "kind", None)
        resources = self.container_resources if kind in _CONTAINER_KINDS else self.resources
        with self._lock:
            self._tasks[launch.job_id] = task
            self._by_key[key] = task
            self._unstarted += 1
            self._pending.append((task, spec, resources, self._hint()))
            self._wake.notify()
        return task.future

    def cancel(self, job_id: str) -> bool:
        with self._lock:
            task = self._tasks.get(job_id)
            if task is None or task.future.done() or task.cancel_why is not None:
                return False
            task.cancel_why = "was cancelled"
        self._withdraw(task)
        self._settle(task, self._cancelled_outcome(task.launch))
        return True

    def reset(self) -> None:
        """Cancel every job and stop the warm worker processes; the handler stays usable."""
        self._cancel_all("was cancelled by hi.reset()")
        if self._stopped:
            return
        try:
            self.client.run(self._remote.stop_idle, self.name)
        except Exception:  # noqa: BLE001 - a worker that cannot be reached has none left
            pass

    def shutdown(self, wait: bool = True, *, cancel: bool = False) -> None:
        self._closed = True
        if cancel:
            self._cancel_all("was cancelled: its handler was shut down")
        elif wait and threading.current_thread() is not self._collector and \
                not in_io_thread():  # completions need the I/O threads
            with self._idle:
                while self._tasks:
                    self._idle.wait(0.1)
        self._stop()

    @property
    def worker_pids(self) -> dict[str, list[int]]:
        """The warm worker processes of this handler on each dask worker (diagnostics)."""
        try:
            return dict(self.client.run(self._remote.worker_pids, self.name))
        except Exception:  # noqa: BLE001
            return {}

    def __repr__(self) -> str:
        where = "LocalCluster" if self._cluster is not None else \
            getattr(getattr(self.client, "scheduler", None), "address", "?")
        return f"<DaskJobHandler {where}{' closed' if self._closed else ''}>"

    # ---------------------------------------------------------------- submitting
    def _xfer_dir(self, store: Any) -> Path:
        if store is None:
            from ..exchange import private_store

            store = private_store()
        with self._lock:
            found = self._xfer.get(store)
            if found is None:
                found = self._xfer[store] = store.work_dir("dask")
            return found

    def _spec(self, task: Task) -> W.Spec:
        launch = task.launch
        common: dict[str, Any] = {
            "key": task.key, "job_id": launch.job_id, "label": launch.label,
            "fid": launch.fid, "xfer": task.xfer, "timeout": launch.timeout,
            "echo": launch.echo_label is not None, "inline_limit": self.inline_limit}
        if launch.runtime is None:
            self._send_function(launch, task.xfer)
            kwargs = launch.pickled_kwargs()
            if len(kwargs) <= self.inline_limit:
                return W.Spec(**common, kwargs=kwargs, sys_path=tuple(launch.sys_path))
            W.write_new(os.path.join(task.xfer, task.key + ".in"), kwargs)
            task.files = True
            return W.Spec(**common, kwargs=None, sys_path=tuple(launch.sys_path))
        manifest = launch.args_manifest
        in_file = False
        data = pickle.dumps(manifest, protocol=pickle.HIGHEST_PROTOCOL)
        if len(data) > self.inline_limit:
            W.write_new(os.path.join(task.xfer, task.key + ".in"), data)
            task.files, manifest, in_file = True, None, True
        return W.Spec(**common, runtime=launch.runtime, identity=launch.runtime.identity(),
                      store=launch.store, code=launch.code, args_manifest=manifest,
                      args_in_file=in_file)

    def _submit_batch(self, batch: list[tuple[Task, W.Spec, dict[str, float],
                                               list[str] | None]]) -> None:
        """Send ``batch`` to dask: one graph update per kind of placement (submitter)."""
        groups: dict[tuple[Any, ...], list[tuple[Task, W.Spec]]] = {}
        for task, spec, resources, hint in batch:
            if task.cancel_why is not None:  # withdrawn before it went out: it never will
                self._drop(task)
                continue
            where = (tuple(sorted(resources.items())), tuple(hint or ()))
            groups.setdefault(where, []).append((task, spec))
        for (resources, hint), items in groups.items():
            try:
                futs = self.client.map(
                    self._remote.run_job, [self.name] * len(items), [sp for _, sp in items],
                    key=[t.key for t, _ in items], pure=False, retries=0,
                    resources=dict(resources) or None, workers=list(hint) or None,
                    allow_other_workers=bool(hint))
            except Exception as e:  # noqa: BLE001 - e.g. the scheduler is gone
                for task, _ in items:
                    self._drop(task)
                    self._settle(task, Outcome(False, error=e))
                continue
            for (task, _), fut in zip(items, futs, strict=True):
                task.dask = fut

    def _send_function(self, launch: Launch, xfer: str) -> None:
        """Write the function (once per transfer folder) for the workers to load."""
        if (xfer, launch.fid) in self._functions:
            return
        from .host import by_value_sources

        data = pickle.dumps((launch.fn_pickle(), by_value_sources(launch.fn)),
                            protocol=pickle.HIGHEST_PROTOCOL)
        path = os.path.join(xfer, "fn-" + launch.fid)
        tmp = path + f".{uuid.uuid4().hex}.tmp"
        W.write_new(tmp, data)
        os.replace(tmp, path)
        self._functions.add((xfer, launch.fid))

    def _hint(self) -> list[str] | None:
        """The dask worker this job should go to (lock held), or None: dask decides."""
        w = self._recent
        if w is None or self._unstarted > 1 or self._busy.get(w, 0) >= self._nthreads.get(w, 1):
            return None
        return [w]

    def _check_resources(self, wanted: dict[str, float]) -> None:
        import warnings

        try:
            workers = self.client.scheduler_info().get("workers", {}).values()
        except Exception:  # noqa: BLE001
            return
        offered = [w.get("resources", {}) for w in workers]
        for name, amount in wanted.items():
            if offered and not any(o.get(name, 0) >= amount for o in offered):
                warnings.warn(
                    f"no dask worker offers the resource {name}={amount}: jobs asking for it "
                    f"wait until one does (start workers with `dask worker --resources "
                    f"\"{name}=N\"`)", RuntimeWarning, stacklevel=3)

    # ---------------------------------------------------------------- events (dask's loop)
    def _on_event(self, event: Any) -> None:
        try:
            msg = event[1]
            kind, key = msg[0], msg[1]
            task = self._by_key.get(key)
            if task is None:
                return
            if kind == "started":
                with self._lock:
                    if task.worker is None and not task.future.done():
                        task.worker = str(msg[2])
                        self._unstarted -= 1
                        self._busy[task.worker] = self._busy.get(task.worker, 0) + 1
                        self._nthreads[task.worker] = int(msg[3])
                        try:
                            task.future.set_running_or_notify_cancel()
                        except (InvalidStateError, RuntimeError):
                            pass
            elif kind == "done":
                if isinstance(msg[2], bytes) and task.reply is None:
                    # the first answer is the run's (a task dask ran again after its worker
                    # died only refuses to run)
                    task.reply = msg[2]
                    self._answered.append(task)
                    if not self._flush_due:
                        self._flush_due = True
                        self._schedule_flush()
                self._replies += 1
                if self._replies % _TRIM_EVERY == 0:  # the scheduler keeps every event
                    self._background(self.client.run_on_scheduler, self._remote.forget_events,
                                     self.name)
            elif kind == "echo":
                prefix = task.launch.stream_prefix()
                if prefix is not None:
                    echo(prefix + str(msg[2]))
        except Exception:  # noqa: BLE001 - never break dask's event loop
            traceback.print_exc()

    # ---------------------------------------------------------------- completion
    def _schedule_flush(self) -> None:
        """Settle the answers that came once the events read with this one are in, or
        ``_FLUSH_EVERY`` after the last round when answers keep coming: a stream of tiny
        jobs wakes the I/O threads a few hundred times a second, not once per job (waking
        a thread costs more client time than settling a job), while a lone answer is
        settled at once (dask's loop)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # not on dask's loop
            self._flush_answers()
            return
        wait = self._last_flush + _FLUSH_EVERY - time.monotonic()
        if wait > 0:
            loop.call_later(wait, self._flush_answers)
        else:
            loop.call_soon(self._flush_answers)

    def _flush_answers(self) -> None:
        """Hand the jobs answered by events to the I/O threads, in shares (dask's loop)."""
        self._flush_due = False
        self._last_flush = time.monotonic()
        answered, self._answered = self._answered, []
        if answered:
            hand_out(self._io, self._settle_answered, answered)

    def _settle_answered(self, tasks: list[Task]) -> None:
        """Settle jobs from the answers their "done" events brought (on an I/O thread). A
        claim stays until dask says its task ended: a task dask runs again meanwhile (its
        worker died before it could say so) must find it."""
        for task in tasks:
            try:
                fut = task.dask
                if fut is not None and fut.status != "pending":  # most are, by now
                    self._release(task)
                assert task.reply is not None
                status, result = FromEvent(task.reply).load(task.launch.label)
                if not task.future.done():
                    self._settle(task, task_outcome(task, status, result))
                self._remove_files(task, claim=False,
                                   spilled=isinstance(result, W.Spilled))
            except Exception:  # noqa: BLE001 - the others are settled all the same
                traceback.print_exc()

    def _release(self, task: Task) -> None:
        """Let go of the dask future of a task answered by its event, which dask says
        ended (its result is dropped on the dask worker), and of its claim."""
        with self._lock:
            if self._by_key.pop(task.key, None) is None:
                return  # released by another thread
        fut, task.dask = task.dask, None
        if fut is not None and fut.status in ("finished", "error"):
            self._remove_files(task, spilled=False, inputs=False)

    def _ended_tasks(self) -> list[Task]:
        """Release the tasks whose dask futures are no longer pending (collector): those
        answered by events are let go of; the others are returned, to be settled from
        what dask says (an error, a cancel, a lost scheduler, a missing event)."""
        with self._lock:
            tasks = list(self._by_key.values())
        unanswered = []
        for task in tasks:
            fut = task.dask
            if fut is None or fut.status == "pending":
                continue
            if task.reply is not None:
                self._release(task)
                continue
            with self._lock:
                if self._by_key.pop(task.key, None) is None:
                    continue
            unanswered.append(task)
        return unanswered

    def _done_all(self, share: list[tuple[Task, str, Any]]) -> None:
        """Settle jobs from what dask said of their tasks (on an I/O thread)."""
        for task, status, result in share:
            task.dask = None
            try:
                if not task.future.done():
                    self._settle(task, task_outcome(task, status, result))
            except Exception:  # noqa: BLE001 - the others are settled all the same
                traceback.print_exc()
            finally:
                # a task dask reports cancelled may still start on its worker: its claim
                # stays (until shutdown) so that it never runs the job
                if status in ("finished", "error"):
                    self._remove_files(task, spilled=isinstance(result, W.Spilled))

    def _settle(self, task: Task, outcome: Outcome) -> None:
        with self._lock:
            if self._tasks.pop(task.launch.job_id, None) is None:
                return  # settled already (cancelled)
            w = task.worker
            if w is None:
                self._unstarted -= 1
            else:
                self._busy[w] = max(0, self._busy.get(w, 0) - 1)
            ran_on = outcome.info.get("dask_worker") or w
            if ran_on and "rerun_refused" not in outcome.info:
                self._recent = ran_on
            if not self._tasks:
                self._idle.notify_all()
        try:
            task.future.set_result(outcome)
        except InvalidStateError:
            pass

    def _drop(self, task: Task) -> None:
        with self._lock:
            self._by_key.pop(task.key, None)
        self._remove_files(task)

    def _remove_files(self, task: Task, spilled: bool = True, claim: bool = True,
                      inputs: bool = True) -> None:
        names = [task.key + ".claim"] if claim else []
        if spilled:
            names.append(task.key + ".out")
        if task.files and inputs:
            names.append(task.key + ".in")
        for name in names:
            try:
                os.unlink(os.path.join(task.xfer, name))
            except OSError:
                pass

    # ---------------------------------------------------------------- cancel and stop
    def _withdraw(self, task: Task) -> None:
        """Make sure a cancelled job never runs, or stop it where it runs."""
        why = task.cancel_why or "was cancelled"
        path = W.claim_path(task.xfer, task.key)
        try:
            claimed = W.claim(path, "cancel\n")  # before any worker claims it: it never runs
        except OSError:
            claimed = False
        if not claimed:  # it runs (or ran): stop it where it runs, everywhere if unknown
            parts = W.read_claim(path).split()
            where = [parts[1]] if len(parts) >= 2 and parts[0] == "run" else None
            self._background(self.client.run, self._remote.kill_job, self.name, task.key, why,
                             workers=where)
            return
        if task.dask is not None:
            self._background(self.client.cancel, [task.dask])

    def _background(self, fn: Any, *args: Any, **kwargs: Any) -> None:
        def call() -> None:
            try:
                fn(*args, **kwargs)
            except Exception:  # noqa: BLE001 - a worker that is gone has nothing to stop
                pass

        try:
            self._io.submit(call)
        except RuntimeError:  # shutting down
            call()

    def _cancel_all(self, why: str) -> None:
        with self._lock:
            tasks = [t for t in self._tasks.values() if t.cancel_why is None]
            for t in tasks:
                t.cancel_why = why
        for t in tasks:
            self._withdraw(t)
            self._settle(t, self._cancelled_outcome(t.launch, why))

    def _stop(self) -> None:
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            self._idle.notify_all()
            self._wake.notify_all()
            self._scan_wake.notify_all()
        atexit.unregister(self._at_exit)
        client = self.client
        for call in (lambda: client.unsubscribe_topic(self.name),
                     lambda: client.run_on_scheduler(self._remote.forget_events, self.name),
                     lambda: client.unregister_worker_plugin(self.name)):
            try:
                call()  # the plugin's teardown stops its worker processes
            except Exception:  # noqa: BLE001 - a closed client or a gone cluster
                pass
        self._submitter.join(5)
        self._collector.join(5)
        self._io.shutdown(wait=False)
        for path in self._xfer.values():
            shutil.rmtree(path, ignore_errors=True)
        self._close_client()

    def _close_client(self) -> None:
        try:
            if self._owns_client:
                self.client.close()
            if self._cluster is not None:
                self._cluster.close()
        except Exception:  # noqa: BLE001 - at exit, dask may have closed them already
            pass


