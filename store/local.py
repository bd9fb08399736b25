"""LocalStore: a content-addressed store of blobs and records in a plain directory."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import stat
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from ._atomic import (
    READ_ONLY,
    TempFile,
    fsync_path,
    move_into,
    publish,
    quarantine_file,
    remove_quietly,
    write_new,
)
from ._hitindex import HitIndex, Summary, index_memo
from ._maintenance import clear_store, collect_garbage, store_info
from ._paths import _RECORD_SUFFIX, Layout, blob_uri, check_key, owned_name, parse_blob_uri
from ._records import BadRecord, decode_record, encode_record
from ._shared import ENV_GROUP, is_group_shared, make_dirs, share_with_group
from ._statmemo import PersistentStatMemo, Signature, settled
from ._verify import VERIFIED, hash_stream, signature
from .errors import BlobNotFoundError, CorruptBlobError, StoreError, StoreWarning

__all__ = ["LocalStore"]


def _byte_view(data: bytes | bytearray | memoryview) -> memoryview:
    view = memoryview(data)
    if not view.c_contiguous:
        raise ValueError("put_bytes needs a C-contiguous buffer")
    if view.ndim != 1 or view.format != "B":
        view = view.cast("B")
    return view


class LocalStore:
    """A content-addressed store in a local (or network-mounted) directory.

    Blobs are immutable byte strings named by their sha256 (``sha256://<hex>``); records
    are small JSON dicts under caller-chosen keys. All writes are atomic (temp file, then
    rename), so any number of threads and processes, on one host or several sharing an
    NFS mount, may write the same blob or record at once. All blob reads verify the
    content against its name, and records carry their own checksum.

    Instances compare equal when they share a root, and pickle as just their root, so a
    worker process can reopen the same store.

    Args:
        root: the store directory; it and its subdirectories are created if missing
            (unless ``readonly``).
        readonly: never write, create, touch, move or delete anything: writing methods
            raise :class:`StoreError`, and damaged files are reported but left in place.
        group: share the store with the users of this group (default:
            ``$HITHER_STORE_GROUP``): its folders become setgid and group-writable, and
            every file it writes group-writable, whatever the umask (see
            :mod:`hither_store._shared`). A store whose folder is setgid is shared so
            anyway.
        fsync: fsync every file before publishing it (default: ``$HITHER_STORE_FSYNC``,
            else off). Without it a power loss may lose the newest writes, which then
            read as damaged and are ignored (a cache miss), never as wrong content;
            with it each write costs a disk flush (about 0.6 ms here).
    """

    def __init__(self, root: str | os.PathLike[str], *, fsync: bool | None = None,
                 readonly: bool = False, group: str | None = None) -> None:
        if fsync is None:
            fsync = os.environ.get("HITHER_STORE_FSYNC", "").lower() in ("1", "true", "yes")
        self.fsync = fsync
        self.readonly = bool(readonly)
        self._layout = Layout(Path(os.fspath(root)).expanduser().resolve())
        group = group or os.environ.get(ENV_GROUP) or None
        if not self.readonly:
            if group:
                share_with_group(self._layout.root, group, self._layout.subdirs())
            self._layout.create()
        self._records_root = str(self._layout.records_dir)
        self._tmp_root = str(self._layout.tmp_dir)
        self._shared, self._shared_at = False, -2.0
        self._memo, self._index = _index_of(self._layout.root, self.readonly)

    def _writing(self, what: str) -> None:
        if self.readonly:
            raise StoreError(f"cannot {what}: the store at {self.root} is opened read-only")

    @property
    def root(self) -> Path:
        """The absolute store directory."""
        return self._layout.root

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.root)!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, LocalStore):
            return NotImplemented
        return self.root == other.root

    def __hash__(self) -> int:
        return hash((LocalStore, self.root))

    def __reduce__(self):
        return (_reopen, (str(self.root), self.fsync, self.readonly))

    # ------------------------------------------------------------------ blobs: writing

    def put_bytes(self, data: bytes | bytearray | memoryview) -> str:
        """Store a byte string; return its uri ``sha256://<hex>``."""
        self._writing("store a blob")
        view = _byte_view(data)
        hexdigest = hashlib.sha256(view).hexdigest()
        if self._refresh(hexdigest, view.nbytes):
            return blob_uri(hexdigest)
        with TempFile(self._layout.tmp_dir, "blob", self.fsync) as tmp:
            tmp.file.write(view)
            tmp.finish()
        return self._place_blob(tmp.path, hexdigest, view.nbytes)

    def put_file(self, path: str | os.PathLike[str], *, move: bool = False) -> str:
        """Store the content of a file; return its uri.

        The file is streamed (never loaded whole into memory). With ``move=True`` the
        file is renamed into the store when it is a regular, singly-linked file on the
        same filesystem, and otherwise copied and then deleted; either way it is gone
        from ``path`` afterwards.
        """
        self._writing("store a file")
        src = Path(os.fspath(path))
        if move:
            moved = self._move_in(src)
            if moved is not None:
                return moved
        with open(src, "rb", buffering=0) as f:
            uri = self.put_stream(f)
        if move:
            os.unlink(src)
        return uri

    def put_stream(self, f: BinaryIO) -> str:
        """Store everything readable from the binary file ``f`` (streamed, copied into a
        file of the store's own, so whoever else holds ``f`` cannot alter the blob);
        return its uri."""
        self._writing("store a blob")
        with TempFile(self._layout.tmp_dir, "blob", self.fsync) as tmp:
            hexdigest, size = hash_stream(f, tmp.file.write)
            tmp.finish()
        return self._place_blob(tmp.path, hexdigest, size)

    def _move_in(self, src: Path) -> str | None:
        st = os.lstat(src)
        # A symlink or a file with other hard links must be copied: renaming it would make
        # the blob a link, or leave the user a second name through which to alter it.
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
            return None
        moved = move_into(src, self._layout.tmp_dir, "blob")
        if moved is None:
            return None
        try:
            with open(moved, "rb", buffering=0) as f:
                hexdigest, size = hash_stream(f)
            with contextlib.suppress(OSError):  # Windows cannot fsync a read-only handle
                if self.fsync:
                    fsync_path(moved)
        except BaseException:
            with contextlib.suppress(OSError):
                os.rename(moved, src)
            raise
        return self._place_blob(moved, hexdigest, size)

    def put_writer(self, write: Callable[[BinaryIO], None]) -> str:
        """Store whatever ``write`` writes into the binary file it is given; return its uri.

        The file is a real file opened ``'wb'`` (so e.g. ``numpy.save`` can write arrays
        straight into it); the content is hashed after ``write`` returns. If ``write``
        raises, nothing is stored and the exception propagates.
        """
        self._writing("store a blob")
        with TempFile(self._layout.tmp_dir, "blob", self.fsync) as tmp:
            try:
                write(tmp.file)
                tmp.finish()
            except OSError as e:
                raise _with_errno(e, tmp.file, self.root) from e
            with open(tmp.path, "rb", buffering=0) as f:
                hexdigest, size = hash_stream(f)
        return self._place_blob(tmp.path, hexdigest, size)

    def refresh_blob(self, uri: str) -> bool:
        """Whether the blob ``uri`` is stored; if so, it counts as just stored for gc.

        Call this, not :meth:`has_blob`, before writing a record that references a blob
        you did not store yourself just now: gc keeps a blob refreshed within its grace
        period (see :meth:`gc`).
        """
        self._writing("refresh a blob")
        return self._refresh(parse_blob_uri(uri), None)

    def _refresh(self, hexdigest: str, size: int | None) -> bool:
        """Whether the blob is stored (with the right size); if so its modification time
        is set to now, so that gc, which only deletes blobs older than its grace period,
        keeps it for the record about to reference it (see ``_maintenance``).

        False when it is absent, damaged, removed by gc as we looked, or cannot be
        refreshed (another user's file): the caller then stores its own copy.
        """
        path = self._layout.blob_path(hexdigest)
        try:
            before = os.stat(path)
            if size is not None and before.st_size != size:
                return False
            os.utime(path)
            after = os.stat(path)
        except (FileNotFoundError, PermissionError):
            return False
        if (after.st_dev, after.st_ino, after.st_size) != \
                (before.st_dev, before.st_ino, before.st_size):
            return False
        if VERIFIED.is_verified(str(path), signature(before)):
            # only the times changed (by us): what was verified still holds. (Blobs are
            # 0444: only their owner could rewrite one between the two stats.)
            VERIFIED.remember(str(path), signature(after))
        return True

    def _place_blob(self, tmp_path: Path, hexdigest: str, size: int) -> str:
        """Move a complete, fsynced temp file into place as the blob ``hexdigest``."""
        uri = blob_uri(hexdigest)
        target = self._layout.blob_path(hexdigest)
        try:
            with contextlib.suppress(OSError):  # a moved-in file may belong to another user
                os.chmod(tmp_path, READ_ONLY)
            # Same name means same content: an existing copy of the right size is kept, a
            # wrong-sized one is damaged and gets replaced.
            if self._refresh(hexdigest, size):
                remove_quietly(tmp_path)
                return uri
            ours = os.stat(tmp_path)
            publish(tmp_path, target)
        except BaseException:
            remove_quietly(tmp_path)
            raise
        with contextlib.suppress(OSError):
            st = os.stat(target)
            if (st.st_dev, st.st_ino) == (ours.st_dev, ours.st_ino):
                VERIFIED.remember(str(target), signature(st))
                if size >= _PERSIST_VERIFIED:  # we wrote these bytes: no need to hash again
                    self._memo.put(str(target), _VERIFIED_KIND, signature(st), hexdigest)
        return uri

    # ------------------------------------------------------------------ blobs: reading

    def has_blob(self, uri: str) -> bool:
        """Whether a blob file exists for ``uri`` (cheap: its content is not verified)."""
        return self._layout.blob_path(parse_blob_uri(uri)).is_file()

    def get_bytes(self, uri: str) -> bytes:
        """Return the verified content of a blob.

        Raises:
            BlobNotFoundError: no such blob.
            CorruptBlobError: the content does not match the uri (the file is quarantined).
        """
        hexdigest = parse_blob_uri(uri)
        path = self._layout.blob_path(hexdigest)
        started = time.time_ns()
        try:
            f = open(path, "rb")
        except FileNotFoundError:
            raise BlobNotFoundError(uri, path) from None
        with f:
            st = os.fstat(f.fileno())
            data = f.read()
        sig = signature(st)
        complete = len(data) == st.st_size
        if complete and (VERIFIED.is_verified(str(path), sig)
                         or self._verified_before(path, sig, hexdigest)):
            return data
        actual = hashlib.sha256(data).hexdigest()
        if actual != hexdigest:
            self._corrupt(uri, path, st, actual)
        if complete:
            self._remember_verified(path, sig, hexdigest, started)
        return data

    def blob_path(self, uri: str) -> Path:
        """Return the path of a blob after verifying its content.

        Meant for readers that need a file, e.g. ``numpy.load(path, mmap_mode="r")``.
        A blob this process verified before and that is unchanged on disk is not hashed
        again. Do not modify the file.

        Raises:
            BlobNotFoundError: no such blob.
            CorruptBlobError: the content does not match the uri (the file is quarantined).
        """
        hexdigest = parse_blob_uri(uri)
        path = self._layout.blob_path(hexdigest)
        started = time.time_ns()
        try:
            f = open(path, "rb", buffering=0)
        except FileNotFoundError:
            raise BlobNotFoundError(uri, path) from None
        with f:
            before = os.fstat(f.fileno())
            sig = signature(before)
            if VERIFIED.is_verified(str(path), sig) or self._verified_before(path, sig,
                                                                            hexdigest):
                return path
            actual, _ = hash_stream(f)
            after = signature(os.fstat(f.fileno()))
        if actual != hexdigest:
            self._corrupt(uri, path, before, actual)
        if after == sig:
            self._remember_verified(path, sig, hexdigest, started)
        return path

    def _verified_before(self, path: Path, sig: Signature, hexdigest: str) -> bool:
        """Whether a process verified this large blob file as it is now (the index)."""
        if sig[2] < _PERSIST_VERIFIED or \
                self._memo.get(str(path), _VERIFIED_KIND, sig) != hexdigest:
            return False
        VERIFIED.remember(str(path), sig, started_ns=None)
        return True

    def _remember_verified(self, path: Path, sig: Signature, hexdigest: str,
                           started: int) -> None:
        if VERIFIED.put(str(path), sig, True, started_ns=started) and \
                sig[2] >= _PERSIST_VERIFIED and not self.readonly:
            self._memo.put(str(path), _VERIFIED_KIND, sig, hexdigest)

    def blob_size(self, uri: str) -> int:
        """Size in bytes of a stored blob (from the file system; not verified).

        Raises:
            BlobNotFoundError: no such blob.
        """
        path = self._layout.blob_path(parse_blob_uri(uri))
        try:
            return os.stat(path).st_size
        except FileNotFoundError:
            raise BlobNotFoundError(uri, path) from None

    def delete_blob(self, uri: str) -> bool:
        """Delete a blob; return whether it existed."""
        self._writing("delete a blob")
        path = self._layout.blob_path(parse_blob_uri(uri))
        VERIFIED.forget(str(path))
        return remove_quietly(path)

    def _corrupt(self, uri: str, path: Path, st: os.stat_result, actual: str) -> None:
        VERIFIED.forget(str(path))
        moved = None if self.readonly else \
            quarantine_file(self._layout.quarantine_dir, path, st, "blob")
        raise CorruptBlobError(uri, path, actual, moved)

    # ------------------------------------------------------------------ records

    def record_path(self, key: str) -> Path:
        """Path of the file of record ``key`` (which may not exist).

        Raises:
            ValueError: ``key`` is not 8 to 128 characters from ``[0-9a-zA-Z_-]``.
        """
        return self._layout.record_path(check_key(key))

    def put_record(self, key: str, record: dict[str, Any], *,
                   summary: Summary | None = None) -> None:
        """Store a JSON-serializable dict under ``key``, replacing any previous record.

        When several writers store the same key at once, the last rename wins and every
        reader sees one complete record. ``summary`` (the part of the record a lookup
        needs, JSON-serializable) goes to the hit index, where :meth:`get_hit` finds it
        while this record file stays in place unchanged.

        Raises:
            ValueError: invalid key, or a record that would not read back identically.
            TypeError: ``record`` is not a dict or is not JSON-serializable.
        """
        self._writing("store a record")
        check_key(key)
        # a plain string path, as in get_record: this runs for every job recorded
        path = f"{self._records_root}/{key[:2]}/{key}{_RECORD_SUFFIX}"
        data = encode_record(key, record)
        st = write_new(self._tmp_root, "record", data, path, fsync=self.fsync,
                       shared=self._tmp_shared(), want_stat=summary is not None)
        if st is not None and summary is not None:  # not replaced by another writer yet
            self._index.put(key, path, signature(st), summary)

    def _tmp_shared(self) -> bool:
        """Whether ``tmp/`` is group-shared, looked up at most once a second (a store
        may be made group-shared while this process writes to it)."""
        now = time.monotonic()
        if now - self._shared_at > 1.0:
            self._shared = is_group_shared(self._tmp_root)
            self._shared_at = now
        return self._shared

    def get_hit(self, key: str) -> Summary | None:
        """The summary stored with the record of ``key`` (see :meth:`put_record`), while
        that record file is unchanged; None otherwise (then read :meth:`get_record`).

        A damaged or edited index entry is None with a :class:`StoreWarning`.
        """
        check_key(key)
        return self._index.get(key, f"{self._records_root}/{key[:2]}/{key}{_RECORD_SUFFIX}")

    def get_record(self, key: str, *,
                   summarize: Callable[[dict[str, Any]], Summary | None] | None = None
                   ) -> dict[str, Any] | None:
        """Return the record stored under ``key``, or None if there is none.

        A damaged record file (truncated, not JSON, checksum mismatch) is never returned:
        it is moved to quarantine, a :class:`StoreWarning` is issued, and None returned.
        ``summarize(record)``, when given, makes the summary that goes to the hit index
        (see :meth:`put_record`; None: nothing is indexed).
        """
        check_key(key)
        # a plain string path: this is the hot path of every cache lookup
        path = f"{self._records_root}/{key[:2]}/{key}{_RECORD_SUFFIX}"
        return self._read_record(path, key, summarize)

    def _read_record(self, path: Path | str, key: str,
                     summarize: Callable[[dict[str, Any]], Summary | None] | None = None
                     ) -> dict[str, Any] | None:
        # A second attempt covers a damaged file being replaced by a writer as we look.
        for _ in range(2):
            started = time.time_ns()
            try:
                f = open(path, "rb")
            except FileNotFoundError:
                return None
            with f:
                st = os.fstat(f.fileno())
                raw = f.read()
            try:
                body = decode_record(key, raw)
            except BadRecord as e:
                reason = str(e)
            else:
                sig = signature(st)
                if summarize is not None and not self.readonly and settled(sig, started):
                    summary = summarize(body)
                    if summary is not None:
                        self._index.put(key, str(path), sig, summary)
                return body
            if self.readonly:
                moved, fate = None, "left in place (the store is read-only)"
            else:
                moved = quarantine_file(self._layout.quarantine_dir, Path(path), st, "record")
                fate = f"moved to {moved}" if moved is not None else "it was not moved aside"
            warnings.warn(
                f"corrupt record {key!r} at {path} ignored: {reason}; {fate}",
                StoreWarning,
                stacklevel=3,
            )
            if moved is not None or self.readonly:
                return None
        return None

    def quarantine_record(self, key: str) -> Path | None:
        """Move the record file of ``key`` to quarantine (for a record its reader found
        unusable, e.g. a result it cannot decode); return where it went, or None if there
        was none."""
        self._writing("quarantine a record")
        path = self.record_path(key)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return None
        return quarantine_file(self._layout.quarantine_dir, path, st, "record")

    def has_record(self, key: str) -> bool:
        """Whether a record file exists for ``key`` (cheap: its content is not verified)."""
        return self.record_path(key).is_file()

    def delete_record(self, key: str) -> bool:
        """Delete the record of ``key``; return whether it existed."""
        self._writing("delete a record")
        return remove_quietly(self.record_path(key))

    def iter_records(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """Yield ``(key, record)`` for every valid record, in key order.

        Damaged records are skipped (and quarantined with a warning, as in
        :meth:`get_record`); records deleted while iterating are skipped.
        """
        for key, entry in self._layout.iter_record_files():
            body = self._read_record(Path(entry.path), key)
            if body is not None:
                yield key, body

    def record_keys(self, prefix: str = "") -> list[str]:
        """Keys of the record files starting with ``prefix`` (sorted; not validated)."""
        if len(prefix) >= 2:
            shard = self._layout.records_dir / prefix[:2]
            try:
                names = [e.name for e in os.scandir(shard) if e.name.endswith(_RECORD_SUFFIX)]
            except (FileNotFoundError, NotADirectoryError):
                return []
            keys = (n[: -len(_RECORD_SUFFIX)] for n in names)
            return sorted(k for k in keys if k.startswith(prefix))
        return [k for k, _ in self._layout.iter_record_files() if k.startswith(prefix)]

    def iter_blob_files(self) -> Iterator[tuple[str, os.DirEntry[str]]]:
        """``(hexdigest, directory entry)`` of every blob file (not verified)."""
        return self._layout.iter_blob_files()

    @property
    def tmp_dir(self) -> Path:
        """The folder of in-flight writes."""
        return self._layout.tmp_dir

    # ------------------------------------------------------------------ maintenance

    def info(self) -> dict[str, Any]:
        """Return counts and sizes: ``root``, ``blobs``, ``blob_bytes``, ``records``,
        ``record_bytes``, ``tmp_files``, ``tmp_bytes``, ``work_dirs``, ``work_dir_bytes``,
        ``abandoned_dirs``, ``abandoned_bytes`` (work folders of processes that are gone),
        ``quarantined``, ``quarantine_bytes``."""
        return store_info(self._layout)

    def gc(self, keep: set[str] | None = None, *, older_than: float = 3600,
           dry_run: bool = False) -> dict[str, int]:
        """Collect garbage; return counts: ``tmp_removed``, ``tmp_bytes`` (temp files),
        ``dirs_removed``, ``dir_bytes`` (abandoned work folders), ``blobs_removed``,
        ``blob_bytes``, ``blobs_recent`` (unreferenced but kept: younger than
        ``older_than``), ``blobs_restored`` (refreshed by a writer while gc ran) and
        ``bytes_freed``.

        Temp files not modified for ``older_than`` seconds are left-overs of killed
        writers and are removed (a live writer keeps its temp file fresh). Work folders
        (:meth:`work_dir`) are removed once their owner process is gone. When ``keep`` (the
        uris of every blob that records reference, read *before* this call) is given, the
        blobs not in it and older than ``older_than`` are deleted: safe while other
        processes write, because a writer refreshes a blob it stores again, and gc puts
        back a blob refreshed while it ran. ``older_than=0`` removes every temp file and
        unreferenced blob: use it only when nothing writes to the store. ``dry_run``
        counts without removing.

        Raises:
            ValueError: a malformed uri in ``keep``, or a negative ``older_than``.
        """
        if older_than < 0:
            raise ValueError(f"older_than must be >= 0, got {older_than!r}")
        if not dry_run:
            self._writing("collect garbage")
        keep_hex = None if keep is None else {parse_blob_uri(u) for u in keep}
        return collect_garbage(self._layout, keep_hex, older_than, dry_run)

    def work_dir(self, label: str) -> Path:
        """Create and return a private folder (mode 0700) under ``tmp/`` for this process,
        named ``<label>-<pid>@<host>-<random>``; gc removes it once the process is gone.
        The caller removes it when done."""
        self._writing("make a work folder")
        make_dirs(self._layout.tmp_dir)
        while True:
            path = self._layout.tmp_dir / owned_name(label)
            try:
                os.mkdir(path, 0o700)
                return path
            except FileExistsError:
                continue

    def clear(self) -> None:
        """Delete all blobs, records, temp and quarantined files, leaving an empty store.

        Only the store's own subdirectories are removed; other files under the root stay.
        """
        self._writing("clear the store")
        self._index.forget()
        self._memo.reset(wipe=True)
        clear_store(self._layout)


_INDEXES: dict[tuple[Path, bool], tuple[PersistentStatMemo, HitIndex]] = {}
_VERIFIED_KIND = "verified1"
_PERSIST_VERIFIED = 1 << 20  # smaller blobs hash faster than a database round trip


def _index_of(root: Path, readonly: bool) -> tuple[PersistentStatMemo, HitIndex]:
    """One index database (connection, rows read, rows to write) per store and process."""
    found = _INDEXES.get((root, readonly))
    if found is None:
        memo = index_memo(root, readonly)
        found = _INDEXES.setdefault((root, readonly), (memo, HitIndex(memo)))
    return found


def _reopen(root: str, fsync: bool, readonly: bool = False) -> LocalStore:
    return LocalStore(root, fsync=fsync, readonly=readonly)


def _with_errno(e: OSError, f: BinaryIO, root: Path) -> OSError:
    """``e``, or for a short write without an errno (what ``numpy`` raises when the disk
    is full: "N requested and M written") an ``ENOSPC`` error that says so."""
    if e.errno is not None or "requested and" not in str(e):
        return e
    try:
        st = os.fstatvfs(f.fileno())
        free = f", {st.f_bavail * st.f_frsize} bytes free"
    except (OSError, ValueError):
        free = ""
    return OSError(errno.ENOSPC, f"No space left on device while storing a blob in {root} "
                                 f"(a short write: {e}{free}); free space, or run "
                                 "`hither cache gc`")
