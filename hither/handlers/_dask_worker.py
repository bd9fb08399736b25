"""What runs on a dask worker for :class:`~hither.handlers.dask.DaskJobHandler`.

A dask worker runs many threads in one daemonic process, which cannot start
``multiprocessing`` children and should not import users' modules. Each job therefore runs
in a warm worker process of hither's own, kept by :class:`HitherPlugin` (a
``distributed.WorkerPlugin``, one per handler): host jobs in a fresh interpreter
(:class:`~hither.handlers.host.HostWorker`, ``spawn``), container and environment jobs in a
runtime worker (:class:`~hither.handlers.stdio.StdioWorker`). The plugin keeps them warm
between jobs, stops the one running a job that is cancelled, enforces ``job_timeout``, and
tears everything down with the dask worker (or when the handler unregisters it). How a job
runs on one of them is in :mod:`hither.handlers._dask_jobs`.

The dask task (:func:`run_job`) is a coroutine: a host job is sent to its warm process and
awaited on the dask worker's event loop (no dask thread waits for it; the worker's
``nthreads`` still bounds how many run at once); a container or environment job runs on a
thread of the plugin. The task and the client exchange only small messages; values cross
through the store's folder shared with the client (see :mod:`hither.handlers.dask`):

``<xfer>/fn-<fid>``      the function pickled, with its by-value sources (client)
``<xfer>/<key>.in``      arguments too large to travel with the task (client)
``<xfer>/<key>.out``     a reply too large to travel back (worker)
``<xfer>/<key>.claim``   created exclusively before a job runs: ``run <worker> <pid>`` by
                         the worker that runs it, ``cancel`` by the client that withdrew
                         it. A task that finds a claim never runs the function: dask
                         re-runs the tasks of a worker that died, and a job must not run
                         twice.
"""

from __future__ import annotations

import asyncio
import os
import pickle
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from typing import Any

# a plugin must be a WorkerPlugin for dask to call its hooks (this module is imported
# only by the handler, which says what to install when dask is missing)
from distributed import WorkerPlugin as _PluginBase

from ..errors import (
    JobCancelledException,
    RuntimeUnavailableError,
    WorkerCrashedError,
)
from ..launch import Outcome
from ._dask_jobs import Slot, run_host, run_runtime
from ._dask_wire import (
    Reply,
    Spec,
    Spilled,
    claim,
    claim_path,
    read_claim,
    write_new,
)

#: seconds a warm worker process may stay idle on a dask worker before it is stopped
IDLE_TIMEOUT = float(os.environ.get("HITHER_DASK_IDLE_TIMEOUT", "600"))
#: bytes up to which an answer also travels with its "done" event (the scheduler keeps a
#: log of events: the client trims it)
EVENT_LIMIT = 4096


# ---------------------------------------------------------------------------- the task
async def run_job(plugin_name: str, spec: Spec) -> Reply | None:
    """The dask task of one job: run it on this worker's warm worker processes (a coroutine
    on the dask worker's event loop: waiting for a process costs no thread)."""
    from distributed import get_worker

    worker = get_worker()
    plugin = worker.plugins.get(plugin_name)
    if not isinstance(plugin, HitherPlugin):
        return Outcome(False, error=RuntimeUnavailableError(
            f"the dask worker {worker.address} has no hither plugin {plugin_name!r}: the "
            f"handler that submitted job {spec.label!r} was shut down, or this worker cannot "
            "import hither (install the same hither version on every worker)"))
    return await plugin.run_async(spec)


def kill_job(plugin_name: str, key: str, why: str, dask_worker: Any = None) -> bool:
    """Stop the job of task ``key`` on this worker (run with ``client.run``)."""
    plugin = dask_worker.plugins.get(plugin_name) if dask_worker is not None else None
    if not isinstance(plugin, HitherPlugin):
        return False
    return plugin.kill(key, why)


def stop_idle(plugin_name: str, dask_worker: Any = None) -> int:
    """Stop the idle warm workers of the plugin on this worker (``hi.reset()``)."""
    plugin = dask_worker.plugins.get(plugin_name) if dask_worker is not None else None
    if not isinstance(plugin, HitherPlugin):
        return 0
    return plugin.stop_idle()


def worker_pids(plugin_name: str, dask_worker: Any = None) -> list[int]:
    """Process ids of the plugin's warm worker processes on this worker (for tests)."""
    plugin = dask_worker.plugins.get(plugin_name) if dask_worker is not None else None
    if not isinstance(plugin, HitherPlugin):
        return []
    return plugin.pids()


def forget_events(topic: str, dask_scheduler: Any = None) -> None:
    """Drop the events of a handler that shut down from the scheduler's log (run with
    ``client.run_on_scheduler``; best effort: it uses the scheduler's event broker)."""
    broker = getattr(dask_scheduler, "_broker", None)
    if broker is not None and hasattr(broker, "truncate"):
        broker.truncate(topic)


