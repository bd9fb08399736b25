"""Host worker processes (hither.handlers.host and .hostproc): the three start methods,
functions of ``__main__`` by value, crash reports, process groups, no orphans, no fd
leaks, and 0.4.2-style scripts without a main guard (tests/handlers/scripts/)."""

from __future__ import annotations

import gc
import linecache
import os
import select
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path

import jobfuncs
import pytest
from jobfuncs import (
    jf_add,
    jf_exit_hard,
    jf_getpid,
    jf_sigkill_self,
    jf_spawn_sleep_child,
    jf_touch_then_sleep,
    jf_worker_facts,
    pid_alive,
    read_pid,
    wait_until,
)

import hither as hi
from hither.function import function_def
from hither.handlers import host, hostproc
from hither.launch import Launch

METHODS = ["spawn", "forkserver", "fork"]
RESULT_TIMEOUT = 30
SCRIPTS = Path(__file__).parent / "scripts"
HITHER_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(hi.__file__)))


def launch_of(fn, **kwargs) -> Launch:
    fdef = function_def(fn)
    return Launch(job_id=uuid.uuid4().hex, label=fdef.name, fid=fdef.fid, fn=fdef.fn,
                  kwargs=kwargs, fn_pickle=fdef.pickled)


def run_on(worker: host.HostWorker, fn, **kwargs) -> tuple:
    """Send one job to ``worker``; its ``done`` message."""
    msg = worker.run_message(launch_of(fn, **kwargs))
    assert worker.send(msg)
    worker.sent(msg)
    assert worker.conn.poll(RESULT_TIMEOUT), "the worker did not answer"
    return worker.recv()


def all_dead(pids, timeout: float = 10.0) -> list[int]:
    wait_until(lambda: not any(pid_alive(p) for p in pids), timeout=timeout)
    return [p for p in pids if pid_alive(p)]


def main_namespace(tmp_path: Path, source: str, filename: str | None = None) -> dict:
    """Run ``source`` as a ``__main__`` module (a script, or a notebook cell when
    ``filename`` is a name that exists only in ``linecache``); its namespace."""
    source = textwrap.dedent(source)
    if filename is None:
        path = tmp_path / f"script_{uuid.uuid4().hex[:8]}.py"
        path.write_text(source)
        filename = str(path)
    else:
        lines = source.splitlines(keepends=True)
        linecache.cache[filename] = (len(source), None, lines, filename)
    ns: dict = {"__name__": "__main__"}
    exec(compile(source, filename, "exec"), ns)
    return ns


@pytest.fixture(params=METHODS)
def method(request):
    return request.param


@pytest.fixture
def handler(method):
    h = hi.ParallelJobHandler(2, start_method=method)
    yield h
    h.shutdown(wait=False, cancel=True)


# ----------------------------------------------------------------------------- the process
@pytest.mark.timeout(60)
def test_worker_process_ends_when_told_and_reports_its_exit(method):
    w = host.HostWorker(method)
    try:
        assert w.pid != os.getpid() and w.is_alive() and w.exitcode is None
        assert os.getpgid(w.pid) == w.pid, "a worker leads its own process group"
        ok = run_on(w, jf_add, x=2, y=3)
        assert ok[0] == "done" and ok[2] is True
        assert w.send(("stop",))
        ready, _, _ = select.select([w.sentinel], [], [], RESULT_TIMEOUT)
        assert ready == [w.sentinel], "the sentinel did not signal the worker's end"
        w.join(RESULT_TIMEOUT)
        assert not w.is_alive()
        assert w.exitcode == 0
    finally:
        w.kill()
        w.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("job", "kwargs", "code"), [
    (jf_exit_hard, {"code": 3}, 3),
    (jf_sigkill_self, {}, -signal.SIGKILL),
])
def test_sentinel_and_exit_code_of_a_worker_that_dies(method, job, kwargs, code):
    w = host.HostWorker(method)
    try:
        msg = w.run_message(launch_of(job, **kwargs))
        assert w.send(msg)
        ready, _, _ = select.select([w.sentinel], [], [], RESULT_TIMEOUT)
        assert ready == [w.sentinel], "the sentinel did not signal the worker's end"
        w.join(5)
        assert w.exitcode == code
    finally:
        w.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("direct", ["spawn", "fork"])
