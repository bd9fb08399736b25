"""What differs for jobs in a runtime (container or environment) from host jobs; the shared
contract is in ``hither.testing.contract``.

Values cross as data (hither's codec), not as pickled objects: a value outside the codec is
refused at ``.run()`` with a SerializationError naming where it sits. A job's stdin is
empty. A worker killed from outside says so.
"""

from __future__ import annotations

import datetime
import fractions
import os
import signal
import time

import pytest

import hither as hi
from hither.testing.cases import leftovers, worker_processes
from hither.testing.jobs import ht_add, ht_identity, ht_sleep

from .cfuncs import c_read_stdin, c_return_object
from .conftest import make_case

WAIT = 60
pytestmark = pytest.mark.timeout(120)

OUTSIDE_THE_CODEC = {
    "object": object(),
    "fraction": fractions.Fraction(1, 3),
    "datetime": datetime.datetime(2024, 5, 1),
    "function": len,
}


@pytest.mark.parametrize("name", list(OUTSIDE_THE_CODEC))
def test_a_value_outside_the_codec_is_refused_at_run_naming_its_path(runtime_config, name):
    with runtime_config.config():
        with pytest.raises(hi.SerializationError) as info:
            ht_identity.run(x={"a": [1, OUTSIDE_THE_CODEC[name]]})
    assert info.value.path == "kw['x']['a'][1]", info.value.path
    assert "kw['x']['a'][1]" in str(info.value)
    assert hi.wait(0) is None  # no job was created


def test_an_upstream_result_outside_the_codec_fails_the_job_naming_its_path(runtime_config,
                                                                              handler):
    """A host job's result (any picklable object) feeding a runtime job: refused when the
    runtime job's inputs become known; the job fails, nothing hangs."""
    with hi.Config(job_handler=hi.DefaultJobHandler()):
        up = ht_identity.run(x=fractions.Fraction(1, 3))
    with runtime_config.config(job_handler=handler):
        job = ht_identity.run(x={"a": [up]})
        with pytest.raises(hi.SerializationError) as info:
            job.result(timeout=WAIT)
        assert "kw['x']['a'][0]" in str(info.value)
        assert job.get_status() is hi.JobStatus.ERROR
        assert ht_add.run(x=1, y=2).result(timeout=WAIT) == 3


def test_a_result_outside_the_codec_fails_clearly(runtime_config, handler):
    with runtime_config.config(job_handler=handler):
        job = c_return_object.run()
        err = job.exception(timeout=WAIT)
        assert isinstance(err, (hi.JobFailedError, TypeError)), repr(err)
        assert "result['bad'][0]" in str(err) and "object" in str(err), str(err)
        assert job.get_status() is hi.JobStatus.ERROR
        assert ht_add.run(x=1, y=2).result(timeout=WAIT) == 3


@pytest.mark.parametrize("name", ["docker", "venv"])
def test_reading_stdin_in_a_job_gets_eof(name):
    case = make_case(name)
    with case.config(job_timeout=5):
        got = c_read_stdin.run().result(timeout=WAIT)
        assert ht_add.run(x=1, y=1).result(timeout=WAIT) == 2
    assert got in (["read", ""], ["error", "EOFError"]), got


@pytest.mark.parametrize("kind", ["inline", "parallel"])
@pytest.mark.parametrize("name", ["docker", "podman", "venv"])
def test_a_worker_killed_from_outside_says_so(name, kind):
    case = make_case(name)
    handler = hi.DefaultJobHandler() if kind == "inline" else hi.ParallelJobHandler(1)
    with handler, case.config(job_handler=handler):
        job = ht_sleep.run(seconds=60)
        if kind == "inline":
            import threading

            threading.Thread(target=job.exception, daemon=True).start()
        deadline = time.monotonic() + WAIT
        while True:
            assert time.monotonic() < deadline, "no worker was started"
            if name == "venv":
                found = [pid for pid, cmd in worker_processes() if "--stdio" in cmd]
            else:
                found = leftovers(os.getpid(), (name,)).get(name, [])
            if found and job.get_status() is hi.JobStatus.RUNNING:
                break
            time.sleep(0.2)
        time.sleep(0.5)  # inside the function's sleep
        if name == "venv":
            os.kill(found[0], signal.SIGKILL)
        else:
            import subprocess

            subprocess.run([name, "kill", found[0]], check=True, capture_output=True,
                           timeout=60)
        err = job.exception(timeout=WAIT)
        assert type(err) is hi.WorkerCrashedError, repr(err)
        msg = str(err)
        assert "SIGKILL" in msg and "None" not in msg, msg
        if name != "venv":
            assert "killed from outside" in msg and f"`{name} kill`" in msg, msg
        assert ht_add.run(x=1, y=1).result(timeout=WAIT) == 2


@pytest.mark.parametrize("name,kind", [("docker", "parallel"), ("venv", "inline")])
def test_an_exception_class_of_the_script_comes_back_as_itself(name, kind):
    """In the runtime the script is imported by its file name; in the caller it is
    ``__main__``: the class is found there."""
    import subprocess
    import sys

    make_case(name)  # skips or fails when the runtime is missing
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "script_custom_error.py")
    r = subprocess.run([sys.executable, script, name, kind], capture_output=True, text=True,
                       timeout=WAIT * 2, cwd=os.path.dirname(script))
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[0] == "__main__ ScriptError ('from the script', 7) True", \
        r.stdout + r.stderr
