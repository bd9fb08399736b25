"""Tests for hither.codeid: what changes a function's code identity and what does not.

Each fixture module is written to its own file and imported under a unique name, so "editing"
a module means importing an edited copy; the module name is not part of the identity.
"""

from __future__ import annotations

import functools
import importlib.util
import itertools
import json
import os
import runpy
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import ModuleType

import pytest
from hither_store import _statmemo

from hither import codeid
from hither.codeid import (
    MAX_CONSTANT_ELEMENTS,
    CodeIdentity,
    clear_code_identity_cache,
    code_identity,
    source_files,
)

_counter = itertools.count()


@pytest.fixture
def load(tmp_path: Path):
    """load(source, directory=None) -> a freshly imported module with that source."""
    names: list[str] = []

    def _load(source: str, directory: Path | None = None) -> ModuleType:
        name = f"_codeid_fixture_{os.getpid()}_{next(_counter)}"
        directory = directory or tmp_path / name
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{name}.py"
        path.write_text(textwrap.dedent(source))
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        names.append(name)
        spec.loader.exec_module(module)
        return module

    yield _load
    for name in names:
        sys.modules.pop(name, None)


def ident(load, source: str, fn: str = "f", **kw) -> CodeIdentity:
    return code_identity(getattr(load(source), fn), **kw)


BASE = """
    import math
    import numpy as np
    from math import sqrt

    SCALE = 3
    UNUSED = 10

    def leaf(x):
        return x - 1

    def helper(x):
        return leaf(x) * SCALE

    def unrelated(x):
        return x + 100

    class Base:
        def shift(self, x):
            return x + 1

    class Model(Base):
        factor = 2

        def apply(self, x):
            return self.shift(x) * self.factor

    def f(x, y=2):
        m = Model()
        return helper(x) + m.apply(y) + np.sqrt(sqrt(math.pi))
"""


def test_identity_shape(load):
    ci = ident(load, BASE)
    assert len(ci.digest) == 64 and ci.function == "f" and ci.source_available
    assert ci.source == "def f(x, y=2):\n    m = Model()\n" \
        "    return helper(x) + m.apply(y) + np.sqrt(sqrt(math.pi))"
    assert set(ci.parts) == {"fn:f", "helper:helper", "helper:leaf", "const:SCALE",
                             "helper:Model", "helper:Base"}
    assert set(ci.sources) == {"fn:f", "helper:helper", "helper:leaf", "helper:Model", "helper:Base"}
    assert ci.external == {"math": "module math", "np": "module numpy", "sqrt": "builtin math.sqrt"}
    d = ci.to_dict()
    assert json.loads(json.dumps(d)) == d and d["digest"] == ci.digest


@pytest.mark.parametrize("old,new", [
    ("    def f(x, y=2):\n        m = Model()\n",
     "    def f(x, y=2):\n        '''A docstring.'''\n        # a comment\n\n        m = Model(  )\n"),
    ("    def f(x, y=2):", "    @staticmethod\n    def f(x, y  =  2):"),
    ("    def leaf(x):\n        return x - 1",
     "    def leaf(x):\n        \"\"\"Doc.\"\"\"\n        return (x\n                - 1)  # note"),
    ("    class Model(Base):\n", "    class Model(Base):\n        '''Doc.'''\n"),
    ("    def unrelated(x):\n        return x + 100", "    def unrelated(x):\n        return x * 7"),
    ("    UNUSED = 10", "    UNUSED = 11"),
    ("    import math\n", "    import math\n    import json\n    OTHER = json.dumps([1])\n"),
])
def test_edits_that_keep_the_identity(load, old, new):
    assert old in BASE
    assert ident(load, BASE).digest == ident(load, BASE.replace(old, new)).digest


