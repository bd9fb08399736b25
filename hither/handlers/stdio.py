"""A warm worker inside a runtime (container or environment), driven over stdin/stdout.

The worker process runs ``_worker.py --stdio`` and speaks JSON lines (see
:mod:`hither._stdio_worker`). Values cross through the store: arguments are encoded into blobs the
worker reads from a read-only mount; result blobs come back through a private output folder
(mode 0700, owned by the caller, whose uid:gid the worker runs as): each job writes into a
fresh subfolder of its own. The handler owns these workers; both the inline and the parallel
handler use this class.

Whatever the worker says is untrusted: a result reference ``out:NAME`` is accepted only
when NAME is a name the worker's encoder makes (32 lowercase hex digits) of a regular file
with a single link in that job's own subfolder, opened without following links; its bytes
are copied into the store. Nothing outside the job's subfolder is read, moved or deleted.
"""

from __future__ import annotations

import errno
import itertools
import json
import os
import re
import secrets
import select
import shutil
import signal
import stat
import threading
import time
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from .. import _codec, values
from ..errors import (
    JobTimeoutError,
    UnreadableResultError,
    WorkerCrashedError,
    rebuild_exception,
)
from ..launch import ConsoleLine, Launch, Outcome
from ..progress import echo
from ..runtimes.base import Mount, Runtime, WorkerSpec
from ..runtimes.bundle import code_root, worker_dir
from .host import describe_exit

_names = itertools.count()
_OUT_REF = re.compile(r"out:([0-9a-f]{32})")  # as _stdio_worker._blob_putter names them
_OPEN_RESULT = (os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
                | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0))
_OPEN_DIR = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NOFOLLOW", 0) | \
    getattr(os, "O_CLOEXEC", 0)


class BadResultRef(ValueError):
    """A worker's result reference that does not name a file it may hand back."""


def pool_key(launch: Launch) -> tuple:
    """Launches with equal keys can share a worker: same runtime, same exchange store."""
    return (launch.runtime.pool_key(), str(launch.store.root))
_STDERR_KEEP = 200  # lines of a worker's stderr kept to explain a crash


