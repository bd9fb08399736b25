"""hi.load, hither get and hither verify: results read back checked, keys re-derived from
their records alone; each kind of damage is named."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import hither as hi
from hither.cli import main
from hither.record import Record
from hither.verifying import load_record, verify
from tests.reprofuncs import figure


@pytest.fixture
def fig_store(tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    store = tmp_path / "store"
    with hi.Config(job_cache=hi.JobCache(path=store)):
        keys = figure.run()
    return store, keys


def _edit_record(store: Path, key: str, edit: Any) -> None:
    """Rewrite a record with a valid checksum: what a writer of the store could do."""
    local = hi.JobCache(path=store).store
    body = local.get_record(key)
    edit(body)
    local.put_record(key, body)


def _bad(report: Any) -> dict[str, str]:
    return {c.name: c.detail for c in report.failures()}


def test_every_key_field_is_in_the_record(fig_store: tuple[Path, dict]) -> None:
    store, keys = fig_store
    rec = load_record(keys["figure"], hi.JobCache(path=store).store)
    assert set(rec.provenance.key_parts) == {"format", "function", "runtime", "inputs"}
    assert rec.function.parts and rec.provenance.code_bundle
    assert rec.provenance.code_entry == {"module": "figure", "function": "repro_render"}
    report = verify(keys["figure"], store)
    assert report.ok, report.failures()
    names = {c.name for c in report.checks}
    assert {"key", "code digest", "sources", "code bundle", "input signals",
            "result"} <= names
    # the host's package versions are recorded once, as a blob
    pk = rec.provenance.packages
    assert pk["~"] == "bytes" and b"numpy==" in hi.JobCache(path=store).store.get_bytes(pk["ref"])


def test_nested_jobs_are_the_lineage(fig_store: tuple[Path, dict]) -> None:
    """§4: jobs passed inside a list are recorded as upstream, and `show` draws them."""
    store, keys = fig_store
    rec = load_record(keys["figure"], hi.JobCache(path=store).store)
    assert rec.upstream() == {"signals": keys["signals"]}
    from hither.explaining import lineage

    node = lineage(keys["figure"], store)
    assert sorted(c.key for c in node.children) == sorted(keys["signals"])


def test_show_draws_the_nested_jobs(fig_store: tuple[Path, dict],
                                    capsys: pytest.CaptureFixture[str]) -> None:
    store, keys = fig_store
    assert main(["show", keys["figure"], "--store", str(store)]) == 0
    out = capsys.readouterr().out
    tree = out[out.index("lineage"):]
    for i, k in enumerate(keys["signals"]):
        assert f"signals[{i}] ← {k[:12]} repro_signal" in tree
    assert "3 jobs: " in out  # the inputs table names the jobs of the list


def test_load_and_get(fig_store: tuple[Path, dict], tmp_path: Path) -> None:
    store, keys = fig_store
    f = hi.load(keys["figure"][:10], store)
    assert isinstance(f, hi.File) and Path(f.path).read_bytes().startswith(b"\x89PNG")
    sig = hi.load(keys["signals"][1], hi.JobCache(path=store))
    assert sig.shape == (64,)
    assert main(["get", keys["figure"], "-o", str(tmp_path / "fig.png"),
                 "--store", str(store)]) == 0
    assert (tmp_path / "fig.png").read_bytes() == Path(f.path).read_bytes()
    assert main(["get", keys["signals"][0], "-o", str(tmp_path / "s.npy"),
                 "--store", str(store)]) == 0
    import numpy as np

    assert np.array_equal(np.load(tmp_path / "s.npy"), hi.load(keys["signals"][0], store))


def test_load_refuses_a_damaged_result(fig_store: tuple[Path, dict],
                                       tmp_path: Path) -> None:
    store, keys = fig_store
    f = hi.load(keys["figure"], store)
    blob = Path(f.path)
    blob.chmod(0o644)
    data = bytearray(blob.read_bytes())
    data[-20] ^= 1
    blob.write_bytes(bytes(data))
    with pytest.raises(hi.CacheError, match=f"corrupt blob sha256://{blob.name}"):
        hi.load(keys["figure"], store)
    assert main(["get", keys["figure"], "-o", str(tmp_path / "x.png"),
                 "--store", str(store)]) == 1
    assert not (tmp_path / "x.png").exists()
    assert _bad(verify(keys["figure"], store)).keys() == {"result"}


def test_load_refuses_a_result_that_is_not_the_recorded_one(
        fig_store: tuple[Path, dict]) -> None:
    store, keys = fig_store
    _edit_record(store, keys["signals"][0], lambda r: r.update(result_hash="0" * 64))
    with pytest.raises(hi.CacheError, match="does not match its record"):
        hi.load(keys["signals"][0], store)


@pytest.mark.parametrize("edit,failed", [
    (lambda r: r["provenance"]["key_parts"]["inputs"].update(height="0" * 64), "key"),
    (lambda r: r["provenance"]["function"].update(version="2"), "function"),
    (lambda r: r["provenance"]["function"]["parts"].update({"const:X": "0" * 64}),
     "code digest"),
    (lambda r: r["provenance"]["function"]["sources"].update(
        {"fn:repro_render": "def repro_render(): pass"}), "sources"),
    (lambda r: r["inputs"]["height"].update(value=17), "input height"),
])
def test_verify_names_what_does_not_match(fig_store: tuple[Path, dict], edit: Any,
                                          failed: str) -> None:
    store, keys = fig_store
    _edit_record(store, keys["figure"], edit)
    assert failed in _bad(verify(keys["figure"], store))
    assert main(["verify", keys["figure"], "--store", str(store)]) == 1


def test_verify_checks_the_code_bundle_against_the_recorded_source(
        fig_store: tuple[Path, dict]) -> None:
    store, keys = fig_store
    rec = Record.from_dict(hi.JobCache(path=store).store.get_record(keys["figure"]))
    module = store / "code" / str(rec.provenance.code_bundle) / "figure.py"
    module.chmod(0o644)
    module.write_text(module.read_text().replace("height * len(signals)",
                                                 "height * len(signals) + 1"))
    bad = _bad(verify(keys["figure"], store))
    assert "code bundle" in bad and "do not hash to its name" in bad["code bundle"]
    assert main(["verify", keys["figure"], "--store", str(store), "--json"]) == 1


def test_verify_refuses_a_consistent_bundle_of_other_code(
        fig_store: tuple[Path, dict]) -> None:
    """A well-formed code bundle (its files hash to its name) holding other code than the
    recorded source: the record is rewritten to name it, which `verify` must catch."""
    from hither_store.closure import install_code_dir

    from hither.sharing import RECORD_REFS

    store, keys = fig_store
    local = hi.JobCache(path=store).store
    rec = Record.from_dict(local.get_record(keys["figure"]))
    src = store / "code" / str(rec.provenance.code_bundle)
    text = (src / "figure.py").read_text().replace("img[k * height + rows", "img[rows")
    files = {"figure.py": text.encode()}
    import hashlib

    from hither.runtimes.bundle import bundle_digest

    digest = bundle_digest({"figure.py": hashlib.sha256(files["figure.py"]).hexdigest()})
    install_code_dir(store, digest, files, RECORD_REFS.code_digest)
    _edit_record(store, keys["figure"],
                 lambda r: r["provenance"].update(code_bundle=digest))
    bad = _bad(verify(keys["figure"], store))
    assert bad.keys() == {"code bundle"}
    assert "is not the recorded source" in bad["code bundle"]
