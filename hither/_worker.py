"""The code that runs a job's function inside a worker process.

This module runs wherever a job runs: in a host worker process, in a container, in a
uv-built environment. It therefore uses only the standard library (``cloudpickle`` only when
a host worker meets a function pickled by value) and stays valid Python 3.8.

Protocol of a host worker (messages pickled over a ``multiprocessing`` connection; the
process is started by :mod:`hither._hostworker`):

parent -> worker
    {"cwd", "sys_path", "env"}   first, once: the parent's, applied by the worker
    ("run", job_id, fid, fn_bytes | None, kwargs_bytes, label, stream_prefix | None,
     sys_path, timed, sources | None)
        sources: ({file name: source lines}, {code_key(code): file name}) of a function
        sent by value (a script's or a notebook's): its code objects get their file names
        back and the lines go into ``linecache``, so that tracebacks show them
    ("batch", [run message, ...])   several jobs in one message (tiny jobs batched by
                           the parent): queued as if sent one by one
    ("skip", job_id)       drop a job sent ahead that has not started yet
    ("stop",)              exit after the current job
worker -> parent
    ("done", job_id, ok, payload, console_lines, start_time, end_time)
        ok=True:  payload is the pickled return value
        ok=False: payload is (pickled exception | None, type name, message, traceback text,
        raised by the function)
    ("skipped", job_id)
    ("started", job_id)    the function starts (only for a timed job: its timeout counts
                           from here, not from the loading of its function and arguments)
    ("echo", text, stderr) a live console line (when stream_prefix is not None: the job
                           shows its console, or it has a timeout)

A worker answers jobs in the order it received them, so the parent knows which job is
running without a "started" message.
"""

from __future__ import annotations

import os
import pickle
import signal
import sys
import time
from collections import deque

# ---------------------------------------------------------------------------- console capture


class _LineRecorder(object):
    """A text stream that records complete lines with a timestamp and a stderr flag."""

    def __init__(self, lines, is_stderr, echo=None, prefix=""):
        self._lines = lines
        self._is_stderr = is_stderr
        self._echo = echo
        self._prefix = prefix
        self._partial = ""
        self.replaced = None  # the stream this recorder stands in for
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
            if hasattr(self._echo, "for_stderr"):  # a worker's pipe: it sends the flag along
                echo_err = self._echo.for_stderr()
        prefix = self._prefix or ""
        self._out = _LineRecorder(self.lines, False, echo_out, prefix)
        self._err = _LineRecorder(self.lines, True, echo_err, prefix)
        self._out.replaced, self._err.replaced = self._saved
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
        return False, e, _format_exception(e), cap.lines, start, time.time()


def _format_exception(e):
    import traceback  # imported when needed: a worker starts faster without it

    return "".join(traceback.format_exception(type(e), e, e.__traceback__))


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


def _error_payload(exc, tb_text, raised=False):
    """Pickle an exception if it can make the round trip; always keep type, message, tb.

    ``raised`` says the job's function raised it (only such failures may be cached)."""
    type_name = "%s.%s" % (type(exc).__module__, type(exc).__qualname__)
    try:
        message = str(exc)
    except Exception:
        message = "<str() of the exception failed>"
    pickled = None
    dumpers = [pickle.dumps]
    if type(exc).__module__ == "__main__":  # a script's class: by value, as its functions
        dumpers.append(_cloudpickle_dumps)
    for dumps in dumpers:
        try:
            data = dumps(exc, protocol=pickle.HIGHEST_PROTOCOL)
            pickle.loads(data)  # an exception that pickles but cannot be rebuilt is common
            pickled = data
            break
        except Exception:
            pickled = None
    return (pickled, type_name, message, tb_text, raised)


def _cloudpickle_dumps(obj, protocol=None):
    import cloudpickle

    return cloudpickle.dumps(obj, protocol=protocol)


def code_key(code):
    """What identifies a code object across a pickle round trip (not its file name:
    cloudpickle replaces that)."""
    import zlib

    return (code.co_name, code.co_firstlineno, zlib.crc32(code.co_code))


def _register_sources(sources):
    """Make ``linecache`` (and so tracebacks) show these files' lines: the source of a
    function sent by value, whose file this process may not have (a notebook cell)."""
    import linecache

    for filename, lines in (sources[0] if sources else {}).items():
        lines = list(lines)
        # no mtime: linecache.checkcache() keeps the entry
        linecache.cache[filename] = (sum(len(x) for x in lines), None, lines, filename)


def _with_file_names(code, files):
    import types

    consts = tuple(_with_file_names(c, files) if isinstance(c, types.CodeType) else c
                   for c in code.co_consts)
    changes = {}
    if any(consts[i] is not code.co_consts[i] for i in range(len(consts))):
        changes["co_consts"] = consts
    name = files.get(code_key(code))
    if name and name != code.co_filename:
        changes["co_filename"] = name
    return code.replace(**changes) if changes else code


