"""Tests for hither_store._statmemo: the one memo of values computed from file contents."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hither_store import FileMemo, LocalStore, PersistentStatMemo, StatMemo, _statmemo
from hither_store._statmemo import RACY_NS, settled, signature
from hither_store._verify import VERIFIED

HOUR_NS = 3600 * 10**9


def _sha(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


class Counting:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, path: str) -> str:
        self.calls += 1
        return _sha(path)


def test_settled_uses_the_later_of_mtime_and_ctime() -> None:
    now = time.time_ns()
    old = now - HOUR_NS
    assert settled((0, 0, 0, old, old), now)
    assert not settled((0, 0, 0, old, now - RACY_NS // 2), now)  # ctime fresh: cp -p, utime
    assert not settled((0, 0, 0, now + HOUR_NS, old), now)  # mtime in the future
    assert not settled((0, 0, 0, old, now - RACY_NS), now)  # exactly at the limit


def test_stat_memo_matches_signature_and_is_bounded() -> None:
    memo: StatMemo[str] = StatMemo(max_entries=3)
    old = time.time_ns() - HOUR_NS
    sig = (1, 2, 3, old, old)
    assert memo.put("a", sig, "A", started_ns=time.time_ns())
    assert memo.get("a", sig) == "A"
    assert memo.get("a", (1, 2, 3, old, old + 1)) is None
    fresh = (1, 2, 3, old, time.time_ns())
    assert not memo.put("a", fresh, "A2", started_ns=time.time_ns())
    assert memo.get("a", sig) is None  # a refused put also drops the stale entry
    assert memo.put("fresh", fresh, "F", started_ns=None)  # our own write: kept
    for key in ("/x/1", "/x/2", "/y/3", "/x/4"):
        memo.put(key, sig, key, started_ns=time.time_ns())
    assert len(memo) == 3
    memo.forget_under("/x/")
    assert len(memo) == 1 and memo.get("/y/3", sig) == "/y/3"


def test_file_memo_fresh_file_is_read_every_time(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(b"fresh")
    old = time.time_ns() - HOUR_NS
    os.utime(path, ns=(old, old))  # an old mtime does not make it settled: its ctime is new
    memo, compute = FileMemo(), Counting()
    assert memo.get(str(path), compute) == memo.get(str(path), compute)
    assert compute.calls == 2
    assert len(memo.memo) == 0


def test_file_memo_settled_file_is_read_once_then_ctime_reveals_edits(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_statmemo, "RACY_NS", 0)
    path = tmp_path / "f.bin"
    path.write_bytes(b"version 1")
    old = time.time_ns() - HOUR_NS
    os.utime(path, ns=(old, old))
    memo, compute = FileMemo(), Counting()
    first = memo.get(str(path), compute)
    assert memo.get(str(path), compute) == first and compute.calls == 1
    backup = tmp_path / "backup.bin"
    backup.write_bytes(b"version 2")
    os.utime(backup, ns=(old, old))
    subprocess.run(["cp", "-p", str(backup), str(path)], check=True)  # same size, inode, mtime
    assert memo.get(str(path), compute) == hashlib.sha256(b"version 2").hexdigest()
    assert compute.calls == 2


def test_file_memo_file_changing_while_read_is_not_memoized(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_statmemo, "RACY_NS", 0)
    path = tmp_path / "f.bin"
    path.write_bytes(b"before")
    old = time.time_ns() - HOUR_NS
    os.utime(path, ns=(old, old))
    memo = FileMemo()

    def read_then_change(p: str) -> str:
        digest = _sha(p)
        Path(p).write_bytes(b"after!")
        return digest

    assert memo.get(str(path), read_then_change) == hashlib.sha256(b"before").hexdigest()
    assert memo.get(str(path), _sha) == hashlib.sha256(b"after!").hexdigest()


def test_persistent_memo_shared_by_processes_and_undecodable_names(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_statmemo, "RACY_NS", 0)
    db = tmp_path / "memo.sqlite"
    name = os.fsdecode(b"caf\xe9-\xff.bin")  # not UTF-8: lone surrogates in the str
    path = tmp_path / name
    path.write_bytes(b"data")
    old = time.time_ns() - HOUR_NS
    os.utime(path, ns=(old, old))
    memo = FileMemo(persistent=PersistentStatMemo(lambda: str(db)))
    digest = memo.get(str(path), _sha)
    script = (
        "import os, sys\n"
        "from hither_store import FileMemo, PersistentStatMemo\n"
        "def boom(p): raise AssertionError('read again')\n"
        "memo = FileMemo(persistent=PersistentStatMemo(lambda: sys.argv[1]))\n"
        "print(memo.get(os.fsdecode(bytes.fromhex(sys.argv[2])), boom))\n"
    )
    out = subprocess.run([sys.executable, "-c", script, str(db), os.fsencode(str(path)).hex()],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == digest


def test_verified_blob_fresh_on_disk_is_hashed_again(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    store = LocalStore(tmp_path / "store")
    data = os.urandom(10_000)
    hexdigest = hashlib.sha256(data).hexdigest()
    path = store.root / "blobs" / "sha256" / hexdigest[:2] / hexdigest[2:4] / hexdigest
    path.parent.mkdir(parents=True)
    path.write_bytes(data)  # by hand: this process did not write it
    uri = f"sha256://{hexdigest}"
    assert store.get_bytes(uri) == data
    assert not VERIFIED.is_verified(str(path), signature(os.stat(path)))
    monkeypatch.setattr(_statmemo, "RACY_NS", 0)
    assert store.get_bytes(uri) == data
    assert VERIFIED.is_verified(str(path), signature(os.stat(path)))


def test_persistent_memo_takes_over_the_rows_of_the_earlier_table(tmp_path: Path) -> None:
    """A database written by an earlier version (table ``statmemo_v2``) keeps its rows:
    the first process to open it moves them to the current table, clustered by path so a
    folder's rows are one range scan, and drops the old table."""
    import sqlite3

    db = tmp_path / "memo.sqlite"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE statmemo_v2 (path BLOB NOT NULL, kind TEXT NOT NULL, "
                 "sig TEXT NOT NULL, value TEXT NOT NULL, PRIMARY KEY (path, kind))")
    sig = (1, 2, 3, 4, 5)
    rows = [(os.fsencode(f"/d/{i:03d}"), "k", _statmemo.sig_text(sig), f"v{i}")
            for i in range(50)]
    conn.executemany("INSERT INTO statmemo_v2 VALUES (?, ?, ?, ?)", rows)
    conn.commit()
    conn.close()
    memo = PersistentStatMemo(lambda: str(db))
    assert memo.get("/d/007", "k", sig) == "v7"
    under = memo.get_under("/d/0", "k")
    assert len(under) == 50 and under[b"/d/049"] == f"{_statmemo.sig_text(sig)} v49"
    memo.put("/d/new", "k", sig, "fresh")
    tables = {name for (name,) in sqlite3.connect(db).execute(
        "SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert tables == {"statmemo_v3"}
    # a second process opens the migrated database as it is
    script = ("import sys\nfrom hither_store import PersistentStatMemo\n"
              "m = PersistentStatMemo(lambda: sys.argv[1])\n"
              "print(m.get('/d/new', 'k', (1, 2, 3, 4, 5)), len(m.get_under('/d/', 'k')))\n")
    out = subprocess.run([sys.executable, "-c", script, str(db)], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["fresh", "51"]


def test_busy_warns_only_after_a_minute_of_busy_in_a_row(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import sqlite3
    import types

    clock = types.SimpleNamespace(now=1000.0)
    monkeypatch.setattr(_statmemo, "time", types.SimpleNamespace(monotonic=lambda: clock.now))
    monkeypatch.setattr(PersistentStatMemo, "BUSY_TIMEOUT", 0.0)
    db = tmp_path / "m.sqlite"
    told: list[BaseException] = []
    memo = PersistentStatMemo(lambda: str(db), on_error=lambda _db, e: told.append(e))
    row = [("/d/a", "k", (1, 2, 3, 4, 5), "v")]
    assert memo.put_many(row)
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    assert not memo.put_many(row)  # busy: not written, not disabled
    assert memo.pausing()
    clock.now += 40  # a lone try long after: a new spell of busy, no warning
    assert not memo.put_many(row)
    start = clock.now
    while memo._busy_until + 0.5 - start < PersistentStatMemo.BUSY_WARN:
        clock.now = memo._busy_until + 0.5  # tries as soon as each pause ends
        assert not memo.put_many(row)
    assert told == []
    for _ in range(3):
        clock.now = memo._busy_until + 0.5
        assert not memo.put_many(row)
    assert len(told) == 1 and _statmemo.is_busy(told[0])  # once, for a minute of busy
    holder.execute("COMMIT")
    assert not memo.put_many(row)  # free now, but the memo's pause is not over
    clock.now = memo._busy_until + 0.5
    assert memo.put_many(row) and not memo.pausing()
    assert memo.get("/d/a", "k", (1, 2, 3, 4, 5)) == "v"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_child_forked_while_the_memo_is_busy_does_not_hang(tmp_path: Path) -> None:
    memo = PersistentStatMemo(lambda: str(tmp_path / "m.sqlite"))
    memo.put("/d/a", "k", (1, 2, 3, 4, 5), "v")
    with memo._lock:  # another thread of the parent is inside the memo at the fork
        pid = os.fork()
        if pid == 0:  # the child: its own lock, its own connection
            ok = memo.get("/d/a", "k", (1, 2, 3, 4, 5)) == "v"
            os._exit(0 if ok else 1)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            assert os.waitstatus_to_exitcode(status) == 0
            return
        time.sleep(0.05)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    pytest.fail("the forked child hung on the memo's lock")
