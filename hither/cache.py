"""``hi.JobCache``: job records by key, over a content-addressed store and its remotes."""

from __future__ import annotations

import atexit
import os
import shutil
import stat
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hither_store import LocalStore, RemoteStoreWarning, Summary, default_store_path

from .errors import CacheError

if TYPE_CHECKING:
    from hither_store import PullReport, PushReport, Remote

TEMPDIR_PREFIX = "hither_job_cache"


class JobCache:
    """Where job results are memoized: a :class:`hither_store.LocalStore`, optionally in
    front of remote stores.

    ``JobCache()`` uses ``$HITHER_STORE`` or the user cache directory (e.g.
    ``~/.cache/hither/store``); ``JobCache(path=...)`` a directory of your choice (a
    shared disk works: writes are atomic and reads verified); ``JobCache(use_tempdir=True)``
    a private folder of this user in the system temp dir (see :func:`private_tempdir`).

    ``readonly=True`` reads results but never writes anything to the store: no records,
    blobs, code bundles, worker files or work folders (values cross to containers through a
    private temp store instead, see :mod:`hither.exchange`), and damaged entries are left
    in place. A store on a read-only file system (or one you may not write to) is used the
    same way, with one warning.

    ``remotes`` are remote stores read after the local one, in order: urls
    (``s3://bucket/prefix``, ``gs://...``, ``https://...``) or :class:`hither.Remote`
    objects with options (push policy, trusted keys, read-only). A remote hit is verified
    (signature by a trusted key, every byte against its hash) and copied into the local
    store before use. Default: the urls in ``$HITHER_REMOTES``; ``remotes=[]`` for none.
    With ``$HITHER_SIGNING_KEY`` set, every record written is signed.

    ``shared_group="lab"`` (or ``$HITHER_STORE_GROUP``) shares the store folder with the
    users of a group, e.g. on NFS: its folders become setgid and group-writable and its
    files group-writable, whatever each user's umask. A store folder that is setgid
    already (``chmod 2775``) is shared that way without asking.

    Whether failures are stored and reused is set per block with ``hi.Config(
    cache_failing=..., rerun_failing=..., force_run=...)``.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None, *,
                 use_tempdir: bool | None = None, readonly: bool = False,
                 store: LocalStore | None = None,
                 remotes: Iterable[str | Remote] | None = None,
                 shared_group: str | None = None) -> None:
        given = sum(x is not None for x in (path, store)) + bool(use_tempdir)
        if given > 1:
            raise ValueError("give at most one of path=, use_tempdir=True and store=")
        if store is None:
            if path is not None:
                root = Path(os.fspath(path))
            elif use_tempdir:
                root = private_tempdir()
            else:
                root = default_store_path()
            why = None if readonly else _unwritable(root)
            if why is not None:
                _warn_read_only(root, why)
            try:
                store = LocalStore(root, readonly=readonly or why is not None,
                                   group=shared_group)
            except (OSError, ValueError) as e:
                raise CacheError(f"cannot open the job cache at {root}: {e}") from e
        elif not store.readonly:
            why = None if readonly else _unwritable(store.root)
            if why is not None:
                _warn_read_only(store.root, why)
            if readonly or why is not None:
                store = LocalStore(store.root, fsync=store.fsync, readonly=True)
        #: True when nothing may be written: asked for, or the store cannot be written
        self.readonly = bool(store.readonly)
        self.store = store
        self._stack: Any = None
        remotes = None if remotes is None else list(remotes)
        if remotes or (remotes is None and os.environ.get("HITHER_REMOTES", "").strip()) \
                or os.environ.get("HITHER_SIGNING_KEY"):
            self._set_up_sharing(store, remotes)

    def _set_up_sharing(self, store: LocalStore, remotes: list[str | Remote] | None) -> None:
        from .sharing import make_stack, resolve_remotes, signing_key_from_env

        remote_list = resolve_remotes(remotes)
        signer = signing_key_from_env()
        if remote_list or signer is not None:
            self._stack = make_stack(store, remote_list, signer)
            if remote_list and store.readonly:
                warnings.warn(f"the store at {store.root} is read-only: results found on "
                              "remote stores could not be copied into it, so remotes are "
                              "not read", RemoteStoreWarning, stacklevel=3)
            for r in remote_list:
                if r.require_signature and not self._stack.trusted_for(r):
                    warnings.warn(f"remote store {r.url} accepts only records signed by a "
                                  "trusted key, and no keys are trusted "
                                  "($HITHER_TRUSTED_KEYS): nothing will be read from it",
                                  RemoteStoreWarning, stacklevel=3)

    def writable(self) -> bool:
        """Whether results are stored (not read-only)."""
        return not self.readonly

    @property
    def path(self) -> Path:
        """The store's directory."""
        return self.store.root

    @property
    def remotes(self) -> list[Remote]:
        """The remote stores behind the local one, in the order they are read."""
        return list(self._stack.remotes) if self._stack is not None else []

    def get_record(self, key: str, *,
                   summarize: Callable[[dict[str, Any]], Summary | None] | None = None
                   ) -> dict[str, Any] | None:
        """The record stored under ``key`` (None when absent or unreadable); a record
        found on a remote is verified and copied into the local store first.
        ``summarize`` feeds the local store's hit index (see :meth:`get_hit`)."""
        rec = self.store.get_record(key, summarize=summarize)
        if rec is None and self._stack is not None and self._stack.remotes:
            rec = self._stack.fetch(key)
        return rec

    def get_hit(self, key: str) -> Summary | None:
        """The summary of the local record of ``key`` from the store's hit index (None:
        read the record with :meth:`get_record`)."""
        return self.store.get_hit(key)

    def put_record(self, key: str, record: dict[str, Any], *,
                   summary: Summary | None = None) -> None:
        """Store ``record`` under ``key`` (nothing when read-only); signed when a signing
        key is set, and pushed to the remotes whose policy is ``"on_finish"``. ``summary``
        goes to the hit index when the record is stored here directly."""
        if self.readonly:
            return
        if self._stack is None:
            self.store.put_record(key, record, summary=summary)
        else:
            self._stack.put_record(key, record)

    def push(self, keys: Iterable[str], to: str | Remote | None = None, *,
             lineage: bool = True) -> PushReport:
        """Push results with their closure (lineage, blobs, code bundles) to ``to`` (a url
        or Remote; default: every writable remote whose policy is not ``"never"``, the
        report of the last one is returned)."""
        from hither_store import Remote

        stack = self._stack_for_transfer()
        targets = [Remote.of(to)] if to is not None else [
            r for r in stack.remotes if r.push != "never" and not r.read_only]
        if not targets:
            raise CacheError("no remote to push to: pass to=... or configure remotes")
        keys = list(keys)
        report = None
        for target in targets:
            report = stack.push(keys, target, lineage=lineage)
        assert report is not None
        return report

    def pull(self, keys: Iterable[str], source: str | Remote | None = None, *,
             lineage: bool = True) -> PullReport:
        """Copy results with their lineage from ``source`` (default: the first remote)
        into the local store, verified as a cache lookup is."""
        from hither_store import Remote

        stack = self._stack_for_transfer()
        if source is None:
            if not stack.remotes:
                raise CacheError("no remote to pull from: pass source=... or configure remotes")
            source = stack.remotes[0]
        return stack.pull(keys, Remote.of(source), lineage=lineage)

    def _stack_for_transfer(self) -> Any:
        if self._stack is None:
            from .sharing import make_stack, signing_key_from_env

            self._stack = make_stack(self.store, [], signing_key_from_env())
        return self._stack

    def __repr__(self) -> str:
        ro = ", readonly=True" if self.readonly else ""
        rem = f", remotes={[r.url for r in self.remotes]!r}" if self.remotes else ""
        return f"JobCache(path={str(self.path)!r}{ro}{rem})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, JobCache) and other.store == self.store \
            and other.readonly == self.readonly and other.remotes == self.remotes

    def __hash__(self) -> int:
        return hash((JobCache, self.store, self.readonly))


