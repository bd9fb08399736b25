"""Code identity: the part of a job's cache key that stands for the code it runs.

:func:`code_identity` turns a function into a :class:`CodeIdentity` whose ``digest`` changes
when, and only when, the code the job runs changes.

In the identity (as named in ``CodeIdentity.parts``):

- ``fn:<qualname>`` -- the *normalized source* of the function: its ``def`` parsed with
  :mod:`ast`, without its own decorators (``@hi.function(...)``: name and version are keyed
  separately) and without the docstrings of the functions and classes in it, written back with
  :func:`ast.unparse`. Comments, blank lines, formatting and docstrings do not count; any other
  edit does.
- ``helper:<name>`` -- each function or class *of the same module* it reads through a global
  name, transitively (helpers of helpers, a class's whole body, same-module base classes),
  normalized the same way but with their decorators kept.
- ``const:<name>`` -- each module-level *simple constant* it reads: ``None``, ``bool``, ``int``,
  ``float``, ``str``, ``bytes`` and tuples, lists, dicts, sets, frozensets of these (at most
  :data:`MAX_CONSTANT_ELEMENTS` elements). Types are told apart; dict order counts, set order not.
- ``closure:<owner>.<var>`` -- closure cells holding a simple constant or same-module code.
- ``local_module:<relpath>`` -- each ``*.py`` file of the declared ``local_modules``, normalized
  the same way (a file that does not parse: its bytes).
- ``file:<relpath>`` -- the bytes of each file matching the ``additional_files`` patterns.

Not in it: modules, and functions, classes or objects of *other* modules (numpy, the standard
library, packages, sibling files not declared as local modules), which belong to the runtime
identity; module-level objects that are not simple constants (arrays, instances, big containers)
and module attributes such as ``__file__``. These are named in ``CodeIdentity.external`` so that
a key can be explained. Also not in it: the function's own decorators, the objects that
annotations name (the annotation text itself is part of the source), the file and line where
the code sits, the module's name.

Code without readable source (lambdas, ``exec``-defined functions, builtins) is identified by
its bytecode instead and ``source_available`` is ``False`` (bytecode differs between Python
versions). The walk is cached per function object and code object: a helper or constant
redefined at run time (in a notebook) is not seen until the function itself is redefined or
:func:`clear_code_identity_cache` is called. Files are re-checked on every call (one ``stat``
each; contents are re-read when size, mtime, ctime or inode changed, and a file changed in the
two seconds before it was read is read again on its next use).
"""

from __future__ import annotations

import ast
import builtins
import copy
import functools
import hashlib
import inspect
import json
import linecache
import os
import sys
import textwrap
import threading
import types
import weakref
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, replace
from typing import Any

from hither_store import FileMemo

from ._codefiles import PathArg, add_file, code_files

__all__ = ["FORMAT", "MAX_CONSTANT_ELEMENTS", "CodeIdentity", "clear_code_identity_cache",
           "code_identity", "source_files"]

#: Version tag of the identity format: a change of normalization rules must change it.
FORMAT = "hither.codeid/1"
#: A module-level container with more elements than this is not hashed as a constant.
MAX_CONSTANT_ELEMENTS = 10_000
_MODULE_DUNDERS = frozenset({"__builtins__", "__cached__", "__doc__", "__file__", "__loader__",
                             "__name__", "__package__", "__path__", "__spec__"})
_FUNC_DEFS = (ast.FunctionDef, ast.AsyncFunctionDef)
_COMPREHENSIONS = (ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)