class StdioWorker:
    """One worker process in ``runtime``, exchanging values through ``store``."""

    max_inflight = 1  # a job is written only to an idle worker: no pipe can fill both ways

    def __init__(self, runtime: Runtime, store: Any) -> None:
        self.runtime = runtime
        self.store = store
        root = Path(store.root)
        name = f"hither-{os.getpid()}-{next(_names)}-{uuid.uuid4().hex[:6]}"
        self.out_dir = _for_worker(store.work_dir("out"))
        self._job_dirs: dict[str, Path] = {}
        blobs = root / "blobs"
        self.spec = WorkerSpec(mounts=(
            Mount(str(worker_dir(root)), "/hither/worker"),
            Mount(str(code_root(root)), "/hither/code"),
            Mount(str(blobs), "/hither/blobs"),
            Mount(str(self.out_dir), "/hither/out", readonly=False),
        ), env={"PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1"}, name=name)
        self._paths = {m.target: runtime.path_in_worker(m.target, self.spec)
                       for m in self.spec.mounts}
        try:
            self.proc = runtime.start_worker(self.spec)
        except BaseException:
            shutil.rmtree(self.out_dir, ignore_errors=True)
            raise
        self.pid = self.proc.pid
        # start_worker opens all three pipes
        assert self.proc.stdin and self.proc.stdout and self.proc.stderr
        self._stdin: IO[bytes] = self.proc.stdin
        self._stdout: IO[bytes] = self.proc.stdout
        self._stderr: IO[bytes] = self.proc.stderr
        self._out_buf = b""
        self._err_buf = b""
        self.stderr_tail: list[str] = []
        self.head_console: list[tuple[float, str, bool]] = []
        self.hello: dict[str, Any] | None = None
        self.closed = False
        self.ended = False  # its output ended: the worker is exiting by itself
        self.interrupted = False
        self._ingest_lock = threading.Lock()
        self._ingesting = 0  # outcomes whose result files are still to be moved in
        self.current: Launch | None = None  # the job sent last (a worker runs one at a time)
        #: where live console lines go instead of this process's output (None: printed here)
        self.on_echo: Callable[[str], None] | None = None
        self.live_console: list[ConsoleLine] = []  # its lines received live (timed jobs)
        for f in (self._stdout, self._stderr):
            os.set_blocking(f.fileno(), False)

    # ------------------------------------------------------------------ sending
    def message(self, launch: Launch) -> bytes:
        """The JSON line that runs ``launch`` (arguments are written to the store now)."""
        bundle = launch.code
        args = launch.args_manifest
        if args is None:
            args = values.encode(launch.call_kwargs(), self.store, path="kw")
        code_dir = f"{self._paths['/hither/code']}/{bundle.digest}"
        self._drop_job_dir(launch.job_id)
        job_dir = self.out_dir / f"job-{secrets.token_hex(8)}"
        os.mkdir(job_dir, 0o700)
        self._job_dirs[launch.job_id] = _for_worker(job_dir)
        msg = {"op": "run", "id": launch.job_id, "label": launch.label,
               "module": {"name": bundle.module, "dir": code_dir},
               "function": bundle.function, "args": args,
               "blobs": self._paths["/hither/blobs"],
               "out": f"{self._paths['/hither/out']}/{job_dir.name}",
               # live lines when shown, or kept here in case the job is stopped at its
               # timeout (the worker's own copy dies with it)
               "stream": "" if launch.echo_label is not None or launch.timeout else None,
               "timeout": bool(launch.timeout)}
        return (json.dumps(msg, allow_nan=True) + "\n").encode()

    def send_run(self, launch: Launch) -> bool:
        """Send the run message of ``launch``; False when the worker is gone."""
        self.current = launch
        self.live_console = []
        return self.send(self.message(launch))

    def send(self, data: bytes) -> bool:
        """Write a message; False when the worker is gone."""
        try:
            self._stdin.write(data)
            self._stdin.flush()
            return True
        except (OSError, ValueError):
            return False

    # ------------------------------------------------------------------ reading
    def fds(self) -> tuple[int, int]:
        """The worker's stdout and stderr file descriptors."""
        return self._stdout.fileno(), self._stderr.fileno()

    def read_stdout(self) -> list[dict[str, Any]]:
        """Messages available on stdout; raises EOFError when the worker closed it."""
        data = _read_available(self._stdout.fileno())
        if data is None:
            self.ended = True
            raise EOFError
        self._out_buf += data
        *lines, self._out_buf = self._out_buf.split(b"\n")
        msgs = []
        for line in lines:
            if line.strip():
                try:
                    msg = json.loads(line)
                except ValueError:
                    msg = None
                if not isinstance(msg, dict):  # not the protocol: e.g. an image's banner
                    text = line.decode("utf-8", "replace")
                    self.head_console.append((time.time(), text, True))
                    self.stderr_tail.append(text)
                    continue
                op = msg.get("op")
                if op == "hello":
                    self.hello = msg
                elif op == "echo":  # a live console line (show_console, or a timed job)
                    self._on_echo(str(msg.get("text", "")), bool(msg.get("stderr")))
                else:
                    msgs.append(msg)
        return msgs

    def _on_echo(self, text: str, is_stderr: bool) -> None:
        launch = self.current
        if launch is None:
            return
        if launch.timeout:
            self.live_console.append((time.time(), text.rstrip("\n"), is_stderr))
        if self.on_echo is not None:
            self.on_echo(text)
            return
        prefix = launch.stream_prefix()
        if prefix is not None:
            echo(prefix + text)

    def read_stderr(self) -> bool:
        """Collect stderr lines (output written straight to the file descriptors by a job,
        or by the engine); they join the running job's console. False at EOF."""
        data = _read_available(self._stderr.fileno())
        if data is None:
            return False
        self._err_buf += data
        *lines, self._err_buf = self._err_buf.split(b"\n")
        now = time.time()
        for raw in lines:
            text = raw.decode("utf-8", "replace")
            self.head_console.append((now, text, True))
            self.stderr_tail.append(text)
        del self.stderr_tail[:-_STDERR_KEEP]
        return True

    # ------------------------------------------------------------------ outcomes
    def deferred_outcome(self, launch: Launch, msg: dict[str, Any]) -> Callable[[], Outcome]:
        """Take what belongs to a ``done`` message now (its stderr lines) and return the call
        that makes its Outcome (copying result files into the store takes a while, so a
        handler's loop runs it elsewhere). The out folder stays until that call is made."""
        console = self.head_console
        self.head_console = []
        with self._ingest_lock:
            self._ingesting += 1

        def make() -> Outcome:
            try:
                return self.outcome(launch, msg, console)
            finally:
                with self._ingest_lock:
                    self._ingesting -= 1
                    remove = self.closed and not self._ingesting
                if remove:
                    shutil.rmtree(self.out_dir, ignore_errors=True)

        return make

    def outcome(self, launch: Launch, msg: dict[str, Any],
                stderr_lines: list[tuple[float, str, bool]] | None = None) -> Outcome:
        """Turn a ``done`` message into an Outcome (result files copied into the store)."""
        if stderr_lines is None:
            stderr_lines, self.head_console = self.head_console, []
        info: dict[str, Any] = {"worker_pid": self.pid, "runtime": self.runtime.describe()}
        packages = _packages_of(self.hello)
        if packages is not None:
            info["runtime_packages"] = packages
        if msg.get("ok"):
            try:
                msg = {**msg, "result": self._ingest_job(launch.job_id, msg.get("result"))}
            except Exception as e:  # noqa: BLE001
                msg = {**msg, "ok": False, "bad_result": f"{type(e).__name__}: {e}"}
        else:
            self._drop_job_dir(launch.job_id)
        return outcome_of(launch, msg, stderr_lines, info)

    def ingest(self, job_id: str, manifest: Any) -> Any:
        """``manifest`` of a ``done`` message with its result files moved into the store
        (their ``out:`` refs replaced by store uris); the job's output folder is removed.
        Raises :class:`BadResultRef` for a reference the worker may not use."""
        return self._ingest_job(job_id, manifest)

    def _ingest_job(self, job_id: str, manifest: Any) -> Any:
        """``manifest`` with its ``out:`` refs replaced by the store uris of the files they
        name in job ``job_id``'s own folder (see the module docstring); the folder is
        removed afterwards. Raises :class:`BadResultRef` for a ref it may not use."""
        job_dir = self._job_dirs.get(job_id)
        try:
            if job_dir is None:
                return self._ingest(manifest, None)
            try:
                dir_fd = os.open(job_dir, _OPEN_DIR)
            except OSError as e:
                raise BadResultRef(f"the job's output folder {job_dir.name} was replaced or "
                                   f"removed by the worker ({e.strerror})") from None
            try:
                return self._ingest(manifest, dir_fd)
            finally:
                os.close(dir_fd)
        finally:
            self._drop_job_dir(job_id)

    def _ingest(self, manifest: Any, dir_fd: int | None) -> Any:
        if isinstance(manifest, list):
            return [self._ingest(x, dir_fd) for x in manifest]
        if isinstance(manifest, dict):
            ref = manifest.get("ref")
            if manifest.get(_codec.TAG) in _codec.BLOB_KINDS and \
                    isinstance(ref, str) and ref.startswith("out:"):
                node = dict(manifest)
                node["ref"] = self._take(ref, dir_fd)
                return node
            return {k: self._ingest(v, dir_fd) for k, v in manifest.items()}
        return manifest

    def _take(self, ref: str, dir_fd: int | None) -> str:
        """Copy the result file ``ref`` names into the store; return its uri."""
        m = _OUT_REF.fullmatch(ref)
        if m is None:
            raise BadResultRef(f"the worker returned the result reference {ref!r}, which is "
                               "not the name of a file in the job's own output folder")
        name = m.group(1)
        if dir_fd is None:
            raise BadResultRef(f"the worker returned {ref!r} for a job it was not given")
        try:
            fd = os.open(name, _OPEN_RESULT, dir_fd=dir_fd)
        except OSError as e:
            why = "a symbolic link" if e.errno == errno.ELOOP else e.strerror
            raise BadResultRef(f"the worker's result file {name} cannot be used: {why}") \
                from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise BadResultRef(f"the worker's result file {name} is not a regular file "
                                   f"(a FIFO, device, socket or folder)")
            if st.st_nlink != 1:
                raise BadResultRef(f"the worker's result file {name} has "
                                   f"{st.st_nlink} links: a hard link is not a result")
        except BaseException:
            os.close(fd)
            raise
        with open(fd, "rb", buffering=0) as f:
            uri = self.store.put_stream(f)
        try:
            os.unlink(name, dir_fd=dir_fd)
        except OSError:
            pass
        return uri

    def _drop_job_dir(self, job_id: str) -> None:
        """Remove a job's output folder (links in it are removed, never followed)."""
        job_dir = self._job_dirs.pop(job_id, None)
        if job_dir is not None:
            shutil.rmtree(job_dir, ignore_errors=True)

    def crash_outcome(self, launch: Launch, why: str | None = None) -> Outcome:
        """The outcome of a job whose worker died under it (its output ended). Waits a
        moment for the worker process to exit, so the message can name why it ended."""
        self._drop_job_dir(launch.job_id)
        code = self.exit_code(_EXIT_WAIT) if why is None else self.proc.poll()
        tail = "\n".join(self.stderr_tail[-20:])
        err = WorkerCrashedError(
            f"the worker for job {launch.label!r} in {self.runtime.describe()} "
            f"{why or 'died: ' + describe_worker_exit(code, self.runtime.kind)}"
            + (f"; its last output:\n{tail}" if tail else "")
            + "\nThe worker was replaced; other jobs go on.", job_label=launch.label)
        console = sorted(self.head_console + self.live_console, key=lambda x: x[0])
        self.head_console, self.live_console = [], []
        return Outcome(False, error=err, console=console, info={"exit_code": code})

    def exit_code(self, timeout: float) -> int | None:
        """The worker process's exit status, once it has exited by itself (None if it has
        not within ``timeout`` seconds)."""
        try:
            return self.proc.wait(timeout)
        except Exception:  # noqa: BLE001 - subprocess.TimeoutExpired
            return self.proc.poll()

    def timeout_outcome(self, launch: Launch, started: float) -> Outcome:
        """The outcome of a job stopped at its ``job_timeout``."""
        self._drop_job_dir(launch.job_id)
        err = JobTimeoutError(
            f"job {launch.label!r} ran longer than its job_timeout of {launch.timeout} s in "
            f"{self.runtime.describe()}; its worker was stopped and replaced. Raise "
            "job_timeout in hi.Config if the job needs more time.", job_label=launch.label)
        console = sorted(self.head_console + self.live_console, key=lambda x: x[0])
        self.head_console, self.live_console = [], []
        return Outcome(False, error=err, console=console, start_time=started,
                       end_time=time.time())

    # ------------------------------------------------------------------ life
    def alive(self) -> bool:
        """True while the worker process runs."""
        return not self.closed and self.proc.poll() is None

    def interrupt(self) -> None:
        """Stop the job running in this worker from another thread: the worker (and its
        container) is killed now; the thread waiting in :meth:`call` sees it end."""
        self.interrupted = True
        if self.ended:
            return  # exiting by itself: stop() lets it, so its exit status says why
        try:
            self.runtime.stop_worker(self.proc, self.spec)
        except Exception as e:  # noqa: BLE001 - stop() tries again and warns
            warnings.warn(f"could not stop worker {self.spec.name}: {e}", RuntimeWarning,
                          stacklevel=2)

    def stop(self, graceful: bool = False) -> None:
        """Stop the worker and remove what it leaves (container, output folder)."""
        if self.closed:
            return
        self.closed = True
        if self.ended:
            self.exit_code(_EXIT_WAIT)
        elif graceful:
            self.send(b'{"op": "stop"}\n')
            try:
                self.proc.wait(2)
            except Exception:  # noqa: BLE001
                pass
        try:
            self.runtime.stop_worker(self.proc, self.spec)
        except Exception as e:  # noqa: BLE001 - cleanup goes on; say what may be left
            warnings.warn(f"could not remove worker {self.spec.name} of "
                          f"{self.runtime.describe()}: {e}", RuntimeWarning, stacklevel=2)
        finally:
            for f in (self._stdin, self._stdout, self._stderr):
                try:
                    f.close()
                except OSError:
                    pass
            with self._ingest_lock:
                remove = not self._ingesting  # else the last pending outcome removes it
            if remove:
                shutil.rmtree(self.out_dir, ignore_errors=True)

    def call(self, launch: Launch) -> Outcome:
        """Run ``launch`` and wait for its outcome, in this thread (inline handler)."""
        started = time.time()
        if not self.send_run(launch):
            return self.crash_outcome(launch, "could not be reached")
        deadline = None  # the job_timeout clock starts when the function starts
        out_fd, err_fd = self.fds()
        while True:
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready, _, _ = select.select([out_fd, err_fd], [], [], wait)
            if not ready:
                self.stop()
                return self.timeout_outcome(launch, started)
            if err_fd in ready:
                self.read_stderr()
            if out_fd in ready:
                try:
                    msgs = self.read_stdout()
                except EOFError:
                    self.read_stderr()
                    out = self.crash_outcome(launch)
                    self.stop()
                    return out
                for msg in msgs:
                    if msg.get("id") != launch.job_id:
                        continue
                    if msg.get("op") == "started" and launch.timeout:
                        started = time.time()
                        deadline = time.monotonic() + launch.timeout
                    elif msg.get("op") == "done":
                        return self.outcome(launch, msg)


