"""``hither get | verify | export | import | reproduce``: results by key, for a paper's
author and its reader.

::

    hither get KEY -o PATH                  write a result (a file, or the value) to PATH
    hither verify KEY                       recompute the key from the record alone
    hither export KEY... -o FILE.tar        the closure as one bundle [--with-image]
    hither import FILE.tar                  import a bundle, every byte checked
    hither reproduce KEY                    check a result; --run re-executes and compares

Exit codes: 0 success (check passed, identical), 1 failed or differs, 2 usage error.
The parsers are in :mod:`hither.cli_reproduce_parser`; this module is imported only when
one of these commands runs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from .cli import CliError
from .errors import CacheError

__all__ = ["cmd_export", "cmd_get", "cmd_import", "cmd_reproduce", "cmd_verify", "file_names",
           "write_value"]


def _err(text: str) -> None:
    print(text, file=sys.stderr)


def _store(args: argparse.Namespace, must_exist: bool = True) -> Any:
    from .explaining import open_store

    return open_store(args.store, must_exist=must_exist)


def _trusted(args: argparse.Namespace) -> Any:
    from .cli_share import _trusted as trusted

    return trusted(args)


# ----------------------------------------------------------------------------- get
def file_names(manifest: Any) -> dict[str, str]:
    """The names files had when stored (blob hex digest -> base name), from a result
    manifest: a decoded :class:`hi.File` points into the store, under its digest."""
    from ._codec import TAG

    out: dict[str, str] = {}
    stack = [manifest]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
        elif isinstance(node, dict):
            if node.get(TAG) == "file" and isinstance(node.get("ref"), str):
                name = os.path.basename(str(node.get("name") or ""))
                if name and name not in (".", ".."):
                    out[node["ref"].rpartition("/")[2]] = name
            else:
                stack.extend(node.values())
    return out


def write_value(value: Any, dest: Path, names: dict[str, str] | None = None) -> list[Path]:
    """Write a result to ``dest``: a file result as that file; a dict/list of file results
    into the folder ``dest``, by their names (``names``: see :func:`file_names`); an
    array as ``.npy``; bytes as they are; anything else as JSON. Returns the paths
    written."""
    from ._codec import File

    names = names or {}
    files: list[tuple[str, File]] = []

    def collect(v: Any) -> None:
        if isinstance(v, File):
            files.append((names.get(os.path.basename(v.path), v.name), v))
        elif isinstance(v, dict):
            for x in v.values():
                collect(x)
        elif isinstance(v, (list, tuple)):
            for x in v:
                collect(x)

    if isinstance(value, File):
        shutil.copyfile(value.path, dest)
        return [dest]
    collect(value)
    if files:
        dest.mkdir(parents=True, exist_ok=True)
        out = []
        for i, (name, f) in enumerate(files):
            target = dest / (os.path.basename(name) or f"file-{i}")
            if target in out:
                target = dest / f"{i}-{target.name}"
            shutil.copyfile(f.path, target)
            out.append(target)
        return out
    if type(value).__module__ == "numpy" and hasattr(value, "dtype"):
        import numpy as np

        with open(dest, "wb") as fh:
            np.save(fh, value, allow_pickle=False)
    elif isinstance(value, (bytes, bytearray)):
        dest.write_bytes(bytes(value))
    else:
        try:
            dest.write_text(json.dumps(value, indent=2, sort_keys=True, allow_nan=True) + "\n")
        except TypeError:
            raise CliError(f"the result ({type(value).__name__}) has no file form: read it "
                           "with hi.load(KEY)") from None
    return [dest]


def cmd_get(args: argparse.Namespace, out: Any) -> int:
    """``hither get KEY -o PATH``: the verified result written to PATH."""
    from .verifying import load, load_record

    store = _store(args)
    try:
        value = load(args.key, store)
        names = file_names(load_record(args.key, store).result)
    except CacheError as e:
        raise CliError(str(e)) from None
    except Exception as e:  # noqa: BLE001 - the stored failure of the job
        raise CliError(f"the job failed: {type(e).__name__}: {e}") from None
    dest = Path(args.output)
    if dest.exists() and not args.force and not dest.is_dir():
        raise CliError(f"{dest} exists (use --force to overwrite)", code=2)
    for p in write_value(value, dest, names):
        _err(f"wrote {p}")
    return 0


# ----------------------------------------------------------------------------- verify
def _print_checks(checks: list[Any], out: Any) -> None:
    from rich.text import Text

    marks = {True: ("ok", "green"), False: ("FAIL", "red"), None: ("--", "yellow")}
    for c in checks:
        mark, style = marks[c.ok]
        line = Text(f"  {mark:>4}  ", style=style)
        line.append(f"{c.name}: ", style="bold")
        line.append(c.detail)
        out.print(line)


def cmd_verify(args: argparse.Namespace, out: Any) -> int:
    """``hither verify KEY``: the key recomputed from its record alone."""
    from rich.text import Text

    from .verifying import verify

    report = verify(args.key, _store(args))
    if args.json:
        print(json.dumps({"key": report.key, "ok": report.ok,
                          "checks": [c.to_dict() for c in report.checks]}, indent=2))
        return 0 if report.ok else 1
    out.print(Text(f"{report.key}", style="cyan"))
    _print_checks(report.checks, out)
    out.print(Text("the key matches its record" if report.ok
                   else f"{len(report.failures())} check(s) failed",
                   style="green" if report.ok else "red"))
    return 0 if report.ok else 1


# ----------------------------------------------------------------------------- export/import
def cmd_export(args: argparse.Namespace, out: Any) -> int:
    """``hither export KEY... -o FILE.tar``: a bundle of the results' closure."""
    from hither_store.bundle import BundleError, write_bundle
    from hither_store.closure import compute_closure
    from rich.text import Text

    from .cli_share import _signer
    from .explaining import resolve_key
    from .sharing import RECORD_REFS

    store = _store(args)
    keys = [resolve_key(store, k) for k in args.keys]
    closure = compute_closure(store, keys, RECORD_REFS, lineage=not args.no_lineage)
    try:
        info = write_bundle(store, closure, keys, args.output, signer=_signer(),
                            refs=RECORD_REFS)
    except BundleError as e:
        raise CliError(str(e)) from None
    out.print(Text(f"wrote {info.path}: {len(closure.records)} records, {len(closure.blobs)} "
                   f"blobs, {len(closure.code)} code bundles, {info.size} bytes"))
    out.print(Text(f"sha256 {info.sha256}"))
    if closure.missing_records:
        _err(f"hither: {len(closure.missing_records)} lineage records are not in the store "
             "and are not in the bundle")
    if args.with_image:
        from .image_export import export_images

        for path in export_images(closure.records.values(), Path(args.output)):
            out.print(Text(f"wrote {path}"))
    return 0


