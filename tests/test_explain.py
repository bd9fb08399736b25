"""``hither.explaining``: what went into a key, the nearest record, lineage, key prefixes."""

from __future__ import annotations

import importlib
import os
import sys
import textwrap

import pytest

import hither as hi
from hither.explaining import (
    Explanation,
    KeyLookupError,
    describe_manifest,
    dtype_name,
    explain,
    lineage,
    open_store,
    resolve_key,
)


@hi.function("xp_add", "1")
def xp_add(x, y=0):
    return x + y


@hi.function("xp_inv", "1")
def xp_inv(x):
    return 1 / x


@hi.function("xp_first", "1")
def xp_first(n):
    return list(range(n))


@hi.function("xp_second", "1")
def xp_second(a):
    return [v * 2 for v in a]


@hi.function("xp_third", "1")
def xp_third(a):
    return sum(a)


def _cache(tmp_path):
    return hi.JobCache(path=tmp_path / "store")


def _run(cache, fn, **kwargs):
    with hi.Config(job_cache=cache):
        job = fn.run(**kwargs)
        job.exception()  # waits; a failure stays in the job
    return job


# ------------------------------------------------------------------ a module the test edits
_MODULE = '''
import hither as hi


def helper(v):
    return {helper_body}


@hi.function("{name}", "{version}")
def {name}(x):
    return helper(x)
'''


class EditableModule:
    """A module file in ``tmp_path`` that the test rewrites and reloads, as a user edits
    their code; the function keeps its name and file, so re-registering it is allowed."""

    def __init__(self, tmp_path, name):
        self.name = name
        self.dir = tmp_path / "mods"
        self.dir.mkdir()
        self.path = self.dir / f"{name}_mod.py"
        self.module = None
        self._mtime = 1_000_000_000

    def load(self, version="0.1.0", helper_body="v + 1"):
        self.path.write_text(textwrap.dedent(_MODULE).format(
            name=self.name, version=version, helper_body=helper_body))
        self._mtime += 10  # a distinct mtime, so no stale bytecode or linecache is used
        os.utime(self.path, (self._mtime, self._mtime))
        importlib.invalidate_caches()
        if self.module is None:
            sys.path.insert(0, str(self.dir))
            self.module = importlib.import_module(f"{self.name}_mod")
        else:
            self.module = importlib.reload(self.module)
        return getattr(self.module, self.name)

    def close(self):
        sys.modules.pop(f"{self.name}_mod", None)
        if str(self.dir) in sys.path:
            sys.path.remove(str(self.dir))


@pytest.fixture
def editable(tmp_path, request):
    mod = EditableModule(tmp_path, "xp_edit_" + request.node.name.replace("test_", "")[:20])
    sys.dont_write_bytecode, old = True, sys.dont_write_bytecode
    yield mod
    sys.dont_write_bytecode = old
    mod.close()


# ------------------------------------------------------------------ explain
def test_first_record_has_nothing_to_compare(tmp_path):
    cache = _cache(tmp_path)
    job = _run(cache, xp_add, x=3, y=4)
    ex = explain(job.key, cache)
    assert isinstance(ex, Explanation)
    assert ex.key == job.key and ex.has_record and ex.status == "finished"
    assert (ex.function, ex.version) == ("xp_add", "1")
    assert [(i.name, i.desc, i.job) for i in ex.inputs] == [("x", "int 3", None),
                                                            ("y", "int 4", None)]
    assert ex.nearest_key is None and ex.differences == []
    text = ex.to_text()
    assert job.key in text and "no other record of 'xp_add'" in text


def test_changed_input_is_named(tmp_path):
    cache = _cache(tmp_path)
    _run(cache, xp_add, x=3, y=1)
    job = _run(cache, xp_add, x=4, y=1)
    ex = explain(job, cache)
    assert ex.differences == ["input 'x' changed: int 3 → int 4"]
    assert "input 'x' changed: int 3 → int 4" in ex.to_text()


def test_added_input_is_named(tmp_path):
    cache = _cache(tmp_path)
    _run(cache, xp_add, x=3)
    job = _run(cache, xp_add, x=3, y=2)
    assert explain(job.key, cache).differences == ["input 'y' added: int 2"]
    back = explain(_run(cache, xp_add, x=3).key, cache)
    assert back.differences == ["input 'y' removed (was int 2)"]