_warned: set[str] = set()


def _unwritable(root: Path) -> str | None:
    """Why an existing store folder cannot be written (None: it can, or does not exist)."""
    try:
        vfs = os.statvfs(root) if hasattr(os, "statvfs") else None
    except OSError:
        return None
    if vfs is not None and vfs.f_flag & getattr(os, "ST_RDONLY", 1):
        return "is on a read-only file system"
    for d in (root, root / "records", root / "blobs", root / "tmp"):
        if d.is_dir() and not os.access(d, os.W_OK):
            return f"is not writable by you ({d})"
    return None


def _warn_read_only(root: Path, why: str) -> None:
    key = str(root)
    if key in _warned:
        return
    _warned.add(key)
    warnings.warn(f"the job cache at {root} {why}: cached results are used, but new results "
                  "are not stored. Pass JobCache(..., readonly=True) to say this is intended, "
                  "or choose a writable folder.", RuntimeWarning, stacklevel=3)


def private_tempdir() -> Path:
    """The folder of ``JobCache(use_tempdir=True)``: ``<temp>/hither_job_cache_<uid>``,
    created with mode 0700, and used only while it is a real directory (not a link) owned
    by this user that nobody else can write to.

    The name is predictable, so another user may have created it first to plant results:
    then a fresh private folder is used for this process instead, with a warning.
    """
    import tempfile

    base = Path(tempfile.gettempdir())
    if not hasattr(os, "geteuid"):  # Windows: the temp folder is per user already
        return base / TEMPDIR_PREFIX
    uid = os.geteuid()
    root = base / f"{TEMPDIR_PREFIX}_{uid}"
    try:
        os.mkdir(root, 0o700)
    except FileExistsError:
        pass
    except OSError as e:
        raise CacheError(f"cannot create the job cache folder {root}: {e}") from e
    problem = _unsafe_dir(root, uid)
    if problem is None:
        return root
    fresh = Path(tempfile.mkdtemp(prefix=f"{TEMPDIR_PREFIX}_{uid}_", dir=base))
    atexit.register(shutil.rmtree, fresh, True)
    warnings.warn(f"not using the job cache folder {root}: {problem}, so another user may "
                  f"have put results there. Using the empty private folder {fresh} "
                  f"instead; remove {root} (or ask its owner to) to get the shared "
                  "temp cache back, or pass JobCache(path=...)", RuntimeWarning, stacklevel=3)
    return fresh


def _unsafe_dir(path: Path, uid: int) -> str | None:
    """Why ``path`` is not a private directory of ``uid`` (None when it is one: a folder
    of ours that others could read but never write is made private)."""
    try:
        st = os.lstat(path)
    except OSError as e:
        return f"it cannot be inspected ({e})"
    if stat.S_ISLNK(st.st_mode):
        return "it is a symbolic link"
    if not stat.S_ISDIR(st.st_mode):
        return "it is not a directory"
    if st.st_uid != uid:
        return f"it belongs to uid {st.st_uid}, not to you (uid {uid})"
    if st.st_mode & 0o022:
        return f"others can write to it (mode {stat.S_IMODE(st.st_mode):04o})"
    if st.st_mode & 0o077:
        try:
            os.chmod(path, 0o700)
        except OSError as e:
            return f"it cannot be made private ({e})"
    return None
