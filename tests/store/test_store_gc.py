"""gc never deletes a blob that a record references, also one written while gc runs:
writers refresh a blob they store again (dedup), and gc deletes only unreferenced blobs
older than its grace period, after setting each aside and checking it again. Tested
with real concurrent processes."""

from __future__ import annotations

import multiprocessing
import os
import time
from pathlib import Path

import pytest
from hither_store import LocalStore

from . import _store_proc_helpers as helpers

pytestmark = pytest.mark.timeout(300)
HOUR = 3600.0
ctx = multiprocessing.get_context("spawn")


def age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def blob_file(store: LocalStore, uri: str) -> Path:
    h = uri.split("://")[1]
    return store.root / "blobs" / "sha256" / h[:2] / h[2:4] / h


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "store")


@pytest.mark.parametrize("how", ["put_bytes", "put_writer", "put_file", "put_file-move",
                                 "put_stream", "refresh_blob"])
def test_storing_a_blob_again_refreshes_it(how, store, tmp_path):
    data = b"stored twice " * 1000
    uri = store.put_bytes(data)
    path = blob_file(store, uri)
    age(path, 2 * HOUR)
    src = tmp_path / "src"
    src.write_bytes(data)
    if how == "put_bytes":
        again = store.put_bytes(data)
    elif how == "put_writer":
        again = store.put_writer(lambda f: f.write(data))
    elif how == "put_file":
        again = store.put_file(src)
    elif how == "put_file-move":
        again = store.put_file(src, move=True)
        assert not src.exists()
    elif how == "put_stream":
        with open(src, "rb") as f:
            again = store.put_stream(f)
    else:
        assert store.refresh_blob(uri)
        again = uri
    assert again == uri
    assert time.time() - path.stat().st_mtime < 60
    assert store.get_bytes(uri) == data


def test_refresh_blob_of_a_missing_blob_is_false(store):
    assert not store.refresh_blob("sha256://" + "0" * 64)


def test_a_blob_stored_again_by_another_process_after_marking_is_kept(store):
    """The bug: gc reads the records (the blob is unreferenced and old), a writer stores
    the same blob again and records it, gc deletes it, and the record is left dangling."""
    uri = store.put_bytes(helpers.gc_pool_blob(0))
    age(blob_file(store, uri), 2 * HOUR)
    keep = helpers.referenced(store)  # gc's mark phase: nothing references the blob
    assert uri not in keep
    done = ctx.Event()
    p = ctx.Process(target=helpers.store_again_and_record,
                    args=(str(store.root), "written-during-gc", 0, done))
    p.start()
    p.join(120)
    assert p.exitcode == 0 and done.is_set()
    result = store.gc(keep, older_than=60)  # gc's sweep
    assert result["blobs_removed"] == 0
    assert helpers.dangling(store) == []
    assert store.get_bytes(store.get_record("written-during-gc")["ref"]) == \
        helpers.gc_pool_blob(0)


def test_a_blob_refreshed_between_listing_and_deleting_is_put_back(store):
    """The sweep's own window: gc has listed the blob as garbage; a writer in another
    process refreshes it and records it; the sweep sets it aside, sees the new
    modification time and puts it back."""
    from hither_store._maintenance import find_garbage, sweep_blobs

    uri = store.put_bytes(helpers.gc_pool_blob(1))
    age(blob_file(store, uri), 2 * HOUR)
    doomed, _ = find_garbage(store._layout, helpers.referenced_hex(store), 60)
    assert [g.hexdigest for g in doomed] == [uri[9:]]
    done = ctx.Event()
    p = ctx.Process(target=helpers.store_again_and_record,
                    args=(str(store.root), "written-during-sweep", 1, done))
    p.start()
    p.join(120)
    assert p.exitcode == 0
    assert sweep_blobs(store._layout, doomed) == {"blobs_removed": 0, "blob_bytes": 0,
                                                  "blobs_restored": 1}
    assert store.get_bytes(uri) == helpers.gc_pool_blob(1)
    assert not list((store.root / "tmp").glob("gc-*"))


def test_a_blob_set_aside_by_a_killed_gc_is_put_back(store):
    uri = store.put_bytes(b"set aside " * 100)
    path = blob_file(store, uri)
    aside = store.root / "tmp" / f"gc-{uri[9:]}-12345-abcd.tmp"
    os.rename(path, aside)
    age(aside, 2 * HOUR)
    store.gc()
    assert store.get_bytes(uri) == b"set aside " * 100 and not aside.exists()


def test_unreferenced_old_blobs_are_deleted_and_young_ones_kept(store):
    old = store.put_bytes(b"old and unreferenced")
    young = store.put_bytes(b"young and unreferenced")
    kept = store.put_bytes(b"referenced")
    age(blob_file(store, old), 2 * HOUR)
    age(blob_file(store, kept), 2 * HOUR)
    res = store.gc({kept})
    assert (res["blobs_removed"], res["blobs_recent"]) == (1, 1)
    assert not store.has_blob(old) and store.has_blob(young) and store.has_blob(kept)
    dry = store.gc({kept}, older_than=0, dry_run=True)
    assert dry["blobs_removed"] == 1 and store.has_blob(young)


