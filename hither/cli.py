"""The ``hither`` command: look into the job cache.

::

    hither cache info|ls|show|gc|clear     the store: counts, records, one record, cleanup
    hither show KEY                        a record's provenance and lineage
    hither explain KEY                     what went into a key; how it differs from the
                                           nearest other record of the same function
    hither ui                              lineage pages of the store on 127.0.0.1
    hither key|push|pull|publish|remote    sharing results (see hither.cli_share)
    hither get|verify|export|import|reproduce   results by key (see hither.cli_reproduce)

Every command takes ``--store PATH`` (default: ``$HITHER_STORE`` or the user cache
directory). Keys may be abbreviated to a unique prefix of at least 6 hex characters.
Errors print one line to stderr; the exit code is 1 (not found, refused) or 2 (usage).

This module holds the parser only; each command lives in a module imported when it runs
(``hither --help`` loads neither rich nor the store readers).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from hither_store import StoreError

from . import __version__
from .errors import KeyLookupError

__all__ = ["CliError", "main"]

Command = Callable[[argparse.Namespace, Any], int]


class CliError(Exception):
    """An error reported as one line on stderr, with an exit code."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


# ----------------------------------------------------------------------------- parser
def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--store", metavar="PATH", default=argparse.SUPPRESS,
                        help="the store directory (default: $HITHER_STORE or the user "
                             "cache directory)")
    parser = argparse.ArgumentParser(
        prog="hither", description="Look into hither's job cache: records, provenance, "
        "lineage, and why a job missed.")
    parser.add_argument("--version", action="version", version=f"hither {__version__}")
    parser.add_argument("--store", metavar="PATH", default=None,
                        help="the store directory, for any command")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def key_command(subs: Any, name: str, func: str, help_: str) -> Any:
        p = subs.add_parser(name, parents=[common], help=help_, description=help_)
        p.add_argument("key", metavar="KEY", help="a key, or a unique prefix (>= 6 hex chars)")
        p.set_defaults(func=func)
        return p

    def show_options(p: Any) -> None:
        group = p.add_mutually_exclusive_group()
        group.add_argument("--source", action="store_true",
                           help="print the function's normalized source and helpers")
        group.add_argument("--json", action="store_true", help="print the record as JSON")
        group.add_argument("--html", metavar="FILE", help="write the lineage as a "
                           "self-contained HTML page (a drawing of the DAG; no network)")

    cache = sub.add_parser("cache", help="inspect and maintain the job cache",
                           description="Inspect and maintain the job cache.")
    csub = cache.add_subparsers(dest="cache_command", metavar="COMMAND")
    cache.set_defaults(func=_usage_of(cache))
    p = csub.add_parser("info", parents=[common], help="what the store holds",
                        description="Counts and sizes of records, blobs and temp files.")
    p.set_defaults(func="cli_cache:cmd_info")
    p = csub.add_parser("ls", parents=[common], help="list records, newest first",
                        description="A table of records, newest first.")
    p.add_argument("--function", metavar="NAME", help="only records of this function")
    p.add_argument("--status", choices=("finished", "error"), help="only this status")
    p.add_argument("--limit", metavar="N", type=int, default=50,
                   help="show at most N records (default 50; 0: all)")
    p.set_defaults(func="cli_cache:cmd_ls")
    show_options(key_command(csub, "show", "cli_cache:cmd_show", "a record's provenance and lineage"))
    p = csub.add_parser("gc", parents=[common], help="delete unreferenced blobs",
                        description="Delete the blobs that no record refers to, left-over "
                        "temp files, and the folders of stopped processes (worker output "
                        "folders in the store, exchange stores in the temp folder). Safe "
                        "while jobs run, with the default --min-age.")
    p.add_argument("--dry-run", action="store_true", help="only say what would be freed")
    p.add_argument("--min-age", metavar="SECONDS", type=float, default=3600.0,
                   help="keep unreferenced blobs and temp files younger than this: they may "
                        "belong to jobs still running (default 3600; 0: none, only when "
                        "nothing writes to the store)")
    p.set_defaults(func="cli_cache:cmd_gc")
    p = csub.add_parser("clear", parents=[common], help="delete every record and blob",
                        description="Delete every record and blob of the store.")
    p.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    p.set_defaults(func="cli_cache:cmd_clear")

    show_options(key_command(sub, "show", "cli_cache:cmd_show", "a record's provenance and lineage "
                             "(same as 'cache show')"))
    key_command(sub, "explain", "cli_cache:cmd_explain", "what went into a key, and how it differs "
                "from the nearest other record of the same function")
    p = sub.add_parser("ui", parents=[common], help="serve lineage pages on 127.0.0.1",
                       description="Serve the lineage pages of the store, read-only, on "
                       "127.0.0.1 until Ctrl-C.")
    p.add_argument("--port", type=int, default=8765, help="the port (default 8765; 0: any)")
    p.set_defaults(func="cli_cache:cmd_ui")

    from .cli_reproduce_parser import add_commands as add_reproduce_commands
    from .cli_share_parser import add_commands as add_share_commands

    add_share_commands(sub, common, _usage_of)
    add_reproduce_commands(sub, common)
    parser.set_defaults(func=_usage_of(parser))
    return parser


def _usage_of(parser: argparse.ArgumentParser) -> Command:
    def usage(args: argparse.Namespace, out: Any) -> int:
        parser.print_help(sys.stderr)
        return 2

    return usage


def _command(func: str | Command) -> Command:
    """The function of a command named ``"module:function"`` (a module of this package),
    imported now: each command's dependencies load only when it runs."""
    if not isinstance(func, str):
        return func
    module, _, name = func.partition(":")
    command: Command = getattr(importlib.import_module(f".{module}", __package__), name)
    return command


def _console() -> Any:
    """A rich console on stdout; wide when not a terminal, so piped output is not folded.
    Rich drops colors when stdout is not a terminal or ``NO_COLOR`` is set."""
    from rich.console import Console

    width = None
    if not sys.stdout.isatty() and "COLUMNS" not in os.environ:
        width = 200
    return Console(highlight=False, width=width)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``hither`` command with ``argv`` (default: ``sys.argv[1:]``); return the
    exit code."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version, usage errors
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    try:
        return int(_command(args.func)(args, _console()))
    except CliError as e:
        _error(str(e))
        return e.code
    except KeyLookupError as e:
        _error(str(e))
        return 2 if e.reason in ("ambiguous", "invalid") else 1
    except BrokenPipeError:  # e.g. `hither cache ls | head`: the reader has gone
        _silence_stdout()
        return 0
    except (StoreError, OSError) as e:
        _error(f"{type(e).__name__}: {e}")
        return 1
    except KeyboardInterrupt:
        _error("interrupted")
        return 130


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so that flushing it at exit does not fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass


def _error(message: str) -> None:
    print(f"hither: error: {message}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