@dataclass(frozen=True)
class CodeIdentity:
    """The identity of a function's code, as it enters a job's cache key.

    ``digest``: sha256 (hex) of the canonical JSON of ``parts``, the value used in keys.
    ``function``, ``module``: qualified name and ``__module__`` (``"__main__"`` for a script).
    ``source``: normalized source of the function itself (empty when unavailable).
    ``parts``: piece name -> sha256 of the piece (see the module docstring).
    ``sources``: piece name -> normalized source of each function and class (for provenance).
    ``external``: name -> description of what the code uses but the identity leaves out.
    ``source_available``: False when some code was identified by bytecode instead of source.
    Identities are cached and shared: the dictionaries are read-only.
    """

    digest: str
    function: str
    module: str
    source: str
    parts: dict[str, str]
    sources: dict[str, str]
    external: dict[str, str]
    source_available: bool

    def __hash__(self) -> int:
        return hash(self.digest)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serializable copy of this identity."""
        return {"format": FORMAT, **asdict(self)}

    def diff(self, older: CodeIdentity) -> list[str]:
        """Lines naming the pieces added, removed or changed since ``older``: why a key moved."""
        names = sorted(n for n in set(self.parts) | set(older.parts)
                       if self.parts.get(n) != older.parts.get(n))
        return [("added " if n not in older.parts else "removed " if n not in self.parts
                 else "changed ") + n for n in names]


# --- canonical encoding ------------------------------------------------------------------------

_SCALARS: dict[type, Callable[[Any], Any]] = {  # exact forms; hex() has no digit limit
    bool: bool, int: hex, float: float.hex, str: str, bytes: bytes.hex}


def _canon(value: Any, budget: list[int], depth: int = 0) -> Any:
    """A tagged, JSON-able form of a simple constant; raises TypeError for anything else."""
    budget[0] -= 1
    if budget[0] < 0 or depth > 64:
        raise TypeError("too large or too deep")
    kind, depth = type(value), depth + 1
    if value is None:
        return ["none"]
    if kind in _SCALARS:
        return [kind.__name__, _SCALARS[kind](value)]
    if kind is tuple or kind is list:
        return [kind.__name__, [_canon(v, budget, depth) for v in value]]
    if kind is dict:
        return ["dict", [[_canon(k, budget, depth), _canon(v, budget, depth)]
                         for k, v in value.items()]]
    if kind is set or kind is frozenset:
        return [kind.__name__, sorted((_canon(v, budget, depth) for v in value), key=_dumps)]
    raise TypeError(kind.__qualname__)


def _simple_constant(value: Any) -> Any | None:
    """The canonical form of ``value`` if it is a simple constant, else None."""
    try:
        return _canon(value, [MAX_CONSTANT_ELEMENTS])
    except TypeError:
        return None


def _dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=True, separators=(",", ":"), sort_keys=True)


def _sha(tag: str, payload: str | bytes) -> str:
    data = payload.encode("utf-8", "surrogatepass") if isinstance(payload, str) else payload
    return hashlib.sha256(tag.encode() + b"\0" + data).hexdigest()


# --- source: finding, normalizing, scanning for global names -----------------------------------

@functools.lru_cache(maxsize=64)
def _parse(text: str) -> ast.Module | None:
    try:
        return ast.parse(text)
    except (SyntaxError, ValueError):
        return None


def _file_tree(filename: str, module_globals: dict[str, Any] | None) -> ast.Module | None:
    """The parsed text of a source file as linecache sees it (cached by content)."""
    linecache.checkcache(filename)
    return _parse("".join(linecache.getlines(filename, module_globals)))


def _find_def(tree: ast.AST, lineno: int, name: str, kinds: tuple[type, ...]) -> ast.AST | None:
    """The innermost ``kinds`` node called ``name`` whose lines contain ``lineno``."""
    best: ast.AST | None = None
    best_start = -1
    for node in ast.walk(tree):
        if not isinstance(node, kinds) or getattr(node, "name", None) != name:
            continue
        d: Any = node  # a def or a class: lineno, end_lineno, decorator_list
        start = min([d.lineno, *(x.lineno for x in d.decorator_list)])
        if start <= lineno <= (d.end_lineno or 0) and start > best_start:
            best, best_start = node, start
    return best


def _function_of(attr: Any) -> types.FunctionType | None:
    """The plain function behind a class attribute (method, static/class method, property)."""
    attr = attr.fget if isinstance(attr, property) else getattr(attr, "__func__", attr)
    return attr if isinstance(attr, types.FunctionType) else None


def _def_node(obj: Any) -> ast.AST | None:
    """The ``def`` of a function or the ``class`` of a class, from its file (or linecache)."""
    if isinstance(obj, types.FunctionType):
        code = obj.__code__
        tree = code.co_name != "<lambda>" and _file_tree(code.co_filename, obj.__globals__)
        return _find_def(tree, code.co_firstlineno, code.co_name, _FUNC_DEFS) if tree else None
    # a class: through one of its methods first, which works for scripts run as __main__ too
    for method in filter(None, map(_function_of, vars(obj).values())):
        tree = _file_tree(method.__code__.co_filename, method.__globals__)
        node = tree and _find_def(tree, method.__code__.co_firstlineno, obj.__name__,
                                  (ast.ClassDef,))
        if node:
            return node
    try:
        body = ast.parse(textwrap.dedent(inspect.getsource(obj))).body
    except (OSError, TypeError, SyntaxError, ValueError):
        return None
    ok = len(body) == 1 and isinstance(body[0], ast.ClassDef) and body[0].name == obj.__name__
    return body[0] if ok else None


def _strip_docstrings(node: ast.AST) -> None:
    for sub in ast.walk(node):
        if isinstance(sub, (*_FUNC_DEFS, ast.ClassDef, ast.Module)) and sub.body \
                and isinstance(sub.body[0], ast.Expr) \
                and isinstance(getattr(sub.body[0].value, "value", None), str):  # a str constant
            sub.body = sub.body[1:] or [ast.Pass()]


def _header(node: Any) -> list[ast.AST]:
    """The parts of a nested def, class or lambda evaluated in the enclosing scope."""
    if isinstance(node, ast.ClassDef):
        return [*node.decorator_list, *node.bases, *node.keywords]
    args = node.args
    return [*getattr(node, "decorator_list", ()), *args.defaults, *filter(None, args.kw_defaults)]


def _scope_body(scope: Any) -> tuple[list[ast.AST], set[str]]:
    """The nodes evaluated inside a scope, and the names its parameters bind."""
    if isinstance(scope, (*_FUNC_DEFS, ast.Lambda)):
        a = scope.args
        params = {x.arg for x in (*a.posonlyargs, *a.args, *a.kwonlyargs, a.vararg, a.kwarg) if x}
        body: list[ast.AST] = [*scope.body] if isinstance(scope.body, list) else [scope.body]
        return body, params
    if isinstance(scope, ast.ClassDef):
        return list(scope.body), set()
    nodes = [scope.key, scope.value] if isinstance(scope, ast.DictComp) else [scope.elt]
    for gen in scope.generators:
        nodes += [gen.target, gen.iter, *gen.ifs]
    return nodes, set()


def _scan(nodes: list[ast.AST], params: set[str], kind: str, visible: frozenset[str],
          out: set[str]) -> None:
    """Add to ``out`` the names one scope reads that are bound neither in it nor around it."""
    loads: set[str] = set()
    stores, declared_global = set(params), set()
    children: list[ast.AST] = []
    stack = list(nodes)
    while stack:
        n = stack.pop()
        if isinstance(n, ast.Name):
            (loads if isinstance(n.ctx, ast.Load) else stores).add(n.id)
        elif isinstance(n, (*_FUNC_DEFS, ast.ClassDef, ast.Lambda)):
            stores.add(getattr(n, "name", ""))  # a lambda binds no name
            children.append(n)
            stack.extend(_header(n))
        elif isinstance(n, _COMPREHENSIONS):
            children.append(n)
        elif isinstance(n, ast.Global):
            declared_global.update(n.names)
        elif isinstance(n, (ast.Import, ast.ImportFrom)):
            stores.update((a.asname or a.name).split(".")[0] for a in n.names if a.name != "*")
        else:
            if isinstance(n, (ast.ExceptHandler, ast.MatchAs, ast.MatchStar)) and n.name:
                stores.add(n.name)
            elif isinstance(n, ast.MatchMapping) and n.rest:
                stores.add(n.rest)
            stack.extend(ast.iter_child_nodes(n))
    local = stores - declared_global
    if kind == "module":  # the pseudo-scope around a module-level def: all its reads are global
        out.update(loads)
        inner: frozenset[str] = frozenset()
    else:
        out.update(loads - local - visible)
        inner = visible if kind == "class" else visible | local  # methods do not see class names
    for child in children:
        body, child_params = _scope_body(child)
        _scan(body, child_params, "class" if isinstance(child, ast.ClassDef) else "function",
              inner, out)


# --- bytecode fallback -------------------------------------------------------------------------

def _code_struct(code: types.CodeType, doc: Any = None) -> list[Any]:
    """What of a code object matters to behaviour (not where it sits in a file)."""
    consts = [_code_struct(c) if isinstance(c, types.CodeType) else
              ["docstring"] if i == 0 and doc is not None and c == doc else
              _simple_constant(c) or ["repr", type(c).__name__, repr(c)]
              for i, c in enumerate(code.co_consts)]
    return ["code", code.co_name, code.co_argcount, code.co_posonlyargcount,
            code.co_kwonlyargcount, code.co_flags, code.co_code.hex(), consts,
            code.co_names, code.co_varnames, code.co_freevars, code.co_cellvars]


def _code_names(code: types.CodeType) -> set[str]:
    nested = (_code_names(c) for c in code.co_consts if isinstance(c, types.CodeType))
    return set(code.co_names).union(*nested)


def _function_bytecode(fn: types.FunctionType) -> list[Any]:
    return ["function", _code_struct(fn.__code__, fn.__doc__),
            _simple_constant(fn.__defaults__) or ["object", _describe(fn.__defaults__)],
            _simple_constant(fn.__kwdefaults__) or ["object", _describe(fn.__kwdefaults__)]]


def _class_structure(cls: type) -> tuple[list[Any], set[str]]:
    """A class without readable source: its attributes (methods by bytecode) and bases."""
    items, names = [], set()
    for key, attr in sorted(vars(cls).items()):
        method = _function_of(attr)
        if method is not None:
            items.append([key, type(attr).__name__, _function_bytecode(method)])
            names |= _code_names(method.__code__)
        elif key not in ("__dict__", "__weakref__", "__module__", "__doc__", "__qualname__"):
            items.append([key, _simple_constant(attr) or ["object", _describe(attr)]])
    bases = [f"{b.__module__}.{b.__qualname__}" for b in cls.__bases__]
    return ["class", cls.__qualname__, bases, items], names


# --- the walk over what a function uses --------------------------------------------------------

def _unwrap(obj: Any) -> Any:
    try:
        obj = inspect.unwrap(obj) if hasattr(obj, "__wrapped__") else obj
    except Exception:  # a broken or endless __wrapped__ chain
        pass
    return obj.__func__ if isinstance(obj, types.MethodType) else obj


def _describe(obj: Any) -> str:
    if isinstance(obj, types.ModuleType):
        return f"module {obj.__name__}"
    name = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None)
    if not (isinstance(name, str) and callable(obj)):
        return f"object of type {type(obj).__module__}.{type(obj).__qualname__} (not in identity)"
    kind = "class" if isinstance(obj, type) else {
        types.FunctionType: "function", types.BuiltinFunctionType: "builtin"}.get(type(obj), "callable")
    module = getattr(obj, "__module__", None)
    return f"{kind} {module}.{name}" if isinstance(module, str) else f"{kind} {name}"


class _Walker:
    """Collects the parts of one function's identity, breadth first over global names."""

    def __init__(self, root: Any) -> None:
        self.module: str = getattr(root, "__module__", None) or ""
        module = sys.modules.get(self.module)  # for a class, which has no __globals__
        self.globals: dict[str, Any] = getattr(root, "__globals__", getattr(module, "__dict__", {}))
        self.parts: dict[str, str] = {}
        self.sources: dict[str, str] = {}
        self.external: dict[str, str] = {}
        self.source_available = True
        self.seen: dict[int, tuple[str, Any]] = {}  # id -> (first key, object kept alive)
        self.todo: deque[tuple[set[str], dict[str, Any]]] = deque()

    def run(self, root: Any, key: str) -> None:
        """Walk from ``root`` (unwrapped)."""
        if isinstance(root, (types.FunctionType, type)):
            self._add_code(key, root, top=True)
        elif _describe(root).startswith("object"):  # a partial, an instance with __call__
            raise TypeError(f"no code identity for {_describe(root)}: pass a function")
        else:  # a builtin or another named callable: named, not hashed
            self.parts[key] = _sha("builtin", _describe(root))
            self.source_available = False
        while self.todo:
            names, globals_ = self.todo.popleft()
            for name in sorted(names):
                if name in _MODULE_DUNDERS:
                    if name in globals_:
                        self.external[name] = "module attribute (not in identity)"
                elif name in globals_:
                    self._visit(name, globals_[name], f"helper:{name}", f"const:{name}")
                elif not hasattr(builtins, name):
                    self.external[name] = "unresolved"

    def _add_code(self, key: str, obj: Any, top: bool = False) -> None:
        """Add a same-module function or class, and queue the names it reads."""
        first = self.seen.get(id(obj))
        if first is not None:  # an alias, a recursion or a cycle: same hash, no new walk
            self.parts.setdefault(key, self.parts[first[0]])
            return
        self.seen[id(obj)] = (key, obj)
        is_function = isinstance(obj, types.FunctionType)
        globals_ = obj.__globals__ if is_function else self.globals
        node = _def_node(obj)
        if node is not None:
            node = copy.deepcopy(node)
            if top:
                node.decorator_list = []  # type: ignore[attr-defined]
            _strip_docstrings(node)
            self.sources[key] = source = ast.unparse(node)
            self.parts[key] = _sha("source", source)
            names: set[str] = set()
            _scan([node], set(), "module", frozenset(), names)
            # names of enclosing functions (closure cells) are not globals
            self.todo.append((names - set(obj.__code__.co_freevars if is_function else ()),
                              globals_))
        else:
            self.source_available = False
            struct, names = ((_function_bytecode(obj), _code_names(obj.__code__)) if is_function
                             else _class_structure(obj))
            self.parts[key] = _sha("bytecode", _dumps(struct))
            self.todo.append(({n for n in names if n in globals_}, globals_))
            for base in () if is_function else obj.__bases__:
                if base.__module__ == self.module:
                    self._add_code(f"helper:{base.__qualname__}", base)
        if is_function:
            for var, cell in zip(obj.__code__.co_freevars, obj.__closure__ or (), strict=False):
                try:
                    value = cell.cell_contents
                except ValueError:  # a cell not filled yet
                    continue
                label = f"{obj.__qualname__}.{var}"
                self._visit(label, value, f"closure:{label}", f"closure:{label}")

    def _visit(self, label: str, value: Any, code_key: str, const_key: str) -> None:
        obj = _unwrap(value)
        if isinstance(obj, types.FunctionType):
            if obj.__module__ == self.module or obj.__globals__ is self.globals:
                return self._add_code(code_key, obj)
        elif isinstance(obj, type):
            if obj.__module__ == self.module:
                return self._add_code(code_key, obj)
        elif not isinstance(obj, types.ModuleType):
            canon = _simple_constant(value)
            if canon is not None:
                self.parts[const_key] = _sha("const", _dumps(canon))
                return
        self.external[label] = _describe(obj)


