"""Blobs of LocalStore: uris, round trips, deduplication, verification, quarantine."""

from __future__ import annotations

import hashlib
import os
import pickle
import stat
import sys
from pathlib import Path

import hither_store
import pytest
from hither_store import (
    BlobNotFoundError,
    CorruptBlobError,
    LocalStore,
    StoreError,
    _verify,
    blob_uri,
    parse_blob_uri,
)

HELLO_HEX = hashlib.sha256(b"hello").hexdigest()


def blob_files(store: LocalStore) -> list[Path]:
    return sorted(p for p in (store.root / "blobs").rglob("*") if p.is_file())


def tamper(path: Path) -> None:
    """Flip the first byte of a (read-only) blob file in place."""
    os.chmod(path, 0o644)
    with open(path, "r+b") as f:
        first = f.read(1)
        f.seek(0)
        f.write(bytes([first[0] ^ 0xFF]))


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "store")


def test_public_api_is_curated_and_sorted() -> None:
    assert hither_store.__all__ == sorted(hither_store.__all__)
    for name in (
        "LocalStore",
        "default_store_path",
        "StoreError",
        "BlobNotFoundError",
        "CorruptBlobError",
        "parse_blob_uri",
        "blob_uri",
    ):
        assert name in hither_store.__all__
        assert getattr(hither_store, name) is not None


def test_blob_uri_round_trip() -> None:
    uri = blob_uri(HELLO_HEX)
    assert uri == "sha256://" + HELLO_HEX
    assert parse_blob_uri(uri) == HELLO_HEX


@pytest.mark.parametrize(
    "bad",
    [
        "",
        HELLO_HEX,  # no scheme
        "sha1://" + HELLO_HEX,
        "sha256://" + HELLO_HEX[:-1],
        "sha256://" + HELLO_HEX + "0",
        "sha256://" + HELLO_HEX.upper(),
        "sha256://" + "g" * 64,
        "sha256:///" + HELLO_HEX[1:],
        None,
    ],
)
def test_malformed_uris_are_rejected(bad: object) -> None:
    with pytest.raises(ValueError, match="uri"):
        parse_blob_uri(bad)  # type: ignore[arg-type]


def test_blob_uri_rejects_non_digests() -> None:
    for bad in ("abc", HELLO_HEX.upper(), HELLO_HEX + "00"):
        with pytest.raises(ValueError, match="hex"):
            blob_uri(bad)


def test_store_creates_its_directories(tmp_path: Path) -> None:
    root = tmp_path / "a" / "b" / "store"
    store = LocalStore(root)
    assert store.root == root.resolve()
    for sub in ("blobs/sha256", "records", "tmp", "quarantine"):
        assert (root / sub).is_dir()


def test_put_bytes_round_trip_and_layout(store: LocalStore) -> None:
    uri = store.put_bytes(b"hello")
    assert uri == "sha256://" + HELLO_HEX
    expected = store.root / "blobs" / "sha256" / HELLO_HEX[:2] / HELLO_HEX[2:4] / HELLO_HEX
    assert store.blob_path(uri) == expected
    assert expected.read_bytes() == b"hello"
    assert store.get_bytes(uri) == b"hello"
    assert store.has_blob(uri)
    assert store.blob_size(uri) == 5


def test_put_bytes_accepts_buffers(store: LocalStore) -> None:
    data = bytes(range(256)) * 10
    uri = store.put_bytes(data)
    assert store.put_bytes(bytearray(data)) == uri
    assert store.put_bytes(memoryview(data)) == uri
    # a multi-byte-format buffer is stored as its raw bytes
    words = memoryview(data).cast("I")
    assert store.put_bytes(words) == uri
    assert store.get_bytes(uri) == data


def test_empty_blob(store: LocalStore) -> None:
    uri = store.put_bytes(b"")
    assert uri == blob_uri(hashlib.sha256(b"").hexdigest())
    assert store.get_bytes(uri) == b""
    assert store.blob_size(uri) == 0


def test_identical_content_is_stored_once(store: LocalStore, tmp_path: Path) -> None:
    data = os.urandom(100_000)
    src = tmp_path / "input.bin"
    src.write_bytes(data)
    uris = {
        store.put_bytes(data),
        store.put_bytes(data),
        store.put_file(src),
        store.put_writer(lambda f: f.write(data)),
    }
    assert len(uris) == 1
    assert len(blob_files(store)) == 1
    assert list((store.root / "tmp").iterdir()) == []


