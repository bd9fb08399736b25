"""Child-process entry points for the hit index tests (they import only hither_store)."""

from __future__ import annotations

import os
from typing import Any

from hither_store import LocalStore

N_KEYS = 40


def key_of(i: int) -> str:
    """The i-th key every writer stores."""
    return f"hitkey-{i:04d}"


def body(writer: int, round_: int, i: int) -> dict[str, Any]:
    """A record whose summary names its writer and round (so a mix-up is visible)."""
    return {"v": [writer, round_, i], "pad": "x" * (10 + 13 * writer + round_ % 7)}


def summary_of(record: dict[str, Any]) -> dict[str, Any]:
    """What the tests index of a record."""
    return {"v": record["v"]}


def writer(root: str, writer: int, rounds: int) -> None:
    """Store every key with its summary, round after round (also: until killed)."""
    store = LocalStore(root)
    round_ = 0
    while rounds < 0 or round_ < rounds:
        for i in range(N_KEYS):
            rec = body(writer, round_, i)
            store.put_record(key_of(i), rec, summary=summary_of(rec))
        round_ += 1
        if rounds < 0 and round_ == 1:
            open(os.path.join(root, f"started-{writer}"), "w").close()
