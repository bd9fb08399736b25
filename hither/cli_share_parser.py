"""The parsers of ``hither key | push | pull | publish | remote``; the commands themselves
live in :mod:`hither.cli_share`, imported only when one runs."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from hither_store.signing import ENV_TRUSTED_KEYS

__all__ = ["add_commands"]


def add_commands(sub: Any, common: argparse.ArgumentParser,
                 usage_of: Callable[[argparse.ArgumentParser], Any]) -> None:
    """Add the sharing commands to the ``hither`` parser's subcommands; ``usage_of(parser)``
    is the command of a group given without its subcommand."""
    key = sub.add_parser("key", help="signing keys", description="Ed25519 signing keys, "
                         "written NAME:BASE64 (Nix style).")
    ksub = key.add_subparsers(dest="key_command", metavar="COMMAND")
    key.set_defaults(func=usage_of(key))
    p = ksub.add_parser("generate", help="write a new secret key, print its public key",
                        description="Write a new secret key file (mode 0600) and print the "
                        "public key on stdout.")
    p.add_argument("name", metavar="NAME", help="the key's name, e.g. lab-a.example.org-1")
    p.add_argument("--out", metavar="PATH", help="where to write the secret key (default: "
                   "<user config dir>/hither/keys/NAME.secret)")
    p.set_defaults(func="cli_share:cmd_key_generate")
    p = ksub.add_parser("public", help="print the public key of a secret key file")
    p.add_argument("path", metavar="PATH")
    p.set_defaults(func="cli_share:cmd_key_public")

    p = sub.add_parser("push", parents=[common], help="push results to a remote store",
                       description="Push results with their closure (lineage, blobs, code "
                       "bundles) to a remote store, signed with $HITHER_SIGNING_KEY.")
    p.add_argument("keys", metavar="KEY", nargs="*", help="keys or unique prefixes")
    p.add_argument("--all", action="store_true", help="every record of the store")
    p.add_argument("--to", metavar="URL", required=True, help="s3://bucket/prefix or gs://...")
    _transfer_options(p)
    p.set_defaults(func="cli_share:cmd_push")

    p = sub.add_parser("pull", parents=[common], help="pull results from a remote store",
                       description="Copy results with their lineage from a remote store, or "
                       "import a kachery publication (sha1://...), checking every byte and "
                       "the signatures.")
    p.add_argument("keys", metavar="KEY|URI", nargs="+", help="full record keys, or sha1:// URIs")
    p.add_argument("--from", dest="source", metavar="URL", help="the remote store")
    p.add_argument("--trust", metavar="NAME:BASE64", action="append",
                   help=f"also trust this public key (besides ${ENV_TRUSTED_KEYS})")
    p.add_argument("--local", action="store_true",
                   help="sha1:// URIs: read the local kachery-cloud folder only")
    _transfer_options(p)
    p.set_defaults(func="cli_share:cmd_pull")

    p = sub.add_parser("publish", parents=[common], help="publish results to kachery-cloud",
                       description="Upload the closure of results to kachery-cloud as one "
                       "bundle; print the sha1:// URI to cite.")
    p.add_argument("keys", metavar="KEY", nargs="+")
    p.add_argument("--to", metavar="TARGET", required=True, help="kachery")
    p.add_argument("--local", action="store_true",
                   help="store in the local kachery-cloud folder only (offline)")
    p.add_argument("--label", help="a label for the uploaded bundle")
    p.set_defaults(func="cli_share:cmd_publish")

    remote = sub.add_parser("remote", help="the configured remote stores")
    rsub = remote.add_subparsers(dest="remote_command", metavar="COMMAND")
    remote.set_defaults(func=usage_of(remote))
    p = rsub.add_parser("ls", help="list $HITHER_REMOTES and whether each answers")
    p.set_defaults(func="cli_share:cmd_remote_ls")


def _transfer_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-lineage", action="store_true",
                   help="only the named records, not the records they were computed from")
    p.add_argument("--endpoint-url", metavar="URL",
                   help="the S3 endpoint (default: $AWS_ENDPOINT_URL)")