def test_blob_files_are_read_only(store: LocalStore, tmp_path: Path) -> None:
    src = tmp_path / "f.bin"
    src.write_bytes(b"from a file")
    for uri in (
        store.put_bytes(b"from bytes"),
        store.put_file(src),
        store.put_writer(lambda f: f.write(b"from a writer")),
    ):
        mode = stat.S_IMODE(os.stat(store.blob_path(uri)).st_mode)
        assert mode == 0o444


def test_put_file_copies_large_file(store: LocalStore, tmp_path: Path) -> None:
    # larger than one hashing chunk, and not a multiple of it
    data = os.urandom(_verify.CHUNK_SIZE * 2 + 12345)
    src = tmp_path / "big.bin"
    src.write_bytes(data)
    uri = store.put_file(src)
    assert uri == blob_uri(hashlib.sha256(data).hexdigest())
    assert src.read_bytes() == data  # the source is untouched
    assert store.get_bytes(uri) == data
    assert store.blob_path(uri).read_bytes() == data


def test_put_file_move_renames_the_file(store: LocalStore, tmp_path: Path) -> None:
    data = b"move me" * 1000
    src = tmp_path / "m.bin"
    src.write_bytes(data)
    inode = os.stat(src).st_ino
    uri = store.put_file(src, move=True)
    assert not src.exists()
    path = store.blob_path(uri)
    assert path.read_bytes() == data
    assert os.stat(path).st_ino == inode  # renamed, not copied
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o444


def test_put_file_move_of_existing_blob_removes_source(store: LocalStore, tmp_path: Path) -> None:
    uri = store.put_bytes(b"already here")
    src = tmp_path / "dup.bin"
    src.write_bytes(b"already here")
    assert store.put_file(src, move=True) == uri
    assert not src.exists()
    assert len(blob_files(store)) == 1


@pytest.mark.skipif(sys.platform == "win32", reason="hard links and chmod semantics")
def test_put_file_move_copies_a_hard_linked_file(store: LocalStore, tmp_path: Path) -> None:
    src = tmp_path / "linked.bin"
    src.write_bytes(b"two names")
    other = tmp_path / "other-name.bin"
    os.link(src, other)
    uri = store.put_file(src, move=True)
    assert not src.exists()
    # the remaining name must not be the blob itself, or writing to it would alter the blob
    assert os.stat(other).st_ino != os.stat(store.blob_path(uri)).st_ino
    other.write_bytes(b"changed")
    assert store.get_bytes(uri) == b"two names"


