"""ParallelJobHandler: worker processes, crashes, cancel, shutdown, start methods, scripts."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid

import pytest
from jobfuncs import (
    jf_add,
    jf_big_result,
    jf_exit_hard,
    jf_getpid,
    jf_identity,
    jf_len,
    jf_raise_two_arg,
    jf_rendezvous,
    jf_return_generator,
    jf_return_lock,
    jf_sigkill_self,
    jf_sleep,
    jf_spawn_sleep_child,
    jf_touch_then_sleep,
    jf_wait_for_file,
    pid_alive,
    pids_with_marker,
    read_pid,
    wait_until,
)

import hither as hi

RESULT_TIMEOUT = 30


def _all_dead(pids, timeout=5.0) -> list[int]:
    """The pids still alive after ``timeout`` seconds."""
    wait_until(lambda: not any(pid_alive(p) for p in pids), timeout=timeout)
    return [p for p in pids if pid_alive(p)]


# ----------------------------------------------------------------------------- cancel
@pytest.mark.timeout(60)
def test_cancel_running_job_kills_its_worker_and_others_go_on(worker_handler, tmp_path):
    started = tmp_path / "started"
    go = tmp_path / "go"
    with hi.Config(job_handler=worker_handler):
        long = jf_touch_then_sleep.run(path=str(started), seconds=60)
        pid = read_pid(started)
        other = jf_wait_for_file.run(path=str(go), value="other")
        more = [jf_add.run(x=i, y=1) for i in range(4)]
    assert wait_until(lambda: long.get_status() is hi.JobStatus.RUNNING, timeout=10)
    assert long.running()
    assert pid in worker_handler.worker_pids
    t0 = time.monotonic()
    assert long.cancel() is True
    with pytest.raises(hi.JobCancelledException):
        long.result(timeout=15)
    assert time.monotonic() - t0 < 15
    assert long.get_status() is hi.JobStatus.CANCELLED
    assert long.cancelled()
    assert _all_dead([pid]) == [], f"worker {pid} of the cancelled job is still alive"
    assert pid not in worker_handler.worker_pids
    go.write_text("")
    assert other.result(timeout=RESULT_TIMEOUT) == "other"
    assert [j.result(timeout=RESULT_TIMEOUT) for j in more] == [1, 2, 3, 4]


@pytest.mark.timeout(60)
def test_cancel_job_that_started_a_subprocess_leaves_no_process(worker_handler, tmp_path):
    pidfile = tmp_path / "sleep.pid"
    marker = uuid.uuid4().hex
    with hi.Config(job_handler=worker_handler):
        job = jf_spawn_sleep_child.run(pidfile=str(pidfile), marker=marker)
    sleep_pid = read_pid(pidfile)
    assert pid_alive(sleep_pid)
    assert pids_with_marker(marker) == [sleep_pid]
    assert job.cancel() is True
    with pytest.raises(hi.JobCancelledException):
        job.result(timeout=15)
    assert _all_dead([sleep_pid]) == [], "the job's `sleep 300` survived the cancel"
    assert wait_until(lambda: not pids_with_marker(marker), timeout=5)


@pytest.mark.timeout(60)
def test_job_timeout_kills_what_the_job_started(worker_handler, tmp_path):
    pidfile = tmp_path / "sleep.pid"
    with hi.Config(job_handler=worker_handler, job_timeout=2):
        job = jf_spawn_sleep_child.run(pidfile=str(pidfile), marker=uuid.uuid4().hex)
    sleep_pid = read_pid(pidfile)
    with pytest.raises(hi.JobTimeoutError):
        job.result(timeout=30)
    assert _all_dead([sleep_pid]) == []


# ----------------------------------------------------------------------------- scheduling
# (the scheduling policy does not depend on the start method: one method keeps these short;
# correct behaviour takes well under a second, the limits only bound a failure)
@pytest.fixture
def spawn_handler():
    h = hi.ParallelJobHandler(2, start_method="spawn")
    yield h
    h.shutdown(wait=False, cancel=True)


@pytest.mark.timeout(60)
def test_jobs_submitted_together_run_at_the_same_time(spawn_handler, tmp_path):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    with hi.Config(job_handler=spawn_handler):
        j1 = jf_rendezvous.run(mine=a, other=b, limit=4)
        j2 = jf_rendezvous.run(mine=b, other=a, limit=4)
    pids = {j1.result(timeout=RESULT_TIMEOUT), j2.result(timeout=RESULT_TIMEOUT)}
    assert len(pids) == 2


@pytest.mark.timeout(60)
def test_short_job_does_not_wait_behind_a_long_one(spawn_handler, tmp_path):
    started = tmp_path / "started"
    with hi.Config(job_handler=spawn_handler):
        long = jf_touch_then_sleep.run(path=str(started), seconds=60)
        read_pid(started)
        short = jf_add.run(x=1, y=1)
    try:
        assert short.result(timeout=4) == 2
    finally:
        long.cancel()


@pytest.mark.timeout(60)
def test_cancel_job_queued_behind_a_running_one_is_prompt(tmp_path):
    """One worker: the second job is sent ahead to the busy worker; cancelling it must not
    wait for the running job to end."""
    go = tmp_path / "go"
    h = hi.ParallelJobHandler(1, start_method="spawn")
    try:
        with hi.Config(job_handler=h):
            running = jf_wait_for_file.run(path=str(go), limit=40, value="first")
            assert wait_until(lambda: running.get_status() is hi.JobStatus.RUNNING, 10)
            queued = jf_add.run(x=1, y=1)
            after = jf_add.run(x=2, y=2)
        assert queued.get_status() is hi.JobStatus.QUEUED
        assert queued.cancel() is True
        with pytest.raises(hi.JobCancelledException):
            queued.result(timeout=3)
        assert queued.get_status() is hi.JobStatus.CANCELLED
        assert not running.done()
    finally:
        go.write_text("")
    assert running.result(timeout=RESULT_TIMEOUT) == "first"
    assert after.result(timeout=RESULT_TIMEOUT) == 4
    assert queued.cancelled()
    h.shutdown(wait=False, cancel=True)


@pytest.mark.timeout(60)
def test_large_argument_and_large_result_at_once_do_not_deadlock():
    """A big argument sent to a worker while it sends back a big result."""
    n = 8 * 1024 * 1024
    h = hi.ParallelJobHandler(1, start_method="spawn")
    with hi.Config(job_handler=h):
        wpid = jf_getpid.run().result(timeout=RESULT_TIMEOUT)
        big_result = jf_big_result.run(nbytes=n, delay=0.3)
    made: dict = {}

    def submit():  # in a thread: a deadlock must not hang the test itself
        with hi.Config(job_handler=h):
            made["job"] = jf_len.run(x=b"a" * n)

    t = threading.Thread(target=submit, daemon=True)
    t.start()
    t.join(15)
    try:
        assert not t.is_alive(), ".run() blocked sending the argument to the busy worker"
        assert len(big_result.result(timeout=RESULT_TIMEOUT)) == n
        assert made["job"].result(timeout=RESULT_TIMEOUT) == n
    finally:
        if t.is_alive():  # unblock it: the worker's death makes the send fail
            os.kill(wpid, signal.SIGKILL)
            t.join(10)
        h.shutdown(wait=False, cancel=True)


@pytest.mark.timeout(60)
def test_job_timeout_counts_from_the_start_of_the_job():
    """A job that waits in the queue longer than its job_timeout is not timed out for it."""
    h = hi.ParallelJobHandler(1, start_method="spawn")
    try:
        with hi.Config(job_handler=h):
            first = jf_sleep.run(seconds=2.0, value="first")
        with hi.Config(job_handler=h, job_timeout=1):
            second = jf_sleep.run(seconds=0.05, value="second")
        assert first.result(timeout=RESULT_TIMEOUT) == "first"
        assert second.result(timeout=RESULT_TIMEOUT) == "second"
    finally:
        h.shutdown(wait=False, cancel=True)


@pytest.mark.timeout(60)
def test_warm_workers_are_reused(worker_handler):
    with hi.Config(job_handler=worker_handler):
        jobs = [jf_getpid.run(i=i) for i in range(20)]
    pids = {j.result(timeout=RESULT_TIMEOUT) for j in jobs}
    assert 1 <= len(pids) <= 2
    assert os.getpid() not in pids
    assert pids <= set(worker_handler.worker_pids)


# ----------------------------------------------------------------------------- crashes
@pytest.mark.timeout(60)
def test_worker_calling_os_exit_fails_job_and_pool_goes_on(worker_handler):
    with hi.Config(job_handler=worker_handler):
        job = jf_exit_hard.run(code=3)
    with pytest.raises(hi.WorkerCrashedError) as info:
        job.result(timeout=RESULT_TIMEOUT)
    assert "exit" in str(info.value) and "3" in str(info.value)
    assert isinstance(info.value, hi.JobError)
    assert job.get_status() is hi.JobStatus.ERROR
    with hi.Config(job_handler=worker_handler):
        after = [jf_add.run(x=i, y=1) for i in range(4)]
    assert [j.result(timeout=RESULT_TIMEOUT) for j in after] == [1, 2, 3, 4]


@pytest.mark.timeout(60)
def test_worker_killed_by_sigkill_fails_job_and_pool_goes_on(worker_handler):
    with hi.Config(job_handler=worker_handler):
        job = jf_sigkill_self.run()
        queued = [jf_add.run(x=i, y=10) for i in range(3)]
    with pytest.raises(hi.WorkerCrashedError, match="SIGKILL"):
        job.result(timeout=RESULT_TIMEOUT)
    assert job.get_status() is hi.JobStatus.ERROR
    assert [j.result(timeout=RESULT_TIMEOUT) for j in queued] == [10, 11, 12]
    with hi.Config(job_handler=worker_handler):
        assert jf_add.run(x=1, y=1).result(timeout=RESULT_TIMEOUT) == 2


@pytest.mark.timeout(60)
def test_exception_that_cannot_be_unpickled(worker_handler):
    # The premise, checked in a clean interpreter as the workers are: pickle cannot rebuild
    # it (not in this process: importing distributed (tblib) makes any exception picklable).
    premise = subprocess.run(
        [sys.executable, "-c", "import pickle, jobfuncs as f; "
         "pickle.loads(pickle.dumps(f.TwoArgError('a', 'b')))"],
        cwd=os.path.dirname(__file__), capture_output=True, text=True)
    assert premise.returncode != 0 and "TypeError" in premise.stderr, premise.stderr
    with hi.Config(job_handler=worker_handler):
        job = jf_raise_two_arg.run()
        after = jf_add.run(x=1, y=1)
    with pytest.raises(hi.JobFailedError) as info:
        job.result(timeout=RESULT_TIMEOUT)
    err = info.value
    assert "TwoArgError" in err.remote_type
    assert "TwoArgError" in str(err)
    assert "two-arg error left right" in str(err)
    assert err.traceback_text and "jf_raise_two_arg" in err.traceback_text
    assert job.get_status() is hi.JobStatus.ERROR
    assert after.result(timeout=RESULT_TIMEOUT) == 2


@pytest.mark.timeout(60)
@pytest.mark.parametrize("fn,word", [(jf_return_generator, "generator"),
                                     (jf_return_lock, "lock")])
def test_return_value_that_cannot_be_pickled(worker_handler, fn, word):
    with hi.Config(job_handler=worker_handler):
        job = fn.run()
        after = jf_add.run(x=2, y=2)
    err = job.exception(timeout=RESULT_TIMEOUT)
    assert err is not None
    assert job.get_status() is hi.JobStatus.ERROR
    assert word in str(err).lower()
    assert "return" in str(err).lower() or "result" in str(err).lower()
    assert after.result(timeout=RESULT_TIMEOUT) == 4


@pytest.mark.timeout(60)
def test_argument_that_cannot_be_pickled_raises_at_run(worker_handler):
    with hi.Config(job_handler=worker_handler):
        with pytest.raises(hi.SerializationError) as info:
            jf_identity.run(x=[1, threading.Lock()])
        assert info.value.path == "kw['x'][1]"
        assert "kw['x'][1]" in str(info.value)
        assert isinstance(info.value, TypeError)
        with pytest.raises(hi.SerializationError) as info2:
            jf_identity.run(x={"a": (0, {"b": threading.Lock()})})
        assert info2.value.path == "kw['x']['a'][1]['b']"
        assert jf_identity.run(x=[1, 2]).result(timeout=RESULT_TIMEOUT) == [1, 2]


@pytest.mark.timeout(60)
def test_unpicklable_upstream_result_fails_the_dependent_job(worker_handler):
    with hi.Config(job_handler=hi.DefaultJobHandler()):
        up = jf_return_lock.run()  # fine inline: nothing is pickled
    with hi.Config(job_handler=worker_handler):
        down = jf_identity.run(x=[0, up])
    lock = up.result()
    assert hasattr(lock, "acquire")
    with pytest.raises(hi.SerializationError) as info:
        down.result(timeout=RESULT_TIMEOUT)
    assert "kw['x'][1]" in str(info.value)
    assert down.get_status() is hi.JobStatus.ERROR


# ----------------------------------------------------------------------------- shutdown
@pytest.mark.timeout(60)
@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_with_block_then_wait_after_it(method, tmp_path):
    with hi.ParallelJobHandler(2, start_method=method) as jh:
        with hi.Config(job_handler=jh):
            a = jf_add.run(x=1, y=2)
            b = jf_add.run(x=a, y=3)
            slow = jf_sleep.run(seconds=0.3, value="slow")
            pids = [jf_getpid.run(i=i) for i in range(4)]
    # R16: jobs created inside the block have results when waited after it
    assert b.result(timeout=RESULT_TIMEOUT) == 6
    assert slow.result(timeout=RESULT_TIMEOUT) == "slow"
    assert jh.closed
    worker_pids = {j.result(timeout=RESULT_TIMEOUT) for j in pids}
    assert worker_pids and os.getpid() not in worker_pids
    assert _all_dead(worker_pids) == [], "the workers outlived the with block"
    with hi.Config(job_handler=jh):
        late = jf_add.run(x=1, y=1)
    with pytest.raises(hi.HandlerClosedError):
        late.result(timeout=RESULT_TIMEOUT)
    assert late.get_status() is hi.JobStatus.ERROR


@pytest.mark.timeout(60)
def test_with_block_that_raises_cancels_its_jobs(tmp_path):
    go = tmp_path / "go"
    with pytest.raises(RuntimeError, match="in the block"):
        with hi.ParallelJobHandler(2, start_method="spawn") as jh:
            with hi.Config(job_handler=jh):
                job = jf_wait_for_file.run(path=str(go))
            raise RuntimeError("in the block")
    with pytest.raises(hi.JobCancelledException):
        job.result(timeout=15)


@pytest.mark.timeout(60)
def test_reset_leaves_no_worker_processes(worker_handler, tmp_path):
    started = tmp_path / "started"
    seen: set[int] = set()
    with hi.Config(job_handler=worker_handler):
        seen |= {j.result(timeout=RESULT_TIMEOUT) for j in [jf_getpid.run(i=i) for i in range(6)]}
        seen |= set(worker_handler.worker_pids)
        running = jf_touch_then_sleep.run(path=str(started), seconds=60)
        seen.add(read_pid(started))
        seen |= set(worker_handler.worker_pids)
    assert seen and os.getpid() not in seen
    hi.reset()
    assert _all_dead(seen) == [], "worker processes survived hi.reset()"
    with pytest.raises(hi.JobCancelledException):
        running.result(timeout=10)
    # the handler stays usable after a reset
    with hi.Config(job_handler=worker_handler):
        assert jf_add.run(x=1, y=1).result(timeout=RESULT_TIMEOUT) == 2


@pytest.mark.timeout(60)
def test_shutdown_wait_finishes_submitted_jobs(worker_handler):
    with hi.Config(job_handler=worker_handler):
        jobs = [jf_sleep.run(seconds=0.05, value=i) for i in range(6)]
    worker_handler.shutdown(wait=True)
    assert all(j.done() for j in jobs)
    assert [j.result() for j in jobs] == list(range(6))


# ----------------------------------------------------------------------------- start methods
@pytest.mark.timeout(60)
@pytest.mark.parametrize("method", ["spawn", "forkserver", "fork"])
def test_every_start_method_works(method):
    h = hi.ParallelJobHandler(2, start_method=method)
    try:
        with hi.Config(job_handler=h):
            a = jf_add.run(x=1, y=2)
            b = jf_add.run(x=a, y=a)
            pid = jf_getpid.run()
        assert b.result(timeout=RESULT_TIMEOUT) == 6
        assert pid.result(timeout=RESULT_TIMEOUT) != os.getpid()
        assert h.start_method == method
    finally:
        h.shutdown(wait=False, cancel=True)


def test_bad_start_method_and_worker_count():
    with pytest.raises(ValueError):
        hi.ParallelJobHandler(2, start_method="teleport")
    with pytest.raises(ValueError):
        hi.ParallelJobHandler(0)


SCRIPT = '''
import sys
import hither as hi


@hi.function("script_square", "0.1.0")
def script_square(x):
    print("squaring", x)
    return x * x


def offset():
    return 1


@hi.function("script_plus_offset", "0.1.0")
def script_plus_offset(x):
    return x + offset()


if __name__ == "__main__":
    method = sys.argv[1]
    with hi.ParallelJobHandler(2, start_method=method) as jh:
        with hi.Config(job_handler=jh):
            jobs = [script_square.run(x=i) for i in range(4)]
            total = script_plus_offset.run(x=jobs[3])
    print("RESULT", [j.result() for j in jobs], total.result())
    print("CONSOLE", jobs[2].get_runtime_info()["console_out"]["lines"][0]["text"])
'''


@pytest.mark.timeout(90)
@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_main_script_with_start_method(method, tmp_path):
    script = tmp_path / "myscript.py"
    script.write_text(textwrap.dedent(SCRIPT))
    env = dict(os.environ)
    hither_root = os.path.dirname(os.path.dirname(os.path.abspath(hi.__file__)))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [hither_root, env.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, str(script), method], capture_output=True,
                          text=True, timeout=60, cwd=str(tmp_path), env=env)
    assert proc.returncode == 0, proc.stderr
    assert "RESULT [0, 1, 4, 9] 10" in proc.stdout, proc.stdout + proc.stderr
    assert "CONSOLE squaring 2" in proc.stdout


# ----------------------------------------------------------------------------- local modules
LOCAL_PKG = '''
VALUE = "from mypkg"


def shout(text):
    return text.upper() + "!"
'''

FUNC_MODULE = '''
import hither as hi


@hi.local_modules(["../mymods/mypkg"])
@hi.function("{name}", "0.1.0")
def {name}(text):
    import mypkg  # imported inside the body: only importable through local_modules

    return mypkg.shout(text), mypkg.VALUE
'''


@pytest.mark.timeout(60)
def test_local_modules_work_on_the_host(handler, tmp_path, monkeypatch):
    """R3: local modules are put on sys.path wherever the function runs."""
    name = f"use_local_{uuid.uuid4().hex[:8]}"
    (tmp_path / "mymods" / "mypkg").mkdir(parents=True)
    (tmp_path / "mymods" / "mypkg" / "__init__.py").write_text(LOCAL_PKG)
    (tmp_path / "funcs").mkdir()
    (tmp_path / "funcs" / f"{name}.py").write_text(FUNC_MODULE.format(name=name))
    monkeypatch.syspath_prepend(str(tmp_path / "funcs"))
    sys.modules.pop("mypkg", None)
    try:
        with pytest.raises(ImportError):
            __import__("mypkg")  # not importable from the test process as such
        module = __import__(name)
        fn = getattr(module, name)
        with hi.Config(job_handler=handler):
            job = fn.run(text="hi")
        assert job.result(timeout=RESULT_TIMEOUT) == ("HI!", "from mypkg")
    finally:
        sys.modules.pop("mypkg", None)
        sys.modules.pop(name, None)


@pytest.mark.timeout(60)
def test_timeout_of_a_job_given_straight_to_an_idle_worker_is_enforced():
    """submit() may hand a job to an idle worker itself; the loop must still watch its
    deadline (it would otherwise sleep in select until some other event)."""
    h = hi.ParallelJobHandler(1, start_method="spawn")
    try:
        with hi.Config(job_handler=h):
            assert jf_add.run(x=1, y=1).result(timeout=RESULT_TIMEOUT) == 2  # warm, idle
            with hi.Config(job_timeout=1):
                job = jf_sleep.run(seconds=30)
            t0 = time.monotonic()
            with pytest.raises(hi.JobTimeoutError):
                job.result(timeout=20)
        assert time.monotonic() - t0 < 15
    finally:
        h.shutdown(wait=False, cancel=True)


def test_shut_down_handlers_release_their_file_descriptors():
    def open_fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    def one_round() -> None:
        with hi.ParallelJobHandler(1, start_method="spawn") as h, hi.Config(job_handler=h):
            assert jf_add.run(x=1, y=2).result(timeout=RESULT_TIMEOUT) == 3

    one_round()
    before = open_fds()
    for _ in range(5):
        one_round()
    assert open_fds() - before < 5
