"""LocalStore maintenance and identity: info, gc, clear, default path, pickling."""

from __future__ import annotations

import os
import pickle
import time
from pathlib import Path

import platformdirs
import pytest
from hither_store import LocalStore, default_store_path


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "store")


def make_tmp_file(store: LocalStore, name: str, size: int, age: float) -> Path:
    path = store.root / "tmp" / name
    path.write_bytes(b"t" * size)
    then = time.time() - age
    os.utime(path, (then, then))
    return path


def test_info_counts_and_sizes(store: LocalStore) -> None:
    empty = store.info()
    assert empty["root"] == str(store.root)
    assert (empty["blobs"], empty["blob_bytes"], empty["records"], empty["tmp_files"]) == (
        0,
        0,
        0,
        0,
    )

    store.put_bytes(b"a" * 10)
    store.put_bytes(b"b" * 20)
    store.put_bytes(b"b" * 20)
    store.put_record("record-one", {"x": 1})
    store.put_record("record-two", {"x": 2})
    make_tmp_file(store, "left-over.tmp", 7, age=0)

    info = store.info()
    assert info["blobs"] == 2
    assert info["blob_bytes"] == 30
    assert info["records"] == 2
    record_bytes = sum(store.record_path(k).stat().st_size for k in ("record-one", "record-two"))
    assert info["record_bytes"] == record_bytes
    assert info["tmp_files"] == 1
    assert info["tmp_bytes"] == 7
    assert info["quarantined"] == 0


def test_gc_removes_only_old_temp_files(store: LocalStore) -> None:
    old = make_tmp_file(store, "old.tmp", 100, age=7200)
    fresh = make_tmp_file(store, "fresh.tmp", 50, age=0)
    uri = store.put_bytes(b"kept")

    result = store.gc()
    assert result["tmp_removed"] == 1
    assert result["tmp_bytes"] == 100
    assert result["blobs_removed"] == 0
    assert not old.exists()
    assert fresh.exists()
    assert store.get_bytes(uri) == b"kept"

    result = store.gc(older_than=0)
    assert result["tmp_removed"] == 1 and not fresh.exists()


def test_gc_with_keep_deletes_unlisted_blobs(store: LocalStore) -> None:
    keep = {store.put_bytes(b"keep me"), store.put_bytes(b"me too")}
    drop = store.put_bytes(b"drop me!")
    store.put_record("a-record-key", {"blob": drop})

    young = store.gc(keep)  # unreferenced, but younger than the grace period
    assert young["blobs_removed"] == 0 and young["blobs_recent"] == 1
    assert store.has_blob(drop)

    result = store.gc(keep, older_than=0)
    assert result["blobs_removed"] == 1
    assert result["blob_bytes"] == len(b"drop me!")
    assert result["bytes_freed"] == len(b"drop me!")
    assert not store.has_blob(drop)
    assert all(store.has_blob(u) for u in keep)
    assert store.get_record("a-record-key") == {"blob": drop}  # records are not gc'd

    for u in keep:  # old enough for the default grace period
        path = store.root / "blobs" / "sha256" / u[9:11] / u[11:13] / u[9:]
        os.utime(path, (time.time() - 7200,) * 2)
    assert store.gc(set())["blobs_removed"] == 2
    assert store.info()["blobs"] == 0


def test_gc_rejects_bad_arguments(store: LocalStore) -> None:
    uri = store.put_bytes(b"x")
    with pytest.raises(ValueError):
        store.gc({uri.removeprefix("sha256://")})  # a bare digest is not a uri
    with pytest.raises(ValueError):
        store.gc(older_than=-1)
    assert store.has_blob(uri)


def test_clear_empties_the_store_and_keeps_it_usable(store: LocalStore) -> None:
    uri = store.put_bytes(b"data")
    store.put_record("record-key-1", {"v": 1})
    make_tmp_file(store, "x.tmp", 3, age=0)
    foreign = store.root / "README.txt"
    foreign.write_text("not the store's")

    store.clear()
    info = store.info()
    assert (info["blobs"], info["records"], info["tmp_files"], info["quarantined"]) == (0, 0, 0, 0)
    assert not store.has_blob(uri)
    assert store.get_record("record-key-1") is None
    assert foreign.exists()
    for sub in ("blobs/sha256", "records", "tmp", "quarantine"):
        assert (store.root / sub).is_dir()

    assert store.put_bytes(b"data") == uri
    assert store.get_bytes(uri) == b"data"


def test_default_store_path_honours_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HITHER_STORE", str(tmp_path / "custom"))
    assert default_store_path() == tmp_path / "custom"
    monkeypatch.setenv("HITHER_STORE", "~/somewhere")
    assert default_store_path() == Path.home() / "somewhere"


def test_default_store_path_without_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HITHER_STORE", raising=False)
    assert default_store_path() == platformdirs.user_cache_path("hither") / "store"
    monkeypatch.setenv("HITHER_STORE", "")
    assert default_store_path() == platformdirs.user_cache_path("hither") / "store"


def test_pickle_repr_eq(store: LocalStore, tmp_path: Path) -> None:
    uri = store.put_bytes(b"shared")
    again = pickle.loads(pickle.dumps(store))
    assert isinstance(again, LocalStore)
    assert again == store and hash(again) == hash(store)
    assert again.get_bytes(uri) == b"shared"
    assert repr(store) == f"LocalStore({str(store.root)!r})"
    assert LocalStore(str(tmp_path / "store" / ".." / "store")) == store
    assert LocalStore(tmp_path / "elsewhere") != store
    assert store != str(store.root)
