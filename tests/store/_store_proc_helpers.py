"""Child-process entry points for the store concurrency and crash tests.

They live in their own small module (not in a test file) so that spawned children import
only this and hither_store.
"""

from __future__ import annotations

import os
import time
from typing import Any

from hither_store import LocalStore

N_KEYS = 20
N_ROUNDS = 4
N_BLOBS = 3


def record_key(i: int) -> str:
    """The i-th record key written by every concurrent writer."""
    return f"shared-key-{i:04d}"


def record_body(writer: int, round_: int, i: int) -> dict[str, Any]:
    """The body writer ``writer`` stores under key ``i`` in round ``round_``."""
    # Bodies of different sizes, so a torn or interleaved write could not pass as valid.
    return {
        "writer": writer,
        "round": round_,
        "key": i,
        "payload": [writer * 1000 + round_] * (50 + 37 * writer),
        "text": "é" * (writer + 1),
    }


def blob_content(round_: int, j: int) -> bytes:
    """Blob ``j`` of round ``round_``: the same bytes for every writer."""
    unit = f"round {round_} blob {j};".encode()
    return unit * ((300_000 + 70_000 * j) // len(unit))


SHARED_BLOB = b"the same blob, stored by every writer in every round\n" * 20_000


def concurrent_writer(root: str, writer: int, barrier: Any) -> None:
    """Write every shared key and blob, round after round, in step with the others."""
    try:
        _write_rounds(LocalStore(root), writer, barrier)
    except BaseException:
        barrier.abort()  # let the other writers fail fast instead of waiting at the barrier
        raise


def _write_rounds(store: LocalStore, writer: int, barrier: Any) -> None:
    for round_ in range(N_ROUNDS):
        barrier.wait(timeout=120)
        for j in range(N_BLOBS):
            data = blob_content(round_, j)
            if (writer + j) % 2:
                uri = store.put_bytes(data)
            else:
                uri = store.put_writer(lambda f, data=data: f.write(data))
            assert store.get_bytes(uri) == data
        for i in range(N_KEYS):
            store.put_record(record_key(i), record_body(writer, round_, i))
            assert store.get_record(record_key(i)) is not None
            if i % 5 == 0:
                assert store.get_bytes(store.put_bytes(SHARED_BLOB)) == SHARED_BLOB


def stalled_blob_writer(root: str, total: int, ready: Any) -> None:
    """Write half of a ``total``-byte blob, signal ``ready``, then hang until killed."""
    store = LocalStore(root)

    def write(f: Any) -> None:
        f.write(b"x" * (total // 2))
        f.flush()
        os.fsync(f.fileno())
        ready.set()
        time.sleep(600)
        f.write(b"x" * (total - total // 2))

    store.put_writer(write)


def stalled_record_writer(root: str, key: str, body: dict[str, Any], ready: Any) -> None:
    """Write a record's temp file, signal ``ready`` before it is renamed, hang until killed."""
    store = LocalStore(root, fsync=True)  # the fsync is where this writer stalls

    def hang(fd: int) -> None:
        ready.set()
        time.sleep(600)

    # Stop after the temp file is written but before its fsync and rename.
    os.fsync = hang
    store.put_record(key, body)


# ------------------------------------------------------------------ gc against writers
GC_POOL = 8
GC_KEYS = 3


def gc_pool_blob(j: int) -> bytes:
    """Blob ``j`` of the small pool writers keep storing again (dedup)."""
    return (f"pool blob {j};".encode()) * 4000


def store_again_and_record(root: str, key: str, j: int, done: Any) -> None:
    """Store pool blob ``j`` (already stored: a dedup) and a record referencing it."""
    store = LocalStore(root)
    uri = store.put_bytes(gc_pool_blob(j))
    store.put_record(key, {"ref": uri})
    done.set()


def gc_writer(root: str, seed: int, seconds: float, errors: Any) -> None:
    """For ``seconds``: store a pool blob and a record referencing it, under a random key
    (replacing what it referenced); sometimes delete a record instead. The blobs in use
    rotate every half second (two of the pool at a time), so each one in turn is left
    alone long enough for gc to delete it, and is then stored again."""
    import random

    rng = random.Random(seed)
    store = LocalStore(root)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        key = f"gc-key-{rng.randrange(GC_KEYS):04d}"
        if rng.random() < 0.3:
            store.delete_record(key)
            continue
        phase = int(time.time() / 0.5)
        data = gc_pool_blob((phase + rng.randrange(2)) % GC_POOL)
        if rng.random() < 0.5:
            uri = store.put_bytes(data)
        else:
            uri = store.put_writer(lambda f, data=data: f.write(data))
        store.put_record(key, {"ref": uri})


def referenced(store: LocalStore) -> set[str]:
    """The blob uris the records of the gc tests reference."""
    return {rec["ref"] for _, rec in store.iter_records() if "ref" in rec}


def dangling(store: LocalStore) -> list[str]:
    """Keys of records whose blob is missing."""
    return [k for k, rec in store.iter_records()
            if "ref" in rec and not store.has_blob(rec["ref"])]


def gc_collector(root: str, seconds: float, older_than: float, report: Any) -> None:
    """For ``seconds``: mark (read every record), sweep (gc), then check that no record
    references a missing blob; report the number of checks and of dangling records."""
    store = LocalStore(root)
    end = time.monotonic() + seconds
    rounds = bad = removed = 0
    while time.monotonic() < end:
        keep = referenced(store)
        removed += store.gc(keep, older_than=older_than)["blobs_removed"]
        bad += len(dangling(store))
        rounds += 1
    report.put((rounds, bad, removed))


def referenced_hex(store: LocalStore) -> set[str]:
    """Like :func:`referenced`, as hex digests."""
    return {u.split("://", 1)[1] for u in referenced(store)}
