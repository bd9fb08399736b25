"""The lineage of a result as a self-contained HTML page.

:func:`lineage_page` reads a record and, through ``inputs[*].job`` (and ``inputs[*].jobs``,
a list of upstream keys), the records of every job upstream of it, and renders one HTML
file: the DAG drawn in SVG (jobs as nodes, edges labelled with argument names), and for
each job its provenance, inputs, console, sources and the explain diff against the nearest
other record of the same function. The page needs no network: its script and style are
inline, and its Content-Security-Policy allows nothing else.

Everything read from records is untrusted text: it travels to the page as JSON in a
``<script type="application/json">`` element and is inserted with ``textContent`` only.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import re
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from hither_store import LocalStore

from .explain import (
    StoreArg,
    _differences,
    _from_record,
    _Subject,
    describe_manifest,
    format_runtime,
    format_time,
    open_store,
    resolve_key,
)

__all__ = [
    "LineageGraph",
    "json_for_script",
    "lineage_graph",
    "lineage_page",
    "read_graph",
    "render_page",
    "upstream_keys",
    "write_lineage_html",
]

MAX_NODES = 20_000
"""Records read for one page at most; the page says how many upstream jobs were left out."""
COLLAPSE_AT = 5
"""Jobs of one function feeding the same argument(s) of the same job(s) are drawn as one
group node when there are at least this many."""
LAYER_MAX = 24
"""A layer with more drawn nodes than this folds each function's jobs in it into one group."""
NEAREST_AMONG = 200
"""A job's explain diff is taken against the nearest of this many most recent records of its
function: comparing every job with every record would be quadratic."""
CONSOLE_LINES = 200
"""Console lines kept per job (the last ones)."""
TEXT_LIMIT = 20_000
"""Characters kept of one console line, source, traceback or error message."""

_ASSETS = "assets"


@dataclass
class LineageGraph:
    """The data of a lineage page: jobs by key, edges, and sources by code digest."""

    root: str
    nodes: dict[str, dict[str, Any]] = field(default_factory=dict)
    edges: list[dict[str, str]] = field(default_factory=list)
    """``{"from": upstream key, "to": key, "label": argument name}``."""
    sources: dict[str, dict[str, str]] = field(default_factory=dict)
    """Code digest -> ``{piece: source}`` (shared by every job of that code)."""
    truncated: int = 0
    """Upstream jobs not read because of ``max_nodes``."""

    def to_json(self) -> dict[str, Any]:
        """The JSON-able form the page's script reads."""
        return {"root": self.root, "nodes": self.nodes, "edges": self.edges,
                "sources": self.sources, "truncated": self.truncated,
                "collapse_at": COLLAPSE_AT, "layer_max": LAYER_MAX}


# ----------------------------------------------------------------------------- reading
def upstream_keys(entry: Any) -> list[str]:
    """The keys of the jobs an input came from: its ``job`` and its ``jobs`` list (a job
    inside a list, tuple or dict argument). Non-string entries are ignored."""
    if not isinstance(entry, dict):
        return []
    found: list[str] = []
    single = entry.get("job")
    if isinstance(single, str):
        found.append(single)
    many = entry.get("jobs")
    if isinstance(many, (list, tuple)):
        found.extend(k for k in many if isinstance(k, str))
    return list(dict.fromkeys(found))


def _clip(value: Any, limit: int = TEXT_LIMIT) -> str:
    text = value if isinstance(value, str) else str(value)
    return text if len(text) <= limit else text[:limit] + f"… ({len(text) - limit} more)"


def _time(t: Any) -> str:
    try:
        return format_time(t)
    except (OverflowError, OSError, ValueError):
        return str(t)


def _elapsed(sec: Any) -> str:
    from .cli import _elapsed as fmt  # the CLI's format, so both read the same

    try:
        return fmt(sec)
    except (OverflowError, ValueError):
        return str(sec)


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _input_desc(entry: dict[str, Any]) -> str:
    desc = entry.get("desc")
    if desc is None and "value" in entry:
        desc = describe_manifest(entry["value"])
    return _clip(desc if desc is not None else "?", 500)


