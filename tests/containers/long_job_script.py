"""Run by test_cleanup.py as a subprocess: start a long container job, say READY, wait.

argv: engine ("docker"|"podman"), handler ("parallel"|"inline"). The parent then sends
SIGINT or SIGTERM and checks that no container labelled with this process's pid remains.
"""

import os
import signal
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(1, os.path.dirname(os.path.dirname(HERE)))  # the repo: tests.components


import hither as hi  # noqa: E402
from hither.testing.cases import IMAGE, leftovers  # noqa: E402
from hither.testing.jobs import ht_sleep  # noqa: E402


def main() -> None:
    # started from a shell's background job, a program inherits SIGINT ignored
    signal.signal(signal.SIGINT, signal.default_int_handler)
    engine, kind = sys.argv[1], sys.argv[2]
    handler = hi.ParallelJobHandler(2) if kind == "parallel" else hi.DefaultJobHandler()
    config = hi.Config(container=f"docker://{IMAGE}", job_handler=handler,
                       jhparams={"container_engine": engine})
    with config:
        job = ht_sleep.run(seconds=120)
    if kind == "parallel":
        deadline = time.monotonic() + 60
        while not leftovers(os.getpid()).get(engine):
            if time.monotonic() > deadline:
                print("NO CONTAINER", flush=True)
                sys.exit(2)
            time.sleep(0.1)
        print("READY", flush=True)
    else:
        print("READY", flush=True)  # the container starts while waiting below
    job.wait()
    print("FINISHED", flush=True)


if __name__ == "__main__":
    main()
