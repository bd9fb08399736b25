"""What runs on a dask worker for :class:`~hither.handlers.dask.DaskJobHandler`.

A dask worker runs many threads in one daemonic process, which cannot start
``multiprocessing`` children and should not import users' modules. Each job therefore runs
in a warm worker process of hither's own, kept by :class:`HitherPlugin` (a
``distributed.WorkerPlugin``, one per handler): host jobs in a fresh interpreter
(:class:`~hither.handlers.host.HostWorker`, ``spawn``), container and environment jobs in a
runtime worker (:class:`~hither.handlers.stdio.StdioWorker`). The plugin keeps them warm
between jobs, stops the one running a job that is cancelled, enforces ``job_timeout``, and
tears everything down with the dask worker (or when the handler unregisters it).

The dask task (:func:`run_job`) and the client exchange only small messages; values cross
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

import os
import pickle
import select
import threading
import time
from collections import OrderedDict
from typing import Any

# a plugin must be a WorkerPlugin for dask to call its hooks (this module is imported
# only by the handler, which says what to install when dask is missing)
from distributed import WorkerPlugin as _PluginBase

from ..errors import (
    JobCancelledException,
    JobTimeoutError,
    RuntimeUnavailableError,
    WorkerCrashedError,
)
from ..launch import ConsoleLine, Launch, Outcome
from ._dask_wire import (
    FID_RE,
    HostReply,
    Reply,
    RuntimeReply,
    Spec,
    Spilled,
    claim,
    claim_path,
    read_claim,
    read_file,
    write_new,
)
from .host import HostWorker, describe_exit
from .stdio import BadResultRef, StdioWorker, pool_key
from .stdio import _packages_of as packages_of

#: seconds a warm worker process may stay idle on a dask worker before it is stopped
IDLE_TIMEOUT = float(os.environ.get("HITHER_DASK_IDLE_TIMEOUT", "600"))
#: seconds a job runs before the client is told that it started (a shorter job says only
#: that it ended: one message less per tiny job through the scheduler)
ANNOUNCE_AFTER = 0.05


# ---------------------------------------------------------------------------- the task
def run_job(plugin_name: str, spec: Spec) -> Reply:
    """The dask task of one job: run it on this worker's warm worker processes."""
    from distributed import get_worker

    worker = get_worker()
    plugin = worker.plugins.get(plugin_name)
    if not isinstance(plugin, HitherPlugin):
        return Outcome(False, error=RuntimeUnavailableError(
            f"the dask worker {worker.address} has no hither plugin {plugin_name!r}: the "
            f"handler that submitted job {spec.label!r} was shut down, or this worker cannot "
            "import hither (install the same hither version on every worker)"))
    return plugin.run(spec)


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
class _Slot:
    """A warm worker process of the plugin: a host worker (key None) or a runtime worker."""

    __slots__ = ("key", "host", "stdio", "stop_why", "lock")

    def __init__(self, key: Any, host: HostWorker | None = None,
                 stdio: StdioWorker | None = None) -> None:
        self.key = key
        self.host = host
        self.stdio = stdio
        self.stop_why: str | None = None  # set when the job is stopped from outside
        self.lock = threading.Lock()

    @property
    def pid(self) -> int:
        if self.host is not None:
            return self.host.pid
        assert self.stdio is not None
        return self.stdio.pid

    def alive(self) -> bool:
        if self.host is not None:
            return self.host.is_alive()
        return self.stdio is not None and self.stdio.alive()

    def kill(self) -> None:
        """Stop the process now (and what its job started: its process group, container)."""
        if self.host is not None:
            self.host.kill()
        elif self.stdio is not None:
            self.stdio.interrupt()

    def close(self, graceful: bool = False) -> None:
        """Stop and release the worker (a runtime worker's container is removed)."""
        if self.host is not None:
            if graceful and self.host.is_alive():
                self.host.send(("stop",))
                self.host.join(2)
            self.host.kill()
            self.host.close()
            self.host.join(2)
        elif self.stdio is not None:
            self.stdio.stop(graceful=graceful)


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
        self._idle: OrderedDict[int, _Slot] = OrderedDict()  # id -> slot, oldest first
        self._busy: dict[str, _Slot] = {}  # task key -> the slot running it
        self._kills: dict[str, str] = {}  # kills that came before their job started
        self._functions: dict[tuple[str, str], tuple[bytes, Any]] = {}
        self._checked: dict[Any, str | None] = {}  # runtime pool -> identity problem
        self._closed = False
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
        for slot in idle + busy:
            try:
                slot.close()
            except Exception:  # noqa: BLE001 - best effort while the worker closes
                pass

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
    def run(self, spec: Spec) -> Reply:
        """Claim the job, run it on a warm worker, and answer (see :class:`Reply`)."""
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
                reply: Reply = self._run_host(spec)
            else:
                reply = self._run_runtime(spec)
        except Exception as e:  # noqa: BLE001 - the job fails with it, never the task
            reply = Outcome(False, error=e, info={"dask_worker": self.address})
        return self._spill(spec, reply)

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

    def _event(self, *msg: Any) -> None:
        try:
            self.worker.log_event(self.topic, list(msg))
        except Exception:  # noqa: BLE001 - events are advisory
            pass

    def _take(self, key: Any, start: Any) -> _Slot:
        """A warm worker of pool ``key`` (None: host), or a new one from ``start()``."""
        with self._lock:
            if self._closed:
                raise RuntimeUnavailableError(f"the dask worker {self.address} is closing")
            for sid, slot in reversed(self._idle.items()):  # the most recently used first
                if slot.key == key:
                    del self._idle[sid]
                    self._last_used.pop(sid, None)
                    if slot.alive():
                        return slot
                    retired = [slot]
                    break
            else:
                retired = []
            # room for a new process: the least recently used idle one of another pool goes
            while self._idle and len(self._idle) + len(self._busy) >= self.nthreads:
                retired.append(self._idle.popitem(last=False)[1])
        for slot in retired:
            slot.close()
        return start()

    def _give_back(self, slot: _Slot, healthy: bool) -> None:
        with self._lock:
            if healthy and not self._closed and slot.stop_why is None:
                self._idle[id(slot)] = slot
                self._last_used[id(slot)] = time.monotonic()
                return
        slot.close()

    def _register(self, key: str, slot: _Slot) -> None:
        with self._lock:
            self._busy[key] = slot
            why = self._kills.pop(key, None)
        if why is not None:
            slot.stop_why = why

    def _unregister(self, key: str) -> None:
        with self._lock:
            self._busy.pop(key, None)

    # ------------------------------------------------------------------ host jobs
    def _host_init(self) -> dict[str, Any]:
        import sys

        cwd = self.cwd if os.path.isdir(self.cwd) else os.getcwd()
        path = list(sys.path) + [p for p in self.sys_path if p not in sys.path
                                 and (p == "" or os.path.exists(p))]
        return {"cwd": cwd, "sys_path": path}

    def _function(self, spec: Spec) -> tuple[bytes, Any]:
        fkey = (spec.xfer, spec.fid)
        found = self._functions.get(fkey)
        if found is None:
            if FID_RE.fullmatch(spec.fid) is None:
                raise ValueError(f"not a function id: {spec.fid!r}")
            found = pickle.loads(read_file(os.path.join(spec.xfer, "fn-" + spec.fid)))
            self._functions[fkey] = found
        return found

    def _run_host(self, spec: Spec) -> Reply:
        slot = self._take(None, lambda: _Slot(None, host=HostWorker(
            "spawn", init=self._host_init())))
        host = slot.host
        assert host is not None
        healthy = False
        self._register(spec.key, slot)
        try:
            kwargs = spec.kwargs
            if kwargs is None:
                kwargs = read_file(os.path.join(spec.xfer, spec.key + ".in"))
            launch = Launch(job_id=spec.job_id, label=spec.label, fid=spec.fid, fn=_no_fn,
                            fn_pickle=_no_fn_pickle, kwargs_pickle=kwargs,
                            echo_label=_no_label if spec.echo else None,
                            sys_path=spec.sys_path, timeout=spec.timeout)
            function = self._function(spec) if spec.fid not in host.fids else None
            msg = host.run_message(launch, function)
            if slot.stop_why is not None or not host.send(msg):
                return self._host_ended(spec, slot, [], None)
            host.sent(msg)
            reply, healthy = self._wait_host(spec, slot)
            return reply
        finally:
            self._unregister(spec.key)
            self._give_back(slot, healthy)

    def _wait_host(self, spec: Spec, slot: _Slot) -> tuple[Reply, bool]:
        host = slot.host
        assert host is not None
        conn_fd, sentinel = host.fds()
        lines: list[ConsoleLine] = []  # streamed lines of a timed job (kept at a timeout)
        started: float | None = None
        deadline: float | None = None
        announce: float | None = time.monotonic() + ANNOUNCE_AFTER
        while True:
            try:
                ready, _, _ = select.select([conn_fd, sentinel], [], [],
                                            _wait(deadline, announce))
            except (OSError, ValueError):
                ready = [sentinel]
            if not ready:
                if deadline is not None and time.monotonic() >= deadline:
                    host.kill()  # the job_timeout passed
                    return self._timeout(spec, lines, started, slot.pid), False
                announce = self._announce(spec, announce)
                continue
            if conn_fd not in ready:
                return self._host_ended(spec, slot, lines, started), False
            try:
                msg = host.recv()
            except (EOFError, OSError):
                return self._host_ended(spec, slot, lines, started), False
            kind = msg[0]
            if kind == "echo":
                text = msg[1]
                err = bool(msg[2]) if len(msg) > 2 else False
                if spec.timeout:
                    lines.append((time.time(), text.rstrip("\n"), err))
                if spec.echo:
                    self._event("echo", spec.key, text)
            elif kind == "started":
                started = time.time()
                if spec.timeout:
                    deadline = time.monotonic() + spec.timeout
            elif kind == "done" and msg[1] == spec.job_id:
                _, _, ok, payload, out_lines, start, end = msg
                return HostReply(ok, payload, out_lines, start, end, slot.pid,
                                 self.address), True

    def _host_ended(self, spec: Spec, slot: _Slot, lines: list[ConsoleLine],
                    started: float | None) -> Outcome:
        host = slot.host
        assert host is not None
        if slot.stop_why is not None:
            return _stopped(spec, slot.stop_why)
        host.join(1)
        code = host.exitcode
        return Outcome(False, error=WorkerCrashedError(
            f"the worker process (pid {slot.pid}) running job {spec.label!r} on dask worker "
            f"{self.address} died: {describe_exit(code)}. The worker was replaced; other "
            "jobs go on.", job_label=spec.label), console=lines, start_time=started,
            end_time=time.time(),
            info={"worker_pid": slot.pid, "exit_code": code, "dask_worker": self.address})

    def _timeout(self, spec: Spec, lines: list[ConsoleLine], started: float | None,
                 pid: int) -> Outcome:
        return Outcome(False, error=JobTimeoutError(
            f"job {spec.label!r} ran longer than its job_timeout of {spec.timeout} s; its "
            f"worker process on dask worker {self.address} was killed and replaced. Raise "
            "job_timeout in hi.Config if the job needs more time.", job_label=spec.label),
            console=lines, start_time=started, end_time=time.time(),
            info={"worker_pid": pid, "dask_worker": self.address})

    # ------------------------------------------------------------------ runtime jobs
    def _run_runtime(self, spec: Spec) -> Reply:
        manifest = spec.args_manifest
        if spec.args_in_file:
            manifest = pickle.loads(read_file(os.path.join(spec.xfer, spec.key + ".in")))
        launch = Launch(job_id=spec.job_id, label=spec.label, fid=spec.fid, fn=_no_fn,
                        fn_pickle=_no_fn_pickle, args_manifest=manifest,
                        timeout=spec.timeout, echo_label=_no_label if spec.echo else None,
                        runtime=spec.runtime, code=spec.code, store=spec.store)
        key = pool_key(launch)
        problem = self._check_identity(key, spec)
        if problem is not None:
            return Outcome(False, error=RuntimeUnavailableError(problem),
                           info={"dask_worker": self.address})
        slot = self._take(key, lambda: _Slot(key, stdio=StdioWorker(spec.runtime, spec.store)))
        sw = slot.stdio
        assert sw is not None
        if spec.echo:
            sw.on_echo = lambda text: self._event("echo", spec.key, text)
        else:
            sw.on_echo = None
        healthy = False
        self._register(spec.key, slot)
        try:
            reply, healthy = self._wait_runtime(spec, slot, launch)
            return reply
        finally:
            sw.on_echo = None
            self._unregister(spec.key)
            self._give_back(slot, healthy)

    def _check_identity(self, key: Any, spec: Spec) -> str | None:
        """Whether this machine's image (or environment) is the one the job was keyed with."""
        if key in self._checked:
            return self._checked[key]
        problem = None
        if spec.identity is not None:
            try:
                here = spec.runtime.identity()
            except Exception as e:  # noqa: BLE001 - said on the job
                return (f"{spec.runtime.describe()} cannot be used on dask worker "
                        f"{self.address}: {e}")
            if here != spec.identity:
                problem = (f"{spec.runtime.describe()} on dask worker {self.address} is not "
                           f"the one the job was keyed with ({here} here, "
                           f"{spec.identity} on the client): every machine of the cluster "
                           "must have the same images (see docs/clusters.md)")
        self._checked[key] = problem
        return problem

    def _wait_runtime(self, spec: Spec, slot: _Slot, launch: Launch) -> tuple[Reply, bool]:
        sw = slot.stdio
        assert sw is not None
        started = time.time()
        if slot.stop_why is not None:
            return _stopped(spec, slot.stop_why), False
        if not sw.send_run(launch):
            return self._runtime_crash(spec, slot, launch), False
        out_fd, err_fd = sw.fds()
        deadline: float | None = None
        announce: float | None = time.monotonic() + ANNOUNCE_AFTER
        while True:
            try:
                ready, _, _ = select.select([out_fd, err_fd], [], [], _wait(deadline, announce))
            except (OSError, ValueError):  # closed under us: stopped from outside
                return self._runtime_crash(spec, slot, launch), False
            if not ready:
                if deadline is not None and time.monotonic() >= deadline:
                    out = sw.timeout_outcome(launch, started)
                    out.info["dask_worker"] = self.address
                    return out, False
                announce = self._announce(spec, announce)
                continue
            if err_fd in ready:
                try:
                    sw.read_stderr()
                except (OSError, ValueError):
                    pass
            if out_fd not in ready:
                continue
            try:
                msgs = sw.read_stdout()
            except (EOFError, OSError, ValueError):
                try:
                    sw.read_stderr()
                except (OSError, ValueError):
                    pass
                return self._runtime_crash(spec, slot, launch), False
            for msg in msgs:
                if msg.get("id") != spec.job_id:
                    continue
                if msg.get("op") == "started":
                    started = time.time()
                    if spec.timeout:
                        deadline = time.monotonic() + spec.timeout
                elif msg.get("op") == "done":
                    return self._runtime_done(spec, sw, launch, msg), True

    def _runtime_done(self, spec: Spec, sw: StdioWorker, launch: Launch,
                      msg: dict[str, Any]) -> Reply:
        stderr, sw.head_console = sw.head_console, []
        info = {"worker_pid": sw.pid, "runtime": sw.runtime.describe(),
                "dask_worker": self.address}
        packages = packages_of(sw.hello)
        if packages is not None:
            info["runtime_packages"] = packages
        msg = dict(msg)
        if msg.get("ok"):
            try:
                msg["result"] = sw.ingest(launch.job_id, msg.get("result"))
            except (BadResultRef, OSError, ValueError) as e:
                msg = {**msg, "ok": False, "bad_result": str(e)}
        else:
            sw.ingest(launch.job_id, None)  # drops the job's output folder
        return RuntimeReply(msg, stderr, info)

    def _runtime_crash(self, spec: Spec, slot: _Slot, launch: Launch) -> Outcome:
        sw = slot.stdio
        assert sw is not None
        if slot.stop_why is not None:
            return _stopped(spec, slot.stop_why)
        out = sw.crash_outcome(launch)
        out.info["dask_worker"] = self.address
        return out

    # ------------------------------------------------------------------ the answer
    def _spill(self, spec: Spec, reply: Reply) -> Reply:
        """A reply larger than ``inline_limit`` goes back through the transfer folder."""
        if _rough_size(reply) < spec.inline_limit // 2:
            return reply
        try:
            data = pickle.dumps(reply, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception:  # noqa: BLE001 - dask will say why it cannot send it either
            return reply
        if len(data) <= spec.inline_limit:
            return reply
        name = spec.key + ".out"
        write_new(os.path.join(spec.xfer, name), data)
        return Spilled(name)


def _rough_size(reply: Reply) -> int:
    """About how many bytes ``reply`` pickles to (the console and the payload)."""
    size = sum(len(x[1]) + 16 for x in getattr(reply, "lines", None) or
               getattr(reply, "console", None) or getattr(reply, "stderr", None) or ())
    payload = getattr(reply, "payload", None)
    if isinstance(payload, (bytes, bytearray)):
        size += len(payload)
    elif payload is not None or isinstance(reply, (RuntimeReply, Spilled)) or \
            getattr(reply, "value", None) is not None:
        size += 1 << 40  # not estimated: measured by pickling
    return size


def _wait(deadline: float | None, announce: float | None) -> float | None:
    """Seconds until the first of two monotonic times (None: no limit)."""
    due = [t for t in (deadline, announce) if t is not None]
    return max(0.0, min(due) - time.monotonic()) if due else None


def _stopped(spec: Spec, why: str) -> Outcome:
    return Outcome(False, error=JobCancelledException(f"job {spec.label!r} {why}"))


def _no_fn(*args: Any, **kwargs: Any) -> Any:  # pragma: no cover - never called
    raise RuntimeError("the function of a job run through dask is not loaded on the dask worker")


def _no_fn_pickle() -> bytes:  # pragma: no cover - the function comes with the task
    raise RuntimeError("the function of a job run through dask comes from the client")


def _no_label() -> str:
    return ""
