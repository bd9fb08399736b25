"""Run a shell script (given as text) in its own process group, and stop it promptly."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from types import TracebackType
from typing import IO

from .tempdir import default_temp_base

__all__ = ["ShellScript"]

_INDENT_ERROR = "Problem in script. First line must not be indented relative to others"

#: How long ``stop()`` lets the process group react to SIGTERM before SIGKILL.
_STOP_GRACE_SEC = 1.0
#: How long ``wait()`` waits for the output relay to drain after the script exited.
_PUMP_DRAIN_SEC = 1.0


def _dedent(script: str) -> str:
    """Apply hither's dedent rule (see :class:`ShellScript`)."""
    lines = script.splitlines()
    while lines and not lines[0].strip():
        lines.pop(0)
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        return ""
    first = lines[0]
    indent = first[: len(first) - len(first.lstrip())]
    out: list[str] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            out.append("")
        elif line.startswith(indent):
            out.append(line[len(indent) :])
        else:
            raise ValueError(f"{_INDENT_ERROR} (line {number}: {line!r})")
    return "\n".join(out) + "\n"


def _group_alive(pgid: int) -> bool:
    """Whether the process group still has a member that is not a zombie."""
    if os.path.isdir("/proc/self"):
        try:
            entries = os.listdir("/proc")
        except OSError:
            entries = []
        for entry in entries:
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    data = f.read()
            except OSError:
                continue
            fields = data[data.rfind(b")") + 2 :].split()
            # fields: state, ppid, pgrp, ...
            if len(fields) > 2 and int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
                return True
        if entries:
            return False
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_dir(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)