def test_gc_running_against_concurrent_writers_never_leaves_a_record_dangling(store):
    """Writers keep storing a small pool of blobs again and re-pointing records at them
    (so blobs keep becoming unreferenced, and referenced again), while a gc process marks,
    sweeps with a 1 s grace period and checks, round after round."""
    for j in range(helpers.GC_POOL):  # the pool exists and is old before anyone starts
        age(blob_file(store, store.put_bytes(helpers.gc_pool_blob(j))), 2 * HOUR)
    seconds = 6.0
    errors = ctx.Queue()
    report = ctx.Queue()
    writers = [ctx.Process(target=helpers.gc_writer, args=(str(store.root), s, seconds, errors))
               for s in range(3)]
    collector = ctx.Process(target=helpers.gc_collector,
                            args=(str(store.root), seconds, 1.0, report))
    for p in [*writers, collector]:
        p.start()
    for p in [*writers, collector]:
        p.join(120)
        assert p.exitcode == 0
    rounds, bad, removed = report.get(timeout=10)
    assert rounds > 10 and removed > 0, f"gc ran {rounds} rounds and removed {removed} blobs"
    assert bad == 0, f"{bad} dangling records seen in {rounds} gc rounds"
    assert helpers.dangling(store) == []
    for _, rec in store.iter_records():
        store.get_bytes(rec["ref"])  # present and intact


# ------------------------------------------------------------------ hither cache gc
def test_hither_cache_gc_keeps_a_result_a_running_job_stored_again(tmp_path, capsys):
    """The reported bug, with the real CLI: an old array blob nobody references any more;
    a job (another process) stores the same array again and has yet to write its record
    when ``hither cache gc`` runs; then the record is written, and the result must load
    (not "malformed 'npy' node")."""
    import numpy as np

    from hither import values
    from hither.cli import main

    from . import _gc_jobs

    root = tmp_path / "store"
    store = LocalStore(root)
    value = np.arange(5000, dtype=np.float64)
    old = values.encode(value, store)  # stored by an earlier run whose record is gone
    age(blob_file(store, old["ref"]), 2 * HOUR)
    stored, go = ctx.Event(), ctx.Event()
    p = ctx.Process(target=_gc_jobs.stalled_result_writer,
                    args=(str(root), "job-recording-now", value, stored, go))
    p.start()
    try:
        assert stored.wait(120)
        assert main(["cache", "gc", "--store", str(root)]) == 0
        assert "0 unreferenced blobs" in capsys.readouterr().out
    finally:
        go.set()
        p.join(120)
    assert p.exitcode == 0
    rec = store.get_record("job-recording-now")
    np.testing.assert_array_equal(values.decode(rec["result"], store), value)


def test_hither_cache_gc_against_running_jobs_never_breaks_a_cached_result(tmp_path):
    """Processes run hither jobs whose results rotate through a few arrays (stored again
    and again: dedup onto blobs that were unreferenced meanwhile), with force_run, while
    another process runs ``hither cache gc --min-age 1`` in a loop and checks after each
    run that every record's blobs are there. Then every cached result must load."""
    from . import _gc_jobs

    root = tmp_path / "store"
    LocalStore(root)
    seconds = 8.0
    report = ctx.Queue()
    writers = [ctx.Process(target=_gc_jobs.job_writer, args=(str(root), s, seconds))
               for s in range(2)]
    collector = ctx.Process(target=_gc_jobs.cli_collector, args=(str(root), seconds, report))
    for p in [*writers, collector]:
        p.start()
    for p in [*writers, collector]:
        p.join(180)
        assert p.exitcode == 0
    rounds, bad, removed = report.get(timeout=10)
    assert rounds > 3 and removed > 0, f"gc ran {rounds} rounds and removed {removed} blobs"
    assert bad == [], f"records with missing blobs after gc: {bad[:5]}"
    assert _gc_jobs.all_cached_results_load(str(root)) == _gc_jobs.N_KEYS


def test_hither_cache_gc_keeps_every_blob_a_record_mentions(tmp_path, capsys):
    """Marking is conservative: a blob uri anywhere in a record keeps the blob, whatever
    node holds it (a kind of value node gc does not know, a console blob...)."""
    from hither._codec import TAG
    from hither.cli import main

    root = tmp_path / "store"
    store = LocalStore(root)
    known = store.put_bytes(b"a result blob " * 500)
    other = store.put_bytes(b"mentioned elsewhere " * 500)
    orphan = store.put_bytes(b"nobody mentions me " * 500)
    for uri in (known, other, orphan):
        age(blob_file(store, uri), 2 * HOUR)
    store.put_record("some-record-key", {
        "result": {TAG: "bytes", "ref": known, "size": 7000},
        "console_blob": other, "nested": [{"x": ["not a uri", "sha256://short"]}]})
    assert main(["cache", "gc", "--store", str(root)]) == 0
    assert "1 unreferenced blobs" in capsys.readouterr().out
    assert store.has_blob(known) and store.has_blob(other) and not store.has_blob(orphan)
