"""Reproduce a result from its key: check it, re-run it, and say how it differs.

:func:`reproduce` resolves a key in a store, on a remote store or in a bundle (imported
into a private staging store, every byte checked), then

- **checks** the record without running anything: the key re-derived from the record
  (:func:`hither.verifying.verify`), the signature and whether its key is trusted, the
  closure (code bundle, input blobs, upstream records) and the runtime identity (image
  digest, environment lock, or the host's recorded package versions);
- with ``run=True``, **re-executes** the job from the record alone, in the recorded
  runtime, into a scratch store (never the source store), and compares the new result with
  the recorded one: identical, the first differing value, or failed. With ``deep=True``
  every job of the lineage is re-executed from its own recorded inputs, so each link of
  the chain is checked.
"""

from __future__ import annotations

import os
import re
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hither_store import LocalStore, StoreError

from .compare import Difference, first_difference
from .errors import CacheError, HitherError
from .record import Record
from .verifying import Check, VerifyReport, load_record, verify

__all__ = ["JobRun", "ReproduceError", "ReproduceReport", "reproduce"]

_MODULE_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,200}")
_QUALNAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,200}(\.[A-Za-z_][A-Za-z0-9_]{0,200}){0,20}")


class ReproduceError(HitherError):
    """The result cannot be resolved or reproduced at all (message says why)."""