def test_nearest_is_the_record_with_fewest_differences(tmp_path):
    cache = _cache(tmp_path)
    close = _run(cache, xp_add, x=1, y=1)
    _run(cache, xp_add, x=2, y=2)  # more recent, but two inputs differ
    job = _run(cache, xp_add, x=1, y=5)
    ex = explain(job, cache)
    assert ex.nearest_key == close.key
    assert ex.differences == ["input 'y' changed: int 1 → int 5"]


def test_version_change_is_named(tmp_path, editable):
    cache = _cache(tmp_path)
    fn = editable.load(version="0.1.0")
    old = _run(cache, fn, x=3)
    assert old.result() == 4
    fn = editable.load(version="0.2.0")
    job = _run(cache, fn, x=3)
    assert not job.cache_hit and job.key != old.key
    ex = explain(job, cache)
    assert ex.nearest_key == old.key
    assert ex.differences == ["version 0.1.0 → 0.2.0"]


def test_helper_change_is_named(tmp_path, editable):
    cache = _cache(tmp_path)
    fn = editable.load(helper_body="v + 1")
    old = _run(cache, fn, x=3)
    fn = editable.load(helper_body="v + 2")
    job = _run(cache, fn, x=3)
    assert job.result() == 5 and not job.cache_hit
    ex = explain(job.key, cache)
    assert ex.nearest_key == old.key
    assert ex.differences == ["code changed (helpers: helper)"]


def test_after_a_code_edit_the_previous_run_on_the_same_inputs_explains(tmp_path, editable):
    """The record to compare with is the old code on the same inputs ("code changed"),
    not a newer record of the new code on other inputs ("input changed")."""
    cache = _cache(tmp_path)
    fn = editable.load(helper_body="v + 1")
    old = _run(cache, fn, x=3)
    fn = editable.load(helper_body="v * 10")
    _run(cache, fn, x=4)  # the new code on another input, more recent than `old`
    job = _run(cache, fn, x=3)
    for ex in (explain(job.key, cache), explain(job, cache)):
        assert ex.nearest_key == old.key
        assert ex.differences == ["code changed (helpers: helper)"]


def test_job_without_record_is_explained_from_its_key(tmp_path):
    cache = _cache(tmp_path)
    ok = _run(cache, xp_inv, x=2)
    failed = _run(cache, xp_inv, x=0)  # failures are not cached by default
    assert isinstance(failed.exception(), ZeroDivisionError)
    assert open_store(cache).get_record(failed.key) is None
    ex = explain(failed)  # the job's own cache
    assert not ex.has_record and ex.status == "error"
    assert ex.key == failed.key and ex.nearest_key == ok.key
    assert ex.differences == ["input 'x' changed: int 2 → int 0"]
    assert "none: the job missed" in ex.to_text()


def test_job_without_cache_has_no_key(tmp_path):
    with hi.Config(job_cache=None):
        job = xp_add.run(x=1)
        job.wait()
    with pytest.raises(KeyLookupError) as info:
        explain(job, _cache(tmp_path))
    assert info.value.reason == "no-key"


def test_upstream_input_names_its_job(tmp_path):
    cache = _cache(tmp_path)
    with hi.Config(job_cache=cache):
        a = xp_first.run(n=3)
        b = xp_second.run(a=a)
        b.wait()
    ex = explain(b, cache)
    (inp,) = ex.inputs
    assert inp.name == "a" and inp.job == a.key and inp.digest == a.result_hash
    with hi.Config(job_cache=cache):
        b2 = xp_second.run(a=xp_first.run(n=4))
        b2.wait()
    (diff,) = explain(b2, cache).differences
    assert diff == f"input 'a' changed: list(3) → list(4); from job {a.key[:12]} → " \
                   f"{b2.kwargs['a'].key[:12]}"


# ------------------------------------------------------------------ keys and prefixes
def test_prefix_resolution(tmp_path):
    cache = _cache(tmp_path)
    job = _run(cache, xp_add, x=1)
    store = open_store(cache)
    assert resolve_key(store, job.key) == job.key
    assert resolve_key(store, job.key[:6].upper()) == job.key
    assert explain(job.key[:8], cache).key == job.key
    for bad in ("abc", "zzzzzzzz", ""):
        with pytest.raises(KeyLookupError) as info:
            resolve_key(store, bad)
        assert info.value.reason == "invalid"
    missing = "0" * 64 if not job.key.startswith("000000") else "f" * 64
    with pytest.raises(KeyLookupError) as info:
        resolve_key(store, missing[:10])
    assert info.value.reason == "unknown"


