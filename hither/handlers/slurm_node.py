"""What runs on a Slurm node: one job of an array, or a pilot worker serving a batch.

Started by the batch scripts of :mod:`hither.handlers.slurm_script` with the driver's
interpreter and the driver's ``hither`` first on ``sys.path``::

    python -c '...' HITHER_ROOT array WORKDIR BATCH          # task $SLURM_ARRAY_TASK_ID
    python -c '...' HITHER_ROOT pilot WORKDIR BATCH [--rank N]   # srun task $SLURM_PROCID

Each job is looked up in the job cache first (a result that appeared since the driver
submitted it is a hit and does not run), then run as the local engine would run it, then
recorded in the job cache through :func:`hither.cacheflow.record` (the record the driver
would write), and its outcome file written for the driver (see
:mod:`hither.handlers.slurm_files`). Results therefore survive a driver that is gone.

An array task runs a host job in its own process (one interpreter per task, like any
Slurm job) and a runtime job on a worker of its runtime; if the task dies, Slurm's
accounting tells the driver how. A pilot worker keeps one warm worker
(:class:`~hither.handlers.parallel.ParallelJobHandler` of one) for the jobs it is given,
so crashes, timeouts and cancels end a job as they do on the local machine, and ends
after ``--idle`` seconds (default 30) without a job, or when its batch is told to stop.
"""

from __future__ import annotations

import argparse
import os
import pickle
import signal
import socket
import sys
import time
import warnings
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from ..launch import Launch, Outcome
from . import slurm_files as sf

#: seconds a pilot worker waits for a job before it ends
IDLE_EXIT = 30.0
#: seconds before its deadline that a SIGTERM counts as Slurm's time limit
TIMEOUT_SLACK = 5.0
_POLL_MIN, _POLL_MAX = 0.02, 0.5
_INFO_KEYS = ("worker_pid", "exit_code", "raised", "result_hash", "recorded", "runtime",
              "cache_hit")


# --------------------------------------------------------------------------- one job
def launch_of(spec: sf.NodeSpec) -> Launch:
    """The Launch of a job spec (its function loaded here)."""
    from hither_store import LocalStore

    from .._worker import _loads_function, add_sys_path

    add_sys_path(spec.sys_path)
    fn = _loads_function(spec.fn)
    data = spec.fn
    return Launch(job_id=spec.job_id, label=spec.label, fid=spec.fid, fn=fn,
                  fn_pickle=lambda: data, kwargs_pickle=spec.kwargs_pickle,
                  args_manifest=spec.args_manifest, timeout=spec.timeout,
                  sys_path=spec.sys_path, runtime=spec.runtime, code=spec.code,
                  store=LocalStore(spec.store_root) if spec.store_root else None)


def _settings(cache: sf.CacheSpec) -> Any:
    from ..cache import JobCache
    from ..config import Settings

    return Settings(job_cache=JobCache(path=cache.root, readonly=cache.readonly),
                    force_run=cache.force_run, rerun_failing=cache.rerun_failing,
                    cache_failing=cache.cache_failing)


def recheck(spec: sf.NodeSpec) -> bool:
    """Whether the job cache holds the job's result now (it then does not run)."""
    if spec.cache is None or spec.cache.force_run:
        return False
    from ..cacheflow import lookup

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a damaged record: the job runs, the driver warns
        return lookup(spec.cache.keyinfo, _settings(spec.cache)) is not None


def record(spec: sf.NodeSpec, launch: Launch, outcome: Outcome) -> None:
    """Store ``outcome`` in the job cache as the driver would; notes it in its info."""
    if spec.cache is None or spec.cache.readonly:
        return
    from ..cacheflow import record as put_record
    from ..fdef import FunctionDef

    c = spec.cache

    def inputs() -> tuple[str, dict[str, Any]]:
        if spec.args_manifest is not None:
            return "manifest", spec.args_manifest
        return "values", pickle.loads(spec.kwargs_pickle) if spec.kwargs_pickle else {}

    settings = _settings(c)
    try:
        result_hash = put_record(settings.job_cache, c.keyinfo, outcome, settings=settings,
                                 fdef=FunctionDef(launch.fn, c.name, c.version),
                                 label=spec.label, handler=spec.handler, inputs=inputs,
                                 runtime=launch.runtime)
    except Exception as e:  # noqa: BLE001 - the driver records it then
        print(f"hither: could not record job {spec.label!r}: {type(e).__name__}: {e}",
              file=sys.stderr)
        return
    if not outcome.ok or result_hash is not None:  # else the driver tries (and says why)
        outcome.info["recorded"] = True
        outcome.info["result_hash"] = result_hash


