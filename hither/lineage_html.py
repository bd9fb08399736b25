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

from .explaining import (
    StoreArg,
    _from_record,
    _Subject,
    describe_manifest,
    format_runtime,
    format_time,
    nearest_among,
    open_store,
    resolve_key,
    subjects,
)
from .record import BadRecord, Record

__all__ = [
    "LineageGraph",
    "json_for_script",
    "lineage_graph",
    "lineage_page",
    "read_graph",
    "render_page",
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
def _clip(value: Any, limit: int = TEXT_LIMIT) -> str:
    text = value if isinstance(value, str) else str(value)
    return text if len(text) <= limit else text[:limit] + f"… ({len(text) - limit} more)"


def _time(t: Any) -> str:
    try:
        return format_time(t)
    except (OverflowError, OSError, ValueError):
        return str(t)


def _elapsed(sec: Any) -> str:
    from .explaining import format_elapsed as fmt  # the CLI's format

    try:
        return fmt(sec)
    except (OverflowError, ValueError):
        return str(sec)


def _node(key: str, rec: Record, graph: LineageGraph) -> dict[str, Any]:
    """The page data of one record (untrusted text: every field is clipped, the page
    inserts it as text only)."""
    prov, fn = rec.provenance, rec.function
    node: dict[str, Any] = {
        "key": key, "fn": _clip(fn.name, 200), "version": _clip(fn.version, 100),
        "status": rec.status, "label": _clip(prov.label, 200),
    }
    if rec.ok:
        node["result"] = _clip(describe_manifest(rec.result), 500)
    else:
        err = rec.error
        node["result"] = _clip(err.short_type if err else "error", 200)
        node["error"] = {"type": _clip(err.type if err else "?", 500),
                         "message": _clip(err.message if err else ""),
                         "traceback": _clip(err.traceback if err else "")}
    node["code"] = fn.code
    node["provenance"] = [
        ["function", f"{node['fn']} {node['version']}"],
        ["module", _clip(fn.module or "?", 500)],
        ["code", _clip(fn.code, 200)],
        ["runtime", _clip(format_runtime(prov.runtime), 1000)],
        ["host", _clip(f"{prov.user or '?'}@{prov.host or '?'}", 500)],
        ["started", _time(prov.start_time)],
        ["ended", _time(prov.end_time)],
        ["elapsed", _elapsed(prov.elapsed_sec)],
        ["recorded", _time(prov.recorded_at)],
        ["handler", _clip(prov.handler or "?", 200)],
        ["versions", _clip(f"hither {prov.hither_version or '?'}, python "
                           f"{prov.python or '?'}, {prov.platform or '?'}", 1000)],
    ]
    if fn.code not in graph.sources:
        pieces = fn.sources or ({"fn": fn.source} if fn.source else {})
        graph.sources[fn.code] = {_clip(k, 500): _clip(v) for k, v in pieces.items()}
    node["inputs"] = []
    for name in sorted(rec.inputs):
        entry = rec.inputs[name]
        desc = entry.desc or (describe_manifest(entry.value) if entry.has_value else "?")
        node["inputs"].append({"name": _clip(name, 200), "desc": _clip(desc, 500),
                               "digest": _clip(entry.digest, 100),
                               "jobs": list(dict.fromkeys(entry.upstream))})
    node["console_total"] = len(rec.console)
    node["console"] = [[_time(t)[11:], _clip(text), is_err]
                       for t, text, is_err in rec.console[-CONSOLE_LINES:]]
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
        try:
            node = _node(k, Record.from_dict(rec, k, strict=False), graph)
        except BadRecord:
            graph.nodes[k] = _missing(k, "not a hither record")
            continue
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
    """Each job's differences from the nearest other record of its function, chosen as
    :func:`hither.explaining.explain` chooses it, among the ``NEAREST_AMONG`` most recent
    records of that function (one pass over the store; ``explain`` searches them all)."""
    wanted = {n["fn"] for n in graph.nodes.values() if n["status"] != "missing"}
    by_fn: dict[str, list[_Subject]] = {}
    for subject in subjects(store, wanted):
        by_fn.setdefault(subject.name, []).append(subject)
    for group in by_fn.values():
        group.sort(key=lambda sub: -(sub.recorded_at or 0.0))
        del group[NEAREST_AMONG + 1:]  # + 1: a job may meet its own record
    for k, rec in records.items():
        node = graph.nodes[k]
        try:
            subject = _from_record(k, rec)
        except BadRecord:
            continue  # no explain diff; the rest of the page stays
        best = nearest_among(subject, by_fn.get(node["fn"], ()))
        if best is None:
            node["explain"] = {"nearest": None}
        else:
            other, diffs = best
            node["explain"] = {"nearest": other.key, "version": _clip(other.version, 100),
                               "recorded": _time(other.recorded_at),
                               "differences": [_clip(d, 2000) for d in diffs]}


def _job_cache_hits(job: Any) -> dict[str, bool]:
    """Whether each completed job of ``job``'s pipeline (it and its upstream jobs, also
    inside list, tuple and dict arguments) came from the cache, by key."""
    from .arguments import upstream_by_name as _upstream_by_name

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
    from .explaining import KeyLookupError
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