def _node(key: str, rec: dict[str, Any], graph: LineageGraph) -> dict[str, Any]:
    """The page data of one record (untrusted: every field is checked or stringified)."""
    prov = _dict(rec.get("provenance"))
    fn = _dict(prov.get("function"))
    status = rec.get("status") if rec.get("status") in ("finished", "error") else "error"
    node: dict[str, Any] = {
        "key": key, "fn": _clip(fn.get("name", "?"), 200),
        "version": _clip(fn.get("version", "?"), 100), "status": status,
        "label": _clip(prov.get("label") or "", 200),
    }
    if status == "finished":
        node["result"] = _clip(describe_manifest(rec.get("result")), 500)
    else:
        err = _dict(rec.get("error"))
        node["result"] = _clip(str(err.get("type", "error")).rpartition(".")[2], 200)
        node["error"] = {"type": _clip(err.get("type", "?"), 500),
                         "message": _clip(err.get("message", "")),
                         "traceback": _clip(err.get("traceback") or "")}
    code = str(fn.get("code", ""))
    node["code"] = code
    node["provenance"] = [
        ["function", f"{node['fn']} {node['version']}"],
        ["module", _clip(fn.get("module", "?"), 500)],
        ["code", _clip(code, 200)],
        ["runtime", _clip(format_runtime(prov.get("runtime")), 1000)],
        ["host", _clip(f"{prov.get('user') or '?'}@{prov.get('host', '?')}", 500)],
        ["started", _time(prov.get("start_time"))],
        ["ended", _time(prov.get("end_time"))],
        ["elapsed", _elapsed(prov.get("elapsed_sec"))],
        ["recorded", _time(prov.get("recorded_at"))],
        ["handler", _clip(prov.get("handler") or "?", 200)],
        ["versions", _clip(f"hither {prov.get('hither_version', '?')}, python "
                           f"{prov.get('python', '?')}, {prov.get('platform', '?')}", 1000)],
    ]
    if code not in graph.sources:
        pieces = _dict(fn.get("sources"))
        if not pieces and isinstance(fn.get("source"), str):
            pieces = {"fn": fn["source"]}
        graph.sources[code] = {_clip(k, 500): _clip(v) for k, v in pieces.items()}
    inputs = _dict(rec.get("inputs"))
    node["inputs"] = []
    for name in sorted(inputs):
        entry = _dict(inputs[name])
        node["inputs"].append({"name": _clip(name, 200), "desc": _input_desc(entry),
                               "digest": _clip(entry.get("digest", ""), 100),
                               "jobs": upstream_keys(entry)})
    console = rec.get("console")
    console = console if isinstance(console, list) else []
    node["console_total"] = len(console)
    node["console"] = []
    for line in console[-CONSOLE_LINES:]:
        t, text, is_err = ([*line, None, "", False] if isinstance(line, list) else
                           [None, line, False])[:3]
        stamp = _time(t)[11:] if isinstance(t, (int, float)) else "--:--:--"
        node["console"].append([stamp, _clip(text), bool(is_err)])
    return node


def _missing(key: str, note: str) -> dict[str, Any]:
    return {"key": _clip(key, 200), "fn": "?", "version": "", "status": "missing",
            "note": note, "result": note, "inputs": [], "provenance": [], "console": [],
            "console_total": 0, "code": "", "label": ""}


