"""cacheflow.lookup and record: a stored record is untrusted input, values of any text and size.

A record that cannot be used for any reason is a miss with one warning and is quarantined,
never an exception out of ``.run()`` and never a wrong value. Strings that are not valid
UTF-8 are cached; long strings and bytes are blobs, not text inside a record.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hither_store import StoreWarning

import hither as hi
from hither import hashing
from hither.hashing import MAX_DEPTH
from hither.record import hit_summary
from tests.cachefuncs import CALL_LOG_ENV, blob_path_of, read_calls
from tests.cachefuncs import funcs as cf

pytestmark = pytest.mark.timeout(180)

SURROGATES = os.fsdecode(b"caf\xe9-\xff\xfe")  # what os.fsdecode makes of non-UTF-8 names


@pytest.fixture
def log(tmp_path, monkeypatch):
    path = tmp_path / "calls.log"
    monkeypatch.setenv(CALL_LOG_ENV, str(path))
    monkeypatch.setenv("HITHER_FILEHASH_DB", str(tmp_path / "filehash.sqlite"))
    hashing.clear_file_hash_memo()
    yield path
    hashing.clear_file_hash_memo()


@pytest.fixture
def cache(tmp_path):
    return hi.JobCache(path=tmp_path / "store")


@pytest.fixture(params=["inline", "parallel"])
def handler(request, log):  # after the env is set: spawn workers inherit it
    h = hi.DefaultJobHandler() if request.param == "inline" else \
        hi.ParallelJobHandler(2, start_method="spawn")
    yield h
    h.shutdown(wait=False, cancel=True)


def run(fn, handler, cache, **kwargs):
    with hi.Config(job_handler=handler, job_cache=cache, cache_failing=True):
        job = fn.run(**kwargs)
    job.exception(timeout=120)
    return job


def quarantined(cache) -> list[str]:
    return sorted(p.name.split("-")[0] for p in (cache.path / "quarantine").iterdir())


def forge(cache, key: str, change: Callable[[dict[str, Any], Any], None]) -> None:
    """Rewrite the record of ``key`` (with a valid checksum: as another writer could)."""
    rec = cache.get_record(key)
    change(rec, cache)
    os.chmod(cache.store.record_path(key), 0o644)
    cache.store.put_record(key, rec)


def _nest(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


def _set(field: str, value: Any) -> Callable[[dict[str, Any], Any], None]:
    def change(rec: dict[str, Any], cache: Any) -> None:
        rec[field] = value
    return change


def _blob_gone(rec: dict[str, Any], cache: Any) -> None:
    path = blob_path_of(cache.path, rec["result"]["ref"])
    os.chmod(path, 0o644)
    path.unlink()


def _wrong_kind(rec: dict[str, Any], cache: Any) -> None:
    # an 'npy' node pointing at a blob that is a plain bytes blob
    ref = cache.store.put_bytes(b"these are not the bytes of a .npy file" * 200)
    rec["result"] = {"~": "npy", "ref": ref, "dtype": "<f8", "shape": [2]}


def _drop(field: str) -> Callable[[dict[str, Any], Any], None]:
    def change(rec: dict[str, Any], cache: Any) -> None:
        del rec[field]
    return change


HOSTILE = {
    "400-deep result": _set("result", _nest(400)),
    "100000-deep result": _set("result", "deep"),  # replaced below: JSON past any recursion
    "unknown tag": _set("result", {"~": "pickle", "v": "gASVAAAA"}),
    "result of the wrong type": _set("result", {"~": "tuple", "v": 7}),
    "missing blob": _blob_gone,
    "blob of the wrong kind": _wrong_kind,
    "result_hash not a digest": _set("result_hash", 12),
    "console not lines": _set("console", [["t", 1]]),
    "provenance a string": _set("provenance", "nope"),
    "times of the wrong type": _set("provenance", {"start_time": "yesterday"}),
    "unknown status": _set("status", "done"),
    "no result": _drop("result"),
    "another key": _set("key", "f" * 64),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_an_unusable_record_is_a_miss_with_one_warning_and_is_quarantined(
        name, handler, cache, log):
    fn, kwargs = (cf.cf_bytes, {"n": 50_000}) if name in ("missing blob",) \
        else (cf.cf_echo, {"x": [1, "two"]})
    first = run(fn, handler, cache, **kwargs)
    expected = first.result()
    if name == "100000-deep result":
        # written as raw JSON: json.dumps itself could not nest this deep
        text = "[" * 100_000 + "1" + "]" * 100_000
        rec = cache.get_record(first.key)
        rec["result"] = "PLACEHOLDER"
        body = json.dumps(rec, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        body = body.replace('"PLACEHOLDER"', text)
        digest = hashlib.sha256(body.encode()).hexdigest()
        path = cache.store.record_path(first.key)
        os.chmod(path, 0o644)
        path.write_text(f'{{"format":1,"key":"{first.key}","sha256":"{digest}","body":{body}}}\n')
    else:
        forge(cache, first.key, HOSTILE[name])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        second = run(fn, handler, cache, **kwargs)
    assert second.exception() is None and not second.cache_hit
    assert second.result() == expected
    mine = [w for w in caught if issubclass(w.category, UserWarning)]
    assert len(mine) == 1, [str(w.message) for w in mine]
    assert issubclass(mine[0].category, StoreWarning)
    assert first.key[:12] in str(mine[0].message)
    assert "record" in quarantined(cache)
    assert read_calls(log)[fn.__name__] == 2
    third = run(fn, handler, cache, **kwargs)  # the re-run stored a good record again
    assert third.cache_hit and third.result() == expected


def test_a_malformed_stored_failure_is_a_miss(cache, log):
    h = hi.DefaultJobHandler()
    first = run(cf.cf_fail, h, cache, kind="ValueError", message="bad")
    assert isinstance(first.exception(), ValueError)
    forge(cache, first.key, _set("error", {"type": ["x"], "message": 3}))
    with pytest.warns(StoreWarning, match="cannot be used"):
        second = run(cf.cf_fail, h, cache, kind="ValueError", message="bad")
    assert isinstance(second.exception(), ValueError) and not second.cache_hit
    assert read_calls(log)["cf_fail"] == 2


def test_a_readonly_cache_leaves_an_unusable_record_in_place(tmp_path, log):
    h = hi.DefaultJobHandler()
    cache = hi.JobCache(path=tmp_path / "store")
    first = run(cf.cf_echo, h, cache, x=5)
    forge(cache, first.key, _set("result", {"~": "nope"}))
    ro = hi.JobCache(path=tmp_path / "store", readonly=True)
    with pytest.warns(StoreWarning, match="left in place"):
        second = run(cf.cf_echo, h, ro, x=5)
    assert second.result() == 5 and not second.cache_hit
    assert not (tmp_path / "store" / "quarantine").exists() or \
        not any((tmp_path / "store" / "quarantine").iterdir())


# ----------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("with_cache", [True, False])
def test_cycles_and_deep_nesting_raise_at_run_naming_the_path(handler, tmp_path, with_cache):
    cache = hi.JobCache(path=tmp_path / "store") if with_cache else None
    loop: list[Any] = [1, {"k": []}]
    loop[1]["k"].append(loop)
    cases = [({"x": loop}, "kw['x'][1]['k'][0]", "reference cycle"),
             ({"x": {"deep": _nest(MAX_DEPTH)}}, "kw['x']['deep']", "nested more than 200"),
             ({"x": (1, _nest(5000))}, "kw['x'][1]", "nested more than 200")]
    for kwargs, path, what in cases:
        with hi.Config(job_handler=handler, job_cache=cache):
            with pytest.raises(hi.SerializationError, match=what) as info:
                cf.cf_echo.run(**kwargs)
        assert info.value.path.startswith(path)
    with hi.Config(job_handler=handler, job_cache=cache):  # the limit itself is fine
        assert cf.cf_echo.run(x=_nest(MAX_DEPTH)).result(timeout=120) == _nest(MAX_DEPTH)


def test_a_too_deep_result_is_not_stored_and_later_runs_work(handler, cache, log):
    for _ in range(2):
        with pytest.warns(UserWarning, match="nested more than 200"):
            job = run(cf.cf_nested, handler, cache, depth=400)
        assert job.result() == _nest(400) and not job.cache_hit
    assert read_calls(log)["cf_nested"] == 2


# ----------------------------------------------------------------------------- text and size

def test_strings_that_are_not_utf8_round_trip_and_are_cached(handler, cache, log, tmp_path):
    name = tmp_path / SURROGATES
    name.write_bytes(b"file content")
    value = {SURROGATES: [SURROGATES, (SURROGATES, 1)], "k": SURROGATES * 3}
    first = run(cf.cf_echo, handler, cache, x=value)
    assert first.result() == value
    second = run(cf.cf_echo, handler, cache, x=value)
    assert second.cache_hit and second.result() == value
    f1 = run(cf.cf_read_file, handler, cache, f=hi.File(name))
    f2 = run(cf.cf_read_file, handler, cache, f=hi.File(name))
    assert f1.result() == b"file content" and f2.cache_hit
    assert read_calls(log)["cf_echo"] == 1 and read_calls(log)["cf_read_file"] == 1
    record = cache.store.record_path(first.key).read_bytes()
    record.decode("utf-8")  # still a UTF-8 JSON file


@pytest.mark.parametrize("kind", ["str", "bytes"])
def test_long_str_and_bytes_are_blobs_not_record_text(handler, cache, log, kind):
    unit = "αβγ" + SURROGATES
    n = 300_000  # 3 MB of text
    first = run(cf.cf_text, handler, cache, unit=unit, n=n, kind=kind)
    expected = unit * n if kind == "str" else (unit * n).encode("utf-8", "surrogatepass")
    assert first.result() == expected
    second = run(cf.cf_text, handler, cache, unit=unit, n=n, kind=kind)
    assert second.cache_hit and second.result() == expected
    assert read_calls(log)["cf_text"] == 1
    record = cache.store.record_path(first.key)
    assert record.stat().st_size < 20_000
    blob = blob_path_of(cache.path, cache.get_record(first.key)["result"]["ref"])
    size = len(expected if kind == "bytes" else expected.encode("utf-8", "surrogatepass"))
    assert blob.stat().st_size == size
    total = sum(p.stat().st_size for p in Path(cache.path).rglob("*") if p.is_file())
    assert total <= 1.2 * size


def _forge_summary(cache: Any, key: str, change: Callable[[Any], Any]) -> None:
    """Store a changed summary in the hit index with a valid checksum, bound to the
    record file in place (as another writer to the index could)."""
    from hither_store._statmemo import signature

    summary = hit_summary(cache.get_record(key))
    summary = change(summary) or summary
    path = cache.store.record_path(key)
    cache.store._index.put(key, str(path), signature(os.stat(path)), summary)
    cache.store._index.flush()


@pytest.mark.parametrize("change", ["wrong result type", "another key", "bad status",
                                    "too short"])
def test_an_unusable_index_summary_is_a_miss_with_one_warning(change, cache, log):
    h = hi.DefaultJobHandler()
    first = run(cf.cf_echo, h, cache, x=[1, "two"])
    # the summary: [format, key, status, result_hash, result, error, console, times...]
    edits = {"wrong result type": lambda s: s.__setitem__(4, {"~": "tuple", "v": 7}),
             "another key": lambda s: s.__setitem__(1, "f" * 64),
             "bad status": lambda s: s.__setitem__(2, "done"),
             "too short": lambda s: s.__delitem__(9)}
    _forge_summary(cache, first.key, edits[change])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        second = run(cf.cf_echo, h, cache, x=[1, "two"])
    assert second.result() == [1, "two"] and not second.cache_hit
    mine = [w for w in caught if issubclass(w.category, StoreWarning)]
    assert len(mine) == 1, [str(w.message) for w in mine]


def test_an_index_summary_of_an_earlier_version_is_still_a_hit(cache, log):
    """Index rows written before summaries were arrays hold the same fields as an object
    (times in one list): they are still read."""
    h = hi.DefaultJobHandler()
    first = run(cf.cf_echo, h, cache, x=[1, "two"])
    fmt, key, status, result_hash, result, error, console, *times = \
        hit_summary(cache.get_record(first.key))
    old = {"format": fmt, "key": key, "status": status, "result_hash": result_hash,
           "result": result, "console": console, "times": times}
    _forge_summary(cache, first.key, lambda s: old)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = run(cf.cf_echo, h, cache, x=[1, "two"])
    assert again.cache_hit and again.result() == [1, "two"]
    assert read_calls(log)["cf_echo"] == 1
    assert cache.store.get_hit(first.key) == old  # the row read was the object


def test_a_damaged_index_entry_reads_the_record_with_a_warning(cache, log):
    import sqlite3

    h = hi.DefaultJobHandler()
    run(cf.cf_echo, h, cache, x=[1, "two"])
    cache.store._index.flush()
    db = sqlite3.connect(cache.path / "index" / "stat.sqlite")
    with db:
        db.execute("UPDATE statmemo_v3 SET value = replace(value, '\"two\"', '\"TWO\"')")
    db.close()
    cache.store._index.forget()  # as a new process: the rows are read again
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        second = run(cf.cf_echo, h, cache, x=[1, "two"])
    assert second.cache_hit and second.result() == [1, "two"]
    assert [w for w in caught if "hit index entry" in str(w.message)]
    assert read_calls(log)["cf_echo"] == 1


def test_plain_result_manifests_decode_as_the_codec_does(tmp_path):
    """A hit whose manifest is a number, string, bool or None skips the codec: the value
    must be the codec's, type included (True stays a bool, 1.0 a float)."""
    from hither import values
    from hither.cacheflow import _outcome_of
    from hither.config import Settings
    from hither.record import Hit

    store = hi.JobCache(path=tmp_path).store
    for value in (0, -5, 2**70, 1.5, float("inf"), "", "text", True, False, None):
        manifest = values.encode(value, store)
        hit = Hit(key="k" * 64, status="finished", result=manifest, result_hash="0" * 64)
        got = _outcome_of(hit, Settings(), store).value
        want = values.decode(manifest, store)
        assert type(got) is type(want) and got == want


