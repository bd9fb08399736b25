"""Host worker processes: fresh interpreters (or forks) speaking pickled messages.

A host worker never imports the user's ``__main__``: it runs :mod:`hither._hostworker`
(standard library only) and receives each function by reference (importable modules) or
by value (functions of a script or notebook, through cloudpickle). Three start methods:

``"spawn"``
    one fresh interpreter per worker (``sys.executable`` on ``_hostworker.py``).
``"forkserver"`` (the default)
    one fresh interpreter per parent process, the fork server, started on first use; it
    has no threads and forks each worker from a clean state (hither and cloudpickle
    already imported). It reaps its workers and reports each exit status through a pipe
    that is also the worker's sentinel.
``"fork"``
    ``os.fork()`` of the calling process (hither 0.4.2's way): the worker is a copy of the
    parent, ``__main__`` included. Unsafe when the parent has other threads (locks held by
    them stay held in the child); opt-in only.

Starting the processes is :mod:`hither.handlers.hostproc`'s part. Every worker gets the
parent's working directory, ``sys.path`` and environment at the time it is started, its
own process group (killing it kills what its job started), a parent-death signal
(SIGKILL) and ignores SIGINT (Ctrl-C is the parent's to handle).
"""

from __future__ import annotations

import os
import pickle
import select
import signal
import socket
import struct
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from ..errors import JobFailedError, UnreadableResultError
from ..launch import Launch, Outcome
from . import hostproc
from .hostproc import START_METHODS, default_start_method, ensure_forkserver, forkserver_pid

__all__ = ["START_METHODS", "HostWorker", "by_value_sources", "decode_outcome",
           "default_start_method", "describe_exit", "ensure_forkserver", "forkserver_pid"]

#: messages up to this size are written directly: with the jobs sent ahead (prefetch) they fit
#: in a socket's buffer, so the write cannot block
_DIRECT_SEND = 4 * 1024
#: at most this many bytes not yet read by a worker are written directly (batches of jobs)
_DIRECT_BUDGET = 64 * 1024
_HEAD = struct.Struct("!i")
_READ_CHUNK = 256 * 1024

