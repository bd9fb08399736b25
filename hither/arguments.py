"""The arguments of a job, as the scheduler takes them at ``.run()``.

Walked once (reference cycles and nesting deeper than :data:`MAX_NESTING` are refused,
naming the argument path), searched for upstream jobs (also inside lists, tuples and
dicts) that are later replaced by their results, ``hi.File`` inputs snapshotted into the
store and handed to the job as links to the snapshots, and the whole frozen (pickled) so
that nothing the caller or a sibling job does later changes what the job computes.
"""

from __future__ import annotations

import copy
import os
import pickle
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ._codec import MAX_DEPTH, File
from .errors import SerializationError
from .fdef import FunctionDef
from .job import Job

#: arguments nested deeper than this are refused at ``.run()`` (SerializationError): the
#: limit of what the codec and the key hasher accept
MAX_NESTING = MAX_DEPTH
LEAVES = (str, int, float, bool, type(None), bytes, bytearray, complex)
"""Types that hold no other value (and no job or File)."""


def walk(value: Any, path: str) -> Iterator[Any]:
    """Every object inside ``value`` (lists, tuples, dicts, sets), depth first.

    Raises SerializationError for a reference cycle or nesting deeper than
    :data:`MAX_NESTING`, naming the path."""
    stack: list[tuple[Any, str, int, frozenset[int]]] = [(value, path, 0, frozenset())]
    while stack:
        v, p, depth, active = stack.pop()
        yield v
        t = type(v)
        if t in LEAVES:
            continue
        if isinstance(v, dict):
            items: Iterator[tuple[str, Any]] = ((f"{p}[{k!r}]", x) for k, x in v.items())
        elif isinstance(v, (list, tuple, set, frozenset)):
            items = ((f"{p}[{i}]", x) for i, x in enumerate(v))
        else:
            continue
        if id(v) in active:
            raise SerializationError(f"argument {p} contains itself (a reference cycle): "
                                     "hither arguments must be trees of values", p)
        if depth >= MAX_NESTING:
            raise SerializationError(f"argument {p} is nested more than {MAX_NESTING} levels "
                                     "deep: flatten it or pass it as an array or a File", p)
        inner = active | {id(v)}
        children = [(x, sub_path, depth + 1, inner) for sub_path, x in items
                    if type(x) not in LEAVES]
        stack.extend(reversed(children))  # visited in order


def upstream_by_name(kwargs: dict[str, Any]) -> dict[str, list[Job]]:
    """The jobs found in each argument (also inside lists, tuples and dicts)."""
    out: dict[str, list[Job]] = {}
    for name, value in kwargs.items():
        if type(value) in LEAVES:
            continue
        if isinstance(value, Job):
            out[name] = [value]
            continue
        found = {id(v): v for v in walk(value, f"kw[{name!r}]") if isinstance(v, Job)}
        if found:
            out[name] = list(found.values())
    return out


def replace_jobs(value: Any) -> Any:
    """``value`` with every job replaced by its result; container types are kept
    (an OrderedDict or a defaultdict stays one, a namedtuple stays one)."""
    if isinstance(value, Job):
        return value._result_now()
    if isinstance(value, dict):
        if type(value) is dict:
            return {k: replace_jobs(v) for k, v in value.items()}
        new = copy.copy(value)
        for k, v in value.items():
            new[k] = replace_jobs(v)
        return new
    if isinstance(value, list):
        items = [replace_jobs(v) for v in value]
        if type(value) is list:
            return items
        new_list = copy.copy(value)
        new_list[:] = items
        return new_list
    if isinstance(value, tuple):
        items = [replace_jobs(v) for v in value]
        if type(value) is tuple:
            return tuple(items)
        return type(value)(*items) if hasattr(value, "_fields") else type(value)(items)
    return value


def freeze(fdef: FunctionDef, kwargs: dict[str, Any], *,
            inline: bool) -> tuple[bytes | None, dict[str, Any] | None]:
    """The arguments fixed now: pickled; on the inline handler, arguments that cannot be
    pickled are deep-copied, and passed as they are when they cannot be copied either."""
    try:
        return pickle_kwargs(fdef, kwargs), None
    except SerializationError:
        if not inline:
            raise
    try:
        return None, copy.deepcopy(kwargs)
    except Exception:  # noqa: BLE001 - e.g. an open file: the caller's object itself
        return None, kwargs


def _files_in(value: Any) -> bool:
    return any(isinstance(v, File) for v in walk(value, "kw"))


