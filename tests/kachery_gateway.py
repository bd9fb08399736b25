"""A fake of the kachery-cloud gateway protocol on 127.0.0.1, for driving the real client.

What the kachery-cloud 0.4.10 client does (read from its installed source): it POSTs
``{"payload": {..., "timestamp": ms}, "fromClientId": <ed25519 public key hex>,
"signature": <hex>}`` to ``$KACHERY_GATEWAY_URL/api/gateway``, where the signature is over
the sha1 of the payload's JSON (sorted keys, no spaces). Payload types:

* ``initiateFileUpload`` {size, hashAlg, hash, zone} -> ``alreadyExists`` /
  ``alreadyPending`` / ``signedUploadUrl`` + ``objectKey``; the client PUTs the bytes there;
* ``finalizeFileUpload`` {objectKey, hashAlg, hash, zone, size};
* ``findFile`` {hashAlg, hash, zone} -> ``found`` and ``url``, which the client GETs.

This fake checks every signature against the registered client ids and the sha1 of each
upload (as a gateway should), and can misbehave on demand: serve tampered bytes, answer
404 for a found file, or keep uploads pending.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any


def client_keys() -> tuple[str, str]:
    """A fresh client key pair as kachery-cloud keeps it: (public hex, private hex)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    k = Ed25519PrivateKey.generate()
    priv = k.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                           serialization.NoEncryption()).hex()
    pub = k.public_key().public_bytes(serialization.Encoding.Raw,
                                      serialization.PublicFormat.Raw).hex()
    return pub, priv


def _signed_ok(payload: Any, client_id: str, signature: str) -> bool:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    digest = bytes.fromhex(hashlib.sha1(text.encode()).hexdigest())
    try:
        Ed25519PublicKey.from_public_bytes(bytes.fromhex(client_id)).verify(
            bytes.fromhex(signature), digest)
    except (InvalidSignature, ValueError):
        return False
    return True


@dataclass
class Gateway:
    """The fake's state; tests flip the misbehaviour switches."""

    clients: set[str] = field(default_factory=set)
    files: dict[str, bytes] = field(default_factory=dict)
    uploads: dict[str, tuple[str, bytes | None]] = field(default_factory=dict)
    tamper: set[str] = field(default_factory=set)
    """sha1s whose download is served with one byte changed"""
    url_404: set[str] = field(default_factory=set)
    """sha1s that findFile reports found, but whose url answers 404"""
    pending: set[str] = field(default_factory=set)
    """sha1s with an upload in progress that never finishes"""
    pending_once: set[str] = field(default_factory=set)
    """sha1s reported pending once by initiateFileUpload, then uploadable"""
    requests: list[str] = field(default_factory=list)
    base: str = ""

    def gateway(self, req: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        payload, cid, sig = req.get("payload"), req.get("fromClientId"), req.get("signature")
        if not isinstance(payload, dict) or cid not in self.clients \
                or not isinstance(sig, str) or not _signed_ok(payload, cid, sig):
            return 403, {"error": "bad signature or unknown client"}
        if abs(time.time() * 1000 - payload.get("timestamp", 0)) > 60_000:
            return 403, {"error": "stale request"}
        kind = payload.get("type")
        self.requests.append(kind)
        h = payload.get("hash")
        if kind == "initiateFileUpload":
            if h in self.files:
                return 200, {"type": "initiateFileUploadResponse", "alreadyExists": True,
                             "alreadyPending": False}
            if h in self.pending or h in self.pending_once:
                self.pending_once.discard(h)
                return 200, {"type": "initiateFileUploadResponse", "alreadyExists": False,
                             "alreadyPending": True}
            key = f"obj-{len(self.uploads)}-{h}"
            self.uploads[key] = (h, None)
            return 200, {"type": "initiateFileUploadResponse", "alreadyExists": False,
                         "alreadyPending": False, "objectKey": key,
                         "signedUploadUrl": f"{self.base}/upload/{key}"}
        if kind == "finalizeFileUpload":
            h2, data = self.uploads.pop(payload.get("objectKey"), (None, None))
            if data is None or h2 != h or hashlib.sha1(data).hexdigest() != h:
                return 400, {"error": "upload missing or does not match its hash"}
            self.files[h] = data
            return 200, {"type": "finalizeFileUploadResponse"}
        if kind == "findFile":
            if h in self.files:
                return 200, {"type": "findFileResponse", "found": True,
                             "url": f"{self.base}/file/{h}", "size": len(self.files[h])}
            return 200, {"type": "findFileResponse", "found": False}
        return 400, {"error": f"unknown request type {kind!r}"}


class _Handler(http.server.BaseHTTPRequestHandler):
    gw: Gateway

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass

    def _reply(self, code: int, body: bytes, ctype: str = "application/json") -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def do_POST(self) -> None:  # noqa: N802
        if self.path != "/api/gateway":
            return self._reply(404, b"{}")
        try:
            req = json.loads(self._body())
        except ValueError:
            return self._reply(400, b"{}")
        code, resp = self.gw.gateway(req)
        self._reply(code, json.dumps(resp).encode())

    def do_PUT(self) -> None:  # noqa: N802
        key = self.path.removeprefix("/upload/")
        if key not in self.gw.uploads:
            return self._reply(404, b"")
        self.gw.uploads[key] = (self.gw.uploads[key][0], self._body())
        self._reply(200, b"")

    def do_GET(self) -> None:  # noqa: N802
        h = self.path.removeprefix("/file/")
        data = self.gw.files.get(h)
        if data is None or h in self.gw.url_404:
            return self._reply(404, b"not found", "text/plain")
        if h in self.gw.tamper:
            data = bytes([data[0] ^ 1]) + data[1:]
        self._reply(200, data, "application/octet-stream")


@contextmanager
def fake_gateway() -> Iterator[Gateway]:
    """Run the fake on 127.0.0.1; yields its state (``.base`` is its url)."""
    gw = Gateway()
    handler = type("Handler", (_Handler,), {"gw": gw})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    gw.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield gw
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)
