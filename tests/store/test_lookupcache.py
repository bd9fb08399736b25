"""The per-user lookup cache of remote stores (diskcache)."""

from __future__ import annotations

import pickle
import time
from pathlib import Path

from hither_store import LookupCache

HEX = "ab" * 32


def test_blobs_misses_and_records(tmp_path: Path) -> None:
    lc = LookupCache(tmp_path / "lc")
    assert not lc.has_blob("r1", HEX)
    lc.add_blob("r1", HEX)
    assert lc.has_blob("r1", HEX) and not lc.has_blob("r2", HEX)  # per remote
    lc.add_miss("r1", "key-00000001", ttl=30)
    assert lc.recent_miss("r1", "key-00000001")
    lc.forget_miss("r1", "key-00000001")
    assert not lc.recent_miss("r1", "key-00000001")
    lc.add_miss("r1", "key-00000002", ttl=0)  # a ttl of 0 remembers nothing
    assert not lc.recent_miss("r1", "key-00000002")
    lc.add_record("r1", "key-00000003", "c1")
    assert lc.has_record("r1", "key-00000003", "c1")
    assert not lc.has_record("r1", "key-00000003", "c2")


def test_misses_expire(tmp_path: Path) -> None:
    lc = LookupCache(tmp_path / "lc")
    lc.add_miss("r", "key-00000001", ttl=0.05)
    time.sleep(0.2)
    assert not lc.recent_miss("r", "key-00000001")


def test_shared_between_instances_and_processes(tmp_path: Path) -> None:
    a = LookupCache(tmp_path / "lc")
    a.add_blob("r", HEX)
    b = pickle.loads(pickle.dumps(a))  # reopens the same folder
    assert b.has_blob("r", HEX)
    a.close()
    assert a.has_blob("r", HEX)  # reopens on use
    b.clear()
    assert not a.has_blob("r", HEX)
