"""``@hi.function``: registering functions, their code identity and the function registry."""

from __future__ import annotations

import os
import threading
import warnings
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from .errors import DuplicateFunctionException, FunctionNotRegisteredError
from .fdef import FunctionDef

F = TypeVar("F", bound=Callable[..., Any])


# ------------------------------------------------------------------------- the registry
_registry: dict[str, tuple[FunctionDef, str | None]] = {}
_registry_lock = threading.Lock()


def _register(fdef: FunctionDef) -> None:
    """Register ``fdef`` under its name; a redefinition replaces the entry.

    A redefinition in the same module (a re-run or later notebook cell, a reloaded module,
    a script) replaces it silently. The same name from two different modules raises
    :class:`DuplicateFunctionException` when the versions differ and warns otherwise; a
    built-in (``hi.identity``, ``hi.noop``) yields to a user function without a word.
    """
    path = fdef.source_file
    module = getattr(fdef.fn, "__module__", None)
    with _registry_lock:
        prev = _registry.get(fdef.name)
        if prev is not None:
            old, old_path = prev
            old_module = getattr(old.fn, "__module__", None)
            same_file = (old_path is not None and path is not None
                         and os.path.realpath(old_path) == os.path.realpath(path))
            if old_module != module and not same_file and old_module != _BUILTINS:
                if old.version != fdef.version:
                    raise DuplicateFunctionException(
                        f"hither function {fdef.name!r} is registered in two different "
                        f"modules with different versions: {old_module} ({old_path}, "
                        f"{old.version}) and {module} ({path}, {fdef.version}); rename one")
                warnings.warn(f"hither function {fdef.name!r} {fdef.version} is registered "
                              f"again from {module} ({path}), first from {old_module} "
                              f"({old_path}); the newest is used", stacklevel=4)
        _registry[fdef.name] = (fdef, path)


_BUILTINS = "hither.builtins"


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
            return _create_job()(fdef, fdef.bind(args, kwargs))

        run.__doc__ = (f"Create a job running {name}(...) with the settings in force; "
                       "returns a hither.Job without waiting.")
        f.run = run  # type: ignore[attr-defined]
        _register(fdef)
        return f

    return wrap


_create_job_fn: Callable[..., Any] | None = None


def _create_job() -> Callable[..., Any]:
    """``scheduler.create_job``, imported on the first ``.run()`` (not by ``import hither``)
    and then without an import statement per job."""
    global _create_job_fn
    if _create_job_fn is None:
        from .scheduler import create_job

        _create_job_fn = create_job
    return _create_job_fn


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
