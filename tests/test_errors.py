"""rebuild_exception: an exception described by a worker or a cache record (untrusted)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

import hither as hi
from hither.errors import rebuild_exception


class PlainError(Exception):
    """A custom exception built from plain arguments."""


class Outer:
    class InnerError(Exception):
        """A class nested in a class."""


class TwoArgs(Exception):
    def __init__(self, a, b):
        super().__init__(f"{a} {b}")


class Loud(Exception):
    """Counts its constructions: a refused type must never be constructed."""

    made = 0

    def __init__(self, *args):
        Loud.made += 1
        super().__init__(*args)


def test_builtin_types_keep_type_and_args():
    err = rebuild_exception("builtins.KeyError", "'k'", args=["k"])
    assert type(err) is KeyError and err.args == ("k",)
    err = rebuild_exception("builtins.FileNotFoundError", "x", args=[2, "No such file", "/a"])
    assert type(err) is FileNotFoundError and (err.errno, err.filename) == (2, "/a")
    assert type(rebuild_exception("ValueError", "bare name")) is ValueError


def test_a_class_of_an_imported_module_comes_back_as_itself():
    err = rebuild_exception(f"{__name__}.PlainError", "boom", args=["boom", 3])
    assert type(err) is PlainError and err.args == ("boom", 3)
    err = rebuild_exception(f"{__name__}.Outer.InnerError", "nested", args=["nested"])
    assert type(err) is Outer.InnerError


def test_the_workers_module_name_is_mapped_to_the_callers():
    # inside a runtime, the job's module is imported by its file name
    err = rebuild_exception("test_errors.PlainError", "boom", args=["boom"],
                            modules={"test_errors": __name__})
    assert type(err) is PlainError


def test_the_bundle_name_itself_is_never_looked_up_unmapped():
    """The worker's ``jobs`` is the job's file; a module of the caller that happens to be
    called ``jobs`` is another module."""
    sys.modules["hither_fake_bundle_name"] = sys.modules[__name__]
    try:
        err = rebuild_exception("hither_fake_bundle_name.PlainError", "x", args=["x"],
                                modules={"hither_fake_bundle_name": "tests.nonexistent"})
    finally:
        del sys.modules["hither_fake_bundle_name"]
    assert type(err) is hi.JobFailedError
    assert err.remote_type == "hither_fake_bundle_name.PlainError"


def test_a_module_not_imported_is_never_imported():
    name = "hither_never_imported_mod"
    assert name not in sys.modules
    err = rebuild_exception(f"{name}.Boom", "x", args=["x"])
    assert type(err) is hi.JobFailedError and err.remote_type == f"{name}.Boom"
    assert name not in sys.modules
    # a standard module that this process has not imported stays unimported
    code = textwrap.dedent("""
        import sys
        from hither.errors import rebuild_exception
        assert "tomllib" not in sys.modules and "xml.dom.minidom" not in sys.modules
        e1 = rebuild_exception("tomllib.TOMLDecodeError", "x", args=["x"])
        e2 = rebuild_exception("xml.dom.minidom.Node", "x", args=["x"])
        print(type(e1).__name__, type(e2).__name__,
              "tomllib" in sys.modules, "xml.dom.minidom" in sys.modules)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["JobFailedError", "JobFailedError", "False", "False"]


def test_module_getattr_hooks_are_not_called():
    """A module-level __getattr__ (PEP 562, e.g. lazy imports) is not a lookup path."""
    import types

    calls: list[str] = []
    mod = types.ModuleType("hither_lazy_mod")
    mod.__getattr__ = lambda name: calls.append(name) or PlainError  # type: ignore[method-assign]
    sys.modules["hither_lazy_mod"] = mod
    try:
        err = rebuild_exception("hither_lazy_mod.Anything", "x", args=["x"])
    finally:
        del sys.modules["hither_lazy_mod"]
    assert type(err) is hi.JobFailedError and calls == []


@pytest.mark.parametrize("type_name", [
    "builtins.print",                     # not a class
    "builtins.object",                    # not an exception
    "builtins.KeyboardInterrupt",         # BaseException only: would stop the caller
    "builtins.SystemExit",
    "os.environ",
    f"{__name__}.pytest",                 # a module
    "hither.errors.WorkerCrashedError",   # the engine's own errors cannot be forged
    "hither.errors.JobCancelledException",
    f"{__name__}.<locals>.Local",
    f"{__name__}..PlainError",
    "",
    ".",
    f"{__name__}.PlainError.__class__",
    f"{__name__}.PlainError.__mro__",
])
def test_anything_else_is_a_job_failed_error(type_name):
    err = rebuild_exception(type_name, "message", "tb text", args=["message"], job_label="j")
    assert type(err) is hi.JobFailedError
    assert err.remote_type == type_name and err.job_label == "j"
    assert err.traceback_text == "tb text"


def test_arguments_that_are_not_plain_are_not_passed():
    Loud.made = 0
    err = rebuild_exception(f"{__name__}.Loud", "the message", args=[{"not": "plain"}])
    assert type(err) is Loud and err.args == ("the message",) and Loud.made == 1
    err = rebuild_exception(f"{__name__}.Loud", "m", args="not a list")  # type: ignore[arg-type]
    assert type(err) is Loud and err.args == ("m",)


def test_a_class_that_cannot_be_built_from_its_args_is_a_job_failed_error():
    err = rebuild_exception(f"{__name__}.TwoArgs", "a b", args=["a b"])
    assert type(err) is hi.JobFailedError and err.remote_type.endswith("TwoArgs")
    assert "a b" in str(err)
