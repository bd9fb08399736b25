"""The hit index: a small summary of each record, read instead of the whole record file.

A cache lookup needs a record's status and result, not its provenance (sources, inputs,
console of the run, ...), which is most of the file. The writer of a record therefore
also stores a *summary* of it (chosen by the caller) in one sqlite table beside the
records, ``index/stat.sqlite``, through :class:`PersistentStatMemo`: the row is keyed by
the record file's path and holds the file's stat signature. A lookup stats the record
file and uses the summary only while the file keeps exactly that signature, so

* a record deleted (``gc``, ``delete_record``, by hand) or quarantined is a miss, as
  without the index; a record replaced by another writer, or edited in place, no longer
  matches its row and is read in full again;
* concurrent writers and killed processes are sqlite's business (WAL, atomic commits);
  while the database is busy with other writers, lookups read the record files and
  this process's rows wait for a later write; any other sqlite trouble (a read-only or
  network file system, a damaged database) turns the index off for the process, with
  one warning, and lookups read the record files;
* every row carries a checksum of its key and summary (XXH3-64; rows of earlier
  versions, a truncated sha256): a damaged or edited row is ignored with a
  :class:`StoreWarning`, and the record file is read instead.

Rows are bound to record files the way the stat memo binds digests to files (see
:mod:`._statmemo`): a row is stored for a record this process has just written itself
(the file that was renamed into place is checked to be ours), or read back only when the
file had settled before it was read.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import sys
import threading
import time
import warnings
import weakref
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from xxhash import xxh3_64_hexdigest as _xxh3_64

from ._shared import is_group_shared, make_dirs, share_fd
from ._statmemo import PersistentStatMemo, Signature, is_busy, sig_text
from .errors import StoreWarning

__all__ = ["INDEX_DB", "HitIndex", "Summary"]

Summary = dict[str, Any] | list[Any]
"""What the index keeps of a record: a JSON object or array (chosen by the writer)."""

INDEX_DB = "index/stat.sqlite"
"""The index database, relative to the store root."""

_KIND = "hit1"


_FS_ENCODING, _FS_ERRORS = sys.getfilesystemencoding(), sys.getfilesystemencodeerrors()
# the decoder's C scanner (not in the type stubs): json.loads without its Python layers
_scan: Callable[[str, int], tuple[Any, int]] = vars(json.JSONDecoder())["scan_once"]


def _parse(payload: str) -> Any:
    """``json.loads(payload)`` (None when it fails), without its Python wrapper for the
    compact JSON this index writes: one scan from the first character to the last."""
    try:
        value, end = _scan(payload, 0)
    except (StopIteration, ValueError, RecursionError):
        end = -1
    if end == len(payload):
        return value
    try:  # anything else (whitespace around, trailing data, not JSON) as json.loads says
        return json.loads(payload)
    except (ValueError, RecursionError):
        return None


# == json.dumps(summary, sort_keys=True, separators=(",", ":")), the encoder made once
_ENCODE = json.JSONEncoder(sort_keys=True, separators=(",", ":")).encode


def _checksum(key: str, payload: str) -> str:
    """The check of a row: XXH3-64 of its key and payload, 16 hex digits. It finds damage
    (a torn page, a bit flip, an edit by hand), as sqlite does not; whoever can write the
    database could forge any checksum, so a cryptographic hash would buy nothing more."""
    return _xxh3_64(f"{key}\0{payload}".encode("utf-8", "surrogatepass"))


def _checks_out(key: str, check: str, payload: str) -> bool:
    data = f"{key}\0{payload}".encode("utf-8", "surrogatepass")
    if len(check) == 16:
        return check == _xxh3_64(data)
    # rows written before XXH3 carry the first 32 hex digits of a sha256
    return check == hashlib.sha256(data).hexdigest()[:32]


class HitIndex:
    """Summaries of records, valid while their record file is unchanged.

    Rows are read one shard (the records' ``<k0k1>/`` folder) at a time, in one query,
    when the shard is first looked up; a key missing there is read from its record file,
    which stays the authority. Rows are written in batches (at most :data:`BATCH` rows or
    :data:`FLUSH_SECONDS` late, and at exit): a row lost to a killed process only costs a
    full record read later. Rows the database was too busy to take wait for the next
    batch (the oldest are let go beyond :data:`MAX_PENDING`).
    """

    BATCH = 512
    FLUSH_SECONDS = 1.0
    MAX_PENDING = 65_536

    def __init__(self, memo: PersistentStatMemo) -> None:
        self._memo = memo
        self._lock = threading.Lock()
        self._shards: dict[str, dict[bytes, str]] = {}
        self._pending: list[tuple[str, str, Signature, str]] = []
        self._since = 0.0
        self._batch = self.BATCH  # pending rows that make a write due
        self._generation = 0  # moved on by forget(): rows of before are not put back
        _LIVE.add(self)

    def get(self, key: str, path: str) -> Summary | None:
        """The summary stored with the record file ``path`` of ``key`` as it is now."""
        try:
            st = os.stat(path)
        except OSError:
            return None
        shard = self._shards.get(key[:2])
        if shard is None:
            shard = self._load(path[: -len(os.path.basename(path))])
            if shard is None:  # the database is busy: the record file, this time
                return None
            self._shards[key[:2]] = shard
        row = shard.get(path.encode(_FS_ENCODING, _FS_ERRORS))  # == os.fsencode(path)
        if row is None:
            return None
        sig, _, value = row.partition(" ")
        # == sig_text(signature(st)), spelled out: this runs for every cache hit
        if sig != f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}":
            return None
        check, _, payload = value.partition(" ")
        if not _checks_out(key, check, payload):
            self._bad(key, "its checksum does not match")
            return None
        body = _parse(payload)
        if not isinstance(body, (dict, list)):
            self._bad(key, "it is not a JSON object or array")
            return None
        return body

    def _load(self, folder: str) -> dict[bytes, str] | None:
        self.flush()
        return self._memo.get_under(folder, _KIND)

    def put(self, key: str, path: str, sig: Signature, summary: Summary) -> None:
        """Store ``summary`` for the record file ``path`` of ``key`` at signature ``sig``."""
        try:
            payload = _ENCODE(summary)
        except (TypeError, ValueError, RecursionError):
            return  # not JSON: no summary, lookups read the record
        value = f"{_checksum(key, payload)} {payload}"
        now = time.monotonic()
        with self._lock:
            shard = self._shards.get(key[:2])
            if shard is not None:
                shard[os.fsencode(path)] = f"{sig_text(sig)} {value}"
            if not self._pending:
                self._since = now
            self._pending.append((path, _KIND, sig, value))
            if len(self._pending) > self.MAX_PENDING + self.BATCH:  # a long busy spell
                del self._pending[: -self.MAX_PENDING]
            due = len(self._pending) >= self._batch or now - self._since > self.FLUSH_SECONDS
        if due:
            self.flush()

    def flush(self, *, patient: bool = False) -> None:
        """Write the rows waiting in this process (``patient``: even if the database was
        busy a moment ago)."""
        if not patient and self._memo.pausing():
            return  # the rows wait where they are
        with self._lock:
            rows, self._pending = self._pending, []
            generation = self._generation
        if not rows:
            return
        written = self._memo.put_many(rows, patient=patient)
        with self._lock:
            if written or generation != self._generation:
                self._batch = self.BATCH
                return
            # the database is busy: try again a batch or FLUSH_SECONDS later (put() keeps
            # the list bounded)
            rows.extend(self._pending)
            self._pending = rows
            self._since = time.monotonic()
            self._batch = len(self._pending) + self.BATCH

    def forget(self) -> None:
        """Drop what this process read and has not written (the store was cleared)."""
        with self._lock:
            self._shards.clear()
            self._pending = []
            self._batch = self.BATCH
            self._generation += 1

    def _bad(self, key: str, why: str) -> None:
        warnings.warn(f"hit index entry of record {key!r} ignored ({why}); the record file "
                      "is read instead", StoreWarning, stacklevel=4)


_LIVE: weakref.WeakSet[HitIndex] = weakref.WeakSet()


@atexit.register
def _flush_all() -> None:
    for index in list(_LIVE):
        index.flush(patient=True)


def _after_fork() -> None:
    for index in list(_LIVE):  # the parent writes its own rows
        index._lock = threading.Lock()
        index._pending = []
        index._batch = index.BATCH


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)


def index_memo(root: Path, readonly: bool) -> PersistentStatMemo:
    """The sqlite memo of a store (none for a read-only store, which must not be written)."""
    if readonly:
        return PersistentStatMemo(lambda: None)
    return PersistentStatMemo(partial(_locate, root), on_error=_disabled_warning)


def _locate(root: Path) -> str:
    """The database path, its folder made first; in a group-shared store the database is
    created group-writable (sqlite gives its -wal and -shm files the same mode)."""
    db = root / INDEX_DB
    make_dirs(db.parent)
    if is_group_shared(db.parent) and not db.exists():
        try:
            fd = os.open(db, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o664)
        except OSError:
            pass
        else:
            share_fd(fd, db.parent)
            os.close(fd)
    return str(db)


def _disabled_warning(db: str, error: BaseException) -> None:
    if is_busy(error):
        warnings.warn(f"the store index {db} has been busy with other processes for a "
                      f"minute ({error}); results are read from the record files meanwhile "
                      "(correct, only slower)", StoreWarning, stacklevel=5)
        return
    text = str(error).lower()
    if isinstance(error, PermissionError) or "readonly" in text or "unable to open" in text:
        return  # a store this user may read but not write: no index, nothing wrong
    warnings.warn(f"the store index {db} cannot be used ({type(error).__name__}: {error}); "
                  "results are read from the record files (correct, only slower). Remove "
                  "the file to rebuild it.", StoreWarning, stacklevel=5)