@pytest.mark.parametrize("old,new,part", [
    ("helper(x) + m.apply(y)", "helper(x) - m.apply(y)", "fn:f"),
    ("def f(x, y=2):", "def f(x, y=3):", "fn:f"),
    ("return leaf(x) * SCALE", "return leaf(x) * SCALE + 1", "helper:helper"),
    ("return x - 1", "return x - 2", "helper:leaf"),  # transitive, through helper
    ("* self.factor", "* self.factor * 2", "helper:Model"),  # a method
    ("factor = 2", "factor = 3", "helper:Model"),  # a class attribute
    ("return x + 1", "return x + 2", "helper:Base"),  # a method of a same-module base class
    ("SCALE = 3", "SCALE = 4", "const:SCALE"),
    ("SCALE = 3", "SCALE = 3.0", "const:SCALE"),
    ("SCALE = 3", "SCALE = True", "const:SCALE"),
])
def test_edits_that_change_the_identity(load, old, new, part):
    assert old in BASE
    before, after = ident(load, BASE), ident(load, BASE.replace(old, new))
    assert before.digest != after.digest
    assert after.diff(before) == [f"changed {part}"]


def test_decorators_of_the_function_are_dropped_but_unwrapped(load):
    plain = ident(load, "def f(x):\n    return x + 1\n")
    src = """
        import functools

        def deco(name, version):
            def wrap(fn):
                @functools.wraps(fn)
                def inner(*a, **k):
                    return fn(*a, **k)
                return inner
            return wrap

        @deco("f", version="0.1.0")
        def f(x):
            return x + 1
    """
    decorated = ident(load, src)
    assert decorated.digest == plain.digest
    assert decorated.digest == ident(load, src.replace('"0.1.0"', '"0.2.0"')).digest
    assert decorated.function == "f" and "deco" not in decorated.source


def test_decorators_of_helpers_count(load):
    src = """
        import functools

        @functools.lru_cache(maxsize=8)
        def helper(x):
            return x * 2

        def f(x):
            return helper(x)
    """
    ci = ident(load, src)
    assert "@functools.lru_cache(maxsize=8)" in ci.sources["helper:helper"]
    assert ci.external["functools"] == "module functools"
    assert ci.digest != ident(load, src.replace("maxsize=8", "maxsize=9")).digest


def test_local_names_do_not_pull_in_globals(load):
    src = """
        def helper():
            return 1

        data = [1, 2]

        def codec():
            pass

        def f(x, data=None):
            import json as codec
            helper = codec.loads("3")
            total = [helper for helper in range(x)]
            return helper + len(total)
    """
    ci = ident(load, src)
    assert set(ci.parts) == {"fn:f"}
    edited = src.replace("return 1", "return 2").replace("data = [1, 2]", "data = [3]")
    assert ident(load, edited).digest == ci.digest


def test_globals_read_in_nested_scopes_are_found(load):
    src = """
        K = 5

        def helper(v):
            return v + 1

        def f(xs):
            def inner(y):
                return helper(y)
            return [inner(x) + K for x in xs] + list(map(lambda z: z * K, xs))
    """
    ci = ident(load, src)
    assert {"helper:helper", "const:K"} <= set(ci.parts)
    assert ident(load, src.replace("v + 1", "v + 2")).digest != ci.digest


def test_names_declared_global_are_globals(load):
    src = """
        MODE = None

        def f():
            global MODE
            if MODE is None:
                MODE = "fast"
            return MODE
    """
    assert "const:MODE" in ident(load, src).parts


def test_global_shadowed_only_in_an_enclosing_function_scope(load):
    # `helper` is a parameter of f, so inner's `helper` is f's, not the module's
    src = """
        def helper():
            return 1

        def f(helper):
            def inner():
                return helper()
            return inner()
    """
    assert set(ident(load, src).parts) == {"fn:f"}


def test_mutual_recursion_terminates(load):
    src = """
        def is_even(n):
            return True if n == 0 else is_odd(n - 1)

        def is_odd(n):
            return False if n == 0 else is_even(n - 1)

        def f(n):
            return is_even(n) and f is not None
    """
    ci = ident(load, src)
    assert {"helper:is_even", "helper:is_odd", "fn:f"} <= set(ci.parts)
    assert ci.parts["helper:f"] == ci.parts["fn:f"]  # self-reference: an alias, no new walk
    edited = ident(load, src.replace("is_even(n - 1)", "is_even(n - 2)"))
    assert edited.diff(ci) == ["changed helper:is_odd"]


def test_part_names_count(load):
    src = "A = 1\nB = 2\ndef f():\n    return A - B\n"
    assert ident(load, src).digest != ident(load, src.replace("A = 1\nB = 2", "A = 2\nB = 1")).digest


