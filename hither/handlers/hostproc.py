"""Starting host worker processes: spawn, forkserver, fork (see :mod:`hither.handlers.host`).

:func:`start` gives a process handle (``pid``, ``sentinel``, ``poll()``) for a worker
that serves the given socket; :class:`~hither.handlers.host.HostWorker` speaks to it.

Every process is started from one launcher thread (see :class:`_Launcher`).
"""

from __future__ import annotations

import atexit
import os
import pickle
import signal
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Future
from queue import SimpleQueue
from typing import Any, TypeVar

from .. import _hostworker

#: start methods of host workers, see the module docstring
START_METHODS = ("spawn", "forkserver", "fork")

_HOSTWORKER_FILE = os.path.abspath(_hostworker.__file__)
_STATUS = struct.Struct("<i")
_PID = struct.Struct("<q")
#: imported once by the fork server, so that its workers start with them
_FORKSERVER_PRELOAD = ["cloudpickle", "hither"]

T = TypeVar("T")


def default_start_method() -> str:
    """``"forkserver"`` where the platform can fork, else ``"spawn"``."""
    return "forkserver" if hasattr(os, "fork") and hasattr(socket, "send_fds") else "spawn"


# ---------------------------------------------------------------------------- the launcher
class _Launcher:
    """The thread of this process that starts every host worker process.

    Linux sends a parent-death signal when the *thread* that started a process ends, not
    the process. Workers (and the fork server) are started from this thread, which lives as
    long as the process, so that no other thread's end can kill them.
    """

    def __init__(self) -> None:
        self._calls: SimpleQueue[tuple[Callable[[], Any], Future[Any]]] = SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name="hither-launcher",
                                        daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            fn, fut = self._calls.get()
            try:
                fut.set_result(fn())
            except BaseException as e:  # noqa: BLE001 - handed to the caller
                fut.set_exception(e)

    def call(self, fn: Callable[[], T]) -> T:
        """``fn()`` run in the launcher thread."""
        if threading.current_thread() is self._thread or sys.is_finalizing():
            return fn()
        fut: Future[T] = Future()
        self._calls.put((fn, fut))
        return fut.result()


_launcher: _Launcher | None = None
_forkserver: _ForkServer | None = None
_global_lock = threading.Lock()


def _launch(fn: Callable[[], T]) -> T:
    global _launcher
    with _global_lock:
        if _launcher is None:
            _launcher = _Launcher()
        launcher = _launcher
    return launcher.call(fn)


def _after_fork_in_child() -> None:
    # the launcher thread does not exist in a forked child, and the fork server is the
    # parent's: closing our copy of its socket lets it see the parent's end
    global _launcher, _forkserver, _global_lock
    _global_lock = threading.Lock()
    _launcher = None
    server, _forkserver = _forkserver, None
    if server is not None:
        server.forget()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _interpreter() -> list[str]:
    if not sys.executable:
        raise RuntimeError("hither cannot start host worker processes: sys.executable is "
                           "empty (an embedded interpreter); use start_method='fork'")
    flags = getattr(subprocess, "_args_from_interpreter_flags", None)
    return [sys.executable, *(flags() if flags is not None else [])]


_NEW_GROUP: dict[str, Any] = {"process_group": 0} if sys.version_info >= (3, 11) else {}


def _has_pidfd() -> bool:
    try:
        os.close(os.pidfd_open(os.getpid()))
        return True
    except (AttributeError, OSError):
        return False


_PIDFD = _has_pidfd()


# ---------------------------------------------------------------------------- processes
class Child:
    """A worker that is this process's child (spawn, fork): waited for with waitpid."""

    def __init__(self, pid: int, popen: subprocess.Popen | None, sentinel: int) -> None:
        self.pid = pid
        self.sentinel = sentinel  # a pidfd, or the read end of a pipe the child holds
        self._popen = popen  # kept: a dropped Popen would be reaped behind our back
        self._lock = threading.Lock()

    def dropped(self) -> None:
        """The handle is dropped before the end was seen: reap it later (a Popen does
        that itself), so that no zombie stays."""
        if self._popen is None:
            _unreaped.append(self.pid)

    def poll(self) -> tuple[bool, int | None]:
        """(ended, exit code) without blocking."""
        if self._popen is not None:
            code = self._popen.poll()
            return code is not None, code
        with self._lock:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                return True, None  # reaped by someone else (SIGCHLD ignored)
            if pid == 0:
                return False, None
            return True, os.waitstatus_to_exitcode(status)


class Served:
    """A worker forked by the fork server: its exit code arrives on the status pipe."""

    def __init__(self, pid: int, status_r: int) -> None:
        self.pid = pid
        self.sentinel = status_r
        os.set_blocking(status_r, False)

    def poll(self) -> tuple[bool, int | None]:
        try:
            data = os.read(self.sentinel, _STATUS.size)
        except BlockingIOError:
            return False, None
        except OSError:
            return True, None
        if len(data) < _STATUS.size:  # the fork server ended without saying
            return True, None
        return True, _STATUS.unpack(data)[0]

    def dropped(self) -> None:
        """The handle is dropped before the end was seen (the fork server reaps it)."""


