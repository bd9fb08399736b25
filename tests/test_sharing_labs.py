"""Two labs share results through one S3 bucket: separate processes, separate uids.

Lab A (user labA) runs a pipeline and pushes every result as it finishes, signed with its
key. Lab B (user labB, its own store) trusts A's public key, runs the same pipeline and
executes nothing. A tampered blob, a record signed by an untrusted key and an unsigned
record are never used: those jobs run again. Two labs writing the same keys at the same
time lose nothing and corrupt nothing.

Needs the two test users of .ci/setup-users.sh (``$HITHER_TEST_USERS``, run through
setpriv as root): see tests/components.py, component ``users``.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hither_store import SecretKey

from tests.components import require
from tests.servers import S3_ENV, s3_client

SCRIPT = Path(__file__).parent / "sharefuncs" / "pipeline.py"
N = 5


def users() -> tuple[str, str]:
    """The two test users (``$HITHER_TEST_USERS``)."""
    a, b = os.environ["HITHER_TEST_USERS"].split()[:2]
    return a, b


@pytest.fixture
def labs(s3_env: str) -> Iterator[Path]:
    """A folder every lab user can enter (pytest's tmp_path is root's alone)."""
    require("users")
    d = Path(tempfile.mkdtemp(prefix="hither-labs-", dir=os.environ["HITHER_TEST_SHARED_TMP"]))
    d.chmod(0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def owned_dir(path: Path, user: str) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    pw = pwd.getpwnam(user)
    os.chown(path, pw.pw_uid, pw.pw_gid)
    return path


def key_for(labs: Path, user: str, name: str) -> tuple[Path, str]:
    key = SecretKey.generate(name)
    path = owned_dir(labs / f"keys-{name}", user) / "secret"
    key.write(path)
    pw = pwd.getpwnam(user)
    os.chown(path, pw.pw_uid, pw.pw_gid)
    return path, str(key.public_key)


def run_lab(labs: Path, user: str, store: str, remote: str, *, push: str = "explicit",
            signing_key: Path | None = None, trusted: str | None = None) -> dict[str, Any]:
    """Run the pipeline script as ``user`` with its own store; its result, hits, warnings
    and what it executed."""
    home = owned_dir(labs / f"home-{store}", user)
    log = home / "calls.log"
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home),
           "HITHER_LOOKUP_CACHE": str(home / "lookup"), "HITHER_TEST_CALL_LOG": str(log),
           "AWS_ENDPOINT_URL": os.environ["AWS_ENDPOINT_URL"], "PYTHONDONTWRITEBYTECODE": "1",
           **S3_ENV}
    if signing_key is not None:
        env["HITHER_SIGNING_KEY"] = str(signing_key)
    if trusted is not None:
        env["HITHER_TRUSTED_KEYS"] = trusted
    cmd = ["setpriv", "--reuid", user, "--regid", user, "--init-groups", "--", sys.executable,
           str(SCRIPT), str(owned_dir(labs / store, user)), str(N), "--remote", remote,
           "--push", push]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=home)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    out["ran"] = Counter(log.read_text().split()) if log.exists() else Counter()
    out["uid"] = os.stat(labs / store / "records").st_uid
    return out


def test_two_labs_share_through_s3(labs: Path, bucket: str, s3_env: str) -> None:
    remote = f"s3://{bucket}/labs"
    user_a, user_b = users()
    key_a, pub_a = key_for(labs, user_a, "lab-a")

    a = run_lab(labs, user_a, "A", remote, push="on_finish", signing_key=key_a)
    assert a["uid"] == pwd.getpwnam(user_a).pw_uid
    assert not any(a["hits"]) and a["ran"] == {"make": N, "digest": N} and not a["warnings"]

    b = run_lab(labs, user_b, "B", remote, trusted=pub_a)
    assert b["uid"] == pwd.getpwnam(user_b).pw_uid
    assert b["results"] == a["results"]
    assert all(b["hits"]) and b["ran"] == {} and not b["warnings"]

    # attacks on the bucket; each victim job runs again, nothing wrong is ever returned
    s3 = s3_client(s3_env)
    objects = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]]
    blobs = sorted(k for k in objects if "/blobs/" in k)
    sigs = sorted(k for k in objects if k.endswith(".sig"))
    big = [k for k in blobs if s3.head_object(Bucket=bucket, Key=k)["ContentLength"] == 6400]
    s3.put_object(Bucket=bucket, Key=big[0], Body=b"\0" * 6400)  # tampered blob
    tampered = run_lab(labs, user_b, "B-tampered", remote, trusted=pub_a)
    assert tampered["results"] == a["results"]
    assert tampered["ran"] == {"make": 1} and len(tampered["warnings"]) == 1
    assert "does not match its hash" in tampered["warnings"][0]

    stranger = str(SecretKey.generate("lab-a").public_key)  # same name, another key
    untrusted = run_lab(labs, user_b, "B-untrusted", remote, trusted=stranger)
    assert untrusted["results"] == a["results"]
    assert untrusted["ran"] == {"make": N, "digest": N}
    assert len(untrusted["warnings"]) == 2 * N
    assert all("no valid signature by a trusted key" in w for w in untrusted["warnings"])

    for k in sigs:
        s3.delete_object(Bucket=bucket, Key=k)  # every record is now unsigned
    unsigned = run_lab(labs, user_b, "B-unsigned", remote, trusted=pub_a)
    assert unsigned["results"] == a["results"]
    assert unsigned["ran"] == {"make": N, "digest": N}
    assert all("not signed" in w for w in unsigned["warnings"])


def test_two_labs_write_the_same_keys_at_once(labs: Path, bucket: str, s3_env: str) -> None:
    remote = f"s3://{bucket}/race"
    user_a, user_b = users()
    key_a, pub_a = key_for(labs, user_a, "lab-a")
    key_b, pub_b = key_for(labs, user_b, "lab-b")
    outs: dict[str, dict[str, Any]] = {}
    errors: list[BaseException] = []

    def lab(user: str, store: str, key: Path) -> None:
        try:  # the labs trust each other: either may take the other's fresh results
            outs[store] = run_lab(labs, user, store, remote, push="on_finish", signing_key=key,
                                  trusted=f"{pub_a},{pub_b}")
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=lab, args=(user_a, "A", key_a)),
               threading.Thread(target=lab, args=(user_b, "B", key_b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert outs["A"]["results"] == outs["B"]["results"]
    for o in outs.values():
        assert not o["warnings"], o["warnings"]  # losing a create-only race is no error
    # a third lab trusting both finds every result intact and runs nothing
    reader = run_lab(labs, user_b, "C", remote, trusted=f"{pub_a},{pub_b}")
    assert reader["results"] == outs["A"]["results"]
    assert all(reader["hits"]) and reader["ran"] == {} and not reader["warnings"]
    # every record on the bucket has the signature of its own version beside it
    s3 = s3_client(s3_env)
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]]
    records = [k for k in keys if "/records/" in k and k.endswith(".json")]
    assert len(records) == 2 * N
    from hither_store._records import body_checksum, decode_record

    for rk in records:
        key = rk.rsplit("/", 1)[1][:-5]
        body = decode_record(key, s3.get_object(Bucket=bucket, Key=rk)["Body"].read())
        assert rk[:-5] + f".{body_checksum(body)}.sig" in keys
