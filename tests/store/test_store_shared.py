"""A store folder shared by the users of one group (as on NFS), with two real uids (the
test users of .ci/setup-users.sh).

Each user works under umask 022 (or 077), as on most systems; without the group-shared
mode the second user cannot write at all.
"""

from __future__ import annotations

import grp
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.components import require


def _users() -> tuple[str, str, str]:
    """The two test users and their group (see .ci/setup-users.sh)."""
    a, b = os.environ["HITHER_TEST_USERS"].split()[:2]
    return a, b, os.environ["HITHER_TEST_GROUP"]

# run as a lab user: the store operations a real user does, concurrently with others
ACT = textwrap.dedent('''
    import json, os, sys, warnings
    from hither_store import LocalStore
    root, me, group = sys.argv[1], sys.argv[2], sys.argv[3] or None
    st = LocalStore(root, group=group)
    out = {}
    for i in range(20):  # many shards: folders this user creates
        key = f"{me}-{i:03d}-0123456789"
        st.put_record(key, {"who": me, "i": i, "blob": st.put_bytes(f"{me} {i}".encode() * 999)})
    common = st.put_bytes(b"the same content from everybody" * 300)
    st.put_record("common-key-0001", {"who": me, "blob": common})   # replaces the other's
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        seen = {k: r["who"] for k, r in st.iter_records()}
        for k, r in st.iter_records():
            if "blob" in r:
                st.get_bytes(r["blob"])
    out["seen"] = seen
    out["warnings"] = [str(x.message) for x in w]
    out["gc"] = st.gc(older_than=0)
    print(json.dumps(out))
''')


def act(user: str, root: Path, group: str = "", umask: str = "022") -> dict:
    r = subprocess.run(["setpriv", "--reuid", user, "--regid", user, "--init-groups", "--",
                        "sh", "-c", f'umask {umask}; exec "$0" "$@"', sys.executable, "-c", ACT,
                        str(root), user, group],
                       capture_output=True, text=True, timeout=300, cwd="/")
    if r.returncode != 0:
        raise PermissionError(r.stderr.strip().splitlines()[-1] if r.stderr else r.stdout)
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.fixture
def place() -> Iterator[Path]:
    require("users")
    d = Path(tempfile.mkdtemp(prefix="hither-shared-", dir=os.environ["HITHER_TEST_SHARED_TMP"]))
    d.chmod(0o1777)  # like /tmp: anyone may create a folder here
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def check_files(root: Path) -> None:
    gid = grp.getgrnam(_users()[2]).gr_gid
    for dirpath, _dirnames, filenames in os.walk(root):
        st = os.stat(dirpath)
        assert st.st_gid == gid, dirpath
        assert st.st_mode & 0o2070 == 0o2070, (dirpath, oct(st.st_mode))
        for n in filenames:
            fst = os.stat(os.path.join(dirpath, n))
            assert fst.st_gid == gid and fst.st_mode & 0o040, (n, oct(fst.st_mode))


def test_plain_store_is_not_writable_by_a_second_user(place: Path) -> None:
    """What the group-shared mode is for: without it, umask 022 locks the others out."""
    a, b, _ = _users()
    root = place / "store"
    act(a, root)
    with pytest.raises(PermissionError, match="Permission denied"):
        act(b, root)


@pytest.mark.parametrize("umask", ["022", "077"])
def test_group_shared_store_two_users(place: Path, umask: str) -> None:
    user_a, user_b, group = _users()
    root = place / "store"
    a = act(user_a, root, group=group, umask=umask)
    b = act(user_b, root, umask=umask)  # the setgid folder says it all: no group given
    a2 = act(user_a, root, umask=umask)
    for out in (a, b, a2):
        assert not out["warnings"]
    assert sum(1 for w in b["seen"].values() if w == user_a) == 20
    assert sum(1 for w in a2["seen"].values() if w == user_b) == 20
    assert a2["seen"]["common-key-0001"] == user_a  # the last writer's version
    check_files(root)