# --- files: local modules and additional files -------------------------------------------------

# memoized by the file's stat signature, ctime included, and only once settled (see
# hither_store._statmemo): an edit in the same timestamp tick or a restore with ``cp -p``
# is never hidden behind an old digest
_PY_DIGESTS = FileMemo(4096)
_RAW_DIGESTS = FileMemo(4096)


def _source_file(fn: Any) -> str | None:
    """Absolute path of the file defining ``fn``, if it exists on disk."""
    target = _unwrap(fn)
    code = getattr(target, "__code__", None)
    try:
        filename = code.co_filename if code is not None else inspect.getsourcefile(target)
    except TypeError:
        filename = None
    return os.path.abspath(filename) if filename and os.path.isfile(filename) else None


@functools.lru_cache(maxsize=256)
def _source_digest(data: bytes) -> str:
    """The digest of a Python file's normalized source (by content: a file read again while
    it is too fresh to be memoized by its stat is not parsed again)."""
    try:
        tree = ast.parse(data)
    except (SyntaxError, ValueError):
        return _sha("raw", data)
    _strip_docstrings(tree)
    return _sha("source", ast.unparse(tree))


def _read_digest(path: str, python: bool) -> str:
    with open(path, "rb") as f:
        data = f.read()
    return _source_digest(data) if python else _sha("raw", data)