def map_files(value: Any, fn: Callable[[File], File]) -> Any:
    """``value`` with each ``File`` inside it replaced by ``fn(file)``; containers copied."""
    if isinstance(value, File):
        return fn(value)
    if type(value) in LEAVES:
        return value
    if isinstance(value, dict):
        if type(value) is dict:
            return {k: map_files(v, fn) for k, v in value.items()}
        return _copy_dict(value, fn)
    if isinstance(value, list):
        return [map_files(v, fn) for v in value]
    if isinstance(value, (set, frozenset)):
        return type(value)(map_files(v, fn) for v in value)
    if isinstance(value, tuple):
        items = [map_files(v, fn) for v in value]
        return type(value)(*items) if hasattr(value, "_fields") else type(value)(items)
    return value


def _copy_dict(value: dict, fn: Callable[[File], File]) -> dict:
    new = copy.copy(value)
    for k, v in value.items():
        new[k] = map_files(v, fn)
    return new


def snapshot_files(kwargs: dict[str, Any], store: Any, snapshots: dict[str, str]
                   ) -> dict[str, Any]:
    """Copy each File input into the store (once per content) and key it by the copy:
    the job reads the snapshot, so a file changed after ``.run()`` cannot make the result
    be stored under the old content's key. ``snapshots`` gets path -> sha256 of each."""
    from .hashing import hash_file

    def snap(f: File) -> File:
        sha = snapshots.get(f.path)
        if sha is None:
            try:
                sha = hash_file(f.path)  # memoized by stat: an unchanged file is not read
                if not store.refresh_blob("sha256://" + sha):
                    sha = store.put_file(f.path).split("://", 1)[1]
            except OSError as e:
                raise SerializationError(f"cannot read File {f.path!r}: {e}") from e
            snapshots[f.path] = sha
        return File._snapshot(f.path, sha)

    changed = {name: map_files(v, snap) for name, v in kwargs.items()
               if type(v) not in LEAVES and _files_in(v)}
    return {**kwargs, **changed} if changed else kwargs


def link_snapshots(kwargs: dict[str, Any], store: Any, snapshots: dict[str, str]
                   ) -> tuple[dict[str, Any], Path]:
    """Hand the job its File inputs as read-only links to their snapshots, under their own
    names (a suffix some readers depend on is kept); also returns the folder of the links
    (the caller removes it when the job ends)."""
    links = store.work_dir("in")  # gc removes it if this process dies
    made: dict[str, File] = {}

    def link(f: File) -> File:
        done = made.get(f.path)
        if done is not None:
            return done
        sha = snapshots[f.path]
        folder = links / str(len(made))
        folder.mkdir(mode=0o700)
        target = folder / (f.name or "file")
        blob = store.blob_path("sha256://" + sha)
        try:
            os.link(blob, target)
        except OSError:
            shutil.copyfile(blob, target)
            os.chmod(target, 0o444)
        made[f.path] = new = File._snapshot(str(target), sha)
        return new

    return {name: map_files(v, link) if type(v) not in LEAVES else v
            for name, v in kwargs.items()}, links


def pickle_kwargs(fdef: FunctionDef, kwargs: dict[str, Any]) -> bytes:
    """Pickle arguments for a worker process; name the argument that cannot be.

    Arguments that refer to ``__main__`` (an object of a class defined in the script or
    notebook) go by value: a worker has no ``__main__`` of the caller to find it in."""
    try:
        data = pickle.dumps(kwargs, protocol=pickle.HIGHEST_PROTOCOL)
        if data.find(b"__main__") < 0:  # (`in` tries the bytes as an int first: an exception)
            return data
    except Exception:  # noqa: BLE001 - try harder, then explain
        pass

    import cloudpickle

    try:
        return cloudpickle.dumps(kwargs, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as e:  # noqa: BLE001
        path, bad = _find_unpicklable(kwargs)
        raise SerializationError(
            f"argument {path} of {fdef.name}() (type {type(bad).__module__}."
            f"{type(bad).__qualname__}) cannot be sent to a worker process: "
            f"{type(e).__name__}: {e}. Pass plain data (numbers, strings, lists, dicts, "
            "numpy arrays) or run with the inline DefaultJobHandler.", path) from e


def _find_unpicklable(kwargs: dict[str, Any]) -> tuple[str, Any]:
    import cloudpickle

    def ok(v: Any) -> bool:
        try:
            cloudpickle.dumps(v)
            return True
        except Exception:  # noqa: BLE001
            return False

    def walk(v: Any, path: str) -> tuple[str, Any]:
        items: Iterator[tuple[str, Any]] = iter(())
        if isinstance(v, dict):
            items = ((f"{path}[{k!r}]", x) for k, x in v.items())
        elif isinstance(v, (list, tuple)):
            items = ((f"{path}[{i}]", x) for i, x in enumerate(v))
        for p, x in items:
            if not ok(x):
                return walk(x, p)
        return path, v

    for name, v in kwargs.items():
        if not ok(v):
            return walk(v, f"kw[{name!r}]")
    return "kw", kwargs