class _ForkServer:
    """The client side of this process's fork server (see :mod:`hither._hostworker`)."""

    def __init__(self) -> None:
        ours, theirs = socket.socketpair()
        try:
            self.proc: subprocess.Popen | None = subprocess.Popen(
                [*_interpreter(), _HOSTWORKER_FILE, "forkserver", str(theirs.fileno())],
                pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, **_NEW_GROUP)
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self.sock = ours
        setup = pickle.dumps({"sys_path": list(sys.path), "preload": _FORKSERVER_PRELOAD},
                             protocol=pickle.HIGHEST_PROTOCOL)
        try:
            ours.sendall(_STATUS.pack(len(setup)) + setup)
        except OSError:
            pass  # seen at the first fork request

    def fork(self, conn_fd: int, status_w: int) -> int:
        """Have the server fork a worker serving ``conn_fd``; its pid."""
        socket.send_fds(self.sock, [b"F"], [conn_fd, status_w])
        data = b""
        while len(data) < _PID.size:
            chunk = self.sock.recv(_PID.size - len(data))
            if not chunk:
                raise EOFError("hither's fork server ended")
            data += chunk
        (pid,) = _PID.unpack(data)
        if pid < 0:
            raise OSError(-pid, f"hither's fork server could not fork: {os.strerror(-pid)}")
        return pid

    def close(self, timeout: float = 5.0) -> None:
        """Let the server end (it sees its socket close) and reap it."""
        self.sock.close()
        if self.proc is not None:
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def forget(self) -> None:
        """In a forked child: drop our copy of the parent's server (never reap it)."""
        self.proc = None
        self.sock.close()


def _start_spawn(conn_fd: int) -> Child:
    lifeline: tuple[int, ...] = () if _PIDFD else os.pipe()
    args = [*_interpreter(), _HOSTWORKER_FILE, "worker", str(conn_fd), str(os.getpid())]
    if lifeline:
        args.append(str(lifeline[1]))
    try:
        popen = subprocess.Popen(args, pass_fds=(conn_fd, *lifeline[1:]),
                                 stdin=subprocess.DEVNULL, **_NEW_GROUP)
    except BaseException:
        for fd in lifeline:
            os.close(fd)
        raise
    if lifeline:
        os.close(lifeline[1])
        return Child(popen.pid, popen, lifeline[0])
    return Child(popen.pid, popen, os.pidfd_open(popen.pid))


_unreaped: list[int] = []  # forked workers dropped before their end was seen


def _reap_dropped() -> None:
    for pid in list(_unreaped):
        try:
            done = os.waitpid(pid, os.WNOHANG)[0] != 0
        except ChildProcessError:
            done = True
        if done:
            _unreaped.remove(pid)


def _start_fork(conn_fd: int, close_in_child: int) -> Child:
    _reap_dropped()
    lifeline: tuple[int, ...] = () if _PIDFD else os.pipe()
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        try:
            os.close(close_in_child)  # the parent's end: its close must reach the worker
            if lifeline:
                os.close(lifeline[0])
            devnull = os.open(os.devnull, os.O_RDONLY)
            os.dup2(devnull, 0)  # the terminal is the parent's to read
            os.close(devnull)
            signal.set_wakeup_fd(-1)  # the parent's event loop, if it has one
        except (OSError, ValueError):
            pass
        _hostworker.run_forked_worker(conn_fd, parent)
    try:
        os.setpgid(pid, pid)  # also done by the child: whichever runs first
    except OSError:
        pass
    if lifeline:
        os.close(lifeline[1])
        return Child(pid, None, lifeline[0])
    return Child(pid, None, os.pidfd_open(pid))


def _start_served(conn_fd: int) -> Served:
    global _forkserver
    status_r, status_w = os.pipe()
    try:
        for attempt in (1, 2):
            if _forkserver is None:
                _forkserver = _ForkServer()
            try:
                pid = _forkserver.fork(conn_fd, status_w)
                break
            except (EOFError, ConnectionError, BrokenPipeError) as e:
                old, _forkserver = _forkserver, None  # it died: start a new one, once
                old.close()
                if attempt == 2:
                    raise RuntimeError(f"hither's fork server failed: {e}") from e
    except BaseException:
        os.close(status_r)
        raise
    finally:
        os.close(status_w)
    return Served(pid, status_r)


@atexit.register
def _close_forkserver_at_exit() -> None:
    """End the fork server with this process, after the handlers (their workers are its
    children): it would end anyway when our socket closes, but reaped here nothing is left
    behind, not even a warning about an unreaped process."""
    global _forkserver
    server, _forkserver = _forkserver, None
    if server is None:
        return
    from .base import _shutdown_all_handlers

    try:
        _shutdown_all_handlers()  # idempotent; atexit would run it after this function
        server.close(timeout=2.0)
    except Exception:  # noqa: BLE001 - best effort at interpreter exit
        pass


def ensure_forkserver() -> int:
    """Start this process's fork server now if it does not run yet; its pid."""
    def ensure() -> int:
        global _forkserver
        if _forkserver is None or _forkserver.proc is None or \
                _forkserver.proc.poll() is not None:
            _forkserver = _ForkServer()
        assert _forkserver.proc is not None
        return _forkserver.proc.pid

    return _launch(ensure)


def forkserver_pid() -> int | None:
    """The pid of this process's fork server, if one runs."""
    server = _forkserver
    return server.proc.pid if server is not None and server.proc is not None else None


def start(start_method: str, conn_fd: int, parent_fd: int) -> Child | Served:
    """Start a worker serving the socket ``conn_fd`` (``parent_fd``: the parent's end,
    closed in a forked child); its process handle."""
    if start_method == "spawn":
        return _launch(lambda: _start_spawn(conn_fd))
    if start_method == "fork":
        return _launch(lambda: _start_fork(conn_fd, parent_fd))
    if start_method == "forkserver":
        return _launch(lambda: _start_served(conn_fd))
    raise ValueError(f"start_method must be one of {START_METHODS}, got {start_method!r}")
