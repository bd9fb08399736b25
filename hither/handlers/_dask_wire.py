"""The messages and files a :class:`~hither.handlers.dask.DaskJobHandler` and its dask
workers exchange (see :mod:`hither.handlers._dask_worker`); no dask import here."""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from typing import Any

from ..launch import ConsoleLine, Outcome

#: keys of hither's dask tasks (checked before a key names a file)
KEY_RE = re.compile(r"hither-[A-Za-z0-9_.]{0,40}-[0-9a-f]{32}")
FID_RE = re.compile(r"[0-9A-Za-z_-]{1,64}")
_OPEN_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | \
    getattr(os, "O_CLOEXEC", 0)
_OPEN_READ = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


def _reduce(obj: Any) -> tuple[Any, tuple[Any, ...]]:
    """Pickle a slotted dataclass as its fields in order (the default goes through a
    Python-level ``__getstate__`` listing the fields of each object: once per job)."""
    return type(obj), tuple(getattr(obj, name) for name in obj.__slots__)


@dataclass(frozen=True, slots=True)
class Spec:
    """One job as a dask task carries it (small: values stay in the store)."""

    key: str
    job_id: str
    label: str
    fid: str
    xfer: str
    """The client's transfer folder in the store (see the module docstring)."""
    timeout: float | None = None
    echo: bool = False
    # host jobs
    kwargs: bytes | None = None
    """The pickled arguments, or None when they are in ``<key>.in``."""
    sys_path: tuple[str, ...] = ()
    # runtime jobs
    runtime: Any = None
    identity: dict[str, Any] | None = None
    """The runtime's identity as the client keyed the job (checked on the worker)."""
    store: Any = None
    code: Any = None
    args_manifest: Any = None
    args_in_file: bool = False
    """The manifest is in ``<key>.in`` (it was too large to travel with the task)."""
    inline_limit: int = 16384

    __reduce__ = _reduce


@dataclass(frozen=True, slots=True)
class HostReply:
    """A host worker's ``done`` answer (its payload as the worker sent it)."""

    ok: bool
    payload: Any
    lines: list[ConsoleLine]
    start: float
    end: float
    pid: int
    worker: str

    __reduce__ = _reduce


@dataclass(frozen=True, slots=True)
class RuntimeReply:
    """A runtime worker's ``done`` message, its result refs already moved into the store."""

    msg: dict[str, Any]
    stderr: list[ConsoleLine]
    info: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Spilled:
    """The reply was too large to travel with dask: it is in ``<xfer>/<key>.out``."""

    name: str


Reply = HostReply | RuntimeReply | Outcome | Spilled


# ---------------------------------------------------------------------------- files
def write_new(path: str, data: bytes) -> None:
    """Write a new file (never over an existing one, never through a link)."""
    fd = os.open(path, _OPEN_NEW, 0o600)
    with open(fd, "wb") as f:
        f.write(data)


def read_file(path: str) -> bytes:
    """Read a file without following a link."""
    fd = os.open(path, _OPEN_READ)
    with open(fd, "rb") as f:
        return f.read()


def claim(path: str, text: str) -> bool:
    """Create the claim ``path`` saying ``text`` (one write to a file made exclusively);
    False when it exists. A reader may find it empty for a moment: see :func:`read_claim`."""
    try:
        fd = os.open(path, _OPEN_NEW, 0o600)
    except FileExistsError:
        return False
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)
    return True


def claim_path(xfer: str, key: str) -> str:
    """The claim file of task ``key``."""
    if KEY_RE.fullmatch(key) is None:
        raise ValueError(f"not a hither task key: {key!r}")
    return os.path.join(xfer, key + ".claim")


def read_claim(path: str) -> str:
    """What a claim says ("" when it cannot be read); a claim found empty is being written
    (see :func:`claim`), read again for up to ~20 ms."""
    for _ in range(20):
        try:
            text = read_file(path).decode("utf-8", "replace")
        except OSError:
            return ""
        if text:
            return text
        time.sleep(0.001)
    return ""
