"""Incremental re-runs through the job cache, observed through call logs.

A 4-stage pipeline (load -> clean -> stats -> report, see ``tests/cachefuncs/pipeline.py``)
is written to a temporary module; after each edit of its source the module is imported
afresh and the pipeline run again. Each function logs its executions to the file named by
``HITHER_TEST_CALL_LOG``, so a test sees exactly which stages ran, on the inline handler
and on a parallel (spawn) handler alike.
"""

from __future__ import annotations

import os
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import hither as hi
from hither import hashing
from hither.handlers import host
from tests.cachefuncs import CALL_LOG_ENV, blob_files, read_calls
from tests.cachefuncs import funcs as cf
from tests.cachefuncs.pipeline import ORIGINAL, STAGES, edit, load_module

pytestmark = [
    pytest.mark.timeout(120),
    # every edit is imported as a new module: the registry notes the re-registration
    pytest.mark.filterwarnings("ignore:hither function .* is registered again:UserWarning"),
]

DATA = "1 2 -3 4\n"
EXPECTED_REPORT = "n=3 total=45.000"  # clean: [7, 13, 25]


@dataclass
class Run:
    jobs: dict[str, hi.Job]
    calls: dict[str, int]

    @property
    def executed(self) -> set[str]:
        return set(self.calls)

    def keys(self) -> dict[str, str | None]:
        return {name: job.key for name, job in self.jobs.items()}

    def result(self) -> Any:
        return self.jobs["report"].result(0)


@dataclass
class Pipeline:
    """One test's pipeline: module folder, call log, data file, cache and handler."""

    folder: Path
    log: Path
    data: Path
    cache: hi.JobCache
    handler: hi.JobHandler
    token: str = field(default_factory=lambda: uuid.uuid4().hex[:10])
    modules: list[str] = field(default_factory=list)

    def load(self, source: str = ORIGINAL, name: str | None = None):
        module = load_module(self.folder, source, self.token, name)
        self.modules.append(module.__name__)
        return module

    def run(self, module) -> Run:
        """Run the 4 stages of ``module`` once; return the jobs and who executed."""
        self.log.unlink(missing_ok=True)
        fns = {stage: getattr(module, f"{stage}_{self.token}") for stage in STAGES}
        with hi.Config(job_handler=self.handler, job_cache=self.cache):
            jobs = {"load": fns["load"].run(path=hi.File(self.data))}
            jobs["clean"] = fns["clean"].run(xs=jobs["load"])
            jobs["stats"] = fns["stats"].run(xs=jobs["clean"])
            jobs["report"] = fns["report"].run(s=jobs["stats"])
        for job in jobs.values():
            job.result(timeout=60)
        calls = dict(read_calls(self.log))
        run = Run(jobs, calls)
        # the call log and the jobs' own account agree; nothing ran twice
        assert all(n == 1 for n in calls.values()), calls
        assert {s for s, j in jobs.items() if not j.cache_hit} == run.executed
        for job in jobs.values():
            assert job.key is not None and job.result_hash is not None
        return run


@pytest.fixture(params=["inline", "parallel"])
def pipe(request, tmp_path, monkeypatch):
    folder = tmp_path / "mods"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))  # before the workers start: they copy sys.path
    log = tmp_path / "calls.log"
    monkeypatch.setenv(CALL_LOG_ENV, str(log))
    monkeypatch.setenv("HITHER_FILEHASH_DB", str(tmp_path / "filehash.sqlite"))
    hashing.clear_file_hash_memo()
    data = tmp_path / "data.txt"
    data.write_text(DATA)
    old = time.time() - 100  # past the 2 s window: the file's hash may be memoized
    os.utime(data, (old, old))
    if request.param == "inline":
        handler = hi.DefaultJobHandler()
    else:
        handler = hi.ParallelJobHandler(2, start_method="spawn")
    p = Pipeline(folder, log, data, hi.JobCache(path=tmp_path / "store"), handler)
    yield p
    handler.shutdown(wait=False, cancel=True)
    for name in p.modules:
        sys.modules.pop(name, None)
    hashing.clear_file_hash_memo()


def assert_hits_except(run: Run, executed: set[str]) -> None:
    assert run.executed == executed
    for stage, job in run.jobs.items():
        assert job.cache_hit is (stage not in executed), stage


# ----------------------------------------------------------------------------- basics
def test_second_run_executes_nothing(pipe):
    mod = pipe.load()
    first = pipe.run(mod)
    assert_hits_except(first, set(STAGES))
    assert first.result() == EXPECTED_REPORT
    second = pipe.run(mod)
    assert_hits_except(second, set())
    assert second.result() == EXPECTED_REPORT
    assert second.keys() == first.keys()
    for stage in STAGES:
        assert second.jobs[stage].result_hash == first.jobs[stage].result_hash
        assert second.jobs[stage].get_runtime_info()["cache_hit"] is True
    # the same source imported again (new function objects): still all hits
    third = pipe.run(pipe.load())
    assert_hits_except(third, set())
    assert third.keys() == first.keys()


