"""What a runtime worker needs on disk: hither's worker files and the job's code.

Both are content-addressed folders under the store (``<store>/worker/<digest>`` and
``<store>/code/<digest>``), written once and then shared read-only by every worker:
code goes in as *source*, so any image with ``python3`` can run it, whatever its Python.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hither_store._shared import make_dirs, set_tree_modes

from ..codeid import source_files

_HERE = Path(__file__).resolve().parent.parent  # the hither package
_WORKER_FILES = {
    "_worker.py": _HERE / "_worker.py",
    "_stdio_worker.py": _HERE / "_stdio_worker.py",
    "_codec.py": _HERE / "_codec.py",
    "hither/__init__.py": _HERE / "_shim" / "hither" / "__init__.py",
}
_lock = threading.Lock()
_done: dict[tuple[str, str], Path] = {}


@dataclass(frozen=True, slots=True)
class CodeBundle:
    """A function's code as shipped to a worker."""

    digest: str
    module: str
    """The import name of the function's module inside the worker."""
    function: str
    """The function's qualified name in that module."""
    files: tuple[str, ...]


def bundle_digest(files: Mapping[str, str]) -> str:
    """The digest naming a bundle of files (relative name -> hex sha256 of the content)."""
    h = hashlib.sha256()
    for rel in sorted(files):
        h.update(rel.encode() + b"\0" + bytes.fromhex(files[rel]))
    return h.hexdigest()[:32]


def _publish(root: Path, files: dict[str, Path]) -> tuple[str, Path]:
    """Copy ``files`` (relative name -> source) to ``root/<digest>`` once; atomic."""
    contents: dict[str, bytes] = {rel: Path(files[rel]).read_bytes() for rel in sorted(files)}
    digest = bundle_digest({rel: hashlib.sha256(data).hexdigest()
                            for rel, data in contents.items()})
    make_dirs(root)  # group-writable in a group-shared store
    final = root / digest
    if final.is_dir():
        return digest, final
    tmp = root / f".{digest}.{os.getpid()}.{threading.get_ident()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    for rel, data in contents.items():
        target = tmp / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    set_tree_modes(tmp, root)
    try:
        os.rename(tmp, final)
    except OSError:  # another process published the same digest first
        shutil.rmtree(tmp, ignore_errors=True)
    return digest, final


def worker_dir(store_root: Path) -> Path:
    """The folder holding the worker's modules, ``_codec.py`` and the ``hither`` stand-in."""
    key = (str(store_root), "worker")
    with _lock:
        if key not in _done:
            _done[key] = _publish(store_root / "worker", _WORKER_FILES)[1]
        return _done[key]


def code_root(store_root: Path) -> Path:
    """The folder under which every code bundle of this store lives."""
    root = store_root / "code"
    make_dirs(root)
    return root


def code_bundle(fn: Callable[..., Any], store_root: Path, *,
                local_modules: Iterable[str] = (),
                additional_files: Iterable[str] = ()) -> CodeBundle:
    """Publish ``fn``'s module file, local modules and additional files as a bundle.

    The module is imported in the worker by its file name (``analysis.py`` ->
    ``analysis``), so a ``__main__`` script's ``if __name__ == "__main__":`` block does not
    run there. Functions of modules inside packages are imported the same way, so they must
    not use relative imports (put shared code in ``local_modules``).
    """
    files = source_files(fn, local_modules, additional_files)
    src = _module_file(fn)
    if src is None:
        raise TypeError(f"{fn!r} has no source file: a function that runs in a container or "
                        "environment must be defined in a .py file")
    module = os.path.splitext(os.path.basename(src))[0]
    digest, _path = _publish(code_root(store_root), {k: Path(v) for k, v in files.items()})
    return CodeBundle(digest=digest, module=module, function=fn.__qualname__,
                      files=tuple(sorted(files)))


def _module_file(fn: Callable[..., Any]) -> str | None:
    import inspect

    try:
        src = inspect.getsourcefile(inspect.unwrap(fn))
    except TypeError:
        return None
    return src if src and os.path.isfile(src) else None  # not "<stdin>" or "<string>"
