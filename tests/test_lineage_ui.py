"""``hither ui``: a real server on 127.0.0.1 (in a thread, and as the ``hither ui``
command), read over HTTP and in headless Chromium."""

from __future__ import annotations

import http.client
import os
import re
import subprocess
import sys
import threading
import urllib.error
import urllib.request

import pytest

from hither.explaining import open_store
from hither.lineage_ui import LineageServer
from tests.test_lineage_html import browser, open_page, three_stages  # noqa: F401 - fixtures


@pytest.fixture
def served(tmp_path):
    job = three_stages(tmp_path / "store")
    server = LineageServer(open_store(tmp_path / "store"))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server, job
    server.shutdown()
    server.server_close()
    thread.join(10)


def get(url: str, host: str | None = None, method: str = "GET") -> tuple[int, str, dict]:
    parts = urllib.request.urlparse(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        conn.putrequest(method, parts.path + (f"?{parts.query}" if parts.query else ""),
                        skip_host=True)
        conn.putheader("Host", host or parts.netloc)
        conn.endheaders()
        r = conn.getresponse()
        return r.status, r.read().decode(), dict(r.getheaders())
    finally:
        conn.close()


def test_index_and_pages(served):
    server, job = served
    status, body, headers = get(server.url)
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert "default-src 'none'" in body and "5 records" in body
    assert f'href="/lineage/{job.key}"' in body
    assert body.count("a final result") == 1  # only the root is used by no other record
    status, page, _ = get(server.url + f"lineage/{job.key[:10]}")
    assert status == 200 and '<a class="back" href="/">' in page and "lh_stats" in page


def test_only_reads_and_only_for_loopback_names(served):
    server, job = served
    port = server.server_address[1]
    assert get(server.url, host=f"localhost:{port}")[0] == 200
    assert get(server.url, host=f"evil.example:{port}")[0] == 403  # a rebound DNS name
    assert get(server.url + f"lineage/{job.key}", host="127.0.0.1")[0] == 403
    assert get(server.url, method="POST")[0] == 501
    assert get(server.url, method="DELETE")[0] == 501
    assert get(server.url + "lineage/../../etc/passwd")[0] == 404
    assert get(server.url + "lineage/zzzzzzzz")[0] == 404
    assert get(server.url + "lineage/" + "0" * 64)[0] == 404
    assert get(server.url + "etc/passwd")[0] == 404
    assert get(server.url + "?limit=x")[0] == 400
    one = get(server.url + "?limit=1")[1]
    assert one.count("/lineage/") == 1 and "4 older records not listed" in one
    assert server.server_address[0] == "127.0.0.1"


def test_index_links_open_in_chromium(served, open_page):  # noqa: F811
    server, job = served
    page = open_page(None, url=server.url, ready=False)
    page.page.click(f'a[href="/lineage/{job.key}"]')
    page.page.wait_for_selector("body[data-ready]")
    assert page.page.locator("#nodes g.node").count() == 5
    page.page.click("a.back")
    assert "records, newest first" in page.page.inner_text("body")
    page.expect_requests = [server.url, server.url + f"lineage/{job.key}", server.url]


def test_hither_ui_command(tmp_path):
    job = three_stages(tmp_path / "store")
    proc = subprocess.Popen(
        [sys.executable, "-m", "hither.cli", "ui", "--store", str(tmp_path / "store"),
         "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        line = proc.stdout.readline()
        url = re.search(r"http://127\.0\.0\.1:\d+/", line).group(0)
        with urllib.request.urlopen(url + f"lineage/{job.key}", timeout=30) as r:
            assert r.status == 200 and b"lh_clean" in r.read()
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(url + "nothing", timeout=30)
        assert e.value.code == 404
    finally:
        proc.terminate()
        proc.wait(30)
    assert "GET /lineage/" in proc.stderr.read()
