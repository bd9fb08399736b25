"""What the contract suite runs on: a :class:`Case` is one handler x one runtime.

A case owns its handler for the tests of one module (warm workers are reused from test to
test, as users' programs reuse them) and checks, when it closes, that nothing of its
workers is left: no worker container labelled with this process's pid in Docker or
Podman, no worker process started since the case began.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator
from functools import cache
from typing import Any

import hither as hi
from hither.handlers.base import JobHandler

from .components import require

#: where jobs run: the caller's interpreter, or a runtime
RUNTIMES = ("host", "docker", "podman", "apptainer", "venv")
CONTAINERS = ("docker", "podman", "apptainer")

IMAGE = os.environ.get("HITHER_TEST_IMAGE", "local/py3numpy:bookworm")
IMAGE_ALT = os.environ.get("HITHER_TEST_IMAGE_ALT", "local/py3numpy:alt")
IMAGE_NONUMPY = os.environ.get("HITHER_TEST_IMAGE_NONUMPY", "local/py3:bookworm")
#: numpy in the test image (local/py3numpy:bookworm is Debian bookworm's python3-numpy)
IMAGE_NUMPY_VERSION = os.environ.get("HITHER_TEST_IMAGE_NUMPY_VERSION", "1.24.2")
VENV_REQUIREMENTS = ["numpy==1.26.4"]
OWNER_LABEL = "hither.owner_pid"

#: the cases this repository runs the contract over (ids for ``standard_case``)
STANDARD_CASES = (
    "host-inline", "host-parallel-spawn", "host-parallel-forkserver",
    "docker-inline", "docker-parallel", "podman-inline", "podman-parallel",
    "apptainer-inline", "apptainer-parallel", "venv-inline", "venv-parallel",
)


def runtime_settings(runtime: str) -> dict[str, Any]:
    """The ``hi.Config`` arguments that make jobs run in ``runtime``."""
    if runtime == "host":
        return {}
    if runtime in ("docker", "podman"):
        return {"container": f"docker://{IMAGE}", "jhparams": {"container_engine": runtime}}
    if runtime == "apptainer":
        return {"container": os.environ["HITHER_TEST_SANDBOX"]}
    if runtime == "venv":
        return {"environment": hi.PythonEnv(VENV_REQUIREMENTS)}
    raise ValueError(f"unknown runtime {runtime!r}; one of {RUNTIMES}")


def require_runtime(runtime: str) -> None:
    """Skip (developer machine) or fail (``CI=true``) unless ``runtime`` is usable here."""
    if runtime in ("docker", "podman", "apptainer"):
        require(runtime, (IMAGE,))
    elif runtime == "venv":
        require("uv")


def runtime_numpy_version(runtime: str) -> str | None:
    """The numpy version jobs see in ``runtime`` (None: numpy is not installed)."""
    if runtime == "host":
        try:
            import numpy
        except ImportError:
            return None
        return str(numpy.__version__)
    if runtime == "venv":
        return VENV_REQUIREMENTS[0].split("==")[1]
    return IMAGE_NUMPY_VERSION


class Case:
    """One handler x one runtime, as the contract's ``hc`` fixture.

    ``make_handler`` makes the handler under test (called once, and again for each
    :meth:`fresh` case); ``runtime`` is one of :data:`RUNTIMES`. ``slots`` is how many jobs
    the handler runs at once (the tests fill it to get a job queued). Use it as a context
    manager: leaving it shuts the handler down and checks that no worker is left.
    ``roots`` gives the processes whose descendants (and containers) are the handler's
    workers, when they are not this process's (e.g. the dask workers of a cluster started
    elsewhere on this machine); it is called each time workers are counted.

    A handler that runs jobs elsewhere (cluster tasks) names them with ``remote_workers``:
    a function that returns an id for each such worker of this process alive now (e.g.
    ``"slurm:1234_5"``); they count as the case's workers for the leftover checks. With
    ``reuses_workers=False`` every job runs in a process of its own (no warm workers).
    """

    def __init__(self, make_handler: Callable[[], JobHandler], runtime: str = "host", *,
                 name: str | None = None, slots: int = 1,
                 settings: dict[str, Any] | None = None,
                 numpy_version: str | None = None, reuses_workers: bool = True,
                 roots: Callable[[], Iterable[int]] | None = None,
                 remote_workers: Callable[[], Iterable[str]] | None = None) -> None:
        if runtime not in RUNTIMES:
            raise ValueError(f"unknown runtime {runtime!r}; one of {RUNTIMES}")
        self.make_handler = make_handler
        self.runtime = runtime
        self.settings = runtime_settings(runtime) if settings is None else dict(settings)
        self.slots = slots
        self.reuses_workers = reuses_workers
        self.remote_workers = remote_workers
        self.numpy_version = numpy_version if numpy_version is not None else \
            runtime_numpy_version(runtime)
        self._handler: JobHandler | None = None
        self._inline: bool | None = None
        self.name = name or runtime
        self.roots = roots
        self._before: frozenset[str] | None = None

    # ------------------------------------------------------------------ what it is
    @property
    def handler(self) -> JobHandler:
        """The handler under test (made on first use)."""
        if self._handler is None:
            if self._before is None:
                self._before = self._ids()
            self._handler = self.make_handler()
            self._inline = self._handler.drives_in_caller
        return self._handler

    @property
    def inline(self) -> bool:
        """Jobs run in the thread that waits for them (only when waited for)."""
        if self._inline is None:
            return self.handler.drives_in_caller
        return self._inline

    @property
    def host(self) -> bool:
        """Jobs run on the caller's interpreter (not in a runtime): any picklable value."""
        return self.runtime == "host"

    @property
    def container(self) -> bool:
        """Jobs run in a container (Docker, Podman, Apptainer)."""
        return self.runtime in CONTAINERS

    @property
    def in_process(self) -> bool:
        """Jobs run inside this very process (the inline handler on the host): a running
        job cannot be stopped, and a job that exits would end the caller."""
        return self.inline and self.host

    @property
    def shares_files(self) -> bool:
        """Jobs see the caller's files under the same paths (not in an isolated container)."""
        return self.runtime in ("host", "venv")

    def config(self, **more: Any) -> hi.Config:
        """A ``hi.Config`` running jobs on this case's handler in its runtime."""
        return hi.Config(**{"job_handler": self.handler, **self.settings, **more})

    # ------------------------------------------------------------------ life
    @contextlib.contextmanager
    def fresh(self) -> Iterator[Case]:
        """A case with a new handler (no warm worker) of the same kind, closed after.

        This case's handler is closed first (and checked for leftovers): no worker of it may
        start or stop while the fresh one is checked. The next use makes a new one."""
        self.close()
        case = Case(self.make_handler, self.runtime, name=self.name, slots=self.slots,
                    roots=self.roots,
                    settings=self.settings, numpy_version=self.numpy_version,
                    reuses_workers=self.reuses_workers, remote_workers=self.remote_workers)
        with case:
            yield case

    def _engines(self) -> tuple[str, ...]:
        return (self.runtime,) if self.runtime in ("docker", "podman") else ()

    def _ids(self) -> frozenset[str]:
        ids = worker_ids(self._engines(), None if self.roots is None else tuple(self.roots()))
        if self.remote_workers is not None:
            ids |= frozenset(self.remote_workers())
        return ids

    def workers(self) -> frozenset[str]:
        """Workers of this process started since the case's handler was made (containers
        of its engine, processes, see :func:`worker_ids`, and ``remote_workers``)."""
        return self._ids() - (self._before or frozenset())

    def assert_idle(self, timeout: float = 15) -> None:
        """Fail unless every worker started by this case stops within ``timeout`` seconds
        (after a job's worker was killed, while no job waits)."""
        left = wait_gone(self._before or frozenset(), timeout, self._engines(), self._ids)
        assert not left, f"{self.name}: workers still alive: {describe(left)}"

    def settle(self, timeout: float = 30) -> None:
        """After a test: cancel the jobs it left running (their workers are stopped)."""
        from hither.scheduler import live_jobs, wait_all

        jobs = live_jobs()
        for job in jobs:
            job.cancel()
        wait_all(timeout, jobs)
        if any(not j.done() for j in jobs):
            hi.reset()

    def close(self, check: bool = True) -> None:
        """Shut the handler down; fail (``check``) when a worker container or process
        started by this case is left, after removing it."""
        handler, self._handler = self._handler, None
        if handler is None:
            return
        handler.shutdown(wait=False, cancel=True)
        left = wait_gone(self._before or frozenset(), 15, self._engines(), self._ids)
        what = describe(left)
        if left:
            remove_workers(left)  # one failure must not spill into the next tests
        assert not (check and left), \
            f"{self.name}: workers left after the handler was shut down: {what}"

    def __enter__(self) -> Case:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        self.close(check=exc_type is None)  # a failing test keeps its own error

    def __repr__(self) -> str:
        return f"<Case {self.name}>"


