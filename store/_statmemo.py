"""Memos of what was computed from a file's content, trusted while the file's stat is unchanged.

Hashing a multi-gigabyte file (a blob, a ``hi.File`` input, a SIF image) or re-parsing a
source file on every use is wasteful, so the result is remembered together with the file's
*signature*: device, inode, size, modification time and inode change time. While the file
on disk keeps that signature the remembered value is used without reading the file.

Two rules make that safe:

* The signature includes the inode change time (ctime), which no user-level call can set:
  an edit in place followed by restoring the modification time (``cp -p``, ``rsync -t``,
  ``os.utime``) still changes it.
* A value is remembered only when the file had not changed for :data:`RACY_NS` before its
  read started. Timestamps have a granularity (a kernel tick, two seconds on FAT, more on
  some network filesystems), so a second edit within the tick of the first leaves the
  signature as it was; a file that was already settled when it was read cannot have been
  edited in the same tick as the read. A fresh file is read again on its next use.

This module is used by ``hither_store`` for verified blobs and by ``hither`` for file hashes,
code identities and image digests: one implementation of the rules above.
"""

from __future__ import annotations

import os
import random
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Generic, TypeVar

if TYPE_CHECKING:
    import sqlite3

__all__ = ["RACY_NS", "FileMemo", "PersistentStatMemo", "Signature", "StatMemo", "is_busy",
           "settled", "sig_text", "signature"]

RACY_NS = 2_000_000_000
"""A file changed less than this many nanoseconds before a read is not memoized."""

Signature = tuple[int, int, int, int, int]
"""``(st_dev, st_ino, st_size, st_mtime_ns, st_ctime_ns)``."""

V = TypeVar("V")


