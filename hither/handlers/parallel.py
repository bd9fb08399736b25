"""ParallelJobHandler: a pool of warm worker processes on this machine."""

from __future__ import annotations

import multiprocessing
import os
import pickle
import selectors
import signal
import sys
import threading
import time
from collections import deque
from concurrent.futures import Future

from .. import _worker
from ..errors import JobFailedError, JobTimeoutError, WorkerCrashedError
from ..launch import Launch, Outcome
from .base import JobHandler, completed_future

_START_METHODS = ("spawn", "forkserver", "fork")


class _Task:
    __slots__ = ("launch", "future", "started", "cancel_why", "worker")

    def __init__(self, launch: Launch, future: Future[Outcome]) -> None:
        self.launch = launch
        self.future = future
        self.started: float | None = None  # monotonic time it became its worker's head
        self.cancel_why: str | None = None
        self.worker: _Worker | None = None


class _Worker:
    __slots__ = ("proc", "conn", "inflight", "fids", "pid")

    def __init__(self, proc, conn) -> None:
        self.proc = proc
        self.conn = conn
        self.pid: int = proc.pid
        self.inflight: deque[_Task] = deque()
        self.fids: set[str] = set()


class ParallelJobHandler(JobHandler):
    """Run jobs on ``num_workers`` warm worker processes of this machine.

    Workers start on the first job and each runs many jobs (no process start per job).
    Each worker is sent up to ``prefetch`` jobs ahead so it never waits for the parent.
    ``start_method`` is a :mod:`multiprocessing` start method (``"spawn"``,
    ``"forkserver"`` or ``"fork"``; default ``"forkserver"`` where available, else
    ``"spawn"``). As with any multiprocessing pool, a script using the spawn or forkserver
    method must guard its entry point with ``if __name__ == "__main__":``.

    A worker that dies (signal, OOM kill, ``os._exit``) fails its running job with
    :class:`~hither.errors.WorkerCrashedError` and is replaced; a job past its
    ``job_timeout`` or cancelled while running has its worker (and everything the job
    started) killed and replaced.
    """

    def __init__(self, num_workers: int | None = None, *, start_method: str | None = None,
                 prefetch: int = 2) -> None:
        super().__init__()
        if num_workers is None:
            num_workers = os.cpu_count() or 1
        if int(num_workers) < 1:
            raise ValueError(f"num_workers must be at least 1, got {num_workers!r}")
        if start_method is None:
            available = multiprocessing.get_all_start_methods()
            start_method = "forkserver" if "forkserver" in available else "spawn"
        if start_method not in _START_METHODS:
            raise ValueError(f"start_method must be one of {_START_METHODS}, got {start_method!r}")
        self.num_workers = int(num_workers)
        self.start_method = start_method
        self.prefetch = max(1, int(prefetch))
        self._ctx = multiprocessing.get_context(start_method)
        self._lock = threading.RLock()
        self._pending: deque[_Task] = deque()
        self._tasks: dict[str, _Task] = {}
        self._workers: list[_Worker] = []
        self._spawning = 0
        self._thread: threading.Thread | None = None
        self._sel: selectors.BaseSelector | None = None
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        self._stop_loop = False
        self._idle = threading.Condition(self._lock)

    # ---------------------------------------------------------------- public interface
    def submit(self, launch: Launch) -> Future[Outcome]:
        if self._closed:
            return completed_future(self._closed_outcome(launch))
        task = _Task(launch, Future())
        done: list[tuple[_Task, Outcome]] = []
        with self._lock:
            self._tasks[launch.job_id] = task
            self._pending.append(task)
            self._ensure_loop()
            for w in self._workers:
                if len(w.inflight) < self.prefetch:
                    self._fill(w, done)
                    break
            else:
                if len(self._workers) + self._spawning < self.num_workers:
                    self._wake()
        self._complete(done)
        return task.future

    def cancel(self, job_id: str) -> bool:
        done: list[tuple[_Task, Outcome]] = []
        with self._lock:
            task = self._tasks.get(job_id)
            if task is None or task.future.done() or task.cancel_why is not None:
                return False
            task.cancel_why = "was cancelled"
            w = task.worker
            if w is None:  # still waiting here: just drop it
                self._pending.remove(task)
                self._finish(task, self._cancelled_outcome(task.launch), done)
            elif w.inflight and w.inflight[0] is task:  # running: stop its worker
                self._kill_worker(w, done, head_outcome=self._cancelled_outcome(task.launch))
            else:  # sent ahead, not started: the worker will skip it
                self._send(w, ("skip", job_id))
        self._complete(done)
        return True

    def reset(self) -> None:
        self._cancel_all("was cancelled by hi.reset()")
        self._stop_workers(graceful=False)

    def shutdown(self, wait: bool = True, *, cancel: bool = False) -> None:
        self._closed = True
        if cancel:
            self._cancel_all("was cancelled: its handler was shut down")
        elif wait:
            with self._idle:
                while self._tasks:
                    self._idle.wait(0.1)
        self._stop_workers(graceful=not cancel)

    @property
    def worker_pids(self) -> list[int]:
        """Process ids of the live workers (for diagnostics and tests)."""
        with self._lock:
            return [w.pid for w in self._workers]

    def __repr__(self) -> str:
        return (f"<ParallelJobHandler num_workers={self.num_workers} "
                f"start_method={self.start_method!r}{' closed' if self._closed else ''}>")

    # ---------------------------------------------------------------- dispatch (lock held)
    def _fill(self, w: _Worker, done: list) -> None:
        while len(w.inflight) < self.prefetch and self._pending:
            task = self._pending.popleft()
            launch = task.launch
            try:
                kw = launch.pickled_kwargs()
                fn = None
                if launch.fid not in w.fids:
                    fn = launch.fn_pickle()
            except Exception as e:  # noqa: BLE001 - surfaces on the job, never in the loop
                self._finish(task, Outcome(False, error=e, traceback_text=(
                    "the job's function or arguments could not be pickled for a worker "
                    f"process: {type(e).__name__}: {e}")), done)
                continue
            if not self._send(w, ("run", launch.job_id, launch.fid, fn, kw, launch.label,
                                  launch.stream_prefix, launch.sys_path)):
                self._pending.appendleft(task)
                return
            if fn is not None:
                w.fids.add(launch.fid)
            task.worker = w
            w.inflight.append(task)
            if len(w.inflight) == 1:
                self._start(task)

    def _start(self, task: _Task) -> None:
        task.started = time.monotonic()
        task.future.set_running_or_notify_cancel()

    def _send(self, w: _Worker, msg: tuple) -> bool:
        try:
            w.conn.send_bytes(pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL))
            return True
        except (OSError, ValueError):
            return False  # the worker is gone; the loop notices through its sentinel

    def _finish(self, task: _Task, outcome: Outcome, done: list) -> None:
        self._tasks.pop(task.launch.job_id, None)
        done.append((task, outcome))
        if not self._tasks:
            self._idle.notify_all()

    @staticmethod
    def _complete(done: list[tuple[_Task, Outcome]]) -> None:
        # outside the lock: completing a future runs callbacks that may submit more jobs
        for task, outcome in done:
            if not task.future.done():
                task.future.set_result(outcome)

    def _cancel_all(self, why: str) -> None:
        done: list[tuple[_Task, Outcome]] = []
        with self._lock:
            for task in list(self._tasks.values()):
                task.cancel_why = why
                self._finish(task, self._cancelled_outcome(task.launch, why), done)
            self._pending.clear()
            for w in list(self._workers):
                if w.inflight:
                    self._kill_worker(w, done, head_outcome=None)
        self._complete(done)

    # ---------------------------------------------------------------- workers
    def _ensure_loop(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._stop_loop = False
            self._sel = selectors.DefaultSelector()
            self._sel.register(self._wake_r, selectors.EVENT_READ, None)
            self._thread = threading.Thread(target=self._loop, name="hither-parallel",
                                            daemon=True)
            self._thread.start()

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass

    def _spawn(self) -> _Worker:
        parent, child = self._ctx.Pipe(duplex=True)
        init = {"cwd": os.getcwd(), "sys_path": list(sys.path)}
        proc = self._ctx.Process(target=_worker.serve_connection, args=(child, init),
                                 name="hither-worker", daemon=True)
        proc.start()
        child.close()
        w = _Worker(proc, parent)
        assert self._sel is not None
        self._sel.register(parent.fileno(), selectors.EVENT_READ, ("msg", w))
        self._sel.register(proc.sentinel, selectors.EVENT_READ, ("exit", w))
        return w

    def _kill_worker(self, w: _Worker, done: list, head_outcome: Outcome | None) -> None:
        """Kill ``w`` and its process group; its head ends with ``head_outcome`` and the
        jobs it was sent ahead go back to the front of the queue."""
        _kill_group(w)
        self._drop_worker(w)
        if w.inflight:
            head = w.inflight.popleft()
            if head_outcome is not None:
                self._finish(head, head_outcome, done)
            for task in reversed(w.inflight):
                task.worker = None
                if task.cancel_why is not None:
                    self._finish(task, self._cancelled_outcome(task.launch), done)
                else:
                    self._pending.appendleft(task)
            w.inflight.clear()
        self._wake()

    def _drop_worker(self, w: _Worker) -> None:
        if w in self._workers:
            self._workers.remove(w)
            for fd in (w.conn.fileno(), w.proc.sentinel):
                try:
                    assert self._sel is not None
                    self._sel.unregister(fd)
                except (KeyError, ValueError, OSError):
                    pass
            try:
                w.conn.close()
            except OSError:
                pass
            threading.Thread(target=w.proc.join, args=(5,), daemon=True).start()

    def _stop_workers(self, graceful: bool) -> None:
        with self._lock:
            workers = list(self._workers)
            self._stop_loop = True
            for w in workers:
                if graceful and not w.inflight:
                    self._send(w, ("stop",))
            self._wake()
        deadline = time.monotonic() + (2.0 if graceful else 0.0)
        for w in workers:
            w.proc.join(max(0.0, deadline - time.monotonic()))
            if w.proc.is_alive():
                _kill_group(w)
                w.proc.join(2)
        with self._lock:
            for w in workers:
                self._drop_worker(w)
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(2)

    # ---------------------------------------------------------------- the event loop
    def _loop(self) -> None:
        sel = self._sel
        assert sel is not None
        while True:
            done: list[tuple[_Task, Outcome]] = []
            with self._lock:
                if self._stop_loop:
                    return
                while (self._pending or self._tasks) and \
                        len(self._workers) < self.num_workers:
                    if not self._pending and len(self._workers) > 0:
                        break
                    self._workers.append(self._spawn())
                for w in self._workers:
                    self._fill(w, done)
                timeout = self._next_deadline()
            self._complete(done)
            events = sel.select(timeout)
            done = []
            with self._lock:
                for key, _mask in events:
                    if key.data is None:
                        try:
                            while os.read(self._wake_r, 4096):
                                pass
                        except BlockingIOError:
                            pass
                        continue
                    kind, w = key.data
                    if w not in self._workers:
                        continue
                    if kind == "msg":
                        self._read_messages(w, done)
                    else:
                        self._read_messages(w, done)  # answers sent before it died
                        self._on_worker_exit(w, done)
                self._check_deadlines(done)
            self._complete(done)

    def _next_deadline(self) -> float | None:
        now = time.monotonic()
        best = None
        for w in self._workers:
            if w.inflight:
                head = w.inflight[0]
                if head.launch.timeout and head.started is not None:
                    left = head.started + head.launch.timeout - now
                    best = left if best is None else min(best, left)
        return None if best is None else max(0.0, best)

    def _check_deadlines(self, done: list) -> None:
        now = time.monotonic()
        for w in list(self._workers):
            if not w.inflight:
                continue
            head = w.inflight[0]
            t = head.launch.timeout
            if t and head.started is not None and now >= head.started + t:
                err = JobTimeoutError(
                    f"job {head.launch.label!r} ran longer than its job_timeout of {t} s; its "
                    "worker process was killed and replaced. Raise job_timeout in hi.Config "
                    "if the job needs more time.", job_label=head.launch.label)
                self._kill_worker(w, done, head_outcome=Outcome(
                    False, error=err, start_time=time.time() - (now - head.started),
                    end_time=time.time(), info={"worker_pid": w.pid}))

    def _read_messages(self, w: _Worker, done: list) -> None:
        conn = w.conn
        try:
            while conn.poll():
                data = conn.recv_bytes()
                self._on_message(w, pickle.loads(data), done)
        except (EOFError, OSError):
            pass

    def _on_message(self, w: _Worker, msg: tuple, done: list) -> None:
        if not w.inflight or w.inflight[0].launch.job_id != msg[1]:
            return  # stale answer of a job already given up on
        task = w.inflight.popleft()
        if w.inflight:
            self._start(w.inflight[0])
        if msg[0] == "skipped" or task.cancel_why is not None:
            outcome = self._cancelled_outcome(task.launch)
        else:
            _, _, ok, payload, lines, start, end = msg
            outcome = _decode_outcome(task.launch, ok, payload, lines, start, end)
            outcome.info["worker_pid"] = w.pid
        self._finish(task, outcome, done)
        self._fill(w, done)

    def _on_worker_exit(self, w: _Worker, done: list) -> None:
        w.proc.join(1)
        code = w.proc.exitcode
        if w.inflight:
            head = w.inflight[0]
            err = WorkerCrashedError(
                f"the worker process (pid {w.pid}) running job {head.launch.label!r} died: "
                f"{_describe_exit(code)}. If it ran out of memory, give the job less data or "
                "the machine more memory; the worker was replaced and other jobs go on.",
                job_label=head.launch.label)
            now = time.time()
            started = now - (time.monotonic() - head.started) if head.started else None
            self._kill_worker(w, done, head_outcome=Outcome(
                False, error=err, start_time=started, end_time=now,
                info={"worker_pid": w.pid, "exit_code": code}))
        else:
            self._drop_worker(w)


def _kill_group(w: _Worker) -> None:
    """SIGKILL a worker and every process of its group (what its job started)."""
    try:
        os.killpg(w.pid, signal.SIGKILL)
    except OSError:
        pass
    if w.proc.exitcode is None:  # not reaped yet, so the pid is still ours
        try:
            os.kill(w.pid, signal.SIGKILL)
        except OSError:
            pass


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "it stopped answering"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        extra = " (SIGKILL: often the kernel's out-of-memory killer)" if -code == 9 else ""
        return f"killed by {name}{extra}"
    return f"it exited with code {code} (the function or a library called exit)"


def _decode_outcome(launch: Launch, ok: bool, payload, lines, start, end) -> Outcome:
    if ok:
        try:
            value = pickle.loads(payload)
        except Exception as e:  # noqa: BLE001
            err = JobFailedError(
                f"the result of job {launch.label!r} could not be unpickled in the parent "
                f"process: {type(e).__name__}: {e}", remote_type=type(e).__name__,
                job_label=launch.label)
            return Outcome(False, error=err, console=lines, start_time=start, end_time=end)
        return Outcome(True, value=value, console=lines, start_time=start, end_time=end)
    pickled, type_name, message, tb = payload
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
                   start_time=start, end_time=end)
