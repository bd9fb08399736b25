"""What a handler is given (:class:`Launch`) and what it gives back (:class:`Outcome`).

Handlers and runtimes see only these two frozen descriptions; they never see a Job, the
scheduler or the cache. A handler's ``submit(launch)`` returns a standard
``concurrent.futures.Future`` that always resolves to an :class:`Outcome`: a failure of the
function, a crash, a timeout and a cancel are outcomes too, never exceptions of the future.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

#: One captured console line: (unix time, text, came from stderr)
ConsoleLine = tuple[float, str, bool]


@dataclass(frozen=True, slots=True)
class Recording:
    """What a handler needs to re-check the job cache and record a result where the job
    runs, through :mod:`hither.cacheflow` (so that the record is the one the driver would
    write). An outcome whose ``info["recorded"]`` is true was recorded that way; the driver
    then stores nothing more, and ``info["cache_hit"]`` marks a result found by a re-check."""

    keyinfo: Any
    """The job's :class:`hither.cacheflow.KeyInfo`."""
    settings: Any
    """The :class:`hither.config.Settings` of the job (its ``job_cache`` and cache flags)."""
    fdef: Any
    """The job's :class:`hither.fdef.FunctionDef`."""


@dataclass(slots=True)
class Launch:
    """A ready-to-run call: the function, its frozen arguments and how to run it.

    Not frozen (handlers only read it): a frozen dataclass pays an ``object.__setattr__``
    per field, and every job that runs gets a Launch.

    The arguments were fixed when the job's inputs became known (at ``.run()`` for a job
    without upstream jobs): ``kwargs_pickle`` for host workers and the inline handler,
    ``args_manifest`` (values already in the store) for runtime workers. Every run gets its
    own copy, so neither the caller nor a sibling job can change what a job computes.
    """

    job_id: str
    label: str
    fid: str
    """Identifies the function object for workers that cache loaded functions."""
    fn: Callable[..., Any]
    fn_pickle: Callable[[], bytes]
    """Returns the function pickled (by reference or, for ``__main__``, by value)."""
    kwargs_pickle: bytes | None = None
    """The frozen arguments, pickled."""
    kwargs: dict[str, Any] | None = None
    """A frozen deep copy of arguments that cannot be pickled (inline handler only)."""
    args_manifest: Any = None
    """The arguments encoded in ``store`` (runtime workers)."""
    timeout: float | None = None
    echo_label: Callable[[], str] | None = None
    """When set, console lines are also echoed live, prefixed by ``[<label>]`` (the label
    as it is when the line is printed, so ``job.set_label()`` is followed)."""
    sys_path: tuple[str, ...] = ()
    """Folders put on ``sys.path`` before the function is loaded (its local modules)."""
    runtime: Any = None
    """Where the code runs (``None``: the host interpreter); see :mod:`hither.runtimes`."""
    code: Any = None
    """The function's code bundle, for a runtime worker (:mod:`hither.runtimes.bundle`)."""
    store: Any = None
    """The store values cross through, for a runtime worker."""
    recording: Recording | None = None
    """How the job's result is looked up and recorded (None: no job cache). Handlers that
    run jobs where the driver may be gone (a cluster node) record there themselves."""

    def pickled_kwargs(self) -> bytes:
        """The frozen arguments as pickle bytes."""
        if self.kwargs_pickle is not None:
            return self.kwargs_pickle
        return pickle.dumps(self.kwargs or {}, protocol=pickle.HIGHEST_PROTOCOL)

    def call_kwargs(self) -> dict[str, Any]:
        """A private copy of the frozen arguments for one run."""
        if self.kwargs_pickle is not None:
            return pickle.loads(self.kwargs_pickle)
        import copy

        try:
            return copy.deepcopy(self.kwargs or {})
        except Exception:  # noqa: BLE001 - cannot be copied (an open file): as it is
            return dict(self.kwargs or {})

    def stream_prefix(self) -> str | None:
        """The live console prefix now (None: no live console)."""
        return None if self.echo_label is None else f"[{self.echo_label()}] "


@dataclass(slots=True)
class Outcome:
    """How a launch ended. ``error`` is None exactly when ``ok`` is True."""

    ok: bool
    value: Any = None
    error: BaseException | None = None
    traceback_text: str | None = None
    console: list[ConsoleLine] = field(default_factory=list)
    start_time: float | None = None
    end_time: float | None = None
    info: dict[str, Any] = field(default_factory=dict)
    """Handler-specific facts for runtime info (worker pid, container id, ...)."""
