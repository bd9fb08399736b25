"""``hi.Config``: settings for the jobs created inside a ``with`` block.

Settings live in a :class:`contextvars.ContextVar`, so nesting, threads and asyncio tasks
each see their own: a thread starts with the defaults, an asyncio task starts with the
settings of the code that created it. A nested block inherits every key it does not set;
an explicit ``None`` is a value (``job_cache=None`` switches the cache off). Leaving a
block restores the outer settings, also when the block raised. Settings are captured when
``.run()`` is called, so a job keeps them after the block ends.
"""

from __future__ import annotations

import contextvars
import dataclasses
from dataclasses import dataclass, field
from typing import Any

_UNSET: Any = object()


@dataclass(frozen=True, slots=True)
class Settings:
    """The effective settings of one moment (see :class:`Config` for their meaning)."""

    container: bool | str | None = None
    job_handler: Any = None
    job_cache: Any = None
    job_timeout: float | None = None
    force_run: bool = False
    rerun_failing: bool = False
    cache_failing: bool = False
    show_console: bool = False
    environment: Any = None
    network: bool | None = None
    gpus: bool | None = None
    progress: bool | None = None
    jhparams: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The settings as a plain dict."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


DEFAULTS = Settings()
_current: contextvars.ContextVar[Settings] = contextvars.ContextVar("hither_config",
                                                                    default=DEFAULTS)


def current() -> Settings:
    """The settings in force here (what a ``.run()`` called now would capture)."""
    return _current.get()


def _set_defaults() -> None:
    _current.set(DEFAULTS)


class Config:
    """Context manager setting how jobs created inside the block run.

    Args:
        container: ``True`` runs each function in its own declared container; a string
            (``"docker://image:tag"``) runs every job in that image; ``False``/``None``
            runs on the host.
        job_handler: the handler that runs the jobs (default: :class:`DefaultJobHandler`,
            in the caller); e.g. ``hi.ParallelJobHandler(4)``.
        job_cache: a :class:`hither.JobCache`; ``None`` runs without a cache.
        job_timeout: seconds a job may run before it is stopped (``None``: no limit).
        force_run: run even when the cache holds a result (and store the new one).
        rerun_failing: run again when the cache holds a failure.
        cache_failing: store failures, and use stored failures unless ``rerun_failing``.
        show_console: stream each job's console output live, prefixed by its label.
        environment: a runtime override for every job (e.g. a ``hi.PythonEnv``).
        network: give container jobs a network (``None``: as each function declares;
            containers have no network by default).
        gpus: give container jobs the GPUs (``--gpus all`` for Docker/Podman, ``--nv``
            for Apptainer; ``None``: as each function declares).
        progress: show live progress of the pipeline (``None``: when the output is a
            terminal or a notebook and ``HITHER_PROGRESS`` is not ``0``).
        jhparams: free-form parameters for the handler.

    Unknown keywords raise ``TypeError``.
    """

    def __init__(self, *, container: bool | str | None = _UNSET, job_handler: Any = _UNSET,
                 job_cache: Any = _UNSET, job_timeout: float | None = _UNSET,
                 force_run: bool = _UNSET, rerun_failing: bool = _UNSET,
                 cache_failing: bool = _UNSET, show_console: bool = _UNSET,
                 environment: Any = _UNSET, network: bool | None = _UNSET,
                 gpus: bool | None = _UNSET, progress: bool | None = _UNSET,
                 jhparams: dict[str, Any] | None = _UNSET) -> None:
        given = {k: v for k, v in locals().items() if k != "self" and v is not _UNSET}
        _validate(given)
        if "jhparams" in given:
            given["jhparams"] = dict(given["jhparams"] or {})
        self._overrides = given
        self._tokens: list[contextvars.Token[Settings]] = []

    def __enter__(self) -> Config:
        merged = dataclasses.replace(_current.get(), **self._overrides)
        self._tokens.append(_current.set(merged))
        return self

    def __exit__(self, *exc: object) -> None:
        # the same Config object may be entered in several threads or tasks at once:
        # reset the token that belongs to this context
        for i in range(len(self._tokens) - 1, -1, -1):
            try:
                _current.reset(self._tokens[i])
            except ValueError:
                continue
            del self._tokens[i]
            return

    @property
    def overrides(self) -> dict[str, Any]:
        """The keys this block sets."""
        return dict(self._overrides)

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in self._overrides.items())
        return f"Config({inner})"


def _validate(given: dict[str, Any]) -> None:
    t = given.get("job_timeout")
    if t is not None and "job_timeout" in given:
        if isinstance(t, bool) or not isinstance(t, (int, float)) or t <= 0:
            raise ValueError(f"job_timeout must be a positive number of seconds or None, "
                             f"got {t!r}")
    c = given.get("container")
    if "container" in given and c is not None and not isinstance(c, (bool, str)):
        raise TypeError(f"container must be True, False, None or an image string, got {c!r}")
    for flag in ("force_run", "rerun_failing", "cache_failing", "show_console"):
        if flag in given and not isinstance(given[flag], bool):
            raise TypeError(f"{flag} must be True or False, got {given[flag]!r}")
    for flag in ("network", "gpus", "progress"):
        if given.get(flag) is not None and not isinstance(given[flag], bool):
            raise TypeError(f"{flag} must be True, False or None, got {given[flag]!r}")
    h = given.get("job_handler")
    if h is not None:
        from .handlers.base import JobHandler

        if not isinstance(h, JobHandler):
            raise TypeError(f"job_handler must be a hither job handler "
                            f"(e.g. hi.ParallelJobHandler(4)) or None, got {h!r}")
    jp = given.get("jhparams")
    if jp is not None and not isinstance(jp, dict):
        raise TypeError(f"jhparams must be a dict, got {jp!r}")