def _restore_file_names(fn, sources):
    """Give the code of a function received by value (and of the ``__main__`` functions
    and classes it uses) the file names it had in the parent."""
    import types

    files = sources[1] if sources else None
    if not files:
        return
    seen = set()
    todo = [fn]
    while todo:
        obj = todo.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, type):
            if obj.__module__ == "__main__":
                todo.extend(getattr(v, "__func__", v) for v in vars(obj).values())
            continue
        if not isinstance(obj, types.FunctionType) or obj.__module__ != "__main__":
            continue
        obj.__code__ = _with_file_names(obj.__code__, files)
        names = set()
        stack = [obj.__code__]
        while stack:
            code = stack.pop()
            names.update(code.co_names)
            stack.extend(c for c in code.co_consts if isinstance(c, types.CodeType))
        todo.extend(obj.__globals__[n] for n in names if n in obj.__globals__)


def add_sys_path(paths):
    """Put ``paths`` at the front of ``sys.path`` (once each)."""
    for p in reversed(paths or ()):
        if p not in sys.path:
            sys.path.insert(0, p)


def _init_worker(init):
    """Give this worker the parent's working directory, ``sys.path`` and environment as
    they were when the parent asked for it (a fork server was started earlier than that).

    Process-level set-up (process group, parent-death signal, SIGINT) is done by
    :mod:`hither._hostworker` before the connection is served.
    """
    if init.get("cwd"):
        try:
            os.chdir(init["cwd"])
        except OSError:
            pass
    if init.get("sys_path") is not None:
        sys.path[:] = init["sys_path"]
    env = init.get("env")
    if env is not None:
        for k in [k for k in os.environ if k not in env]:
            del os.environ[k]
        for k, v in env.items():
            if os.environ.get(k) != v:
                os.environ[k] = v


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
    queue = deque()
    skipped = set()
    send_bytes = conn.send_bytes
    echo = _EchoPipe(send_bytes)

    def receive():
        msg = pickle.loads(conn.recv_bytes())
        kind = msg[0]
        if kind == "batch":
            queue.extend(msg[1])
        elif kind == "skip":  # seen at once, even when the job is deep in the queue
            skipped.add(msg[1])
        else:
            queue.append(msg)

    try:
        while True:
            while not queue:
                receive()
            while sel.select(0):  # what was sent ahead, so a "skip" is seen in time
                receive()
            msg = queue.popleft()
            kind = msg[0]
            if kind == "stop":
                return
            (_, job_id, fid, fn_bytes, kwargs_bytes, label, prefix, extra_path, timed,
             sources) = msg
            if fn_bytes is not None and fid not in functions:
                functions[fid] = _Unloaded(fn_bytes, sources)  # kept even if skipped
                _register_sources(sources)
            if job_id in skipped:
                skipped.discard(job_id)
                send_bytes(pickle.dumps(("skipped", job_id)))
                continue
            add_sys_path(extra_path)
            started = None
            if timed:
                started = lambda j=job_id: send_bytes(pickle.dumps(("started", j)))  # noqa: E731
            answer = _run_message(functions, fid, kwargs_bytes, prefix, echo, started)
            send_bytes(pickle.dumps(("done", job_id) + answer,
                                    protocol=pickle.HIGHEST_PROTOCOL))
    except (EOFError, OSError):
        return


class _EchoPipe(object):
    """Live console lines of a job, sent to the parent, which prints them where its own
    output goes (a forkserver's or a notebook's worker has no useful stdout of its own)
    and keeps them (a job stopped at its timeout keeps what it printed)."""

    def __init__(self, send_bytes, is_stderr=False):
        self._send_bytes = send_bytes
        self._is_stderr = is_stderr

    def for_stderr(self):
        return _EchoPipe(self._send_bytes, True)

    def write(self, text):
        self._send_bytes(pickle.dumps(("echo", text, self._is_stderr)))

    def flush(self):
        pass


class _Unloaded(object):
    """Function bytes received but not unpickled yet."""

    __slots__ = ("data", "sources")

    def __init__(self, data, sources=None):
        self.data = data
        self.sources = sources


def _run_message(functions, fid, kwargs_bytes, prefix, echo=None, started=None):
    start = time.time()
    try:
        fn = functions.get(fid)
        if fn is None:
            raise RuntimeError("worker protocol error: function %s was never sent" % fid)
        if isinstance(fn, _Unloaded):
            sources = fn.sources
            fn = functions[fid] = _loads_function(fn.data)
            try:
                _restore_file_names(fn, sources)
            except Exception:  # noqa: BLE001 - only for tracebacks
                pass
        kwargs = pickle.loads(kwargs_bytes)
    except BaseException as e:  # noqa: BLE001
        tb = _format_exception(e)
        note = "the worker could not load the job's function or arguments"
        return (False, _error_payload(e, note + "\n" + tb), [], start, time.time())
    if started is not None:
        started()
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
    return (False, _error_payload(value, tb, True), lines, start, end)


if __name__ == "__main__":
    # a runtime worker: ``python3 -u /hither/worker/_worker.py --stdio`` (see _stdio_worker)
    if "--stdio" in sys.argv[1:]:
        here = os.path.dirname(os.path.abspath(__file__))
        if here not in sys.path:
            sys.path.insert(0, here)
        import _stdio_worker  # type: ignore

        _stdio_worker.serve_stdio()
