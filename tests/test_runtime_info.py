"""The runtime facts a record keeps: package lists (the host's, a worker's report, a lock's
pins) stored once per runtime identity; a worker's report is untrusted."""

from __future__ import annotations

from pathlib import Path

from hither_store import LocalStore

from hither.handlers.stdio import _packages_of
from hither.runtime_info import host_packages, packages_from_lock, runtime_facts


def test_host_packages_once_per_identity(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "s")
    a = runtime_facts(None, {"kind": "host"}, store)
    assert a is runtime_facts(None, {"kind": "host"}, store)
    assert store.get_bytes(a["packages"]["ref"]).decode() == host_packages()
    assert "numpy==" in host_packages()


def test_reported_packages_for_an_image(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "s")
    ident = {"kind": "docker", "image": "x", "digest": "sha256:" + "1" * 64}
    assert runtime_facts(None, ident, store) == {}  # nothing reported yet: not cached
    got = runtime_facts(None, ident, store, "numpy==1.24.2\n")
    assert store.get_bytes(got["packages"]["ref"]) == b"numpy==1.24.2\n"


def test_lock_pins() -> None:
    lock = ("numpy==1.26.4 \\\n    --hash=sha256:abc\n# via x\nsix==1.16.0 ; python_version>'3'\n")
    assert packages_from_lock(lock) == "numpy==1.26.4\nsix==1.16.0\n"


def test_a_workers_report_is_untrusted() -> None:
    assert _packages_of({"packages": "numpy==1.2\n../../etc==1\nx y==2\n"}) == "numpy==1.2\n"
    assert _packages_of({"packages": "a==1\n" * 100_000}) is None
    assert _packages_of({"packages": 5}) is None
    assert _packages_of(None) is None


def test_package_listing_from_metadata_folders(tmp_path: Path) -> None:
    from hither._stdio_worker import _packages

    first, second = tmp_path / "a", tmp_path / "b"
    for d, names in ((first, ["numpy-1.26.4.dist-info", "My_Pkg-2.0.dist-info",
                              "old-0.1-py3.8.egg-info", "editable.egg-info", "numpy"]),
                     (second, ["numpy-2.0.0.dist-info", "six-1.16.0.dist-info"])):
        for n in names:
            (d / n).mkdir(parents=True)
    # the first numpy on the path is the one imports find
    assert _packages([str(first), str(second), str(tmp_path / "missing")]) == \
        "My-Pkg==2.0\nnumpy==1.26.4\nold==0.1\nsix==1.16.0\n"
