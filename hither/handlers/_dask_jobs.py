"""How a job runs on a dask worker for :class:`~hither.handlers._dask_worker.HitherPlugin`:
in one of the plugin's warm worker processes (a :class:`Slot`), a host worker for host jobs
and a runtime worker for container and environment jobs. Each function waits for its job's
answer, stops it at its ``job_timeout``, tells the client that it started once it has run a
while, and turns a dead worker into an :class:`~hither.launch.Outcome`."""

from __future__ import annotations

import asyncio
import os
import pickle
import select
import threading
import time
from typing import TYPE_CHECKING, Any

from ..errors import (
    JobCancelledException,
    JobTimeoutError,
    RuntimeUnavailableError,
    WorkerCrashedError,
)
from ..launch import ConsoleLine, Launch, Outcome
from ._dask_wire import FID_RE, HostReply, Reply, RuntimeReply, Spec, read_file
from .host import HostWorker, describe_exit
from .stdio import BadResultRef, StdioWorker, pool_key
from .stdio import _packages_of as packages_of

if TYPE_CHECKING:
    from ._dask_worker import HitherPlugin

#: seconds between two looks at a stopped host job's process, whatever the event loop saw
_CHECK_EVERY = 1.0
#: seconds a job runs before the client is told that it started (a shorter job says only
#: that it ended: one message less per tiny job through the scheduler)
ANNOUNCE_AFTER = 0.05


class Slot:
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


# ------------------------------------------------------------------ host jobs


def host_init(plugin: HitherPlugin) -> dict[str, Any]:
    """How a new host worker starts: in the client's folder, with the client's sys.path
    entries that exist here."""
    import sys

    cwd = plugin.cwd if os.path.isdir(plugin.cwd) else os.getcwd()
    path = list(sys.path) + [p for p in plugin.sys_path if p not in sys.path
                             and (p == "" or os.path.exists(p))]
    return {"cwd": cwd, "sys_path": path}


def load_function(plugin: HitherPlugin, spec: Spec) -> tuple[bytes, Any]:
    """The job's function as the client wrote it to the transfer folder (read once)."""
    fkey = (spec.xfer, spec.fid)
    found = plugin._functions.get(fkey)
    if found is None:
        if FID_RE.fullmatch(spec.fid) is None:
            raise ValueError(f"not a function id: {spec.fid!r}")
        found = pickle.loads(read_file(os.path.join(spec.xfer, "fn-" + spec.fid)))
        plugin._functions[fkey] = found
    return found


async def run_host(plugin: HitherPlugin, spec: Spec) -> Reply:
    """Run a host job on a warm host worker of the plugin, on the dask worker's event loop
    (a coroutine: no thread of the dask worker waits for the job). What may block (a new
    worker process, closing one) runs on the plugin's threads."""
    slot = plugin._take_idle(None)
    if slot is None:
        slot = await plugin._blocking(plugin._take, None, lambda: Slot(
            None, host=HostWorker("spawn", init=host_init(plugin))))
    host = slot.host
    assert host is not None
    healthy = False
    plugin._register(spec.key, slot)
    try:
        kwargs = spec.kwargs
        if kwargs is None:
            kwargs = read_file(os.path.join(spec.xfer, spec.key + ".in"))
        launch = Launch(job_id=spec.job_id, label=spec.label, fid=spec.fid, fn=_no_fn,
                        fn_pickle=_no_fn_pickle, kwargs_pickle=kwargs,
                        echo_label=_no_label if spec.echo else None,
                        sys_path=spec.sys_path, timeout=spec.timeout)
        function = load_function(plugin, spec) if spec.fid not in host.fids else None
        msg = host.run_message(launch, function)
        if slot.stop_why is not None or not host.send(msg):
            return await plugin._blocking(host_ended, plugin, spec,
                                              slot, [], None)
        host.sent(msg)
        reply, healthy = await wait_host(plugin, spec, slot)
        return reply
    finally:
        plugin._unregister(spec.key)
        if healthy:
            plugin._give_back(slot, True)
        else:  # closing it waits for its end
            await plugin._blocking(plugin._give_back, slot, False)


