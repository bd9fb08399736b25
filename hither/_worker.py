"""The code that runs a job's function inside a worker process.

This module runs wherever a job runs: in a host worker process, in a container, in a
uv-built environment. It therefore uses only the standard library (``cloudpickle`` only when
a host worker meets a function pickled by value) and stays valid Python 3.8.

Protocol of a host worker (messages pickled over a ``multiprocessing`` connection):

parent -> worker
    ("run", job_id, fid, fn_bytes | None, kwargs_bytes, label, stream_prefix | None,
     sys_path)
    ("skip", job_id)       drop a job sent ahead that has not started yet
    ("stop",)              exit after the current job
worker -> parent
    ("done", job_id, ok, payload, console_lines, start_time, end_time)
        ok=True:  payload is the pickled return value
        ok=False: payload is (pickled exception | None, type name, message, traceback text)
    ("skipped", job_id)

A worker answers jobs in the order it received them, so the parent knows which job is
running without a "started" message.
"""

from __future__ import annotations

import os
import pickle
import signal
import sys
import time
import traceback

# ---------------------------------------------------------------------------- console capture


class _LineRecorder(object):
    """A text stream that records complete lines with a timestamp and a stderr flag."""

    def __init__(self, lines, is_stderr, echo=None, prefix=""):
        self._lines = lines
        self._is_stderr = is_stderr
        self._echo = echo
        self._prefix = prefix
        self._partial = ""
        self.encoding = "utf-8"
        self.errors = "replace"

    def write(self, text):
        if not isinstance(text, str):
            raise TypeError("write() argument must be str, not %s" % type(text).__name__)
        if not text:
            return 0
        buf = self._partial + text
        parts = buf.split("\n")
        self._partial = parts.pop()
        if parts:
            now = time.time()
            for line in parts:
                self._emit(now, line)
        return len(text)

    def _emit(self, now, line):
        self._lines.append((now, line, self._is_stderr))
        if self._echo is not None:
            try:
                self._echo.write(self._prefix + line + "\n")
                self._echo.flush()
            except Exception:
                pass

    def flush(self):
        pass

    def close_partial(self):
        if self._partial:
            self._emit(time.time(), self._partial)
            self._partial = ""

    def isatty(self):
        return False

    def writable(self):
        return True

    def readable(self):
        return False

    def fileno(self):
        import io

        raise io.UnsupportedOperation("hither captures this stream; it has no file descriptor")


class capture_console(object):
    """Swap ``sys.stdout``/``sys.stderr`` for recorders for the duration of a ``with`` block.

    ``lines`` receives ``(timestamp, text, is_stderr)`` tuples. With ``stream_prefix`` set,
    every line is also written to the original stream, prefixed.
    """

    def __init__(self, stream_prefix=None, echo=None):
        self.lines = []
        self._prefix = stream_prefix
        self._echo = echo

    def __enter__(self):
        self._saved = (sys.stdout, sys.stderr)
        echo_out = echo_err = None
        if self._prefix is not None:
            echo_out = self._echo or self._saved[0]
            echo_err = self._echo or self._saved[1]
        prefix = self._prefix or ""
        self._out = _LineRecorder(self.lines, False, echo_out, prefix)
        self._err = _LineRecorder(self.lines, True, echo_err, prefix)
        sys.stdout, sys.stderr = self._out, self._err
        return self

    def __exit__(self, *exc):
        self._out.close_partial()
        self._err.close_partial()
        sys.stdout, sys.stderr = self._saved
        return False


# ---------------------------------------------------------------------------- running a call


class _Alarm(BaseException):
    """Raised by SIGALRM inside an inline job that ran past its timeout."""


def run_call(fn, kwargs, stream_prefix=None, timeout=None, echo=None):
    """Run ``fn(**kwargs)`` with console capture.

    Returns ``(ok, value_or_exception, traceback_text, lines, start, end)``. With ``timeout``
    and when called in the main thread, SIGALRM interrupts the call; the exception is then
    ``TimeoutError``.
    """
    use_alarm = bool(timeout) and _in_main_thread() and hasattr(signal, "setitimer")
    old_handler = None
    old_timer = (0.0, 0.0)
    cap = capture_console(stream_prefix, echo)
    start = time.time()
    try:
        with cap:
            if use_alarm:
                old_handler = signal.signal(signal.SIGALRM, _raise_alarm)
                old_timer = signal.setitimer(signal.ITIMER_REAL, float(timeout))
            try:
                value = fn(**kwargs)
            finally:
                if use_alarm:
                    signal.setitimer(signal.ITIMER_REAL, 0)
                    signal.signal(signal.SIGALRM, old_handler)
                    if old_timer[0] > 0:  # the caller's own timer goes on, minus our time
                        left = max(old_timer[0] - (time.time() - start), 0.001)
                        signal.setitimer(signal.ITIMER_REAL, left, old_timer[1])
        return True, value, None, cap.lines, start, time.time()
    except _Alarm:
        err = TimeoutError("job ran longer than its job_timeout of %s s" % timeout)
        return False, err, "", cap.lines, start, time.time()
    except KeyboardInterrupt:
        raise
    except BaseException as e:  # noqa: BLE001 - a job's failure is data, whatever it is
        tb = "".join(traceback.format_exception(type(e), e, e.__traceback__))
        return False, e, tb, cap.lines, start, time.time()