def read_graph(store: LocalStore, key: str, *, max_nodes: int = MAX_NODES,
               cache_hits: Mapping[str, bool] | None = None) -> LineageGraph:
    """The lineage DAG of record ``key`` (a full key), read breadth first through the
    inputs' upstream jobs; at most ``max_nodes`` records are read."""
    graph = LineageGraph(root=key)
    records: dict[str, dict[str, Any]] = {}
    queue: deque[str] = deque([key])
    queued = {key}
    skipped: set[str] = set()
    while queue:
        k = queue.popleft()
        try:
            rec = store.get_record(k)
        except ValueError:
            graph.nodes[k] = _missing(k, "not a valid key")
            continue
        if not isinstance(rec, dict):
            graph.nodes[k] = _missing(k, "no record")
            continue
        node = _node(k, rec, graph)
        if cache_hits is not None and k in cache_hits:
            node["cache_hit"] = bool(cache_hits[k])
        graph.nodes[k] = node
        records[k] = rec
        for inp in node["inputs"]:
            for up in inp["jobs"]:
                if up not in queued:
                    if len(queued) >= max_nodes:
                        skipped.add(up)
                        continue
                    queued.add(up)
                    queue.append(up)
                graph.edges.append({"from": up, "to": k, "label": inp["name"]})
    graph.truncated = len(skipped)
    graph.edges = _acyclic(graph.edges, key)
    _add_explanations(store, graph, records)
    return graph


def _acyclic(edges: list[dict[str, str]], root: str) -> list[dict[str, str]]:
    """``edges`` without those closing a cycle (a content-addressed store has none; a
    hand-edited one might), found by a depth-first walk upstream from ``root``."""
    ups: dict[str, list[dict[str, str]]] = {}
    for e in edges:
        ups.setdefault(e["to"], []).append(e)
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    dropped: set[int] = set()
    stack: list[tuple[str, Iterator[dict[str, str]]]] = [(root, iter(ups.get(root, ())))]
    state[root] = 1
    while stack:
        k, it = stack[-1]
        edge = next(it, None)
        if edge is None:
            state[k] = 2
            stack.pop()
            continue
        up = edge["from"]
        if state.get(up) == 1:
            dropped.add(id(edge))
        elif up not in state:
            state[up] = 1
            stack.append((up, iter(ups.get(up, ()))))
    return [e for e in edges if id(e) not in dropped]


def _add_explanations(store: LocalStore, graph: LineageGraph,
                      records: dict[str, dict[str, Any]]) -> None:
    """Each job's differences from the nearest other record of its function, ranked as
    :func:`hither.explain.explain` ranks them, among the ``NEAREST_AMONG`` most recent
    records of that function (one pass over the store; ``explain`` searches them all)."""
    wanted = {n["fn"] for n in graph.nodes.values() if n["status"] != "missing"}
    by_fn: dict[str, list[_Subject]] = {}
    for k, rec in store.iter_records():
        prov = rec.get("provenance")
        fn = prov.get("function") if isinstance(prov, dict) else None
        name = fn.get("name") if isinstance(fn, dict) else None
        if name in wanted:
            subject = _subject(k, rec)
            if subject is not None:
                by_fn.setdefault(str(name), []).append(subject)
    for group in by_fn.values():
        group.sort(key=lambda sub: -(sub.recorded_at or 0.0))
        del group[NEAREST_AMONG + 1:]  # + 1: a job may meet its own record
    for k, rec in records.items():
        node = graph.nodes[k]
        subject = _subject(k, rec)
        if subject is None:
            continue
        best: tuple[tuple[int, bool, float], _Subject, list[str]] | None = None
        for other in by_fn.get(node["fn"], ()):
            if other.key == k:
                continue
            diffs = _differences(subject, other)
            rank = (len(diffs), other.version != subject.version, -(other.recorded_at or 0.0))
            if best is None or rank < best[0]:
                best = (rank, other, diffs)
        if best is None:
            node["explain"] = {"nearest": None}
        else:
            other, diffs = best[1], best[2]
            node["explain"] = {"nearest": other.key, "version": _clip(other.version, 100),
                               "recorded": _time(other.recorded_at),
                               "differences": [_clip(d, 2000) for d in diffs]}


def _subject(key: str, rec: dict[str, Any]) -> _Subject | None:
    try:
        return _from_record(key, rec)
    except (AttributeError, KeyError, TypeError, ValueError):
        return None  # a malformed record: no explain diff, the rest of the page stays