def standard_case(name: str) -> Case:
    """The case ``name`` of :data:`STANDARD_CASES` (``"<runtime>-<handler>"``); skips or,
    under ``CI=true``, fails when its runtime is missing."""
    runtime, _, kind = name.partition("-")
    if name not in STANDARD_CASES:
        raise ValueError(f"unknown case {name!r}; one of {STANDARD_CASES}")
    require_runtime(runtime)
    if kind == "inline":
        return Case(hi.DefaultJobHandler, runtime, name=name)
    method = kind.partition("-")[2] or None
    return Case(lambda: hi.ParallelJobHandler(2, start_method=method), runtime, name=name,
                slots=2)


# ---------------------------------------------------------------------- leftovers
def containers_of(pid: int, engines: tuple[str, ...] = ("docker", "podman")
                  ) -> dict[str, list[str]]:
    """Worker containers labelled with owner ``pid``, per engine (engines present only)."""
    found: dict[str, list[str]] = {}
    flt = ["--filter", "label=hither.worker=1", "--filter", f"label={OWNER_LABEL}={pid}"]
    for engine in engines:
        if not _cli_usable(engine):
            continue
        r = subprocess.run([engine, "ps", "-a", *flt, "-q"], capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        found[engine] = r.stdout.split()
    return found


@cache
def _cli_usable(engine: str) -> bool:
    """Whether ``docker ps`` / ``podman ps`` (local CLI, with CONTAINERS_CONF) answers."""
    if shutil.which(engine) is None:
        return False
    try:
        r = subprocess.run([engine, "ps", "-q"], capture_output=True, timeout=60)
    except subprocess.TimeoutExpired:
        return False
    return r.returncode == 0


def leftovers(pid: int, engines: tuple[str, ...] = ("docker", "podman")
              ) -> dict[str, list[str]]:
    """The engines that hold worker containers of ``pid``, and their ids."""
    return {k: v for k, v in containers_of(pid, engines).items() if v}


def wait_no_containers(pid: int, timeout: float) -> dict[str, list[str]]:
    """Poll until no container of ``pid`` remains; returns what is left at the end."""
    deadline = time.monotonic() + timeout
    while True:
        left = leftovers(pid)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.5)


