"""Capture of the Python-level console output of a block of code.

:class:`ConsoleCapture` swaps ``sys.stdout`` and ``sys.stderr`` for writers that record every
line (with its time and the stream it came from) and, optionally, echo it to the original
stream. It is what a locally executed job uses to fill ``runtime_info["console_out"]``.

Limits, shared by any ``sys.stdout`` swap:

* only writes made through the Python objects ``sys.stdout`` / ``sys.stderr`` are seen. Output
  of subprocesses, of C extensions and of anything else writing to file descriptors 1 and 2
  goes straight to the terminal and is not recorded (``ShellScript(...,
  redirect_output_to_stdout=True)`` re-emits a script's output through ``sys.stdout`` so it
  can be captured);
* the swap is process-wide: writes from every thread during the block are recorded, and two
  captures active at the same time in different threads would steal each other's streams.
  Nesting captures in one thread is fine (the inner one echoes into the outer one).
"""

from __future__ import annotations

import io
import sys
import threading
import time
from types import TracebackType
from typing import Any, TextIO

__all__ = ["ConsoleCapture"]


class _CaptureStream(io.TextIOBase):
    """A text stream that forwards everything written to a :class:`ConsoleCapture`."""

    def __init__(self, capture: ConsoleCapture, is_stderr: bool, original: TextIO) -> None:
        super().__init__()
        self._capture = capture
        self._is_stderr = is_stderr
        self._original = original

    @property
    def encoding(self) -> str:  # type: ignore[override]
        """The encoding of the original stream (``"utf-8"`` when it has none)."""
        return getattr(self._original, "encoding", None) or "utf-8"

    @property
    def errors(self) -> str | None:  # type: ignore[override]
        """The error handler of the original stream."""
        return getattr(self._original, "errors", None)

    def readable(self) -> bool:
        """Always False."""
        return False

    def writable(self) -> bool:
        """Always True."""
        return True

    def seekable(self) -> bool:
        """Always False."""
        return False

    def isatty(self) -> bool:
        """Always False: the captured stream is not a terminal."""
        return False

    def fileno(self) -> int:
        """Raise :class:`io.UnsupportedOperation`: there is no file descriptor behind it."""
        raise io.UnsupportedOperation("captured console stream has no file descriptor")

    def write(self, s: str) -> int:
        """Record ``s`` (complete lines at once, a trailing partial line is buffered)."""
        if not isinstance(s, str):
            raise TypeError(f"write() argument must be str, not {type(s).__name__}")
        if not self._capture._feed(s, self._is_stderr):
            # the block is over but someone kept a reference to this stream: pass it on
            self._original.write(s)
        return len(s)

    def flush(self) -> None:
        """Flush the original stream (a buffered partial line stays buffered)."""
        try:
            self._original.flush()
        except (OSError, ValueError, AttributeError):
            pass

    def close(self) -> None:
        """Do nothing: the capture owns this stream and it must stay usable."""


class ConsoleCapture:
    """Record the lines written to ``sys.stdout`` and ``sys.stderr`` inside a ``with`` block.

    Each line is recorded as ``{"timestamp": float, "text": str, "stderr": bool}``, where
    ``timestamp`` is ``time.time()`` when the line was completed and ``stderr`` tells which
    stream it was written to. Lines of both streams are kept in one list, in the order they
    were completed.

    Line splitting: text is split on ``"\\n"`` (a ``"\\r"`` just before it is dropped). A write
    that does not end with a newline is buffered, per stream, until the newline arrives or the
    block ends. Every explicit newline ends a line, so ``print()`` records an empty line
    ``""``; no empty line is invented for a block that ends on a newline.

    With ``show_console=True`` every completed line is also written to the stream that was
    active when the block was entered (stdout lines to stdout, stderr lines to stderr), with
    ``prefix`` in front when it is given, e.g. ``prefix="[myjob] "``.

    The original streams are restored when the block exits, also when it raises. An instance
    is single-use. See the module docstring for what is *not* captured (output written to file
    descriptors 1/2 directly, e.g. by subprocesses) and for thread caveats.

    Example::

        with ConsoleCapture(label="job", show_console=False) as cc:
            print("hello")
        cc.runtime_info()["console_out"]["lines"][0]["text"]  # "hello"
    """

    def __init__(self, label: str = "", show_console: bool = True, prefix: str | None = None):
        self.label = label
        self.show_console = show_console
        self.prefix = prefix
        self._lock = threading.RLock()
        self._lines: list[dict[str, Any]] = []
        self._partial: dict[bool, str] = {False: "", True: ""}
        self._start_time: float | None = None
        self._end_time: float | None = None
        self._orig_stdout: TextIO | None = None
        self._orig_stderr: TextIO | None = None
        self._active = False

    def __enter__(self) -> ConsoleCapture:
        if self._start_time is not None:
            raise RuntimeError("a ConsoleCapture can only be entered once")
        self._orig_stdout = sys.stdout
        self._orig_stderr = sys.stderr
        self._start_time = time.time()
        self._active = True
        sys.stdout = _CaptureStream(self, False, self._orig_stdout)
        sys.stderr = _CaptureStream(self, True, self._orig_stderr)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            with self._lock:
                for is_stderr in (False, True):
                    rest = self._partial[is_stderr]
                    self._partial[is_stderr] = ""
                    if rest:
                        self._emit(rest, is_stderr)
        finally:
            assert self._orig_stdout is not None and self._orig_stderr is not None
            with self._lock:
                sys.stdout = self._orig_stdout
                sys.stderr = self._orig_stderr
                self._end_time = time.time()
                self._active = False

    # -- recording ---------------------------------------------------------------------------

    def _feed(self, s: str, is_stderr: bool) -> bool:
        """Record ``s``; False (nothing recorded) once the block is over."""
        with self._lock:
            if not self._active:
                return False
            pieces = (self._partial[is_stderr] + s).split("\n")
            self._partial[is_stderr] = pieces.pop()
            for piece in pieces:
                self._emit(piece[:-1] if piece.endswith("\r") else piece, is_stderr)
        return True

    def _emit(self, text: str, is_stderr: bool) -> None:
        self._lines.append({"timestamp": time.time(), "text": text, "stderr": is_stderr})
        if not self.show_console:
            return
        target = self._orig_stderr if is_stderr else self._orig_stdout
        if target is None:
            return
        line = (self.prefix or "") + text + "\n"
        try:  # echoing is best effort: the record above is what counts
            target.write(line)
            target.flush()
        except (OSError, ValueError):
            pass

    # -- results -----------------------------------------------------------------------------

    @property
    def lines(self) -> list[dict[str, Any]]:
        """A copy of the lines recorded so far (a buffered partial line is not included)."""
        with self._lock:
            return [dict(line) for line in self._lines]

    def runtime_info(self) -> dict[str, Any]:
        """Timing and console output of the block.

        Returns ``{"start_time", "end_time", "elapsed_sec", "console_out": {"label",
        "lines"}}``; times are ``time.time()`` values. Called inside the block, ``end_time`` is
        the current time.

        Raises:
            RuntimeError: if the capture was never entered.
        """
        if self._start_time is None:
            raise RuntimeError("ConsoleCapture.runtime_info() called before the block started")
        end_time = self._end_time if self._end_time is not None else time.time()
        return {
            "start_time": self._start_time,
            "end_time": end_time,
            "elapsed_sec": end_time - self._start_time,
            "console_out": {"label": self.label, "lines": self.lines},
        }
