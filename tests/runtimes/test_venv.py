"""uv-built environments: locking, sharing, coexisting versions, crash-safe builds, and
workers running in them (uv downloads from PyPI when its cache is cold)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from hither.errors import RuntimeUnavailableError
from hither.runtimes import PythonEnv, VenvRuntime, clear_lock_cache
from hither.runtimes import venv as venv_mod

from .conftest import make_folders, make_spec, require

NUMPY_OLD = "numpy==1.26.4"
NUMPY_NEW = "numpy>=2"


@pytest.fixture(scope="module")
def env_root(tmp_path_factory):
    """One env folder for the module: the numpy envs are built once."""
    require("uv")
    root = tmp_path_factory.mktemp("envs")
    old = os.environ.get("HITHER_ENV_DIR")
    os.environ["HITHER_ENV_DIR"] = str(root)
    clear_lock_cache()  # locks resolved by earlier tests live in another env folder
    yield root
    if old is None:
        del os.environ["HITHER_ENV_DIR"]
    else:
        os.environ["HITHER_ENV_DIR"] = old
    clear_lock_cache()


def numpy_version(env_dir: Path) -> str:
    return subprocess.run([str(env_dir / "bin" / "python"), "-c",
                           "import numpy; print(numpy.__version__)"],
                          capture_output=True, text=True, check=True).stdout.strip()


def child(code: str, env_root: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh Python process (nothing cached in memory)."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=timeout,
                          env={**os.environ, "HITHER_ENV_DIR": str(env_root)})


def test_two_numpy_versions_coexist(env_root):
    t0 = time.monotonic()
    old = PythonEnv([NUMPY_OLD]).ensure()
    t1 = time.monotonic()
    new = PythonEnv([NUMPY_NEW]).ensure()
    t2 = time.monotonic()
    print(f"env creation: {t1 - t0:.2f} s and {t2 - t1:.2f} s")
    assert old != new and old.parent == new.parent == env_root
    assert numpy_version(old) == "1.26.4"
    assert int(numpy_version(new).split(".")[0]) >= 2
    assert numpy_version(old) == "1.26.4"  # building the second left the first intact


def test_same_requirements_share_one_env(env_root):
    a = PythonEnv([NUMPY_OLD])
    b = PythonEnv(("  numpy==1.26.4 ", NUMPY_OLD, ""))
    assert a == b and a.ensure() == b.ensure()
    assert PythonEnv(NUMPY_OLD) == a  # a single string is one requirement
    assert VenvRuntime(a).pool_key() == VenvRuntime(b).pool_key()
    assert VenvRuntime(a).pool_key() != VenvRuntime(PythonEnv([NUMPY_NEW])).pool_key()


def test_identity_is_the_lock_hash(env_root):
    env = PythonEnv([NUMPY_OLD])
    ident = VenvRuntime(env).identity()
    lock = env.lock()
    assert "numpy==1.26.4" in lock and "--hash=sha256:" in lock
    assert ident == {"kind": "venv", "lock": hashlib.sha256(lock.encode()).hexdigest(),
                     "python": f"{sys.version_info[0]}.{sys.version_info[1]}."
                               f"{sys.version_info[2]}"}
    assert ident["lock"] != VenvRuntime(PythonEnv([NUMPY_NEW])).identity()["lock"]
    assert env.path().name.startswith(ident["lock"][:16])
    saved = json.loads(next((env_root / "locks").glob("*.json")).read_text())
    assert saved["resolved_at"] and saved["lock_sha256"] in {
        ident["lock"], VenvRuntime(PythonEnv([NUMPY_NEW])).identity()["lock"]}


def test_ready_env_in_a_new_process_calls_no_uv(env_root):
    PythonEnv([NUMPY_OLD]).ensure()
    r = child("""
        import time
        t0 = time.perf_counter()
        from hither.runtimes import venv
        def no_uv(*a, **k):
            raise AssertionError("uv was called")
        venv._uv = no_uv
        t1 = time.perf_counter()
        path = venv.PythonEnv(["numpy==1.26.4"]).ensure()
        print(path, round(time.perf_counter() - t1, 4), round(t1 - t0, 4))
    """, env_root)
    assert r.returncode == 0, r.stderr
    path, took, imp = r.stdout.split()
    assert Path(path) == PythonEnv([NUMPY_OLD]).path()
    print(f"cached env in a new process: {float(took) * 1000:.1f} ms "
          f"(import {float(imp) * 1000:.0f} ms)")


def test_worker_in_env(env_root, tmp_path, workers):
    env = PythonEnv([NUMPY_OLD])
    rt = VenvRuntime(env)
    dirs = make_folders(tmp_path)
    w = workers(rt, make_spec(dirs, {"HITHER_TEST_VAR": "x"}))
    hello = w.recv()
    assert hello["numpy"] == "1.26.4"
    assert hello["python"] == ".".join(map(str, sys.version_info[:3]))
    w.send({"op": "ping"})
    assert w.recv() == {"op": "pong"}
    r = w.exec("import os, sys\nopen('f', 'w').write('x')\n"
               "result = [os.getcwd(), sys.prefix, sorted(os.environ)]")
    cwd, prefix, names = r["value"]
    assert cwd == str(dirs["out"]) and (dirs["out"] / "f").exists()
    assert Path(prefix) == env.path()
    assert "HITHER_TEST_VAR" in names
    assert set(names) <= {"PATH", "HOME", "LANG", "TMPDIR", "PYTHONNOUSERSITE",
                          "HITHER_TEST_VAR", "LC_CTYPE"}
    w.send({"op": "stop"})
    assert w.proc.wait(timeout=30) == 0


def test_real_worker_in_env(env_root, tmp_path, workers):
    w = workers(VenvRuntime(PythonEnv([NUMPY_NEW])),
                make_spec(make_folders(tmp_path, real_worker=True)))
    hello = w.recv()
    assert hello["op"] == "hello" and int(hello["numpy"].split(".")[0]) >= 2
    w.send({"op": "ping"})
    assert w.recv() == {"op": "pong"}
    w.send({"op": "stop"})
    assert w.proc.wait(timeout=30) == 0


def test_killed_build_leaves_nothing_valid(tmp_path, monkeypatch):
    require("uv")
    root = tmp_path / "envs"
    # the child builds the env fully, says so, then hangs before the rename: killed there
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import sys, time
        from hither.runtimes import venv
        orig = venv._install
        def install(*a):
            orig(*a)
            print("installed", flush=True)
            time.sleep(600)
        venv._install = install
        venv.PythonEnv(["numpy==1.26.4"]).ensure()
    """)], stdout=subprocess.PIPE, text=True, env={**os.environ, "HITHER_ENV_DIR": str(root)},
        start_new_session=True)
    try:
        assert proc.stdout.readline().strip() == "installed"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    monkeypatch.setenv("HITHER_ENV_DIR", str(root))
    env = PythonEnv([NUMPY_OLD])
    assert not env.path().exists() and not env.is_ready()
    assert list(root.glob(".tmp-*"))  # the dead build's folder, not mistaken for the env
    path = env.ensure()
    assert numpy_version(path) == "1.26.4"
    assert not list(root.glob(".tmp-*"))  # cleaned by the next build


def test_concurrent_builders_share_one_build(tmp_path):
    require("uv")
    root = tmp_path / "envs"
    code = ("from hither.runtimes import venv\n"
            "print(venv.PythonEnv(['numpy==1.26.4']).ensure())\n")
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "HITHER_ENV_DIR": str(root)})
             for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert outs[0][0] == outs[1][0]
    envs = [p for p in root.iterdir() if p.is_dir() and p.name != "locks"]
    assert len(envs) == 1 and numpy_version(envs[0]) == "1.26.4"


def test_unresolvable_requirement_is_a_runtime_error(env_root):
    with pytest.raises(RuntimeUnavailableError, match="resolving"):
        PythonEnv(["hither-no-such-package-xyz==0.0.1"]).lock()


def test_missing_uv(monkeypatch):
    monkeypatch.setitem(sys.modules, "uv", None)
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(RuntimeUnavailableError, match=r"pip install hither\[uv\]"):
        venv_mod.find_uv()
