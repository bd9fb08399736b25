"""Hither functions used as jobs by the tests.

They live at module level in an importable module so that worker processes started with
``spawn`` or ``forkserver`` can import them (``tests/conftest.py`` puts this folder on
``sys.path``). Executions are counted across processes by appending to a file given as an
argument.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import namedtuple

import hither as hi

Pair = namedtuple("Pair", "first second")


def _append(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, (text + "\n").encode())
    finally:
        os.close(fd)


def count_lines(path) -> int:
    """How many times a counting job appended to ``path``."""
    try:
        with open(path) as f:
            return sum(1 for line in f if line.strip())
    except FileNotFoundError:
        return 0


@hi.function("jf_identity", "1")
def jf_identity(x):
    return x


@hi.function("jf_add", "1")
def jf_add(x, y=0):
    return x + y


@hi.function("jf_type_names", "1")
def jf_type_names(a, b):
    return [f"{type(v).__module__}.{type(v).__qualname__}" for v in (a, b)]


@hi.function("jf_nested_run", "1")
def jf_nested_run(x):
    """A job that runs other hither jobs itself (on the default handler of its process)."""
    print("outer starts")
    inner = jf_add.run(x=x, y=1)
    return inner.result() * 10


@hi.function("jf_counted", "1")
def jf_counted(path, value):
    _append(str(path), f"{os.getpid()} {value!r}")
    return value


@hi.function("jf_sum", "1")
def jf_sum(values):
    return sum(values)


@hi.function("jf_print_then_raise", "1")
def jf_print_then_raise(message):
    print("before the raise, on stdout")
    print("before the raise, on stderr", file=sys.stderr)
    raise ValueError(message)


@hi.function("jf_console", "1")
def jf_console():
    print("line one out")
    print("line two err", file=sys.stderr)
    sys.stdout.write("partial ")
    sys.stdout.write("line three out\n")
    print("")
    return 7


@hi.function("jf_sleep", "1")
def jf_sleep(seconds, value=None):
    time.sleep(seconds)
    return value


@hi.function("jf_wait_for_file", "1")
def jf_wait_for_file(path, limit=30.0, value="seen"):
    deadline = time.monotonic() + limit
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear")
        time.sleep(0.02)
    return value


@hi.function("jf_rendezvous", "1")
def jf_rendezvous(mine, other, limit=10.0):
    """Announce ``mine`` and wait for ``other``: two of these finish only when run at once."""
    with open(mine, "w") as f:
        f.write(str(os.getpid()))
    deadline = time.monotonic() + limit
    while not os.path.exists(other):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{other} did not appear: the jobs did not run at the same time")
        time.sleep(0.02)
    return os.getpid()


@hi.function("jf_big_result", "1")
def jf_big_result(nbytes, delay=0.0):
    time.sleep(delay)
    return b"r" * nbytes


@hi.function("jf_len", "1")
def jf_len(x):
    return len(x)


@hi.function("jf_touch_then_sleep", "1")
def jf_touch_then_sleep(path, seconds):
    """Signal that the job started (with the worker pid), then sleep."""
    with open(str(path) + ".tmp", "w") as f:
        f.write(str(os.getpid()))
    os.replace(str(path) + ".tmp", str(path))
    time.sleep(seconds)
    return "slept"


@hi.function("jf_getpid", "1")
def jf_getpid(i=0):
    return os.getpid()


@hi.function("jf_exit_hard", "1")
def jf_exit_hard(code):
    os._exit(code)


@hi.function("jf_sigkill_self", "1")
def jf_sigkill_self():
    os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(30)


class TwoArgError(Exception):
    """An exception whose class cannot be rebuilt by unpickling (needs two arguments)."""

    def __init__(self, a, b):
        super().__init__(f"two-arg error {a} {b}")
        self.a = a
        self.b = b


@hi.function("jf_raise_two_arg", "1")
def jf_raise_two_arg():
    raise TwoArgError("left", "right")


@hi.function("jf_return_generator", "1")
def jf_return_generator():
    return (i for i in range(3))


@hi.function("jf_return_lock", "1")
def jf_return_lock():
    return threading.Lock()


@hi.function("jf_spawn_sleep_child", "1")
def jf_spawn_sleep_child(pidfile, marker):
    """Start ``sleep 300`` (tagged by ``marker`` in its environment), record its pid, wait."""
    env = dict(os.environ, HITHER_TEST_MARKER=marker)
    p = subprocess.Popen(["sleep", "300"], env=env)
    with open(str(pidfile) + ".tmp", "w") as f:
        f.write(str(p.pid))
    os.replace(str(pidfile) + ".tmp", str(pidfile))
    time.sleep(60)
    return p.pid


#: set by a test in the parent at run time: a worker that is a fresh interpreter has None
PARENT_STATE = None


@hi.function("jf_worker_facts", "1")
def jf_worker_facts(env_name=""):
    """What a host worker process looks like from inside."""
    main = sys.modules["__main__"]
    return {
        "pid": os.getpid(),
        "ppid": os.getppid(),
        "pgid": os.getpgid(0),
        "cwd": os.getcwd(),
        "sys_path": list(sys.path),
        "env": os.environ.get(env_name) if env_name else None,
        "sigint_ignored": signal.getsignal(signal.SIGINT) is signal.SIG_IGN,
        "main_file": getattr(main, "__file__", None),
        "parent_state": PARENT_STATE,
        "stdin_is_devnull": os.path.realpath("/proc/self/fd/0") == "/dev/null",
    }


# ----------------------------------------------------------------------------- test helpers
def wait_until(predicate, timeout: float = 10.0, interval: float = 0.02) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` seconds pass; return its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return bool(value)
        time.sleep(interval)


def pid_alive(pid: int) -> bool:
    """True while ``pid`` names a process that is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state != "Z"


