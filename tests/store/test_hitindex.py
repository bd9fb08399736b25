"""The hit index beside the records: a summary is returned only for the record file it
was stored with, whatever other writers, killed processes, gc or tampering did."""

from __future__ import annotations

import multiprocessing
import os
import signal
import sqlite3
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
from hither_store import LocalStore, PersistentStatMemo, StoreWarning
from hither_store._statmemo import is_busy

from . import _hitindex_helpers as helpers

posix_only = pytest.mark.skipif(sys.platform == "win32", reason="needs SIGKILL")


def hits_in_new_process(root: Path, keys: list[str]) -> tuple[dict, str]:
    code = ("import json, sys, warnings; warnings.simplefilter('always');"
            "from hither_store import LocalStore; s = LocalStore(sys.argv[1]);"
            "print(json.dumps({k: s.get_hit(k) for k in sys.argv[2:]}))")
    out = subprocess.run([sys.executable, "-c", code, str(root), *keys], capture_output=True,
                         text=True, check=True, timeout=120)
    import json

    return json.loads(out.stdout), out.stderr


def check_consistent(root: Path) -> int:
    """Every summary the index gives matches the record file in place; returns how many
    keys had one."""
    keys = [helpers.key_of(i) for i in range(helpers.N_KEYS)]
    hits, err = hits_in_new_process(root, keys)
    assert "Traceback" not in err
    store = LocalStore(root)
    found = 0
    for k in keys:
        rec = store.get_record(k)
        if hits[k] is not None:
            found += 1
            assert rec is not None and hits[k] == helpers.summary_of(rec), k
    return found


