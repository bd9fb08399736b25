"""The client side of :class:`~hither.handlers.dask.DaskJobHandler` besides the handler
itself: what it keeps of each job (:class:`Task`), its two threads (the submitter, which
hands the jobs made ready meanwhile to dask in one graph update, and the collector, which
watches the dask futures), and the reading of the tasks' answers."""

from __future__ import annotations

import os
import pickle
import time
import traceback
from concurrent.futures import Future
from typing import Any

from ..errors import HitherError, UnreadableResultError, WorkerCrashedError
from ..launch import Launch, Outcome
from . import _dask_wire as W
from .base import mark_io_thread


class Task:
    """What the handler keeps of one job until it is settled."""

    __slots__ = ("launch", "future", "key", "xfer", "dask", "worker", "cancel_why",
                 "files", "reply")

    def __init__(self, launch: Launch, key: str, xfer: str) -> None:
        self.launch = launch
        self.future: Future[Outcome] = Future()
        self.key = key
        self.xfer = xfer
        self.dask: Any = None  # the dask future
        self.worker: str | None = None  # the dask worker running it (from its event)
        self.cancel_why: str | None = None
        self.files = False  # it wrote an argument file
        self.reply: bytes | None = None  # the answer that came with its "done" event


def task_outcome(task: Task, status: str, result: Any) -> Outcome:
    """The outcome of a task dask says ended with ``status`` and ``result``: its answer
    (read back from the store when spilled), or the error dask reports."""
    launch = task.launch
    if status == "finished":
        reply = result
        if isinstance(reply, W.Spilled):
            try:
                path = os.path.join(task.xfer, reply.name)
                reply = pickle.loads(W.read_file(path))
            except Exception as e:  # noqa: BLE001
                return Outcome(False, error=UnreadableResultError(
                    f"the answer of job {launch.label!r} could not be read back from the "
                    f"store: {type(e).__name__}: {e}", job_label=launch.label))
        if reply is None:  # the task sent its answer with an event that never came
            return Outcome(False, error=UnreadableResultError(
                f"the answer of job {launch.label!r} was lost on its way from the dask "
                "worker (its \"done\" event never reached this client)",
                job_label=launch.label))
        return reply_outcome(launch, reply)
    if status == "error":
        exc = result[1] if isinstance(result, tuple) and len(result) > 1 else result
        if type(exc).__name__ == "KilledWorker":
            return Outcome(False, error=WorkerCrashedError(
                f"the dask workers running job {launch.label!r} died ({exc}); hither "
                "does not run it again.", job_label=launch.label))
        if isinstance(exc, BaseException):
            return Outcome(False, error=exc)
        return Outcome(False, error=HitherError(f"dask failed job {launch.label!r}: {exc}"))
    return Outcome(False, error=WorkerCrashedError(
        f"dask dropped job {launch.label!r} ({status}: {result}): the scheduler or the "
        "connection to it was lost.", job_label=launch.label))


def reply_outcome(launch: Launch, reply: Any) -> Outcome:
    """The Outcome of a job from its task's reply."""
    if isinstance(reply, Outcome):
        return reply
    if isinstance(reply, W.HostReply):
        from .host import decode_outcome

        out = decode_outcome(launch, reply.ok, reply.payload, reply.lines, reply.start,
                             reply.end, reply.pid)
        out.info["dask_worker"] = reply.worker
        return out
    if isinstance(reply, W.RuntimeReply):
        from .stdio import outcome_of

        return outcome_of(launch, reply.msg, reply.stderr, reply.info)
    return Outcome(False, error=UnreadableResultError(
        f"job {launch.label!r}: its dask task answered with a {type(reply).__name__}, not a "
        "hither reply", job_label=launch.label))


def submit_loop(ref: Any) -> None:
    """The submitter thread: hands the jobs submitted since its last round to dask at once
    (one graph update instead of one per job; jobs are never held back to fill a batch)."""
    while True:
        handler = ref()
        if handler is None:
            return
        with handler._wake:
            if not handler._pending and not handler._stopped:
                handler._wake.wait(0.5)
            batch, handler._pending = handler._pending, []
            stopped = handler._stopped
        if batch:
            handler._submit_batch(batch)
        elif stopped:
            return
        del handler, batch


#: seconds between two looks at the dask futures still held
SCAN_EVERY = 0.1


def collect(ref: Any, client: Any) -> None:
    """The collector thread: every ``SCAN_EVERY`` seconds, looks at the dask futures still
    held. A finished one whose job was answered by its event is released (and its claim
    removed); one that failed, was cancelled or lost, or that finished with no event,
    settles its job from what dask says (on the handler's I/O threads). No per-future
    callback or ``as_completed`` tracking: those cost more client time than a tiny job."""
    mark_io_thread()
    while True:
        handler = ref()
        if handler is None or handler._stopped:
            return
        with handler._lock:
            handler._scan_wake.wait(SCAN_EVERY if handler._by_key else 0.5)
        try:
            over = handler._ended_tasks()
            if over:
                hand_out(handler._io, handler._done_all, results(client, over))
        except Exception:  # noqa: BLE001 - keep collecting
            traceback.print_exc()
            time.sleep(0.1)
        del handler


def hand_out(io: Any, fn: Any, items: list[Any]) -> None:
    """``fn(share)`` on the executor ``io`` for ``items`` (a large batch in two halves),
    one call per share, not per job; here when the executor no longer takes work."""
    half = (len(items) + 1) // 2 if len(items) >= 64 else len(items)
    for share in (items[:half], items[half:]):
        if not share:
            continue
        try:
            io.submit(fn, share)
        except RuntimeError:  # the handler stopped: settle here
            fn(share)


class FromEvent:
    """A task's answer as its "done" event brought it (pickled)."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def load(self, label: str) -> tuple[str, Any]:
        """("finished", the answer), or ("error", why it cannot be read)."""
        try:
            return "finished", pickle.loads(self.data)
        except Exception as e:  # noqa: BLE001 - any garbage fails the job, not the handler
            return "error", UnreadableResultError(
                f"the answer of job {label!r} could not be read: {type(e).__name__}: {e}",
                job_label=label)


def results(client: Any, tasks: list[Task]) -> list[tuple[Task, str, Any]]:
    """(task, status, result or exception) of tasks whose dask futures are no longer
    pending and that had no answer by event: the results of finished ones fetched from
    dask in one call."""
    finished = [t for t in tasks if t.dask.status == "finished"]
    fetched: dict[str, Any] = {}
    if len(finished) > 1:
        try:
            fetched.update(zip([t.key for t in finished],
                               client.gather([t.dask for t in finished]), strict=True))
        except Exception:  # noqa: BLE001 - one by one below (a result was lost meanwhile)
            pass
    out = []
    for task in tasks:
        fut = task.dask
        status = fut.status
        try:
            if task.key in fetched:
                status, result = "finished", fetched[task.key]
            elif status == "finished":
                result = fut.result(timeout=60)
            elif status == "error":
                result = fut.exception(timeout=60)
            else:
                result = None
        except Exception as e:  # noqa: BLE001 - e.g. its worker died meanwhile
            status, result = "error", e
        out.append((task, status, result))
    return out


def exit_hook(ref: Any) -> Any:
    def at_exit() -> None:
        handler = ref()
        if handler is not None:
            try:
                handler.shutdown(wait=False, cancel=True)
            except Exception:  # noqa: BLE001 - best effort at interpreter exit
                pass

    return at_exit
