"""The real components the suite relies on are here (CI: required) and their checks can fail.

Under ``CI=true`` every component is required, so a broken ``.ci/setup-*.sh`` fails the run
here, by name, before the tests that use the component.
"""

from __future__ import annotations

import socket

import pytest

from tests.components import COMPONENTS, missing, require


@pytest.mark.parametrize("component", COMPONENTS)
def test_component_available(component: str) -> None:
    require(component)


def test_unknown_component_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown component"):
        missing("no-such-component")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def why(component: str) -> str:
    """The reason ``component`` is missing, computed afresh (bypassing the cache, so the
    environment set by the test counts); fails the test if it is not missing."""
    reason = missing.__wrapped__(component)
    assert reason is not None, f"{component} unexpectedly usable"
    return reason


def test_s3_check_fails_on_a_closed_port(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("boto3")
    pytest.importorskip("s3fs")
    monkeypatch.setenv("HITHER_TEST_S3_ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    assert "an S3 endpoint that answers" in why("s3")
    monkeypatch.delenv("HITHER_TEST_S3_ENDPOINT")
    assert "HITHER_TEST_S3_ENDPOINT" in why("s3")


def test_http_store_check_fails_on_a_closed_port(monkeypatch: pytest.MonkeyPatch,
                                                  tmp_path) -> None:
    monkeypatch.setenv("HITHER_TEST_HTTP_ROOT", str(tmp_path))
    monkeypatch.setenv("HITHER_TEST_HTTP_URL", f"http://127.0.0.1:{_closed_port()}")
    assert "a web server at" in why("http-store")
    assert list(tmp_path.iterdir()) == []      # the probe file is removed


def test_http_store_check_wants_range_support(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    """A server that ignores Range (python -m http.server) is not enough."""
    import functools
    import http.server
    import threading

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        monkeypatch.setenv("HITHER_TEST_HTTP_ROOT", str(tmp_path))
        monkeypatch.setenv("HITHER_TEST_HTTP_URL", f"http://127.0.0.1:{server.server_port}")
        assert "honours Range requests" in why("http-store")
    finally:
        server.shutdown()
        server.server_close()


def test_dask_check_fails_on_a_dead_scheduler(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    pytest.importorskip("distributed")
    sf = tmp_path / "scheduler.json"
    sf.write_text(f'{{"type": "Scheduler", "address": "tcp://127.0.0.1:{_closed_port()}"}}')
    monkeypatch.setenv("HITHER_TEST_DASK_SCHEDULER_FILE", str(sf))
    assert "the dask scheduler in" in why("dask")
    monkeypatch.setenv("HITHER_TEST_DASK_SCHEDULER_FILE", str(tmp_path / "absent.json"))
    assert "HITHER_TEST_DASK_SCHEDULER_FILE" in why("dask")


def test_slurm_check_fails_without_a_controller(monkeypatch: pytest.MonkeyPatch,
                                                tmp_path) -> None:
    if missing("slurm") is not None:
        pytest.skip("needs the Slurm client commands")
    conf = tmp_path / "slurm.conf"
    conf.write_text("ClusterName=nowhere\nSlurmctldHost=nowhere(127.0.0.1)\n"
                    f"SlurmctldPort={_closed_port()}\nMessageTimeout=1\n"
                    "NodeName=n1 CPUs=1\nPartitionName=p Nodes=ALL\n")
    monkeypatch.setenv("SLURM_CONF", str(conf))
    assert "Slurm controller" in why("slurm")
    assert "sacct" in why("sacct")


def test_users_check_fails_for_an_unknown_user(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HITHER_TEST_USERS", "no-such-user-a no-such-user-b")
    monkeypatch.setenv("HITHER_TEST_GROUP", "no-such-group")
    reason = why("users")
    assert "no-such" in reason or "root" in reason


def test_chromium_check_fails_for_a_non_browser(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("playwright")
    monkeypatch.setenv("HITHER_TEST_CHROMIUM", "/bin/true")
    assert "driven by playwright" in why("chromium")
