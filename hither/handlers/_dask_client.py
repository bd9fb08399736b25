"""The client side of :class:`~hither.handlers.dask.DaskJobHandler` besides the handler
itself: what it keeps of each job (:class:`Task`), its two threads (the submitter, which
hands the jobs made ready meanwhile to dask in one graph update, and the collector, which
settles the jobs whose dask futures completed), and the reading of the tasks' answers."""

from __future__ import annotations

import pickle
import time
import traceback
from concurrent.futures import Future
from typing import Any

from ..errors import UnreadableResultError
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


def collect(ref: Any, ac: Any, client: Any) -> None:
    """The collector thread: fetches the results of the dask futures completed since its
    last round in one call (one request per job would cost more than the job), and hands
    them to its handler's I/O threads."""
    mark_io_thread()
    ready = ac.thread_condition  # notified by as_completed as each future completes
    while True:
        handler = ref()
        if handler is None or handler._stopped:
            return
        io = handler._io
        done = handler._done
        by_key = handler._by_key
        del handler
        with ready:
            if not ac.has_ready():
                ready.wait(0.5)
        try:
            batch = ac.next_batch(block=False)
        except Exception:  # noqa: BLE001 - keep collecting
            traceback.print_exc()
            time.sleep(0.1)
            continue
        # only keys and results are kept: a dask future kept alive keeps its result in a
        # dask worker's memory (and a worker holding data cannot be retired)
        done_now = results(client, batch, by_key)
        del batch
        half = (len(done_now) + 1) // 2  # one share per I/O thread, not one call per job
        for share in (done_now[:half], done_now[half:]):
            if not share:
                continue
            try:
                io.submit(settle_all, done, share)
            except RuntimeError:  # the handler stopped: settle here
                settle_all(done, share)


def settle_all(done: Any, share: list[tuple[str, str, Any]]) -> None:
    for key, status, result in share:
        try:
            done(key, status, result)
        except Exception:  # noqa: BLE001 - the others are settled all the same
            traceback.print_exc()


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


def results(client: Any, futures: list[Any], by_key: dict[str, Task]
             ) -> list[tuple[str, str, Any]]:
    """(key, status, result or exception) of completed dask futures: the answer that came
    with the task's event, else fetched from dask (all in one call)."""
    fetched: dict[str, Any] = {}
    finished = []
    for f in futures:
        if f.status == "finished":
            task = by_key.get(f.key)
            if task is not None and task.reply is not None:
                fetched[f.key] = FromEvent(task.reply)
            else:
                finished.append(f)
    if len(finished) > 1:
        try:
            fetched.update(zip([f.key for f in finished], client.gather(finished),
                               strict=True))
        except Exception:  # noqa: BLE001 - one by one below (a result was lost meanwhile)
            pass
    out = []
    for fut in futures:
        status = fut.status
        try:
            if fut.key in fetched:
                status, result = "finished", fetched[fut.key]
            elif status == "finished":
                result = fut.result(timeout=60)
            elif status == "error":
                result = fut.exception(timeout=60)
            else:
                result = None
        except Exception as e:  # noqa: BLE001 - e.g. its worker died meanwhile
            status, result = "error", e
        out.append((fut.key, status, result))
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