def test_keyinfo_inputs_are_made_when_read_and_pickle_without_the_values(tmp_path):
    """A KeyInfo makes its ``inputs`` (descriptions, lineage) only when read, then lets go
    of the argument values; pickled (to a cluster node), it carries the inputs, never the
    values."""
    import pickle

    from hither.cacheflow import compute_key
    from hither.config import current

    big = "x" * 100_000
    from hither.function import function_def

    fdef = function_def(cf.cf_add)
    info = compute_key(fdef, {"a": 3, "b": big}, current(),
                       upstream={"a": ["k" * 64], "b": []}, direct={"a"})
    clone = pickle.loads(pickle.dumps(info))
    assert big not in pickle.dumps(info).decode("latin-1")
    assert clone.key == info.key and clone.digests == info.digests
    want = {"a": {"digest": info.digests["a"], "desc": "3", "job": "k" * 64},
            "b": {"digest": info.digests["b"], "desc": describe(big)}}
    assert clone.inputs == want
    assert info.inputs == want and info._args is None  # the values are let go
    assert info.parts["inputs"] == info.digests
    nested = compute_key(fdef, {"a": [1, 2], "b": 0}, current(),
                         upstream={"a": ["k1", None]})
    assert nested.inputs["a"]["jobs"] == ["k1", None] and "job" not in nested.inputs["a"]