def test_constants(load):
    src = """
        TABLE = {"b": (1, 2.5, None), "a": [b"x", frozenset({"p", "q"})]}
        BIG = list(range(MAX + 1))
        NAME = __name__

        def f():
            return TABLE, BIG, __file__
    """.replace("MAX", str(MAX_CONSTANT_ELEMENTS))
    ci = ident(load, src)
    assert "const:TABLE" in ci.parts and "const:BIG" not in ci.parts
    assert ci.external["BIG"] == "object of type builtins.list (not in identity)"
    assert ci.external["__file__"] == "module attribute (not in identity)"
    assert ci.digest == ident(load, src).digest  # a set's order does not matter
    for new in ['"a": [b"x", frozenset({"p"})]', '"a": (b"x", frozenset({"p", "q"}))']:
        edited = src.replace('"a": [b"x", frozenset({"p", "q"})]', new)
        assert ident(load, edited).digest != ci.digest, new
    reordered = src.replace('{"b": (1, 2.5, None), "a": [b"x", frozenset({"p", "q"})]}',
                            '{"a": [b"x", frozenset({"q", "p"})], "b": (1, 2.5, None)}')
    assert ident(load, reordered).digest != ci.digest  # dict order is observable


@pytest.mark.parametrize("values", [
    ["1", "1.0", "True", "'0x1'", "b'\\x01'", "[1]", "(1,)", "{1}", "frozenset({1})", "None",
     "'None'", "-0.0", "0.0", "{1: 2}", "{(1, 2)}", "'6162'", "b'ab'"],
])
def test_constant_types_are_tagged(load, values):
    digests = {ident(load, f"C = {v}\ndef f():\n    return C\n").digest for v in values}
    assert len(digests) == len(values)


def test_digest_is_the_same_in_other_processes(tmp_path):
    (tmp_path / "fixmod.py").write_text(textwrap.dedent("""
        WORDS = frozenset(f"w{i}" for i in range(200))
        NESTED = {"k": {("a", 1), ("b", 2), ("c", 3)}}

        def f(x):
            return x in WORDS or x in NESTED
    """))
    code = "import fixmod; from hither.codeid import code_identity; " \
           "print(code_identity(fixmod.f).digest)"
    digests = set()
    for seed in ("1", "2", "3"):
        env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(tmp_path)}
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                             text=True, check=True).stdout.strip()
        digests.add(out)
    assert len(digests) == 1 and len(digests.pop()) == 64


def test_closures(load):
    src = """
        def helper(v):
            return v * 2

        def make(c, fn):
            def f(x):
                return fn(x) + c
            return f

        f = make(5, helper)
        g = make(6, helper)
        h = make(5, len)
    """
    m = load(src)
    f, g, h = code_identity(m.f), code_identity(m.g), code_identity(m.h)
    assert {"closure:make.<locals>.f.c", "closure:make.<locals>.f.fn"} <= set(f.parts)
    assert "c" not in f.external  # a closure cell is not an unresolved global
    assert f.digest != g.digest
    assert h.external["make.<locals>.f.fn"] == "builtin builtins.len"
    assert f.digest != ident(load, src.replace("v * 2", "v * 3")).digest


def test_script_run_as_main(tmp_path, load):
    src = textwrap.dedent("""
        LIMIT = 4

        class Root:
            unit = 1

        class Plain(Root):
            size = LIMIT

        class Counter:
            def count(self, n):
                return min(n, LIMIT)

        class Tool:
            @staticmethod
            def run(n):
                return n

        def f(n):
            return Counter().count(n) + Plain.size + Tool.run(n)
    """)
    script = tmp_path / "script.py"
    script.write_text(src)
    g = runpy.run_path(str(script), run_name="__main__")
    ci = code_identity(g["f"])
    assert ci.module == "__main__"
    assert {"fn:f", "helper:Counter", "helper:Plain", "helper:Root", "const:LIMIT"} <= set(ci.parts)
    assert ci.digest == code_identity(g["f"]).digest
    assert ci.sources["helper:Counter"].startswith("class Counter:")
    assert ci.sources["helper:Tool"].startswith("class Tool:")
    # a class without methods in a script run as __main__ cannot be located by inspect: it is
    # identified by its attributes (and bases) instead
    assert "helper:Plain" not in ci.sources and not ci.source_available
    for old, new in [("size = LIMIT", "size = LIMIT + 1"), ("unit = 1", "unit = 2")]:
        script.write_text(src.replace(old, new))
        edited = code_identity(runpy.run_path(str(script), run_name="__main__")["f"])
        assert edited.digest != ci.digest, old
    # the same code imported as a module
    imported = code_identity(load(src).f)
    assert imported.parts["helper:Counter"] == ci.parts["helper:Counter"]
    script.write_text(src.replace("min(n, LIMIT)", "max(n, LIMIT)"))
    g2 = runpy.run_path(str(script), run_name="__main__")
    assert code_identity(g2["f"]).digest != ci.digest