def _raise_alarm(signum, frame):
    raise _Alarm()


def _in_main_thread():
    import threading

    return threading.current_thread() is threading.main_thread()


# ---------------------------------------------------------------------------- host worker


def _loads_function(data):
    try:
        return pickle.loads(data)
    except Exception:
        import cloudpickle  # noqa: F401 - by-value functions need it importable

        return pickle.loads(data)


def _dumps(obj):
    try:
        return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:
        import cloudpickle

        return cloudpickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)


def _error_payload(exc, tb_text):
    """Pickle an exception if it can make the round trip; always keep type, message, tb."""
    type_name = "%s.%s" % (type(exc).__module__, type(exc).__qualname__)
    try:
        message = str(exc)
    except Exception:
        message = "<str() of the exception failed>"
    pickled = None
    try:
        data = pickle.dumps(exc, protocol=pickle.HIGHEST_PROTOCOL)
        pickle.loads(data)  # an exception that pickles but cannot be rebuilt is common
        pickled = data
    except Exception:
        pickled = None
    return (pickled, type_name, message, tb_text)


def add_sys_path(paths):
    """Put ``paths`` at the front of ``sys.path`` (once each)."""
    for p in reversed(paths or ()):
        if p not in sys.path:
            sys.path.insert(0, p)


def _init_worker(init):
    """Set up a fresh worker process from the parent's description."""
    try:
        os.setpgid(0, 0)  # own process group: killing the job kills what it started too
    except OSError:
        pass
    _set_parent_death_signal()
    if init.get("cwd"):
        try:
            os.chdir(init["cwd"])
        except OSError:
            pass
    add_sys_path(init.get("sys_path"))
    for k, v in init.get("env", {}).items():
        os.environ[k] = v
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle


def _set_parent_death_signal():
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except Exception:
        pass


def serve_connection(conn, init):
    """Run jobs sent over ``conn`` until told to stop or the parent goes away.

    The worker reads its connection between jobs only; the parent never blocks writing to
    it (it hands large messages to a sender thread), so a large argument and a large
    result crossing each other cannot deadlock.
    """
    import selectors

    _init_worker(init)
    sel = selectors.DefaultSelector()  # one poll set for the life of the worker
    sel.register(conn.fileno(), selectors.EVENT_READ)
    functions = {}
    queue = []
    skipped = set()
    send_bytes = conn.send_bytes
    echo = _EchoPipe(send_bytes)
    try:
        while True:
            if not queue:
                queue.append(pickle.loads(conn.recv_bytes()))
            while sel.select(0):  # what was sent ahead, so a "skip" is seen in time
                queue.append(pickle.loads(conn.recv_bytes()))
            msg = queue.pop(0)
            kind = msg[0]
            if kind == "stop":
                return
            if kind == "skip":
                skipped.add(msg[1])
                continue
            _, job_id, fid, fn_bytes, kwargs_bytes, label, prefix, extra_path = msg
            if fn_bytes is not None and fid not in functions:
                functions[fid] = _Unloaded(fn_bytes)  # kept even if this job is skipped
            if job_id in skipped or any(m[0] == "skip" and m[1] == job_id for m in queue):
                skipped.discard(job_id)
                send_bytes(pickle.dumps(("skipped", job_id)))
                continue
            add_sys_path(extra_path)
            answer = _run_message(functions, fid, kwargs_bytes, prefix, echo)
            send_bytes(pickle.dumps(("done", job_id) + answer,
                                    protocol=pickle.HIGHEST_PROTOCOL))
    except (EOFError, OSError):
        return


class _Inbox(object):
    """A minimal thread-safe FIFO (``queue.Queue`` without the features we do not use)."""

    def __init__(self):
        import threading

        self._items = []
        self._cond = threading.Condition(threading.Lock())

    def put(self, item):
        with self._cond:
            self._items.append(item)
            self._cond.notify()

    def get(self):
        with self._cond:
            while not self._items:
                self._cond.wait()
            return self._items.pop(0)

    def get_all(self):
        with self._cond:
            items, self._items = self._items, []
            return items