# ---------------------------------------------------------------------------- the plugin
class HitherPlugin(_PluginBase):
    """The warm worker processes of one :class:`~hither.handlers.dask.DaskJobHandler` on
    one dask worker (installed with ``client.register_plugin``; see the module docstring).

    ``cwd`` and ``sys_path`` are the client's: host workers work in that folder and find
    the client's modules when this machine has them (the same paths on a shared
    filesystem); entries this machine lacks are skipped.
    """

    def __init__(self, name: str, version: str, topic: str, cwd: str,
                 sys_path: list[str]) -> None:
        self.name = name
        self.version = version
        self.topic = topic
        self.cwd = cwd
        self.sys_path = list(sys_path)

    # ------------------------------------------------------------------ dask's hooks
    def setup(self, worker: Any) -> None:
        self.worker = worker
        self.address = str(worker.address)
        self.nthreads = int(getattr(getattr(worker, "state", None), "nthreads", 1) or 1)
        self._lock = threading.Lock()
        self._idle: OrderedDict[int, Slot] = OrderedDict()  # id -> slot, oldest first
        self._busy: dict[str, Slot] = {}  # task key -> the slot running it
        self._kills: dict[str, str] = {}  # kills that came before their job started
        self._functions: dict[tuple[str, str], tuple[bytes, Any]] = {}
        self._checked: dict[Any, str | None] = {}  # runtime pool -> identity problem
        self._closed = False
        # what blocks (starting, stopping a process; runtime jobs) runs here, not on the loop
        self._executor = ThreadPoolExecutor(max_workers=self.nthreads + 2,
                                            thread_name_prefix="hither-dask")
        from .. import __version__

        self._last_used: dict[int, float] = {}  # id(slot) -> monotonic time it went idle
        self._stop_reaper = threading.Event()
        threading.Thread(target=self._reap_idle, name="hither-dask-reaper",
                         daemon=True).start()
        self._problem = None if __version__ == self.version else (
            f"the dask worker {self.address} runs hither {__version__}, the client hither "
            f"{self.version}: install the same version on every worker")

    async def teardown(self, worker: Any) -> None:
        import asyncio

        await asyncio.get_running_loop().run_in_executor(None, self.close)

    # ------------------------------------------------------------------ control
    def _reap_idle(self) -> None:
        """Stop workers idle for ``IDLE_TIMEOUT`` seconds: a client that died without
        shutting its handler down leaves nothing running for long on the cluster."""
        while not self._stop_reaper.wait(min(60.0, IDLE_TIMEOUT / 4)):
            now = time.monotonic()
            with self._lock:
                old = [sid for sid in self._idle
                       if now - self._last_used.get(sid, now) > IDLE_TIMEOUT]
                slots = [self._idle.pop(sid) for sid in old]
                for sid in old:
                    self._last_used.pop(sid, None)
            for slot in slots:
                slot.close(graceful=True)

    def close(self) -> None:
        """Stop every worker process of this plugin (running jobs end cancelled)."""
        self._stop_reaper.set()
        with self._lock:
            self._closed = True
            idle = list(self._idle.values())
            self._idle.clear()
            busy = list(self._busy.values())
        for slot in busy:
            slot.stop_why = f"was stopped: its dask worker {self.address} closed"
            slot.kill()
        # a busy host worker is closed by the coroutine waiting for it once it has seen its
        # end: its descriptors must not be closed while the event loop watches them
        for slot in idle + [s for s in busy if s.host is None]:
            try:
                slot.close()
            except Exception:  # noqa: BLE001 - best effort while the worker closes
                pass
        self._executor.shutdown(wait=False)

    def kill(self, key: str, why: str) -> bool:
        """Stop the job of task ``key``: now if it runs, else as soon as it starts."""
        with self._lock:
            slot = self._busy.get(key)
            if slot is None:  # claimed and not started yet (or ended already)
                self._kills[key] = why
                while len(self._kills) > 1000:
                    del self._kills[next(iter(self._kills))]
                return False
            slot.stop_why = why
        if slot.stdio is not None:  # removing a container takes a moment: not on dask's loop
            threading.Thread(target=slot.kill, daemon=True).start()
        else:
            slot.kill()
        return True

    def stop_idle(self) -> int:
        """Stop the idle warm workers; how many."""
        with self._lock:
            idle = list(self._idle.values())
            self._idle.clear()
        for slot in idle:
            slot.close()
        return len(idle)

    def pids(self) -> list[int]:
        """Process ids of this plugin's worker processes (idle and busy)."""
        with self._lock:
            return [s.pid for s in [*self._idle.values(), *self._busy.values()]]

    # ------------------------------------------------------------------ running a job
    def run(self, spec: Spec) -> Reply | None:
        """:meth:`run_async` from a thread with no event loop (tests)."""
        return asyncio.run(self.run_async(spec))

    async def run_async(self, spec: Spec) -> Reply | None:
        """Claim the job, run it on a warm worker, and answer (see :meth:`_answer`)."""
        if self._problem is not None:
            return Outcome(False, error=RuntimeUnavailableError(self._problem))
        try:
            path = claim_path(spec.xfer, spec.key)
            if not claim(path, f"run {self.address} {os.getpid()}\n"):
                return self._claimed(spec, read_claim(path))
        except (OSError, ValueError) as e:
            return Outcome(False, error=RuntimeUnavailableError(
                f"the dask worker {self.address} cannot use hither's transfer folder "
                f"{spec.xfer} ({e}): the job cache's store must be on a filesystem that the "
                "client and every dask worker share, under the same path (see "
                "docs/clusters.md)", ))
        try:
            if spec.runtime is None:
                reply: Reply = await run_host(self, spec)
            else:  # starting and stopping containers blocks: on the plugin's threads
                reply = await self._blocking(run_runtime, self, spec)
        except Exception as e:  # noqa: BLE001 - the job fails with it, never the task
            reply = Outcome(False, error=e, info={"dask_worker": self.address})
        return await self._answer(spec, reply)

    def _claimed(self, spec: Spec, text: str) -> Outcome:
        """The answer of a task whose job was claimed before: withdrawn, or run already by
        a worker that died (dask runs the tasks of a lost worker again)."""
        if text.startswith("cancel"):
            return Outcome(False, error=JobCancelledException(f"job {spec.label!r} was cancelled"))
        parts = text.split()
        where = f"the dask worker {parts[1]} (pid {parts[2]})" if len(parts) >= 3 else \
            "a dask worker"
        return Outcome(False, error=WorkerCrashedError(
            f"{where} running job {spec.label!r} died or left the cluster before the job "
            "ended (killed, out of memory, or its node was lost). hither does not run a job "
            "a second time after its worker died; run it again if it should be.",
            job_label=spec.label), info={"dask_worker": self.address, "rerun_refused": True})

    def _announce(self, spec: Spec, due: float | None) -> float | None:
        """Tell the client that the job runs, once it has run ``ANNOUNCE_AFTER`` seconds
        (``due``); the new due time (None: told)."""
        if due is None or time.monotonic() < due:
            return due
        self._event("started", spec.key, self.address, self.nthreads)
        return None

    def _event(self, *msg: Any) -> bool:
        """Send an event to the client (through the scheduler); whether it went."""
        try:
            self.worker.log_event(self.topic, list(msg))
            return True
        except Exception:  # noqa: BLE001 - events are advisory
            return False

    def _take_idle(self, key: Any) -> Slot | None:
        """A live idle warm worker of pool ``key`` (None: host), or None."""
        dead = []
        with self._lock:
            if self._closed:
                raise RuntimeUnavailableError(f"the dask worker {self.address} is closing")
            for sid, slot in reversed(self._idle.items()):  # the most recently used first
                if slot.key == key:
                    del self._idle[sid]
                    self._last_used.pop(sid, None)
                    if slot.alive():
                        return slot
                    dead.append(slot)
                    break
        for slot in dead:
            slot.close()
        return None

    def _take(self, key: Any, start: Any) -> Slot:
        """A warm worker of pool ``key`` (None: host), or a new one from ``start()``."""
        found = self._take_idle(key)
        if found is not None:
            return found
        retired = []
        with self._lock:
            # room for a new process: the least recently used idle one of another pool goes
            while self._idle and len(self._idle) + len(self._busy) >= self.nthreads:
                retired.append(self._idle.popitem(last=False)[1])
        for slot in retired:
            slot.close()
        new: Slot = start()
        return new

    async def _blocking(self, fn: Any, *args: Any) -> Any:
        """``fn(*args)`` on the plugin's threads (here when they are shut down)."""
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
        except RuntimeError:  # the plugin closed
            return fn(*args)

    def _give_back(self, slot: Slot, healthy: bool) -> None:
        with self._lock:
            if healthy and not self._closed and slot.stop_why is None:
                self._idle[id(slot)] = slot
                self._last_used[id(slot)] = time.monotonic()
                return
        slot.close()

    def _register(self, key: str, slot: Slot) -> None:
        with self._lock:
            self._busy[key] = slot
            why = self._kills.pop(key, None)
        if why is not None:
            slot.stop_why = why

    def _unregister(self, key: str) -> None:
        with self._lock:
            self._busy.pop(key, None)

    # ------------------------------------------------------------------ the answer
    async def _answer(self, spec: Spec, reply: Reply) -> Reply | None:
        """Send the answer with the task's "done" event, which reaches the client before
        dask says the task finished: the client settles the job from it and fetches
        nothing. An answer over ``inline_limit`` or ``EVENT_LIMIT`` bytes goes through the
        transfer folder (the event says :class:`Spilled`). The task's own result is None,
        or the answer itself when the event could not be sent."""
        try:
            data = pickle.dumps(reply, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception:  # noqa: BLE001 - dask will say why it cannot send it either
            return reply
        if len(data) > min(spec.inline_limit, EVENT_LIMIT):
            name = spec.key + ".out"
            await self._blocking(write_new, os.path.join(spec.xfer, name), data)
            reply = Spilled(name)
            data = pickle.dumps(reply, protocol=pickle.HIGHEST_PROTOCOL)
        return None if self._event("done", spec.key, data) else reply