def test_without_pidfd_the_sentinel_is_a_pipe_the_worker_holds(direct, monkeypatch):
    """Where the kernel has no pidfd (macOS, old Linux), a worker started by this process
    holds the write end of a pipe until it ends."""
    monkeypatch.setattr(hostproc, "_PIDFD", False)
    w = host.HostWorker(direct)
    try:
        assert run_on(w, jf_add, x=1, y=1)[2] is True
        assert select.select([w.sentinel], [], [], 0)[0] == []
        w.send(w.run_message(launch_of(jf_exit_hard, code=7)))
        ready, _, _ = select.select([w.sentinel], [], [], RESULT_TIMEOUT)
        assert ready == [w.sentinel]
        w.join(5)
        assert w.exitcode == 7
    finally:
        w.kill()
        w.close()


@pytest.mark.timeout(60)
def test_kill_kills_the_process_group(method, tmp_path):
    w = host.HostWorker(method)
    try:
        pidfile = tmp_path / "sleep.pid"
        msg = w.run_message(launch_of(jf_spawn_sleep_child, pidfile=str(pidfile),
                                      marker=uuid.uuid4().hex))
        assert w.send(msg)
        child = read_pid(pidfile)
        assert os.getpgid(child) == w.pid
        w.kill()
        w.join(10)
        assert w.exitcode == -signal.SIGKILL
        assert all_dead([w.pid, child]) == []
    finally:
        w.close()


@pytest.mark.timeout(60)
def test_worker_has_the_parents_cwd_path_and_environment_of_its_start(
        handler, method, tmp_path, monkeypatch):
    with hi.Config(job_handler=handler):  # a first worker (and the fork server) start now
        assert jf_add.run(x=1).result(timeout=RESULT_TIMEOUT) == 1
    name = f"HITHER_TEST_{uuid.uuid4().hex[:8].upper()}"
    monkeypatch.setenv(name, "set after the fork server started")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path / "added"))
    monkeypatch.setattr(jobfuncs, "PARENT_STATE", "set in the parent")
    handler.reset()  # new workers: they must see the state of now
    with hi.Config(job_handler=handler):
        facts = jf_worker_facts.run(env_name=name).result(timeout=RESULT_TIMEOUT)
    assert facts["env"] == "set after the fork server started"
    assert facts["cwd"] == str(tmp_path)
    assert facts["sys_path"][0] == str(tmp_path / "added")
    assert facts["pgid"] == facts["pid"] != os.getpid()
    assert facts["sigint_ignored"]
    assert facts["stdin_is_devnull"]
    if method == "fork":  # a copy of this process: 0.4.2's behaviour
        assert facts["ppid"] == os.getpid()
        assert facts["parent_state"] == "set in the parent"
    else:  # a fresh interpreter: the caller's __main__ (pytest here) was never imported
        assert facts["ppid"] == (os.getpid() if method == "spawn" else host.forkserver_pid())
        assert facts["parent_state"] is None
        assert facts["main_file"] is None


@pytest.mark.timeout(60)
def test_workers_outlive_the_thread_that_started_them(method):
    """Linux's parent-death signal follows the starting *thread*: a worker started while a
    short-lived thread asked for it must not die with that thread."""
    made: list[host.HostWorker] = []

    def start() -> None:
        made.append(host.HostWorker(method))
        run_on(made[0], jf_add, x=1, y=1)  # the worker is set up (its signal asked for)

    t = threading.Thread(target=start)
    t.start()
    t.join()
    w = made[0]
    try:
        time.sleep(0.3)
        assert w.is_alive(), f"the worker died with the thread: {w.exitcode}"
        assert run_on(w, jf_add, x=1, y=1)[2] is True
    finally:
        w.kill()
        w.close()