def test_ambiguous_prefix(tmp_path):
    store = open_store(tmp_path / "store")
    for key in ("abcdef01" + "0" * 56, "abcdef02" + "0" * 56):
        store.put_record(key, {"status": "finished", "result": 1})
    with pytest.raises(KeyLookupError) as info:
        resolve_key(store, "abcdef")
    assert info.value.reason == "ambiguous" and len(info.value.candidates) == 2
    assert resolve_key(store, "abcdef02") == "abcdef02" + "0" * 56


def test_missing_store_is_not_created(tmp_path):
    with pytest.raises(KeyLookupError) as info:
        open_store(tmp_path / "nowhere", must_exist=True)
    assert info.value.reason == "no-store"
    assert not (tmp_path / "nowhere").exists()


# ------------------------------------------------------------------ lineage
def test_lineage_of_a_chain(tmp_path):
    cache = _cache(tmp_path)
    with hi.Config(job_cache=cache):
        a = xp_first.run(n=3)
        b = xp_second.run(a=a)
        c = xp_third.run(a=b)
        assert c.wait() == 6
    root = lineage(c.key[:10], cache)
    nodes = list(root.walk())
    assert [(n.key, n.function, n.input_name) for n in nodes] == [
        (c.key, "xp_third", None), (b.key, "xp_second", "a"), (a.key, "xp_first", "a")]
    assert nodes[-1].values == [("n", "int 3")]
    assert root.result == "6" and nodes[1].result == "list(3)"


def _fake_record(name, inputs, key):
    return {"format": 1, "key": key, "status": "finished", "result": 0,
            "result_hash": "0" * 64,
            "provenance": {"function": {"name": name, "version": "1"}},
            "inputs": {k: {"digest": "d", "desc": "x", "job": v} for k, v in inputs.items()}}


def test_lineage_guards_cycles_missing_records_and_depth(tmp_path):
    store = open_store(tmp_path / "store")
    k1, k2, k3 = ("a1" * 32, "b2" * 32, "c3" * 32)
    store.put_record(k1, _fake_record("one", {"up": k2, "gone": "d4" * 32}, k1))
    store.put_record(k2, _fake_record("two", {"up": k1}, k2))
    root = lineage(k1, store)
    notes = {(n.key, n.note) for n in root.walk()}
    assert notes == {(k1, None), (k2, None), (k1, "cycle"), ("d4" * 32, "no record")}
    store.put_record(k3, _fake_record("three", {"up": k1}, k3))
    shallow = lineage(k3, store, max_depth=1)
    # inputs in name order: "gone" before "up"
    assert [(n.key, n.note) for n in shallow.walk()] == [(k3, None), (k1, None),
                                                        ("d4" * 32, "depth limit"),
                                                        (k2, "depth limit")]


# ------------------------------------------------------------------ describing manifests
def test_describe_manifest_never_loads_blobs():
    missing = "sha256://" + "0" * 64
    assert describe_manifest({"~": "npy", "ref": missing, "dtype": "<f8",
                              "shape": [1000, 3]}) == "ndarray float64 (1000, 3)"
    assert describe_manifest({"~": "bytes", "ref": missing, "size": 9000}) == "bytes(9000)"
    assert describe_manifest({"~": "file", "ref": missing, "name": "a.csv"}) == "File 'a.csv'"
    assert describe_manifest({"~": "tuple", "v": [1, 2]}) == "tuple(2)"
    assert describe_manifest({"b": 1, "c": 2}) == "dict(2)"
    assert describe_manifest([1, 2, 3]) == "list(3)"
    assert describe_manifest("abc") == "str 'abc'"
    assert describe_manifest(3) == "3"
    assert dtype_name("|b1") == "bool" and dtype_name("<i4") == "int32"
    assert dtype_name("<M8[ns]") == "datetime64[ns]" and dtype_name("<U5") == "<U5"


def test_lineage_follows_jobs_nested_in_lists(tmp_path):
    from jobfuncs import jf_add, jf_sum

    from hither.explaining import lineage

    cache = hi.JobCache(path=tmp_path / "store")
    with hi.Config(job_cache=cache):
        parts = [jf_add.run(x=i) for i in range(3)]
        total = jf_sum.run(values=parts)
        assert total.result() == 3
    tree = lineage(total.key, cache)
    assert [c.key for c in tree.children] == [p.key for p in parts]
    assert [c.input_name for c in tree.children] == ["values[0]", "values[1]", "values[2]"]
    assert all(c.function == "jf_add" for c in tree.children)


def test_absurd_times_in_a_record_do_not_break_explain():
    from hither.explaining import format_time

    assert format_time(1e300) == "-" and format_time(True) == "-"