class _Readable:
    """Waits on the event loop for file descriptors to become readable. A descriptor seen
    readable is watched again only at the next :meth:`wait`: a notice queued before the
    caller read it would otherwise say that it is readable when it no longer is."""

    __slots__ = ("loop", "fds", "ready", "watching", "waiter")

    def __init__(self, loop: asyncio.AbstractEventLoop, fds: tuple[int, ...]) -> None:
        self.loop = loop
        self.fds = fds
        self.ready: set[int] = set()
        self.watching: set[int] = set()
        self.waiter: asyncio.Future[None] | None = None

    def _readable(self, fd: int) -> None:
        self.loop.remove_reader(fd)
        self.watching.discard(fd)
        self.ready.add(fd)
        self._wake()

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    async def wait(self, timeout: float | None) -> set[int]:
        """The descriptors readable now, waiting up to ``timeout`` s (None: no limit)."""
        if not self.ready:
            for fd in self.fds:
                if fd not in self.watching:
                    self.loop.add_reader(fd, self._readable, fd)
                    self.watching.add(fd)
            self.waiter = self.loop.create_future()
            timer = None if timeout is None else self.loop.call_later(timeout, self._wake)
            try:
                await self.waiter
            finally:
                self.waiter = None
                if timer is not None:
                    timer.cancel()
        ready, self.ready = self.ready, set()
        return ready

    def close(self) -> None:
        for fd in self.watching:
            try:
                self.loop.remove_reader(fd)
            except (OSError, ValueError):
                pass
        self.watching.clear()


async def wait_host(plugin: HitherPlugin, spec: Spec, slot: Slot) -> tuple[Reply, bool]:
    """The host job's answer, and whether its worker may be kept."""
    host = slot.host
    assert host is not None
    loop = asyncio.get_running_loop()
    conn_fd, sentinel = host.fds()
    lines: list[ConsoleLine] = []  # streamed lines of a timed job (kept at a timeout)
    started: float | None = None
    deadline: float | None = None
    announce: float | None = time.monotonic() + ANNOUNCE_AFTER
    readable = _Readable(loop, (conn_fd, sentinel))
    try:
        while True:
            due = _wait(deadline, announce)
            try:
                ready = await readable.wait(_CHECK_EVERY if due is None else
                                            min(due, _CHECK_EVERY))
            except (OSError, ValueError):  # closed under us: stopped from outside
                break
            if not ready:
                if deadline is not None and time.monotonic() >= deadline:
                    host.kill()  # the job_timeout passed
                    return timeout_outcome(plugin, spec, lines, started, slot.pid), False
                if slot.stop_why is not None and not host.is_alive():
                    break  # stopped, and its end was not seen by the loop
                announce = plugin._announce(spec, announce)
                continue
            if conn_fd not in ready:
                break
            try:
                msgs = host.read_available()
            except (EOFError, OSError):
                break
            for msg in msgs:
                kind = msg[0]
                if kind == "echo":
                    text = msg[1]
                    err = bool(msg[2]) if len(msg) > 2 else False
                    if spec.timeout:
                        lines.append((time.time(), text.rstrip("\n"), err))
                    if spec.echo:
                        plugin._event("echo", spec.key, text)
                elif kind == "started":
                    started = time.time()
                    if spec.timeout:
                        deadline = time.monotonic() + spec.timeout
                elif kind == "done" and msg[1] == spec.job_id:
                    _, _, ok, payload, out_lines, start, end = msg
                    return HostReply(ok, payload, out_lines, start, end, slot.pid,
                                     plugin.address), True
    finally:
        readable.close()
    return await plugin._blocking(host_ended, plugin, spec, slot, lines,
                                      started), False


def host_ended(plugin: HitherPlugin, spec: Spec, slot: Slot, lines: list[ConsoleLine],
               started: float | None) -> Outcome:
    """The outcome of a host job whose worker ended: stopped from outside, or a crash."""
    host = slot.host
    assert host is not None
    if slot.stop_why is not None:
        return _stopped(spec, slot.stop_why)
    host.join(1)
    code = host.exitcode
    return Outcome(False, error=WorkerCrashedError(
        f"the worker process (pid {slot.pid}) running job {spec.label!r} on dask worker "
        f"{plugin.address} died: {describe_exit(code)}. The worker was replaced; other "
        "jobs go on.", job_label=spec.label), console=lines, start_time=started,
        end_time=time.time(),
        info={"worker_pid": slot.pid, "exit_code": code, "dask_worker": plugin.address})


def timeout_outcome(plugin: HitherPlugin, spec: Spec, lines: list[ConsoleLine],
                    started: float | None, pid: int) -> Outcome:
    """The outcome of a host job stopped at its ``job_timeout``."""
    return Outcome(False, error=JobTimeoutError(
        f"job {spec.label!r} ran longer than its job_timeout of {spec.timeout} s; its "
        f"worker process on dask worker {plugin.address} was killed and replaced. Raise "
        "job_timeout in hi.Config if the job needs more time.", job_label=spec.label),
        console=lines, start_time=started, end_time=time.time(),
        info={"worker_pid": pid, "dask_worker": plugin.address})


# ------------------------------------------------------------------ runtime jobs