def signature(st: os.stat_result) -> Signature:
    """What identifies one unchanged version of a file: device, inode, size, mtime, ctime."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def settled(sig: Signature, started_ns: int) -> bool:
    """Whether a file with signature ``sig`` had last changed more than :data:`RACY_NS`
    before ``started_ns`` (a ``time.time_ns()`` taken before the read began)."""
    return started_ns - max(sig[3], sig[4]) > RACY_NS


class StatMemo(Generic[V]):
    """Thread-safe, bounded (least recently used first out) map ``key -> (signature, value)``."""

    def __init__(self, max_entries: int = 8192) -> None:
        self._max = max_entries
        self._lock = threading.Lock()
        self._entries: OrderedDict[Hashable, tuple[Signature, V]] = OrderedDict()

    def get(self, key: Hashable, sig: Signature) -> V | None:
        """The value remembered for ``key`` while its file had exactly signature ``sig``."""
        with self._lock:
            hit = self._entries.get(key)
            if hit is None or hit[0] != sig:
                return None
            self._entries.move_to_end(key)
            return hit[1]

    def put(self, key: Hashable, sig: Signature, value: V, *,
            started_ns: int | None) -> bool:
        """Remember ``value`` for ``key`` at signature ``sig``; return whether it was kept.

        ``started_ns`` is when the read that produced ``value`` began: a file changed shortly
        before is not remembered (see the module docstring). ``None`` only for content this
        process has just written itself and knows.
        """
        if started_ns is not None and not settled(sig, started_ns):
            with self._lock:
                self._entries.pop(key, None)
            return False
        with self._lock:
            self._entries[key] = (sig, value)
            self._entries.move_to_end(key)
            while len(self._entries) > self._max:
                self._entries.popitem(last=False)
        return True

    def forget(self, key: Hashable) -> None:
        """Drop what is known about ``key``."""
        with self._lock:
            self._entries.pop(key, None)

    def forget_under(self, prefix: str) -> None:
        """Drop every entry whose key is a string starting with ``prefix``."""
        with self._lock:
            for k in [k for k in self._entries if isinstance(k, str) and k.startswith(prefix)]:
                del self._entries[k]

    def clear(self) -> None:
        """Forget everything."""
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)


class PersistentStatMemo:
    """A :class:`StatMemo` of strings shared by processes: one small sqlite table.

    ``locate()`` gives the database path (``None`` or ``""``: no persistent memo); it is
    called when the database is first needed and again after :meth:`reset`. Any sqlite or
    file system trouble disables the memo for this process: it only saves time. A database
    busy with other processes (``database is locked``, once sqlite's own wait ran out) is
    not trouble: the memo steps aside for a while (a randomized pause of up to
    :data:`BUSY_FIRST` seconds, doubling up to :data:`BUSY_MOST` while it stays busy) and
    is tried again. Paths are stored as bytes (``os.fsencode``), so names that are not
    valid UTF-8 work.
    ``on_error(db, error)``, when given, is called once when trouble disables the memo, and
    once (until :meth:`reset`) when the database has stayed busy for :data:`BUSY_WARN`
    seconds in a row (``error`` is then the busy error: see :func:`is_busy`).
    """

    BUSY_TIMEOUT = 2.0
    """Seconds sqlite itself waits for a busy database before it answers "locked"."""
    BUSY_FIRST = 0.25
    BUSY_MOST = 30.0
    BUSY_WARN = 60.0

    _TABLE = "statmemo_v3"
    # v3: the same rows as v2, clustered by (path, kind) (WITHOUT ROWID), so the rows
    # under one folder are read in one sequential range scan
    _OLD_TABLE = "statmemo_v2"

    def __init__(self, locate: Callable[[], str | None], *,
                 on_error: Callable[[str, BaseException], None] | None = None) -> None:
        self._locate = locate
        self._on_error = on_error
        self._db = ""
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._pid = -1
        self._disabled = False
        self._orphans: list[sqlite3.Connection] = []
        self._busy_until = 0.0  # time.monotonic() before which the database is not tried
        self._busy_wait = 0.0
        self._busy_since = -1.0  # when it became busy (-1: it is not)
        self._busy_told = False
        _MEMOS.add(self)

    def reset(self, *, wipe: bool = False) -> None:
        """Close the database (it is located again on next use); ``wipe`` deletes its rows."""
        import sqlite3  # on first use: `import hither` stays fast

        with self._lock:
            conn = self._connect(patient=True) if wipe else None
            if conn is not None:
                try:
                    conn.execute(f"DELETE FROM {self._TABLE}")
                except sqlite3.Error:
                    pass
            if self._conn is not None and self._pid == os.getpid():
                self._conn.close()
            self._conn = None
            self._disabled = False
            self._free()
            self._busy_told = False

    def _connect(self, patient: bool = False) -> sqlite3.Connection | None:
        import sqlite3  # on first use: `import hither` stays fast

        if self._disabled or (not patient and self.pausing()):
            return None
        if self._conn is not None:
            if self._pid == os.getpid():
                return self._conn
            # inherited through fork: never use (or close) the parent's connection
            self._orphans.append(self._conn)
            self._conn = None
        db = self._locate()
        if not db:
            self._disabled = True
            return None
        self._db = db
        conn = None
        try:
            os.makedirs(os.path.dirname(os.path.abspath(db)), exist_ok=True)
            conn = sqlite3.connect(db, timeout=self.BUSY_TIMEOUT, isolation_level=None,
                                   check_same_thread=False)
            # switching to WAL needs the database to itself (it waits for every reader):
            # only its first user switches it
            if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            if conn.execute("SELECT 1 FROM sqlite_master WHERE name = ?",
                            (self._TABLE,)).fetchone() is None:
                self._create(conn)
        except (sqlite3.Error, OSError) as e:
            if conn is not None:
                conn.close()
            self._trouble(e)
            return None
        self._conn, self._pid, self._db = conn, os.getpid(), db
        return conn

    def _create(self, conn: sqlite3.Connection) -> None:
        """Create the table, taking over the rows of an earlier version's table."""
        conn.execute("BEGIN IMMEDIATE")  # one process creates it, the others then see it
        try:
            conn.execute(f"CREATE TABLE IF NOT EXISTS {self._TABLE} (path BLOB NOT NULL, "
                         "kind TEXT NOT NULL, sig TEXT NOT NULL, value TEXT NOT NULL, "
                         "PRIMARY KEY (path, kind)) WITHOUT ROWID")
            if conn.execute("SELECT 1 FROM sqlite_master WHERE name = ?",
                            (self._OLD_TABLE,)).fetchone() is not None:
                conn.execute(f"INSERT OR IGNORE INTO {self._TABLE} (path, kind, sig, value) "
                             f"SELECT path, kind, sig, value FROM {self._OLD_TABLE}")
                conn.execute(f"DROP TABLE {self._OLD_TABLE}")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def get(self, path: str, kind: str, sig: Signature) -> str | None:
        """The value stored for ``(path, kind)`` at signature ``sig``."""
        import sqlite3  # on first use: `import hither` stays fast

        with self._lock:
            try:
                conn = self._connect()
                if conn is None:
                    return None
                row = conn.execute(f"SELECT sig, value FROM {self._TABLE} WHERE path = ? AND "
                                   "kind = ?", (os.fsencode(path), kind)).fetchone()
            except (sqlite3.Error, ValueError) as e:
                self._trouble(e)
                return None
            self._free()
        if row is None or row[0] != _sig_text(sig):
            return None
        return str(row[1])

    def put(self, path: str, kind: str, sig: Signature, value: str) -> None:
        """Store ``value`` for ``(path, kind)`` at signature ``sig``."""
        import sqlite3  # on first use: `import hither` stays fast

        with self._lock:
            try:
                conn = self._connect()
                if conn is not None:
                    conn.execute(f"INSERT OR REPLACE INTO {self._TABLE} (path, kind, sig, value) "
                                 "VALUES (?, ?, ?, ?)",
                                 (os.fsencode(path), kind, _sig_text(sig), value))
                    self._free()
            except (sqlite3.Error, ValueError) as e:
                self._trouble(e)

    def get_under(self, prefix: str, kind: str) -> dict[bytes, str] | None:
        """Every row of ``kind`` whose path starts with ``prefix``: ``{os.fsencode(path):
        signature text + " " + value}`` (see :func:`sig_text`; one string per row, for
        memory); empty when the memo is off, ``None`` while the database is busy (ask
        again later)."""
        import sqlite3  # on first use: `import hither` stays fast

        low = os.fsencode(prefix)
        with self._lock:
            try:
                conn = self._connect()
                if conn is None:
                    return None if self._busy() else {}
                rows = conn.execute(f"SELECT path, sig || ' ' || value FROM {self._TABLE} WHERE "
                                    "path >= ? AND path < ? AND kind = ?",
                                    (low, low + b"\xff", kind)).fetchall()
            except (sqlite3.Error, ValueError) as e:
                self._trouble(e)
                return None if self._busy() else {}
            self._free()
        return dict(rows)

    def put_many(self, rows: list[tuple[str, str, Signature, str]], *,
                 patient: bool = False) -> bool:
        """Store ``(path, kind, signature, value)`` rows in one transaction; False when the
        database is busy and they were not stored (try again later). ``patient`` tries
        even while the memo steps aside (a last chance, at exit)."""
        import sqlite3  # on first use: `import hither` stays fast

        with self._lock:
            try:
                conn = self._connect(patient)
                if conn is None:
                    return not self._busy()
                with conn:
                    conn.execute("BEGIN")
                    conn.executemany(
                        f"INSERT OR REPLACE INTO {self._TABLE} (path, kind, sig, value) "
                        "VALUES (?, ?, ?, ?)",
                        [(os.fsencode(p), k, _sig_text(s), v) for p, k, s, v in rows])
            except (sqlite3.Error, ValueError) as e:
                self._trouble(e)
                return self._disabled
            self._free()
            return True

    def pausing(self) -> bool:
        """Whether the memo is stepping aside for a busy database right now."""
        return self._busy() and time.monotonic() < self._busy_until

    def _busy(self) -> bool:
        """Whether the database was busy when last tried (and the memo is still on)."""
        return self._busy_since >= 0 and not self._disabled

    def _free(self) -> None:
        """The database answered: no pause, no spell of busy (called under the lock)."""
        self._busy_since, self._busy_until, self._busy_wait = -1.0, 0.0, 0.0

    def _trouble(self, error: BaseException) -> None:
        """Step aside for a while when the database is busy, else stop using it in this
        process (called under the lock)."""
        if not is_busy(error):
            if not self._disabled and self._on_error is not None:
                self._on_error(self._db, error)
            self._disabled = True
            return
        now = time.monotonic()
        # a new spell of busy, unless this try came soon after the last pause ended
        if self._busy_since < 0 or now > self._busy_until + self.BUSY_MOST:
            self._busy_since, self._busy_wait = now, 0.0
        self._busy_wait = min(max(2 * self._busy_wait, self.BUSY_FIRST), self.BUSY_MOST)
        # jittered, so processes that collided do not come back together
        self._busy_until = now + self._busy_wait * random.uniform(0.5, 1.0)
        if (now - self._busy_since >= self.BUSY_WARN and not self._busy_told
                and self._on_error is not None):
            self._busy_told = True
            self._on_error(self._db, error)


_MEMOS: weakref.WeakSet[PersistentStatMemo] = weakref.WeakSet()


def _after_fork() -> None:
    # a lock held by another thread of the parent (waiting out a busy database) would
    # never be released in the child
    for memo in list(_MEMOS):
        memo._lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)


