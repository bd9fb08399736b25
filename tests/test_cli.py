"""The ``hither`` command line: cache info/ls/show/gc/clear, show, explain, errors."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from hither_store import LocalStore

import hither as hi
from hither.cli import main


def _double(v):
    return v * 2


@hi.function("cx_load", "0.1.0")
def cx_load(n):
    print(f"loading {n}")
    return np.arange(n, dtype=np.float64)


@hi.function("cx_scale", "0.1.0")
def cx_scale(a, factor):
    return _double(a) * factor


@hi.function("cx_total", "0.1.0")
def cx_total(a):
    return float(a.sum())


@hi.function("cx_fail", "0.1.0")
def cx_fail(x):
    raise ValueError(f"bad x: {x}")


@hi.function("cx_size", "0.1.0")
def cx_size(data):
    return len(data)


N = 10_000  # 80 kB of float64: stored as a blob, not inline


def run_chain(store, factor=3):
    with hi.Config(job_cache=hi.JobCache(path=store)):
        a = cx_load.run(n=N)
        b = cx_scale.run(a=a, factor=factor)
        c = cx_total.run(a=b)
        c.wait()
    return a, b, c


@pytest.fixture
def chain(tmp_path):
    store = tmp_path / "store"
    return store, run_chain(store)


def cli(capsys, *argv):
    """Run ``hither argv...``; return (exit code, stdout, stderr)."""
    code = main([str(x) for x in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(err, *words):
    assert err.count("\n") == 1 and err.startswith("hither: error: "), err
    assert "Traceback" not in err
    for w in words:
        assert w in err


# ------------------------------------------------------------------ version, help, scripts
def test_version_and_help(capsys):
    code, out, _ = cli(capsys, "--version")
    assert code == 0 and out.strip() == f"hither {hi.__version__}"
    code, out, _ = cli(capsys, "--help")
    assert code == 0
    for word in ("cache", "show", "explain", "--store"):
        assert word in out
    for sub in (["cache", "ls"], ["cache", "gc"], ["cache", "clear"], ["show"], ["explain"]):
        code, out, _ = cli(capsys, *sub, "-h")
        assert code == 0 and "--store" in out
    code, out, _ = cli(capsys, "cache", "ls", "-h")
    assert "--function" in out and "--limit" in out and "--status" in out


def test_usage_errors_exit_2(capsys):
    code, _, err = cli(capsys, "nonsense")
    assert code == 2 and "invalid choice" in err
    code, _, err = cli(capsys)
    assert code == 2 and "cache" in err


def test_python_dash_m_and_installed_script(chain):
    store, _ = chain
    res = subprocess.run([sys.executable, "-m", "hither.cli", "--version"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and res.stdout.strip() == f"hither {hi.__version__}"
    script = shutil.which("hither", path=os.pathsep.join(
        [os.path.dirname(sys.executable), os.environ.get("PATH", "")]))
    assert script is not None, "the hither console script is not installed"
    env = {**os.environ, "HITHER_STORE": str(store)}
    res = subprocess.run([script, "cache", "ls"], capture_output=True, text=True,
                         timeout=60, env=env)
    assert res.returncode == 0, res.stderr
    assert "cx_load" in res.stdout and "cx_total" in res.stdout
    assert "\x1b[" not in res.stdout  # no colors when not a terminal


# ------------------------------------------------------------------ info and ls
def test_info(chain, capsys):
    store, _ = chain
    code, out, _ = cli(capsys, "cache", "info", "--store", store)
    assert code == 0
    assert str(LocalStore(store).root) in out
    assert "3 (3 finished)" in out
    assert "blobs" in out and "temp files" in out


def test_ls_lists_records_newest_first(chain, capsys):
    store, (a, b, c) = chain
    code, out, _ = cli(capsys, "cache", "ls", "--store", store)
    assert code == 0
    rows = [line for line in out.splitlines() if line.strip()[:12] in
            (a.key[:12], b.key[:12], c.key[:12])]
    assert [r.split()[1] for r in rows] == ["cx_total", "cx_scale", "cx_load"]
    assert f"ndarray float64 ({N},)" in out and "0.1.0" in out and "finished" in out
    code, out, _ = cli(capsys, "cache", "ls", "--store", store, "--function", "cx_scale")
    assert code == 0 and "cx_scale" in out and "cx_load" not in out
    code, out, _ = cli(capsys, "cache", "ls", "--store", store, "--limit", "1")
    assert code == 0 and "cx_total" in out and "cx_load" not in out and "2 more" in out


def test_ls_status_filter_and_error_records(tmp_path, capsys):
    store = tmp_path / "store"
    with hi.Config(job_cache=hi.JobCache(path=store), cache_failing=True):
        bad = cx_fail.run(x=7)
        assert isinstance(bad.exception(), ValueError)
        cx_size.run(data=b"abc").wait()
    code, out, _ = cli(capsys, "cache", "ls", "--store", store, "--status", "error")
    assert code == 0 and "cx_fail" in out and "ValueError" in out and "cx_size" not in out
    code, out, _ = cli(capsys, "show", bad.key[:8], "--store", store)
    assert code == 0 and "ValueError: bad x: 7" in out and "traceback" in out
    code, out, _ = cli(capsys, "cache", "info", "--store", store)
    assert "2 (1 error, 1 finished)" in out


def test_ls_empty_store_is_an_error(tmp_path, capsys):
    LocalStore(tmp_path / "store")
    code, out, err = cli(capsys, "cache", "ls", "--store", tmp_path / "store")
    assert code == 1 and out == ""
    assert_one_line_error(err, "no records")


# ------------------------------------------------------------------ show
def test_show_prints_provenance_inputs_and_lineage(chain, capsys):
    store, (a, b, c) = chain
    code, out, _ = cli(capsys, "show", c.key[:10], "--store", store)
    assert code == 0
    assert c.key in out and "cx_total 0.1.0" in out and c.result_hash in out
    assert "runtime" in out and "host" in out and "hither " + hi.__version__ in out
    lineage = out[out.index("lineage"):]
    for job, name in ((c, "cx_total"), (b, "cx_scale"), (a, "cx_load")):
        assert f"{job.key[:12]} {name} 0.1.0 finished" in lineage
    assert "factor = int 3" in lineage and f"n = int {N}" in lineage
    # the input of cx_total came from cx_scale: named with its upstream key
    assert f"{b.key[:12]} cx_scale" in out[:out.index("lineage")]

    code, out, _ = cli(capsys, "cache", "show", a.key, "--store", store)
    assert code == 0 and f"loading {N}" in out  # console output
    assert f"ndarray float64 ({N},)" in out and "numpy" in out  # np is not in the key


def test_show_reads_no_result_blob(chain, capsys):
    store, (a, _, _) = chain
    rec = LocalStore(store).get_record(a.key)
    ref = rec["result"]["ref"]
    LocalStore(store).delete_blob(ref)  # described from the manifest alone
    code, out, _ = cli(capsys, "show", a.key, "--store", store)
    assert code == 0 and f"ndarray float64 ({N},)" in out


def test_show_json_and_source(chain, capsys):
    store, (_, b, _) = chain
    code, out, _ = cli(capsys, "show", b.key[:8], "--store", store, "--json")
    assert code == 0
    rec = json.loads(out)
    assert rec["key"] == b.key and rec["inputs"]["factor"]["value"] == 3
    code, out, _ = cli(capsys, "cache", "show", b.key[:8], "--store", store, "--source")
    assert code == 0
    assert "def cx_scale(a, factor):" in out and "def _double(v):" in out
    assert "helper:_double" in out


# ------------------------------------------------------------------ explain
def test_explain_names_the_changed_input(chain, capsys):
    store, (_, b, _) = chain
    _, b4, _ = run_chain(store, factor=4)
    assert not b4.cache_hit
    code, out, _ = cli(capsys, "explain", b4.key[:12], "--store", store)
    assert code == 0
    assert "input 'factor' changed: int 3 → int 4" in out
    assert f"nearest other record of 'cx_scale': {b.key[:12]}" in out
    assert "version" not in out.split("differences:")[1]


# ------------------------------------------------------------------ gc
def test_gc_deletes_unreferenced_blobs_only(tmp_path, capsys):
    store_dir = tmp_path / "store"
    a, b, c = run_chain(store_dir)
    with hi.Config(job_cache=hi.JobCache(path=store_dir)):
        sized = cx_size.run(data=b"x" * 10_000)  # input value stored as a blob
        assert sized.wait() == 10_000
    store = LocalStore(store_dir)
    orphan = store.put_bytes(b"nobody refers to me" * 1000)
    before = store.info()["blobs"]

    code, out, _ = cli(capsys, "cache", "gc", "--store", store_dir)  # too young by default
    assert code == 0 and store.has_blob(orphan) and "younger than" in out
    code, out, _ = cli(capsys, "cache", "gc", "--store", store_dir, "--min-age", "0",
                       "--dry-run")
    assert code == 0 and "would free" in out and "1 unreferenced blobs" in out
    assert store.has_blob(orphan)

    code, out, _ = cli(capsys, "cache", "gc", "--store", store_dir, "--min-age", "0")
    assert code == 0 and "freed" in out and "1 unreferenced blobs" in out
    assert not store.has_blob(orphan)
    assert store.info()["blobs"] == before - 1
    input_ref = store.get_record(sized.key)["inputs"]["data"]["value"]["ref"]
    assert store.has_blob(input_ref)
    for job in (a, b):
        assert store.has_blob(store.get_record(job.key)["result"]["ref"])

    a2, b2, c2 = run_chain(store_dir)  # everything still hits
    assert a2.cache_hit and b2.cache_hit and c2.cache_hit
    assert c2.result() == c.result()


# ------------------------------------------------------------------ clear
class _FakeTty(io.StringIO):
    def isatty(self):
        return True


def test_clear_with_yes_empties_the_store(chain, capsys):
    store, _ = chain
    code, out, _ = cli(capsys, "cache", "clear", "--yes", "--store", store)
    assert code == 0 and "Cleared" in out
    info = LocalStore(store).info()
    assert info["records"] == 0 and info["blobs"] == 0
    code, _, err = cli(capsys, "cache", "ls", "--store", store)
    assert code == 1


def test_clear_refuses_without_yes_when_not_a_terminal(chain, capsys, monkeypatch):
    store, _ = chain
    monkeypatch.setattr(sys, "stdin", io.StringIO("y\n"))
    code, out, err = cli(capsys, "cache", "clear", "--store", store)
    assert code == 2
    assert_one_line_error(err, "--yes")
    assert LocalStore(store).info()["records"] == 3


def test_clear_asks_on_a_terminal(chain, capsys, monkeypatch):
    store, _ = chain
    monkeypatch.setattr(sys, "stdin", _FakeTty("n\n"))
    code, out, _ = cli(capsys, "cache", "clear", "--store", store)
    assert code == 1 and "Delete all 3 records" in out and "Nothing deleted" in out
    assert LocalStore(store).info()["records"] == 3
    monkeypatch.setattr(sys, "stdin", _FakeTty("y\n"))
    code, out, _ = cli(capsys, "cache", "clear", "--store", store)
    assert code == 0 and LocalStore(store).info()["records"] == 0


# ------------------------------------------------------------------ errors and store location
def test_unknown_and_ambiguous_keys(chain, capsys):
    store, _ = chain
    code, out, err = cli(capsys, "show", "0123456789abcdef", "--store", store)
    assert code == 1 and out == ""
    assert_one_line_error(err, "no record with key")
    code, _, err = cli(capsys, "explain", "xyz", "--store", store)
    assert code == 2
    assert_one_line_error(err, "not a key")
    s = LocalStore(store)
    for k in ("feedbeef" + "0" * 56, "feedbeef" + "1" * 56):
        s.put_record(k, {"status": "finished", "result": 0})
    code, _, err = cli(capsys, "cache", "show", "feedbeef", "--store", store)
    assert code == 2
    assert_one_line_error(err, "ambiguous")


def test_missing_store_is_an_error_and_not_created(tmp_path, capsys):
    where = tmp_path / "nothing-here"
    for argv in (["cache", "info"], ["cache", "ls"], ["show", "abcdef"], ["cache", "gc"]):
        code, _, err = cli(capsys, *argv, "--store", where)
        assert code == 1
        assert_one_line_error(err, "no hither store")
    assert not where.exists()


def test_store_from_environment_and_top_level_option(chain, capsys, monkeypatch):
    store, (_, _, c) = chain
    monkeypatch.setenv("HITHER_STORE", str(store))
    code, out, _ = cli(capsys, "cache", "ls")
    assert code == 0 and c.key[:12] in out
    monkeypatch.setenv("HITHER_STORE", str(store.parent / "elsewhere"))
    code, out, _ = cli(capsys, "--store", store, "show", c.key[:8])
    assert code == 0 and c.key in out
