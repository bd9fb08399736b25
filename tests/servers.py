"""Real servers on 127.0.0.1 for the sharing tests: an S3 endpoint (moto) and a static web
server (the standard library's http.server), plus keys and buckets to use with them."""

from __future__ import annotations

import contextlib
import functools
import http.server
import os
import secrets
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

S3_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}


@contextlib.contextmanager
def moto_server() -> Iterator[str]:
    """A moto S3 server in this process; yields its endpoint url."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def make_bucket(endpoint: str, name: str | None = None) -> str:
    """Create a fresh bucket at ``endpoint``; return its name."""
    import boto3

    name = name or f"hither-{secrets.token_hex(6)}"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                 aws_access_key_id="testing", aws_secret_access_key="testing"
                 ).create_bucket(Bucket=name)
    return name


def s3_client(endpoint: str) -> Any:
    """A boto3 S3 client for ``endpoint`` (to look at or tamper with a bucket)."""
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id="testing", aws_secret_access_key="testing")


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass


@contextlib.contextmanager
def static_server(directory: str | os.PathLike[str]) -> Iterator[str]:
    """``http.server`` serving ``directory`` on 127.0.0.1; yields its base url."""
    handler = functools.partial(_QuietHandler, directory=str(directory))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


def new_key(tmp: Path, name: str) -> tuple[Path, str]:
    """A fresh signing key file under ``tmp``; returns its path and public key text."""
    from hither_store import SecretKey

    key = SecretKey.generate(name)
    path = tmp / f"{name}-{secrets.token_hex(3)}.secret"
    key.write(path)
    return path, str(key.public_key)


# ---------------------------------------------------------------------------- fixtures
@pytest.fixture
def share_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No sharing settings inherited from the environment; a private lookup cache."""
    for var in ("HITHER_REMOTES", "HITHER_PUSH", "HITHER_SIGNING_KEY", "HITHER_TRUSTED_KEYS",
                "HITHER_STORE_GROUP"):
        monkeypatch.delenv(var, raising=False)
    lookup = tmp_path / "lookup-cache"
    monkeypatch.setenv("HITHER_LOOKUP_CACHE", str(lookup))
    return lookup


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """The S3 endpoint of the CI (``$HITHER_TEST_S3_ENDPOINT``, moto in its own process,
    see .ci/setup-s3.sh), else a moto server started in this process."""
    if os.environ.get("HITHER_TEST_S3_ENDPOINT"):
        from tests.components import require

        require("s3")
        yield os.environ["HITHER_TEST_S3_ENDPOINT"].rstrip("/")
        return
    with moto_server() as url:
        yield url


@pytest.fixture
def s3_env(s3_endpoint: str, share_env: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """Credentials and ``AWS_ENDPOINT_URL`` for the moto server; returns the endpoint."""
    for k, v in S3_ENV.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    return s3_endpoint


@pytest.fixture
def bucket(s3_env: str) -> str:
    """A fresh, empty bucket on the moto server."""
    return make_bucket(s3_env)


@pytest.fixture
def http_store(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A folder published by a web server, and its url: the CI's (``$HITHER_TEST_HTTP_ROOT``
    served at ``$HITHER_TEST_HTTP_URL``, see .ci/setup-http.sh), else http.server started
    in this process."""
    root = os.environ.get("HITHER_TEST_HTTP_ROOT")
    if root:
        from tests.components import require

        require("http-store")
        name = f"store-{secrets.token_hex(6)}"
        folder = Path(root) / name
        try:
            yield folder, f"{os.environ['HITHER_TEST_HTTP_URL'].rstrip('/')}/{name}"
        finally:
            import shutil

            shutil.rmtree(folder, ignore_errors=True)
        return
    folder = tmp_path / "www"
    folder.mkdir()
    with static_server(folder) as url:
        yield folder / "store", f"{url}/store"