# ---------------------------------------------------------------------------- the worker
class HostWorker:
    """One warm worker process on this machine (see :mod:`hither._worker`).

    ``pid``, ``conn`` (its :class:`~multiprocessing.connection.Connection`), ``sentinel``
    (a file descriptor that becomes readable when the worker has ended) and ``exitcode``
    (None while it runs, then its exit code or ``-signal``) describe the process.
    Unregister ``sentinel`` from any selector before :meth:`close`: its file descriptor is
    released once the worker is closed and its end has been seen.
    """

    def __init__(self, start_method: str = "forkserver", *,
                 init: dict[str, Any] | None = None) -> None:
        if start_method not in START_METHODS:
            raise ValueError(f"start_method must be one of {START_METHODS}, "
                             f"got {start_method!r}")
        self.start_method = start_method
        ours, theirs = socket.socketpair()
        try:
            self._proc = hostproc.start(start_method, theirs.fileno(), ours.fileno())
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        try:  # how much may wait unread in the socket: a batch is written directly within it
            sndbuf = ours.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
        except OSError:
            sndbuf = 0
        self.direct_budget = max(_DIRECT_SEND, min(_DIRECT_BUDGET, sndbuf // 4))
        self.conn = Connection(ours.detach())
        self._conn_fd = self.conn.fileno()
        self._inbuf = bytearray()
        self.pid: int = self._proc.pid
        self.sentinel: int = self._proc.sentinel
        self._ended = False
        self._code: int | None = None
        self._closed = False
        self._released = False
        self._state_lock = threading.Lock()
        self.fids: set[str] = set()
        self._outbox: deque[bytes] | None = None
        self._outbox_lock = threading.Lock()
        # the worker works where the caller works now (a fork server started earlier);
        # ``init`` overrides what it is given (a handler running jobs for another machine)
        setup = {"cwd": os.getcwd(), "sys_path": list(sys.path), "env": dict(os.environ),
                 **(init or {})}
        try:
            self.conn.send_bytes(pickle.dumps(setup, protocol=pickle.HIGHEST_PROTOCOL))
        except OSError:
            pass  # it died already: the handler sees it through its sentinel

    # ---------------------------------------------------------------- the process
    def fds(self) -> tuple[int, int]:
        """The connection's and the sentinel's file descriptors, as they were registered
        (still given after :meth:`close`, so that whoever registered them can unregister
        them even when another thread closed the worker first)."""
        return self._conn_fd, self.sentinel

    @property
    def exitcode(self) -> int | None:
        """None while the worker runs; then its exit code, ``-signal`` if it was killed
        (None also when its end could not be learned)."""
        self._poll()
        return self._code

    def is_alive(self) -> bool:
        """True until the worker has ended."""
        return not self._poll()

    def join(self, timeout: float | None = None) -> None:
        """Wait up to ``timeout`` seconds for the worker to end."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._poll():
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return
            with self._state_lock:
                if self._released:
                    return
                fd = self.sentinel
            try:
                poller = select.poll()
                poller.register(fd, select.POLLIN)
                poller.poll(50 if left is None else max(1, min(50, int(left * 1000))))
            except (AttributeError, OSError, ValueError):
                time.sleep(0.01)

    def _poll(self) -> bool:
        with self._state_lock:
            if not self._ended and not self._released:
                self._ended, self._code = self._proc.poll()
            if self._ended and self._closed:
                self._release()
            return self._ended or self._released

    def _release(self) -> None:  # state lock held
        if not self._released:
            self._released = True
            try:
                os.close(self.sentinel)
            except OSError:
                pass

    def kill(self) -> None:
        """SIGKILL the worker and every process of its group (what its job started)."""
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except OSError:
            pass
        if not self._poll():  # not reaped yet, so the pid is still the worker's
            try:
                os.kill(self.pid, signal.SIGKILL)
            except OSError:
                pass

    def close(self) -> None:
        """Release the connection; the sentinel follows once the worker's end is seen."""
        try:
            self.conn.close()
        except OSError:
            pass
        with self._state_lock:
            self._closed = True
        self._poll()

    def __del__(self) -> None:
        try:
            with self._state_lock:
                if not self._ended:
                    self._proc.dropped()
                self._release()
        except Exception:  # noqa: BLE001 - a half-built object at interpreter exit
            pass

    # ---------------------------------------------------------------- messages
    def run_message(self, launch: Launch, function: tuple[bytes, Any] | None = None) -> tuple:
        """The message running ``launch`` (the function is sent once per worker).

        ``function``: the function pickled and its :func:`by_value_sources`, when they were
        made elsewhere (the launch's ``fn`` is then not used)."""
        kw = launch.pickled_kwargs()  # by value where they refer to __main__ (scheduler)
        fn = sources = None
        if launch.fid not in self.fids:
            if function is not None:
                fn, sources = function
            else:
                fn = launch.fn_pickle()
                sources = by_value_sources(launch.fn)
        # lines come live when shown (the parent adds the label) or when the job may be
        # stopped at its timeout (the parent keeps them: the worker's own copy dies with it)
        echo = "" if launch.echo_label is not None or launch.timeout else None
        return ("run", launch.job_id, launch.fid, fn, kw, launch.label, echo,
                launch.sys_path, bool(launch.timeout), sources)

    def sent(self, msg: tuple) -> None:
        """Note that ``msg`` reached the worker (its function is now loaded there)."""
        if msg[0] == "run" and msg[3] is not None:
            self.fids.add(msg[2])

    def send(self, msg: tuple, unread: int | None = None) -> int:
        """Send a message without ever blocking the caller for long; returns its size in
        bytes, 0 when the worker is gone.

        A small message fits in the socket's buffer next to what was sent ahead, so it is
        written here. A large one goes through a sender thread: the worker reads only
        between jobs, and a parent blocked writing to a busy worker could not read the
        result that worker is trying to send (a deadlock with large values both ways).
        ``unread``: at most how many bytes sent earlier the worker may not have read yet
        (the messages of its jobs not answered); then a message is written directly while
        both fit in :attr:`direct_budget` (a batch of small jobs).
        """
        data = pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL)
        limit = _DIRECT_SEND if unread is None else self.direct_budget - unread
        if self._outbox is None and len(data) <= limit:
            try:
                self.conn.send_bytes(data)
                return len(data)
            except (OSError, ValueError):
                return 0
        if not self.is_alive():
            return 0
        with self._outbox_lock:
            if self._outbox is None:
                self._outbox = deque()
                threading.Thread(target=self._drain_outbox, name="hither-sender",
                                 daemon=True).start()
            self._outbox.append(data)
        return len(data)

    def _drain_outbox(self) -> None:
        while True:
            with self._outbox_lock:
                if not self._outbox:
                    self._outbox = None  # small messages may be written directly again
                    return
                data = self._outbox.popleft()
            try:
                self.conn.send_bytes(data)
            except (OSError, ValueError):
                with self._outbox_lock:
                    self._outbox = None
                return  # the worker is gone; the handler sees it through its sentinel

    def recv(self) -> tuple:
        """Read one message (raises EOFError/OSError when the worker is gone)."""
        return pickle.loads(self.conn.recv_bytes())

    def read_available(self, more: bool = False) -> list[tuple]:
        """The messages that have arrived, read without blocking (call it when the
        connection is readable: it reads once; or with ``more``, until nothing is left,
        for a worker that has ended). A message not complete yet stays buffered for the
        next call. Raises EOFError when the worker closed its end and nothing is left."""
        fd = self._conn_fd
        buf = self._inbuf
        while True:
            try:
                chunk = os.read(fd, min(max(_READ_CHUNK, self._missing()), 1 << 24))
            except BlockingIOError:
                chunk = None
            if chunk == b"":
                if not buf:
                    raise EOFError("the worker closed its connection")
                break
            if chunk:
                buf += chunk
            if not more or not chunk or not select.select([fd], [], [], 0)[0]:
                break
        msgs = []
        pos = 0
        n = len(buf)
        while n - pos >= 4:
            (size,) = _HEAD.unpack_from(buf, pos)
            start = pos + 4
            if size == -1:
                if n - start < 8:
                    break
                (size,) = struct.unpack_from("!Q", buf, start)
                start += 8
            if n - start < size:
                break
            msgs.append(pickle.loads(memoryview(buf)[start:start + size]))
            pos = start + size
        if pos:
            del buf[:pos]
        return msgs

    def _missing(self) -> int:
        """Bytes still to come of a large message partly read (read in one go)."""
        buf = self._inbuf
        if len(buf) < 4:
            return 0
        (size,) = _HEAD.unpack_from(buf, 0)
        if size == -1:
            if len(buf) < 12:
                return 0
            (size,) = struct.unpack_from("!Q", buf, 4)
            return size + 12 - len(buf)
        return size + 4 - len(buf)


def by_value_sources(fn: Callable[..., Any]) -> tuple[dict, dict] | None:
    """Where the code of a function of ``__main__`` comes from, for a worker's tracebacks.

    cloudpickle sends such a function (and the ``__main__`` functions and classes it uses)
    by value, with its file name replaced by ``<dynamic-code>``. Returns ``(files, codes)``:
    the source lines of each file involved (a script, notebook cells) and the file of
    each code object by :func:`hither._worker.code_key`; None for other functions. The
    worker restores the file names and puts the lines in its ``linecache``, so that its
    tracebacks show file, line and source text, even of a file it does not have.
    """
    import linecache
    import types

    from .._worker import code_key

    if getattr(fn, "__module__", None) != "__main__":
        return None
    files: dict[str, list[str]] = {}
    codes: dict[tuple, str] = {}
    seen: set[int] = set()
    todo: list[Any] = [fn]
    while todo and len(seen) < 1000:
        obj = todo.pop()
        try:
            if id(obj) in seen or getattr(obj, "__module__", None) != "__main__":
                continue
        except Exception:  # noqa: BLE001 - an object with a failing __getattr__
            continue
        seen.add(id(obj))
        if isinstance(obj, type):
            for v in vars(obj).values():
                todo.append(getattr(v, "__func__", v))  # staticmethod, classmethod
            continue
        if not isinstance(obj, types.FunctionType):
            continue
        stack = [obj.__code__]
        while stack:
            code = stack.pop()
            stack.extend(c for c in code.co_consts if isinstance(c, types.CodeType))
            codes[code_key(code)] = code.co_filename
            if code.co_filename not in files:
                files[code.co_filename] = linecache.getlines(code.co_filename,
                                                             obj.__globals__)
            todo.extend(obj.__globals__[n] for n in code.co_names if n in obj.__globals__)
    return {name: lines for name, lines in files.items() if lines}, codes


# ---------------------------------------------------------------------------- outcomes
def describe_exit(code: int | None) -> str:
    """Why a worker process ended, from its exit code, in words a user can act on."""
    if code is None:
        return "it ended and its exit status could not be learned"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        why = _SIGNAL_CAUSES.get(-code, "another process sent it")
        return f"it was killed by {name}: {why}"
    return (f"it exited with code {code}: the function or a library it calls ended the "
            "process (os._exit(), or exit() in compiled code; sys.exit() would have "
            "been reported as an exception)")


_SIGNAL_CAUSES: dict[int, str] = {
    signal.SIGKILL: "another process sent it, or the kernel's out-of-memory killer when "
                    "memory ran out (`dmesg` tells; then give the job less data or the "
                    "machine more memory)",
    signal.SIGSEGV: "a crash in compiled code (a C extension or the interpreter)",
    signal.SIGBUS: "a crash in compiled code (a C extension or the interpreter)",
    signal.SIGILL: "a crash in compiled code (a C extension or the interpreter)",
    signal.SIGFPE: "a crash in compiled code (a C extension or the interpreter)",
    signal.SIGABRT: "the process aborted (os.abort() or a failed check in compiled code)",
}


def decode_outcome(launch: Launch, ok: bool, payload: Any, lines: list, start: float,
                   end: float, pid: int | None = None) -> Outcome:
    """The Outcome of a host worker's ``done`` message."""
    info: dict[str, Any] = {} if pid is None else {"worker_pid": pid}
    if ok:
        try:
            value = pickle.loads(payload)
        except Exception as e:  # noqa: BLE001
            err = UnreadableResultError(
                f"the result of job {launch.label!r} could not be unpickled in the parent "
                f"process: {type(e).__name__}: {e}", remote_type=type(e).__name__,
                job_label=launch.label)
            return Outcome(False, error=err, console=lines, start_time=start, end_time=end,
                           info=info)
        return Outcome(True, value, None, None, lines, start, end, info)
    pickled, type_name, message, tb, raised = payload
    exc: BaseException | None = None
    if pickled is not None:
        try:
            exc = pickle.loads(pickled)
        except Exception:  # noqa: BLE001
            exc = None
    if exc is None:
        exc = JobFailedError(message, remote_type=type_name, job_label=launch.label,
                             traceback_text=tb)
    info["raised"] = raised
    return Outcome(False, error=exc, traceback_text=tb, console=lines,
                   start_time=start, end_time=end, info=info)
