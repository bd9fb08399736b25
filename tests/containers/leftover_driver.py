"""Run by test_leftovers.py as a subprocess: run container jobs through a job cache at
argv[1] and without a cache (the exchange store in $TMPDIR), keep the warm workers, say
READY and wait to be killed, leaving its output folders and exchange store behind."""

import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(1, os.path.dirname(os.path.dirname(HERE)))  # the repo: tests.components

import hither as hi  # noqa: E402
from hither.testing.cases import IMAGE  # noqa: E402
from hither.testing.jobs import ht_add  # noqa: E402


def main() -> None:
    store, engine = sys.argv[1], sys.argv[2]
    base = {"container": f"docker://{IMAGE}", "jhparams": {"container_engine": engine}}
    # the handlers are kept: a handler nobody refers to any more stops its workers
    handlers = [hi.ParallelJobHandler(1), hi.ParallelJobHandler(1)]
    with hi.Config(**base, job_handler=handlers[0], job_cache=hi.JobCache(path=store)):
        assert ht_add.run(x=1, y=2).result(timeout=120) == 3
    with hi.Config(**base, job_handler=handlers[1]):
        assert ht_add.run(x=2, y=2).result(timeout=120) == 4
    print("READY", flush=True)
    time.sleep(600)


if __name__ == "__main__":
    main()
