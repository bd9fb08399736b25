"""Live progress of a pipeline: jobs done, running, cached and failed; elapsed time; ETA.

A *session* starts with the first job created while no other job is live, and ends when no
job is live any more. Its display appears once the session has more than a few jobs or
has lasted about a second, and is drawn by a thread of its own (never by the code that
runs jobs): with rich in a terminal, with ipywidgets (or an updating HTML output) in
Jupyter. Lines a job prints live (``show_console``) are written above the display, never
through it.

Job output echoed live goes through :func:`echo`, which prints above the display while
one is up. On by default when the output is a terminal or a notebook; off otherwise. ``hi.Config(
progress=False)`` or ``HITHER_PROGRESS=0`` turns it off, ``progress=True`` forces it on.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

#: a session is shown once it has more jobs than this, or has lasted SHOW_AFTER seconds
SHOW_JOBS = 3
SHOW_AFTER = 1.0
_REFRESH = 0.25
_MIN_FRAME = 0.02
_LOG = logging.getLogger(__name__)


@dataclass
class Counts:
    """Where the jobs of a session are."""

    total: int = 0
    done: int = 0
    cached: int = 0
    failed: int = 0
    cancelled: int = 0
    running: int = 0

    def eta(self, elapsed: float) -> float | None:
        """Seconds left at the pace so far (None before the first job finishes)."""
        ran = self.done - self.cached
        left = self.total - self.done - self.failed - self.cancelled
        if ran <= 0 or left <= 0:
            return None
        return elapsed / ran * left

    def text(self, elapsed: float) -> str:
        """A one-line summary."""
        eta = self.eta(elapsed)
        parts = [f"{self.done + self.failed + self.cancelled}/{self.total} jobs",
                 f"{self.running} running", f"{self.cached} cached", f"{self.failed} failed"]
        if self.cancelled:
            parts.append(f"{self.cancelled} cancelled")
        parts.append(_clock(elapsed))
        if eta is not None:
            parts.append(f"ETA {_clock(eta)}")
        return ", ".join(parts)


def _clock(sec: float) -> str:
    sec = int(sec + 0.5)
    h, rest = divmod(sec, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def enabled(setting: bool | None) -> bool:
    """Whether a job created with ``Config(progress=setting)`` is shown."""
    if setting is not None:
        return setting
    env = os.environ.get("HITHER_PROGRESS", "").strip().lower()
    if env in ("0", "false", "no", "off"):
        return False
    if env in ("1", "true", "yes", "on"):
        return True
    return _in_notebook() or _is_terminal()


def _is_terminal() -> bool:
    try:
        return sys.stdout.isatty() and os.environ.get("TERM") != "dumb"
    except (AttributeError, ValueError):
        return False


def _in_notebook() -> bool:
    ip = sys.modules.get("IPython")
    if ip is None:
        return False
    try:
        shell = ip.get_ipython()  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001
        return False
    return shell is not None and getattr(shell, "kernel", None) is not None


class Tracker:
    """Counts the jobs of the current session and runs its display."""

    def __init__(self, running: Callable[[], int], make_display: Callable[[], Any] | None = None
                 ) -> None:
        self._running = running
        self._make_display = make_display
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._counts = Counts()
        self._live = 0
        self._start = 0.0
        self._thread: threading.Thread | None = None
        self._session = 0
        # every change of the counts moves _version on; the display thread sets _drawn to the
        # version of the snapshot it has just dealt with, so settle() and the thread's own end
        # know whether the display shows the counts as they are
        self._version = 0
        self._drawn = 0

    def created(self) -> None:
        """A job of a shown pipeline was created."""
        with self._lock:
            if self._live == 0 and self._thread is None:
                self._counts = Counts()
                self._start = time.monotonic()
                self._session += 1
                self._thread = threading.Thread(target=self._run, args=(self._session,),
                                                name="hither-progress", daemon=True)
                self._thread.start()
            self._live += 1
            self._counts.total += 1
            self._version += 1

    def completed(self, status: str, cache_hit: bool) -> None:
        """A job of a shown pipeline completed (``status``: finished, error, cancelled)."""
        with self._lock:
            self._live -= 1
            if self._live == 0:
                self._changed.notify_all()  # draw the last frame now
            self._version += 1
            c = self._counts
            if status == "finished":
                c.done += 1
                c.cached += cache_hit
            elif status == "cancelled":
                c.cancelled += 1
            else:
                c.failed += 1

    def snapshot(self) -> tuple[Counts, float, bool]:
        """The counts now, the elapsed time, and whether the session is over."""
        counts, elapsed, over, _ = self._snapshot()
        return counts, elapsed, over

    def _snapshot(self) -> tuple[Counts, float, bool, int]:
        with self._lock:
            c = Counts(**vars(self._counts))
            over = self._live == 0
            elapsed = time.monotonic() - self._start
            version = self._version
        c.running = 0 if over else self._running()
        return c, elapsed, over, version

    #: the longest settle() waits for a frame (drawing one takes milliseconds)
    SETTLE_SECONDS = 1.0

    def settle(self, timeout: float | None = None) -> None:
        """Once no job is live, wait (at most ``timeout`` seconds, default
        :attr:`SETTLE_SECONDS`) until the display shows the final counts: what the caller
        prints next then comes after the last frame, not through it (in Jupyter a frame
        sent while a line is being printed splits the line)."""
        deadline = time.monotonic() + (self.SETTLE_SECONDS if timeout is None else timeout)
        with self._lock:
            while self._thread is not None and self._live == 0 \
                    and self._drawn != self._version:
                self._changed.notify_all()  # the display thread draws now, not at its tick
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return
                self._changed.wait(remaining)

    def _run(self, session: int) -> None:
        display = None
        broken = False  # the display failed: counted on, shown no more in this session
        try:
            while True:
                counts, elapsed, over, version = self._snapshot()
                try:
                    if display is None and not broken and (
                            (not over and counts.total > SHOW_JOBS) or elapsed >= SHOW_AFTER):
                        display = (self._make_display or _default_display)()
                        _displays.add(display)
                        display.start()
                    if display is not None:
                        display.update(counts, elapsed)
                except Exception as e:  # noqa: BLE001 - progress never breaks a pipeline
                    _LOG.warning("hither progress display failed, not shown any more: %s", e)
                    broken = True
                    if display is not None:
                        _displays.discard(display)
                        _stop(display)
                        display = None
                with self._lock:
                    self._drawn = version
                    self._changed.notify_all()  # settle() waits for this
                    if self._live == 0 and self._version == version:  # the final frame
                        # a pipeline often creates its next jobs at once: linger a moment
                        self._changed.wait(_REFRESH)
                        if self._live == 0 and self._version == version:
                            self._thread = None
                            break
                    else:
                        # the next frame at the next tick, or when the session ends or
                        # settle() asks: so the last frame of a session is never stale
                        self._changed.wait(_REFRESH)
                # at most one frame per _MIN_FRAME, however often jobs come and go (a
                # replay of cache hits ends a session at every job)
                time.sleep(_MIN_FRAME)
        finally:
            with self._lock:
                if self._thread is threading.current_thread():  # ended by an error
                    self._thread = None
                self._changed.notify_all()
            if display is not None:
                _displays.discard(display)
                _stop(display)


# ----------------------------------------------------------------------------- displays
_displays: set[Any] = set()


def _stop(display: Any) -> None:
    try:
        display.stop()
    except Exception:  # noqa: BLE001 - best effort
        _LOG.debug("stopping the progress display failed", exc_info=True)


@atexit.register
def _stop_displays() -> None:
    """Leave the terminal clean when the program ends while a display is up."""
    for display in list(_displays):
        _stop(display)

class _RichDisplay:
    """A rich progress bar at the bottom of the terminal; printed lines go above it."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.live import Live

        # no redirection of sys.stdout: jobs swap it while they run (console capture)
        self._console = Console(file=sys.__stdout__ or sys.stdout)
        self._live = Live(console=self._console, refresh_per_second=4, transient=False,
                          redirect_stdout=False, redirect_stderr=False)

    def print(self, text: str) -> None:
        self._console.print(text, end="", markup=False, highlight=False, soft_wrap=True)

    def start(self) -> None:
        self._live.start()

    def update(self, counts: Counts, elapsed: float) -> None:
        from rich.progress_bar import ProgressBar
        from rich.table import Table

        grid = Table.grid(padding=(0, 1))
        finished = counts.done + counts.failed + counts.cancelled
        grid.add_row(ProgressBar(total=max(counts.total, 1), completed=finished, width=20),
                     f"[bold]hither[/] {counts.text(elapsed)}")
        self._live.update(grid, refresh=True)

    def stop(self) -> None:
        self._live.stop()


