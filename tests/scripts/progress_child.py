"""A pipeline that prints live (show_console) while a progress display may be up."""

import sys

import hither as hi


@hi.function("progress_slow", "1")
def progress_slow(i):
    import time

    time.sleep(0.2)
    print(f"line from job {i}")
    return i


if __name__ == "__main__":
    show = sys.argv[1] == "console"
    with hi.ParallelJobHandler(2) as jh, hi.Config(job_handler=jh, show_console=show):
        jobs = [progress_slow.run(i=i) for i in range(8)]
        hi.wait()
    print("results", [j.result() for j in jobs])