def outcome_of(launch: Launch, msg: dict[str, Any], stderr_lines: list[ConsoleLine],
               info: dict[str, Any]) -> Outcome:
    """The Outcome of a ``done`` message whose result files are in ``launch.store`` already
    (:meth:`StdioWorker.ingest`); ``bad_result`` says why they could not be taken."""
    console: list[ConsoleLine] = [(x[0], x[1], x[2]) for x in msg.get("console") or []]
    console += stderr_lines
    console.sort(key=lambda x: x[0])
    info = dict(info)
    start, end = msg.get("start"), msg.get("end")
    bad = msg.get("bad_result")
    if msg.get("ok") or bad:
        try:
            if bad:
                raise BadResultRef(bad)
            manifest = msg.get("result")
            value = values.decode(manifest, launch.store)
        except Exception as e:  # noqa: BLE001
            err = UnreadableResultError(f"the result of job {launch.label!r} could not be read "
                                        f"back from the worker: {e}",
                                        remote_type=type(e).__name__, job_label=launch.label)
            return Outcome(False, error=err, console=console, start_time=start,
                           end_time=end, info=info)
        info["result_manifest"] = manifest
        return Outcome(True, value=value, console=console, start_time=start,
                       end_time=end, info=info)
    raised = msg.get("error") or {}
    # the job's module was imported by its file name in the worker: a class defined
    # there is looked up in the module the caller knows the function from
    modules = {launch.code.module: launch.fn.__module__} if launch.code is not None \
        else None
    exc = rebuild_exception(str(raised.get("type", "Exception")),
                            str(raised.get("message", "")), raised.get("traceback"),
                            job_label=launch.label, args=raised.get("args"), modules=modules)
    info["raised"] = bool(raised.get("raised"))
    return Outcome(False, error=exc, traceback_text=raised.get("traceback"), console=console,
                   start_time=start, end_time=end, info=info)


