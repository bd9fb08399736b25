"""HTML displays of :mod:`hither.explaining`'s objects, for notebooks (``_repr_html_``).

Small static HTML: no script (notebooks show untrusted output without running it) and inline
styles only, so the output looks the same wherever it is shown. Every value comes from a
record and is escaped.
"""

from __future__ import annotations

import html
import re
from typing import TYPE_CHECKING, Any

from .explaining import format_runtime, format_time

if TYPE_CHECKING:
    from .explaining import Explanation, LineageNode

__all__ = ["explanation_html", "job_html", "lineage_tree_html"]

_TH = "text-align:left;padding:1px 12px 1px 0;vertical-align:top;font-weight:600;opacity:.75"
_TD = "text-align:left;padding:1px 12px 1px 0;vertical-align:top"
_MONO = "font-family:ui-monospace,'DejaVu Sans Mono',monospace;font-size:90%"
_STATUS_COLOR = {"finished": "#2e7d32", "error": "#c62828"}
_PART_RE = re.compile(r"(key format|version|code changed|runtime changed|input '[^']*'|"
                      r"input \"[^\"]*\")")
_TREE_LIMIT = 2_000  # records shown in a lineage tree at most
_FOLD_AT = 5  # this many children of one function fold closed


def _time(t: Any) -> str:
    try:
        return format_time(t)
    except (OverflowError, OSError, ValueError):
        return str(t)


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _row(head: str, *cells: str) -> str:
    return (f'<tr><th style="{_TH}">{_e(head)}</th>'
            + "".join(f'<td style="{_TD}">{c}</td>' for c in cells) + "</tr>")


def _status(status: Any) -> str:
    color = _STATUS_COLOR.get(str(status), "#757575")
    return f'<span style="color:{color};font-weight:600">{_e(status or "-")}</span>'


def _code(text: Any) -> str:
    return f'<code style="{_MONO}">{_e(text)}</code>'


_CONSOLE_TAIL = 20  # console lines shown in a job's display


def job_html(job: Any) -> str:
    """A job as a small table: label, function, status, key, cache hit, elapsed time and
    the last lines of its console."""
    status = job.get_status().value
    color = _STATUS_COLOR.get(status, "#555" if status != "cancelled" else "#8a6d00")
    info = job.get_runtime_info() or {}
    rows = [
        _row("job", f"{_e(job.label)} <span style='opacity:.6'>{_e(job.job_id)}</span>"),
        _row("function", f"{_e(job.get_function_name())} {_e(job.get_function_version())}"),
        _row("status", f"<b style='color:{color}'>{_e(status)}</b>"
             + (" (cache hit)" if job.cache_hit else "")),
    ]
    if job.key:
        rows.append(_row("key", f"<code style='{_MONO}'>{_e(job.key)}</code>"))
    if info:
        rows.append(_row("elapsed", _e(f"{info.get('elapsed_sec', 0):.3f} s")))
    if job.done() and not job.cancelled():
        err = job.exception(0)
        if err is not None:
            rows.append(_row("error", _code(f"{type(err).__name__}: {err}")))
    lines = job.console_lines()[-_CONSOLE_TAIL:]
    if lines:
        text = "\n".join(x["text"] for x in lines)
        rows.append(_row("console", f"<pre style='{_MONO};margin:0'>{_e(text)}</pre>"))
    return f"<table style='border-collapse:collapse'>{''.join(rows)}</table>"