def test_code_without_source_has_a_stable_digest(load):
    m = load("SCALE = 2\nsquare = lambda x: x * x * SCALE\ncube = lambda x: x * x * x\n")
    a = code_identity(m.square)
    clear_code_identity_cache()
    assert code_identity(m.square).digest == a.digest
    assert not a.source_available and "const:SCALE" in a.parts
    assert code_identity(m.cube).digest != a.digest

    namespace: dict = {"__name__": "generated"}
    exec("K = 3\ndef f(x):\n    'doc'\n    return x + K\n", namespace)
    b = code_identity(namespace["f"])
    clear_code_identity_cache()
    assert code_identity(namespace["f"]).digest == b.digest
    assert not b.source_available and "const:K" in b.parts
    other: dict = {"__name__": "generated"}
    exec("K = 3\ndef f(x):\n    return x + K + 1\n", other)
    assert code_identity(other["f"]).digest != b.digest

    bare: dict = {}  # no __name__: functions get __module__ None; helpers are found by globals
    exec("def helper():\n    return 1\ndef f():\n    return helper()\n", bare)
    assert "helper:helper" in code_identity(bare["f"]).parts

    builtin = code_identity(len)
    assert builtin.digest == code_identity(len).digest and not builtin.source_available
    assert builtin.digest != code_identity(abs).digest
    with pytest.raises(TypeError, match="functools.partial"):
        code_identity(functools.partial(len))  # would otherwise collide with any other partial


def test_notebook_cell_source_comes_from_linecache():
    # IPython keeps each cell's text in linecache under a name that is not a file on disk
    import linecache

    def run_cell(text: str, cell: int) -> dict:
        filename = f"<ipython-input-{os.getpid()}-{cell}>"
        linecache.cache[filename] = (len(text), None, text.splitlines(True), filename)
        namespace: dict = {"__name__": "__main__"}
        exec(compile(text, filename, "exec"), namespace)
        return namespace

    cell = "K = 2\n\ndef f(x):\n    # scale\n    return x * K\n"
    first = code_identity(run_cell(cell, 1)["f"])
    assert first.source_available and first.source == "def f(x):\n    return x * K"
    assert source_files(run_cell(cell, 2)["f"]) == {}  # nothing on disk to ship
    again = code_identity(run_cell(cell.replace("# scale", "# scaled"), 3)["f"])
    assert again.digest == first.digest
    assert code_identity(run_cell(cell.replace("x * K", "x + K"), 4)["f"]).digest != first.digest


def test_external_descriptions(load):
    ci = ident(load, """
        import enum
        from collections import OrderedDict
        from enum import Enum
        from json import dumps
        LOOKUP = OrderedDict(a=1)
        def f():
            return enum, Enum, dumps, OrderedDict, LOOKUP, undefined_name
    """)
    assert ci.external == {
        "enum": "module enum", "Enum": "class enum.Enum", "dumps": "function json.dumps",
        "OrderedDict": "class collections.OrderedDict",
        "LOOKUP": "object of type collections.OrderedDict (not in identity)",
        "undefined_name": "unresolved"}
    assert set(ci.parts) == {"fn:f"}


def _write(path: Path, text: str) -> None:
    """Write and push the mtime forward, so a same-size edit is seen within one clock tick."""
    mtime = path.stat().st_mtime_ns if path.exists() else time.time_ns()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    os.utime(path, ns=(mtime + 10**9, mtime + 10**9))


