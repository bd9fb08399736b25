"""ParallelJobHandler: a pool of warm workers, on the host or inside runtimes."""

from __future__ import annotations

import os
import selectors
import sys
import threading
import time
from collections import deque
from collections.abc import Hashable
from concurrent.futures import Future, InvalidStateError

from ..errors import JobTimeoutError, WorkerCrashedError
from ..launch import Launch, Outcome
from .base import JobHandler, completed_future
from .host import START_METHODS, HostWorker, decode_outcome, default_start_method, describe_exit
from .stdio import StdioWorker, pool_key


class _Task:
    __slots__ = ("launch", "future", "started", "cancel_why", "slot")

    def __init__(self, launch: Launch, future: Future[Outcome]) -> None:
        self.launch = launch
        self.future = future
        self.started: float | None = None  # monotonic time it became its worker's head
        self.cancel_why: str | None = None
        self.slot: _Slot | None = None


class _Slot:
    """A worker of the pool: a host process (key None) or a runtime worker."""

    __slots__ = ("key", "host", "stdio", "inflight", "pid", "limit")

    def __init__(self, key: Hashable, host: HostWorker | None = None,
                 stdio: StdioWorker | None = None, limit: int = 1) -> None:
        self.key = key
        self.host = host
        self.stdio = stdio
        self.inflight: deque[_Task] = deque()
        self.pid = host.pid if host is not None else stdio.pid  # type: ignore[union-attr]
        self.limit = limit if host is not None else StdioWorker.max_inflight