def run_runtime(plugin: HitherPlugin, spec: Spec) -> Reply:
    """Run a container or environment job on a warm runtime worker of the plugin."""
    manifest = spec.args_manifest
    if spec.args_in_file:
        manifest = pickle.loads(read_file(os.path.join(spec.xfer, spec.key + ".in")))
    launch = Launch(job_id=spec.job_id, label=spec.label, fid=spec.fid, fn=_no_fn,
                    fn_pickle=_no_fn_pickle, args_manifest=manifest,
                    timeout=spec.timeout, echo_label=_no_label if spec.echo else None,
                    runtime=spec.runtime, code=spec.code, store=spec.store)
    key = pool_key(launch)
    problem = check_identity(plugin, key, spec)
    if problem is not None:
        return Outcome(False, error=RuntimeUnavailableError(problem),
                       info={"dask_worker": plugin.address})
    slot = plugin._take(key, lambda: Slot(key, stdio=StdioWorker(spec.runtime, spec.store)))
    sw = slot.stdio
    assert sw is not None
    if spec.echo:
        def echo(text: str) -> None:
            plugin._event("echo", spec.key, text)

        sw.on_echo = echo
    else:
        sw.on_echo = None
    healthy = False
    plugin._register(spec.key, slot)
    try:
        reply, healthy = wait_runtime(plugin, spec, slot, launch)
        return reply
    finally:
        sw.on_echo = None
        plugin._unregister(spec.key)
        plugin._give_back(slot, healthy)


def check_identity(plugin: HitherPlugin, key: Any, spec: Spec) -> str | None:
    """Whether this machine's image (or environment) is the one the job was keyed with."""
    if key in plugin._checked:
        return plugin._checked[key]
    problem = None
    if spec.identity is not None:
        try:
            here = spec.runtime.identity()
        except Exception as e:  # noqa: BLE001 - said on the job
            return (f"{spec.runtime.describe()} cannot be used on dask worker "
                    f"{plugin.address}: {e}")
        if here != spec.identity:
            problem = (f"{spec.runtime.describe()} on dask worker {plugin.address} is not "
                       f"the one the job was keyed with ({here} here, "
                       f"{spec.identity} on the client): every machine of the cluster "
                       "must have the same images (see docs/clusters.md)")
    plugin._checked[key] = problem
    return problem


def wait_runtime(plugin: HitherPlugin, spec: Spec, slot: Slot, launch: Launch
                 ) -> tuple[Reply, bool]:
    """The runtime job's answer, and whether its worker may be kept."""
    sw = slot.stdio
    assert sw is not None
    started = time.time()
    if slot.stop_why is not None:
        return _stopped(spec, slot.stop_why), False
    if not sw.send_run(launch):
        return runtime_crash(plugin, spec, slot, launch), False
    out_fd, err_fd = sw.fds()
    deadline: float | None = None
    announce: float | None = time.monotonic() + ANNOUNCE_AFTER
    while True:
        try:
            ready, _, _ = select.select([out_fd, err_fd], [], [], _wait(deadline, announce))
        except (OSError, ValueError):  # closed under us: stopped from outside
            return runtime_crash(plugin, spec, slot, launch), False
        if not ready:
            if deadline is not None and time.monotonic() >= deadline:
                out = sw.timeout_outcome(launch, started)
                out.info["dask_worker"] = plugin.address
                return out, False
            announce = plugin._announce(spec, announce)
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
            return runtime_crash(plugin, spec, slot, launch), False
        for msg in msgs:
            if msg.get("id") != spec.job_id:
                continue
            if msg.get("op") == "started":
                started = time.time()
                if spec.timeout:
                    deadline = time.monotonic() + spec.timeout
            elif msg.get("op") == "done":
                return runtime_done(plugin, spec, sw, launch, msg), True


def runtime_done(plugin: HitherPlugin, spec: Spec, sw: StdioWorker, launch: Launch,
                 msg: dict[str, Any]) -> Reply:
    """The reply of a runtime job that ended, its result refs moved into the store."""
    stderr, sw.head_console = sw.head_console, []
    info = {"worker_pid": sw.pid, "runtime": sw.runtime.describe(),
            "dask_worker": plugin.address}
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


def runtime_crash(plugin: HitherPlugin, spec: Spec, slot: Slot, launch: Launch) -> Outcome:
    """The outcome of a runtime job whose worker ended: stopped from outside, or a crash."""
    sw = slot.stdio
    assert sw is not None
    if slot.stop_why is not None:
        return _stopped(spec, slot.stop_why)
    out = sw.crash_outcome(launch)
    out.info["dask_worker"] = plugin.address
    return out


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