# ----------------------------------------------------------------------------- code edits
def test_editing_a_function_reruns_it_and_its_dependents(pipe):
    first = pipe.run(pipe.load())
    src = edit(ORIGINAL, '"total": sum(xs)}', '"total": sum(xs), "max": max(xs)}')
    second = pipe.run(pipe.load(src))
    # report's code is unchanged but its input changed
    assert_hits_except(second, {"stats", "report"})
    assert second.jobs["stats"].result() == {"n": 3, "total": 45.0, "max": 25.0}
    assert second.result() == EXPECTED_REPORT
    for stage in ("load", "clean"):
        assert second.jobs[stage].key == first.jobs[stage].key
    for stage in ("stats", "report"):
        assert second.jobs[stage].key != first.jobs[stage].key
    # the miss is explained: the function's code changed
    why = hi.explain(second.jobs["stats"])
    assert why.nearest_key == first.jobs["stats"].key
    assert any("code changed" in d and f"stats_{pipe.token}" in d for d in why.differences), \
        why.differences
    why = hi.explain(second.jobs["report"])
    assert any("input 's' changed" in d for d in why.differences), why.differences


def test_editing_a_same_module_helper_reruns_its_users(pipe):
    first = pipe.run(pipe.load())
    second = pipe.run(pipe.load(edit(ORIGINAL, "return x * 3", "return x * 4")))
    assert_hits_except(second, {"clean", "stats", "report"})
    assert second.result() == "n=3 total=59.000"
    assert second.jobs["load"].key == first.jobs["load"].key
    why = hi.explain(second.jobs["clean"])
    assert any("_scale" in d for d in why.differences), why.differences


def test_editing_an_unrelated_function_reruns_nothing(pipe):
    pipe.run(pipe.load())
    src = edit(ORIGINAL, "return y * UNRELATED_CONSTANT", "return -y * UNRELATED_CONSTANT")
    src = edit(src, "UNRELATED_CONSTANT = 7", "UNRELATED_CONSTANT = 8")
    src += "\n\ndef another_unrelated():\n    return _scale(1)\n"
    assert_hits_except(pipe.run(pipe.load(src)), set())


def test_comment_docstring_and_formatting_edits_rerun_nothing(pipe):
    first = pipe.run(pipe.load())
    src = edit(ORIGINAL, "# drop negative values", "# keep the values >= 0 (edited comment)")
    src = edit(src, '"""Summary statistics."""', '"""Summary statistics, edited."""')
    src = edit(src, '"""Scale one value."""', '"""Scale one value (docstring edited)."""')
    src = edit(src, '"""A small pipeline', '"""An edited module docstring.\n\nA small pipeline')
    src = edit(src, "[_scale(x) * 2 + OFFSET for x in xs if x >= 0]",
               "[\n        _scale(x)*2+OFFSET   for x in xs\n        if x>=0\n    ]  # reflowed")
    src = edit(src, "    _log(\"stats\")\n", "\n    _log('stats')   # quotes changed\n\n")
    second = pipe.run(pipe.load(src))
    assert_hits_except(second, set())
    assert second.keys() == first.keys()


def test_reverting_an_edit_gives_full_hits(pipe):
    first = pipe.run(pipe.load())
    edited = edit(ORIGINAL, "return x * 3", "return x * 5")
    edited = edit(edited, '"total": sum(xs)}', '"total": -sum(xs)}')
    assert_hits_except(pipe.run(pipe.load(edited)), {"clean", "stats", "report"})
    reverted = pipe.run(pipe.load(ORIGINAL))
    assert_hits_except(reverted, set())
    assert reverted.keys() == first.keys()
    assert reverted.result() == EXPECTED_REPORT
    # and the edited version is remembered too
    assert_hits_except(pipe.run(pipe.load(edited)), set())


def test_changing_a_module_constant_reruns_its_users(pipe):
    first = pipe.run(pipe.load())
    second = pipe.run(pipe.load(edit(ORIGINAL, "OFFSET = 1.0", "OFFSET = 2.0")))
    assert_hits_except(second, {"clean", "stats", "report"})
    assert second.result() == "n=3 total=48.000"
    assert second.jobs["load"].key == first.jobs["load"].key


def test_a_constant_read_only_by_a_helper_is_part_of_the_key(pipe):
    pipe.run(pipe.load())
    src = edit(ORIGINAL, "OFFSET = 1.0", "OFFSET = 1.0\nFACTOR = 3")
    src = edit(src, "return x * 3", "return x * FACTOR")
    # same behaviour as before: clean re-runs (its code identity changed), nothing else
    assert_hits_except(pipe.run(pipe.load(src)), {"clean"})
    second = pipe.run(pipe.load(edit(src, "FACTOR = 3", "FACTOR = 4")))
    assert_hits_except(second, {"clean", "stats", "report"})
    assert second.result() == "n=3 total=59.000"