def test_summary_is_found_by_a_new_process(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.put_record("k-00000001", {"v": 1, "big": "p" * 1000}, summary={"v": 1})
    assert store.get_hit("k-00000001") == {"v": 1}
    hits, _ = hits_in_new_process(tmp_path, ["k-00000001", "k-00000002"])
    assert hits == {"k-00000001": {"v": 1}, "k-00000002": None}


def test_a_deleted_or_quarantined_record_is_no_hit(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    for k in ("k-deleted1", "k-quarant1"):
        store.put_record(k, {"v": k}, summary={"v": k})
    store.delete_record("k-deleted1")  # as gc or a user removing a record
    store.quarantine_record("k-quarant1")
    assert store.get_hit("k-deleted1") is None and store.get_hit("k-quarant1") is None
    hits, _ = hits_in_new_process(tmp_path, ["k-deleted1", "k-quarant1"])
    assert hits == {"k-deleted1": None, "k-quarant1": None}


def test_a_record_replaced_by_another_writer_is_not_summarized_by_the_old_row(
        tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.put_record("k-replaced", {"v": "old"}, summary={"v": "old"})
    store._index.flush()
    other = subprocess.run(
        [sys.executable, "-c", "import sys; from hither_store import LocalStore; "
         "LocalStore(sys.argv[1]).put_record('k-replaced', {'v': 'new'})", str(tmp_path)],
        check=True, timeout=60)
    assert other.returncode == 0
    # no summary was stored with the new file: neither process may use the old one
    assert store.get_hit("k-replaced") is None
    hits, _ = hits_in_new_process(tmp_path, ["k-replaced"])
    assert hits == {"k-replaced": None}
    assert store.get_record("k-replaced") == {"v": "new"}


def test_a_record_edited_in_place_is_not_summarized(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.put_record("k-editedxx", {"v": "aaa"}, summary={"v": "aaa"})
    path = store.record_path("k-editedxx")
    st = os.stat(path)
    data = path.read_bytes().replace(b"aaa", b"bbb")
    os.chmod(path, 0o644)
    path.write_bytes(data)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # the mtime put back: ctime moved
    assert store.get_hit("k-editedxx") is None


def tamper(root: Path, edit: str) -> None:
    db = sqlite3.connect(root / "index" / "stat.sqlite")
    with db:
        db.execute(edit)
    db.close()


def test_a_tampered_entry_is_a_miss_with_a_warning(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.put_record("k-tampered", {"v": 1}, summary={"v": 1})
    store._index.flush()
    tamper(tmp_path, "UPDATE statmemo_v3 SET value = replace(value, ':1}', ':2}')")
    hits, err = hits_in_new_process(tmp_path, ["k-tampered"])
    assert hits == {"k-tampered": None}
    assert "hit index entry of record 'k-tampered' ignored" in err
    assert LocalStore(tmp_path).get_record("k-tampered") == {"v": 1}


def test_a_damaged_index_database_turns_the_index_off_with_one_warning(
        tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    for i in range(50):
        store.put_record(f"k-damage{i:02d}", {"v": i}, summary={"v": i})
    store._index.flush()
    db = tmp_path / "index" / "stat.sqlite"
    size = db.stat().st_size
    with open(db, "r+b") as f:  # garbage over everything but the header page
        f.seek(100)
        f.write(os.urandom(size - 100))
    keys = [f"k-damage{i:02d}" for i in range(50)]
    hits, err = hits_in_new_process(tmp_path, keys)
    assert all(h in (None, {"v": i}) for i, h in enumerate(hits.values()))
    assert err.count("cannot be used") <= 1


@posix_only
def test_concurrent_writers_never_give_a_summary_of_another_file(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    LocalStore(tmp_path)
    procs = [ctx.Process(target=helpers.writer, args=(str(tmp_path), w, 6), daemon=True)
             for w in range(6)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(240)
        assert p.exitcode == 0
    check_consistent(tmp_path)  # rows are last-writer-wins: some may be stale, none wrong
    # and the index still serves every key once one writer stores them again
    last = ctx.Process(target=helpers.writer, args=(str(tmp_path), 9, 1), daemon=True)
    last.start()
    last.join(240)
    assert last.exitcode == 0
    assert check_consistent(tmp_path) == helpers.N_KEYS


@posix_only
def test_a_writer_killed_mid_update_leaves_no_wrong_summary(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    LocalStore(tmp_path)
    for attempt in range(3):
        procs = [ctx.Process(target=helpers.writer, args=(str(tmp_path), w, -1), daemon=True)
                 for w in range(3)]
        for p in procs:
            p.start()
        deadline = time.monotonic() + 120
        while not all((tmp_path / f"started-{w}").exists() for w in range(3)):
            assert time.monotonic() < deadline, "writers did not start"
            time.sleep(0.05)
        time.sleep(0.2 * (attempt + 1))
        for p in procs:
            os.kill(p.pid, signal.SIGKILL)
            p.join(30)
        for w in range(3):
            (tmp_path / f"started-{w}").unlink()
        with warnings.catch_warnings():
            warnings.simplefilter("error", StoreWarning)  # no damaged row either
            check_consistent(tmp_path)


def test_clear_forgets_the_index(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.put_record("k-cleared1", {"v": 1}, summary={"v": 1})
    store.clear()
    assert store.get_hit("k-cleared1") is None
    store.put_record("k-cleared1", {"v": 2})
    assert store.get_hit("k-cleared1") is None


def test_a_read_only_store_writes_no_index(tmp_path: Path) -> None:
    LocalStore(tmp_path).put_record("k-readonly", {"v": 1})
    ro = LocalStore(tmp_path, readonly=True)
    assert ro.get_record("k-readonly", summarize=lambda r: r) == {"v": 1}
    assert ro.get_hit("k-readonly") is None
    assert not (tmp_path / "index").exists() or not any(
        p.name.endswith("-wal") for p in (tmp_path / "index").iterdir())


def _blob_read_in_new_process(root: Path, uri: str, hashing: bool = True) -> str:
    code = ("import sys; from hither_store import LocalStore, CorruptBlobError\n"
            + ("" if hashing else "import hither_store.local as m\n"
               "def no(*a): raise AssertionError('hashed again')\n"
               "m.hash_stream = no\n") +
            "try:\n    LocalStore(sys.argv[1]).blob_path(sys.argv[2]); print('ok')\n"
            "except CorruptBlobError: print('corrupt')")
    return subprocess.run([sys.executable, "-c", code, str(root), uri], capture_output=True,
                          text=True, check=True, timeout=120).stdout.strip()


def test_a_large_blob_verified_once_is_trusted_by_new_processes_until_it_changes(
        tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    data = b"0123456789abcdef" * (1 << 17)  # 2 MiB: remembered across processes
    uri = store.put_bytes(data)
    path = store.blob_path(uri)
    store._index.flush()
    assert _blob_read_in_new_process(tmp_path, uri, hashing=False) == "ok"
    st = os.stat(path)
    os.chmod(path, 0o644)
    with open(path, "r+b") as f:  # same size, the mtime put back: only the ctime moves
        f.write(b"X")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert _blob_read_in_new_process(tmp_path, uri) == "corrupt"


def test_summary_parse_equals_json_loads() -> None:
    """The index parses a row's JSON with the decoder's scanner alone: it must give what
    json.loads gives (None where json.loads fails), whatever the text."""
    import json

    from hither_store._hitindex import _parse

    texts = ['{"a":1}', ' {"a":1}', '{"a":1} ', '{"a":1}x', '{"a":1}{}', "", "nope", "[1,2]",
             '{"a":NaN}', '"x"', "1e400", '{"a":', '{"a":1', "{}", '{"k":"\\ud800"}',
             "[" * 5000 + "]" * 5000, '{"a":[1,{"b":null}],"c":true}']
    for text in texts:
        try:
            want = json.loads(text)
        except (ValueError, RecursionError):
            want = None
        got = _parse(text)
        assert json.dumps(got) == json.dumps(want), text[:40]


def test_a_row_with_valid_checksum_but_extra_text_is_no_summary(tmp_path: Path) -> None:
    """A row whose payload is JSON followed by more text (checksum made to match) is not
    read as the JSON before it."""
    import hashlib

    store = LocalStore(tmp_path)
    store.put_record("k-extra-text", {"v": 1}, summary={"v": 1})
    store._index.flush()
    db = sqlite3.connect(tmp_path / "index" / "stat.sqlite")
    (sig, value), = db.execute("SELECT sig, value FROM statmemo_v3").fetchall()
    payload = value.split(" ", 1)[1] + ' {"v":2}'
    check = hashlib.sha256(f"k-extra-text\0{payload}".encode()).hexdigest()[:32]
    with db:
        db.execute("UPDATE statmemo_v3 SET value = ?", (f"{check} {payload}",))
    db.close()
    hits, err = hits_in_new_process(tmp_path, ["k-extra-text"])
    assert hits == {"k-extra-text": None}
    assert "hit index entry of record 'k-extra-text' ignored" in err


@pytest.mark.parametrize("kind", ["xxh3", "sha256 (earlier rows)"])
def test_a_row_is_checked_by_the_hash_its_check_names(tmp_path: Path, kind: str) -> None:
    """Rows carry an XXH3-64 check (16 hex digits); rows written by earlier versions, the
    first 32 hex digits of a sha256, are still read. Either kind with a payload that does
    not match is a miss with a warning."""
    import hashlib

    import xxhash

    store = LocalStore(tmp_path)
    store.put_record("k-checkkind", {"v": 1}, summary={"v": 1})
    store._index.flush()
    db = sqlite3.connect(tmp_path / "index" / "stat.sqlite")
    (value,), = db.execute("SELECT value FROM statmemo_v3").fetchall()
    check, payload = value.split(" ", 1)
    data = f"k-checkkind\0{payload}".encode()
    assert check == xxhash.xxh3_64_hexdigest(data)
    if kind != "xxh3":
        check = hashlib.sha256(data).hexdigest()[:32]
    for text, want in ((payload, {"v": 1}), (payload.replace(":1}", ":2}"), None)):
        with db:
            db.execute("UPDATE statmemo_v3 SET value = ?", (f"{check} {text}",))
        hits, err = hits_in_new_process(tmp_path, ["k-checkkind"])
        assert hits == {"k-checkkind": want}
        assert ("hit index entry of record 'k-checkkind' ignored" in err) == (want is None)
    db.close()


@pytest.fixture
def quick_busy(monkeypatch: pytest.MonkeyPatch) -> None:
    """sqlite gives up on a busy database at once, and the memo steps aside briefly."""
    monkeypatch.setattr(PersistentStatMemo, "BUSY_TIMEOUT", 0.0)
    monkeypatch.setattr(PersistentStatMemo, "BUSY_FIRST", 0.01)
    monkeypatch.setattr(PersistentStatMemo, "BUSY_MOST", 0.02)


def _hold(root: Path, exclusive: bool) -> sqlite3.Connection:
    """Another connection holding the index database: its write lock, or (``exclusive``)
    every lock, so that not even readers get in."""
    db = sqlite3.connect(root / "index" / "stat.sqlite", isolation_level=None)
    if exclusive:
        db.execute("PRAGMA locking_mode=EXCLUSIVE")
    db.execute("BEGIN IMMEDIATE")
    db.execute("DELETE FROM statmemo_v3 WHERE path = x'00'")  # a write: the lock is taken
    return db


@pytest.mark.usefixtures("quick_busy")
def test_rows_the_busy_index_cannot_take_are_written_later(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.put_record("k-busy-first", {"v": 0}, summary={"v": 0})
    store._index.flush()
    holder = _hold(tmp_path, exclusive=False)
    keys = [f"k-busyrow{i}" for i in range(5)]
    with warnings.catch_warnings():
        warnings.simplefilter("error", StoreWarning)  # busy is no trouble to warn of
        for i, key in enumerate(keys):
            store.put_record(key, {"v": i}, summary={"v": i})
        store._index.flush()
        assert len(store._index._pending) == 5  # kept for the next write
        holder.execute("COMMIT")
        holder.close()
        time.sleep(0.05)  # the memo's pause is over
        store._index.flush()
    assert store._index._pending == []
    hits, err = hits_in_new_process(tmp_path, ["k-busy-first", *keys])
    assert hits == {"k-busy-first": {"v": 0}, **{k: {"v": i} for i, k in enumerate(keys)}}
    assert "StoreWarning" not in err


@pytest.mark.usefixtures("quick_busy")
def test_a_busy_index_is_read_again_once_free(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.put_record("k-busy-read", {"v": 1}, summary={"v": 1})
    store._index.flush()
    store._index.forget()  # as in a new process: the shard is not read yet, and
    store._memo.reset()  # the database is not open
    holder = _hold(tmp_path, exclusive=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", StoreWarning)
        assert store.get_hit("k-busy-read") is None  # the record file answers instead
        assert store.get_record("k-busy-read") == {"v": 1}
        holder.execute("COMMIT")
        holder.close()  # ends the exclusive locking mode
        time.sleep(0.05)
        assert store.get_hit("k-busy-read") == {"v": 1}  # the busy shard was not kept empty


def test_an_index_busy_for_long_warns_once_and_stays_on(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("BUSY_TIMEOUT", "BUSY_FIRST", "BUSY_MOST", "BUSY_WARN"):
        monkeypatch.setattr(PersistentStatMemo, name, 0.0)
    store = LocalStore(tmp_path)
    store.put_record("k-longbusy", {"v": 1}, summary={"v": 1})
    store._index.flush()
    holder = _hold(tmp_path, exclusive=False)
    with pytest.warns(StoreWarning) as caught:
        for i in range(3):
            store.put_record(f"k-longrow{i}", {"v": i}, summary={"v": i})
            store._index.flush()
    texts = [str(w.message) for w in caught if "store index" in str(w.message)]
    assert len(texts) == 1 and "busy with other processes" in texts[0], texts
    assert "Remove the file" not in texts[0]  # nothing is wrong with the file
    holder.execute("COMMIT")
    holder.close()
    store._index.flush()
    assert store._index._pending == []
    assert hits_in_new_process(tmp_path, ["k-longrow2"])[0] == {"k-longrow2": {"v": 2}}


def test_is_busy_tells_a_busy_database_from_a_broken_one(tmp_path: Path) -> None:
    db = tmp_path / "x.sqlite"
    a = sqlite3.connect(db, isolation_level=None)
    a.execute("CREATE TABLE t (x)")
    a.execute("BEGIN IMMEDIATE")
    b = sqlite3.connect(db, isolation_level=None, timeout=0)
    with pytest.raises(sqlite3.OperationalError) as locked:
        b.execute("BEGIN IMMEDIATE")
    assert is_busy(locked.value)
    a.execute("ROLLBACK")
    garbage = tmp_path / "garbage.sqlite"
    garbage.write_bytes(os.urandom(4096))
    with pytest.raises(sqlite3.DatabaseError) as broken:
        sqlite3.connect(garbage).execute("SELECT * FROM sqlite_master")
    assert not is_busy(broken.value)
    assert not is_busy(OSError("database is locked"))
    # errors made without sqlite's code (and all errors on Python 3.10) go by their text
    assert is_busy(sqlite3.OperationalError("database is locked"))
    assert not is_busy(sqlite3.OperationalError("no such table: t"))


@pytest.mark.usefixtures("quick_busy")
def test_rows_waiting_for_a_busy_index_stay_bounded(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from hither_store._hitindex import HitIndex

    monkeypatch.setattr(HitIndex, "MAX_PENDING", 100)
    monkeypatch.setattr(HitIndex, "BATCH", 10)
    monkeypatch.setattr(PersistentStatMemo, "BUSY_FIRST", 60.0)  # one long pause
    store = LocalStore(tmp_path)
    store.put_record("k-bounded", {"v": 0}, summary={"v": 0})
    store._index.flush()
    holder = _hold(tmp_path, exclusive=False)
    sig = (1, 2, 3, 4, 5)
    for i in range(1000):
        store._index.put(f"kb{i:06d}", str(tmp_path / f"r{i}"), sig, {"v": i})
        assert len(store._index._pending) <= 110
    assert store._memo.pausing()
    holder.execute("COMMIT")
    holder.close()
    store._index.flush(patient=True)
    assert store._index._pending == []
    rows = store._memo.get_under(str(tmp_path) + os.sep, "hit1")
    assert rows is not None
    kept = {p for p in rows if p.startswith(os.fsencode(str(tmp_path / "r")))}
    assert os.fsencode(str(tmp_path / "r999")) in kept and 100 <= len(kept) <= 110


def _paused(root: Path, monkeypatch: pytest.MonkeyPatch, prefix: str) -> LocalStore:
    """A store whose index met a busy database (now free again) while ``{prefix}1`` was
    stored, and pauses for a minute: ``{prefix}0`` is in the index, ``{prefix}1`` waits."""
    monkeypatch.setattr(PersistentStatMemo, "BUSY_TIMEOUT", 0.0)
    monkeypatch.setattr(PersistentStatMemo, "BUSY_FIRST", 60.0)
    store = LocalStore(root)
    store.put_record(f"{prefix}0", {"v": 0}, summary={"v": 0})
    store._index.flush()
    holder = _hold(root, exclusive=False)
    store.put_record(f"{prefix}1", {"v": 1}, summary={"v": 1})
    store._index.flush()
    holder.execute("COMMIT")
    holder.close()
    assert store._memo.pausing() and len(store._index._pending) == 1
    return store


def test_a_patient_write_ends_the_pause(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = _paused(tmp_path, monkeypatch, "k-patient")
    store._index.flush(patient=True)  # as at exit
    assert not store._memo.pausing() and store._index._pending == []
    # fully back: shard reads are real reads (never kept empty) and writes are written
    assert store._memo.get_under(str(tmp_path) + os.sep, "hit1")
    store.put_record("k-patient2", {"v": 2}, summary={"v": 2})
    store._index.flush()
    assert store._index._pending == []
    hits, _ = hits_in_new_process(tmp_path, ["k-patient1", "k-patient2"])
    assert hits == {"k-patient1": {"v": 1}, "k-patient2": {"v": 2}}


def test_rows_of_before_a_clear_are_not_put_back(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    store = LocalStore(tmp_path)
    store.put_record("k-before-clear", {"v": 1}, summary={"v": 1})

    def busy_while_cleared(rows, *, patient=False):
        store._index.forget()  # another thread clears the store meanwhile
        return False  # and the database was busy

    monkeypatch.setattr(store._memo, "put_many", busy_while_cleared)
    store._index.flush()
    assert store._index._pending == []


def test_rows_waiting_at_exit_are_written_when_the_database_is_free(tmp_path: Path) -> None:
    script = (
        "import sqlite3, sys\n"
        "from hither_store import LocalStore, PersistentStatMemo\n"
        "PersistentStatMemo.BUSY_TIMEOUT = 0.0\n"
        "PersistentStatMemo.BUSY_FIRST = 600.0\n"
        "s = LocalStore(sys.argv[1])\n"
        "s.put_record('k-atexit0', {'v': 0}, summary={'v': 0}); s._index.flush()\n"
        "db = sqlite3.connect(sys.argv[1] + '/index/stat.sqlite', isolation_level=None)\n"
        "db.execute('BEGIN IMMEDIATE')\n"
        "s.put_record('k-atexit1', {'v': 1}, summary={'v': 1}); s._index.flush()\n"
        "assert s._memo.pausing() and len(s._index._pending) == 1\n"
        "db.execute('COMMIT')\n")
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    hits, _ = hits_in_new_process(tmp_path, ["k-atexit1"])
    assert hits == {"k-atexit1": {"v": 1}}


def test_clear_during_a_pause_wipes_the_rows(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    store = _paused(tmp_path, monkeypatch, "k-wiped0")
    store.clear()
    db = sqlite3.connect(tmp_path / "index" / "stat.sqlite")
    assert db.execute("SELECT count(*) FROM statmemo_v3").fetchone() == (0,)
    db.close()
