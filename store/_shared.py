"""Group-shared stores: one store folder written by several users of one group.

A store is group-shared when its root folder has the setgid bit (``chmod 2775``, which
``LocalStore(root, group=...)`` sets). Then every folder the store creates below it is
made setgid and group-writable too, and every file it writes is group-readable and
-writable, whatever each user's umask: the files belong to the group (setgid), and any
member may add, replace, quarantine or remove them. Without this, a second user gets
``PermissionError`` on ``tmp/`` or on a shard folder the first user created under
umask 022.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

__all__ = ["ENV_GROUP", "is_group_shared", "make_dirs", "set_tree_modes", "share_with_group"]

ENV_GROUP = "HITHER_STORE_GROUP"
DIR_MODE = 0o2775
FILE_MODE = 0o664


def is_group_shared(folder: str | os.PathLike[str]) -> bool:
    """Whether ``folder`` is a group-shared (setgid) folder."""
    try:
        return bool(os.stat(folder).st_mode & stat.S_ISGID)
    except OSError:
        return False


def make_dirs(path: Path) -> None:
    """``mkdir -p path``; each folder created under a setgid folder gets mode 2775 (umask
    would otherwise take the group's write permission away)."""
    if path.is_dir():
        return
    missing = []
    p = path
    while not p.is_dir():
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    for d in reversed(missing):
        try:
            d.mkdir()
        except FileExistsError:
            continue
        if is_group_shared(d.parent):
            with contextlib.suppress(OSError):
                os.chmod(d, DIR_MODE)


def set_tree_modes(tree: str | os.PathLike[str], parent: str | os.PathLike[str]) -> None:
    """Give a finished folder of files that never change (a code bundle, the worker's
    files), about to be renamed into ``parent``, the modes of its store: folders 0755 and
    files 0644, or 2775 and 0664 when ``parent`` is group-shared (so that any member of
    the group may remove it)."""
    shared = is_group_shared(parent)
    dir_mode, file_mode = (DIR_MODE, FILE_MODE) if shared else (0o755, 0o644)
    for d, _dirs, names in os.walk(tree):
        os.chmod(d, dir_mode)
        for n in names:
            os.chmod(os.path.join(d, n), file_mode)


def share_fd(fd: int, folder: str | os.PathLike[str]) -> None:
    """Make a new file in ``folder`` group-readable and -writable when the folder is
    group-shared."""
    if is_group_shared(folder):
        with contextlib.suppress(OSError):
            os.fchmod(fd, FILE_MODE)


def share_with_group(root: Path, group: str, subdirs: tuple[Path, ...]) -> None:
    """Make ``root`` (created if missing) and ``subdirs`` group-shared folders of ``group``.

    Folders of other users are left as they are (only their owner may change them); they
    must already be shared then.

    Raises:
        ValueError: no such group.
        PermissionError: this user is not a member of ``group``.
    """
    import grp

    try:
        gid = grp.getgrnam(group).gr_gid
    except KeyError:
        raise ValueError(f"no such group {group!r} (for a group-shared store)") from None
    make_dirs(root)
    for d in (root, *subdirs):
        make_dirs(d)
        st = os.stat(d)
        if st.st_uid != os.geteuid():
            continue
        if st.st_gid != gid:
            try:
                os.chown(d, -1, gid)
            except PermissionError:
                raise PermissionError(f"cannot give {d} to group {group!r}: you are not a "
                                      "member of it") from None
        if stat.S_IMODE(st.st_mode) & DIR_MODE != DIR_MODE:
            os.chmod(d, stat.S_IMODE(st.st_mode) | DIR_MODE)
