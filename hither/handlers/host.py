"""Host worker processes: ``multiprocessing`` children speaking pickled messages."""

from __future__ import annotations

import os
import pickle
import signal
import sys
import threading
from collections import deque
from typing import Any

from .. import _worker
from ..errors import JobFailedError, UnreadableResultError
from ..launch import Launch, Outcome

#: messages up to this size are written directly: with the jobs sent ahead (prefetch) they fit
#: in a pipe's buffer (64 KiB on Linux), so the write cannot block
_DIRECT_SEND = 4 * 1024


class HostWorker:
    """One warm worker process on this machine (see :mod:`hither._worker`)."""

    def __init__(self, ctx: Any) -> None:
        parent, child = ctx.Pipe(duplex=True)
        # a forkserver was started earlier: give the worker the caller's environment of now
        init = {"cwd": os.getcwd(), "sys_path": list(sys.path), "env": dict(os.environ)}
        self.proc = ctx.Process(target=_worker.serve_connection, args=(child, init),
                                name="hither-worker", daemon=True)
        self.proc.start()
        child.close()
        self.conn = parent
        self.pid: int = self.proc.pid
        self.fids: set[str] = set()
        self._outbox: deque[bytes] | None = None
        self._outbox_lock = threading.Lock()

    def run_message(self, launch: Launch) -> tuple:
        """The message running ``launch`` (the function is sent once per worker)."""
        kw = launch.pickled_kwargs()
        fn = None if launch.fid in self.fids else launch.fn_pickle()
        echo = "" if launch.echo_label is not None else None  # the parent adds the label
        return ("run", launch.job_id, launch.fid, fn, kw, launch.label, echo,
                launch.sys_path, bool(launch.timeout))

    def sent(self, msg: tuple) -> None:
        """Note that ``msg`` reached the worker (its function is now loaded there)."""
        if msg[0] == "run" and msg[3] is not None:
            self.fids.add(msg[2])

    def send(self, msg: tuple) -> bool:
        """Send a message without ever blocking the caller for long; False when the
        worker is gone.

        A small message fits in the pipe's buffer next to what was sent ahead, so it is
        written here. A large one goes through a sender thread: the worker reads only
        between jobs, and a parent blocked writing to a busy worker could not read the
        result that worker is trying to send (a deadlock with large values both ways).
        """
        data = pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL)
        if self._outbox is None and len(data) <= _DIRECT_SEND:
            try:
                self.conn.send_bytes(data)
                return True
            except (OSError, ValueError):
                return False
        if self.proc.exitcode is not None:
            return False
        with self._outbox_lock:
            if self._outbox is None:
                self._outbox = deque()
                threading.Thread(target=self._drain_outbox, name="hither-sender",
                                 daemon=True).start()
            self._outbox.append(data)
        return True

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

    def kill(self) -> None:
        """SIGKILL the worker and every process of its group (what its job started)."""
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except OSError:
            pass
        if self.proc.exitcode is None:  # not reaped yet, so the pid is still ours
            try:
                os.kill(self.pid, signal.SIGKILL)
            except OSError:
                pass

    def close(self) -> None:
        """Release the connection."""
        try:
            self.conn.close()
        except OSError:
            pass


def describe_exit(code: int | None) -> str:
    """Why a worker process ended, from its exit code, in words."""
    if code is None:
        return "it stopped answering"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        extra = (" (sent by another process or by the kernel, e.g. its out-of-memory "
                 "killer: see `dmesg`)") if -code == 9 else ""
        return f"killed by {name}{extra}"
    return f"it exited with code {code} (the function or a library it uses called exit)"


def decode_outcome(launch: Launch, ok: bool, payload: Any, lines: list, start: float,
                   end: float, pid: int | None = None) -> Outcome:
    """The Outcome of a host worker's ``done`` message."""
    out = _decode_outcome(launch, ok, payload, lines, start, end)
    if pid is not None:
        out.info["worker_pid"] = pid
    return out


def _decode_outcome(launch: Launch, ok: bool, payload: Any, lines: list, start: float,
                    end: float) -> Outcome:
    if ok:
        try:
            value = pickle.loads(payload)
        except Exception as e:  # noqa: BLE001
            err = UnreadableResultError(
                f"the result of job {launch.label!r} could not be unpickled in the parent "
                f"process: {type(e).__name__}: {e}", remote_type=type(e).__name__,
                job_label=launch.label)
            return Outcome(False, error=err, console=lines, start_time=start, end_time=end)
        return Outcome(True, value=value, console=lines, start_time=start, end_time=end)
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
    return Outcome(False, error=exc, traceback_text=tb, console=lines,
                   start_time=start, end_time=end, info={"raised": raised})