def pids_with_marker(marker: str) -> list[int]:
    """Live (non-zombie) processes whose environment holds ``HITHER_TEST_MARKER=marker``."""
    needle = f"HITHER_TEST_MARKER={marker}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                env = f.read().split(b"\0")
        except OSError:
            continue
        if needle in env and pid_alive(int(entry)):
            found.append(int(entry))
    return found


def read_pid(path, timeout: float = 30.0) -> int:
    """Wait for a job to write its pid to ``path`` and return it."""
    if not wait_until(lambda: os.path.exists(path), timeout):
        raise AssertionError(f"{path} was not written within {timeout} s")
    with open(path) as f:
        return int(f.read())


@hi.function("jf_zero_then_sum", "1")
def jf_zero_then_sum(x):
    """Mutates its input in place (as some user code does), then sums it."""
    x[0] = 0
    return int(sum(x))


@hi.function("jf_read_after", "1")
def jf_read_after(f, go, limit=30.0):
    """Wait for the file ``go``, then read ``f`` twice, a moment apart."""
    import time

    deadline = time.monotonic() + limit
    while not os.path.exists(go) and time.monotonic() < deadline:
        time.sleep(0.01)
    with open(f) as fh:
        first = fh.read()
    time.sleep(0.2)
    with open(f) as fh:
        second = fh.read()
    return [first, second]


@hi.function("jf_make_array", "1")
def jf_make_array(n):
    import numpy as np

    return np.arange(n, dtype=np.int64)


@hi.function("jf_file_name", "1")
def jf_file_name(f):
    return os.path.basename(os.fspath(f))


@hi.function("jf_tiny", "1")
def jf_tiny(x, gate=None, seconds=0.0, fail=False, exit_code=None, spoil_clock=False):
    """A tiny job that can, on request, wait for the file ``gate`` to appear (up to 30 s),
    sleep, raise, end its worker process, or leave the worker's clock returning text."""
    if gate is not None:
        deadline = time.monotonic() + 30
        while not os.path.exists(gate) and time.monotonic() < deadline:
            time.sleep(0.01)
    if seconds:
        time.sleep(seconds)
    if fail:
        raise ValueError(f"tiny job {x} fails")
    if exit_code is not None:
        os._exit(exit_code)
    if spoil_clock:
        time.time = lambda: "not a time"
    return x + 1


@hi.function("jf_tiny_other", "1")
def jf_tiny_other(x):
    """A function of its own (no run-time history when first called)."""
    return -x


@hi.function("jf_import_attr", "1")
def jf_import_attr(module, attr):
    import importlib

    return getattr(importlib.import_module(module), attr)
