"""A child process for the Ctrl-C tests: starts long jobs, says READY, waits where told.

usage: interrupt_child.py MODE STORE READY_DIR
MODE: wait-all | job-wait | result | with-exit | inline | container
On KeyboardInterrupt it prints one JSON line: how long after the SIGINT the exception
arrived, the statuses of the jobs, which worker pids are still alive, the records stored.
"""

import json
import os
import signal
import sys
import time

import hither as hi

got_signal = []


def on_sigint(signum, frame):
    got_signal.append(time.monotonic())
    raise KeyboardInterrupt




@hi.function("long_job", "0.1.0")
def long_job(i, ready):
    import time as t
    open(os.path.join(ready, f"started-{i}"), "w").close()
    t.sleep(120)
    return i


@hi.function("long_cjob", "0.1.0", container="docker://local/py3numpy:bookworm")
def long_cjob(i):
    import time as t
    t.sleep(120)
    return i


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def main():
    signal.signal(signal.SIGINT, on_sigint)
    MODE, STORE, READY = sys.argv[1], sys.argv[2], sys.argv[3]
    cache = hi.JobCache(path=STORE)
    jobs = []
    pids = []
    handler = None
    try:
        if MODE == "inline":
            with hi.Config(job_cache=cache):
                jobs.append(long_job.run(i=0, ready=READY))
                print("READY", flush=True)
                jobs[0].wait()
        elif MODE == "container":
            with hi.Config(job_cache=cache, container=True):
                jobs.append(long_cjob.run(i=0))
                time.sleep(0.5)
                print("READY", flush=True)
                jobs[0].result()
        elif MODE == "with-exit":
            with hi.ParallelJobHandler(2) as handler:
                with hi.Config(job_handler=handler, job_cache=cache):
                    jobs = [long_job.run(i=i, ready=READY) for i in range(3)]
                while len(os.listdir(READY)) < 2:
                    time.sleep(0.05)
                pids = handler.worker_pids
                print("READY", flush=True)
        else:
            handler = hi.ParallelJobHandler(2)
            with hi.Config(job_handler=handler, job_cache=cache):
                jobs = [long_job.run(i=i, ready=READY) for i in range(3)]
                down = long_job.run(i=jobs[0], ready=READY)  # waits for an upstream job
                jobs.append(down)
            while len(os.listdir(READY)) < 2:
                time.sleep(0.05)
            pids = handler.worker_pids
            print("READY", flush=True)
            if MODE == "wait-all":
                hi.wait()
            elif MODE == "job-wait":
                jobs[0].wait()
            elif MODE == "result":
                jobs[1].result()
        print(json.dumps({"interrupted": False}), flush=True)
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C: already handled
        latency = time.monotonic() - got_signal[0] if got_signal else None
        deadline = time.monotonic() + 10
        while any(alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        records = hi.JobCache(path=STORE).store.record_keys()
        print(json.dumps({
            "interrupted": True,
            "latency": latency,
            "statuses": [j.get_status().value for j in jobs],
            "alive": [p for p in pids if alive(p)],
            "records": len(records),
        }), flush=True)


if __name__ == "__main__":
    main()