def outcome_data(outcome: Outcome) -> dict[str, Any]:
    """An Outcome as an outcome file holds it (values and exceptions pickled as a host
    worker sends them)."""
    from .._worker import _dumps, _error_payload

    info = {k: outcome.info[k] for k in _INFO_KEYS if k in outcome.info}
    info["node"] = socket.gethostname()
    manifest = outcome.info.get("result_manifest")
    payload: Any = None
    ok = outcome.ok
    if ok and manifest is None:
        try:
            payload = _dumps(outcome.value)
        except Exception as e:  # noqa: BLE001
            ok = False
            bad = TypeError(f"the job's return value of type {type(outcome.value).__qualname__}"
                            f" cannot be sent back from the node: {e}")
            payload = _error_payload(bad, "")
    elif not ok:
        err = outcome.error or RuntimeError("the job failed")
        payload = _error_payload(err, outcome.traceback_text or "",
                                 bool(outcome.info.get("raised")))
    return {"kind": "done", "ok": ok, "payload": payload, "manifest": manifest,
            "lines": [tuple(x) for x in outcome.console], "start": outcome.start_time,
            "end": outcome.end_time, "info": info}


def finish(layout: sf.Layout, spec: sf.NodeSpec, launch: Launch, outcome: Outcome) -> None:
    """Record the outcome in the job cache and write its outcome file."""
    if not sf_cancelled(layout, spec.job_id):
        record(spec, launch, outcome)
    sf.write_outcome(layout, spec.job_id, outcome_data(outcome))


def sf_cancelled(layout: sf.Layout, job_id: str) -> bool:
    return os.path.exists(layout.cancel(job_id))


def cached(layout: sf.Layout, job_id: str) -> None:
    sf.write_outcome(layout, job_id, {"kind": "cached", "info": {"node": socket.gethostname()}})


def run_here(launch: Launch) -> Outcome:
    """Run ``launch`` in this process (host) or on a worker of its runtime."""
    if launch.runtime is None:
        from .inline import execute_inline

        out = execute_inline(launch)
        out.info["worker_pid"] = os.getpid()
        return out
    from .stdio import StdioWorker

    try:
        worker = StdioWorker(launch.runtime, launch.store)
    except Exception as e:  # noqa: BLE001 - e.g. a missing image
        return Outcome(False, error=e)
    try:
        return worker.call(launch)
    except Exception as e:  # noqa: BLE001
        return Outcome(False, error=e)
    finally:
        worker.stop()


# --------------------------------------------------------------------------- array task
def run_array_task(layout: sf.Layout, batch: str, index: int) -> int:
    """Run the ``index``-th job of an array batch; the process exit code."""
    names = (layout.batch(batch) / "specs.txt").read_text().split()
    job_id = names[index]
    if sf_cancelled(layout, job_id):
        return 0
    spec = sf.read_spec(layout.spec(job_id))
    if recheck(spec):
        cached(layout, job_id)
        return 0
    try:
        launch = launch_of(spec)
    except Exception as e:  # noqa: BLE001 - e.g. a module missing on this node
        from .._worker import _format_exception

        out = Outcome(False, error=e, traceback_text=_format_exception(e))
        sf.write_outcome(layout, job_id, outcome_data(out))
        return 0
    _note_timeout(layout.batch(batch), index)
    outcome = run_here(launch)
    finish(layout, spec, launch, outcome)
    return 0


def _note_timeout(folder: Path, index: int) -> None:
    """Slurm stops a task at its time limit with SIGTERM: a SIGTERM at or past the task's
    deadline leaves a note that the task timed out (``squeue`` cannot tell), then ends the
    process as SIGTERM would have."""
    end = sf.deadline(folder, os.environ.get("SLURM_JOB_END_TIME"))
    if end is None:
        return

    def on_term(signum: int, frame: Any) -> None:
        if time.time() >= end - TIMEOUT_SLACK:
            try:
                sf.mark_timed_out(folder, index)
            except OSError:
                pass
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_term)


