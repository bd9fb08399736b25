"""Helpers for the runtime tests: availability checks, a stand-in worker, a line reader.

Live tests use the real engines. ``require(component)`` skips a test when the component is
missing on a developer machine, but fails it in CI (``CI=true``): a green CI run that
skipped Docker would prove nothing.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import socket
import subprocess
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest

from hither.runtimes import Mount, Runtime, WorkerSpec
from tests.components import TEST_IMAGE, missing, require  # noqa: F401 - for the tests here

REPO = Path(__file__).resolve().parents[2]

TEST_IMAGE_ALT = os.environ.get("HITHER_TEST_IMAGE_ALT", "local/py3numpy:alt")

# Answers hello/ping/stop like hither's worker, plus {"op": "exec", "code": ...} so tests
# can look around inside the runtime (the code sets `result`).
STANDIN_WORKER = r'''
import json, os, platform, sys, traceback
try:
    import numpy
    nv = numpy.__version__
except ImportError:
    nv = None
def send(msg):
    sys.stdout.write(json.dumps(msg) + "\n")
    sys.stdout.flush()
send({"op": "hello", "python": platform.python_version(), "pid": os.getpid(), "numpy": nv})
for line in sys.stdin:
    msg = json.loads(line)
    if msg["op"] == "ping":
        send({"op": "pong"})
    elif msg["op"] == "stop":
        sys.exit(0)
    elif msg["op"] == "exec":
        ns = {}
        try:
            exec(msg["code"], ns)
            send({"op": "result", "ok": True, "value": ns.get("result")})
        except BaseException as e:
            send({"op": "result", "ok": False,
                  "error": "%s: %s" % (type(e).__name__, e), "errno": getattr(e, "errno", None)})
'''


def make_folders(root: Path, *, real_worker: bool = False) -> dict[str, Path]:
    """The four worker folders under ``root`` with a worker in ``worker/``."""
    dirs = {name: root / name for name in ("worker", "code", "blobs", "out")}
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    if real_worker:
        for f in ("_worker.py", "_stdio_worker.py", "_codec.py"):
            shutil.copy(REPO / "hither" / f, dirs["worker"] / f)
    else:
        (dirs["worker"] / "_worker.py").write_text(STANDIN_WORKER)
    return dirs


def make_spec(dirs: dict[str, Path], env: dict[str, str] | None = None) -> WorkerSpec:
    mounts = tuple(Mount(str(dirs[n]), f"/hither/{n}", readonly=(n != "out"))
                   for n in ("worker", "code", "blobs", "out"))
    return WorkerSpec(mounts=mounts, env=dict(env or {}),
                      name=f"hither-test-{uuid.uuid4().hex[:10]}")


class Worker:
    """A started worker and a thread reading its stdout lines (so reads can time out)."""

    def __init__(self, runtime: Runtime, spec: WorkerSpec,
                 proc: subprocess.Popen | None = None) -> None:
        self.runtime = runtime
        self.spec = spec
        self.proc = proc if proc is not None else runtime.start_worker(spec)
        self._lines: queue.Queue[bytes] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(b"")

    def recv(self, timeout: float = 60) -> dict[str, Any]:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no answer from the worker within {timeout} s") from None
        if not line:
            err = self.proc.stderr.read().decode(errors="replace") if self.proc.poll() \
                is not None and self.proc.stderr else ""
            raise AssertionError(f"the worker closed its stdout (exit {self.proc.poll()}): "
                                 f"{err}")
        return json.loads(line)

    def send(self, msg: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(msg) + "\n").encode())
        self.proc.stdin.flush()

    def exec(self, code: str, timeout: float = 60) -> dict[str, Any]:
        """Run ``code`` in the stand-in worker; returns its result message."""
        self.send({"op": "exec", "code": code})
        return self.recv(timeout)

    def stop(self) -> None:
        self.runtime.stop_worker(self.proc, self.spec)
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            try:
                if f is not None:
                    f.close()
            except OSError:
                pass


@pytest.fixture
def workers():
    """Start workers through ``workers(runtime, spec)``; all are stopped after the test."""
    started: list[Worker] = []

    def start(runtime: Runtime, spec: WorkerSpec, proc: subprocess.Popen | None = None):
        w = Worker(runtime, spec, proc)
        started.append(w)
        return w

    yield start
    for w in started:
        w.stop()


class HostListener:
    """A TCP listener on all host interfaces; gives (a non-loopback host IP, port)."""

    def __enter__(self) -> tuple[str, int]:
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            probe.connect(("10.255.255.255", 1))  # no packet sent: only picks a route
            ip = probe.getsockname()[0]
        finally:
            probe.close()
        self.sock = socket.create_server(("0.0.0.0", 0))
        return ip, self.sock.getsockname()[1]

    def __exit__(self, *exc: object) -> None:
        self.sock.close()


# Checks shared by the Docker, Podman and Apptainer live tests. Each takes a runtime and
# a folder, starts a stand-in worker and asserts one property of the sandbox.

def check_hello_ping_stop(runtime: Runtime, root: Path, workers) -> dict[str, Any]:
    dirs = make_folders(root, real_worker=True)
    w = workers(runtime, make_spec(dirs))
    hello = w.recv()
    assert hello["op"] == "hello"
    assert hello["python"] == "3.11.2"
    assert hello["numpy"] == "1.24.2"
    w.send({"op": "ping"})
    assert w.recv() == {"op": "pong"}
    w.send({"op": "stop"})
    assert w.proc.wait(timeout=60) == 0
    return hello


def check_sandbox(runtime: Runtime, root: Path, workers, *, private_net: bool = True) -> None:
    """Inputs read-only, output writable and owned by the caller, host /tmp invisible,
    no network, env passed."""
    dirs = make_folders(root)
    (dirs["blobs"] / "in.txt").write_text("input")
    marker = Path("/tmp") / f"hither-host-marker-{uuid.uuid4().hex}"
    marker.write_text("host")
    try:
        w = workers(runtime, make_spec(dirs, {"HITHER_TEST_VAR": "a b=c,d"}))
        assert w.recv()["op"] == "hello"
        r = w.exec("open('/hither/blobs/in.txt').read()\nopen('/hither/blobs/x', 'w')")
        assert not r["ok"] and r["errno"] == 30, r  # EROFS
        r = w.exec("open('/hither/code/x', 'w')")
        assert not r["ok"] and r["errno"] == 30, r
        r = w.exec("import os\nopen('out.txt', 'w').write('x')\nresult = os.getcwd()")
        assert r == {"op": "result", "ok": True, "value": "/hither/out"}
        st = (dirs["out"] / "out.txt").stat()
        assert (st.st_uid, st.st_gid) == (os.getuid(), os.getgid())
        r = w.exec(f"import os\nresult = os.path.exists({str(marker)!r})")
        assert r["value"] is False
        r = w.exec("import os\nopen('/tmp/scratch', 'w').write('x')\n"
                   "result = [os.environ.get('HITHER_TEST_VAR'), os.environ.get('HOME')]")
        assert r["ok"] and r["value"][0] == "a b=c,d", r
        if private_net:
            r = w.exec("import os\nresult = sorted(os.listdir('/sys/class/net'))")
            assert r["value"] == ["lo"], r
            r = w.exec("import socket\nsocket.create_connection(('127.0.0.1', 1), 1)")
            assert not r["ok"] and ("refused" in r["error"].lower()
                                    or "unreachable" in r["error"].lower()), r
        with HostListener() as (ip, port):
            r = w.exec(f"import socket\nsocket.create_connection(({ip!r}, {port}), 5)")
        if private_net:
            assert not r["ok"] and "unreachable" in r["error"].lower(), r
        else:
            assert r["ok"], r
    finally:
        marker.unlink()
