"""hither: a content-addressed caching pipeline engine for scientific Python.

Decorate a function with ``@hi.function(name, version)``; ``f.run(**kwargs)`` creates a
:class:`Job`; ``hi.Config(...)`` chooses the handler, cache, container and timeout.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._codec import File
from .builtins import identity, noop
from .cache import JobCache
from .config import Config
from .errors import (
    CacheError,
    DeserializationException,
    DuplicateFunctionException,
    FunctionNotRegisteredError,
    HandlerClosedError,
    HitherError,
    JobCancelledException,
    JobError,
    JobFailedError,
    JobTimeoutError,
    RuntimeUnavailableError,
    SerializationError,
    UpstreamJobError,
    WorkerCrashedError,
)
from .function import (
    additional_files,
    container,
    function,
    get_function,
    local_modules,
    opts,
    registered_functions,
)
from .handlers.base import JobHandler
from .job import Job, JobStatus

if TYPE_CHECKING:
    from hither_store import Remote

    from .aio import gather
    from .explaining import explain, lineage
    from .handlers.dask import DaskJobHandler
    from .handlers.inline import DefaultJobHandler
    from .handlers.parallel import ParallelJobHandler
    from .handlers.slurm import SlurmJobHandler
    from .runtimes.venv import PythonEnv
    from .utils import ConsoleCapture, FileLock, ShellScript, TemporaryDirectory
    from .verifying import load

# imported on first use: `import hither` stays fast (asyncio, the runtimes, the worker
# pool and the utilities are not needed by every script)
_LAZY = {
    "gather": ".aio",
    "explain": ".explaining",
    "lineage": ".explaining",
    "load": ".verifying",
    "DaskJobHandler": ".handlers.dask",
    "DefaultJobHandler": ".handlers.inline",
    "ParallelJobHandler": ".handlers.parallel",
    "SlurmJobHandler": ".handlers.slurm",
    "PythonEnv": ".runtimes.venv",
    "Remote": "hither_store",
    "ConsoleCapture": ".utils",
    "FileLock": ".utils",
    "ShellScript": ".utils",
    "TemporaryDirectory": ".utils",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'hither' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


__version__ = "0.5.0"


def run(name: str, **kwargs: Any) -> Job:
    """Run the registered function ``name``: ``get_function(name).run(**kwargs)``."""
    fn: Any = get_function(name)
    job: Job = fn.run(**kwargs)
    return job


def wait(timeout: float | None = None) -> None:
    """Wait until every job is complete (failed jobs do not raise here)."""
    from . import scheduler

    scheduler.wait_all(timeout)


def reset() -> None:
    """Cancel every job, stop every handler's worker processes, restore default settings."""
    from . import scheduler

    scheduler.reset()


__all__ = [
    "CacheError",
    "Config",
    "ConsoleCapture",
    "DaskJobHandler",
    "DefaultJobHandler",
    "DeserializationException",
    "DuplicateFunctionException",
    "File",
    "FileLock",
    "FunctionNotRegisteredError",
    "HandlerClosedError",
    "HitherError",
    "Job",
    "JobCache",
    "JobCancelledException",
    "JobError",
    "JobFailedError",
    "JobHandler",
    "JobStatus",
    "JobTimeoutError",
    "ParallelJobHandler",
    "PythonEnv",
    "Remote",
    "RuntimeUnavailableError",
    "SerializationError",
    "ShellScript",
    "SlurmJobHandler",
    "TemporaryDirectory",
    "UpstreamJobError",
    "WorkerCrashedError",
    "__version__",
    "additional_files",
    "container",
    "explain",
    "function",
    "gather",
    "get_function",
    "identity",
    "lineage",
    "load",
    "local_modules",
    "noop",
    "opts",
    "registered_functions",
    "reset",
    "run",
    "wait",
]
