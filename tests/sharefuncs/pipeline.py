"""A small pipeline the sharing tests run, in-process or as a script (another process,
possibly another uid): ``python pipeline.py STORE N [--remote URL] [--push on_finish]``.

Every execution appends the function's name to ``$HITHER_TEST_CALL_LOG``, so a test can
count what ran. The script prints one JSON line: the results and which jobs were hits.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys

import hither as hi


def _log(name: str) -> None:
    path = os.environ.get("HITHER_TEST_CALL_LOG")
    if path:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
        try:
            os.write(fd, (name + "\n").encode())
        finally:
            os.close(fd)


@hi.function("share_make", "1")
def share_make(seed: int) -> bytes:
    """A result large enough to be stored as a blob (not inline in the record)."""
    _log("make")
    return hashlib.sha256(str(seed).encode()).digest() * 200  # 6400 bytes


@hi.function("share_digest", "1")
def share_digest(data: bytes | list[bytes], tag: str) -> dict:
    _log("digest")
    if isinstance(data, list):
        data = b"".join(data)
    return {"tag": tag, "sha": hashlib.sha256(data).hexdigest(), "n": len(data)}


def run(n: int) -> tuple[list[dict], list[bool]]:
    """Run the pipeline of ``n`` branches with the settings in force; results and hits."""
    makes = [share_make.run(seed=i) for i in range(n)]
    digests = [share_digest.run(data=m, tag=f"t{i}") for i, m in enumerate(makes)]
    results = [d.result() for d in digests]
    return results, [j.cache_hit for j in makes + digests]


def main(argv: list[str]) -> int:
    import argparse
    import warnings

    p = argparse.ArgumentParser()
    p.add_argument("store")
    p.add_argument("n", type=int)
    p.add_argument("--remote", action="append", default=[])
    p.add_argument("--push", default="explicit")
    args = p.parse_args(argv)
    remotes = [hi.Remote(u, push=args.push) for u in args.remote]
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        with hi.Config(job_cache=hi.JobCache(path=args.store, remotes=remotes)):
            results, hits = run(args.n)
    print(json.dumps({"results": results, "hits": hits,
                      "warnings": [str(x.message) for x in w]}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