class ShellScript:
    """A shell script given as text, written to a file and run as its own process group.

    The text is dedented: leading and trailing blank lines are dropped, and the indentation of the first
    non-blank line is removed from every line, so scripts can be written as indented
    triple-quoted strings. A non-blank line indented less than the first one raises
    :class:`ValueError` ("Problem in script. First line must not be indented relative to
    others"). Blank lines become empty.

    :meth:`start` writes the script (mode 0o744; to ``script_path`` or to a file in a fresh
    temporary folder) and executes it directly, so its first line must be a shebang such as
    ``#!/bin/bash``. The script runs in a new session (``start_new_session=True``), hence in its
    own process group, which :meth:`stop` and :meth:`kill` signal as a whole: children such as a
    ``sleep`` the script is waiting on are stopped with it. Its stdin is ``/dev/null``; stdout
    and stderr are inherited, unless ``redirect_output_to_stdout`` is set: then both go through
    a pipe and are re-written line by line to Python's *current* ``sys.stdout`` (so a
    :class:`~hither.utils.ConsoleCapture` around the run records them).

    With ``docker_container_name``, :meth:`stop` first runs ``docker kill <name>``, then stops
    the process group as usual.

    The temporary folder is removed by :meth:`cleanup` (also on context exit and when the
    object is garbage-collected) unless ``keep_temp_files``; a ``script_path`` chosen by the
    caller is never deleted. Used as a context manager, the script is stopped on exit if it is
    still running.

    Example::

        with ShellScript('''
            #!/bin/bash
            echo hello
        ''') as ss:
            ss.start()
            assert ss.wait() == 0
    """

    def __init__(
        self,
        script: str,
        script_path: str | None = None,
        keep_temp_files: bool = False,
        verbose: bool = False,
        label: str = "",
        docker_container_name: str | None = None,
        redirect_output_to_stdout: bool = False,
    ):
        self._script = _dedent(script)
        self._script_path = script_path
        self._keep_temp_files = keep_temp_files
        self._verbose = verbose
        self._label = label
        self._docker_container_name = docker_container_name
        self._redirect_output_to_stdout = redirect_output_to_stdout
        self._process: subprocess.Popen[bytes] | None = None
        self._start_time: float | None = None
        self._temp_dir: str | None = None
        self._finalizer: weakref.finalize | None = None
        self._pump: threading.Thread | None = None

    # -- script text -------------------------------------------------------------------------

    @property
    def script(self) -> str:
        """The (dedented, substituted) script text."""
        return self._script

    def substitute(self, old: str, new: str) -> None:
        """Replace every occurrence of ``old`` by ``new`` in the script text (before start)."""
        self._script = self._script.replace(old, new)

    def write(self, path: str) -> None:
        """Write the script text to ``path`` and make it executable (mode 0o744)."""
        with open(path, "w", encoding="utf-8") as f:
            f.write(self._script)
        os.chmod(path, 0o744)

    # -- running -----------------------------------------------------------------------------

    def start(self) -> None:
        """Write the script and start it in a new session / process group.

        Raises:
            ValueError: if the first line is not a shebang (``#!...``).
            RuntimeError: if the script was already started.
        """
        if self._process is not None:
            raise RuntimeError("ShellScript.start() called twice")
        if not self._script.startswith("#!"):
            first = self._script.split("\n", 1)[0]
            raise ValueError(
                f"Problem in script. The first line must be a shebang such as '#!/bin/bash', "
                f"got {first!r}"
            )
        if self._script_path is None:
            self._temp_dir = tempfile.mkdtemp(prefix="hither_script_", dir=default_temp_base())
            if not self._keep_temp_files:
                self._finalizer = weakref.finalize(self, _remove_dir, self._temp_dir)
            self._script_path = os.path.join(self._temp_dir, "script.sh")
        self.write(self._script_path)
        if self._verbose:
            label = f"[{self._label}] " if self._label else ""
            print(f"{label}running script {self._script_path}:\n{self._script}", flush=True)
        redirect = self._redirect_output_to_stdout
        self._process = self._popen(
            [self._script_path],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if redirect else None,
            stderr=subprocess.STDOUT if redirect else None,
            start_new_session=True,
        )
        self._start_time = time.monotonic()
        if redirect:
            assert self._process.stdout is not None
            self._pump = threading.Thread(
                target=self._relay_output,
                args=(self._process.stdout,),
                name=f"hither-shellscript-output-{self._process.pid}",
                daemon=True,
            )
            self._pump.start()

    @staticmethod
    def _popen(args: list[str], **kwargs: object) -> subprocess.Popen[bytes]:
        # A script just written may be briefly "busy" if another thread forked while our write
        # descriptor was open (ETXTBSY); that clears as soon as the forked child execs.
        delay = 0.005
        for _ in range(10):
            try:
                return subprocess.Popen(args, **kwargs)  # type: ignore[call-overload, no-any-return]
            except OSError as e:
                if e.errno != errno.ETXTBSY:
                    raise
            time.sleep(delay)
            delay = min(delay * 2, 0.2)
        return subprocess.Popen(args, **kwargs)  # type: ignore[call-overload, no-any-return]

    @staticmethod
    def _relay_output(stream: IO[bytes]) -> None:
        try:
            for raw in iter(stream.readline, b""):
                try:
                    sys.stdout.write(raw.decode("utf-8", errors="replace"))
                    sys.stdout.flush()
                except (OSError, ValueError):
                    pass
        finally:
            stream.close()

    def _require_started(self) -> subprocess.Popen[bytes]:
        if self._process is None:
            raise RuntimeError("the script has not been started")
        return self._process

    def wait(self, timeout: float | None = None) -> int | None:
        """Wait for the script to end; its exit code, or None if ``timeout`` (s) expired first.

        A script ended by a signal has a negative code (``-signal.SIGTERM`` etc.).
        """
        process = self._require_started()
        try:
            code = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        if self._pump is not None:
            # the relay ends when the pipe closes; a background child may keep it open
            self._pump.join(_PUMP_DRAIN_SEC)
        return code

    def _signal_group(self, sig: int) -> None:
        process = self._require_started()
        try:
            os.killpg(process.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def stopWithSignal(self, sig: int, timeout: float) -> bool:
        """Send ``sig`` to the script's process group; True if the script ended within ``timeout`` s.

        Returns True at once if the script is not running.
        """
        if self._process is None or self._process.poll() is not None:
            return True
        self._signal_group(sig)
        return self.wait(timeout) is not None

    def stop(self) -> None:
        """Stop the script and everything in its process group, promptly.

        With ``docker_container_name``, ``docker kill`` is run first. Then SIGTERM goes to the
        whole process group; whatever is still alive about one second later gets SIGKILL, so
        a bash script blocked in ``sleep`` ends at once. Does nothing if the script was never
        started or has already ended (its process group id may have been reused since then).
        """
        process = self._process
        if process is None or process.poll() is not None:
            return
        if self._docker_container_name:
            try:
                subprocess.run(
                    ["docker", "kill", self._docker_container_name],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    timeout=30,
                    check=False,
                )
            except (OSError, subprocess.SubprocessError):
                pass
            if self.wait(5.0) is not None:
                self._reap_group(time.monotonic() + _STOP_GRACE_SEC)
                return
        deadline = time.monotonic() + _STOP_GRACE_SEC
        if self.stopWithSignal(signal.SIGTERM, _STOP_GRACE_SEC):
            self._reap_group(deadline)
        else:
            self.kill()

    def _reap_group(self, deadline: float) -> None:
        # The leader has just ended; other members (children that trap or ignore SIGTERM,
        # background jobs) get until ``deadline``, then SIGKILL.
        pgid = self._require_started().pid
        while _group_alive(pgid) and time.monotonic() < deadline:
            time.sleep(0.02)
        if _group_alive(pgid):
            self._kill_group()

    def _kill_group(self) -> None:
        process = self._require_started()
        self._signal_group(signal.SIGKILL)
        self.wait(10.0)
        deadline = time.monotonic() + 2.0
        while _group_alive(process.pid) and time.monotonic() < deadline:
            time.sleep(0.02)

    def kill(self) -> None:
        """Send SIGKILL to the script's whole process group and wait for the script to end.

        Does nothing if the script was never started or has already ended.
        """
        process = self._process
        if process is None or process.poll() is not None:
            return
        self._kill_group()

    # -- state -------------------------------------------------------------------------------

    def isRunning(self) -> bool:
        """True if the script was started and has not ended."""
        return self._process is not None and self._process.poll() is None

    def isFinished(self) -> bool:
        """True if the script was started and has ended."""
        return self._process is not None and self._process.poll() is not None

    def returnCode(self) -> int:
        """The script's exit code (negative when ended by a signal).

        Raises:
            RuntimeError: if the script was not started or is still running.
        """
        process = self._require_started()
        code = process.poll()
        if code is None:
            raise RuntimeError("cannot get the return code: the script is still running")
        return code

    def elapsedTimeSinceStart(self) -> float | None:
        """Seconds since :meth:`start` (still counting after the script ended); None before
        :meth:`start`, as in hither 0.4.2."""
        if self._start_time is None:
            return None
        return time.monotonic() - self._start_time

    def scriptPath(self) -> str | None:
        """Where the script is (or will be) written; None before start without ``script_path``."""
        return self._script_path

    def cleanup(self) -> None:
        """Remove the temporary folder holding the script, unless ``keep_temp_files``."""
        if self._finalizer is not None:
            self._finalizer()  # runs once; removes the folder
            self._finalizer = None

    # -- snake_case aliases ------------------------------------------------------------------

    def is_running(self) -> bool:
        """Alias of :meth:`isRunning`."""
        return self.isRunning()

    def is_finished(self) -> bool:
        """Alias of :meth:`isFinished`."""
        return self.isFinished()

    def return_code(self) -> int:
        """Alias of :meth:`returnCode`."""
        return self.returnCode()

    def elapsed_time_since_start(self) -> float | None:
        """Alias of :meth:`elapsedTimeSinceStart`."""
        return self.elapsedTimeSinceStart()

    def script_path(self) -> str | None:
        """Alias of :meth:`scriptPath`."""
        return self.scriptPath()

    def stop_with_signal(self, sig: int, timeout: float) -> bool:
        """Alias of :meth:`stopWithSignal`."""
        return self.stopWithSignal(sig, timeout)

    # -- context manager ---------------------------------------------------------------------

    def __enter__(self) -> ShellScript:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self.stop()
        finally:
            self.cleanup()