# ----------------------------------------------------------------------------- __main__ by value
SCRIPT_FUNCTIONS = """
import hither as hi

FACTOR = 3


def helper(x):
    if x < 0:
        raise ValueError("negative input " + str(x))
    return x + 1


class Box:
    def __init__(self, value):
        self.value = value

    def doubled(self):
        return Box(self.value * 2)


@hi.function("{name}_compute", "1")
def {name}_compute(x, box=None):
    y = helper(x) * FACTOR
    return Box(y if box is None else y + box.value).doubled()
"""


@pytest.mark.timeout(60)
def test_function_of_main_with_helper_and_class_travels_by_value(handler, tmp_path):
    name = f"bv{uuid.uuid4().hex[:8]}"
    ns = main_namespace(tmp_path, SCRIPT_FUNCTIONS.format(name=name))
    compute = ns[f"{name}_compute"]
    with hi.Config(job_handler=handler):
        plain = compute.run(x=1)
        boxed = compute.run(x=1, box=ns["Box"](10))  # an object of the script's class in
        # and one out: both cross by value
        assert plain.result(timeout=RESULT_TIMEOUT).value == 12
        out = boxed.result(timeout=RESULT_TIMEOUT)
    assert isinstance(out, ns["Box"]) and out.value == 32


@pytest.mark.timeout(60)
@pytest.mark.parametrize("where", ["script", "notebook cell"])
def test_traceback_of_a_function_of_main_shows_file_line_and_source(handler, tmp_path,
                                                                     where):
    name = f"tb{uuid.uuid4().hex[:8]}"
    cell = f"/nonexistent/ipykernel_{name}/cell_7.py" if where == "notebook cell" else None
    ns = main_namespace(tmp_path, SCRIPT_FUNCTIONS.format(name=name), filename=cell)
    compute = ns[f"{name}_compute"]
    filename = compute.__code__.co_filename
    with hi.Config(job_handler=handler):
        job = compute.run(x=-4)
        with pytest.raises(ValueError, match="negative input -4"):
            job.result(timeout=RESULT_TIMEOUT)
    tb = job.get_runtime_info()["traceback"]
    assert "<dynamic-code>" not in tb
    assert f'File "{filename}", line 9, in helper' in tb, tb
    assert 'raise ValueError("negative input " + str(x))' in tb, tb
    assert f'File "{filename}", line 23, in {name}_compute' in tb, tb
    assert "y = helper(x) * FACTOR" in tb, tb


@pytest.mark.timeout(60)
def test_exception_class_of_main_comes_back_as_itself(handler, tmp_path):
    name = f"ex{uuid.uuid4().hex[:8]}"
    ns = main_namespace(tmp_path, f"""
        import hither as hi

        class ScriptError(Exception):
            pass

        @hi.function("{name}", "1")
        def {name}():
            raise ScriptError("from the script")
        """)
    with hi.Config(job_handler=handler):
        job = ns[name].run()
        with pytest.raises(ns["ScriptError"], match="from the script"):
            job.result(timeout=RESULT_TIMEOUT)


# ----------------------------------------------------------------------------- crashes
@pytest.mark.timeout(60)
def test_crash_messages_name_their_cause(handler):
    with hi.Config(job_handler=handler):
        exited = jf_exit_hard.run(code=3)
        killed = jf_sigkill_self.run()
        with pytest.raises(hi.WorkerCrashedError) as e_exit:
            exited.result(timeout=RESULT_TIMEOUT)
        with pytest.raises(hi.WorkerCrashedError) as e_kill:
            killed.result(timeout=RESULT_TIMEOUT)
        assert jf_add.run(x=1, y=1).result(timeout=RESULT_TIMEOUT) == 2  # replaced
    assert "exited with code 3" in str(e_exit.value)
    assert "memory" not in str(e_exit.value)
    assert "killed by SIGKILL" in str(e_kill.value)
    assert "out-of-memory" in str(e_kill.value)


def test_describe_exit_wording():
    assert "exited with code 3" in host.describe_exit(3)
    assert "memory" not in host.describe_exit(3)
    assert "killed by SIGSEGV" in host.describe_exit(-signal.SIGSEGV)
    assert "compiled code" in host.describe_exit(-signal.SIGSEGV)
    assert "killed by SIGTERM: another process sent it" in host.describe_exit(-signal.SIGTERM)
    assert "could not be learned" in host.describe_exit(None)


