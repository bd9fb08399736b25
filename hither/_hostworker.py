"""What a host worker process runs before it serves jobs, and hither's fork server.

The parent (:mod:`hither.handlers.hostproc`) starts fresh interpreters on this file by path,
so that neither the user's ``__main__`` nor the ``hither`` package is imported here
(standard library only; the job's function and arguments come over the connection)::

    python [interpreter flags] _hostworker.py worker FD PARENT_PID [LIFELINE_FD]
    python [interpreter flags] _hostworker.py forkserver FD

``worker``: serve jobs over the connection on file descriptor ``FD`` (the pickled
messages of :mod:`hither._worker`); the first message is the parent's
``{"cwd", "sys_path", "env"}`` at worker start.

``forkserver``: a single-threaded process that forks workers on request. On the
Unix socket ``FD`` it first reads its setup (the parent's ``sys.path`` and the modules to
import once for every worker), then requests: one byte with two file descriptors attached
(the worker's connection and a status pipe). It answers each request with the new
worker's pid (8 bytes, little-endian, negative: an errno), reaps its workers and writes
each one's exit code (4 bytes, ``-signal`` when killed) to its status pipe, which the
parent watches as the worker's sentinel. It ends, killing what it started, when the
parent goes away.
"""

from __future__ import annotations

import sys

if __name__ == "__main__":
    del sys.path[0]  # hither's own folder: its modules must not shadow the user's (or stdlib)

import os  # noqa: E402
import signal  # noqa: E402
import struct  # noqa: E402
import types  # noqa: E402


