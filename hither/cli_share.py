"""``hither key | push | pull | publish | remote``: sharing results between stores.

::

    hither key generate NAME [--out PATH]       write a secret key; print the public key
    hither key public PATH                      print the public key of a secret key file
    hither push KEY... | --all  --to URL        results and their closure to a remote store
    hither pull KEY... --from URL               ... from a remote store, verified
    hither pull sha1://...                      a kachery publication, verified
    hither publish KEY... --to kachery          the closure to kachery-cloud; prints a URI
    hither remote ls                            the configured remotes, and whether they answer

Pushes are signed with ``$HITHER_SIGNING_KEY``; pulls believe the keys of
``$HITHER_TRUSTED_KEYS`` and ``--trust``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from hither_store import LocalStore, Remote, TrustedKeys
from hither_store.signing import ENV_TRUSTED_KEYS, SecretKey, check_key_name
from rich.console import Console
from rich.table import Table
from rich.text import Text

from .cli import CliError
from .errors import CacheError
from .explaining import open_store, resolve_key

__all__ = ["cmd_key_generate", "cmd_key_public", "cmd_publish", "cmd_pull", "cmd_push",
           "cmd_remote_ls"]


def _err(text: str) -> None:
    print(text, file=sys.stderr)


def _store(args: argparse.Namespace, *, must_exist: bool = True) -> LocalStore:
    return open_store(args.store, must_exist=must_exist)


def _signer() -> SecretKey | None:
    from .sharing import signing_key_from_env

    try:
        return signing_key_from_env()
    except CacheError as e:
        raise CliError(str(e)) from None


def _trusted(args: argparse.Namespace) -> TrustedKeys:
    try:
        env = TrustedKeys.from_env()
        extra = TrustedKeys.parse(args.trust or [])
    except ValueError as e:
        raise CliError(f"trusted keys: {e}", code=2) from None
    signer = _signer()
    out = env.union(extra)
    if signer is not None:
        out.add(signer.public_key)
    return out


def _remote(url: str, args: argparse.Namespace, trusted: TrustedKeys | None = None) -> Remote:
    try:
        r = Remote(url, trusted_keys=trusted if trusted is not None else TrustedKeys(),
                   endpoint_url=getattr(args, "endpoint_url", None))
        r.check_available()
    except (ValueError, ImportError) as e:
        raise CliError(str(e), code=2) from None
    return r


def _stack(store: LocalStore) -> Any:
    from .sharing import make_stack

    return make_stack(store, [], _signer())


# ----------------------------------------------------------------------------- key
def _default_key_path(name: str) -> Path:
    import platformdirs

    return platformdirs.user_config_path("hither") / "keys" / f"{name}.secret"


def cmd_key_generate(args: argparse.Namespace, out: Console) -> int:
    """``hither key generate NAME``: a new Ed25519 key; the public key goes to stdout."""
    try:
        check_key_name(args.name)
        key = SecretKey.generate(args.name)
    except (ValueError, ImportError) as e:
        raise CliError(str(e), code=2) from None
    path = Path(args.out) if args.out else _default_key_path(args.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        key.write(path)
    except FileExistsError:
        raise CliError(f"{path} exists: not overwritten (choose another NAME or --out)") \
            from None
    _err(f"secret key written to {path} (keep it private; sign with "
         f"HITHER_SIGNING_KEY={path})")
    _err("public key (give it to those who should trust you, in HITHER_TRUSTED_KEYS):")
    print(key.public_key)
    return 0


def cmd_key_public(args: argparse.Namespace, out: Console) -> int:
    """``hither key public PATH``: the public key of a secret key file."""
    try:
        print(SecretKey.load(args.path).public_key)
    except (ValueError, ImportError) as e:
        raise CliError(str(e)) from None
    return 0


# ----------------------------------------------------------------------------- push
def cmd_push(args: argparse.Namespace, out: Console) -> int:
    """``hither push KEY... | --all --to URL``: results with their closure, signed."""
    store = _store(args)
    if args.all == bool(args.keys):
        raise CliError("give KEYs or --all (not both)", code=2)
    keys = store.record_keys() if args.all else [resolve_key(store, k) for k in args.keys]
    if not keys:
        raise CliError(f"no records in the store at {store.root}")
    remote = _remote(args.to, args)
    if remote.read_only:
        raise CliError(f"{args.to} is read-only: publish a store over http by copying its "
                       "folder to the web server", code=2)
    stack = _stack(store)
    if stack.signer is None:
        raise CliError("pushes are signed: set HITHER_SIGNING_KEY to a secret key file "
                       "(create one with 'hither key generate NAME')")
    report = stack.push(keys, remote, lineage=not args.no_lineage)
    out.print(Text(f"pushed {len(report.pushed)} records ({report.blobs_uploaded} blobs) to "
                   f"{remote.url}; {len(report.present)} were there already"))
    if report.missing_records:
        out.print(Text(f"{len(report.missing_records)} lineage records are not in the local "
                       "store and were skipped", style="dim"))
    for key, why in sorted(report.failed.items()):
        _err(f"hither: {key[:12]} not pushed: {why}")
    return 1 if report.failed else 0


# ----------------------------------------------------------------------------- pull
def cmd_pull(args: argparse.Namespace, out: Console) -> int:
    """``hither pull KEY... --from URL`` or ``hither pull sha1://...``."""
    store = _store(args, must_exist=False)
    trusted = _trusted(args)
    if args.keys and all(k.startswith("sha1://") for k in args.keys):
        return _pull_kachery(args, store, trusted, out)
    if any(k.startswith("sha1://") for k in args.keys):
        raise CliError("give either record keys or sha1:// URIs", code=2)
    if not args.source:
        raise CliError("--from URL is needed to pull record keys", code=2)
    if not trusted:
        raise CliError(f"no trusted keys: set {ENV_TRUSTED_KEYS} or pass --trust NAME:BASE64 "
                       "(records from a remote are used only when a trusted key signed them)")
    from hither_store._paths import check_key

    try:
        keys = [check_key(k) for k in args.keys]
    except ValueError as e:
        raise CliError(str(e), code=2) from None
    remote = _remote(args.source, args, trusted)
    report = _stack(store).pull(keys, remote, lineage=not args.no_lineage)
    out.print(Text(f"pulled {len(report.fetched)} records from {remote.url}; "
                   f"{len(report.present)} were here already"))
    for key, why in sorted(report.failed.items()):
        _err(f"hither: {key[:12]} not pulled: {why}")
    return 1 if any(k in report.failed for k in keys) else 0


