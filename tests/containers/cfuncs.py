"""Hither functions the runtime-specific container tests run as jobs (the contract's jobs
are in ``hither.testing.jobs``).

Inside a runtime this module is imported by its file name (``cfuncs``), with only the
``hither`` stand-in available: the one top-level import is ``hither``; everything else
(numpy included) is imported inside the function bodies.
"""

import hither as hi


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
