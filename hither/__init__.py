"""hither: a content-addressed caching pipeline engine for scientific Python.

Decorate a function with ``@hi.function(name, version)``; ``f.run(**kwargs)`` creates a
:class:`Job`; ``hi.Config(...)`` chooses the handler, cache, container and timeout.
"""

from __future__ import annotations

from . import scheduler as _scheduler
from ._codec import File
from .aio import gather
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
from .explain import explain
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
from .handlers.inline import DefaultJobHandler
from .handlers.parallel import ParallelJobHandler
from .handlers.slurm import SlurmJobHandler
from .job import Job, JobStatus
from .runtimes.venv import PythonEnv
from .utils import ConsoleCapture, FileLock, ShellScript, TemporaryDirectory

__version__ = "0.5.0"


def run(name: str, **kwargs):
    """Run the registered function ``name``: ``get_function(name).run(**kwargs)``."""
    return get_function(name).run(**kwargs)


def wait(timeout: float | None = None) -> None:
    """Wait until every job is complete (failed jobs do not raise here)."""
    _scheduler.wait_all(timeout)


def reset() -> None:
    """Cancel every job, stop every handler's worker processes, restore default settings."""
    _scheduler.reset()


__all__ = [
    "CacheError",
    "Config",
    "ConsoleCapture",
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
    "local_modules",
    "noop",
    "opts",
    "registered_functions",
    "reset",
    "run",
    "wait",
]