def _job_cache_hits(job: Any) -> dict[str, bool]:
    """Whether each completed job of ``job``'s pipeline (it and its upstream jobs, also
    inside list, tuple and dict arguments) came from the cache, by key."""
    from .scheduler import _upstream_by_name

    hits: dict[str, bool] = {}
    todo, seen = [job], set()
    while todo:
        j = todo.pop()
        if id(j) in seen:
            continue
        seen.add(id(j))
        if j.key and j.done():
            hits[j.key] = bool(j.cache_hit)
        todo.extend(up for ups in _upstream_by_name(j.kwargs).values() for up in ups)
    return hits


def lineage_graph(target: Any, cache: StoreArg = None, *,
                  max_nodes: int = MAX_NODES) -> LineageGraph:
    """The lineage DAG of ``target``: a completed :class:`hither.Job` (its cache hits are
    then known) or a key (a unique prefix will do) of the store ``cache``."""
    from .explain import KeyLookupError
    from .job import Job

    hits = None
    if isinstance(target, Job):
        if not target.key or not target.done():
            raise KeyLookupError(f"job {target.label!r} has no record yet: it is not "
                                 "complete, or it ran without a job cache", reason="no-key")
        if cache is None:
            cache = target.get_settings().job_cache
        hits = _job_cache_hits(target)
        key = target.key
        store = open_store(cache)
    else:
        store = open_store(cache)
        key = resolve_key(store, str(target))
    return read_graph(store, key, max_nodes=max_nodes, cache_hits=hits)


# ----------------------------------------------------------------------------- the page
def _asset(name: str) -> str:
    return (resources.files(__package__) / _ASSETS / name).read_text(encoding="utf-8")


def _csp_hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


def json_for_script(data: Any) -> str:
    """``data`` as JSON that is safe inside a ``<script>`` element: ``<``, ``>`` and ``&``
    are escaped, so no ``</script>`` or ``<!--`` can end or change the element."""
    text = json.dumps(data, ensure_ascii=True, sort_keys=True, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def render_page(graph: LineageGraph, *, title: str | None = None,
                back_link: str | None = None) -> str:
    """The self-contained HTML page of ``graph``. ``back_link`` (a same-site path) adds a
    link back to an index, as ``hither ui`` serves."""
    css, js = _asset("lineage.css"), _asset("lineage.js")
    root = graph.nodes.get(graph.root, {})
    if title is None:
        title = f"lineage of {root.get('fn', '?')} {graph.root[:12]}"
    # Inline code is allowed by hash only: no injected element could run or load anything.
    csp = (f"default-src 'none'; script-src {_csp_hash(js)}; style-src {_csp_hash(css)}; "
           "img-src data:; base-uri 'none'; form-action 'none'")
    back = (f'<a class="back" href="{html.escape(back_link, quote=True)}">all results</a>'
            if back_link else "")
    parts = {
        "csp": html.escape(csp, quote=False),  # it has no '"' to end the attribute
        "title": html.escape(title), "css": css,
        "js": js, "data": json_for_script(graph.to_json()), "back": back,
    }
    return re.sub(r"\{\{(\w+)\}\}", lambda m: parts[m.group(1)], _asset("lineage.html"))


def lineage_page(target: Any, cache: StoreArg = None, *, max_nodes: int = MAX_NODES) -> str:
    """The lineage page of ``target`` (a completed job, or a key or unique key prefix)."""
    return render_page(lineage_graph(target, cache, max_nodes=max_nodes))


def write_lineage_html(target: Any, path: str | Path, cache: StoreArg = None, *,
                       max_nodes: int = MAX_NODES) -> LineageGraph:
    """Write the lineage page of ``target`` to ``path``; return the graph drawn."""
    graph = lineage_graph(target, cache, max_nodes=max_nodes)
    Path(path).write_text(render_page(graph), encoding="utf-8")
    return graph

