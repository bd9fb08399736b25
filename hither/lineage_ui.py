"""``hither ui``: the lineage pages of a whole store, served read-only on 127.0.0.1.

``/`` lists the newest records; ``/lineage/KEY`` is the page ``hither show KEY --html``
writes. Only GET is answered, only on the loopback interface, and only for a ``Host`` of
``127.0.0.1`` or ``localhost`` with the server's port (a web page in the browser cannot
reach the store through a DNS name rebound to 127.0.0.1).
"""

from __future__ import annotations

import base64
import hashlib
import html
import sys
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TextIO
from urllib.parse import parse_qs, urlsplit

from hither_store import LocalStore

from .explaining import KeyLookupError, describe_manifest, resolve_key
from .lineage_html import _time, read_graph, render_page
from .record import BadRecord, Record

__all__ = ["LineageServer", "serve"]

INDEX_LIMIT = 200
"""Records listed on the index page (newest first) unless ``?limit=N`` asks otherwise."""

_INDEX_CSS = """
body { font: 13px/1.45 system-ui, sans-serif; margin: 16px 24px; color: #1f2328; }
h1 { font-size: 17px; } p { color: #6a737d; }
table { border-collapse: collapse; }
th, td { text-align: left; padding: 3px 14px 3px 0; border-bottom: 1px solid #eaeef2; }
th { color: #6a737d; } td.error { color: #c62828; } td.finished { color: #2e7d32; }
code, a { font-family: ui-monospace, "DejaVu Sans Mono", monospace; color: #1565c0; }
"""


def _hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


def index_page(store: LocalStore, limit: int = INDEX_LIMIT) -> str:
    """The index: the newest ``limit`` records (0: all), with how many records used each."""
    rows: list[tuple[float, str, Record]] = []
    used: dict[str, int] = {}
    for key, raw in store.iter_records():
        try:
            rec = Record.from_dict(raw, key, strict=False)
        except BadRecord:
            continue
        rows.append((rec.provenance.recorded_at or 0.0, key, rec))
        for ups in rec.upstream().values():
            for up in ups:
                used[up] = used.get(up, 0) + 1
    rows.sort(key=lambda r: -r[0])
    shown = rows[:limit] if limit > 0 else rows
    e = html.escape
    body = []
    for t, key, rec in shown:
        fn, status = rec.function, rec.status
        result = describe_manifest(rec.result) if rec.ok else \
            (rec.error.short_type if rec.error else "error")
        n = used.get(key, 0)
        body.append(
            f'<tr><td><a href="/lineage/{e(key)}">{e(key[:12])}</a></td>'
            f'<td>{e(fn.name)} {e(fn.version)}</td>'
            f'<td class="{e(status)}">{e(status)}</td><td>{e(result[:80])}</td>'
            f"<td>{e(_time(t))}</td>"
            f"<td>{'a final result' if n == 0 else f'by {n}'}</td></tr>")
    more = (f"<p>{len(rows) - len(shown)} older records not listed "
            f'(<a href="/?limit=0">list all</a>).</p>' if len(shown) < len(rows) else "")
    csp = f"default-src 'none'; style-src {_hash(_INDEX_CSS)}; base-uri 'none'"
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f'<meta http-equiv="Content-Security-Policy" content="{csp}">'
        f"<title>hither: {e(str(store.root))}</title><style>{_INDEX_CSS}</style></head><body>"
        f"<h1>hither store {e(str(store.root))}</h1>"
        f"<p>{len(rows)} records, newest first. Click a key to see its lineage.</p>"
        "<table><tr><th>key</th><th>function</th><th>status</th><th>result</th>"
        f"<th>recorded</th><th>used</th></tr>{''.join(body)}</table>{more}</body></html>")


class _Handler(BaseHTTPRequestHandler):
    server: LineageServer
    server_version = "hither-ui"

    def do_GET(self) -> None:  # noqa: N802 - the http.server name
        port = self.server.server_address[1]
        if self.headers.get("Host") not in (f"127.0.0.1:{port}", f"localhost:{port}"):
            self._send(HTTPStatus.FORBIDDEN, "only http://127.0.0.1:PORT/ is served")
            return
        url = urlsplit(self.path)
        try:
            if url.path == "/":
                limit = parse_qs(url.query).get("limit", [str(INDEX_LIMIT)])[0]
                self._send(HTTPStatus.OK, index_page(self.server.store, int(limit)), "html")
            elif url.path.startswith("/lineage/"):
                key = resolve_key(self.server.store, url.path[len("/lineage/"):])
                graph = read_graph(self.server.store, key)
                self._send(HTTPStatus.OK, render_page(graph, back_link="/"), "html")
            else:
                self._send(HTTPStatus.NOT_FOUND, "not found: try /")
        except ValueError:
            self._send(HTTPStatus.BAD_REQUEST, "bad request")
        except KeyLookupError as e:
            self._send(HTTPStatus.NOT_FOUND, str(e))
        except Exception as e:  # noqa: BLE001 - one failed page must not stop the server
            self._send(HTTPStatus.INTERNAL_SERVER_ERROR, f"{type(e).__name__}: {e}")

    def _send(self, status: HTTPStatus, body: str, kind: str = "plain") -> None:
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", f"text/{kind}; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
        if self.server.log is not None:
            self.server.log.write(f"{self.address_string()} {format % args}\n")


class LineageServer(ThreadingHTTPServer):
    """The ``hither ui`` server of ``store`` on 127.0.0.1:``port`` (0: any free port)."""

    daemon_threads = True

    def __init__(self, store: LocalStore, port: int = 0, log: TextIO | None = None) -> None:
        self.store = store
        self.log = log
        super().__init__(("127.0.0.1", port), _Handler)

    @property
    def url(self) -> str:
        """The address of the index page."""
        return f"http://127.0.0.1:{self.server_address[1]}/"


def serve(store: LocalStore, port: int, out: TextIO = sys.stdout) -> None:
    """Serve ``store`` until interrupted (Ctrl-C)."""
    with LineageServer(store, port, log=sys.stderr) as server:
        print(f"serving the lineage of {store.root} at {server.url} (Ctrl-C to stop)",
              file=out, flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
