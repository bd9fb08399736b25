"""LocalStore under many concurrent writer processes, and writers killed mid-write."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from hither_store import LocalStore, blob_uri

from . import _store_proc_helpers as helpers

N_WRITERS = 16

posix_only = pytest.mark.skipif(sys.platform == "win32", reason="needs SIGKILL")


def join_all(procs: list[multiprocessing.process.BaseProcess], timeout: float) -> None:
    """Wait for every process; kill and fail on any still running after ``timeout``."""
    deadline = time.monotonic() + timeout
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
    stuck = [p for p in procs if p.is_alive()]
    for p in stuck:
        p.kill()
        p.join()
    assert not stuck, f"{len(stuck)} writer(s) did not finish"


def test_many_processes_write_the_same_records_and_blobs(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    root = tmp_path / "store"
    store = LocalStore(root)
    barrier = ctx.Barrier(N_WRITERS)
    procs = [
        ctx.Process(target=helpers.concurrent_writer, args=(str(root), w, barrier), daemon=True)
        for w in range(N_WRITERS)
    ]
    try:
        for p in procs:
            p.start()
    finally:
        join_all([p for p in procs if p.pid is not None], timeout=240)
    assert [p.exitcode for p in procs] == [0] * N_WRITERS

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a damaged record would warn
        for i in range(helpers.N_KEYS):
            body = store.get_record(helpers.record_key(i))
            assert body is not None
            candidates = [helpers.record_body(w, helpers.N_ROUNDS - 1, i) for w in range(N_WRITERS)]
            # the barrier lets no writer start the last round before all finished the
            # previous one, so the survivor must be a last-round body
            assert body in candidates

        expected_blobs = {store.put_bytes(helpers.SHARED_BLOB)}
        for round_ in range(helpers.N_ROUNDS):
            for j in range(helpers.N_BLOBS):
                data = helpers.blob_content(round_, j)
                uri = store.put_bytes(data)  # must already exist: no new file
                expected_blobs.add(uri)
                assert store.get_bytes(uri) == data

    info = store.info()
    assert info["blobs"] == len(expected_blobs)
    assert info["records"] == helpers.N_KEYS
    assert info["quarantined"] == 0
    assert list((root / "tmp").iterdir()) == []


@contextlib.contextmanager
def stalled_child(
    ctx: multiprocessing.context.SpawnContext, target: object, *args: object
) -> Iterator[multiprocessing.process.BaseProcess]:
    """Start ``target(*args, ready)`` and yield once it signals it is stalled mid-write.

    The child is always gone on exit, even if the test fails before killing it.
    """
    ready = ctx.Event()
    proc = ctx.Process(target=target, args=(*args, ready), daemon=True)
    proc.start()
    try:
        if not ready.wait(timeout=120):
            pytest.fail(f"child never reached the stalled write (exit code {proc.exitcode})")
        yield proc
    finally:
        if proc.is_alive():
            proc.kill()
        proc.join(60)


def sigkill(proc: multiprocessing.process.BaseProcess) -> None:
    assert proc.pid is not None
    os.kill(proc.pid, signal.SIGKILL)
    proc.join(60)
    assert proc.exitcode == -signal.SIGKILL


@posix_only
def test_writer_killed_mid_blob_leaves_no_blob(tmp_path: Path) -> None:
    import hashlib

    ctx = multiprocessing.get_context("spawn")
    root = tmp_path / "store"
    store = LocalStore(root)
    total = 3_000_000
    with stalled_child(ctx, helpers.stalled_blob_writer, str(root), total) as proc:
        tmp_files = list((root / "tmp").iterdir())
        assert len(tmp_files) == 1
        assert tmp_files[0].stat().st_size == total // 2
        sigkill(proc)

    for content in (b"x" * total, b"x" * (total // 2)):
        assert not store.has_blob(blob_uri(hashlib.sha256(content).hexdigest()))
    info = store.info()
    assert info["blobs"] == 0 and info["tmp_files"] == 1

    assert store.gc()["tmp_removed"] == 0  # the left-over is fresh: could be a live writer
    result = store.gc(older_than=0)
    assert result["tmp_removed"] == 1
    assert result["tmp_bytes"] == total // 2
    assert list((root / "tmp").iterdir()) == []


@posix_only
def test_writer_killed_mid_record_keeps_previous_record(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    root = tmp_path / "store"
    store = LocalStore(root)
    old_key, new_key = "existing-record", "brand-new-record"
    store.put_record(old_key, {"version": 1})
    big = {"version": 2, "payload": ["y" * 1000] * 2000}

    for n, key in enumerate((old_key, new_key), start=1):
        with stalled_child(ctx, helpers.stalled_record_writer, str(root), key, big) as proc:
            assert len(list((root / "tmp").iterdir())) == n  # this child's + earlier ones
            sigkill(proc)

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert store.get_record(old_key) == {"version": 1}
        assert store.get_record(new_key) is None
    assert not store.has_record(new_key)
    assert store.info()["records"] == 1

    assert store.gc(older_than=0)["tmp_removed"] == 2
    assert list((root / "tmp").iterdir()) == []