def _pull_kachery(args: argparse.Namespace, store: LocalStore, trusted: TrustedKeys,
                  out: Console) -> int:
    from hither_store.bundle import BundleError
    from hither_store.kachery import KacheryError, fetch

    from .sharing import RECORD_REFS

    if args.source:
        raise CliError("a sha1:// URI names its source: drop --from", code=2)
    if not trusted:
        raise CliError(f"no trusted keys: set {ENV_TRUSTED_KEYS} or pass --trust NAME:BASE64")
    status = 0
    for uri in args.keys:
        try:
            report = fetch(uri, store, trusted=trusted, refs=RECORD_REFS,
                           local_only=args.local)
        except (KacheryError, BundleError, ValueError) as e:
            _err(f"hither: {uri}: {e}")
            status = 1
            continue
        out.print(Text(f"imported {len(report.records)} records and {report.blobs} blobs from "
                       f"{uri}: {', '.join(k[:12] for k in report.roots)}"))
    return status


# ----------------------------------------------------------------------------- publish
def cmd_publish(args: argparse.Namespace, out: Console) -> int:
    """``hither publish KEY... --to kachery``: the closure as one citable sha1:// URI."""
    from hither_store.bundle import BundleError
    from hither_store.kachery import KacheryError, publish

    from .sharing import RECORD_REFS

    if args.to != "kachery":
        raise CliError(f"unknown target {args.to!r}: only 'kachery' (to push to a remote "
                       "store, use 'hither push')", code=2)
    store = _store(args)
    keys = [resolve_key(store, k) for k in args.keys]
    signer = _signer()
    if signer is None:
        raise CliError("publications are signed: set HITHER_SIGNING_KEY to a secret key file "
                       "(create one with 'hither key generate NAME')")
    try:
        uri = publish(store, keys, refs=RECORD_REFS, signer=signer, local=args.local,
                      label=args.label)
    except (KacheryError, BundleError) as e:
        raise CliError(str(e)) from None
    print(uri)
    return 0


# ----------------------------------------------------------------------------- remote
def cmd_remote_ls(args: argparse.Namespace, out: Console) -> int:
    """``hither remote ls``: the remotes of ``$HITHER_REMOTES`` and whether they answer."""
    from .sharing import resolve_remotes

    try:
        remotes = resolve_remotes(None)
    except CacheError as e:
        raise CliError(str(e)) from None
    if not remotes:
        raise CliError("no remotes configured: set HITHER_REMOTES (urls separated by spaces)")
    table = Table(show_header=True, box=None, pad_edge=False, padding=(0, 2, 0, 0))
    for col in ("remote", "push", "trusted keys", "state"):
        table.add_column(col, overflow="fold")
    status = 0
    for r in remotes:
        try:
            state = Text(r.backend.ping(), style="green")
        except Exception as e:  # noqa: BLE001 - any failure is "unreachable", said plainly
            state = Text(f"unreachable: {type(e).__name__}: {e}", style="red")
            status = 1
        keys = ", ".join(r.trusted.names()) or ("-" if not r.require_signature else "none")
        table.add_row(Text(r.url), r.push, Text(keys), state)
    out.print(table)
    return status