@dataclass
class JobRun:
    """One job re-executed: ``identical``, ``differs`` or ``failed``."""

    key: str
    function: str
    status: str
    difference: Difference | None = None
    error: str | None = None
    result_hash: str | None = None
    elapsed_sec: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serializable form."""
        return {"key": self.key, "function": self.function, "status": self.status,
                "difference": None if self.difference is None else self.difference.to_dict(),
                "error": self.error, "result_hash": self.result_hash,
                "elapsed_sec": self.elapsed_sec}


@dataclass
class ReproduceReport:
    """What :func:`reproduce` found (see :attr:`status` and :meth:`to_dict`)."""

    key: str
    source: str
    checks: list[Check] = field(default_factory=list)
    signers: list[str] = field(default_factory=list)
    trusted: bool | None = None
    runtime: dict[str, Any] = field(default_factory=dict)
    packages: list[str] = field(default_factory=list)
    """The recorded package versions of a host runtime (``name==version``)."""
    packages_here: list[str] = field(default_factory=list)
    """Recorded packages whose version differs here: ``name==recorded (here: version)``."""
    warnings: list[str] = field(default_factory=list)
    runs: list[JobRun] = field(default_factory=list)
    """The jobs re-executed, the lineage first and the result last."""
    scratch: str | None = None
    source_store: LocalStore | None = None
    tmp: Path | None = None
    """The private folder of the staging store and the default scratch store."""

    def cleanup(self, keep_scratch: bool = False) -> None:
        """Remove the private folder (the default scratch store too, unless kept)."""
        import shutil

        if self.tmp is None:
            return
        if keep_scratch and self.scratch and Path(self.scratch).is_relative_to(self.tmp):
            shutil.rmtree(self.tmp / "source", ignore_errors=True)
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)

    @property
    def checked(self) -> bool:
        """Whether no check failed."""
        return all(c.ok is not False for c in self.checks)

    @property
    def status(self) -> str:
        """``check-failed``, ``checked`` (nothing ran), or the worst run: ``failed``,
        ``differs``, ``identical``."""
        if not self.checked:
            return "check-failed"
        if not self.runs:
            return "checked"
        for s in ("failed", "differs"):
            if any(r.status == s for r in self.runs):
                return s
        return "identical"

    @property
    def exit_code(self) -> int:
        """0: the check passed or the result is identical; 1 otherwise."""
        return 0 if self.status in ("checked", "identical") else 1

    def add(self, name: str, ok: bool | None, detail: str = "") -> None:
        """Append a check."""
        self.checks.append(Check(name, ok, detail))

    def to_dict(self) -> dict[str, Any]:
        """The machine-readable report (``hither reproduce --json``)."""
        return {"key": self.key, "source": self.source, "status": self.status,
                "checks": [c.to_dict() for c in self.checks], "signers": self.signers,
                "trusted": self.trusted, "runtime": self.runtime, "packages": self.packages,
                "packages_here": self.packages_here,
                "warnings": self.warnings, "runs": [r.to_dict() for r in self.runs],
                "scratch": self.scratch}


# ----------------------------------------------------------------------------- sources
def _staging(tmp: Path) -> LocalStore:
    return LocalStore(tmp / "source")


def _from_bundle(src: str, staging: LocalStore, tmp: Path, local: bool) -> list[str]:
    """Import a bundle (file, http(s) URL or sha1:// URI) into ``staging``, every byte
    checked; signatures are checked afterwards, so untrusted ones can be reported."""
    from hither_store.bundle import read_bundle

    from .sharing import RECORD_REFS

    if src.startswith("sha1://"):
        from hither_store.kachery import fetch

        return fetch(src, staging, require_signature=False, refs=RECORD_REFS,
                     local_only=local).roots
    if src.startswith(("http://", "https://")):
        import shutil
        import urllib.request

        path = tmp / "bundle.tar"
        with urllib.request.urlopen(src, timeout=60) as r, open(path, "wb") as f:  # noqa: S310
            shutil.copyfileobj(r, f)
        src = str(path)
    return read_bundle(staging, src, require_signature=False, refs=RECORD_REFS).roots


def _from_remote(url: str, key: str, staging: LocalStore, trusted: Any) -> None:
    from hither_store import Remote

    from .sharing import make_stack

    remote = Remote(url, trusted_keys=trusted)
    report = make_stack(staging, [], None).pull([key], remote)
    if key in report.failed:
        raise ReproduceError(f"{key[:12]} could not be read from {url}: {report.failed[key]}")


# ----------------------------------------------------------------------------- checks
def _check_signature(rec_raw: dict[str, Any], key: str, store: LocalStore, trusted: Any,
                     report: ReproduceReport, prefix: str = "") -> None:
    """Who signed the record, and whether a trusted key did (``prefix``: a lineage
    record, whose signers are not the report's)."""
    from hither_store._records import body_checksum
    from hither_store.sidecars import read_sidecar

    from .sharing import RECORD_REFS

    checksum = body_checksum(rec_raw)
    sc = read_sidecar(store, key, checksum)
    if sc is None or not sc.signatures:
        report.add(prefix + "signature", None, "not signed")
        return
    signers = sorted({n for n, _ in sc.signatures})
    why = sc.check(key, checksum, rec_raw, RECORD_REFS.blob_hexes(rec_raw), trusted)
    if not prefix:
        report.signers, report.trusted = signers, why is None
    report.add(prefix + "signature", why is None, f"signed by {', '.join(signers)}"
               + (" (trusted)" if why is None else f": {why}"))


def _check_runtime(rec: Record, store: LocalStore, report: ReproduceReport) -> None:
    from . import values

    ident = rec.provenance.runtime
    report.runtime = dict(ident)
    kind = ident.get("kind")
    pk = rec.provenance.packages
    try:
        text = values.decode(pk, store) if pk is not None else b""
    except (StoreError, OSError, ValueError):
        text = b""
    report.packages = text.decode(errors="replace").split() if isinstance(text, bytes) else []
    if kind in ("docker", "podman", "apptainer"):
        digest = ident.get("digest")
        ok = isinstance(digest, str) and digest.startswith("sha256:")
        report.add("runtime identity", ok, f"{kind} image {ident.get('image')} @ {digest}" if ok
                   else f"{kind} image without a digest")
    elif kind == "venv":
        lock = rec.provenance.runtime_lock
        try:
            text = values.decode(lock, store) if lock is not None else None
        except (StoreError, OSError, ValueError) as e:
            report.add("runtime identity", False, f"the environment lock cannot be read: {e}")
            return
        import hashlib

        ok = isinstance(text, bytes) and hashlib.sha256(text).hexdigest() == ident.get("lock")
        report.add("runtime identity", ok, f"uv environment, lock {str(ident.get('lock'))[:16]}"
                   if ok else "the environment lock is missing or does not match")
    elif kind == "host":
        report.warnings.append("the job ran on the host interpreter, whose environment is "
                               "not pinned: a re-run uses this interpreter's packages")
        from .runtime_info import host_packages

        here = dict(line.split("==", 1) for line in host_packages().split())
        for line in report.packages:
            name, _, version = line.partition("==")
            if here.get(name) != version:
                report.packages_here.append(f"{line} (here: {here.get(name, 'absent')})")
        report.add("runtime identity", None, f"host, python {rec.provenance.python or '?'}, "
                   f"{len(report.packages)} package versions recorded, "
                   f"{len(report.packages_here)} differ here")
    else:
        report.add("runtime identity", False, f"unknown runtime {kind!r}")


def _check_closure(key: str, store: LocalStore, report: ReproduceReport, deep: bool) -> None:
    from hither_store.closure import compute_closure

    from .sharing import RECORD_REFS

    closure = compute_closure(store, [key], RECORD_REFS, lineage=True)
    missing_blobs = [(k, h) for k, hs in closure.missing_blobs.items() for h in hs]
    report.add("blobs", not missing_blobs, f"{len(closure.blobs)} present" if not missing_blobs
               else f"blob {missing_blobs[0][1]} of record {missing_blobs[0][0][:12]} is missing")
    missing_code = [d for ds in closure.missing_code.values() for d in ds]
    report.add("code", not missing_code, f"{len(closure.code)} code bundle(s) present"
               if not missing_code else f"code bundle {missing_code[0]} is missing")
    if closure.missing_records:
        report.add("lineage", False if deep else None,
                   f"{len(closure.missing_records)} upstream record(s) not here, e.g. "
                   f"{closure.missing_records[0][:12]}")
    else:
        report.add("lineage", True, f"{len(closure.records)} record(s)")


def _merge_verify(v: VerifyReport, report: ReproduceReport, prefix: str = "") -> None:
    for c in v.checks:
        report.checks.append(Check(prefix + c.name, c.ok, c.detail))


# ----------------------------------------------------------------------------- run
class _Runner:
    """Re-executes records of ``src`` into ``scratch`` on one worker pool."""

    def __init__(self, src: LocalStore, scratch: LocalStore, timeout: float | None) -> None:
        from .handlers.parallel import ParallelJobHandler

        self.src, self.scratch, self.timeout = src, scratch, timeout
        self.handler = ParallelJobHandler(1)

    def close(self) -> None:
        self.handler.shutdown(wait=True, cancel=True)

    def run(self, rec: Record) -> JobRun:
        t0 = time.monotonic()
        out = JobRun(rec.key, rec.function.name, "failed")
        try:
            outcome = self._execute(rec)
        except (HitherError, StoreError, OSError, ValueError) as e:
            out.error = f"{type(e).__name__}: {e}"
            return out
        finally:
            out.elapsed_sec = time.monotonic() - t0
        if not outcome.ok:
            err = outcome.error
            out.error = f"{type(err).__name__}: {err}"
            return out
        from .hashing import hash_value
        from .verifying import _decode_checked

        try:
            out.result_hash = hash_value(outcome.value, path="result")
            self._record(rec, outcome, out.result_hash)
        except (HitherError, StoreError, OSError, TypeError, ValueError) as e:
            out.error = f"the new result cannot be stored: {type(e).__name__}: {e}"
            return out
        if out.result_hash == rec.result_hash:
            out.status = "identical"
            return out
        out.status = "differs"
        try:
            out.difference = first_difference(_decode_checked(rec, self.src), outcome.value)
        except CacheError as e:
            out.error = str(e)
        return out

    def _execute(self, rec: Record) -> Any:
        from hither_store.closure import code_files, install_code_dir

        from . import values
        from ._codec import walk_refs
        from .launch import Launch
        from .runtimes.bundle import CodeBundle
        from .runtimes.recorded import recorded_runtime
        from .sharing import RECORD_REFS

        prov = rec.provenance
        digest, entry = prov.code_bundle, prov.code_entry
        if digest is None or not entry.get("module"):
            raise ReproduceError("the record names no code bundle: the code cannot be re-run")
        if not _MODULE_RE.fullmatch(entry["module"]) or \
                not _QUALNAME_RE.fullmatch(entry.get("function", "")):
            raise ReproduceError(f"the record's code entry {entry!r:.120} is not a module and "
                                 "function name")
        files = code_files(self.src.root, digest)
        if files is None:
            raise ReproduceError(f"code bundle {digest} is missing")
        install_code_dir(self.scratch.root, digest,
                         {rel: self.src.root / "code" / digest / rel for rel in files},
                         RECORD_REFS.code_digest)
        args: dict[str, Any] = {}
        for name, inp in rec.inputs.items():
            if inp.job is not None:
                up = self.src.get_record(inp.job)
                if up is None or up.get("result_hash") != inp.digest:
                    raise ReproduceError(f"input {name!r} is the result of job {inp.job[:12]}, "
                                         "whose record is not here")
                args[name] = Record.from_dict(up, inp.job).result
            elif inp.has_value:
                args[name] = inp.value
            else:
                raise ReproduceError(f"the value of input {name!r} was not recorded")
        for ref in walk_refs(args):
            got = self.scratch.put_file(self.src.blob_path(ref))
            if got != ref:
                raise ReproduceError(f"blob {ref} is damaged (its content hashes to {got})")
        lock = None
        if prov.runtime_lock is not None:
            lock = values.decode(prov.runtime_lock, self.src).decode()
        runtime = recorded_runtime(prov.runtime, lock)

        def fn() -> None:  # stands for the function in error messages
            pass

        fn.__module__ = rec.function.module or entry["module"]
        launch = Launch(job_id=uuid.uuid4().hex, label=f"reproduce {rec.function.name}",
                        fid=f"reproduce:{digest}:{entry['function']}", fn=fn,
                        fn_pickle=lambda: b"", args_manifest=args, timeout=self.timeout,
                        runtime=runtime, store=self.scratch,
                        code=CodeBundle(digest=digest, module=entry["module"],
                                        function=entry["function"], files=tuple(sorted(files))))
        return self.handler.submit(launch).result()

    def _record(self, rec: Record, outcome: Any, result_hash: str) -> None:
        """The new result, in the scratch store under the original key (``--out`` and the
        user read it there); its provenance says it is a reproduction."""
        import dataclasses
        import getpass
        import socket

        from . import values

        manifest = outcome.info.get("result_manifest")
        if manifest is None:
            manifest = values.encode(outcome.value, self.scratch, path="result")
        try:
            user: str | None = getpass.getuser()
        except Exception:  # noqa: BLE001
            user = None
        prov = dataclasses.replace(
            rec.provenance, start_time=outcome.start_time, end_time=outcome.end_time,
            recorded_at=time.time(), host=socket.gethostname(), user=user,
            extra={**rec.provenance.extra, "reproduction": {
                "of": rec.key, "recorded_result_hash": rec.result_hash,
                "identical": result_hash == rec.result_hash}})
        new = dataclasses.replace(rec, result=manifest, result_hash=result_hash,
                                  console=tuple(outcome.console), provenance=prov)
        self.scratch.put_record(rec.key, new.to_dict())


# ----------------------------------------------------------------------------- main
def reproduce(key: str | None, *, store: Any = None, remote: str | None = None,
              bundle: str | None = None, trusted: Any = None, run: bool = False,
              deep: bool = False, scratch: str | os.PathLike[str] | None = None,
              timeout: float | None = None, local: bool = False) -> ReproduceReport:
    """Check (and with ``run``, re-execute) the result ``key`` (see the module docstring).

    ``store`` is the local store (default: the default store); ``remote`` a remote store
    URL; ``bundle`` a bundle file, URL or ``sha1://`` URI (then ``key`` may be None when
    the bundle has one root; ``local``: a ``sha1://`` URI is read from the local
    kachery-cloud folder only). ``trusted`` are the keys whose signatures count
    (:class:`hither_store.TrustedKeys`). ``scratch`` is where a re-run writes (default: a
    folder in the report's private folder); it must not be the source store. Call
    :meth:`ReproduceReport.cleanup` when done with the report.

    Raises:
        ReproduceError: the source cannot be read, or the key is not in it.
    """
    from hither_store import TrustedKeys

    trusted = trusted if trusted is not None else TrustedKeys()
    tmp = Path(tempfile.mkdtemp(prefix="hither-reproduce-"))
    try:
        return _reproduce_in(tmp, key, store=store, remote=remote, bundle=bundle,
                             trusted=trusted, run=run, deep=deep, scratch=scratch,
                             timeout=timeout, local=local)
    except BaseException:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _reproduce_in(tmp: Path, key: str | None, *, store: Any, remote: str | None,
                  bundle: str | None, trusted: Any, run: bool, deep: bool,
                  scratch: str | os.PathLike[str] | None,
                  timeout: float | None, local: bool) -> ReproduceReport:
    from hither_store.bundle import BundleError

    from .explaining import open_store

    if bundle is not None:
        src = _staging(tmp)
        try:
            roots = _from_bundle(bundle, src, tmp, local)
        except (BundleError, StoreError, OSError, ValueError) as e:
            report = ReproduceReport(key or "?", bundle, tmp=tmp)
            report.add("bundle", False, str(e))
            return report
        if key is None:
            if len(roots) != 1:
                raise ReproduceError(f"the bundle has {len(roots)} results: name one KEY")
            key = roots[0]
        where = f"bundle {bundle}"
    elif remote is not None:
        if key is None:
            raise ReproduceError("give the KEY to reproduce")
        src = _staging(tmp)
        _from_remote(remote, key, src, trusted)
        where = f"remote {remote}"
    else:
        if key is None:
            raise ReproduceError("give the KEY to reproduce")
        src = open_store(store, must_exist=True)
        where = f"store {src.root}"
    rec = load_record(key, src)
    report = ReproduceReport(rec.key, where, source_store=src, tmp=tmp)
    if bundle is not None:
        report.add("bundle", True, "every file matches its sha256")
    raw = src.get_record(rec.key)
    assert raw is not None
    _merge_verify(verify(rec.key, src), report)
    _check_signature(raw, rec.key, src, trusted, report)
    if bundle is not None and not report.signers:
        report.warnings.append("the result is not signed: the checks show that it is "
                               "consistent, not who made it")
    _check_closure(rec.key, src, report, deep)
    _check_runtime(rec, src, report)
    if not run or not report.checked:
        return report
    if not rec.ok:
        report.add("status", False, "the record is a failure: there is no result to reproduce")
        return report
    root = Path(scratch) if scratch is not None else tmp / "scratch"
    if root.resolve() == src.root.resolve():
        raise ReproduceError("the scratch store must not be the source store")
    out = LocalStore(root)
    report.scratch = str(out.root)
    todo = [rec]
    if deep:
        from hither_store.closure import compute_closure

        from .sharing import RECORD_REFS

        closure = compute_closure(src, [rec.key], RECORD_REFS, lineage=True)
        todo = [load_record(k, src) for k in closure.records]
        for r in todo[:-1]:
            _merge_verify(verify(r.key, src), report, prefix=f"{r.key[:12]} ")
            raw_up = src.get_record(r.key)
            if raw_up is not None:
                _check_signature(raw_up, r.key, src, trusted, report, prefix=f"{r.key[:12]} ")
        if not report.checked:
            return report
    runner = _Runner(src, out, timeout)
    try:
        for r in todo:
            if r.ok:
                report.runs.append(runner.run(r))
    finally:
        runner.close()
    if bundle is not None and any("is not present" in (r.error or "") for r in report.runs):
        archives = sorted(Path(bundle).parent.glob(f"{Path(bundle).name}.*.image.tar")) \
            if os.path.isfile(bundle) else []
        if archives:
            report.warnings.append(f"the image was exported with the bundle: load it with "
                                   f"`hither import {bundle} --with-image` or `docker load "
                                   f"-i {archives[0]}`")
    return report
