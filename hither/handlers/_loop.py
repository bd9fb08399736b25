"""The event loop of a worker pool, and what it shares with its handler.

The loop thread only moves bytes: it waits on the workers' pipes and on a wake-up pipe,
and hands each event to the handler. What takes time (turning an answer into a result,
starting or stopping a worker, completing futures, which runs the engine's callbacks)
goes to the pool's I/O threads. The loop holds its handler only weakly while it waits, so
a handler dropped without ``shutdown()`` is collected: its workers are killed and the
loop ends, closing its file descriptors.
"""

from __future__ import annotations

import os
import selectors
import threading
import traceback
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from .base import mark_io_thread


class Pool(Protocol):
    """What the loop asks of its handler on each turn."""

    def _prepare(self) -> float | None:
        """Send what can be sent; returns how long the loop may wait (None: no limit)."""

    def _handle(self, events: list[tuple[selectors.SelectorKey, int]]) -> None:
        """Handle the events of one wait."""

    def _fail_all(self, error: BaseException) -> None:
        """The loop broke: fail what was in hand."""


class Shared:
    """State owned jointly by a handler and its loop thread: the selector, the wake-up
    pipe, the I/O threads and the list of workers (so it can be cleaned up without the
    handler)."""

    def __init__(self) -> None:
        self.sel = selectors.DefaultSelector()
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        self.sel.register(self.wake_r, selectors.EVENT_READ, None)
        self.io = ThreadPoolExecutor(max_workers=2, thread_name_prefix="hither-io",
                                     initializer=mark_io_thread)
        self.slots: list[Any] = []
        self.stop = False
        self.thread: threading.Thread | None = None
        self._closed = False
        self._woken = False
        self._later: list[Any] | None = None
        self._later_lock = threading.Lock()
        self._close_lock = threading.Lock()

    def wake(self) -> None:
        """Make the loop's wait return."""
        if self._woken:  # a byte is waiting already: the loop's next turn sees the change
            return
        with self._close_lock:  # never write into a descriptor number reused since
            if self._closed:
                return
            self._woken = True
            try:
                os.write(self.wake_w, b"x")
            except OSError:
                pass

    def later(self, items: list[Any], run: Callable[[list[Any]], None]) -> None:
        """Call ``run(items)`` on an I/O thread. Items handed over while an earlier call
        still waits for its thread join that call: one task per burst of answers, not one
        per turn of the loop."""
        with self._later_lock:
            if self._later is not None:
                self._later.extend(items)
                return
            self._later = list(items)
        try:
            self.io.submit(self._run_later, run)
        except RuntimeError:  # the I/O threads are gone (shutdown): run here
            self._run_later(run)

    def _run_later(self, run: Callable[[list[Any]], None]) -> None:
        with self._later_lock:
            items, self._later = self._later, None
        if items:
            run(items)

    def drain_wake(self) -> None:
        """Read the wake-up bytes (in the loop, before its next turn looks at the state)."""
        self._woken = False
        try:
            while os.read(self.wake_r, 4096):
                pass
        except (BlockingIOError, OSError):
            pass

    def start(self, handler: Pool) -> None:
        """Start the loop thread (once)."""
        if self.thread is None:
            self.thread = threading.Thread(target=_run, args=(weakref.ref(handler), self),
                                           name="hither-parallel", daemon=True)
            self.thread.start()

    def close(self) -> None:
        """Release the selector and the wake-up pipe (when the loop has ended)."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
            self.sel.close()
            for fd in (self.wake_r, self.wake_w):
                try:
                    os.close(fd)
                except OSError:
                    pass
        self.io.shutdown(wait=False)


def _run(ref: Callable[[], Pool | None], shared: Shared) -> None:
    mark_io_thread()
    try:
        while not shared.stop:
            handler = ref()
            if handler is None:
                return
            try:
                timeout = handler._prepare()
            except Exception as e:  # noqa: BLE001 - keep serving; fail what was in hand
                traceback.print_exc()
                handler._fail_all(e)
                continue
            del handler  # not held while waiting: a dropped handler can be collected
            if shared.stop:
                return
            try:
                events = shared.sel.select(timeout)
            except (OSError, ValueError):
                return  # closed under us
            handler = ref()
            if handler is None:
                return
            try:
                handler._handle(events)
            except Exception as e:  # noqa: BLE001
                traceback.print_exc()
                handler._fail_all(e)
            del handler
    finally:
        shared.close()


def abandon(shared: Shared, stop_slot: Callable[[Any], None]) -> None:
    """A handler was collected without ``shutdown()``: kill its workers, end its loop."""
    shared.stop = True
    for slot in list(shared.slots):
        try:
            stop_slot(slot)
        except Exception:  # noqa: BLE001 - best effort at collection time
            pass
    shared.slots.clear()
    shared.wake()
    thread = shared.thread
    if thread is None:
        shared.close()
