"""The source of the 4-function pipeline of ``tests/test_cache_incremental.py``, and a loader.

The module is written into a temporary folder and imported under a fresh, unique module
name for every version of its source: code identities are cached per function object, and a
rewritten file imported again under the same name could be served from a stale ``.pyc`` or
``linecache`` entry. Worker processes import it by that name from the same folder.

Function names carry a per-test token (``load_<tok>``...), so that tests never re-register a
name another test registered from another file. The call log records them without the token.
"""

from __future__ import annotations

import importlib.util
import itertools
import sys
import textwrap
from pathlib import Path
from types import ModuleType

STAGES = ("load", "clean", "stats", "report")

ORIGINAL = textwrap.dedent('''\
    """A small pipeline: load -> clean -> stats -> report."""
    import os

    import hither as hi

    OFFSET = 1.0
    UNRELATED_CONSTANT = 7


    def _log(name):
        fd = os.open(os.environ["HITHER_TEST_CALL_LOG"], os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        try:
            os.write(fd, (name + "\\n").encode())
        finally:
            os.close(fd)


    def _scale(x):
        """Scale one value."""
        return x * 3


    @hi.function("load_TOK", "1")
    def load_TOK(path):
        _log("load")
        with open(path) as f:
            return [float(t) for t in f.read().split()]


    @hi.function("clean_TOK", "1")
    def clean_TOK(xs):
        _log("clean")
        # drop negative values
        return [_scale(x) * 2 + OFFSET for x in xs if x >= 0]


    @hi.function("stats_TOK", "1")
    def stats_TOK(xs):
        """Summary statistics."""
        _log("stats")
        return {"n": len(xs), "total": sum(xs)}


    @hi.function("report_TOK", "1")
    def report_TOK(s):
        _log("report")
        return "n=%d total=%.3f" % (s["n"], s["total"])


    def unrelated(y):
        return y * UNRELATED_CONSTANT
    ''')


def edit(source: str, old: str, new: str) -> str:
    """``source`` with the single occurrence of ``old`` replaced by ``new``."""
    assert source.count(old) == 1, f"{old!r} occurs {source.count(old)} times"
    return source.replace(old, new)


_counter = itertools.count()


def load_module(folder: Path, source: str, token: str, name: str | None = None) -> ModuleType:
    """Write ``source`` (with ``TOK`` replaced by ``token``) as a new module file in
    ``folder`` and import it; the caller must have ``folder`` on ``sys.path`` for workers
    and must drop ``sys.modules[module.__name__]`` afterwards.

    ``name`` reuses a module name (and file); otherwise a fresh one is made."""
    name = name or f"cachepipe_{token}_{next(_counter)}"
    path = folder / f"{name}.py"
    path.write_text(source.replace("TOK", token))
    pycache = folder / "__pycache__"
    if pycache.is_dir():
        for p in pycache.glob(f"{name}.*"):
            p.unlink()
    importlib.invalidate_caches()
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
