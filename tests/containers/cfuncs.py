"""Hither functions the container tests run as jobs.

Inside a runtime this module is imported by its file name (``cfuncs``), with only the
``hither`` stand-in available: the one top-level import is ``hither``; everything else
(numpy included) is imported inside the function bodies.
"""

import hither as hi


class CustomJobError(Exception):
    """A non-built-in exception type raised by a job."""


@hi.function("c_identity", "1")
def c_identity(x):
    return x


@hi.function("c_types", "1")
def c_types(x):
    """The type names of ``x`` and, one level down, of its items, as seen by the job."""
    def name(v):
        t = type(v)
        return t.__module__ + "." + t.__qualname__

    if isinstance(x, dict):
        return [name(x), [[name(k), name(v)] for k, v in x.items()]]
    if isinstance(x, (list, tuple)):
        return [name(x), [name(v) for v in x]]
    return [name(x), []]


@hi.function("c_add", "1")
def c_add(a, b):
    return a + b


@hi.function("c_concat", "1")
def c_concat(parts, sep=""):
    return sep.join(parts)


@hi.function("c_print_then_raise", "1")
def c_print_then_raise(message):
    import sys

    print("before the error, on stdout")
    print("before the error, on stderr", file=sys.stderr)
    raise ValueError(message)


@hi.function("c_raise_custom", "1")
def c_raise_custom(message):
    raise CustomJobError(message)


@hi.function("c_console", "1")
def c_console(n):
    import sys

    for i in range(n):
        print(f"out line {i}")
        print(f"err line {i}", file=sys.stderr)
    return n


@hi.function("c_sleep", "1")
def c_sleep(seconds, marker=None):
    import time

    if marker:
        print(marker, flush=True)
    time.sleep(seconds)
    return seconds


@hi.function("c_exit", "1")
def c_exit(code):
    import os

    os._exit(code)


@hi.function("c_kill9", "1")
def c_kill9():
    import os
    import signal

    os.kill(os.getpid(), signal.SIGKILL)


@hi.function("c_worker_token", "1")
def c_worker_token(i=0):
    """A token unique to the worker process (the same for every job it runs)."""
    import builtins
    import uuid

    tok = getattr(builtins, "_hither_test_worker_token", None)
    if tok is None:
        tok = builtins._hither_test_worker_token = uuid.uuid4().hex
    return tok


@hi.function("c_ids", "1")
def c_ids():
    import os

    return {"uid": os.getuid(), "gid": os.getgid(), "cwd": os.getcwd()}


@hi.function("c_write_file", "1")
def c_write_file(name, text):
    import os

    path = os.path.join(os.getcwd(), name)
    with open(path, "w") as f:
        f.write(text)
    return hi.File(path)


@hi.function("c_read_file", "1")
def c_read_file(f):
    with open(f.path) as fh:
        return fh.read()


@hi.function("c_net", "1")
def c_net(host="1.1.1.1", port=53):
    import os
    import socket

    ifaces = sorted(os.listdir("/sys/class/net"))
    try:
        socket.create_connection((host, port), 3).close()
        err = None
    except OSError as e:
        err = f"{type(e).__name__}: {e}"
    return {"ifaces": ifaces, "connect_error": err}


@hi.function("c_exists", "1")
def c_exists(path):
    import os

    return os.path.exists(path)


@hi.function("c_plain", "1")
def c_plain(x=None):
    """Plain ints only: runs where numpy is not installed."""
    import importlib.util

    return {"n": 3, "numpy_installed": importlib.util.find_spec("numpy") is not None}


@hi.function("c_np_scalars", "1")
def c_np_scalars():
    import numpy as np

    return {"b": np.bool_(True), "i": np.int64(-7), "f": np.float32(0.25)}


@hi.function("c_np_make", "1")
def c_np_make(n):
    import numpy as np

    return {"version": np.__version__, "array": np.arange(n, dtype=np.int64) * 3}


@hi.function("c_np_double", "1")
def c_np_double(data):
    import numpy as np

    a = data["array"]
    return {"version": np.__version__, "got_type": type(a).__module__ + "." + type(a).__name__,
            "array": np.asarray(a) * 2}


@hi.function("c_np_combine", "1")
def c_np_combine(first, second):
    import numpy as np

    return {"versions": [first["version"], second["version"]],
            "total": int(np.sum(first["array"]) + np.sum(second["array"])),
            "array": np.asarray(second["array"]) - np.asarray(first["array"])}


@hi.function("c_np_sum", "1")
def c_np_sum(a):
    return int(a.sum())


@hi.function("c_net_on", "1", network=True)
def c_net_on(host="1.1.1.1", port=53):
    """Like c_net, declared with network=True."""
    return c_net(host=host, port=port)


@hi.function("c_raise_keyerror", "1")
def c_raise_keyerror(key):
    return {}[key]


@hi.function("c_open_missing", "1")
def c_open_missing(path):
    with open(path) as f:
        return f.read()


@hi.function("c_read_stdin", "1")
def c_read_stdin():
    """What a job reading standard input gets (a host worker's stdin is /dev/null)."""
    import sys

    try:
        return ["read", sys.stdin.read()]
    except (EOFError, OSError, ValueError) as e:
        return ["error", type(e).__name__]


@hi.function("c_return_object", "1")
def c_return_object():
    """A value the codec cannot carry."""
    return {"ok": 1, "bad": [object()]}


@hi.function("c_text", "1")
def c_text(unit, n, kind="str"):
    """``unit * n`` as a str, or its UTF-8 (lone surrogates kept) as bytes."""
    text = unit * n
    return text if kind == "str" else text.encode("utf-8", "surrogatepass")


@hi.function("c_nested", "1")
def c_nested(depth):
    """A list nested ``depth`` deep around 1."""
    value = 1
    for _ in range(depth):
        value = [value]
    return value


@hi.function("c_len", "1")
def c_len(x):
    """``len(x)`` and the type name, as the job sees its argument."""
    return [len(x), type(x).__name__]