def cmd_import(args: argparse.Namespace, out: Any) -> int:
    """``hither import FILE.tar``: a bundle into the store, every byte checked first."""
    from hither_store.bundle import BundleError, read_bundle
    from rich.text import Text

    from .sharing import RECORD_REFS

    store = _store(args, must_exist=False)
    trusted = _trusted(args)
    try:
        report = read_bundle(store, args.bundle, trusted=trusted,
                             require_signature=not args.unsigned, refs=RECORD_REFS)
    except BundleError as e:
        raise CliError(f"{args.bundle}: {e} (nothing was imported)") from None
    out.print(Text(f"imported {len(report.records)} records, {report.blobs} blobs and "
                   f"{len(report.code)} code bundles into {store.root}"))
    for k in report.roots:
        print(k)
    if args.with_image:
        from .image_export import import_images

        for ref in import_images(Path(args.bundle)):
            out.print(Text(f"loaded image {ref}"))
    return 0


# ----------------------------------------------------------------------------- reproduce
def cmd_reproduce(args: argparse.Namespace, out: Any) -> int:
    """``hither reproduce KEY``: check; with --run, re-execute and compare."""
    from rich.text import Text

    from .reproducing import ReproduceError, reproduce

    if args.deep and not args.run:
        raise CliError("--deep re-executes the lineage: use it with --run", code=2)
    if args.key is None and args.bundle is None:
        raise CliError("give the KEY to reproduce (or --bundle with one result)", code=2)
    try:
        report = reproduce(args.key, store=args.store, remote=args.remote, bundle=args.bundle,
                           trusted=_trusted(args), run=args.run, deep=args.deep,
                           scratch=args.scratch, timeout=args.timeout, local=args.local)
    except ReproduceError as e:
        raise CliError(str(e)) from None
    try:
        written: list[Path] = []
        if args.out and report.status in ("checked", "identical", "differs"):
            written = _write_out(report, Path(args.out))
        keep = args.keep_scratch or args.scratch is not None
        if args.json:
            doc = report.to_dict()
            doc["out"] = [str(p) for p in written]
            if not keep:
                doc["scratch"] = None  # removed below
            print(json.dumps(doc, indent=2, allow_nan=True))
        else:
            _print_report(report, out, keep)
            for p in written:
                out.print(Text(f"wrote {p}"))
        return report.exit_code
    finally:
        report.cleanup(keep_scratch=args.keep_scratch)


def _write_out(report: Any, dest: Path) -> list[Path]:
    from hither_store import LocalStore

    from ._codec import File
    from .verifying import load, load_record

    store = LocalStore(Path(report.scratch)) if report.scratch else report.source_store
    value = load(report.key, store)
    names = file_names(load_record(report.key, store).result)
    dest.mkdir(parents=True, exist_ok=True)
    if isinstance(value, File):
        name = names.get(os.path.basename(value.path), "result")
        return write_value(value, dest / name)
    return write_value(value, dest if _has_files(value) else dest / "result", names)


def _has_files(value: Any) -> bool:
    from ._codec import File

    if isinstance(value, File):
        return True
    if isinstance(value, dict):
        return any(_has_files(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_has_files(v) for v in value)
    return False


def _print_report(report: Any, out: Any, keep: bool) -> None:
    from rich.text import Text

    out.print(Text(f"{report.key}", style="cyan"), Text(f"from {report.source}"))
    _print_checks(report.checks, out)
    for w in report.warnings:
        out.print(Text(f"warning: {w}", style="yellow"))
    if report.packages:
        out.print(Text(f"recorded packages (--json lists them all): "
                       f"{', '.join(report.packages)}", style="dim"))
    for line in report.packages_here:
        out.print(Text(f"  differs here: {line}", style="yellow"))
    for r in report.runs:
        style = {"identical": "green", "differs": "yellow", "failed": "red"}[r.status]
        line = Text(f"  {r.status:>9}  ", style=style)
        line.append(f"{r.key[:12]} {r.function}")
        if r.difference is not None:
            line.append(f": first difference at {r.difference}")
        if r.error:
            line.append(f": {r.error}", style="red")
        out.print(line)
    verdict = {"checked": "check passed (nothing was run; --run re-executes)",
               "check-failed": "check FAILED", "identical": "reproduced: identical",
               "differs": "reproduced: the result DIFFERS", "failed": "re-run FAILED"}
    out.print(Text(verdict[report.status], style="green" if report.exit_code == 0 else "red"))
    if report.scratch and keep:
        out.print(Text(f"scratch store: {report.scratch}", style="dim"))