def remove_containers(found: dict[str, list[str]]) -> None:
    """Force-remove containers (so that one failure does not spill into the next tests)."""
    for engine, ids in found.items():
        if ids:
            # podman would first wait 10 s for a worker (PID 1) to obey SIGTERM
            now = ["-t", "0"] if engine == "podman" else []
            subprocess.run([engine, "rm", "-f", *now, *ids], capture_output=True, timeout=120)


def _processes() -> dict[int, tuple[int, str, str]]:
    """pid -> (parent pid, state, command line) of every process."""
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        out[int(entry)] = (int(fields[1]), fields[0], cmd)
    return out


#: long-lived helpers of the standard library or hither that start workers: the helper is
#: not a worker, what it forks is
_INFRASTRUCTURE = ("multiprocessing.forkserver", "multiprocessing.resource_tracker",
                   "_hostworker.py forkserver")


def worker_processes(parent: int | None = None) -> list[tuple[int, str]]:
    """Live (non-zombie) processes below ``parent`` (default: this process), except the
    fork servers and resource trackers themselves: workers, container clients and what
    they started."""
    parent = os.getpid() if parent is None else parent
    procs = _processes()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _state, _cmd) in procs.items():
        children.setdefault(ppid, []).append(pid)

    def helper(pid: int) -> bool:
        return pid in procs and any(x in procs[pid][2] for x in _INFRASTRUCTURE)

    out = []
    todo = list(children.get(parent, []))
    while todo:
        pid = todo.pop()
        todo.extend(children.get(pid, []))
        ppid, state, cmd = procs[pid]
        if state != "Z" and not (helper(pid) and not helper(ppid)):
            out.append((pid, cmd))
    return out


def worker_ids(engines: tuple[str, ...] = ("docker", "podman"),
               roots: Iterable[int] | None = None) -> frozenset[str]:
    """Every worker of this process now: ``container:<engine>:<id>`` (of ``engines``) and
    ``pid:<pid>`` (:func:`worker_processes`). ``roots``: the processes whose workers these
    are instead of this one (a handler whose workers run under other processes of this
    machine, such as the dask workers of a cluster started elsewhere)."""
    ids: set[str] = set()
    for root in (os.getpid(),) if roots is None else roots:
        ids |= {f"container:{engine}:{c}" for engine, cs in leftovers(root, engines).items()
                for c in cs}
        ids |= {f"pid:{pid}" for pid, _cmd in worker_processes(root)}
    return frozenset(ids)


def remove_workers(ids: frozenset[str]) -> None:
    """Force-remove the containers and kill the processes of :func:`worker_ids` ids."""
    containers: dict[str, list[str]] = {}
    for wid in ids:
        kind, _, rest = wid.partition(":")
        if kind == "container":
            engine, _, cid = rest.partition(":")
            containers.setdefault(engine, []).append(cid)
        elif kind == "pid":
            try:
                os.kill(int(rest), signal.SIGKILL)
            except OSError:
                pass
    remove_containers(containers)


def describe(ids: frozenset[str]) -> str:
    """Worker ids with the command line of each process (for failure messages)."""
    procs = _processes()
    out = []
    for wid in sorted(ids):
        kind, _, rest = wid.partition(":")
        pid = int(rest) if kind == "pid" else 0
        chain: list[str] = []
        while pid in procs and pid != os.getpid() and len(chain) < 6:
            ppid, state, cmd = procs[pid]
            chain.append(f"{pid} [{state}] {cmd.strip()[:120]}")
            pid = ppid
        out.append(wid + (" (" + " <- ".join(chain) + ")" if chain else ""))
    return "; ".join(out)


def wait_gone(allowed: frozenset[str], timeout: float,
              engines: tuple[str, ...] = ("docker", "podman"),
              ids: Callable[[], frozenset[str]] | None = None) -> frozenset[str]:
    """Poll until every worker of this process (:func:`worker_ids`, or ``ids()``) is in
    ``allowed``; returns the others."""
    deadline = time.monotonic() + timeout
    while True:
        left = (ids() if ids is not None else worker_ids(engines)) - allowed
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.2)
