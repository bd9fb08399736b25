"""The parsers of ``hither get | verify | export | import | reproduce``; the commands
themselves live in :mod:`hither.cli_reproduce`, imported only when one runs."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["add_commands"]


def add_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add get/verify/export/import/reproduce to the ``hither`` parser's subcommands."""
    def key_arg(p: argparse.ArgumentParser) -> None:
        p.add_argument("key", metavar="KEY", help="a key, or a unique prefix (>= 6 hex chars)")

    def trust_arg(p: argparse.ArgumentParser) -> None:
        p.add_argument("--trust", metavar="NAME:BASE64", action="append",
                       help="also trust this public key (besides $HITHER_TRUSTED_KEYS)")

    p = sub.add_parser("get", parents=[common], help="write a result to a file",
                       description="Write the result of KEY to PATH, checked against its "
                       "record: a file result as that file, arrays as .npy, bytes as they "
                       "are, other values as JSON.")
    key_arg(p)
    p.add_argument("-o", "--output", metavar="PATH", required=True)
    p.add_argument("--force", action="store_true", help="overwrite PATH")
    p.set_defaults(func="cli_reproduce:cmd_get")

    p = sub.add_parser("verify", parents=[common], help="recompute a key from its record",
                       description="Recompute KEY from its record alone: key parts, code "
                       "pieces, sources, code bundle, inputs and result.")
    key_arg(p)
    p.add_argument("--json", action="store_true", help="a machine-readable report")
    p.set_defaults(func="cli_reproduce:cmd_verify")

    p = sub.add_parser("export", parents=[common], help="write results as a bundle",
                       description="Write the closure of results (records, blobs, code "
                       "bundles, environment locks) as one tar bundle, signed with "
                       "$HITHER_SIGNING_KEY when set.")
    p.add_argument("keys", metavar="KEY", nargs="+")
    p.add_argument("-o", "--output", metavar="FILE.tar", required=True)
    p.add_argument("--no-lineage", action="store_true", help="only the named records")
    p.add_argument("--with-image", action="store_true",
                   help="also write the container images, as FILE.<digest>.image.tar "
                   "(docker-archive) or .sif, next to the bundle")
    p.set_defaults(func="cli_reproduce:cmd_export")

    p = sub.add_parser("import", parents=[common], help="import a bundle",
                       description="Import a bundle into the store; every file is checked "
                       "against its hash and every record's signature against the trusted "
                       "keys before anything is placed.")
    p.add_argument("bundle", metavar="FILE.tar")
    trust_arg(p)
    p.add_argument("--unsigned", action="store_true",
                   help="accept records without a trusted signature (bytes are still checked)")
    p.add_argument("--with-image", action="store_true",
                   help="also load the images exported next to the bundle")
    p.set_defaults(func="cli_reproduce:cmd_import")

    p = sub.add_parser("reproduce", parents=[common], help="check or re-run a result",
                       description="Check a result from its record (checksums, signature, "
                       "closure, runtime identity); with --run, re-execute it in its "
                       "recorded runtime into a scratch store and compare. Exit code 0: "
                       "check passed or identical; 1: failed or differs; 2: usage.")
    p.add_argument("key", metavar="KEY", nargs="?",
                   help="a key (a prefix for the local store); optional with --bundle")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--remote", metavar="URL", help="read the result from a remote store")
    src.add_argument("--bundle", metavar="FILE|URL|sha1://",
                     help="read the result from a bundle (file, http(s) URL, kachery URI)")
    trust_arg(p)
    p.add_argument("--local", action="store_true",
                   help="a sha1:// bundle: read the local kachery-cloud folder only")
    p.add_argument("--run", action="store_true", help="re-execute and compare")
    p.add_argument("--deep", action="store_true",
                   help="re-execute every job of the lineage from its recorded inputs")
    p.add_argument("--scratch", metavar="DIR",
                   help="the scratch store the re-run writes to (default: a temporary "
                   "folder, removed unless --keep-scratch)")
    p.add_argument("--keep-scratch", action="store_true", help="keep the scratch store")
    p.add_argument("--timeout", type=float, metavar="SECONDS", help="per re-executed job")
    p.add_argument("--out", metavar="DIR", help="write the result's files to DIR (the "
                   "re-run's with --run)")
    p.add_argument("--json", action="store_true", help="a machine-readable report")
    p.set_defaults(func="cli_reproduce:cmd_reproduce")
