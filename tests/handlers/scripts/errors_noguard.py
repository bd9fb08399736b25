"""A hither 0.4.2-style script (no main guard) whose jobs fail: an exception raised in a
helper of the script, a worker that calls os._exit(3) and one killed by SIGKILL.

The start method comes from $HITHER_TEST_START_METHOD.
"""

import os
import signal

import hither as hi


class ScriptError(Exception):
    pass


def check_positive(x):
    if x <= 0:
        raise ScriptError(f"x must be positive, got {x}")
    return x


@hi.function("en_checked", "0.1.0")
def en_checked(x):
    return check_positive(x) * 2


@hi.function("en_exit", "0.1.0")
def en_exit(code):
    os._exit(code)


@hi.function("en_sigkill", "0.1.0")
def en_sigkill():
    os.kill(os.getpid(), signal.SIGKILL)


handler = hi.ParallelJobHandler(2, start_method=os.environ["HITHER_TEST_START_METHOD"])
with hi.Config(job_handler=handler):
    good = en_checked.run(x=2)
    bad = en_checked.run(x=-1)
    crashes = [en_exit.run(code=3), en_sigkill.run()]
    hi.wait()

print("good:", good.get_result())
try:
    bad.get_result()
except ScriptError as e:
    print("caught ScriptError:", e)
print("TRACEBACK START")
print(bad.get_runtime_info()["traceback"])
print("TRACEBACK END")
for job in crashes:
    try:
        job.get_result()
    except hi.WorkerCrashedError as e:
        print("crash:", e)
print("done")