def _echo(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def _load(s: _Slot) -> int:
    return len(s.inflight)


def _pool_key(launch: Launch) -> Hashable:
    return None if launch.runtime is None else pool_key(launch)


class ParallelJobHandler(JobHandler):
    """Run jobs on up to ``num_workers`` warm workers.

    Workers start on demand and each runs many jobs: host jobs on worker processes of this
    machine, container and environment jobs on workers inside their runtime (one
    ``docker run`` per worker, not per job). Host workers are sent up to ``prefetch`` jobs
    ahead so they never wait for the parent. Host workers never import the caller's
    ``__main__`` (a script needs no ``if __name__ == "__main__":`` guard; its functions
    travel by value). ``start_method`` says how they start (see
    :mod:`hither.handlers.host`): ``"forkserver"`` (the default where the platform can
    fork) forks them from a clean fork server of hither's, ``"spawn"`` starts a fresh
    interpreter for each, ``"fork"`` forks the caller itself as hither 0.4.2 did (unsafe
    when the caller has threads).

    A worker that dies (signal, OOM kill, ``os._exit``, a killed container) fails its
    running job with :class:`~hither.errors.WorkerCrashedError` and is replaced; a job past
    its ``job_timeout`` or cancelled while running has its worker (and everything the job
    started, container included) killed and replaced.
    """

    def __init__(self, num_workers: int | None = None, *, start_method: str | None = None,
                 prefetch: int = 2) -> None:
        super().__init__()
        if num_workers is None:
            num_workers = os.cpu_count() or 1
        if int(num_workers) < 1:
            raise ValueError(f"num_workers must be at least 1, got {num_workers!r}")
        if start_method is None:
            start_method = default_start_method()
        if start_method not in START_METHODS:
            raise ValueError(f"start_method must be one of {START_METHODS}, got {start_method!r}")
        self.num_workers = int(num_workers)
        self.start_method = start_method
        # small messages are written straight into the pipe: a bounded number sent ahead
        # keeps them within its buffer (see host.HostWorker.send)
        self.prefetch = min(max(1, int(prefetch)), 8)
        self._lock = threading.RLock()
        self._idle = threading.Condition(self._lock)
        self._pending: dict[Hashable, deque[_Task]] = {}
        self._runtimes: dict[Hashable, tuple] = {}
        self._tasks: dict[str, _Task] = {}
        self._slots: list[_Slot] = []
        self._starting: dict[Hashable, int] = {}
        self._thread: threading.Thread | None = None
        self._sel: selectors.BaseSelector | None = None
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        self._stop_loop = False

    # ---------------------------------------------------------------- public interface
    def submit(self, launch: Launch) -> Future[Outcome]:
        if self._closed:
            return completed_future(self._closed_outcome(launch))
        task = _Task(launch, Future())
        key = _pool_key(launch)
        done: list[tuple[_Task, Outcome]] = []
        with self._lock:
            self._tasks[launch.job_id] = task
            self._pending.setdefault(key, deque()).append(task)
            if key is not None:
                self._runtimes[key] = (launch.runtime, launch.store)
            self._ensure_loop()
            mine = [s for s in self._slots if s.key == key]
            room = len(self._slots) + sum(self._starting.values()) < self.num_workers
            s = min(mine, key=_load, default=None)
            if s is not None and (not s.inflight or (not room and not self._starting.get(key))):
                self._fill(s, done, limit=1)
                if launch.timeout:
                    self._wake()  # the loop must watch its deadline
            else:
                self._wake()  # the loop starts a worker
        self._complete(done)
        return task.future

    def cancel(self, job_id: str) -> bool:
        done: list[tuple[_Task, Outcome]] = []
        with self._lock:
            task = self._tasks.get(job_id)
            if task is None or task.future.done() or task.cancel_why is not None:
                return False
            task.cancel_why = "was cancelled"
            slot = task.slot
            if slot is None:  # still waiting here: just drop it
                self._pending[_pool_key(task.launch)].remove(task)
                self._finish(task, self._cancelled_outcome(task.launch), done)
            elif slot.inflight and slot.inflight[0] is task:  # running: stop its worker
                self._kill_slot(slot, done, head_outcome=self._cancelled_outcome(task.launch))
            else:  # sent ahead to a host worker, not started: the worker will skip it
                assert slot.host is not None
                slot.host.send(("skip", job_id))
                self._finish(task, self._cancelled_outcome(task.launch), done)
        self._complete(done)
        return True

    def reset(self) -> None:
        self._cancel_all("was cancelled by hi.reset()")
        self._stop_workers(graceful=False)

    def shutdown(self, wait: bool = True, *, cancel: bool = False) -> None:
        self._closed = True
        if cancel:
            self._cancel_all("was cancelled: its handler was shut down")
        elif wait and threading.current_thread() is not self._thread:
            with self._idle:
                while self._tasks:
                    self._idle.wait(0.1)
        self._stop_workers(graceful=not cancel)

    @property
    def worker_pids(self) -> list[int]:
        """Process ids of the live workers (for diagnostics and tests)."""
        with self._lock:
            return [s.pid for s in self._slots]

    def __repr__(self) -> str:
        return (f"<ParallelJobHandler num_workers={self.num_workers} "
                f"start_method={self.start_method!r}{' closed' if self._closed else ''}>")

    # ---------------------------------------------------------------- dispatch (lock held)
    def _fill(self, slot: _Slot, done: list, limit: int | None = None) -> None:
        q = self._pending.get(slot.key)
        cap = slot.limit if limit is None else min(slot.limit, len(slot.inflight) + limit)
        while q and len(slot.inflight) < cap:
            task = q.popleft()
            try:
                if slot.host is not None:
                    msg = slot.host.run_message(task.launch)
                else:
                    msg = slot.stdio.message(task.launch)  # type: ignore[union-attr]
            except Exception as e:  # noqa: BLE001 - surfaces on the job, never in the loop
                self._finish(task, Outcome(False, error=e, traceback_text=(
                    "the job's function or arguments could not be sent to a worker: "
                    f"{type(e).__name__}: {e}")), done)
                continue
            sender = slot.host if slot.host is not None else slot.stdio
            if not sender.send(msg):  # type: ignore[union-attr]
                q.appendleft(task)
                return
            if slot.host is not None:
                slot.host.sent(msg)
            task.slot = slot
            slot.inflight.append(task)
            if len(slot.inflight) == 1:
                self._start(task)

    def _start(self, task: _Task) -> None:
        task.started = time.monotonic()
        if not task.future.done():  # a job cancelled while sent ahead is already complete
            task.future.set_running_or_notify_cancel()

    def _finish(self, task: _Task, outcome: Outcome, done: list) -> None:
        if self._tasks.pop(task.launch.job_id, None) is None:
            return  # already finished (e.g. cancelled while sent ahead)
        done.append((task, outcome))
        if not self._tasks:
            self._idle.notify_all()

    @staticmethod
    def _complete(done: list[tuple[_Task, Outcome]]) -> None:
        # outside the lock: completing a future runs callbacks that may submit more jobs
        for task, outcome in done:
            try:
                task.future.set_result(outcome)
            except InvalidStateError:
                pass

    def _cancel_all(self, why: str) -> None:
        done: list[tuple[_Task, Outcome]] = []
        with self._lock:
            for task in list(self._tasks.values()):
                task.cancel_why = why
                self._finish(task, self._cancelled_outcome(task.launch, why), done)
            self._pending.clear()
            for slot in list(self._slots):
                if slot.inflight:
                    self._kill_slot(slot, done, head_outcome=None)
        self._complete(done)

    # ---------------------------------------------------------------- workers
    def _ensure_loop(self) -> None:
        if self._thread is None or self._stop_loop:
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

    def _plan_spawns(self) -> list[Hashable]:
        """Which pools get a new worker now (lock held); counted as starting."""
        keys = []
        total = len(self._slots) + sum(self._starting.values())
        for key, q in self._pending.items():
            if not q or self._starting.get(key):
                continue
            mine = [s for s in self._slots if s.key == key]
            if len(q) <= sum(not s.inflight for s in mine):
                continue  # idle workers of this pool take them all
            if total >= self.num_workers and any(len(s.inflight) < s.limit for s in mine):
                continue  # the pool is full: send it ahead to a busy worker of this pool
            if total >= self.num_workers:
                idle = next((s for s in self._slots if not s.inflight and s.key != key
                             and not self._pending.get(s.key)), None)
                if idle is None:
                    continue
                self._retire(idle)
                total -= 1
            self._starting[key] = self._starting.get(key, 0) + 1
            total += 1
            keys.append(key)
        return keys

    def _spawn(self, key: Hashable) -> None:
        """Start a worker for pool ``key`` (lock NOT held: a container takes a while)."""
        try:
            if key is None:
                slot = _Slot(None, host=HostWorker(self.start_method), limit=self.prefetch)
            else:
                runtime, store = self._runtimes[key]
                slot = _Slot(key, stdio=StdioWorker(runtime, store))
        except Exception as e:  # noqa: BLE001 - e.g. a missing image: fail its jobs
            done: list[tuple[_Task, Outcome]] = []
            with self._lock:
                self._starting[key] -= 1
                for task in self._pending.pop(key, deque()):
                    self._finish(task, Outcome(False, error=e), done)
            self._complete(done)
            return
        sel = self._sel
        assert sel is not None
        with self._lock:
            self._starting[key] -= 1
            if self._stop_loop:
                self._stop_slot(slot, graceful=False)
                return
            if slot.host is not None:
                sel.register(slot.host.conn.fileno(), selectors.EVENT_READ, ("msg", slot))
                sel.register(slot.host.sentinel, selectors.EVENT_READ, ("exit", slot))
            else:
                out, err = slot.stdio.fds()  # type: ignore[union-attr]
                sel.register(out, selectors.EVENT_READ, ("out", slot))
                sel.register(err, selectors.EVENT_READ, ("err", slot))
            self._slots.append(slot)

    def _retire(self, slot: _Slot) -> None:
        self._drop_slot(slot)
        self._stop_slot(slot, graceful=True)

    def _kill_slot(self, slot: _Slot, done: list, head_outcome: Outcome | None) -> None:
        """Kill ``slot``'s worker; its head ends with ``head_outcome`` and the jobs sent
        ahead go back to the front of their queue."""
        self._drop_slot(slot)
        self._stop_slot(slot, graceful=False)
        if slot.inflight:
            head = slot.inflight.popleft()
            if head_outcome is not None:
                self._finish(head, head_outcome, done)
            q = self._pending.setdefault(slot.key, deque())
            for task in reversed(slot.inflight):
                task.slot = None
                if task.cancel_why is not None:
                    self._finish(task, self._cancelled_outcome(task.launch), done)
                else:
                    q.appendleft(task)
            slot.inflight.clear()
        self._wake()

    def _drop_slot(self, slot: _Slot) -> None:
        if slot not in self._slots:
            return
        self._slots.remove(slot)
        fds = ((slot.host.conn.fileno(), slot.host.sentinel) if slot.host is not None
               else slot.stdio.fds())  # type: ignore[union-attr]
        for fd in fds:
            try:
                assert self._sel is not None
                self._sel.unregister(fd)
            except (KeyError, ValueError, OSError):
                pass

    @staticmethod
    def _stop_slot(slot: _Slot, graceful: bool) -> None:
        if slot.host is not None:
            if graceful and not slot.inflight:
                slot.host.send(("stop",))
            else:
                slot.host.kill()
            slot.host.close()
            threading.Thread(target=slot.host.join, args=(5,), daemon=True).start()
        else:
            slot.stdio.stop(graceful=graceful and not slot.inflight)  # type: ignore[union-attr]

    def _stop_workers(self, graceful: bool) -> None:
        with self._lock:
            slots = list(self._slots)
            self._stop_loop = True
            for slot in slots:
                self._drop_slot(slot)
            self._wake()
        for slot in slots:
            self._stop_slot(slot, graceful)
        deadline = time.monotonic() + (2.0 if graceful else 0.5)
        for slot in slots:
            if slot.host is not None:
                slot.host.join(max(0.0, deadline - time.monotonic()))
                if slot.host.is_alive():
                    slot.host.kill()
                    slot.host.join(2)
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(2)
        if self._closed and (thread is None or not thread.is_alive()):
            self._close_fds()

    def _close_fds(self) -> None:
        if self._sel is not None:
            self._sel.close()
            self._sel = None
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass
        self._wake_r = self._wake_w = -1

    # ---------------------------------------------------------------- the event loop
    def _loop(self) -> None:
        while True:
            try:
                if self._loop_once():
                    return
            except Exception as e:  # noqa: BLE001 - keep serving; fail what was in hand
                import traceback

                traceback.print_exc()
                self._fail_all(e)

    def _fail_all(self, error: BaseException) -> None:
        done: list[tuple[_Task, Outcome]] = []
        with self._lock:
            for task in list(self._tasks.values()):
                self._finish(task, Outcome(False, error=error), done)
            self._pending.clear()
            for slot in list(self._slots):
                if slot.inflight:
                    self._kill_slot(slot, done, head_outcome=None)
        self._complete(done)

    def _loop_once(self) -> bool:
        """One turn of the event loop; True when the loop must end."""
        sel = self._sel
        assert sel is not None
        done: list[tuple[_Task, Outcome]] = []
        with self._lock:
            if self._stop_loop:
                return True
            waiting = any(self._pending.values())
            spawns = self._plan_spawns() if waiting else []
            for depth in range(1, (self.prefetch if waiting else 0) + 1):  # idle first
                for slot in sorted(self._slots, key=_load):
                    if depth > 1 and self._starting.get(slot.key):
                        continue  # a new worker of this pool is coming: keep it for it
                    if len(slot.inflight) < depth:
                        self._fill(slot, done, limit=depth - len(slot.inflight))
            timeout = self._next_deadline()
        self._complete(done)
        if spawns:
            for key in spawns:
                self._spawn(key)
            return False
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
                kind, slot = key.data
                if slot in self._slots:
                    self._on_event(kind, slot, done)
            self._check_deadlines(done)
        self._complete(done)
        return False

    def _on_event(self, kind: str, slot: _Slot, done: list) -> None:
        if kind == "msg":  # one message per event: the selector reports the rest
            try:
                self._on_message(slot, slot.host.recv(), done)  # type: ignore[union-attr]
            except (EOFError, OSError):
                pass
        elif kind == "exit":
            host = slot.host
            assert host is not None
            try:
                while host.conn.poll():  # answers sent before it died
                    self._on_message(slot, host.recv(), done)
            except (EOFError, OSError):
                pass
            self._on_worker_exit(slot, done)
        elif kind == "out":
            sw = slot.stdio
            assert sw is not None
            try:
                msgs = sw.read_stdout()
            except EOFError:
                sw.read_stderr()
                self._on_worker_exit(slot, done)
                return
            for msg in msgs:
                self._on_message(slot, msg, done)
        elif kind == "err":
            if not slot.stdio.read_stderr():  # type: ignore[union-attr]
                try:
                    assert self._sel is not None
                    self._sel.unregister(slot.stdio.fds()[1])  # type: ignore[union-attr]
                except (KeyError, ValueError):
                    pass

    def _next_deadline(self) -> float | None:
        now = time.monotonic()
        best = None
        for slot in self._slots:
            if slot.inflight:
                head = slot.inflight[0]
                if head.launch.timeout and head.started is not None:
                    left = head.started + head.launch.timeout - now
                    best = left if best is None else min(best, left)
        return None if best is None else max(0.0, best)

    def _check_deadlines(self, done: list) -> None:
        now = time.monotonic()
        for slot in list(self._slots):
            if not slot.inflight:
                continue
            head = slot.inflight[0]
            t = head.launch.timeout
            if not t or head.started is None or now < head.started + t:
                continue
            started = time.time() - (now - head.started)
            if slot.stdio is not None:
                outcome = slot.stdio.timeout_outcome(head.launch, started)
            else:
                outcome = Outcome(False, error=JobTimeoutError(
                    f"job {head.launch.label!r} ran longer than its job_timeout of {t} s; its "
                    "worker process was killed and replaced. Raise job_timeout in hi.Config "
                    "if the job needs more time.", job_label=head.launch.label),
                    start_time=started, end_time=time.time(), info={"worker_pid": slot.pid})
            self._kill_slot(slot, done, head_outcome=outcome)

    def _on_message(self, slot: _Slot, msg, done: list) -> None:
        if slot.host is not None:
            if msg[0] == "echo":  # a live console line (show_console)
                _echo(msg[1])
                return
            job_id, kind = msg[1], msg[0]
        else:
            job_id, kind = msg.get("id"), msg.get("op")
        if not slot.inflight or slot.inflight[0].launch.job_id != job_id:
            return  # stale answer of a job already given up on
        task = slot.inflight.popleft()
        if slot.inflight:
            self._start(slot.inflight[0])
        if kind == "skipped" or task.cancel_why is not None:
            outcome = self._cancelled_outcome(task.launch)
        elif slot.host is not None:
            _, _, ok, payload, lines, start, end = msg
            outcome = decode_outcome(task.launch, ok, payload, lines, start, end)
            outcome.info["worker_pid"] = slot.pid
        else:
            outcome = slot.stdio.outcome(task.launch, msg)  # type: ignore[union-attr]
        self._finish(task, outcome, done)
        self._fill(slot, done, limit=1)  # the loop tops the others up, idle workers first

    def _on_worker_exit(self, slot: _Slot, done: list) -> None:
        if not slot.inflight:
            self._drop_slot(slot)
            self._stop_slot(slot, graceful=False)
            return
        head = slot.inflight[0]
        if slot.host is not None:
            slot.host.join(1)
            code = slot.host.exitcode
            now = time.time()
            started = now - (time.monotonic() - head.started) if head.started else None
            outcome = Outcome(False, error=WorkerCrashedError(
                f"the worker process (pid {slot.pid}) running job {head.launch.label!r} died: "
                f"{describe_exit(code)}. The worker was replaced and other jobs go on.",
                job_label=head.launch.label), start_time=started, end_time=now,
                info={"worker_pid": slot.pid, "exit_code": code})
        else:
            outcome = slot.stdio.crash_outcome(head.launch)  # type: ignore[union-attr]
        self._kill_slot(slot, done, head_outcome=outcome)
