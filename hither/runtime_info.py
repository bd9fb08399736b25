"""What a record keeps about its runtime besides the identity in the key: the Python
packages inside it and, for a uv environment, its lock (so the environment can be rebuilt).

Both are stored as blobs and named in the record's provenance by codec blob nodes
(``{"~": "bytes", "ref": ..., "size": ...}``), so closures, bundles and ``gc`` see them.
They are stored once per runtime identity and store in a process: the host's packages are
read from the distributions' metadata folders on ``sys.path``; a container's or
environment's are those its worker reported when it started (the same listing, inside the
runtime: see :mod:`hither._stdio_worker`), else, for a uv environment, the pins of its
lock.
"""

from __future__ import annotations

import json
import os
import re
import sys
import threading
from pathlib import Path
from typing import Any

__all__ = ["host_packages", "packages_from_lock", "runtime_facts"]

_lock = threading.Lock()
_facts: dict[tuple[str, str], dict[str, Any]] = {}
_host: str | None = None
_LOCK_LINE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s\\;]+)", re.M)


def host_packages() -> str:
    """``name==version`` lines (sorted, one per distribution) of this interpreter, as its
    workers report them (:func:`hither._stdio_worker._packages`). Kept in the user cache
    folder under a signature of ``sys.executable`` and the folders of ``sys.path`` (their
    mtimes change when a distribution is installed or removed), so a process reads one
    small file instead of listing every folder."""
    global _host
    if _host is None:
        path = _host_cache_file()
        try:
            _host = path.read_text() if path is not None else None
        except (OSError, UnicodeDecodeError):
            _host = None
        if _host is None:
            from ._stdio_worker import _packages

            _host = _packages()
            if path is not None:
                _write_quietly(path, _host)
    return _host


def _host_cache_file() -> Path | None:
    import hashlib

    try:
        import platformdirs
    except ImportError:
        return None
    sig = []
    for entry in sys.path:
        try:
            st = os.stat(entry or ".")
        except OSError:
            continue
        sig.append([entry, st.st_mtime_ns, st.st_ino])
    key = hashlib.sha256(json.dumps([sys.executable, sig]).encode()).hexdigest()[:32]
    return platformdirs.user_cache_path("hither") / "host-packages" / f"{key}.txt"


def _write_quietly(path: Path, text: str) -> None:
    """Write ``text`` atomically; a cache that cannot be written is not an error."""
    from hither_store._atomic import TempFile, publish

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with TempFile(path.parent, ".host-packages", fsync=False) as tmp:
            tmp.file.write(text.encode())
            tmp.finish()
            publish(tmp.path, path)
    except OSError:
        pass


def packages_from_lock(lock: str) -> str:
    """``name==version`` lines of a requirements lock (hash lines and comments left out)."""
    return "".join(f"{n}=={v}\n" for n, v in _LOCK_LINE.findall(lock))


def _node(store: Any, text: str) -> dict[str, Any]:
    data = text.encode()
    return {"~": "bytes", "ref": store.put_bytes(data), "size": len(data)}


_HOST = {"kind": "host"}


def runtime_facts(runtime: Any, identity: dict[str, Any], store: Any,
                  reported: str | None = None) -> dict[str, Any]:
    """``{"packages": <blob node>, "lock": <blob node>}`` (the keys that apply) for a
    runtime (None: the host) whose identity is ``identity``; stored in ``store`` once.
    ``reported`` is the package list the runtime's worker reported."""
    # the host's identity (every job's, without a runtime) without encoding it per job
    ident = "host" if identity == _HOST else json.dumps(identity, sort_keys=True)
    cache_key = (str(store.root), ident)
    with _lock:
        found = _facts.get(cache_key)
    if found is not None:
        return found
    out: dict[str, Any] = {}
    kind = identity.get("kind")
    if kind == "host":
        out["packages"] = _node(store, host_packages())
    elif kind == "venv" and runtime is not None and hasattr(runtime, "env"):
        lock = runtime.env.lock()
        out["lock"] = _node(store, lock)
        out["packages"] = _node(store, reported or packages_from_lock(lock))
    elif reported:
        out["packages"] = _node(store, reported)
    if "packages" in out:  # else a later job's worker may still report them
        with _lock:
            _facts[cache_key] = out
    return out
