"""The public names of the package."""

from __future__ import annotations

import concurrent.futures as cf

import hither
import hither as hi

KEPT_FROM_0_4_2 = [
    "function", "container", "additional_files", "local_modules", "opts",
    "Config", "wait", "reset", "get_function", "run",
    "TemporaryDirectory", "ShellScript", "FileLock", "ConsoleCapture",
    "DefaultJobHandler", "ParallelJobHandler", "SlurmJobHandler",
    "JobStatus", "JobCancelledException", "DuplicateFunctionException",
]


def test_all_is_sorted_and_unique():
    assert hither.__all__ == sorted(hither.__all__)
    assert len(set(hither.__all__)) == len(hither.__all__)


def test_every_name_in_all_exists():
    missing = [name for name in hither.__all__ if not hasattr(hither, name)]
    assert missing == []


def test_star_import_gives_the_names_of_all():
    namespace: dict = {}
    exec("from hither import *", namespace)
    assert set(hither.__all__) <= set(namespace)


def test_0_4_2_names_are_kept():
    for name in KEPT_FROM_0_4_2:
        assert hasattr(hither, name), name
        assert name in hither.__all__, name


def test_kinds_of_the_kept_names():
    for name in ["function", "container", "additional_files", "local_modules", "opts",
                 "wait", "reset", "get_function", "run"]:
        assert callable(getattr(hi, name)), name
    assert issubclass(hi.JobCancelledException, Exception)
    assert issubclass(hi.JobCancelledException, cf.CancelledError)
    assert issubclass(hi.DuplicateFunctionException, Exception)
    assert {s.name for s in hi.JobStatus} >= {"ERROR", "PENDING", "QUEUED", "RUNNING",
                                               "FINISHED"}
    assert hi.JobStatus.FINISHED.value == "finished" and hi.JobStatus.ERROR.value == "error"
    for cls in (hi.DefaultJobHandler, hi.ParallelJobHandler):
        assert hasattr(cls, "__enter__") and hasattr(cls, "__exit__")


def test_exception_tree():
    for name in ["DuplicateFunctionException", "FunctionNotRegisteredError",
                 "SerializationError", "JobError", "JobCancelledException"]:
        assert issubclass(getattr(hi, name), hi.HitherError), name
    for name in ["JobFailedError", "UpstreamJobError", "JobTimeoutError",
                 "WorkerCrashedError", "HandlerClosedError"]:
        assert issubclass(getattr(hi, name), hi.JobError), name
    assert issubclass(hi.FunctionNotRegisteredError, KeyError)
    assert issubclass(hi.SerializationError, TypeError)
    assert issubclass(hi.JobTimeoutError, TimeoutError)


def test_version():
    assert isinstance(hi.__version__, str) and hi.__version__.count(".") >= 2


def test_public_names_stay_themselves_after_every_submodule_is_imported():
    # importing a submodule binds it on the package: a public name that is also a
    # submodule's name would turn into that module once anything imports it
    import subprocess
    import sys

    code = (
        "import importlib, pkgutil, types, hither\n"
        "for m in pkgutil.walk_packages(hither.__path__, 'hither.'):\n"
        "    if '_shim' not in m.name and not m.name.endswith('__main__'):\n"
        "        importlib.import_module(m.name)\n"
        "bad = [n for n in hither.__all__ if isinstance(getattr(hither, n), types.ModuleType)]\n"
        "print(bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_import_and_help_load_no_heavy_module():
    # start-up cost: rich, docker and numpy load only when a command or a runtime needs them
    import subprocess
    import sys

    code = (
        "import contextlib, io, sys\n"
        "import hither\n"
        "from hither.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    assert main(['--help']) == 0\n"
        "print([m for m in ('rich', 'docker', 'numpy', 'asyncio') if m in sys.modules])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