class _EchoPipe(object):
    """Live console lines of a job, sent to the parent, which prints them where its own
    output goes (a forkserver's or a notebook's worker has no useful stdout of its own)."""

    def __init__(self, send_bytes):
        self._send_bytes = send_bytes

    def write(self, text):
        self._send_bytes(pickle.dumps(("echo", text)))

    def flush(self):
        pass


class _Unloaded(object):
    """Function bytes received but not unpickled yet."""

    __slots__ = ("data",)

    def __init__(self, data):
        self.data = data


def _run_message(functions, fid, kwargs_bytes, prefix, echo=None):
    start = time.time()
    try:
        fn = functions.get(fid)
        if fn is None:
            raise RuntimeError("worker protocol error: function %s was never sent" % fid)
        if isinstance(fn, _Unloaded):
            fn = functions[fid] = _loads_function(fn.data)
        kwargs = pickle.loads(kwargs_bytes)
    except BaseException as e:  # noqa: BLE001
        tb = "".join(traceback.format_exception(type(e), e, e.__traceback__))
        note = "the worker could not load the job's function or arguments"
        return (False, _error_payload(e, note + "\n" + tb), [], start, time.time())
    ok, value, tb, lines, start, end = run_call(fn, kwargs, prefix, echo=echo)
    if ok:
        try:
            return (True, _dumps(value), lines, start, end)
        except BaseException as e:  # noqa: BLE001
            err = TypeError(
                "the job's return value of type %s.%s cannot be sent back from the worker: %s"
                % (type(value).__module__, type(value).__qualname__, e)
            )
            return (False, _error_payload(err, ""), lines, start, end)
    return (False, _error_payload(value, tb), lines, start, end)


# ---------------------------------------------------------------------------- stdio worker
#
# Protocol of a worker in a container or a foreign environment: JSON lines.
#
# worker -> parent, first:  {"op": "hello", "python": "3.11.2", "pid": N, "numpy": "1.24.2"|null}
# parent -> worker:         {"op": "ping"} -> {"op": "pong"};  {"op": "stop"} -> exit 0
#   {"op": "run", "id", "label", "module": {"name", "dir"}, "function", "args": manifest,
#    "sys_path": [...], "blobs": dir, "out": dir, "stream": prefix|null}
#   -> {"op": "echo", "text"} lines streamed live while the job runs (when "stream" is set)
#   -> {"op": "done", "id", "ok", "result": manifest|null,
#       "error": {"type", "message", "traceback"}|null, "console": [[t, text, is_stderr]],
#       "start": t, "end": t}
# Blob refs in "args" are "sha256://<hex>" found under "blobs" (the store layout
# blobs/sha256/ab/cd/<hex>); result blobs are written to "out" and named "out:<file>".


def _import_codec():
    try:
        from . import _codec  # type: ignore
    except ImportError:
        import _codec  # type: ignore
    return _codec


def _numpy_version():
    """numpy's version from its metadata, without importing it (that takes 0.1 s)."""
    try:
        from importlib import metadata

        return metadata.version("numpy")
    except Exception:
        return None


def _blob_getter(blobs_dir):
    def get_blob(ref, kind):
        hexd = ref.split("://", 1)[-1]
        path = os.path.join(blobs_dir, "sha256", hexd[:2], hexd[2:4], hexd)
        if kind in ("npy", "file"):
            return path
        with open(path, "rb") as f:
            return f.read()

    return get_blob


def _blob_putter(out_dir):
    import shutil
    import uuid

    def put_blob(kind, write):
        name = uuid.uuid4().hex
        path = os.path.join(out_dir, name)
        if kind == "file":
            shutil.copyfile(write, path)
        else:
            with open(path, "wb") as f:
                write(f)
        return "out:" + name

    return put_blob


_bundle = {"dir": None}


def _load_function(spec):
    """Import the job's module from its code bundle and return the function.

    A warm worker may get a newer bundle of the same module (the code was edited): the
    modules loaded from the previous bundle are dropped first, so nothing stale is used.
    """
    import importlib

    code_dir = spec["module"].get("dir")
    if code_dir and code_dir != _bundle["dir"]:
        old = _bundle["dir"]
        if old:
            prefix = old.rstrip("/") + "/"
            for name, mod in list(sys.modules.items()):
                f = getattr(mod, "__file__", None) or ""
                if f.startswith(prefix):
                    del sys.modules[name]
            if old in sys.path:
                sys.path.remove(old)
        if code_dir in sys.path:
            sys.path.remove(code_dir)
        sys.path.insert(0, code_dir)
        importlib.invalidate_caches()
        _bundle["dir"] = code_dir
    fn = importlib.import_module(spec["module"]["name"])
    for part in spec["function"].split("."):
        fn = getattr(fn, part)
    return fn


class _EchoMessages(object):
    """Live console lines of a job, sent to the parent as protocol messages."""

    def __init__(self, send):
        self._send = send

    def write(self, text):
        self._send({"op": "echo", "text": text})

    def flush(self):
        pass


