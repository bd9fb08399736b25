"""hither's side of sharing results: what its records reference, the signing key and the
remotes from the environment, and the store stack a :class:`~hither.JobCache` reads through.

The mechanisms (remotes, signatures, closures, bundles) live in :mod:`hither_store`; this
module only knows hither's record schema.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from hither_store import LocalStore, RecordRefs, Remote, SecretKey, StoreStack, remotes_from_env
from hither_store.signing import ENV_SIGNING_KEY

from ._codec import walk_refs
from .errors import CacheError

__all__ = ["RECORD_REFS", "make_stack", "resolve_remotes", "signing_key_from_env"]


def _blobs(record: Mapping[str, Any]) -> Iterator[str]:
    # result, input values, console: every tagged blob node anywhere in the record
    for ref in walk_refs(record):
        if isinstance(ref, str):
            yield ref


def _upstream(record: Mapping[str, Any]) -> Iterator[str]:
    inputs = record.get("inputs")
    if isinstance(inputs, dict):
        for entry in inputs.values():
            if not isinstance(entry, dict):
                continue
            if isinstance(entry.get("job"), str):
                yield entry["job"]
            if isinstance(entry.get("jobs"), list):  # jobs nested inside an argument
                yield from (k for k in entry["jobs"] if isinstance(k, str))


def _code(record: Mapping[str, Any]) -> Iterator[str]:
    prov = record.get("provenance")
    bundle = prov.get("code_bundle") if isinstance(prov, dict) else None
    if isinstance(bundle, str):
        yield bundle


def _code_digest(files: Mapping[str, str]) -> str:
    from .runtimes.bundle import bundle_digest

    return bundle_digest(files)


RECORD_REFS = RecordRefs(blobs=_blobs, upstream=_upstream, code=_code,
                         code_digest=_code_digest)
"""What a hither record references: blobs (result, input values, console), the records of
the jobs its inputs came from (``inputs[*].job`` and ``inputs[*].jobs``) and its code bundle
(``provenance.code_bundle``, when the record names one)."""


def signing_key_from_env() -> SecretKey | None:
    """The key named by ``$HITHER_SIGNING_KEY`` (a secret key file), None when unset.

    Raises:
        CacheError: the file cannot be read, or ``cryptography`` is missing.
    """
    path = os.environ.get(ENV_SIGNING_KEY)
    if not path:
        return None
    try:
        return SecretKey.load(os.path.expanduser(path))
    except (OSError, ValueError, ImportError) as e:
        raise CacheError(f"${ENV_SIGNING_KEY}={path}: {e}") from e


def resolve_remotes(remotes: Iterable[str | Remote] | None) -> list[Remote]:
    """Remotes from urls or :class:`Remote` objects; None: ``$HITHER_REMOTES``.

    Raises:
        CacheError: a malformed remote, or a missing library for it.
    """
    try:
        out = remotes_from_env() if remotes is None else [Remote.of(r) for r in remotes]
        for r in out:
            r.check_available()
        if out and importlib.util.find_spec("diskcache") is None:
            raise ImportError("remote stores need diskcache: pip install 'hither[share]'")
    except (ValueError, TypeError, ImportError) as e:
        raise CacheError(f"remote stores: {e}") from e
    return out


def make_stack(store: LocalStore, remotes: Sequence[Remote],
               signer: SecretKey | None) -> StoreStack:
    """The stack of ``store`` in front of ``remotes``, with hither's record schema."""
    return StoreStack(store, remotes, refs=RECORD_REFS, signer=signer)
