"""The commands of ``hither`` that read and maintain the local store: ``cache
info|ls|show|gc|clear``, ``show``, ``explain``, ``ui``. Imported only when one of them runs
(rich and the record readers stay out of ``hither --help``)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from typing import Any

from hither_store import LocalStore, parse_blob_uri
from rich import box
from rich.console import Console
from rich.filesize import decimal as _size
from rich.syntax import Syntax
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from .cli import CliError
from .explaining import (
    LineageNode,
    describe_manifest,
    explain,
    format_elapsed,
    format_runtime,
    format_time,
    lineage,
    open_store,
    resolve_key,
)
from .record import BadRecord, Record

_STATUS_STYLE = {"finished": "green", "error": "red"}


# ----------------------------------------------------------------------------- helpers
def _store(args: argparse.Namespace) -> LocalStore:
    return open_store(args.store, must_exist=True)


def _records(store: LocalStore) -> Iterator[tuple[str, Record | None]]:
    """Every record of the store, typed (None for one that is not what hither writes)."""
    for key, raw in store.iter_records():
        try:
            yield key, Record.from_dict(raw, key, strict=False)
        except BadRecord:
            yield key, None


def _outcome(rec: Record, full: bool = False) -> str:
    """The result description of a record, or its error type (and message)."""
    if rec.ok:
        return describe_manifest(rec.result)
    err = rec.error
    if err is None:
        return "error"
    return f"{err.short_type}: {err.message}" if full else err.short_type


def _status_text(status: Any) -> Text:
    return Text(str(status or "-"), style=_STATUS_STYLE.get(str(status), ""))


def _fields_table() -> Table:
    table = Table(show_header=False, box=None, pad_edge=False, padding=(0, 2, 0, 0))
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    return table


# ----------------------------------------------------------------------------- cache info
def cmd_info(args: argparse.Namespace, out: Console) -> int:
    """``hither cache info``: what the store holds."""
    store = _store(args)
    info = store.info()
    statuses: dict[str, int] = {}
    for _, rec in _records(store):
        st = rec.status if rec is not None else "not a hither record"
        statuses[st] = statuses.get(st, 0) + 1
    table = _fields_table()
    table.add_row("store", Text(str(info["root"])))
    detail = ", ".join(f"{n} {st}" for st, n in sorted(statuses.items())) or "none"
    table.add_row("records", f"{info['records']} ({detail}), {_size(info['record_bytes'])}")
    table.add_row("blobs", f"{info['blobs']}, {_size(info['blob_bytes'])}")
    table.add_row("temp files", f"{info['tmp_files']}, {_size(info['tmp_bytes'])}")
    table.add_row("work folders", f"{info['work_dirs'] - info['abandoned_dirs']} of running "
                                  "processes, "
                                  f"{_size(info['work_dir_bytes'] - info['abandoned_bytes'])}")
    from .exchange import leftovers

    stale = leftovers()
    n_left = info["abandoned_dirs"] + len(stale)
    if n_left:
        size = info["abandoned_bytes"] + sum(b for _, b in stale)
        table.add_row("leftovers", Text(
            f"{n_left} folders of stopped processes ({info['abandoned_dirs']} in the store, "
            f"{len(stale)} exchange stores in the temp folder), {_size(size)}: "
            "`hither cache gc` removes them", style="yellow"))
    if info.get("quarantined"):
        table.add_row("quarantined", f"{info['quarantined']} damaged files, "
                                     f"{_size(info['quarantine_bytes'])}")
    out.print(table)
    return 0


# ----------------------------------------------------------------------------- cache ls
def cmd_ls(args: argparse.Namespace, out: Console) -> int:
    """``hither cache ls``: a table of records, newest first."""
    store = _store(args)
    rows = []
    total = 0
    for key, rec in _records(store):
        total += 1
        if rec is None:
            continue
        if args.function and rec.function.name != args.function:
            continue
        if args.status and rec.status != args.status:
            continue
        rows.append((key, rec))
    if not rows:
        if total == 0:
            raise CliError(f"no records in the store at {store.root}")
        raise CliError(f"none of the {total} records in {store.root} match")
    rows.sort(key=lambda kr: -(kr[1].provenance.recorded_at or 0.0))
    shown = rows if not args.limit else rows[: args.limit]
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False, collapse_padding=True)
    for name in ("key", "function", "version", "status", "recorded at", "elapsed"):
        table.add_column(name, no_wrap=True, style="cyan" if name == "key" else None,
                         justify="right" if name == "elapsed" else "left")
    table.add_column("result", overflow="fold", min_width=12)  # the one that may wrap
    for key, rec in shown:
        prov = rec.provenance
        table.add_row(key[:12], Text(rec.function.name), Text(rec.function.version),
                      _status_text(rec.status), format_time(prov.recorded_at)[:16],
                      format_elapsed(prov.elapsed_sec), Text(_outcome(rec)))
    out.print(table)
    if len(shown) < len(rows):
        out.print(Text(f"{len(rows) - len(shown)} more (--limit 0 shows all)", style="dim"))
    return 0


# ----------------------------------------------------------------------------- show
def _upstream_label(store: LocalStore, key: str) -> Text:
    raw = store.get_record(key) if store.has_record(key) else None
    text = Text(key[:12], style="cyan")
    try:
        rec = None if raw is None else Record.from_dict(raw, key, strict=False)
    except BadRecord:
        rec = None
    if rec is None:
        text.append(" (no record)", style="dim")
    else:
        text.append(f" {rec.function.name}")
    return text


def _node_label(node: LineageNode) -> Text:
    text = Text()
    if node.input_name is not None:
        text.append(f"{node.input_name} ← ", style="bold")
    text.append(node.key[:12], style="cyan")
    if node.function is not None:
        text.append(f" {node.function} {node.version} ")
        text.append(str(node.status), style=_STATUS_STYLE.get(str(node.status), ""))
        text.append(f" → {node.result}")
    if node.note:
        text.append(f" ({node.note})", style="dim")
    return text


def lineage_tree(root: LineageNode) -> Tree:
    """A rich :class:`Tree` of a lineage: records, with inputs given as values as leaves."""
    def fill(tree: Tree, node: LineageNode) -> None:
        for name, desc in node.values:
            tree.add(Text(f"{name} = {desc}", style="dim"))
        for child in node.children:
            fill(tree.add(_node_label(child)), child)

    tree = Tree(_node_label(root))
    fill(tree, root)
    return tree


def _print_sources(rec: Record, out: Console) -> None:
    fn = rec.function
    sources = fn.sources or ({"fn": fn.source} if fn.source else {})
    if not sources:
        out.print(Text("no source was recorded (code identified by bytecode)", style="dim"))
    for piece, src in sources.items():
        out.print(Text(f"# {piece}", style="bold"))
        out.print(Syntax(src, "python", theme="ansi_dark", background_color="default"))
        out.print()


def cmd_show(args: argparse.Namespace, out: Console) -> int:
    """``hither show KEY``: provenance, inputs, result, console output and lineage."""
    store = _store(args)
    key = resolve_key(store, args.key)
    raw = store.get_record(key)
    if raw is None:
        raise CliError(f"the record {key[:12]} cannot be read")
    if args.json:
        sys.stdout.write(json.dumps(raw, indent=2, sort_keys=True) + "\n")
        return 0
    try:
        rec = Record.from_dict(raw, key, strict=False)
    except BadRecord as e:
        raise CliError(f"the record {key[:12]} is not a hither record: {e}") from None
    if args.source:
        _print_sources(rec, out)
        return 0
    if args.html:
        from .lineage_html import write_lineage_html

        graph = write_lineage_html(key, args.html, store)
        out.print(Text(f"wrote {args.html}: the lineage of {key[:12]}, {len(graph.nodes)} jobs"))
        return 0
    prov, fn = rec.provenance, rec.function
    table = _fields_table()
    table.add_row("key", Text(key, style="cyan"))
    table.add_row("function", Text(f"{fn.name} {fn.version}  (module {fn.module or '?'})"))
    if prov.label and prov.label != fn.name:
        table.add_row("label", Text(prov.label))
    table.add_row("code", Text(fn.code or "?"))
    table.add_row("runtime", Text(format_runtime(prov.runtime)))
    table.add_row("status", _status_text(rec.status))
    if rec.ok:
        table.add_row("result", Text(_outcome(rec)))
        table.add_row("result hash", Text(str(rec.result_hash)))
    else:
        table.add_row("error", Text(_outcome(rec, full=True), style="red"))
    table.add_row("ran", Text(f"{format_time(prov.start_time)} → {format_time(prov.end_time)} "
                              f"({format_elapsed(prov.elapsed_sec)}) on "
                              f"{prov.user or '?'}@{prov.host or '?'}"))
    table.add_row("recorded", format_time(prov.recorded_at))
    table.add_row("versions", Text(f"hither {prov.hither_version or '?'}, python "
                                   f"{prov.python or '?'}, {prov.platform or '?'}"))
    if fn.external:
        ext = ", ".join(f"{k} ({v})" for k, v in sorted(fn.external.items()))
        table.add_row("not in key", Text(ext, style="dim"))
    out.print(table)

    out.print(Text("\ninputs", style="bold"))
    if not rec.inputs:
        out.print(Text("  none", style="dim"))
    else:
        itable = Table(box=box.SIMPLE_HEAD, pad_edge=False)
        for col in ("name", "value", "digest", "from job"):
            itable.add_column(col, overflow="fold")
        for name in sorted(rec.inputs):
            entry = rec.inputs[name]
            desc = entry.desc or (describe_manifest(entry.value) if entry.has_value else "?")
            ups = entry.upstream
            if entry.job is not None:
                up = _upstream_label(store, entry.job)
            elif ups:
                up = Text(f"{len(ups)} jobs: " + ", ".join(k[:12] for k in ups[:4])
                          + (" …" if len(ups) > 4 else ""))
            else:
                up = Text("-")
            itable.add_row(Text(name), Text(desc), entry.digest[:12], up)
        out.print(itable)

    if rec.console:
        out.print(Text(f"console output ({len(rec.console)} lines)", style="bold"))
        for t, text, is_err in rec.console:
            stamp = time.strftime("%H:%M:%S", time.localtime(t)) if t else "--:--:--"
            out.print(Text(f"  {stamp} {text}", style="red" if is_err else ""))
    tb = rec.error.traceback if rec.error else ""
    if tb:
        out.print(Text("traceback", style="bold"))
        out.print(Text(tb.rstrip(), style="dim"))
    out.print(Text("\nlineage", style="bold"))
    out.print(lineage_tree(lineage(key, store)))
    return 0


# ----------------------------------------------------------------------------- explain
def cmd_explain(args: argparse.Namespace, out: Console) -> int:
    """``hither explain KEY``: what went into a key; the nearest record and differences."""
    store = _store(args)
    out.print(Text(explain(args.key, store).to_text()))
    return 0


# ----------------------------------------------------------------------------- ui
def cmd_ui(args: argparse.Namespace, out: Console) -> int:
    """``hither ui``: serve the lineage pages of the store on 127.0.0.1 until Ctrl-C."""
    from .lineage_ui import serve

    serve(_store(args), args.port)
    return 0


# ----------------------------------------------------------------------------- gc
def _referenced(store: LocalStore) -> tuple[set[str], int]:
    """Hex digests of every blob a record mentions, and the number of records.

    Conservative on purpose: any string of the form ``sha256://<64 hex>`` anywhere in a
    record counts, not only the refs of the value codec's nodes, so a blob is never lost
    to a kind of node gc does not know about."""
    keep: set[str] = set()
    n = 0
    for _, rec in store.iter_records():
        n += 1
        stack: list[Any] = [rec]
        while stack:
            node = stack.pop()
            if isinstance(node, str):
                if node.startswith("sha256://") and len(node) == 73:
                    try:
                        keep.add(parse_blob_uri(node))
                    except ValueError:
                        pass
            elif isinstance(node, dict):
                stack.extend(node.values())
            elif isinstance(node, list):
                stack.extend(node)
    return keep, n


def cmd_gc(args: argparse.Namespace, out: Console) -> int:
    """``hither cache gc``: delete blobs no record refers to, stale temp files, and what
    processes that are gone left behind (work folders, exchange stores)."""
    from .exchange import collect_leftovers

    store = _store(args)
    if args.min_age < 0:
        raise CliError("--min-age must be >= 0", code=2)
    # the records are read before the blobs are listed: a record written later references
    # blobs its writer refreshed, which the grace period (--min-age) keeps
    keep, nrec = _referenced(store)
    res = store.gc({"sha256://" + h for h in keep}, older_than=args.min_age,
                   dry_run=args.dry_run)
    ex_n, ex_bytes = collect_leftovers(dry_run=args.dry_run)
    left_n, left_bytes = res["dirs_removed"] + ex_n, res["dir_bytes"] + ex_bytes
    verb = "would free" if args.dry_run else "freed"
    total = res["blob_bytes"] + res["tmp_bytes"] + left_bytes
    out.print(Text(f"{verb} {_size(total)}: {res['blobs_removed']} unreferenced blobs "
                   f"({_size(res['blob_bytes'])}), {res['tmp_removed']} temp files "
                   f"({_size(res['tmp_bytes'])}), {left_n} folders left by stopped processes "
                   f"({_size(left_bytes)}); {len(keep)} blobs referenced by {nrec} records "
                   "kept"))
    if res["blobs_recent"]:
        out.print(Text(f"{res['blobs_recent']} unreferenced blobs younger than "
                       f"{args.min_age:g} s kept (a running job may still record them; "
                       "--min-age 0 includes them when nothing writes to the store)",
                       style="dim"))
    if res["blobs_restored"]:
        out.print(Text(f"{res['blobs_restored']} blobs stored again by a running job while gc "
                       "ran were kept", style="dim"))
    return 0


# ----------------------------------------------------------------------------- clear
def cmd_clear(args: argparse.Namespace, out: Console) -> int:
    """``hither cache clear``: delete every record and blob (asks first unless --yes)."""
    store = _store(args)
    info = store.info()
    what = (f"{info['records']} records and {info['blobs']} blobs "
            f"({_size(info['blob_bytes'] + info['record_bytes'])}) in {store.root}")
    if not args.yes:
        stdin = sys.stdin
        if stdin is None or not stdin.isatty():
            raise CliError(f"refusing to clear {store.root} without --yes (stdin is not a "
                           "terminal, so there is nobody to confirm)", code=2)
        answer = out.input(f"Delete all {what}? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            out.print("Nothing deleted.")
            return 1
    store.clear()
    out.print(Text(f"Cleared: deleted {what}."))
    return 0
