"""Hither functions run as jobs by tests/handlers/test_dask.py.

Importable by the host worker processes on the dask workers (the handler gives them the
client's ``sys.path``) and shipped as source into containers: standard library and
``hither`` only at the top.
"""

import os
import time

import hither as hi


def _append(path, text):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, (text + "\n").encode())
    finally:
        os.close(fd)


@hi.function("dj_add", "1")
def dj_add(x, y=0):
    return x + y


@hi.function("dj_raise", "1")
def dj_raise(message):
    raise KeyError(message)


@hi.function("dj_count_then_sleep", "1")
def dj_count_then_sleep(path, seconds, after=""):
    """Append this process's pid to ``path``, sleep, then append ``after`` (if given)."""
    _append(path, str(os.getpid()))
    time.sleep(seconds)
    if after:
        _append(path, after)
    return os.getpid()


@hi.function("dj_size", "1")
def dj_size(data, store_tmp="", out=0):
    """len(data), the transfer files of the handler seen during the run, and ``out`` bytes."""
    seen = []
    if store_tmp:
        for d in os.listdir(store_tmp):
            if d.startswith("dask-"):
                for name in os.listdir(os.path.join(store_tmp, d)):
                    seen.append([name.rsplit(".", 1)[-1],
                                 os.path.getsize(os.path.join(store_tmp, d, name))])
    return [len(data), seen, b"x" * out]


@hi.function("dj_pid", "1")
def dj_pid(i=0):
    return os.getpid()


@hi.function("dj_print", "1")
def dj_print(n):
    for i in range(n):
        print("printed line", i)
    return n