def test_local_modules(tmp_path, load):
    lib = tmp_path / "lib"
    _write(lib / "__init__.py", "")
    _write(lib / "util.py", "def g(x):\n    return x + 1\n")
    _write(lib / "__pycache__" / "junk.py", "garbage(")
    _write(lib / ".hidden" / "x.py", "y = 1\n")
    _write(lib / "notes.txt", "not python")
    _write(tmp_path / "single.py", "Z = 1\n")
    m = load("def f(x):\n    return x\n", tmp_path)
    kw = {"local_modules": ["lib", "single.py"]}
    first = code_identity(m.f, **kw)
    assert {k for k in first.parts if k.startswith("local_module:")} == {
        "local_module:lib/__init__.py", "local_module:lib/util.py", "local_module:single.py"}
    assert code_identity(m.f, **kw) is first  # cached while nothing changed

    _write(lib / "util.py", "def g(x):\n    '''Doc.'''\n    # comment\n    return x + 1\n")
    assert code_identity(m.f, **kw).digest == first.digest
    _write(lib / "util.py", "def g(x):\n    return x + 2\n")
    second = code_identity(m.f, **kw)
    assert second.digest != first.digest and second.diff(first) == ["changed local_module:lib/util.py"]
    _write(lib / "sub" / "more.py", "def broken(:\n")  # does not parse: hashed as bytes
    third = code_identity(m.f, **kw)
    assert third.diff(second) == ["added local_module:lib/sub/more.py"]
    _write(lib / "sub" / "more.py", "def broken(:  \n")
    assert code_identity(m.f, **kw).digest != third.digest
    assert code_identity(m.f, local_modules=[str(lib)]).digest == \
        code_identity(m.f, local_modules=["lib"]).digest  # absolute or relative
    with pytest.raises(FileNotFoundError, match="missing"):
        code_identity(m.f, local_modules=["missing"])


def _same_size_edit_restoring_mtime(path: Path, text: str, how: str, tmp_path: Path) -> None:
    """Replace ``path``'s content by ``text`` (same size), keeping size, inode and mtime."""
    st = path.stat()
    assert len(text.encode()) == st.st_size
    if how == "cp -p":  # restore from a backup that has the same mtime
        backup = tmp_path / "backup" / path.name
        backup.parent.mkdir(exist_ok=True)
        backup.write_text(text)
        os.utime(backup, ns=(st.st_atime_ns, st.st_mtime_ns))
        subprocess.run(["cp", "-p", str(backup), str(path)], check=True)
    else:  # an edit in place within one timestamp tick, or rsync -t: write, then set the mtime
        with open(path, "r+") as f:
            f.write(text)
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    after = path.stat()
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == \
        (st.st_ino, st.st_size, st.st_mtime_ns)


@pytest.mark.parametrize("how", ["cp -p", "same tick"])
@pytest.mark.parametrize("settled", [True, False], ids=["memoized", "fresh"])
@pytest.mark.parametrize("kind", ["local_modules", "additional_files"])
def test_edit_keeping_size_and_mtime_changes_identity(tmp_path, load, monkeypatch, how, settled,
                                                       kind):
    # "memoized": the first digest was memoized (the file counts as settled at once), so
    # only the ctime in the signature can reveal the edit; "fresh": the file was written
    # just now, and a digest read within the timestamp granularity is not memoized at all
    if settled:
        monkeypatch.setattr(_statmemo, "RACY_NS", 0)
    target = tmp_path / "lib" / "util.py"
    _write(target, "def g(x):\n    return x + 1\n")
    old = time.time_ns() - 3600 * 10**9
    os.utime(target, ns=(old, old))
    m = load("def f(x):\n    return x\n", tmp_path)
    kw = {kind: ["lib" if kind == "local_modules" else "lib/*.py"]}
    first = code_identity(m.f, **kw)
    assert code_identity(m.f, **kw).digest == first.digest
    _same_size_edit_restoring_mtime(target, "def g(x):\n    return x + 2\n", how, tmp_path)
    second = code_identity(m.f, **kw)
    assert second.digest != first.digest
    assert second.diff(first) == [("changed local_module:" if kind == "local_modules"
                                   else "changed file:") + "lib/util.py"]