# --------------------------------------------------------------------------- pilot worker
class Pilot:
    """One pilot worker: takes the jobs put in its inbox, one at a time, on a warm worker."""

    def __init__(self, layout: sf.Layout, batch: str, rank: int,
                 idle_exit: float = IDLE_EXIT) -> None:
        from .parallel import ParallelJobHandler

        self.layout = layout
        self.batch = batch
        self.rank = rank
        self.idle_exit = idle_exit
        self.dir = layout.pilot(batch, rank)
        self.inbox = layout.inbox(batch, rank)
        os.makedirs(self.inbox, mode=0o700, exist_ok=True)
        self.handler = ParallelJobHandler(1)
        self.running: tuple[sf.NodeSpec, Launch, Future[Outcome]] | None = None

    def serve(self) -> None:
        sf.touch(self.dir / "ready", f"{socket.gethostname()} {os.getpid()}\n")
        last_work = time.monotonic()
        poll = _POLL_MIN
        try:
            while not os.path.exists(self.layout.stop(self.batch)):
                busy = self.step()
                now = time.monotonic()
                if busy:
                    last_work, poll = now, _POLL_MIN
                elif self.running is None and now - last_work > self.idle_exit:
                    return
                else:
                    poll = min(poll * 1.5, _POLL_MAX) if self.running is None else _POLL_MIN
                time.sleep(poll)
        finally:
            self.handler.shutdown(wait=False, cancel=True)
            sf.touch(self.dir / "gone", f"{socket.gethostname()} {os.getpid()}\n")

    def step(self) -> bool:
        """One turn; True when something happened."""
        if self.running is not None:
            spec, launch, fut = self.running
            if fut.done():
                self.running = None
                try:
                    finish(self.layout, spec, launch, fut.result())
                except Exception as e:  # noqa: BLE001 - this job fails, the worker goes on
                    from .._worker import _format_exception

                    out = Outcome(False, error=e, traceback_text=_format_exception(e))
                    sf.write_outcome(self.layout, spec.job_id, outcome_data(out))
                return True
            if sf_cancelled(self.layout, spec.job_id):
                self.handler.cancel(spec.job_id)
            return False
        try:
            names = sorted(os.listdir(self.inbox))
        except OSError:
            return False
        for name in names:
            if name.startswith("."):
                continue
            job_id = name.partition(".")[2]
            sf.remove_quietly(self.inbox / name)
            if job_id and not sf_cancelled(self.layout, job_id):
                self.start(job_id)
                return True
        return False

    def start(self, job_id: str) -> None:
        try:
            spec = sf.read_spec(self.layout.spec(job_id))
            if recheck(spec):
                cached(self.layout, job_id)
                return
            launch = launch_of(spec)
        except Exception as e:  # noqa: BLE001 - this job fails, the worker goes on
            from .._worker import _format_exception

            out = Outcome(False, error=e, traceback_text=_format_exception(e))
            sf.write_outcome(self.layout, job_id, outcome_data(out))
            return
        self.running = (spec, launch, self.handler.submit(launch))


# --------------------------------------------------------------------------- entry point
def _setup(layout: sf.Layout) -> None:
    env = layout.read_env()
    here = sys.path[0] if sys.path else None
    sys.path[:] = list(env["sys_path"])
    if here and here not in sys.path:
        sys.path.append(here)  # hither itself, if the driver's path did not hold it
    try:
        os.chdir(env["cwd"])
    except OSError:
        pass


def main(argv: list[str] | None = None) -> int:
    """``array WORKDIR BATCH`` or ``pilot WORKDIR BATCH [--rank N] [--idle S]``."""
    parser = argparse.ArgumentParser(prog="hither.handlers.slurm_node")
    parser.add_argument("mode", choices=("array", "pilot"))
    parser.add_argument("workdir")
    parser.add_argument("batch")
    parser.add_argument("--rank", type=int, default=None)
    parser.add_argument("--idle", type=float, default=IDLE_EXIT)
    args = parser.parse_args(argv)
    layout = sf.Layout(Path(args.workdir))
    _setup(layout)
    if args.mode == "array":
        return run_array_task(layout, args.batch, int(os.environ["SLURM_ARRAY_TASK_ID"]))
    rank = args.rank if args.rank is not None else int(os.environ.get("SLURM_PROCID", "0"))
    Pilot(layout, args.batch, rank, args.idle).serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
