"""The self-checking file format of records.

A record file is one JSON object::

    {"format": 1, "key": "<key>", "sha256": "<hex>", "body": {...}}

where ``sha256`` is the digest of the canonical JSON of ``body`` (sorted keys, no spaces,
UTF-8; a body holding strings that UTF-8 cannot encode, such as the lone surrogates of
``os.fsdecode``, is written with ASCII escapes instead). A file that is truncated, not JSON, stored under another key's name, or whose
body does not match its checksum is rejected by :func:`decode_record`.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

FORMAT = 1


class BadRecord(ValueError):
    """A record file failed validation; the message says why."""


def canonical_json(body: dict[str, Any]) -> str:
    """The canonical JSON text of a record body."""
    return _CANONICAL(body)


# == json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False), with the
# encoder made once (json.dumps makes one per call when given options)
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode


def _canonical_bytes(body: dict[str, Any]) -> bytes:
    """The bytes of a record body as written: canonical JSON in UTF-8, or, when the body
    holds lone surrogates, which UTF-8 cannot encode, with every non-ASCII character
    escaped (still JSON, and it reads back the same strings)."""
    text = canonical_json(body)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(body, sort_keys=True, separators=(",", ":"),
                          ensure_ascii=True).encode("ascii")


def body_checksum(body: dict[str, Any]) -> str:
    """The hex sha256 of a record body's canonical JSON: the ``sha256`` field of its file."""
    return hashlib.sha256(_canonical_bytes(body)).hexdigest()


def encode_record(key: str, body: dict[str, Any]) -> bytes:
    """Serialize ``body`` stored under ``key`` into the bytes of a record file.

    Raises:
        TypeError: ``body`` is not a dict or holds values JSON cannot represent.
        ValueError: ``body`` would not read back identically (e.g. keys ``1`` and ``"1"``
            in one dict, which collide once JSON turns keys into strings).
    """
    if not isinstance(body, dict):
        raise TypeError(f"a record must be a dict, got {type(body).__name__}")
    data = _canonical_bytes(body)
    # Refuse now what would otherwise be rejected as corrupt on every later read. Only a
    # key that is not a string can come back different from JSON (json.dumps refuses
    # values it cannot encode, and the ones it encodes read back as they were written):
    # a body whose keys are all strings needs no round trip.
    if not _str_keys_only(body) and _canonical_bytes(json.loads(data)) != data:
        raise ValueError(
            f"record for key {key!r} does not survive a JSON round trip "
            "(duplicate keys after conversion to strings?)"
        )
    digest = hashlib.sha256(data).hexdigest()
    head = f'{{"format":{FORMAT},"key":{json.dumps(key)},"sha256":"{digest}","body":'
    return head.encode("utf-8") + data + b"}\n"


def _str_keys_only(body: dict[str, Any]) -> bool:
    """Whether every dict in ``body`` (at any depth, in lists and tuples too) has only
    ``str`` keys (exactly str: a subclass takes the round trip)."""
    todo: list[Any] = [body]
    while todo:
        node = todo.pop()
        if type(node) is dict:
            for k, v in node.items():
                if type(k) is not str:
                    return False
                if isinstance(v, _CONTAINERS):
                    todo.append(v)
        elif type(node) is list or type(node) is tuple:
            todo.extend(x for x in node if isinstance(x, _CONTAINERS))
        else:
            return False  # a subclass of dict, list or tuple: take the round trip
    return True


_CONTAINERS = (dict, list, tuple)


def decode_record(key: str, raw: bytes) -> dict[str, Any]:
    """Return the body of a record file after checking it; raise :class:`BadRecord`."""
    fast = _decode_as_written(key, raw)
    if fast is not None:
        return fast
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BadRecord(f"not valid JSON ({len(raw)} bytes, truncated?): {e}") from None
    except RecursionError:
        raise BadRecord("JSON nested too deeply") from None
    if not isinstance(doc, dict):
        raise BadRecord(f"top level is a {type(doc).__name__}, not an object")
    if doc.get("format") != FORMAT:
        raise BadRecord(f"unknown record format {doc.get('format')!r}")
    if doc.get("key") != key:
        raise BadRecord(f"file holds the record of key {doc.get('key')!r}")
    body = doc.get("body")
    if not isinstance(body, dict):
        raise BadRecord("missing or non-object body")
    expected = doc.get("sha256")
    actual = hashlib.sha256(_canonical_bytes(body)).hexdigest()
    if actual != expected:
        raise BadRecord(f"checksum mismatch: file says {expected!r}, body hashes to {actual}")
    return body


def _decode_as_written(key: str, raw: bytes) -> dict[str, Any] | None:
    """Fast path for a file exactly as :func:`encode_record` writes it: the body is the
    canonical text itself, so its checksum is checked on the raw bytes, without
    serializing the parsed body again. None when the file is laid out otherwise."""
    head = f'{{"format":{FORMAT},"key":{json.dumps(key)},"sha256":"'.encode()
    start = len(head) + 64 + len('","body":')
    if not raw.startswith(head) or not raw.endswith(b"}\n") or len(raw) < start + 3 \
            or raw[len(head) + 64:start] != b'","body":':
        return None
    text = raw[start:-2]
    if hashlib.sha256(text).hexdigest().encode() != raw[len(head):len(head) + 64]:
        return None  # the slow path explains the mismatch
    try:
        body = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return None
    return body if isinstance(body, dict) else None
