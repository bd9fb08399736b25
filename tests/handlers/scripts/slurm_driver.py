"""A pipeline driven through SlurmJobHandler's array mode, for the driver-killed test.

``python slurm_driver.py WORKDIR STORE N SECONDS``: N jobs sleeping SECONDS, then N jobs
using their results. Prints ``SUBMITTED <jobid>`` once the first array is submitted, then,
at the end, one JSON line of what happened.
"""

import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", ".."))

import hither as hi  # noqa: E402
from tests.handlers.slurmfuncs import sl_add, sl_sleep  # noqa: E402

workdir, store, n, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
jh = hi.SlurmJobHandler(working_dir=workdir, mode="array", num_workers_per_batch=8,
                        num_cores_per_job=1, poll_interval=(0.5, 2.0))
with jh, hi.Config(job_handler=jh, job_cache=hi.JobCache(path=store)):
    first = [sl_sleep.run(seconds=seconds, value=i) for i in range(n)]
    second = [sl_add.run(x=j, y=1000) for j in first]
    while not jh.arrays and not all(j.done() for j in first):
        time.sleep(0.05)
    if jh.arrays:
        print("SUBMITTED", jh.arrays[0][0], flush=True)
    hi.wait()
print(json.dumps({
    "first": [j.get_result() for j in first], "second": [j.get_result() for j in second],
    "first_hits": sum(j.cache_hit for j in first),
    "second_hits": sum(j.cache_hit for j in second),
    "arrays": jh.arrays, "calls": jh.calls}), flush=True)