def is_busy(error: BaseException) -> bool:
    """Whether a sqlite error says the database is busy with another connection (it may
    well work a moment later), rather than broken or out of reach."""
    code = getattr(error, "sqlite_errorcode", None)  # Python >= 3.11
    if code is not None:
        return code & 0xFF in (5, 6)  # SQLITE_BUSY, SQLITE_LOCKED and their extended codes
    text = str(error)
    return type(error).__name__ == "OperationalError" and ("is locked" in text
                                                           or "is busy" in text)


def sig_text(sig: Signature) -> str:
    """A signature as the memo database stores it."""
    # text, not integers: inode numbers may not fit a signed 64-bit sqlite INTEGER
    return f"{sig[0]}:{sig[1]}:{sig[2]}:{sig[3]}:{sig[4]}"


_sig_text = sig_text


class FileMemo:
    """Values computed from files (digests), memoized by path and signature.

    In this process always, and across processes too when a :class:`PersistentStatMemo`
    is given. ``kind`` tells apart different values computed from the same file.
    """

    def __init__(self, max_entries: int = 8192, persistent: PersistentStatMemo | None = None,
                 kind: str = "sha256") -> None:
        self.memo: StatMemo[str] = StatMemo(max_entries)
        self.persistent = persistent
        self.kind = kind

    def get(self, path: str, compute: Callable[[str], str],
            st: os.stat_result | None = None) -> str:
        """``compute(path)``, or the value remembered for the file as it is now.

        ``st`` is the file's ``os.stat`` when the caller has it already. The value is
        remembered only when the file kept its signature through the computation and had
        settled before it (see the module docstring). ``OSError`` from ``stat`` or
        ``compute`` propagates.
        """
        sig = signature(os.stat(path) if st is None else st)
        hit = self.memo.get(path, sig)
        if hit is not None:
            return hit
        if self.persistent is not None:
            hit = self.persistent.get(path, self.kind, sig)
            if hit is not None:
                self.memo.put(path, sig, hit, started_ns=None)  # it was settled when stored
                return hit
        started = time.time_ns()
        value = compute(path)
        if signature(os.stat(path)) == sig and self.memo.put(path, sig, value,
                                                             started_ns=started):
            if self.persistent is not None:
                self.persistent.put(path, self.kind, sig, value)
        return value

    def clear(self, *, persistent: bool = False) -> None:
        """Forget this process's entries; the persistent database is closed (and, with
        ``persistent=True``, emptied)."""
        self.memo.clear()
        if self.persistent is not None:
            self.persistent.reset(wipe=persistent)