def _file_digest(path: str, python: bool) -> str:
    """sha256 of a file (of its normalized source if ``python``), memoized by its stat."""
    if python:
        return _PY_DIGESTS.get(path, functools.partial(_read_digest, python=True))
    return _RAW_DIGESTS.get(path, functools.partial(_read_digest, python=False))


# --- public API and cache ----------------------------------------------------------------------

# fn -> files key -> [weakref to the unwrapped fn, its code then, identity without files, with]
_CACHE: weakref.WeakKeyDictionary[Any, dict[Any, list[Any]]] = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()
_NO_FILES: tuple[tuple[str, ...], tuple[str, ...]] = ((), ())
# id(fn) -> (fn, the code object it ran, identity), for functions without local files:
# every job asks, and a WeakKeyDictionary lookup costs more than the rest of the check
_RECENT: dict[int, tuple[Any, Any, CodeIdentity]] = {}


def _digest(parts: dict[str, str]) -> str:
    return hashlib.sha256(_dumps({"format": FORMAT, "parts": parts}).encode()).hexdigest()


def _with_files(core: CodeIdentity, fn: Any, files_key: Any) -> CodeIdentity:
    if files_key is _NO_FILES:
        return core
    own = _source_file(fn)
    modules, files = code_files(os.path.dirname(own) if own else os.getcwd(), *files_key)
    parts = {**core.parts,
             **{f"local_module:{rel}": _file_digest(path, True) for rel, path in modules.items()},
             **{f"file:{rel}": _file_digest(path, False) for rel, path in files.items()}}
    return replace(core, parts=parts, digest=_digest(parts))


