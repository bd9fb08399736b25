"""@hi.function: registry semantics, direct calls, .run() argument checks, decorators."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
import uuid
import warnings

import pytest
from jobfuncs import jf_add, jf_identity

import hither as hi


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


def load_module(path, modname=None):
    """Import the file at ``path`` as a fresh module (a new module object every call)."""
    modname = modname or unique("mod")
    # a rewrite of the same size within the same second would otherwise load the old .pyc
    with contextlib.suppress(FileNotFoundError):
        os.remove(importlib.util.cache_from_source(str(path)))
    spec = importlib.util.spec_from_file_location(modname, str(path))
    module = importlib.util.module_from_spec(spec)
    sys.modules[modname] = module
    try:
        spec.loader.exec_module(module)
    finally:
        sys.modules.pop(modname, None)
    return module


FUNC_SRC = '''
import hither as hi


@hi.function("{name}", "{version}")
def {name}(x):
    return ("{tag}", x)
'''


def write_func(path, name, version, tag):
    path.write_text(FUNC_SRC.format(name=name, version=version, tag=tag))
    return path


# ----------------------------------------------------------------------------- registry
def test_name_must_match_function_name():
    def actual_name(x):
        return x

    with pytest.raises(ValueError, match="actual_name"):
        hi.function("another_name", "1")(actual_name)
    with pytest.raises(hi.FunctionNotRegisteredError):
        hi.get_function("another_name")


def test_same_name_other_file_other_version_is_refused(tmp_path):
    name = unique("dup")
    load_module(write_func(tmp_path / "first.py", name, "1.0", "first"))
    with pytest.raises(hi.DuplicateFunctionException):
        load_module(write_func(tmp_path / "second.py", name, "2.0", "second"))
    assert hi.get_function(name)(1) == ("first", 1)
    assert hi.registered_functions()[name] == "1.0"


def test_same_name_other_file_same_version_warns(tmp_path):
    name = unique("dupwarn")
    load_module(write_func(tmp_path / "first.py", name, "1.0", "first"))
    with pytest.warns(UserWarning, match=name):
        load_module(write_func(tmp_path / "second.py", name, "1.0", "second"))


def test_redefinition_in_the_same_file_replaces(tmp_path):
    """R2: a notebook cell run again (or a module reloaded) registers the newest object."""
    name = unique("redef")
    path = tmp_path / "cell.py"
    old = getattr(load_module(write_func(path, name, "1", "old")), name)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning for the same file
        new = getattr(load_module(write_func(path, name, "2", "new")), name)
    assert new is not old
    assert hi.get_function(name) is new
    assert hi.registered_functions()[name] == "2"
    assert hi.run(name, x=5).result() == ("new", 5)


def test_get_function_and_run_by_name():
    assert hi.get_function("jf_add") is jf_add
    job = hi.run("jf_add", x=2, y=3)
    assert isinstance(job, hi.Job)
    assert job.result() == 5
    assert hi.registered_functions()["jf_add"] == "1"


def test_unknown_name():
    name = unique("nope")
    with pytest.raises(hi.FunctionNotRegisteredError, match=name):
        hi.get_function(name)
    with pytest.raises(KeyError):
        hi.run(name, x=1)
    assert issubclass(hi.FunctionNotRegisteredError, hi.HitherError)


# ----------------------------------------------------------------------------- calls
def test_decorator_returns_the_function_and_direct_call_is_plain():
    def plain_add_fn(a, b=1):
        return a + b

    name = "plain_add_fn"
    decorated = hi.function(name, "1")(plain_add_fn)
    assert decorated is plain_add_fn
    assert callable(decorated.run)
    assert decorated(2, b=3) == 5
    assert jf_add(2, 3) == 5
    assert not isinstance(jf_add(1), hi.Job)


def test_direct_call_does_not_create_jobs(tmp_path):
    from jobfuncs import count_lines, jf_counted

    counter = tmp_path / "c.txt"
    assert jf_counted(str(counter), 1) == 1
    hi.wait()
    assert count_lines(counter) == 1


def test_run_with_unknown_keyword_raises_at_run():
    with pytest.raises(TypeError, match="z"):
        jf_add.run(x=1, z=2)


def test_run_with_missing_required_argument_raises_at_run():
    with pytest.raises(TypeError, match="x"):
        jf_add.run(y=2)


def test_run_with_too_many_positional_arguments_raises():
    with pytest.raises(TypeError):
        jf_add.run(1, 2, 3)
    with pytest.raises(TypeError):
        jf_add.run(1, x=2)  # x given twice


def test_positional_arguments_are_bound_by_name():
    job = jf_add.run(2, 40)
    assert job.kwargs == {"x": 2, "y": 40}
    assert job.result() == 42
    assert jf_add.run(7, y=1).kwargs == {"x": 7, "y": 1}
    assert jf_identity.run("v").result() == "v"


def test_varkw_function_accepts_any_keyword():
    def takes_any_kw(**kw):
        return sorted(kw)

    f = hi.function("takes_any_kw", "1")(takes_any_kw)
    assert f.run(a=1, b=2).result() == ["a", "b"]


# ----------------------------------------------------------------------------- decorators
def test_container_decorator_and_argument():
    def in_ctr_a(x):
        return x

    def in_ctr_b(x):
        return x

    a = hi.container("docker://python:3.11-slim")(hi.function("in_ctr_a", "1")(in_ctr_a))
    b = hi.function("in_ctr_b", "1", container="docker://python:3.12-slim")(in_ctr_b)
    assert a._hither_container == "docker://python:3.11-slim"
    assert b._hither_container == "docker://python:3.12-slim"
    # stacking order does not matter
    def in_ctr_c(x):
        return x

    c = hi.function("in_ctr_c", "1")(hi.container("docker://img:1")(in_ctr_c))
    assert c._hither_container == "docker://img:1"


@pytest.mark.parametrize("bad", ["python:3.11", "", None, 5, ["docker://x:1"]])
def test_container_validates(bad):
    def ctr_bad(x):
        return x

    with pytest.raises((TypeError, ValueError)):
        hi.container(bad)(ctr_bad)
    if bad is not None:  # container=None is the default of hi.function: no container
        with pytest.raises((TypeError, ValueError)):
            hi.function("ctr_bad", "1", container=bad)(ctr_bad)
    with pytest.raises(hi.FunctionNotRegisteredError):
        hi.get_function("ctr_bad")


def test_container_is_resolved_from_config():
    def ctr_resolve(x):
        return x

    f = hi.function("ctr_resolve", "1", container="docker://own:1")(ctr_resolve)
    with hi.Config(job_handler=hi.DefaultJobHandler()):
        assert f.run(x=1).get_container() is None
        with hi.Config(container=True):
            assert f.run(x=1).get_container() == "docker://own:1"
            assert jf_add.run(x=1).get_container() is None  # declares no container
        with hi.Config(container="docker://other:2"):
            assert f.run(x=1).get_container() == "docker://other:2"
        with hi.Config(container=False):
            assert f.run(x=1).get_container() is None
    hi.reset()  # these jobs are never run


def test_additional_files_and_local_modules():
    def with_files(x):
        return x

    f = hi.additional_files(["*.txt", "data/*.csv"])(
        hi.local_modules(["../mods/pkg", "helper.py"])(hi.function("with_files", "1")(with_files)))
    assert f._hither_additional_files == ["*.txt", "data/*.csv"]
    assert f._hither_local_modules == ["../mods/pkg", "helper.py"]
    assert f(3) == 3


@pytest.mark.parametrize("decorator", [hi.additional_files, hi.local_modules])
def test_path_decorators_want_a_list(decorator):
    with pytest.raises(TypeError):
        decorator("*.txt")
    with pytest.raises(TypeError):
        decorator(None)


def test_opts_is_a_placeholder():
    def with_opts(x):
        return x

    f = hi.opts(example_opt=1)(with_opts)
    assert f is with_opts


def test_notebook_cells_redefine_without_exception_or_warning():
    """A later or re-run notebook cell (same module __main__, another cell file) replaces
    the function, even with a new version, silently."""
    import linecache

    name = unique("cellfn")
    ns = {"__name__": "__main__", "hi": hi}
    for cell, version in (("/tmp/ipykernel_1/100.py", "1"), ("/tmp/ipykernel_1/101.py", "2"),
                          ("/tmp/ipykernel_1/101.py", "2")):
        src = FUNC_SRC.format(name=name, version=version, tag=cell)
        linecache.cache[cell] = (len(src), None, src.splitlines(True), cell)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            exec(compile(src, cell, "exec"), ns)
        assert hi.registered_functions()[name] == version
        assert hi.run(name, x=1).result() == (cell, 1)


def test_builtins_identity_and_noop_run_on_the_host():
    assert hi.identity.run(x=[1, (2,)]).result() == [1, (2,)]
    assert hi.noop.run().result() is None
    assert hi.get_function("identity") is hi.identity
    assert hi.identity.run(x=1).get_container() is None


def test_a_user_function_named_like_a_builtin_replaces_it(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mod = load_module(write_func(tmp_path / "mine.py", "noop", "9.9", "mine"))
    try:
        assert hi.get_function("noop") is mod.noop
    finally:
        registry = importlib.import_module("hither.function")._registry
        registry["noop"] = (hi.noop._hither, None)  # the built-in back, for other tests
