"""The typed job record: written by the cache, read by lookup, explain, CLI and pages."""

from __future__ import annotations

import pytest

import hither as hi
from hither.record import BadRecord, InputEntry, Record


def _stored(tmp_path):
    from jobfuncs import jf_add, jf_sum

    cache = hi.JobCache(path=tmp_path / "store")
    with hi.Config(job_cache=cache):
        a, b = jf_add.run(x=1), jf_add.run(x=2)
        total = jf_sum.run(values=[a, b, 5])
        direct = jf_add.run(x=a, y=1)
        assert total.result() == 8 and direct.result() == 2
    return cache, a, b, total, direct


def test_what_the_cache_writes_reads_back_typed_and_round_trips(tmp_path):
    cache, a, b, total, direct = _stored(tmp_path)
    raw = cache.get_record(total.key)
    rec = Record.from_dict(raw, total.key)
    assert rec.ok and rec.function.name == "jf_sum" and rec.result_hash
    assert rec.inputs["values"].jobs == (a.key, b.key) and rec.inputs["values"].has_value
    assert rec.upstream() == {"values": [a.key, b.key]}
    assert rec.provenance.key_parts["function"]["name"] == "jf_sum"
    assert rec.to_dict() == raw
    d = Record.from_dict(cache.get_record(direct.key), direct.key)
    assert d.inputs["x"].job == a.key and not d.inputs["x"].has_value
    assert d.upstream() == {"x": [a.key]}


@pytest.mark.parametrize("damage", [
    lambda r: r.update(format=2),
    lambda r: r.update(key="other"),
    lambda r: r.update(status="done"),
    lambda r: r.update(result_hash="xyz"),
    lambda r: r.pop("result"),
    lambda r: r.update(console=[[1.0, "x"]]),
    lambda r: r.update(console="text"),
    lambda r: r.update(provenance=[]),
    lambda r: r["provenance"].pop("function"),
    lambda r: r["provenance"]["function"].update(name=3),
    lambda r: r.update(inputs={"x": {"digest": "d", "jobs": ["k", 3]}}),
    lambda r: r.update(inputs={"x": {"digest": "d", "job": 7}}),
    lambda r: r.update(inputs={"x": "not an object"}),
    lambda r: r.update(status="error", error={"type": 1, "message": "m"}),
    lambda r: r["provenance"].update(start_time="yesterday"),
])
def test_anything_hither_does_not_write_is_refused(tmp_path, damage):
    cache, a, *_ = _stored(tmp_path)
    raw = cache.get_record(a.key)
    damage(raw)
    with pytest.raises(BadRecord):
        Record.from_dict(raw, a.key)


def test_displays_tolerate_missing_descriptive_fields():
    raw = {"format": 1, "key": "k" * 64, "status": "finished", "result": 1,
           "result_hash": "0" * 64, "provenance": {"function": {"name": "f"}},
           "inputs": {"x": {"job": "j" * 64}}}
    with pytest.raises(BadRecord):
        Record.from_dict(raw, "k" * 64)  # no version, no digest: not for the cache
    rec = Record.from_dict(raw, "k" * 64, strict=False)
    assert rec.function.version == "?" and rec.inputs["x"].upstream == ["j" * 64]
    assert InputEntry(digest="d").upstream == []


def test_a_stored_failure_with_console_reads_back_and_round_trips(tmp_path):
    from jobfuncs import jf_print_then_raise

    cache = hi.JobCache(path=tmp_path / "store")
    with hi.Config(job_cache=cache, cache_failing=True):
        job = jf_print_then_raise.run(message="boom")
        with pytest.raises(ValueError, match="boom"):
            job.result()
    raw = cache.get_record(job.key)
    rec = Record.from_dict(raw, job.key)
    assert not rec.ok and rec.error is not None and rec.error.short_type == "ValueError"
    assert rec.error.args == ["boom"] and "boom" in rec.error.message
    assert [(text, err) for _, text, err in rec.console][:2] == [
        ("before the raise, on stdout", False), ("before the raise, on stderr", True)]
    assert rec.to_dict() == raw


def test_the_records_of_one_function_share_only_what_is_the_same_for_its_jobs(tmp_path):
    """The constant part of a function's provenance is built once per function, code and
    store: each record still has its own times and key parts, and a second store gets
    its own code bundle."""
    from jobfuncs import jf_add

    stores = [hi.JobCache(path=tmp_path / name) for name in ("one", "two")]
    recs = []
    for cache in stores:
        with hi.Config(job_cache=cache):
            jobs = [jf_add.run(x=i) for i in range(2)]
            assert [j.result() for j in jobs] == [0, 1]
        recs.append([Record.from_dict(cache.get_record(j.key), j.key) for j in jobs])
    for cache, (r0, r1) in zip(stores, recs, strict=True):
        p0, p1 = r0.provenance, r1.provenance
        assert p0.key_parts["inputs"] != p1.key_parts["inputs"]
        assert p0.recorded_at is not None and p1.recorded_at is not None
        assert p0.function == p1.function and p0.code_bundle == p1.code_bundle
        assert p0.code_bundle is not None
        assert (cache.path / "code" / p0.code_bundle).is_dir()
        assert p0.packages is not None and cache.store.has_blob(p0.packages["ref"])