def test_put_file_missing_source(store: LocalStore, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        store.put_file(tmp_path / "nope.bin")
    assert list((store.root / "tmp").iterdir()) == []


def test_put_writer_round_trip(store: LocalStore) -> None:
    def write(f: object) -> None:
        assert not isinstance(f, (bytes, bytearray))
        for i in range(100):
            f.write(f"line {i}\n".encode())  # type: ignore[attr-defined]

    uri = store.put_writer(write)
    expected = "".join(f"line {i}\n" for i in range(100)).encode()
    assert store.get_bytes(uri) == expected


def test_put_writer_tolerates_a_writer_that_closes_the_file(store: LocalStore) -> None:
    def write(f: object) -> None:
        f.write(b"closed early")  # type: ignore[attr-defined]
        f.close()  # type: ignore[attr-defined]

    uri = store.put_writer(write)
    assert store.get_bytes(uri) == b"closed early"


def test_put_writer_failure_leaves_nothing(store: LocalStore) -> None:
    def write(f: object) -> None:
        f.write(b"partial")  # type: ignore[attr-defined]
        raise RuntimeError("writer failed")

    with pytest.raises(RuntimeError, match="writer failed"):
        store.put_writer(write)
    assert list((store.root / "tmp").iterdir()) == []
    assert blob_files(store) == []


def test_put_writer_with_numpy_save_and_mmap(store: LocalStore) -> None:
    np = pytest.importorskip("numpy")
    arr = np.arange(100_000, dtype=np.float64).reshape(1000, 100)
    uri = store.put_writer(lambda f: np.save(f, arr))
    loaded = np.load(store.blob_path(uri), mmap_mode="r")
    assert isinstance(loaded, np.memmap)
    np.testing.assert_array_equal(loaded, arr)


def test_missing_blob(store: LocalStore) -> None:
    uri = blob_uri(HELLO_HEX)
    assert not store.has_blob(uri)
    for call in (store.get_bytes, store.blob_path, store.blob_size):
        with pytest.raises(BlobNotFoundError) as info:
            call(uri)
        assert isinstance(info.value, KeyError)
        assert isinstance(info.value, StoreError)
        assert uri in str(info.value)
        assert not str(info.value).startswith("'")


def test_delete_blob(store: LocalStore) -> None:
    uri = store.put_bytes(b"to delete")
    assert store.delete_blob(uri) is True
    assert not store.has_blob(uri)
    assert store.delete_blob(uri) is False
    with pytest.raises(BlobNotFoundError):
        store.get_bytes(uri)


@pytest.mark.parametrize("reader", ["get_bytes", "blob_path"])
def test_tampered_blob_is_detected_quarantined_and_repairable(
    store: LocalStore, reader: str
) -> None:
    data = b"precious result " * 1000
    uri = store.put_bytes(data)
    path = store.blob_path(uri)
    tamper(path)

    with pytest.raises(CorruptBlobError) as info:
        getattr(store, reader)(uri)
    err = info.value
    assert isinstance(err, StoreError)
    assert uri in str(err) and str(path) in str(err)
    assert err.quarantined_to is not None and err.quarantined_to.parent == store.root / "quarantine"
    assert err.quarantined_to.exists()
    assert not path.exists()
    assert not store.has_blob(uri)

    assert store.put_bytes(data) == uri  # storing again repairs it
    assert store.get_bytes(uri) == data


def test_tampering_that_restores_mtime_is_still_detected(store: LocalStore) -> None:
    data = b"A" * 10_000
    uri = store.put_bytes(data)
    path = store.blob_path(uri)
    before = os.stat(path)
    tamper(path)
    os.chmod(path, 0o444)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    with pytest.raises(CorruptBlobError):
        store.get_bytes(uri)


def test_wrong_sized_blob_is_replaced_on_put(store: LocalStore) -> None:
    data = b"B" * 5000
    uri = store.put_bytes(data)
    path = store.blob_path(uri)
    os.chmod(path, 0o644)
    with open(path, "r+b") as f:
        f.truncate(100)
    assert store.put_bytes(data) == uri
    assert store.get_bytes(uri) == data


def test_blob_placed_by_hand_is_hashed_once(
    store: LocalStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = os.urandom(50_000)
    hexdigest = hashlib.sha256(data).hexdigest()
    # written without put_*, so this process has never verified it
    path = store.root / "blobs" / "sha256" / hexdigest[:2] / hexdigest[2:4] / hexdigest
    path.parent.mkdir(parents=True)
    path.write_bytes(data)

    calls = []
    real = _verify.hash_stream

    def counting(*args: object, **kwargs: object) -> tuple[str, int]:
        calls.append(1)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr("hither_store.local.hash_stream", counting)
    # written just now: it would be hashed again until its ctime is two seconds old
    monkeypatch.setattr("hither_store._statmemo.RACY_NS", 0)
    uri = blob_uri(hexdigest)
    for _ in range(3):
        assert store.blob_path(uri) == path
    assert len(calls) == 1

    # a change on disk invalidates what was remembered
    tamper(path)
    with pytest.raises(CorruptBlobError):
        store.blob_path(uri)
    assert len(calls) == 2


def test_corrupt_blob_error_pickles(store: LocalStore) -> None:
    err = CorruptBlobError("sha256://" + HELLO_HEX, "/x/y", "00" * 32, "/q/z")
    again = pickle.loads(pickle.dumps(err))
    assert type(again) is CorruptBlobError
    assert str(again) == str(err)
    assert again.quarantined_to == Path("/q/z")
    missing = pickle.loads(pickle.dumps(BlobNotFoundError("sha256://" + HELLO_HEX, "/p")))
    assert missing.uri == "sha256://" + HELLO_HEX and missing.path == Path("/p")