def test_store_folder_made_setgid_by_an_administrator(place: Path) -> None:
    user_a, user_b, group = _users()
    root = place / "admin-made"
    root.mkdir()
    os.chown(root, 0, grp.getgrnam(group).gr_gid)
    root.chmod(0o2775)
    act(user_a, root)
    b = act(user_b, root)
    assert sum(1 for w in b["seen"].values() if w == user_a) == 20
    check_files(root)


def test_two_labs_share_one_store_through_the_job_cache(place: Path) -> None:
    """The pipeline of the sharing tests, run by labA then labB on one shared folder with
    HITHER_STORE_GROUP: labB finds every result and runs nothing."""
    script = Path(__file__).parent.parent / "sharefuncs" / "pipeline.py"
    root = place / "jobs"
    outs = []
    user_a, user_b, group = _users()
    for user in (user_a, user_b):
        home = place / f"home-{user}"
        home.mkdir()
        home.chmod(0o777)
        log = home / "calls.log"
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home),
               "HITHER_STORE_GROUP": group, "HITHER_TEST_CALL_LOG": str(log),
               "HITHER_LOOKUP_CACHE": str(home / "lookup"), "PYTHONDONTWRITEBYTECODE": "1"}
        r = subprocess.run(["setpriv", "--reuid", user, "--regid", user, "--init-groups", "--",
                            "sh", "-c", 'umask 022; exec "$0" "$@"', sys.executable, str(script),
                            str(root), "3"], env=env, capture_output=True, text=True,
                           timeout=300, cwd="/")
        assert r.returncode == 0, r.stderr[-2000:]
        out = json.loads(r.stdout.strip().splitlines()[-1])
        out["ran"] = log.read_text().split() if log.exists() else []
        outs.append(out)
    assert outs[0]["ran"] and not any(outs[0]["hits"])
    assert outs[1]["ran"] == [] and all(outs[1]["hits"]) and not outs[1]["warnings"]
    assert outs[1]["results"] == outs[0]["results"]
    check_files(root)


def test_group_mode_for_this_user(tmp_path: Path) -> None:
    """Without other users: the folders a group-shared store creates stay setgid and
    group-writable under umask 022, and its files group-writable."""
    from hither_store import LocalStore

    import hither as hi

    group = grp.getgrgid(os.getgid()).gr_name
    old = os.umask(0o022)
    try:
        st = LocalStore(tmp_path / "s", group=group)
        st.put_record("abcdefgh-1", {"x": st.put_bytes(b"y" * 5000)})
    finally:
        os.umask(old)
    for d in (st.root, st.root / "tmp", st.root / "records" / "ab",
              st.root / "blobs" / "sha256"):
        assert os.stat(d).st_mode & 0o2070 == 0o2070, d
    assert os.stat(st.record_path("abcdefgh-1")).st_mode & 0o060 == 0o060
    with pytest.raises(hi.CacheError, match="no such group"):
        hi.JobCache(path=tmp_path / "t", shared_group="no-such-group-hither", remotes=[])


def test_a_store_made_group_shared_while_a_process_writes_to_it(tmp_path: Path) -> None:
    """A writer that opened the store before it was shared gives its new record files the
    group's write permission within a second (it looks at ``tmp/`` again)."""
    import time

    from hither_store import LocalStore

    group = grp.getgrgid(os.getgid()).gr_name
    old = os.umask(0o022)
    try:
        st = LocalStore(tmp_path / "s")
        st.put_record("abcdefgh-1", {"x": 1})
        assert os.stat(st.record_path("abcdefgh-1")).st_mode & 0o020 == 0
        LocalStore(tmp_path / "s", group=group)  # another process shares it
        time.sleep(1.1)
        st.put_record("abcdefgh-2", {"x": 2})
    finally:
        os.umask(old)
    assert os.stat(st.record_path("abcdefgh-2")).st_mode & 0o060 == 0o060
