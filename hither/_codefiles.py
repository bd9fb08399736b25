"""Which files a function's code is made of, besides its own module: local modules and
additional files, by the names they are shipped under (see :mod:`hither.codeid`)."""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable

PathArg = str | os.PathLike[str]


def _walk_files(root: str, prefix: str, suffix: str = "") -> Iterable[tuple[str, str]]:
    """(relative name under ``prefix``, path) of the files under ``root``, sorted."""
    for here, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != "__pycache__")
        for name in sorted(files):
            if name.endswith(suffix) and not name.startswith("."):
                rel = os.path.normpath(os.path.join(prefix, os.path.relpath(here, root), name))
                yield rel.replace(os.sep, "/"), os.path.join(here, name)


def add_file(found: dict[str, str], rel: str, path: str) -> None:
    """Record ``rel`` -> ``path``; two different files under one name are an error."""
    if found.setdefault(rel, path) != path:
        raise ValueError(f"two files would be shipped as {rel!r}: {found[rel]} and {path}")


def code_files(base: str, local_modules: Iterable[PathArg], patterns: Iterable[PathArg]
                ) -> tuple[dict[str, str], dict[str, str]]:
    """Relative name -> path of the local modules' ``*.py`` files, and of the additional files.

    A local directory ``.../mylib`` gives ``mylib/...`` (``import mylib`` works from the bundle
    root), a local file its base name; a directory matching a pattern gives all its files.
    """
    modules: dict[str, str] = {}
    for entry in local_modules:
        path = os.path.abspath(os.path.join(base, os.fspath(entry)))
        if os.path.isfile(path):
            add_file(modules, os.path.basename(path), path)
        elif os.path.isdir(path):
            for rel, full in _walk_files(path, os.path.basename(path), ".py"):
                add_file(modules, rel, full)
        else:
            raise FileNotFoundError(f"local module {os.fspath(entry)!r} not found at {path}")
    files: dict[str, str] = {}
    for pattern in patterns:
        for match in sorted(glob.glob(os.fspath(pattern), root_dir=base, recursive=True)):
            full = os.path.abspath(os.path.join(base, match))
            rel = os.path.relpath(full, base).replace(os.sep, "/")
            if os.path.isdir(full):
                for sub_rel, sub_full in _walk_files(full, rel):
                    add_file(files, sub_rel, sub_full)
            elif os.path.isfile(full):
                add_file(files, rel, full)
    return modules, files