#: seconds a worker whose output ended is given to exit by itself (its exit status says why)
_EXIT_WAIT = 5.0


def describe_worker_exit(code: int | None, kind: str) -> str:
    """Why a runtime worker ended, from the exit status of its process (for a container,
    the engine's client: it exits as the container did)."""
    if code is None:
        return "its output ended, but its process did not exit"
    if kind in ("docker", "podman", "apptainer") and code > 128:
        try:  # a container whose process was killed by signal N exits with 128 + N
            name = signal.Signals(code - 128).name
        except ValueError:
            pass
        else:
            kill = f"`{kind} kill`, " if kind in ("docker", "podman") else ""
            return (f"its container ended by {name} (exit code {code}): the job killed its "
                    f"own process, or the container was killed from outside ({kill}the "
                    "engine, or the kernel's out-of-memory killer: see `dmesg`)")
    return describe_exit(code)


def _for_worker(path: Path) -> Path:
    """Give ``path`` to the uid:gid that workers run as (the caller's real ids), when this
    process (as root) created it under others."""
    if hasattr(os, "getuid"):
        st = os.stat(path)
        ids = (os.getuid(), os.getgid())
        if (st.st_uid, st.st_gid) != ids:
            try:
                os.chown(path, *ids)
            except PermissionError:
                pass
    return path


def _read_available(fd: int) -> bytes | None:
    """What can be read now without blocking (b"" if nothing); None at EOF."""
    chunks: list[bytes] = []
    while True:
        try:
            data = os.read(fd, 1 << 16)
        except BlockingIOError:
            break
        if not data:
            return b"".join(chunks) if chunks else None
        chunks.append(data)
        if len(data) < 1 << 16:
            break
    return b"".join(chunks)


_PACKAGE_LINE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,200}==[A-Za-z0-9._+!-]{1,100}")
_MAX_PACKAGES = 256 << 10


def _packages_of(hello: dict[str, Any] | None) -> str | None:
    """The package list a worker reported in its hello (untrusted: only well-formed
    ``name==version`` lines of a bounded total size are kept)."""
    text = (hello or {}).get("packages")
    if not isinstance(text, str) or len(text) > _MAX_PACKAGES:
        return None
    lines = [x for x in text.splitlines() if _PACKAGE_LINE.fullmatch(x)]
    return "".join(x + "\n" for x in lines) if lines else None