@pytest.mark.timeout(60)
def test_fork_server_has_no_threads():
    """Forking is safe only from a process with one thread: whatever the fork server
    imports for its workers (hither, cloudpickle) must not start any."""
    w = host.HostWorker("forkserver")
    try:
        assert run_on(w, jf_add, x=1, y=1)[2] is True
        server = host.forkserver_pid()
        assert server is not None
        assert os.listdir(f"/proc/{server}/task") == [str(server)]
        assert "hither" in open(f"/proc/{server}/cmdline").read()
    finally:
        w.kill()
        w.close()


@pytest.mark.timeout(90)
def test_fork_server_death_fails_the_running_job_and_a_new_server_starts(tmp_path):
    h = hi.ParallelJobHandler(1, start_method="forkserver")
    try:
        started = tmp_path / "started"
        with hi.Config(job_handler=h):
            job = jf_touch_then_sleep.run(path=str(started), seconds=60)
            worker = read_pid(started)
            server = host.forkserver_pid()
            assert server is not None
            os.kill(server, signal.SIGKILL)
            with pytest.raises(hi.WorkerCrashedError, match="could not be learned"):
                job.result(timeout=RESULT_TIMEOUT)
            assert all_dead([worker, server]) == []
            assert jf_add.run(x=2, y=2).result(timeout=RESULT_TIMEOUT) == 4
        assert host.forkserver_pid() not in (None, server)
    finally:
        h.shutdown(wait=False, cancel=True)


# ----------------------------------------------------------------------------- cleanup
@pytest.mark.timeout(60)
def test_no_orphan_processes_after_shutdown(method, tmp_path):
    h = hi.ParallelJobHandler(2, start_method=method)
    pidfile = tmp_path / "sleep.pid"
    with hi.Config(job_handler=h):
        pids = {j.result(timeout=RESULT_TIMEOUT) for j in [jf_getpid.run(i=i) for i in range(4)]}
        jf_spawn_sleep_child.run(pidfile=str(pidfile), marker=uuid.uuid4().hex)
        sleeper = read_pid(pidfile)
        pids |= set(h.worker_pids)
    h.shutdown(wait=False, cancel=True)
    assert all_dead(pids | {sleeper}) == [], "processes outlived the handler's shutdown"


def _open_fds() -> int:
    gc.collect()
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.timeout(120)
def test_no_fd_leaks_across_handler_create_and_shutdown(method):
    def cycle() -> None:
        h = hi.ParallelJobHandler(2, start_method=method)
        with hi.Config(job_handler=h):
            assert sum(j.result(timeout=RESULT_TIMEOUT)
                       for j in [jf_add.run(x=i) for i in range(6)]) == 15
            jf_exit_hard.run(code=5).exception(timeout=RESULT_TIMEOUT)  # a crash too
        h.shutdown(wait=True)

    cycle()  # the fork server, the launcher thread: once per process
    before = _open_fds()
    for _ in range(4):
        cycle()
    assert wait_until(lambda: _open_fds() <= before, timeout=10), \
        f"{_open_fds() - before} file descriptors leaked over 4 handlers"


