"""A runtime worker's result references are untrusted: a hostile worker (here a real
container whose job patched the worker's encoder, see ``hostile.py``) cannot make the
driver read, move or delete any file outside the job's own output folder, nor pass off a
link, a FIFO, a folder or another job's file as its result. The job fails clearly instead.
"""

from __future__ import annotations

import hashlib
import os
import stat
import uuid
from pathlib import Path

import pytest

import hither as hi

from .conftest import make_case, make_handler
from .hostile import h_hostile_ref, h_leave_file

WAIT = 90
pytestmark = pytest.mark.timeout(180)

CASES = [("docker", "inline"), ("docker", "parallel"), ("podman", "inline"),
         ("apptainer", "parallel")]


@pytest.fixture(params=CASES, ids=["-".join(c) for c in CASES])
def where(request):
    runtime, kind = request.param
    case = make_case(runtime)
    handler = make_handler(kind)
    yield case, handler
    handler.shutdown(wait=False, cancel=True)


@pytest.fixture
def host_files(tmp_path):
    """A secret file and a folder holding a file with a result-like name, on the host."""
    secret = tmp_path / "secret.txt"
    secret.write_text(f"host secret {uuid.uuid4().hex}\n" * 100)
    planted = tmp_path / "planted"
    planted.mkdir()
    name = uuid.uuid4().hex
    (planted / name).write_text(f"planted {uuid.uuid4().hex}\n" * 100)
    return {"secret": secret, "planted": planted, "name": name}


def snapshot(*roots: Path) -> dict[str, tuple]:
    """Every file under ``roots``: inode, size, mtime and the sha256 of its content."""
    out = {}
    for root in roots:
        paths = [root] if root.is_file() else sorted(root.rglob("*"))
        for p in paths:
            st = os.lstat(p)
            digest = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None
            out[str(p)] = (st.st_ino, st.st_size, st.st_mtime_ns, digest)
    return out


def blob_names(store: Path) -> set[str]:
    return {p.name for p in (store / "blobs").rglob("*") if p.is_file()}


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_refused(job, *words: str) -> str:
    err = job.exception(timeout=WAIT)
    assert isinstance(err, hi.JobFailedError), repr(err)
    text = str(err)
    assert "could not be read back from the worker" in text, text
    for w in words:
        assert w in text, text
    return text


@pytest.mark.parametrize("how", ["traversal", "absolute", "symlink", "hardlink", "fifo",
                                 "directory", "dir-symlink"])
def test_a_hostile_result_reference_reads_nothing_and_fails_the_job(how, where, host_files,
                                                                    tmp_path):
    case, handler = where
    store = tmp_path / "store"
    cache = hi.JobCache(path=store)
    target = host_files["planted"] if how == "dir-symlink" else host_files["secret"]
    before = snapshot(host_files["secret"], host_files["planted"])
    with case.config(job_handler=handler, job_cache=cache):
        job = h_hostile_ref.run(how=how, target=str(target), name=host_files["name"])
    words = {"traversal": ["not the name of a file"], "absolute": ["not the name of a file"],
             "symlink": ["symbolic link"], "hardlink": ["2 links"], "fifo": ["not a regular"],
             "directory": ["not a regular"], "dir-symlink": ["output folder"]}[how]
    assert_refused(job, *words)
    assert snapshot(host_files["secret"], host_files["planted"]) == before
    assert sha256_of(host_files["secret"]) not in blob_names(store)
    assert sha256_of(host_files["planted"] / host_files["name"]) not in blob_names(store)
    assert cache.get_record(job.key) is None
    # the worker is still usable, and a plain result still comes back
    with case.config(job_handler=handler, job_cache=cache):
        assert h_leave_file.run(text="fine").result(timeout=WAIT)["pad"] == b"p" * 10_000


def test_a_job_cannot_claim_a_file_another_job_left(where, tmp_path):
    case, handler = where
    cache = hi.JobCache(path=tmp_path / "store")
    with case.config(job_handler=handler, job_cache=cache):
        left = h_leave_file.run(text="left by the first job\n").result(timeout=WAIT)
        job = h_hostile_ref.run(how="named", name=left["name"])
    assert_refused(job, left["name"])
    assert hashlib.sha256(b"left by the first job\n").hexdigest() not in \
        blob_names(tmp_path / "store")


def test_output_folders_are_private_and_each_job_gets_its_own(where, tmp_path):
    case, handler = where
    store = tmp_path / "store"
    with case.config(job_handler=handler, job_cache=hi.JobCache(path=store)):
        first = h_leave_file.run(text="a").result(timeout=WAIT)
        second = h_leave_file.run(text="b").result(timeout=WAIT)
        outs = sorted((store / "tmp").glob("out-*"))
        assert outs, "a live worker has an output folder"
        for out in outs:
            st = os.lstat(out)
            assert stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o700
            assert (st.st_uid, st.st_gid) == (os.getuid(), os.getgid())
            # each job wrote into a folder of its own, removed once its result was taken
            assert not any(p.name == first["name"] for p in out.rglob("*") if p.parent != out)
            assert not [p for p in out.iterdir() if p.is_dir() and p.name.startswith("job-")]
    assert first["name"] != second["name"]
