"""The hither functions the contract suite runs as jobs.

This file is shipped as source into containers and environments and imported there by its
file name (``jobs``), with only a stand-in for ``hither``: its top-level imports are the
standard library and ``hither``; numpy is imported inside the function bodies; it stays
valid Python 3.8. Host worker processes import it as ``hither.testing.jobs``.
"""

import os
import sys
import time

import hither as hi


class CustomJobError(Exception):
    """An exception class of the job's module: importable in the caller."""


@hi.function("ht_identity", "1")
def ht_identity(x):
    return x


@hi.function("ht_add", "1")
def ht_add(x, y=0):
    return x + y


@hi.function("ht_sum", "1")
def ht_sum(values):
    return sum(values)


@hi.function("ht_concat", "1")
def ht_concat(parts, sep=""):
    return sep.join(parts)


@hi.function("ht_types", "1")
def ht_types(x):
    """The type name of ``x`` and, one level down, of its items, as the job sees them."""
    def name(v):
        t = type(v)
        return t.__module__ + "." + t.__qualname__

    if isinstance(x, dict):
        return [name(x), [[name(k), name(v)] for k, v in x.items()]]
    if isinstance(x, (list, tuple)):
        return [name(x), [name(v) for v in x]]
    return [name(x), []]


@hi.function("ht_structure", "1")
def ht_structure(data):
    """What arrived in a nested structure (and whether the tuple is still one)."""
    return {"list": data["list"], "tuple": data["tuple"], "dict": data["dict"],
            "tuple_is_tuple": isinstance(data["tuple"], tuple)}


# ----------------------------------------------------------------------------- errors
@hi.function("ht_print_then_raise", "1")
def ht_print_then_raise(message):
    print("before the raise, on stdout")
    print("before the raise, on stderr", file=sys.stderr)
    raise ValueError(message)


@hi.function("ht_raise_keyerror", "1")
def ht_raise_keyerror(key):
    return {}[key]


@hi.function("ht_open_missing", "1")
def ht_open_missing(path):
    with open(path) as f:
        return f.read()


@hi.function("ht_raise_custom", "1")
def ht_raise_custom(message, code=0):
    raise CustomJobError(message, code)


@hi.function("ht_raise_local", "1")
def ht_raise_local(message):
    class LocalJobError(Exception):
        """Defined inside the function: no caller can import it."""

    raise LocalJobError(message)


# ----------------------------------------------------------------------------- console
@hi.function("ht_console", "1")
def ht_console():
    print("line one out")
    print("line two err", file=sys.stderr)
    sys.stdout.write("partial ")
    sys.stdout.write("line three out\n")
    print("")
    return 7


@hi.function("ht_console_lines", "1")
def ht_console_lines(n, delay=0.0):
    """``n`` lines on each stream, after ``delay`` seconds."""
    time.sleep(delay)
    for i in range(n):
        print(f"out line {i}")
        print(f"err line {i}", file=sys.stderr)
    return n


# ----------------------------------------------------------------------------- time, crashes
@hi.function("ht_sleep", "1")
def ht_sleep(seconds, value=None):
    time.sleep(seconds)
    return value


@hi.function("ht_print_then_sleep", "1")
def ht_print_then_sleep(seconds):
    print("printed before the sleep")
    print("printed on stderr before the sleep", file=sys.stderr)
    time.sleep(seconds)
    return seconds


@hi.function("ht_exit", "1")
def ht_exit(code):
    os._exit(code)


@hi.function("ht_kill9", "1")
def ht_kill9():
    import signal

    os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(30)


@hi.function("ht_worker_token", "1")
def ht_worker_token(i=0):
    """A token of the process running the job (the same for every job it runs)."""
    import builtins
    import uuid

    tok = getattr(builtins, "_hither_test_worker_token", None)
    if tok is None:
        tok = builtins._hither_test_worker_token = uuid.uuid4().hex
    return tok


@hi.function("ht_count", "1")
def ht_count(path, value):
    """Append a line to ``path`` (counts runs; needs the caller's files) and return value."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, f"{os.getpid()} {value!r}\n".encode())
    finally:
        os.close(fd)
    return value


# ----------------------------------------------------------------------------- numpy
@hi.function("ht_np_scalars", "1")
def ht_np_scalars():
    import numpy as np

    return {"b": np.bool_(True), "i": np.int64(-7), "f": np.float32(0.25)}


@hi.function("ht_np_make", "1")
def ht_np_make(n):
    import numpy as np

    return {"version": np.__version__, "array": np.arange(n, dtype=np.int64) * 3}


@hi.function("ht_np_double", "1")
def ht_np_double(data):
    import numpy as np

    a = data["array"]
    return {"version": np.__version__, "got_type": type(a).__module__ + "." + type(a).__name__,
            "array": np.asarray(a) * 2}