def test_fresh_file_is_read_again_settled_file_is_not(tmp_path, load, monkeypatch):
    lib = tmp_path / "lib"
    _write(lib / "util.py", "def g(x):\n    return x + 1\n")
    old = time.time_ns() - 3600 * 10**9
    os.utime(lib / "util.py", ns=(old, old))
    m = load("def f(x):\n    return x\n", tmp_path)
    reads: list[str] = []
    real = codeid._read_digest

    def counting(path: str, python: bool) -> str:
        reads.append(path)
        return real(path, python)

    monkeypatch.setattr(codeid, "_read_digest", counting)
    clear_code_identity_cache()
    code_identity(m.f, local_modules=["lib"])
    code_identity(m.f, local_modules=["lib"])
    assert len(reads) == 2  # changed (ctime) less than two seconds ago: not memoized
    monkeypatch.setattr(_statmemo, "RACY_NS", 0)
    code_identity(m.f, local_modules=["lib"])
    code_identity(m.f, local_modules=["lib"])
    assert len(reads) == 3


def test_additional_files(tmp_path, load):
    _write(tmp_path / "data" / "a.json", '{"a": 1}')
    _write(tmp_path / "data" / "b.json", '{"b": 2}')
    _write(tmp_path / "data" / "c.csv", "1,2")
    m = load("def f(x):\n    return x\n", tmp_path)
    kw = {"additional_files": ["data/*.json", "nothing/*.bin"]}
    first = code_identity(m.f, **kw)
    assert {k for k in first.parts if k.startswith("file:")} == {"file:data/a.json",
                                                                 "file:data/b.json"}
    _write(tmp_path / "data" / "a.json", '{"a": 2}')
    second = code_identity(m.f, **kw)
    assert second.diff(first) == ["changed file:data/a.json"]
    everything = code_identity(m.f, additional_files=["data"])
    assert "file:data/c.csv" in everything.parts

    shipped = source_files(m.f, local_modules=[], additional_files=["data/**/*.json"])
    assert shipped == {Path(m.__file__).name: str(Path(m.__file__).resolve()),
                       "data/a.json": str(tmp_path / "data" / "a.json"),
                       "data/b.json": str(tmp_path / "data" / "b.json")}


def test_source_files_with_local_modules(tmp_path, load):
    _write(tmp_path / "pkg" / "__init__.py", "")
    _write(tmp_path / "pkg" / "core.py", "A = 1\n")
    m = load("def f(x):\n    return x\n", tmp_path)
    shipped = source_files(m.f, local_modules=["pkg"], additional_files=["pkg/*.py"])
    assert set(shipped) == {Path(m.__file__).name, "pkg/__init__.py", "pkg/core.py"}
    _write(tmp_path / "other" / "pkg" / "__init__.py", "")
    with pytest.raises(ValueError, match="pkg/__init__.py"):
        source_files(m.f, local_modules=["pkg", "other/pkg"])


def test_cache_is_per_function_and_code_object(load):
    m = load("K = 1\ndef f(x):\n    return x + K\n")
    first = code_identity(m.f)
    assert code_identity(m.f) is first
    m.K = 2  # redefined at run time: not seen while the function object is the same...
    assert code_identity(m.f) is first
    clear_code_identity_cache()  # ...until the cache is cleared
    assert code_identity(m.f).digest != first.digest
    m.f.__code__ = (lambda x: x + K + 0).__code__  # noqa: F821 - a new code object is seen
    assert code_identity(m.f).source_available is False


def test_classes_with_special_methods(load):
    src = """
        RATE = 0.5

        def scale(v):
            return v * RATE

        class Thing:
            @staticmethod
            def make():
                return Thing()

            @classmethod
            def build(cls):
                return cls()

            @property
            def value(self):
                return scale(1)

        def f():
            return Thing.make().value
    """
    ci = ident(load, src)
    assert {"helper:Thing", "helper:scale", "const:RATE"} <= set(ci.parts)
    assert ident(load, src.replace("RATE = 0.5", "RATE = 0.25")).digest != ci.digest
    m = load(textwrap.dedent(src) + "\nbuild = Thing.build\ndef g():\n    return build()\n")
    assert code_identity(m.Thing).function == "Thing"  # a class as the root
    method = code_identity(m.Thing().make)  # a bound method: its function
    assert method.function == "Thing.make" and method.source_available
    assert "helper:build" in code_identity(m.g).sources  # a bound classmethod