def _load_worker() -> types.ModuleType:
    """``_worker.py``, beside this file, loaded by path (run as a script, this process has
    not imported the hither package, and should not: it would cost ~0.1 s)."""
    import importlib.util

    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_worker.py")
    spec = importlib.util.spec_from_file_location("_hither_worker", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


if __package__:
    from . import _worker
else:
    _worker = _load_worker()

_STATUS = struct.Struct("<i")
_PID = struct.Struct("<q")


# ---------------------------------------------------------------------------- one worker
class _Conn:
    """The worker's end of its connection, framed as :mod:`multiprocessing.connection`
    frames messages (a 4-byte big-endian length; for 2 GiB and more, -1 then 8 bytes)
    without importing :mod:`multiprocessing`, which costs a fresh worker 10-30 ms."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def fileno(self) -> int:
        return self._fd

    def send_bytes(self, data: bytes) -> None:
        n = len(data)
        head = struct.pack("!i", n) if n <= 0x7FFFFFFF else struct.pack("!iQ", -1, n)
        if n <= 16384:
            self._write(head + data)
        else:
            self._write(head)
            self._write(data)

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view):]

    def recv_bytes(self) -> bytes:
        (n,) = struct.unpack("!i", self._read(4))
        if n == -1:
            (n,) = struct.unpack("!Q", self._read(8))
        return self._read(n)

    def _read(self, n: int) -> bytes:
        chunk = os.read(self._fd, n)
        if len(chunk) == n:
            return chunk
        buf = bytearray(chunk)
        while len(buf) < n:
            chunk = os.read(self._fd, n - len(buf))
            if not chunk:
                raise EOFError("the parent closed the connection")
            buf += chunk
        return bytes(buf)


def become_worker(conn_fd: int, parent_pid: int) -> None:
    """Set up this process as a worker of ``parent_pid`` and serve jobs on ``conn_fd``.

    Returns when the parent says stop or goes away.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    try:
        os.setpgid(0, 0)  # own process group: killing the job kills what it started too
    except OSError:
        pass
    if not _die_with_parent(parent_pid):
        return
    conn = _Conn(conn_fd)
    try:
        import pickle

        init = pickle.loads(conn.recv_bytes())
    except (EOFError, OSError):
        return
    _worker.serve_connection(conn, init)


def _die_with_parent(parent_pid: int) -> bool:
    """Ask the kernel for SIGKILL when the parent ends; False if it already has."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except Exception:  # noqa: BLE001 - best effort: EOF on the connection still ends it
            pass
    return os.getppid() == parent_pid


def _flush_std() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except Exception:  # noqa: BLE001
            pass


def forget_imports_of_other_threads() -> list[str]:
    """In a child just forked from a process with threads: forget the imports that other
    threads had under way at the fork; the names of the modules forgotten.

    Those threads do not exist in the child, so such a module stays half-initialized in
    ``sys.modules`` and its import lock stays held: the child's first import of it (say
    ``cloudpickle``, which the parent's main thread was importing while the launcher thread
    forked) would wait forever. Forgotten, it is imported afresh, as in a new process. The
    forking thread's own imports are kept. This reads importlib's private lock table
    (``_module_locks``, ``_ModuleLock.owner``): on an interpreter where it looks different,
    nothing is done."""
    try:
        import threading
        from importlib import _bootstrap

        locks = _bootstrap._module_locks  # type: ignore[attr-defined]
        me = threading.get_ident()
        stale = []
        for name, ref in list(locks.items()):
            lock = ref()
            owner = getattr(lock, "owner", None)
            if lock is not None and owner is not None and owner != me:
                stale.append(name)
        for name in stale:
            locks.pop(name, None)  # the next import of it makes a new lock
            module = sys.modules.get(name)
            if getattr(getattr(module, "__spec__", None), "_initializing", False):
                del sys.modules[name]
        return stale
    except Exception:  # noqa: BLE001 - only a repair: the worker starts either way
        return []


def run_forked_worker(conn_fd: int, parent_pid: int) -> None:
    """The body of a worker forked from a running interpreter: never returns."""
    code = 0
    try:
        forget_imports_of_other_threads()
        become_worker(conn_fd, parent_pid)
    except BaseException:  # noqa: BLE001 - report, then leave without running the parent's code
        code = 1
        try:
            import traceback

            traceback.print_exc()
        except BaseException:  # noqa: BLE001
            pass
    finally:
        _flush_std()
        os._exit(code)


# ---------------------------------------------------------------------------- fork server
def _recv_exact(sock, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError("the connection was closed")
        buf += chunk
    return buf


def serve_forkserver(ctl_fd: int) -> None:
    """Fork workers on request until the parent goes away (see the module docstring)."""
    import pickle
    import selectors
    import socket

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sock = socket.socket(fileno=ctl_fd)
    (size,) = _STATUS.unpack(_recv_exact(sock, _STATUS.size))
    setup = pickle.loads(_recv_exact(sock, size))
    sys.path[:] = setup["sys_path"]
    for name in setup.get("preload", ()):  # shared by every worker forked from here
        try:
            __import__(name)
        except Exception:  # noqa: BLE001 - only an optimisation
            pass
    if sys.platform.startswith("linux"):
        import ctypes  # noqa: F401 - imported once here rather than in every worker

    parent = os.getppid()
    me = os.getpid()
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)
    signal.set_wakeup_fd(wake_w)
    sel = selectors.DefaultSelector()
    sel.register(sock, selectors.EVENT_READ)
    sel.register(wake_r, selectors.EVENT_READ)
    workers: dict[int, int] = {}  # pid -> write end of its status pipe

    def reap() -> None:
        while workers:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            fd = workers.pop(pid, None)
            if fd is not None:
                try:
                    os.write(fd, _STATUS.pack(os.waitstatus_to_exitcode(status)))
                except OSError:
                    pass
                os.close(fd)

    def fork(conn_fd: int, status_fd: int) -> int:
        pid = os.fork()
        if pid == 0:
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            sel.close()
            sock.close()
            for fd in (wake_r, wake_w, status_fd, *workers.values()):
                os.close(fd)
            run_forked_worker(conn_fd, me)
        os.close(conn_fd)
        workers[pid] = status_fd
        try:
            os.setpgid(pid, pid)  # also done by the child: whichever runs first
        except OSError:
            pass
        return pid

    try:
        while True:
            events = sel.select(1.0)
            if os.getppid() != parent:
                return
            for key, _mask in events:
                if key.fileobj is sock:
                    msg, fds, _flags, _addr = socket.recv_fds(sock, 16, 2)
                    if not msg:
                        return  # the parent closed its end (or ended)
                    if len(fds) != 2:
                        for fd in fds:
                            os.close(fd)
                        sock.sendall(_PID.pack(-22))  # EINVAL
                        continue
                    try:
                        pid = fork(fds[0], fds[1])
                    except OSError as e:
                        for fd in fds:
                            os.close(fd)
                        pid = -(e.errno or 1)
                    sock.sendall(_PID.pack(pid))
                else:
                    try:
                        while os.read(wake_r, 512):
                            pass
                    except BlockingIOError:
                        pass
            reap()
    finally:
        for pid in list(workers):  # the parent is gone: so is everything it started
            try:
                os.killpg(pid, signal.SIGKILL)
            except OSError:
                pass
        os._exit(0)


# ---------------------------------------------------------------------------- entry point
def main(argv: list[str]) -> None:
    """Dispatch ``worker`` and ``forkserver`` (see the module docstring)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # the user's __main__ is not here: an empty one makes a lookup of its names fail
    # (pickle then sends script classes by value) instead of finding this file's names
    sys.modules["_hither_hostworker"] = sys.modules["__main__"]
    sys.modules["__main__"] = types.ModuleType("__main__")
    if argv[1] == "worker":
        if len(argv) > 4:  # without pidfd: this end, held until exit, is the sentinel
            os.set_inheritable(int(argv[4]), False)
        become_worker(int(argv[2]), int(argv[3]))
        _flush_std()
    elif argv[1] == "forkserver":
        serve_forkserver(int(argv[2]))
    else:
        raise SystemExit("usage: _hostworker.py worker FD PARENT_PID | forkserver FD")


if __name__ == "__main__":
    main(sys.argv)