# ----------------------------------------------------------------------------- early cutoff
def test_early_cutoff_when_an_edit_gives_the_same_result(pipe):
    first = pipe.run(pipe.load())
    src = edit(ORIGINAL, "[_scale(x) * 2 + OFFSET", "[_scale(x) + _scale(x) + OFFSET")
    second = pipe.run(pipe.load(src))
    assert_hits_except(second, {"clean"})
    assert second.jobs["clean"].key != first.jobs["clean"].key
    assert second.jobs["clean"].result_hash == first.jobs["clean"].result_hash
    for stage in ("load", "stats", "report"):
        assert second.jobs[stage].key == first.jobs[stage].key
    assert second.result() == EXPECTED_REPORT


def test_early_cutoff_through_a_constant_of_another_type(pipe):
    pipe.run(pipe.load())
    # 1 and 1.0 are different constants (clean re-runs) but give the same floats
    assert_hits_except(pipe.run(pipe.load(edit(ORIGINAL, "OFFSET = 1.0", "OFFSET = 1"))),
                       {"clean"})


def test_version_bump_is_a_miss(pipe):
    name = f"cachepipe_{pipe.token}_fixed"  # a new version must come from the same file
    first = pipe.run(pipe.load(ORIGINAL, name=name))
    src = edit(ORIGINAL, '@hi.function("stats_TOK", "1")', '@hi.function("stats_TOK", "2.0")')
    second = pipe.run(pipe.load(src, name=name))
    # stats gives the same result: report is a hit again (early cutoff)
    assert_hits_except(second, {"stats"})
    assert second.jobs["stats"].key != first.jobs["stats"].key
    assert second.jobs["report"].key == first.jobs["report"].key
    why = hi.explain(second.jobs["stats"])
    assert "version 1 → 2.0" in why.differences, why.differences


# ----------------------------------------------------------------------------- files
def test_input_file_content_change_reruns_but_touch_does_not(pipe):
    mod = pipe.load()
    first = pipe.run(mod)
    st = pipe.data.stat()
    # touch: new mtime, same content
    t = time.time() - 50
    os.utime(pipe.data, (t, t))
    assert_hits_except(pipe.run(mod), set())
    # same size, other content, and the mtime put back: the change must still be seen
    pipe.data.write_text(DATA.replace("4", "5"))
    os.utime(pipe.data, (t, t))
    assert pipe.data.stat().st_size == st.st_size
    changed = pipe.run(mod)
    assert_hits_except(changed, set(STAGES))
    assert changed.result() == "n=3 total=51.000"
    assert changed.jobs["load"].key != first.jobs["load"].key
    # other bytes, same parsed values: load re-runs, the rest is cut off
    pipe.data.write_text(DATA.replace("4", "4.0"))
    assert_hits_except(pipe.run(mod), {"load"})
    # the original content again (a new inode, a recent mtime): all hits
    tmp = pipe.data.with_suffix(".new")
    tmp.write_text(DATA)
    os.replace(tmp, pipe.data)
    back = pipe.run(mod)
    assert_hits_except(back, set())
    assert back.keys() == first.keys()


def test_file_result_is_stored_by_content(pipe, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    with hi.Config(job_handler=pipe.handler, job_cache=pipe.cache):
        fresh = cf.cf_write_file.run(outdir=str(out), text="hello, file\n")
        fresh_bytes = cf.cf_read_file.run(f=fresh)
        assert fresh_bytes.result(timeout=60) == b"hello, file\n"
    assert isinstance(fresh.result(), hi.File)
    assert fresh.result().path == str(out / "out.txt")
    assert read_calls(pipe.log) == {"cf_write_file": 1, "cf_read_file": 1}
    # the stored copy is a blob of the store, with the same bytes
    blobs = [p for p in blob_files(pipe.cache.path) if p.read_bytes() == b"hello, file\n"]
    assert len(blobs) == 1
    (out / "out.txt").write_text("overwritten by someone else")
    pipe.log.unlink()
    with hi.Config(job_handler=pipe.handler, job_cache=pipe.cache):
        cached = cf.cf_write_file.run(outdir=str(out), text="hello, file\n")
        cached_bytes = cf.cf_read_file.run(f=cached)
        assert cached_bytes.result(timeout=60) == b"hello, file\n"
    assert cached.cache_hit and cached_bytes.cache_hit
    assert read_calls(pipe.log) == {}
    f = cached.result()
    assert isinstance(f, hi.File)
    assert f.path != str(out / "out.txt")
    with open(f, "rb") as fh:
        assert fh.read() == b"hello, file\n"
    assert cached.result_hash == fresh.result_hash
    assert cached_bytes.key == fresh_bytes.key


# ----------------------------------------------------------------------------- handlers
@pytest.mark.skipif(host.default_start_method() != "forkserver",
                    reason="no forkserver on this platform")
def test_default_parallel_handler_workers_see_the_callers_environment(tmp_path, monkeypatch):
    host.ensure_forkserver()  # started before the variable is set, as in tests/conftest.py
    monkeypatch.setenv(CALL_LOG_ENV, str(tmp_path / "calls.log"))
    handler = hi.ParallelJobHandler(2)
    try:
        with hi.Config(job_handler=handler):
            job = cf.cf_echo.run(x=1)
        assert job.result(timeout=60) == 1
        assert read_calls(tmp_path / "calls.log") == {"cf_echo": 1}
    finally:
        handler.shutdown(wait=False, cancel=True)
