"""Replaying a pipeline from a remote store: hither over S3 vs a raw boto3 download.

A moto S3 server runs as a separate process on 127.0.0.1 (so its CPU is not the client's).
Lab A runs N jobs ``remote_blob(seed)`` (each result a 6400-byte blob) and pushes every
result as it finishes, signed. Then:

(a) cold replay: the same N jobs with an empty local store and an empty lookup cache, the
    bucket as a remote trusting A's key: every job is a remote hit (record, signature and
    blob fetched, verified, copied into the local store). Peer: a raw boto3 loop
    downloading the same 3N objects (``get_object`` + read, one client, in sequence).
    Target: hither <= 1.5x boto3.
(b) warm replay: the same replay again, local store and lookup cache now warm, the remote
    still configured. Peer: the same replay with the remote removed (local only). Also
    reported: how many requests the warm replay sent to the remote (expected: none).
    Target: hither <= 2x local only.

    python benchmarks/remote.py [--quick] [--repeats N]
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import warnings

import _common as C
from _jobs import remote_blob

ENV = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
       "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}


def start_moto() -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                             str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("moto server did not start")


def replay(cache, n: int) -> list:
    import hither as hi

    with hi.Config(job_cache=cache):
        jobs = [remote_blob.run(seed=i) for i in range(n)]
        for j in jobs:
            j.wait()
    if not all(j.cache_hit for j in jobs):
        raise RuntimeError("expected every job to be a cache hit")
    return jobs


class Counting:
    """Counts a remote backend's calls (requests) without changing what they do."""

    def __init__(self, inner) -> None:
        self.inner, self.calls = inner, 0
        self.url, self.writable = inner.url, inner.writable

    def __getattr__(self, name):
        fn = getattr(self.inner, name)

        def call(*a, **k):
            self.calls += 1
            return fn(*a, **k)
        return call


def main() -> None:
    args = C.parse_args(__doc__.splitlines()[0])
    warnings.simplefilter("ignore")
    n = 200 if args.quick else 1000
    C.print_header(f"remote: replay of {n} cached jobs from S3 (moto on 127.0.0.1)", args)
    import boto3
    from hither_store import SecretKey
    from hither_store._paths import blob_relpath, record_relpath, sidecar_relpath
    from hither_store._records import body_checksum

    import hither as hi

    tmp = tempfile.mkdtemp(prefix="hither-bench-remote-")
    proc, endpoint = start_moto()
    os.environ.update(ENV, AWS_ENDPOINT_URL=endpoint)
    try:
        s3 = boto3.client("s3", endpoint_url=endpoint)
        s3.create_bucket(Bucket="bench")
        url = "s3://bench/store"
        key = SecretKey.generate("bench-lab")
        key.write(os.path.join(tmp, "key"))
        os.environ["HITHER_SIGNING_KEY"] = os.path.join(tmp, "key")
        os.environ["HITHER_LOOKUP_CACHE"] = os.path.join(tmp, "lookup-a")
        a = hi.JobCache(path=os.path.join(tmp, "A"), remotes=[hi.Remote(url, push="on_finish")])
        t = C.now()
        with hi.Config(job_cache=a):
            want = [j.result() for j in [remote_blob.run(seed=i) for i in range(n)]]
        print(f"  (lab A: {n} jobs run and pushed on finish in {C.fmt_s(C.now() - t)})")
        del os.environ["HITHER_SIGNING_KEY"]
        objects = []
        for k, body in a.store.iter_records():
            ref = body["result"]["ref"][len("sha256://"):]
            objects += [record_relpath(k), sidecar_relpath(k, body_checksum(body)),
                        blob_relpath(ref)]
        objects = ["store/" + o for o in objects]
        trusted = [str(key.public_key)]

        counter = iter(range(1_000_000))
        last: dict = {}

        def cold() -> float:
            i = next(counter)
            os.environ["HITHER_LOOKUP_CACHE"] = os.path.join(tmp, f"lookup-b{i}")
            cache = hi.JobCache(path=os.path.join(tmp, f"B{i}"),
                                remotes=[hi.Remote(url, trusted_keys=trusted)])
            t = C.now()
            jobs = replay(cache, n)
            elapsed = C.now() - t
            if [j.result() for j in jobs] != want:
                raise RuntimeError("wrong results")
            last["cache"] = cache
            return elapsed

        def raw_boto3() -> float:
            client = boto3.client("s3", endpoint_url=endpoint)
            client.get_object(Bucket="bench", Key=objects[0])["Body"].read()
            t = C.now()
            for o in objects:
                client.get_object(Bucket="bench", Key=o)["Body"].read()
            return C.now() - t

        print(f"(a) cold replay: {n} jobs, {len(objects)} objects (the two alternate, so "
              "that a change of load on the machine hits both)")
        rows_a = [C.Row("hither cold replay (empty local store)", n=n),
                  C.Row(f"raw boto3 get_object x {len(objects)} (same objects)", n=n)]
        raw_boto3()  # warm-up: imports, first connection
        for _ in range(args.repeats):
            for row, once in zip(rows_a, (cold, raw_boto3), strict=True):
                row.times.append(once())
        for row in rows_a:
            print(f"  {row.tool}: best {C.fmt_s(row.best)}, median {C.fmt_s(row.median)} "
                  f"({', '.join(f'{t:.3f}' for t in row.times)})", flush=True)

        cache = last["cache"]
        counting = Counting(cache.remotes[0].backend)
        cache.remotes[0]._backend = counting
        local = hi.JobCache(path=cache.path, remotes=[])
        print("(b) warm replay: local store and lookup cache warm (alternating)")
        rows_b = [C.Row("hither warm replay (remote configured)", n=n),
                  C.Row("hither replay, local store only", n=n)]
        replay(local, n)  # warm-up
        for _ in range(args.repeats):
            for row, c in zip(rows_b, (cache, local), strict=True):
                row.times.append(C.timed(lambda c=c: replay(c, n))())
        for row in rows_b:
            print(f"  {row.tool}: best {C.fmt_s(row.best)}, median {C.fmt_s(row.median)} "
                  f"({', '.join(f'{t:.3f}' for t in row.times)})", flush=True)
        print(f"  remote requests during the warm replays: {counting.calls}")
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)

    C.print_table(f"(a) cold replay of {n} jobs from S3 (total; per job)", rows_a)
    C.print_table(f"(b) warm replay of {n} jobs (total; per job)", rows_b)
    cold_r, boto_r = C.find(rows_a, rows_a[0].tool), C.find(rows_a, rows_a[1].tool)
    warm_r, local_r = C.find(rows_b, rows_b[0].tool), C.find(rows_b, rows_b[1].tool)
    ratio_a = cold_r.best / boto_r.best if cold_r and boto_r else None
    ratio_b = warm_r.best / local_r.best if warm_r and local_r else None
    print()
    print(f"ratio cold replay / raw boto3 download: {ratio_a:.2f}x" if ratio_a else
          "ratio cold / boto3: n/a")
    print(f"ratio warm replay / local-only replay: {ratio_b:.2f}x" if ratio_b else
          "ratio warm / local: n/a")
    C.print_targets([
        C.Target("(a) cold replay from S3 vs raw boto3 download", ratio_a, 1.5, "x"),
        C.Target("(b) warm replay vs local-only replay", ratio_b, 2.0, "x"),
    ])


if __name__ == "__main__":
    main()