# ----------------------------------------------------------------------------- scripts
def run_script(name: str, method: str, tmp_path: Path, **env: str):
    environ = dict(os.environ, HITHER_TEST_START_METHOD=method, **env)
    environ["PYTHONPATH"] = os.pathsep.join(filter(None, [HITHER_ROOT,
                                                          environ.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, str(SCRIPTS / name)], capture_output=True,
                          text=True, timeout=120, cwd=str(tmp_path), env=environ)


@pytest.mark.timeout(150)
def test_script_without_main_guard(method, tmp_path):
    runs = tmp_path / "runs"
    proc = run_script("pipeline_noguard.py", method, tmp_path, HITHER_TEST_RUNS=str(runs))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.splitlines() == [
        "result: 91",
        "scaler: Scaler True 3",
        "used: 10",
        "squares: [1, 4, 9, 16, 25, 36]",
    ], proc.stdout + proc.stderr
    assert len(runs.read_text().split()) == 1, "a worker ran the script's top level again"
    assert "Traceback" not in proc.stderr, proc.stderr


@pytest.mark.timeout(150)
def test_script_without_main_guard_failures(method, tmp_path):
    proc = run_script("errors_noguard.py", method, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "good: 4" in out
    assert "caught ScriptError: x must be positive, got -1" in out
    tb = out.split("TRACEBACK START", 1)[1].split("TRACEBACK END", 1)[0]
    script = str(SCRIPTS / "errors_noguard.py")
    assert f'File "{script}", line 19, in check_positive' in tb, tb
    assert 'raise ScriptError(f"x must be positive, got {x}")' in tb, tb
    assert "<dynamic-code>" not in tb
    crashes = [line for line in out.splitlines() if line.startswith("crash:")]
    assert len(crashes) == 2, out
    assert "'en_exit' died: it exited with code 3" in crashes[0]
    assert "memory" not in crashes[0]
    assert "'en_sigkill' died: it was killed by SIGKILL" in crashes[1]
    assert out.rstrip().endswith("done")


PARENT_DIES = """
import os, sys, time
import hither as hi
sys.path.insert(0, {handlers!r})
from jobfuncs import jf_spawn_sleep_child

h = hi.ParallelJobHandler(1, start_method={method!r})
with hi.Config(job_handler=h):
    jf_spawn_sleep_child.run(pidfile={pidfile!r}, marker="x")
    while not os.path.exists({pidfile!r}):
        time.sleep(0.02)
    print(h.worker_pids[0], flush=True)
    time.sleep(300)
"""


@pytest.mark.timeout(90)
def test_workers_die_with_a_killed_parent(method, tmp_path):
    pidfile = tmp_path / "sleep.pid"
    script = tmp_path / "parent.py"
    script.write_text(PARENT_DIES.format(handlers=str(Path(__file__).parent), method=method,
                                         pidfile=str(pidfile)))
    env = dict(os.environ, PYTHONPATH=HITHER_ROOT)
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                              text=True, env=env, cwd=str(tmp_path))
    try:
        assert parent.stdout is not None
        worker = int(parent.stdout.readline())
        sleeper = read_pid(pidfile)
        assert pid_alive(worker) and pid_alive(sleeper)
    finally:
        parent.kill()
        parent.wait()
    assert all_dead([worker], timeout=15) == [], "the worker outlived its parent"
    if method == "forkserver":  # the fork server also ends its workers' process groups
        assert all_dead([sleeper], timeout=15) == []
    else:
        os.kill(sleeper, signal.SIGKILL)


@pytest.mark.timeout(90)
def test_forked_worker_imports_what_another_thread_was_importing_at_the_fork(tmp_path):
    """A worker forked while another thread of the driver is in the middle of an import
    (its module half-initialized, its import lock held by a thread the child does not
    have) imports that module afresh, instead of waiting for that lock forever."""
    name = f"slowimp_{uuid.uuid4().hex[:8]}"
    gate = f"{name}_gate"
    (tmp_path / f"{gate}.py").write_text(textwrap.dedent("""
        import os, threading
        PARENT = os.getpid()
        STARTED, GO = threading.Event(), threading.Event()
    """))
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(f"""
        import os
        import {gate} as gate
        gate.STARTED.set()
        if os.getpid() == gate.PARENT:  # the driver's import stays under way at the fork
            gate.GO.wait(60)
        VALUE = 42
    """))
    sys.path.insert(0, str(tmp_path))
    h = hi.ParallelJobHandler(1, start_method="fork")
    importer = None
    try:
        gate_mod = __import__(gate)
        importer = threading.Thread(target=__import__, args=(name,), daemon=True)
        importer.start()
        assert gate_mod.STARTED.wait(30)
        with hi.Config(job_handler=h):
            job = jobfuncs.jf_import_attr.run(module=name, attr="VALUE")
            assert job.result(timeout=RESULT_TIMEOUT) == 42
    finally:
        if importer is not None:
            sys.modules[gate].GO.set()
            importer.join(30)
        h.shutdown(wait=False, cancel=True)
        sys.path.remove(str(tmp_path))
