"""``@hi.function``: registering functions, their code identity and the function registry."""

from __future__ import annotations

import inspect
import os
import pickle
import threading
import uuid
import warnings
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import cloudpickle

from .errors import DuplicateFunctionException, FunctionNotRegisteredError

F = TypeVar("F", bound=Callable[..., Any])


class FunctionDef:
    """What hither knows of a decorated function: name, version, options, how to ship it."""

    def __init__(self, fn: Callable[..., Any], name: str, version: str) -> None:
        self.fn = fn
        self.name = name
        self.version = str(version)
        self.fid = uuid.uuid4().hex
        self._pickled: bytes | None = None
        self._lock = threading.Lock()
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
        if self._params is not None:
            unknown = [k for k in kwargs if k not in self._params]
            if unknown:
                raise TypeError(f"{self.name}() got unexpected keyword argument(s) "
                                f"{', '.join(map(repr, unknown))}")
        if self._required:
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
            with self._lock:
                if self._pickled is None:
                    self._pickled = cloudpickle.dumps(_bare(self.fn),
                                                      protocol=pickle.HIGHEST_PROTOCOL)
                data = self._pickled
        return data

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


# ------------------------------------------------------------------------- the registry
_registry: dict[str, tuple[FunctionDef, str | None]] = {}
_registry_lock = threading.Lock()


def _register(fdef: FunctionDef) -> None:
    path = fdef.source_file
    with _registry_lock:
        prev = _registry.get(fdef.name)
        if prev is not None:
            old, old_path = prev
            same_file = (old_path is not None and path is not None
                         and os.path.realpath(old_path) == os.path.realpath(path))
            if not same_file and old_path != path:
                if old.version != fdef.version:
                    raise DuplicateFunctionException(
                        f"hither function {fdef.name!r} is registered in two different files "
                        f"with different versions: {old_path} ({old.version}) and {path} "
                        f"({fdef.version})")
                warnings.warn(f"hither function {fdef.name!r} {fdef.version} is registered "
                              f"again from {path} (first from {old_path}); the newest is used",
                              stacklevel=4)
        # a redefinition (notebook cell, reloaded module) replaces the old object
        _registry[fdef.name] = (fdef, path)


def get_function(name: str) -> Callable[..., Any]:
    """The registered function called ``name`` (its newest definition)."""
    with _registry_lock:
        entry = _registry.get(name)
    if entry is None:
        raise FunctionNotRegisteredError(f"hither function {name!r} is not registered; "
                                         f"registered: {', '.join(sorted(_registry)) or 'none'}")
    return entry[0].fn


def registered_functions() -> dict[str, str]:
    """Names of registered functions and their versions."""
    with _registry_lock:
        return {name: entry[0].version for name, entry in _registry.items()}


def function_def(fn: Callable[..., Any]) -> FunctionDef:
    """The :class:`FunctionDef` of a decorated function."""
    fdef = getattr(fn, "_hither", None)
    if not isinstance(fdef, FunctionDef):
        raise TypeError(f"{fn!r} is not a hither function (decorate it with @hi.function)")
    return fdef


# ------------------------------------------------------------------------- decorators
def function(name: str, version: str, container: str | None = None,
             environment: Any = None, *, network: bool = False,
             gpus: bool = False) -> Callable[[F], F]:
    """Register ``f`` as a hither function.

    The decorated function is returned unchanged (calling it is a plain call, never
    cached) with a ``.run(**kwargs)`` method that creates a :class:`hither.Job`.
    ``name`` must equal the function's name; ``version`` is any string (bump it to mark
    a change of behaviour that the code identity cannot see). ``container`` is the same
    as stacking ``@hi.container(...)``; ``environment`` declares a Python environment
    (e.g. ``hi.PythonEnv(requirements=[...])``). In a container the function has no network
    unless ``network=True``, and no GPU unless ``gpus=True`` (``--gpus all`` / ``--nv``).
    """
    def wrap(f: F) -> F:
        if getattr(f, "__name__", None) != name:
            raise ValueError(f"hither function name {name!r} does not match the function's "
                             f"name {getattr(f, '__name__', f)!r}")
        if container is not None:
            _set_container(f, container)
        if environment is not None:
            f._hither_environment = environment  # type: ignore[attr-defined]
        if network:
            f._hither_network = True  # type: ignore[attr-defined]
        if gpus:
            f._hither_gpus = True  # type: ignore[attr-defined]
        fdef = FunctionDef(f, name, version)
        f._hither = fdef  # type: ignore[attr-defined]

        def run(*args: Any, **kwargs: Any):
            from .scheduler import create_job

            return create_job(fdef, fdef.bind(args, kwargs))

        run.__doc__ = (f"Create a job running {name}(...) with the settings in force; "
                       "returns a hither.Job without waiting.")
        f.run = run  # type: ignore[attr-defined]
        _register(fdef)
        return f

    return wrap


def _set_container(f: Callable[..., Any], uri: str) -> None:
    ok = isinstance(uri, str) and ("://" in uri or uri.endswith(".sif") or os.path.isdir(uri))
    if not ok:
        raise ValueError(f"container must be an image URI such as 'docker://image:tag', an "
                         f"Apptainer .sif file or a sandbox folder, got {uri!r}")
    f._hither_container = uri  # type: ignore[attr-defined]


def container(uri: str) -> Callable[[F], F]:
    """Declare the container image a function runs in (used when ``Config(container=True)``).

    ``uri`` is ``docker://image:tag`` (Docker or Podman), or for Apptainer
    ``docker://...``, a ``.sif`` file path or a sandbox folder.
    """
    def wrap(f: F) -> F:
        _set_container(f, uri)
        return f

    return wrap


def local_modules(paths: Sequence[str]) -> Callable[[F], F]:
    """Declare local module folders/files the function imports.

    Relative paths are resolved against the folder of the function's source file. They are
    put on ``sys.path`` wherever the function runs (workers, containers, environments) and
    their sources are part of the function's code identity.
    """
    if not isinstance(paths, (list, tuple)):
        raise TypeError(f"local_modules takes a list of paths, got {paths!r}")

    def wrap(f: F) -> F:
        f._hither_local_modules = list(paths)  # type: ignore[attr-defined]
        return f

    return wrap


def additional_files(patterns: Sequence[str]) -> Callable[[F], F]:
    """Declare extra files (glob patterns, relative to the source file) the function reads."""
    if not isinstance(patterns, (list, tuple)):
        raise TypeError(f"additional_files takes a list of patterns, got {patterns!r}")

    def wrap(f: F) -> F:
        f._hither_additional_files = list(patterns)  # type: ignore[attr-defined]
        return f

    return wrap


def opts(**_options: Any) -> Callable[[F], F]:
    """Placeholder kept from hither 0.4.2; has no effect."""
    def wrap(f: F) -> F:
        return f

    return wrap