class _NotebookDisplay:
    """ipywidgets when installed, else an HTML output updated in place."""

    def __init__(self) -> None:
        from IPython.display import HTML, display

        self._html = HTML
        try:
            import ipywidgets

            self._bar = ipywidgets.IntProgress(min=0, max=1, description="hither")
            self._label = ipywidgets.HTML()
            self._box = ipywidgets.HBox([self._bar, self._label])
            self._handle = None
            self._show = lambda: display(self._box)
        except ImportError:
            self._bar = None
            self._handle = display(HTML("hither: starting"), display_id=True)
            self._show = lambda: None

    def start(self) -> None:
        self._show()

    def update(self, counts: Counts, elapsed: float) -> None:
        import html

        text = html.escape(counts.text(elapsed))
        finished = counts.done + counts.failed + counts.cancelled
        if self._bar is not None:
            self._bar.max = max(counts.total, 1)
            self._bar.value = finished
            self._label.value = f"<code>{text}</code>"
        elif self._handle is not None:
            pct = 100 * finished / max(counts.total, 1)
            self._handle.update(self._html(
                f'<div><progress value="{pct:.0f}" max="100"></progress> '
                f"<code>hither {text}</code></div>"))

    def print(self, text: str) -> None:
        sys.stdout.write(text)

    def stop(self) -> None:
        pass


def echo(text: str, out: Any = None) -> None:
    """Write a job's live console text: above the progress display while one is up, else
    to ``out`` (default: the caller's standard output, not a job's captured one)."""
    for display in list(_displays):
        display.print(text)
        return
    out = out or _stdout()
    out.write(text)
    out.flush()


def _stdout() -> Any:
    out: Any = sys.stdout
    while getattr(out, "replaced", None) is not None:  # an inline job captures its console
        out = out.replaced
    return out


class EchoStream:
    """A writable stream that goes through :func:`echo` (default target: the standard
    output when the stream was made)."""

    def __init__(self) -> None:
        self._out = _stdout()

    def write(self, text: str) -> int:
        echo(text, self._out)
        return len(text)

    def flush(self) -> None:
        pass


def _default_display() -> Any:
    return _NotebookDisplay() if _in_notebook() else _RichDisplay()