def explanation_html(ex: Explanation) -> str:
    """An :class:`~hither.explaining.Explanation` as a small HTML table (what went into the key)
    and a table of what changed since the nearest other record of the same function."""
    rows = [_row("key", _code(ex.key)),
            _row("function", f"{_e(ex.function)} {_e(ex.version)} (code "
                             f"{_code(str(ex.code_digest)[:12])})"),
            _row("runtime", _e(format_runtime(ex.runtime)))]
    if ex.has_record:
        rows.append(_row("record", f"{_status(ex.status)}, recorded "
                                   f"{_e(_time(ex.recorded_at))}"))
    else:
        rows.append(_row("record", f"none: the job missed the cache (job is "
                                   f"{_status(ex.status)})"))
    out = [f'<div class="hither-explanation"><table style="border-collapse:collapse">'
           f'{"".join(rows)}</table>']
    if ex.inputs:
        irows = "".join(
            f'<tr><td style="{_TD}">{_e(i.name)}</td><td style="{_TD}">{_e(i.desc)}</td>'
            f'<td style="{_TD}">{_code(i.digest[:12])}</td><td style="{_TD}">'
            f'{_code(i.job[:12]) if i.job else "-"}</td></tr>' for i in ex.inputs)
        out.append('<table style="border-collapse:collapse;margin-top:6px"><tr>'
                   + "".join(f'<th style="{_TH}">{h}</th>'
                             for h in ("input", "value", "digest", "from job"))
                   + f"</tr>{irows}</table>")
    if ex.nearest_key is None:
        out.append(f"<p>No other record of {_code(ex.function)} in the store: nothing to "
                   "compare with.</p>")
    else:
        out.append(f'<p style="margin:8px 0 2px"><b>What changed</b> since the nearest other '
                   f"record of {_code(ex.function)}: {_code(ex.nearest_key[:12])} (version "
                   f"{_e(ex.nearest_version)}, recorded {_e(_time(ex.nearest_recorded_at))})"
                   "</p>")
        if ex.differences:
            drows = []
            for d in ex.differences:
                m = _PART_RE.match(d)
                part = m.group(1).replace(" changed", "") if m else ""
                drows.append(f'<tr><td style="{_TD};font-weight:600">{_e(part)}</td>'
                             f'<td style="{_TD}">{_e(d)}</td></tr>')
            out.append('<table style="border-collapse:collapse"><tr>'
                       f'<th style="{_TH}">part</th><th style="{_TH}">change</th></tr>'
                       f'{"".join(drows)}</table>')
        else:
            out.append("<p>No difference in the key parts.</p>")
    out.append("</div>")
    return "".join(out)


def lineage_tree_html(root: LineageNode) -> str:
    """A :class:`~hither.explaining.LineageNode` as nested lists; the inputs of a job fold
    (``<details>``), and a run of jobs of one function feeding one job folds closed."""
    shown = [0]

    def label(node: LineageNode) -> str:
        text = ""
        if node.input_name is not None:
            text += f"<b>{_e(node.input_name)}</b> ← "
        text += f'<span title="{_e(node.key)}">{_code(node.key[:12])}</span>'
        if node.function is not None:
            text += (f" {_e(node.function)} {_e(node.version)} {_status(node.status)} → "
                     f"{_e(node.result)}")
        if node.note:
            text += f' <i style="opacity:.6">({_e(node.note)})</i>'
        return text

    def items(node: LineageNode) -> str:
        out = [f'<li style="opacity:.7">{_e(name)} = {_e(desc)}</li>'
               for name, desc in node.values]
        by_fn: dict[str | None, list[LineageNode]] = {}
        for child in node.children:
            by_fn.setdefault(child.function, []).append(child)
        for fn, children in by_fn.items():
            inner = "".join(render(c) for c in children)
            if len(children) >= _FOLD_AT:
                out.append(f"<li><details><summary>{_e(fn)} ×{len(children)}</summary>"
                           f'<ul style="margin:0;list-style:none;padding-left:1.4em">{inner}'
                           "</ul></details></li>")
            else:
                out.append(inner)
        return "".join(out)

    def render(node: LineageNode) -> str:
        if shown[0] >= _TREE_LIMIT:
            return ""
        shown[0] += 1
        if not node.children and not node.values:
            return f"<li>{label(node)}</li>"
        return (f"<li><details open><summary>{label(node)}</summary>"
                f'<ul style="margin:0;list-style:none;padding-left:1.4em">{items(node)}</ul>'
                "</details></li>")

    tree = render(root)
    total = sum(1 for _ in root.walk())
    more = (f'<p style="opacity:.6">{total - shown[0]} more records not shown; '
            "<code>hither show KEY --html FILE</code> draws them all</p>"
            if total > shown[0] else "")
    return f'<ul class="hither-lineage" style="list-style:none;padding-left:0">{tree}</ul>{more}'