def describe(value: Any) -> str:
    return hashing.describe_value(value)


def test_a_completed_job_keeps_its_keyinfo_as_tuples_the_gc_stops_tracking(tmp_path, log):
    """A finished job keeps its KeyInfo packed (nested tuples of strings: no object for the
    cyclic GC to visit per job); ``job.keyinfo`` gives the same key, inputs and parts."""
    import gc

    cache = hi.JobCache(path=tmp_path / "store")
    with hi.Config(job_cache=cache):
        up = cf.cf_add.run(a=1, b=2)
        live = up.keyinfo  # before completion (inline: completed at .result())
        assert up.result() == 3
        down = cf.cf_add.run(a=up, b=10)
        both = cf.cf_add.run(a=[up, 4], b=[5])
        assert down.result() == 13 and both.result() == [3, 4, 5]
    for job in (up, down, both):
        assert type(job._keyinfo) is tuple
    gc.collect()
    assert not gc.is_tracked(up._keyinfo) and not gc.is_tracked(both._keyinfo)
    info = up.keyinfo
    assert info.key == live.key == up.key and info.parts == live.parts
    assert info.inputs == live.inputs and info.code is live.code
    assert down.keyinfo.inputs["a"]["job"] == up.key
    assert both.keyinfo.inputs["a"]["jobs"] == [up.key]
    assert both.keyinfo.inputs["b"]["desc"] == "list(1)"


def test_a_job_completes_even_when_its_keyinfo_cannot_be_packed(tmp_path, log, monkeypatch):
    """Packing a KeyInfo only saves memory and GC time: a failure there leaves the job's
    KeyInfo as it is, and the job completes (a hit at .run(), a miss from its handler)."""
    from hither.cacheflow import KeyInfo

    def boom(self):
        raise RuntimeError("cannot pack")

    monkeypatch.setattr(KeyInfo, "packed", boom)
    cache = hi.JobCache(path=tmp_path / "store")
    for handler in (hi.DefaultJobHandler(), hi.ParallelJobHandler(1)):
        with hi.Config(job_cache=cache, job_handler=handler):
            job = cf.cf_add.run(a=5, b=6)
            assert job.result(timeout=60) == 11
        assert isinstance(job.keyinfo, KeyInfo) and job.keyinfo.key == job.key
        handler.shutdown()