def _run_json(msg, echo=None):
    codec = _import_codec()
    start = time.time()
    try:
        fn = _load_function(msg)
        kwargs = codec.decode(msg["args"], _blob_getter(msg["blobs"]))
    except BaseException as e:  # noqa: BLE001
        tb = "".join(traceback.format_exception(type(e), e, e.__traceback__))
        message = None
        if isinstance(e, ImportError) and "numpy" in str(e):
            message = ("numpy is not installed in this runtime, but the job's arguments hold "
                       "numpy arrays or scalars: install numpy in the image or environment, "
                       "or pass plain lists (%s)" % e)
        return {"ok": False, "result": None, "console": [], "start": start,
                "end": time.time(),
                "error": _error_dict(e, message, "the worker could not load the job's "
                                                 "function or arguments\n" + tb)}
    ok, value, tb, lines, start, end = run_call(fn, kwargs, msg.get("stream"), echo=echo)
    out = {"ok": ok, "console": [list(x) for x in lines], "start": start, "end": end,
           "result": None, "error": None}
    if ok:
        try:
            out["result"] = codec.encode(value, _blob_putter(msg["out"]), path="result")
        except BaseException as e:  # noqa: BLE001
            out["ok"] = False
            out["error"] = _error_dict(
                e, "the job's return value cannot be sent back: %s" % e)
    else:
        out["error"] = _error_dict(value, None, tb or "")
    return out


def _error_dict(e, message=None, traceback_text=""):
    """An exception as JSON: type, message, traceback and (when plain) its arguments."""
    out = {"type": "%s.%s" % (type(e).__module__, type(e).__qualname__),
           "message": str(e) if message is None else message,
           "traceback": traceback_text}
    args = list(e.args)
    if isinstance(e, OSError) and e.filename is not None and len(args) == 2:
        args.append(e.filename)
    if message is None and all(isinstance(a, (str, int, float, bool, type(None))) for a in args):
        out["args"] = args
    return out


def _become_init():
    """As PID 1 of a container without an init, fork: the child is the worker, this
    process only waits for it. The kernel ignores signals a namespace's PID 1 sends itself,
    so a job killing its own worker would otherwise do nothing."""
    if os.getpid() != 1:
        return
    pid = os.fork()
    if pid == 0:
        return
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda s, f: os.kill(pid, signal.SIGKILL))
    while True:
        try:
            done, status = os.waitpid(-1, 0)
        except ChildProcessError:
            os._exit(1)
        if done == pid:
            os._exit(os.WEXITSTATUS(status) if os.WIFEXITED(status)
                     else 128 + os.WTERMSIG(status))


def serve_stdio():
    """Serve JSON-line requests on stdin/stdout until stdin closes or "stop" arrives.

    A reader thread owns the protocol's stdin: when it closes (the parent exited, even by
    SIGKILL) the worker exits at once, also in the middle of a job, so no container outlives
    its parent. Jobs get /dev/null as stdin and stderr as stdout.
    """
    import json
    import threading

    _become_init()
    proto_in = os.fdopen(os.dup(0), "r", encoding="utf-8")
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    sys.stdin = open(os.devnull, "r")
    proto_out = os.fdopen(os.dup(1), "w", encoding="utf-8", newline="\n")
    os.dup2(2, 1)  # output written straight to fd 1 by a job must not corrupt the protocol
    sys.stdout = os.fdopen(1, "w", encoding="utf-8", errors="replace", closefd=False)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    lock = threading.Lock()

    def send(obj):
        with lock:
            proto_out.write(json.dumps(obj, allow_nan=True) + "\n")
            proto_out.flush()

    inbox = _Inbox()

    def read():
        for line in proto_in:
            if line.strip():
                inbox.put(json.loads(line))
        os._exit(0)  # the parent is gone or done with us

    send({"op": "hello", "python": "%d.%d.%d" % sys.version_info[:3], "pid": os.getpid(),
          "numpy": _numpy_version()})
    threading.Thread(target=read, name="hither-worker-reader", daemon=True).start()
    echo = _EchoMessages(send)
    while True:
        msg = inbox.get()
        op = msg.get("op")
        if op == "ping":
            send({"op": "pong"})
        elif op == "stop":
            return
        elif op == "run":
            answer = _run_json(msg, echo)
            answer["op"] = "done"
            answer["id"] = msg.get("id")
            send(answer)
        else:
            send({"op": "error", "message": "unknown op %r" % (op,)})


if __name__ == "__main__":
    if "--stdio" in sys.argv[1:]:
        here = os.path.dirname(os.path.abspath(__file__))
        if here not in sys.path:
            sys.path.insert(0, here)
        serve_stdio()