def code_identity(fn: Callable[..., Any], *, local_modules: Iterable[PathArg] = (),
                  additional_files: Iterable[PathArg] = ()) -> CodeIdentity:
    """The identity of the code ``fn`` runs (the module docstring says what is in it).

    ``fn`` may be decorated: ``__wrapped__`` is followed. ``local_modules`` are files or package
    directories whose ``*.py`` files belong to the code; ``additional_files`` are glob patterns
    (``**`` allowed) of other files it needs. Relative paths and patterns are resolved against
    the directory of ``fn``'s source file (else the working directory). A missing local module
    raises :class:`FileNotFoundError`; a pattern matching nothing adds nothing.
    """
    if not local_modules and not additional_files:
        recent = _RECENT.get(id(fn))
        if recent is not None and recent[0] is fn and \
                getattr(_unwrap(fn), "__code__", None) is recent[1]:
            return recent[2]
        files_key = _NO_FILES
    else:
        files_key = (tuple(os.fspath(p) for p in local_modules),
                     tuple(os.fspath(p) for p in additional_files))
    try:
        entry = _CACHE.get(fn, {}).get(files_key)
    except TypeError:  # not weak-referenceable or not hashable: no caching
        entry = None
    if entry is not None:
        target = entry[0]()
        if target is not None and getattr(target, "__code__", None) is entry[1]:
            if files_key is not _NO_FILES:
                identity = _with_files(entry[2], fn, files_key)
                if identity.digest != entry[3].digest:
                    entry[3] = identity
            else:
                _remember(fn, entry[1], entry[3])
            return entry[3]

    target = _unwrap(fn)
    qualname = str(getattr(target, "__qualname__", None) or getattr(target, "__name__", "?"))
    walker = _Walker(target)
    walker.run(target, f"fn:{qualname}")
    core = CodeIdentity(digest=_digest(walker.parts), function=qualname, module=walker.module,
                        source=walker.sources.get(f"fn:{qualname}", ""), parts=walker.parts,
                        sources=walker.sources, external=walker.external,
                        source_available=walker.source_available)
    identity = _with_files(core, fn, files_key)
    try:
        new = [weakref.ref(target), getattr(target, "__code__", None), core, identity]
        with _LOCK:
            _CACHE.setdefault(fn, {})[files_key] = new
    except TypeError:
        pass
    else:
        if files_key is _NO_FILES:
            _remember(fn, new[1], identity)
    return identity


