"""ParallelJobHandler: a pool of warm workers, on the host or inside runtimes."""

from __future__ import annotations

import os
import selectors
import threading
import time
import weakref
from collections import deque
from collections.abc import Hashable
from concurrent.futures import Future
from functools import partial
from typing import Any

from ..errors import JobTimeoutError, WorkerCrashedError
from ..launch import Launch, Outcome
from ..progress import echo
from . import _loop, _pool
from ._batching import BatchPolicy, take_batch
from ._pool import Settle, Slot, Task, load, settle
from .base import JobHandler, completed_future, in_io_thread
from .host import START_METHODS, HostWorker, decode_outcome, default_start_method, describe_exit
from .stdio import StdioWorker


class ParallelJobHandler(JobHandler):
    """Run jobs on up to ``num_workers`` warm workers.

    Workers start on demand and each runs many jobs: host jobs on worker processes of this
    machine, container and environment jobs on workers inside their runtime (one
    ``docker run`` per worker, not per job). Host workers are sent up to ``prefetch`` jobs
    ahead so they never wait for the parent. Host workers never import the caller's
    ``__main__`` (a script needs no ``if __name__ == "__main__":`` guard; its functions
    travel by value). ``start_method`` says how they start (see
    :mod:`hither.handlers.hostproc`): ``"forkserver"`` (the default where the platform can
    fork) forks them from a clean fork server of hither's, ``"spawn"`` starts a fresh
    interpreter for each, ``"fork"`` forks the caller itself as hither 0.4.2 did (unsafe
    when the caller has threads).

    A worker that dies (signal, OOM kill, ``os._exit``, a killed container) fails its
    running job with :class:`~hither.errors.WorkerCrashedError` and is replaced; a job past
    its ``job_timeout`` (counted from the moment its function starts) or cancelled while
    running has its worker (and everything the job started, container included) killed and
    replaced.

    Tiny jobs are batched (``batch=True``, the default): once a function's jobs are seen
    to be fast, a host worker is sent many of them in one message, about ``batch_target``
    seconds of work (see :mod:`hither.handlers._batching`); they still run, complete,
    fail and cancel one by one. ``batch=False`` sends every job on its own.
    """

    def __init__(self, num_workers: int | None = None, *, start_method: str | None = None,
                 prefetch: int = 2, batch: bool = True, batch_target: float = 0.005) -> None:
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
        self._policy = BatchPolicy(bool(batch), target=batch_target)
        self._sends = [0, 0]  # messages that carried jobs to host workers, jobs they carried
        self._lock = threading.RLock()
        self._idle = threading.Condition(self._lock)
        self._pending: dict[Hashable, deque[Task]] = {}
        self._runtimes: dict[Hashable, tuple] = {}
        self._tasks: dict[str, Task] = {}
        self._starting: dict[Hashable, int] = {}
        self._shared = _loop.Shared()
        self._slots: list[Slot] = self._shared.slots
        self._finalizer = weakref.finalize(self, _loop.abandon, self._shared, _pool.kill_now)
        self._finalizer.atexit = False  # at exit, the handlers are shut down in order

    # ---------------------------------------------------------------- public interface
    def submit(self, launch: Launch) -> Future[Outcome]:
        if self._closed:
            return completed_future(self._closed_outcome(launch))
        task = Task(launch, _pool.LeanFuture())
        key = _pool.launch_pool(launch)
        done: list[tuple[Task, Settle]] = []
        with self._lock:
            self._tasks[launch.job_id] = task
            q = self._pending.get(key)
            if q is None:
                q = self._pending[key] = deque()
            q.append(task)
            if key is not None:
                self._runtimes[key] = (launch.runtime, launch.store)
            if self._shared.thread is None:
                self._shared.start(self)
            if len(q) > 1 or self._policy.enabled and _pool.busy(self._slots):
                # the loop sends the jobs waiting together, once it gets its turn
                self._shared.wake()
                return task.future
            mine = [s for s in self._slots if s.key == key]
            room = len(self._slots) + sum(self._starting.values()) < self.num_workers
            s = min(mine, key=load, default=None)
            if s is not None and (not s.inflight or (not room and not self._starting.get(key))):
                self._fill(s, done, limit=1)
                if launch.timeout:
                    self._shared.wake()  # the loop must watch its deadline
            else:
                self._shared.wake()  # the loop starts a worker
        settle(done)
        return task.future

    def cancel(self, job_id: str) -> bool:
        done: list[tuple[Task, Settle]] = []
        with self._lock:
            task = self._tasks.get(job_id)
            if task is None or task.future.done() or task.cancel_why is not None:
                return False
            task.cancel_why = "was cancelled"
            slot = task.slot
            if slot is None:  # still waiting here: just drop it
                self._pending[_pool.launch_pool(task.launch)].remove(task)
                self._finish(task, self._cancelled_outcome(task.launch), done)
            elif slot.inflight and slot.inflight[0] is task:  # running: stop its worker
                self._kill_slot(slot, done, head_outcome=self._cancelled_outcome(task.launch))
            else:  # sent ahead to a host worker, not started: the worker will skip it
                assert slot.host is not None
                slot.host.send(("skip", job_id))
                self._finish(task, self._cancelled_outcome(task.launch), done)
        settle(done)
        return True

    def reset(self) -> None:
        """Cancel every job and kill every worker; the handler stays usable."""
        self._cancel_all("was cancelled by hi.reset()")
        with self._lock:
            slots = list(self._slots)
            for slot in slots:
                self._drop_slot(slot)
        for slot in slots:
            _pool.kill_now(slot)

    def shutdown(self, wait: bool = True, *, cancel: bool = False) -> None:
        self._closed = True
        if cancel:
            self._cancel_all("was cancelled: its handler was shut down")
        elif wait and not self._in_loop():
            with self._idle:
                while self._tasks:
                    self._idle.wait(0.1)
        self._stop_workers(graceful=not cancel)

    @property
    def worker_pids(self) -> list[int]:
        """Process ids of the live workers (for diagnostics and tests)."""
        with self._lock:
            return [s.pid for s in self._slots]

    @property
    def batching(self) -> dict[str, Any]:
        """Whether tiny jobs are batched, the batch target (seconds of work per worker),
        and how many messages carried how many jobs to host workers so far."""
        with self._lock:
            return {"enabled": self._policy.enabled, "target": self._policy.target,
                    "messages": self._sends[0], "jobs": self._sends[1]}

    def __repr__(self) -> str:
        return (f"<ParallelJobHandler num_workers={self.num_workers} "
                f"start_method={self.start_method!r}{' closed' if self._closed else ''}>")

    def _in_loop(self) -> bool:
        return threading.current_thread() is self._shared.thread

    # ---------------------------------------------------------------- dispatch (lock held)
    def _fill(self, slot: Slot, done: list, limit: int | None = None) -> None:
        """Send ``slot`` what it may take of its pool's queue (at most ``limit`` jobs)."""
        q = self._pending.get(slot.key)
        if not q:
            return
        if slot.host is None:
            cap = slot.limit if limit is None else min(slot.limit, len(slot.inflight) + limit)
            while q and len(slot.inflight) < cap:
                task = q.popleft()
                try:
                    assert slot.stdio is not None
                    sent = slot.stdio.send_run(task.launch)
                except Exception as e:  # noqa: BLE001 - surfaces on the job, never in the loop
                    self._finish(task, _pool.unsendable(e), done)
                    continue
                if not sent:
                    q.appendleft(task)
                    return
                self._sent(slot, task)
            return
        if limit is None:  # a fair share of the queue for each worker of the pool
            workers = self._starting.get(slot.key, 0) + sum(s.key == slot.key
                                                            for s in self._slots)
            limit = -(-len(q) // max(1, workers))
        batch = take_batch(self._policy, q, slot, limit, self.prefetch)
        if not self._policy.enabled:  # one message per job, as before batching
            for i, task in enumerate(batch):
                if not self._send(slot, [task], done):
                    q.extendleft(reversed(batch[i + 1:]))
                    return
        elif batch:
            self._send(slot, batch, done)

    def _send(self, slot: Slot, batch: list[Task], done: list) -> bool:
        """Send jobs to a host worker in one message; False (and the jobs back at the
        front of the queue) when the worker is gone."""
        assert slot.host is not None
        msgs, tasks = [], []
        for task in batch:
            try:
                msg = slot.host.run_message(task.launch)
            except Exception as e:  # noqa: BLE001 - surfaces on the job, never in the loop
                self._finish(task, _pool.unsendable(e), done)
                continue
            slot.host.sent(msg)  # its function is not sent again in this batch
            msgs.append(msg)
            tasks.append(task)
        if not msgs:
            return True
        size = slot.host.send(msgs[0] if len(msgs) == 1 else ("batch", msgs), slot.unread)
        if not size:
            self._pending[slot.key].extendleft(reversed(tasks))
            return False
        self._sends[0] += 1
        self._sends[1] += len(tasks)
        # a message takes ~1 KB of the socket's buffer besides its bytes
        if slot.took(tasks, (size + 1024) // len(tasks)):
            self._start(tasks[0])
        return True

    def _sent(self, slot: Slot, task: Task) -> None:
        task.slot = slot
        slot.inflight.append(task)
        slot.unread += task.wire
        slot.unbatched += not task.batched
        if len(slot.inflight) == 1:
            self._start(task)

    def _start(self, task: Task) -> None:
        task.head_at = time.monotonic()
        if not task.launch.timeout:
            task.started = task.head_at
        if not task.future.done():  # a job cancelled while sent ahead is already complete
            task.future.set_running_or_notify_cancel()

    def _finish(self, task: Task, outcome: Settle, done: list) -> None:
        if self._tasks.pop(task.launch.job_id, None) is None:
            return  # already finished (e.g. cancelled while sent ahead)
        done.append((task, outcome))
        if not self._tasks:
            self._idle.notify_all()

    def _complete(self, done: list[tuple[Task, Settle]]) -> None:
        """Complete futures from the loop: on an I/O thread (they run callbacks)."""
        if done:
            self._shared.later(done, settle)

    def _cancel_all(self, why: str) -> None:
        done: list[tuple[Task, Settle]] = []
        with self._lock:
            for task in list(self._tasks.values()):
                task.cancel_why = why
                self._finish(task, self._cancelled_outcome(task.launch, why), done)
            self._pending.clear()
            for slot in list(self._slots):
                if slot.inflight:
                    self._kill_slot(slot, done, head_outcome=None)
        settle(done)

    # ---------------------------------------------------------------- workers
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
        """Start a worker for pool ``key`` (on an I/O thread: a container takes a while)."""
        try:
            if key is None:
                slot = Slot(None, host=HostWorker(self.start_method), limit=self.prefetch)
            else:
                runtime, store = self._runtimes[key]
                slot = Slot(key, stdio=StdioWorker(runtime, store))
        except Exception as e:  # noqa: BLE001 - e.g. a missing image: fail its jobs
            done: list[tuple[Task, Settle]] = []
            with self._lock:
                self._starting[key] -= 1
                for task in self._pending.pop(key, deque()):
                    self._finish(task, Outcome(False, error=e), done)
            settle(done)
            return
        sel = self._shared.sel
        with self._lock:
            self._starting[key] -= 1
            if self._shared.stop or self._closed and not self._tasks:
                _pool.kill_now(slot)
                return
            try:
                if slot.host is not None:
                    sel.register(slot.host.conn.fileno(), selectors.EVENT_READ, ("msg", slot))
                    sel.register(slot.host.sentinel, selectors.EVENT_READ,
                                 ("exit", slot))
                else:
                    out, err = slot.stdio.fds()  # type: ignore[union-attr]
                    sel.register(out, selectors.EVENT_READ, ("out", slot))
                    sel.register(err, selectors.EVENT_READ, ("err", slot))
            except (ValueError, OSError, KeyError):  # the loop has ended meanwhile
                _pool.kill_now(slot)
                return
            self._slots.append(slot)
        self._shared.wake()

    def _retire(self, slot: Slot) -> None:
        self._drop_slot(slot)
        self._stop_slot(slot, graceful=True)

    def _kill_slot(self, slot: Slot, done: list, head_outcome: Settle | None) -> None:
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
        self._shared.wake()

    def _drop_slot(self, slot: Slot) -> None:
        if slot not in self._slots:
            return
        self._slots.remove(slot)
        for fd in slot.fds():
            try:
                self._shared.sel.unregister(fd)
            except (KeyError, ValueError, OSError):
                pass

    def _stop_slot(self, slot: Slot, graceful: bool) -> None:
        """Stop a worker dropped from the pool: a host process at once; a runtime worker
        (its container) on an I/O thread."""
        if slot.host is not None:
            if graceful and not slot.inflight:
                slot.host.send(("stop",))
            else:
                slot.host.kill()
            slot.host.close()
            threading.Thread(target=_pool.reap, args=(slot.host, 5), daemon=True).start()
            return
        assert slot.stdio is not None
        if not graceful:
            slot.stdio.interrupt()  # dead now; its removal may take a moment more
        stop = partial(slot.stdio.stop, graceful=graceful and not slot.inflight)
        try:
            self._shared.io.submit(stop)
        except RuntimeError:  # shutting down: stop it here
            stop()

    def _stop_workers(self, graceful: bool) -> None:
        with self._lock:
            slots = list(self._slots)
            for slot in slots:
                self._drop_slot(slot)
            self._shared.stop = True
            self._shared.wake()
        for slot in slots:
            if slot.host is not None:
                if graceful and not slot.inflight:
                    slot.host.send(("stop",))
                else:
                    slot.host.kill()
                slot.host.close()
            else:
                assert slot.stdio is not None
                slot.stdio.stop(graceful=graceful and not slot.inflight)
        deadline = time.monotonic() + (2.0 if graceful else 0.5)
        for slot in slots:
            if slot.host is not None:
                _pool.reap(slot.host, max(0.0, deadline - time.monotonic()))
        thread = self._shared.thread
        if thread is None:
            self._shared.close()
        elif thread is not threading.current_thread():
            thread.join(2)
        self._finalizer.detach()
        self._shared.io.shutdown(wait=not in_io_thread())

    # ---------------------------------------------------------------- the event loop
    def _fail_all(self, error: BaseException) -> None:
        done: list[tuple[Task, Settle]] = []
        with self._lock:
            for task in list(self._tasks.values()):
                self._finish(task, Outcome(False, error=error), done)
            self._pending.clear()
            for slot in list(self._slots):
                if slot.inflight:
                    self._kill_slot(slot, done, head_outcome=None)
        self._complete(done)

    def _prepare(self) -> float | None:
        done: list[tuple[Task, Settle]] = []
        with self._lock:
            waiting = any(self._pending.values())
            spawns = self._plan_spawns() if waiting else []
            for slot in sorted(self._slots, key=load) if waiting else ():  # idle first
                if not self._starting.get(slot.key):
                    self._fill(slot, done)
                elif not slot.inflight:  # a new worker of this pool is coming: keep the
                    self._fill(slot, done, limit=1)  # rest for it
            timeout = self._next_deadline()
        self._complete(done)
        for key in spawns:
            try:
                self._shared.io.submit(self._spawn, key)
            except RuntimeError:
                self._spawn(key)
        return timeout

    def _handle(self, events: list[tuple[selectors.SelectorKey, int]]) -> None:
        done: list[tuple[Task, Settle]] = []
        with self._lock:
            for key, _mask in events:
                if key.data is None:
                    self._shared.drain_wake()
                    continue
                kind, slot = key.data
                if slot in self._slots:
                    self._on_event(kind, slot, done)
            self._check_deadlines(done)
        self._complete(done)

    def _on_event(self, kind: str, slot: Slot, done: list) -> None:
        if kind == "msg" or kind == "exit":
            host = slot.host
            assert host is not None
            try:  # at its exit: the answers it sent before it died
                answers = host.read_available(more=kind == "exit")
            except (EOFError, OSError):
                answers = []
            for answer in answers:
                self._on_message(slot, answer, done)
            if kind == "exit":
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
                    self._shared.sel.unregister(slot.stdio.fds()[1])  # type: ignore[union-attr]
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
            self._policy.slow(head.launch.fid, t)
            if slot.stdio is not None:
                outcome = slot.stdio.timeout_outcome(head.launch, started)
            else:
                outcome = Outcome(False, error=JobTimeoutError(
                    f"job {head.launch.label!r} ran longer than its job_timeout of {t} s; its "
                    "worker process was killed and replaced. Raise job_timeout in hi.Config "
                    "if the job needs more time.", job_label=head.launch.label),
                    console=head.console or [], start_time=started, end_time=time.time(),
                    info={"worker_pid": slot.pid})
            self._kill_slot(slot, done, head_outcome=outcome)

    def _on_message(self, slot: Slot, msg, done: list) -> None:
        if slot.host is not None:
            kind = msg[0]
            if kind == "echo":  # a live console line (show_console, or a timed job)
                if slot.inflight:
                    head = slot.inflight[0]
                    if head.launch.timeout:
                        if head.console is None:
                            head.console = []
                        head.console.append((time.time(), msg[1].rstrip("\n"),
                                             bool(msg[2]) if len(msg) > 2 else False))
                    prefix = head.launch.stream_prefix()
                    if prefix is not None:
                        echo(prefix + msg[1])
                return
            job_id = msg[1]
        else:
            job_id, kind = msg.get("id"), msg.get("op")
        if not slot.inflight or slot.inflight[0].launch.job_id != job_id:
            return  # stale answer of a job already given up on
        if kind == "started":  # the function starts: its job_timeout counts from now
            slot.inflight[0].started = time.monotonic()
            return
        task = slot.inflight.popleft()
        slot.unread -= task.wire
        slot.unbatched -= not task.batched
        if slot.inflight:
            self._start(slot.inflight[0])
        outcome: Settle
        if kind == "skipped" or task.cancel_why is not None:
            outcome = self._cancelled_outcome(task.launch)
        elif slot.host is not None:
            _, _, ok, payload, lines, start, end = msg
            if type(start) is float and type(end) is float:  # the worker's clock
                self._policy.record(task.launch.fid, end - start)
            outcome = partial(decode_outcome, task.launch, ok, payload, lines, start, end,
                              slot.pid)
        else:
            assert slot.stdio is not None
            outcome = slot.stdio.deferred_outcome(task.launch, msg)
        self._finish(task, outcome, done)
        # the loop sends more on its next turn, to idle workers first

    def _on_worker_exit(self, slot: Slot, done: list) -> None:
        if not slot.inflight:
            self._drop_slot(slot)
            self._stop_slot(slot, graceful=False)
            return
        head = slot.inflight[0]
        self._policy.slow(head.launch.fid)
        outcome: Settle
        if slot.host is not None:
            slot.host.join(1)
            code = slot.host.exitcode
            now = time.time()
            started = now - (time.monotonic() - head.head_at) if head.head_at else None
            outcome = Outcome(False, error=WorkerCrashedError(
                f"the worker process (pid {slot.pid}) running job {head.launch.label!r} died: "
                f"{describe_exit(code)}. The worker was replaced; other jobs go on.",
                job_label=head.launch.label), start_time=started, end_time=now,
                info={"worker_pid": slot.pid, "exit_code": code})
        else:
            # made on an I/O thread: it waits for the worker to exit, to say why it did
            outcome = partial(slot.stdio.crash_outcome, head.launch)  # type: ignore[union-attr]
        self._kill_slot(slot, done, head_outcome=outcome)

