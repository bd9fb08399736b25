"""FunctionDef: what hither knows of a decorated function (a leaf module: it imports no
other part of the engine, so the job, the cache flow and the scheduler can all use it)."""

from __future__ import annotations

import inspect
import os
import threading
from collections.abc import Callable
from typing import Any


class FunctionDef:
    """What hither knows of a decorated function: name, version, options, how to ship it."""

    def __init__(self, fn: Callable[..., Any], name: str, version: str) -> None:
        self.fn = fn
        self.name = name
        self.version = str(version)
        self.fid = os.urandom(16).hex()  # (not uuid: its import loads platform)
        self._pickled: bytes | None = None
        self._lock = threading.Lock()
        self._bundles: dict[tuple[str, str], Any] = {}
        try:
            sig = inspect.signature(fn)
        except (TypeError, ValueError):
            sig = None
        self.signature = sig
        self._params: frozenset[str] | None = None
        self._required: frozenset[str] = frozenset()
        if sig is not None:
            kinds = {p.kind for p in sig.parameters.values()}
            if inspect.Parameter.VAR_KEYWORD not in kinds:
                self._params = frozenset(
                    n for n, p in sig.parameters.items()
                    if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))
            self._required = frozenset(
                n for n, p in sig.parameters.items()
                if p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))

    # options set by the decorators; read through getattr so stacking order is free
    @property
    def container(self) -> str | None:
        """The function's declared container image, if any."""
        return getattr(self.fn, "_hither_container", None)

    @property
    def local_modules(self) -> list[str]:
        """Folders/files of local modules the function imports."""
        return list(getattr(self.fn, "_hither_local_modules", []))

    @property
    def additional_files(self) -> list[str]:
        """Glob patterns of extra files shipped with the function's code."""
        return list(getattr(self.fn, "_hither_additional_files", []))

    @property
    def environment(self) -> Any:
        """The function's declared Python environment, if any."""
        return getattr(self.fn, "_hither_environment", None)

    @property
    def network(self) -> bool:
        """Whether the function asked for a network in its container."""
        return bool(getattr(self.fn, "_hither_network", False))

    @property
    def gpus(self) -> bool:
        """Whether the function asked for GPUs in its container."""
        return bool(getattr(self.fn, "_hither_gpus", False))

    @property
    def source_file(self) -> str | None:
        """The file the function was defined in."""
        try:
            return inspect.getfile(inspect.unwrap(self.fn))
        except (TypeError, OSError):
            return None

    def local_module_paths(self) -> list[str]:
        """Folders to put on ``sys.path`` so the function's local modules import.

        Each declared local module (a package folder or a module file) is importable from
        its parent folder; relative paths are taken from the function's source folder.
        """
        mods = getattr(self.fn, "_hither_local_modules", None)
        if not mods:
            return []
        src = self.source_file
        base = os.path.dirname(os.path.abspath(src)) if src else os.getcwd()
        out: list[str] = []
        for m in mods:
            full = os.path.normpath(os.path.join(base, m))
            parent = os.path.dirname(full)
            if parent not in out:
                out.append(parent)
        return out

    def check_kwargs(self, kwargs: dict[str, Any]) -> None:
        """Raise ``TypeError`` for arguments the function cannot take, before any job runs."""
        if self._params is not None and not self._params.issuperset(kwargs):
            unknown = [k for k in kwargs if k not in self._params]
            if unknown:
                raise TypeError(f"{self.name}() got unexpected keyword argument(s) "
                                f"{', '.join(map(repr, unknown))}")
        if self._required and not kwargs.keys() >= self._required:
            missing = [k for k in self._required if k not in kwargs]
            if missing:
                raise TypeError(f"{self.name}() missing required argument(s) "
                                f"{', '.join(map(repr, sorted(missing)))}")

    def bind(self, args: tuple, kwargs: dict[str, Any]) -> dict[str, Any]:
        """Turn positional arguments into keyword arguments by the function's signature."""
        if not args:
            return kwargs
        if self.signature is None:
            raise TypeError(f"{self.name}.run() takes keyword arguments only")
        bound = self.signature.bind(*args, **kwargs)
        return dict(bound.arguments)

    def pickled(self) -> bytes:
        """The function pickled for a host worker, computed once.

        Functions importable by module and name go by reference; functions of
        ``__main__`` (scripts, notebooks) go by value through cloudpickle.
        """
        data = self._pickled
        if data is None:
            import pickle

            import cloudpickle

            with self._lock:
                if self._pickled is None:
                    self._pickled = cloudpickle.dumps(_bare(self.fn),
                                                      protocol=pickle.HIGHEST_PROTOCOL)
                data = self._pickled
        return data

    def code_bundle(self, store_root: Any) -> Any:
        """The function's code bundle published in the store at ``store_root``, once per
        code identity: an edit of a local module or an additional file (which changes the
        job key) ships anew."""
        from .codeid import code_identity
        from .runtimes.bundle import code_bundle

        code = code_identity(self.fn, local_modules=self.local_modules,
                             additional_files=self.additional_files)
        key = (str(store_root), code.digest)
        with self._lock:
            bundle = self._bundles.get(key)
        if bundle is None:
            bundle = code_bundle(self.fn, store_root, local_modules=self.local_modules,
                                 additional_files=self.additional_files)
            with self._lock:
                bundle = self._bundles.setdefault(key, bundle)
        return bundle

    def __reduce__(self):
        return (_rebuild_def, (self.fn, self.name, self.version))

    def __repr__(self) -> str:
        return f"<hither function {self.name} {self.version}>"


def _rebuild_def(fn, name, version):
    return FunctionDef(fn, name, version)


def _bare(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A function pickled by value must not drag its ``.run`` attribute along."""
    module = getattr(fn, "__module__", None)
    if module != "__main__" or not hasattr(fn, "__code__"):
        return fn
    import types

    bare = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__, fn.__defaults__,
                              fn.__closure__)
    bare.__kwdefaults__ = fn.__kwdefaults__
    bare.__qualname__ = fn.__qualname__
    bare.__module__ = fn.__module__
    bare.__doc__ = fn.__doc__
    return bare
