"""What a job inside a container can see and do: user, network, host files, numpy."""

from __future__ import annotations

import os
import socket
import uuid

import numpy as np
import pytest

import hither as hi
from hither.testing.jobs import ht_identity

from .cfuncs import (
    c_exists,
    c_ids,
    c_net,
    c_net_on,
    c_np_sum,
    c_plain,
    c_read_file,
    c_write_file,
)
from .conftest import IMAGE_NONUMPY, docker_case, make_case, podman_case, require

WAIT = 60
pytestmark = pytest.mark.timeout(120)


@pytest.fixture(params=["docker", "podman", "apptainer"])
def container_config(request):
    return make_case(request.param)


# ----------------------------------------------------------------------------- user
def test_job_runs_as_the_caller_and_its_files_belong_to_the_caller(container_config,
                                                                     tmp_path):
    cache = hi.JobCache(path=tmp_path / "store")
    with container_config.config(job_cache=cache):
        ids = c_ids.run().result(timeout=WAIT)
        made = c_write_file.run(name="out.txt", text="made in the container\n")
        f = made.result(timeout=WAIT)
    assert (ids["uid"], ids["gid"]) == (os.getuid(), os.getgid())
    assert isinstance(f, hi.File)
    path = os.path.realpath(f.path)
    assert path.startswith(os.path.realpath(tmp_path / "store") + os.sep), path
    with open(path) as fh:
        assert fh.read() == "made in the container\n"
    st = os.stat(path)
    assert (st.st_uid, st.st_gid) == (os.getuid(), os.getgid())
    # the File goes back in by content
    with container_config.config(job_cache=cache):
        assert c_read_file.run(f=f).result(timeout=WAIT) == "made in the container\n"


@pytest.mark.parametrize("engine", ["docker", "podman"])
def test_a_non_root_caller_gets_its_own_uid(engine, monkeypatch, tmp_path):
    """This machine runs the tests as root, where "the caller's uid" is also the image's
    default user: pretend to be uid 4321 so a container left as root would be noticed."""
    case = docker_case() if engine == "docker" else podman_case()
    require(engine)
    fake = (4321, 4322)
    monkeypatch.setattr(os, "getuid", lambda: fake[0])
    monkeypatch.setattr(os, "getgid", lambda: fake[1])
    with case.config(job_cache=hi.JobCache(path=tmp_path / "store")):
        ids = c_ids.run().result(timeout=WAIT)
        f = c_write_file.run(name="mine.txt", text="x").result(timeout=WAIT)
    assert (ids["uid"], ids["gid"]) == fake
    # the stored result is the driver's own copy of what the container wrote (never a
    # file the container may still hold): it belongs to this process, really root here
    st = os.stat(f.path)
    assert st.st_uid == os.geteuid()


# ----------------------------------------------------------------------------- network
@pytest.fixture
def host_listener():
    """(a non-loopback IP of this host, a port listening on it)."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(("10.255.255.255", 1))  # picks a route; sends nothing
        ip = probe.getsockname()[0]
    finally:
        probe.close()
    srv = socket.create_server(("0.0.0.0", 0))
    try:
        yield ip, srv.getsockname()[1]
    finally:
        srv.close()


def test_no_network_by_default(container_config, host_listener):
    ip, port = host_listener
    with container_config.config():
        got = c_net.run(host=ip, port=port).result(timeout=WAIT)
    assert got["ifaces"] == ["lo"]
    assert got["connect_error"] is not None
    # with the host's own check: the same listener is reachable from here
    socket.create_connection((ip, port), 3).close()


@pytest.mark.parametrize("how", ["decorator", "config"])
def test_network_when_asked(container_config, host_listener, how):
    ip, port = host_listener
    if how == "decorator":
        with container_config.config():
            got = c_net_on.run(host=ip, port=port).result(timeout=WAIT)
    else:
        with container_config.config(network=True):
            got = c_net.run(host=ip, port=port).result(timeout=WAIT)
    assert "lo" in got["ifaces"] and len(got["ifaces"]) > 1, got
    assert got["connect_error"] is None, got


def test_config_network_false_overrides_the_decorator(container_config, host_listener):
    ip, port = host_listener
    with container_config.config(network=False):
        got = c_net_on.run(host=ip, port=port).result(timeout=WAIT)
    assert got["ifaces"] == ["lo"] and got["connect_error"] is not None


# ----------------------------------------------------------------------------- files
def test_host_tmp_is_not_visible(container_config):
    markers = [f"{d}/hither-host-marker-{uuid.uuid4().hex}" for d in ("/tmp", "/var/tmp")]
    for m in markers:
        with open(m, "w") as f:
            f.write("host")
    try:
        with container_config.config():
            jobs = [c_exists.run(path=m) for m in markers]
            seen = [j.result(timeout=WAIT) for j in jobs]
            # the check itself works: a path the image has is seen
            assert c_exists.run(path="/usr/bin/python3").result(timeout=WAIT) is True
        assert seen == [False, False]
    finally:
        for m in markers:
            os.unlink(m)


# ----------------------------------------------------------------------------- numpy
@pytest.fixture(params=["docker", "podman"])
def nonumpy_config(request):
    require(request.param)
    case = docker_case if request.param == "docker" else podman_case
    return case(IMAGE_NONUMPY)


def test_numpy_is_only_needed_when_arrays_cross(nonumpy_config, handler):
    with nonumpy_config.config(job_handler=handler):
        plain = c_plain.run()
        echoed = ht_identity.run(x={1: (2, [3.5, None]), "b": b"bytes"})
        arr = c_np_sum.run(a=np.arange(4))
        assert plain.result(timeout=WAIT) == {"n": 3, "numpy_installed": False}
        assert echoed.result(timeout=WAIT) == {1: (2, [3.5, None]), "b": b"bytes"}
        err = arr.exception(timeout=WAIT)
        assert err is not None
        text = str(err) + str(err.__cause__ or "") + str(
            arr.get_runtime_info().get("traceback") or "")
        assert "numpy" in str(err), text
        assert "No module named" in text or "not installed" in text, text
        # the worker survives: plain jobs go on
        assert c_plain.run(x=1).result(timeout=WAIT)["n"] == 3
