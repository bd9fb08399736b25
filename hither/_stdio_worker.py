"""The worker of a container or foreign Python environment: JSON lines on stdin/stdout.

Started as ``python3 -u /hither/worker/_worker.py --stdio``. Like :mod:`hither._worker`
it uses only the standard library and stays valid Python 3.8 (numpy only when arrays
cross), because it runs in any image.

worker -> parent, first:  {"op": "hello", "python": "3.11.2", "pid": N, "numpy": "1.24.2"|null,
                           "packages": "name==version\n..." (the runtime's distributions)}
parent -> worker:         {"op": "ping"} -> {"op": "pong"};  {"op": "stop"} -> exit 0
  {"op": "run", "id", "label", "module": {"name", "dir"}, "function", "args": manifest,
   "blobs": dir, "out": dir, "stream": prefix|null}
  -> {"op": "echo", "text", "stderr"} lines streamed live while the job runs (when
     "stream" is set: the job shows its console, or it has a timeout)
  -> {"op": "done", "id", "ok", "result": manifest|null,
      "error": {"type", "message", "traceback"}|null, "console": [[t, text, is_stderr]],
      "start": t, "end": t}
Blob refs in "args" are "sha256://<hex>" found under "blobs" (the store layout
blobs/sha256/ab/cd/<hex>); result blobs are written to "out" and named "out:<file>".
"""

from __future__ import annotations

import errno
import os
import signal
import sys
import time
import traceback

try:
    from ._worker import run_call  # type: ignore
except ImportError:  # run from the worker folder of a runtime
    from _worker import run_call  # type: ignore


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


def _packages(paths=None):
    """``name==version`` lines of the distributions on ``sys.path`` (sorted; the first of
    a name wins, as for imports), for the record's provenance. Read from the names of the
    ``*.dist-info`` / ``*.egg-info`` folders (one listing per path entry; nothing is
    imported or opened); an ``.egg-info`` without a version in its name is left out."""
    found = {}
    for entry in sys.path if paths is None else paths:
        try:
            names = sorted(os.listdir(entry or "."))
        except OSError:
            continue
        for name in names:
            for suffix in (".dist-info", ".egg-info"):
                if name.endswith(suffix):
                    parts = name[: -len(suffix)].split("-")
                    if len(parts) >= 2 and parts[0] and parts[1][:1].isdigit():
                        key = parts[0].replace("_", "-").replace(".", "-").lower()
                        found.setdefault(key, (parts[0].replace("_", "-"), parts[1]))
    return "".join("%s==%s\n" % found[k] for k in sorted(found))


def _blob_getter(blobs_dir):
    def get_blob(ref, kind):
        hexd = ref.split("://", 1)[-1]
        path = os.path.join(blobs_dir, "sha256", hexd[:2], hexd[2:4], hexd)
        if kind in ("npy", "file", "str"):
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
            shutil.copyfile(os.fspath(write), path)
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

    def __init__(self, send, is_stderr=False):
        self._send = send
        self._is_stderr = is_stderr

    def for_stderr(self):
        return _EchoMessages(self._send, True)

    def write(self, text):
        self._send({"op": "echo", "text": text, "stderr": self._is_stderr})

    def flush(self):
        pass


def _run_json(msg, echo=None, started=None):
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
    if started is not None:
        started()
    ok, value, tb, lines, start, end = run_call(fn, kwargs, msg.get("stream"), echo=echo)
    out = {"ok": ok, "console": [list(x) for x in lines], "start": start, "end": end,
           "result": None, "error": None}
    if ok:
        try:
            out["result"] = codec.encode(value, _blob_putter(msg["out"]), path="result")
        except BaseException as e:  # noqa: BLE001
            out["ok"] = False
            why = str(e)
            if isinstance(e, OSError) and (e.errno == errno.ENOSPC or
                                           (e.errno is None and "requested and" in why)):
                why = ("no space left on device in the store the results go through "
                       "(%s): free space, or run `hither cache gc`" % why)
            out["error"] = _error_dict(e, "the job's return value cannot be sent back: %s"
                                       % why)
    else:
        out["error"] = _error_dict(value, None, tb or "")
        out["error"]["raised"] = True  # by the job's function: the failure may be cached
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
          "numpy": _numpy_version(), "packages": _packages()})
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
            started = None
            if msg.get("timeout"):  # the parent's job_timeout clock starts with the function
                started = lambda m=msg: send({"op": "started", "id": m.get("id")})  # noqa: E731
            answer = _run_json(msg, echo, started)
            answer["op"] = "done"
            answer["id"] = msg.get("id")
            send(answer)
        else:
            send({"op": "error", "message": "unknown op %r" % (op,)})



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