def _remember(fn: Any, code: Any, identity: CodeIdentity) -> None:
    with _LOCK:
        if len(_RECENT) >= 256:  # a notebook redefining functions: start again
            _RECENT.clear()
        _RECENT[id(fn)] = (fn, code, identity)


def clear_code_identity_cache() -> None:
    """Forget all cached identities (e.g. after redefining helpers or constants in a notebook)."""
    with _LOCK:
        _CACHE.clear()
        _RECENT.clear()
        _parse.cache_clear()
        _PY_DIGESTS.clear()
        _RAW_DIGESTS.clear()
        _source_digest.cache_clear()


def source_files(fn: Callable[..., Any], local_modules: Iterable[PathArg] = (),
                 additional_files: Iterable[PathArg] = ()) -> dict[str, str]:
    """What a container or environment needs shipped for ``fn``: relative name -> absolute path.

    ``fn``'s own module file comes under its base name (when it has one on disk), local modules
    and additional files under their names in :attr:`CodeIdentity.parts` (``mylib/sub.py``,
    ``data/x.json``). Two different files under one name raise :class:`ValueError`.
    """
    own = _source_file(fn)
    found = {os.path.basename(own): own} if own else {}
    modules, files = code_files(os.path.dirname(own) if own else os.getcwd(),
                                 local_modules, additional_files)
    for rel, path in (*modules.items(), *files.items()):
        add_file(found, rel, path)
    return found
