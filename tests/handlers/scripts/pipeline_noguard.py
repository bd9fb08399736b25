"""A hither 0.4.2-style script: functions, a helper and a class at top level, jobs run at
top level on a ParallelJobHandler, no ``if __name__ == "__main__":`` guard.

The start method comes from $HITHER_TEST_START_METHOD; each run of this file's top level
appends a line to $HITHER_TEST_RUNS (a worker that re-ran the script would add one).
"""

import os
import time

import hither as hi

with open(os.environ["HITHER_TEST_RUNS"], "a") as f:
    f.write(f"{os.getpid()}\n")


def offset(x):
    return x + 1


class Scaler:
    def __init__(self, factor):
        self.factor = factor

    def apply(self, x):
        return self.factor * x


@hi.function("pn_square", "0.1.0")
def pn_square(x, delay=None):
    if delay is not None:
        time.sleep(delay)
    return Scaler(2).apply(offset(x)) ** 2 // 4


@hi.function("pn_total", "0.1.0")
def pn_total(values):
    return sum(values)


@hi.function("pn_make_scaler", "0.1.0")
def pn_make_scaler(factor):
    return Scaler(factor)


@hi.function("pn_use_scaler", "0.1.0")
def pn_use_scaler(scaler, x):
    return scaler.apply(x)


job_handler = hi.ParallelJobHandler(num_workers=2,
                                    start_method=os.environ["HITHER_TEST_START_METHOD"])

with hi.Config(job_handler=job_handler):
    jobs = [pn_square.run(x=x, delay=0.05) for x in range(6)]
    total = pn_total.run(values=jobs)
    print("result:", total.wait())
    scaler = pn_make_scaler.run(factor=3).wait()
    print("scaler:", type(scaler).__name__, isinstance(scaler, Scaler), scaler.factor)
    print("used:", pn_use_scaler.run(scaler=Scaler(5), x=2).wait())
    hi.wait()

print("squares:", [j.get_result() for j in jobs])
