"""hither functions run by the Slurm handler tests (importable on the nodes)."""

import os
import signal
import sys
import time

import hither as hi


@hi.function("sl_add", "1")
def sl_add(x, y=0):
    print(f"adding {x} and {y}")
    return x + y


@hi.function("sl_sleep", "1")
def sl_sleep(seconds, value=None):
    print("sleeping", file=sys.stderr)
    time.sleep(seconds)
    return value


@hi.function("sl_exit", "1")
def sl_exit(code):
    os._exit(code)


@hi.function("sl_kill9", "1")
def sl_kill9():
    os.kill(os.getpid(), signal.SIGKILL)


@hi.function("sl_raise", "1")
def sl_raise(message):
    raise ValueError(message)


@hi.function("sl_where", "1")
def sl_where(i=0):
    """Where the job ran: the Slurm task and the process."""
    return {"task": os.environ.get("SLURM_ARRAY_TASK_ID"), "pid": os.getpid(), "i": i}
